"""The gateway process, wired in one place: MQTT ingest -> durable log -> pipeline -> spooling InfluxDB sink.

Delivery (docs/reliability.md): every message is appended to the SQLite log before its PUBACK; every tick
is logged too, so the pipeline's input is a journal it can replay exactly. A checkpoint (pipeline state,
the outbox, the log position, and the sink's unwritten lines moved to the spool, in one transaction) is
taken every ``state.checkpoint_interval_s`` and when the log holds ``state.checkpoint_max_log_rows``
records; the log up to that position is then deleted. A restart restores the checkpoint and replays the
log tail through the pipeline before it connects to the broker.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import hashlib
import json
import logging
import os
import re
import sqlite3
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from .bridge import (
    N_PER_POS,
    FileForwarder,
    KafkaForwarder,
    bridge_pipeline_config,
    message_records,
    watermark_top,
)
from .ckpt_rows import ORDER, chunk_index, chunk_rows_of, encode_row, key_names, rows_gone, split_order, split_rows
from .config import Config, load_config, redact_url
from .errors import ConfigError, StateError
from .homeassistant import Discovery
from .ingest import (
    Incoming,
    IngestStats,
    Outbox,
    max_packet_size,
    oversize_stub,
    read_oversize_stub,
    run_durable_ingest,
)
from .live import LiveView
from .notify import Notifier
from .pipeline import Handled, Pipeline
from .record import Recorder
from .reload import (
    ReloadPlan,
    plan_reload,
    read_payload,
    reload_payload,
    reloaded_pipeline,
    restart_only,
    state_sections,
    with_sections,
)
from .sinks import make_writer
from .spool import OTHER, RAW, SpoolingSink
from .state import (
    KIND_MESSAGE,
    KIND_OVERSIZE,
    KIND_RELOAD,
    KIND_TICK,
    ROW_MARK,
    LogRecord,
    RowDelta,
    StateFileError,
    StateStore,
    compress_checkpoint,
    compress_row,
    dumps_in_pieces,
    file_error,
    row_digest,
)

__all__ = ["CollectorPacing", "Gateway", "ReloadResult", "StateError", "state_path", "time_reply", "wall_clock_ms"]

log = logging.getLogger("gateway")

STATE_VERSION = 6
"""6: the per-key rows compressed with zstd (``gateway.state.compress_row``), and the anomaly detectors' states as
lists of their fields (``Detector.snapshot``): a gateway of version 5 would not read them, so it refuses the
checkpoint; rows of 5 (zlib, the detectors' dicts) are still read. 5: a sliding window's panes in rows of their
own, a chunk of panes a row (``gateway.ckpt_rows``): a gateway of version 4 would not put them back, so it refuses
the checkpoint. 4: the ingest log in a file of its own beside the state file (``gateway.state.log_path``): a
gateway of version 3 would not read it and would lose the messages logged there, so it refuses the checkpoint; the
rows are those of 3. 3: the admitted devices, their metric names and the anomaly detectors in the per-key rows
too; 2: the checkpoint in per-key rows (``gateway.ckpt_rows``); a gateway of an older version refuses a newer one
(it would read only part of it). Versions 1 (the whole state in one value) and 2 are still restored (the first
checkpoint after them writes every row)."""
ROW_VERSIONS = (3, 4, 5, STATE_VERSION)
"""Versions whose per-key rows are those this version writes: the first checkpoint after them writes only what
changed (after 3 and 4, a sliding window's key with all its panes in chunks the first time it is written; a row of 5
stays as it was stored, zlib and all, until its key changes)."""
CHUNK_VERSIONS = (5, STATE_VERSION)
"""Versions whose rows hold a sliding window's panes as this version writes them (in chunks): right after
restoring one, no pane counts as changed (``Pipeline.mark_stored``)."""
READ_VERSIONS = (1, 2, *ROW_VERSIONS)

CAPTURE_SLICE = 32
"""Keys a checkpoint snapshots at a time on the event loop before it lets other work run."""

PROCESS_SLICE_S = 0.005
"""Longest the pipeline takes a batch of logged messages without letting other work run (the outbox's sender, the
sink, the broker's socket); it also lets them run after each input that gave something to publish (an alert)."""
CHECKPOINT_YIELD_S = 0.02
"""Longest a checkpoint waits, after each slice of keys it takes on the loop, for input that is waiting to be
taken first; and in its worker thread, per row it encodes (about a tenth of that). A checkpoint runs in the time
input leaves, so it does not hold alerts back (it still ends: these bound its wait)."""
CHECKPOINT_WAIT_MAX_S = 5.0
"""Longest a checkpoint's worker thread gives way to input in all (under overload it then goes on regardless)."""
STATS_SLICE = 100
"""Devices whose rows the stats file's writer makes and encodes at a time before it lets other work run (about
1.5 ms for 100 on this machine, unloaded)."""


FULL_COLLECTION_EVERY_S = 600.0
"""How often the cyclic garbage collector may scan the whole heap (see :class:`CollectorPacing`)."""


class CollectorPacing:
    """Keeps the cyclic garbage collector's full collections short: after each one, everything alive is moved out
    of the generations it scans (``gc.freeze``), so the next scan only the objects made since; every
    ``every_s`` they are given back (``gc.unfreeze``), and the full collection after that scans the whole heap.
    The same after a checkpoint's pause of the collector (:meth:`after_pause`).

    A full collection scans every container object: for the window, pattern and detector state of 1,000 devices
    that is 90-110 ms (``gc.collect()`` on bench/bench_checkpoint.py's state) and up to 360 ms seen in the
    gateway on a loaded machine, every 10-30 s at 1,000 messages a second - a pause of the event loop that
    every alert then waiting took. Cycles that became garbage while frozen are collected after the next
    ``unfreeze``, so what frozen garbage can hold is bounded by what ``every_s`` of running makes."""

    def __init__(self, every_s: float = FULL_COLLECTION_EVERY_S) -> None:
        self.every_s = every_s
        self.freezes = 0
        self._given_back = time.monotonic()
        self._installed = False

    def install(self) -> None:
        gc.callbacks.append(self._after)
        self._installed = True

    def remove(self) -> None:
        if self._after in gc.callbacks:
            gc.callbacks.remove(self._after)
        self._installed = False
        gc.unfreeze()

    def after_pause(self) -> None:
        """The collector was paused (a checkpoint, some 100-300 ms while input goes on being taken): what was made
        meanwhile and is still alive is frozen too, not scanned at once. Resumed with it all young, the first
        collections took 10-21 ms of the event loop each, twice in a row, after a checkpoint (issue 19). Given
        back with the rest every ``every_s``."""
        if self._installed:
            gc.freeze()
            self.freezes += 1

    def _after(self, phase: str, info: dict[str, int]) -> None:
        if phase == "stop" and info["generation"] == 2:
            gc.freeze()
            self.freezes += 1

    def tick(self) -> None:
        """Called every second: give the frozen objects back every ``every_s``."""
        if time.monotonic() - self._given_back >= self.every_s:
            gc.unfreeze()
            self._given_back = time.monotonic()


def _let_others_run() -> None:
    """Release the GIL for a moment: a thread waiting for it (the event loop) gets it if it has asked."""
    time.sleep(0)


def check_version(path: Path | str, version: object, advice: str = "or move the file away to start afresh") -> None:
    """:class:`StateError` if a checkpoint of ``version`` (state file ``path``) is not one this gateway reads (the
    gateway's start and ``recover`` both ask; ``advice`` ends the message)."""
    if version not in READ_VERSIONS:
        raise StateError(
            f"state file {path}: its checkpoint is of version {version!r}, and this gateway reads versions "
            f"{', '.join(map(str, READ_VERSIONS))} (one written by a newer edgekit: run that version, {advice})"
        )


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def state_path(config: Config) -> Path:
    """``<state.dir>/<client id>.db``: the state belongs to one broker session, which the client id names."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", config.mqtt.client_id)
    return Path(config.state.dir) / f"{safe}.db"


def _fingerprint(config: Config) -> str:
    """What the checkpointed state depends on: windows, watermarks, patterns, detectors and the topic prefix."""
    text = repr((config.engine, config.patterns, config.anomaly, config.mqtt.prefix))
    paths: list[tuple[str, str]] = [(p.name, p.on) for p in config.patterns if p.on != "event_time"]
    if config.anomaly.on != "arrival":
        paths.append(("[anomaly]", config.anomaly.on))
    if paths:  # left out of the patterns' repr so that a configuration without fast alerts keeps its fingerprint
        text += repr(paths)
    if config.groups.groups:  # group-keyed state depends on who is in which group; no groups, no change
        text += repr(config.groups)
    relative = [(w.name, w.relative) for w in config.engine.windows if w.relative is not None]
    if relative:  # left out of the windows' repr: a configuration without group-relative values keeps its fingerprint
        text += repr(relative)
    if config.joins:  # join state depends on the joins and the device properties they key on; no joins, no change
        text += repr((config.joins, sorted((d, sorted(p.items())) for d, p in config.devices.properties.items())))
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


class ReloadResult:
    """What a reload did: ``ok`` (applied) or not, with the message a person reads and the plan's details."""

    __slots__ = ("details", "message", "ok")

    def __init__(self, ok: bool, message: str, details: dict[str, Any] | None = None) -> None:
        self.ok = ok
        self.message = message
        self.details = details or {}

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "message": self.message, **self.details}


def time_reply(now_ms: int) -> bytes:
    """The gateway's answer on ``<prefix>/<site>/<device>/cmd`` to a board's ``online`` status: its clock
    (docs/protocol.md, "Time from the gateway")."""
    return b'{"v":1,"t":%d}' % now_ms


def _digest(topic: str, payload: bytes) -> bytes:
    h = hashlib.blake2b(topic.encode(), digest_size=16)
    h.update(b"\0")
    h.update(payload)  # not concatenated: no copy of the payload
    return h.digest()


class _Raw(str):
    """JSON text that :func:`_dumps_compact` puts in its output as it is."""


_compact = json.JSONEncoder(separators=(",", ":")).encode


def _holds_raw(obj: object) -> bool:
    if type(obj) is _Raw:
        return True
    if isinstance(obj, dict):
        return any(_holds_raw(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(_holds_raw(v) for v in obj)
    return False


def _dumps_compact(obj: object) -> str:
    """``json.dumps(obj, separators=(",", ":"))``, each :class:`_Raw` value (in dicts and lists, at any depth) put
    in as it is: the stats file's devices, encoded a slice at a time."""
    if type(obj) is _Raw:
        return str(obj)
    if isinstance(obj, dict) and _holds_raw(obj):
        if not all(isinstance(k, str) for k in obj):
            raise TypeError("a dict holding raw JSON text must have string keys")
        return "{" + ",".join(f"{_compact(k)}:{_dumps_compact(v)}" for k, v in obj.items()) + "}"
    if isinstance(obj, (list, tuple)) and _holds_raw(obj):
        return "[" + ",".join(_dumps_compact(v) for v in obj) + "]"
    return _compact(obj)


class _Capture:
    """The keys a checkpoint takes, snapshotted as they were at its position: a slice at a time between the
    inputs taken meanwhile, and before an input that may change them (copy on write, at the key level)."""

    def __init__(self, pipeline: Pipeline, keys: set[str], every: bool = False) -> None:
        self.pipeline = pipeline
        self.keys = keys
        self.mode = 2 if every else 1  # Pipeline.snapshot's rows: every chunk of panes, or those changed
        self.pending = set(keys)
        self.rows: dict[str, Any] = {}
        self.slices = 0

    def take(self, n: int) -> None:
        pending = self.pending
        chunk = {pending.pop() for _ in range(min(n, len(pending)))}
        self._snap(chunk)

    def before(self, reach: Sequence[str] | None) -> None:
        """An input that may change the keys ``reach`` (None: any) is about to be taken."""
        if reach is None:
            chunk, self.pending = self.pending, set()
        else:
            chunk = self.pending.intersection(reach)
            self.pending.difference_update(chunk)
        if chunk:
            self._snap(chunk)

    def _snap(self, keys: set[str]) -> None:
        self.slices += 1
        self.rows.update(split_rows({"pipeline": self.pipeline.snapshot(keys, rows=self.mode)}))


class Gateway:
    """One running gateway. ``await gw.run(stop)`` until ``stop`` is set; ``snapshot_stats()`` any time."""

    def __init__(
        self,
        config: Config,
        *,
        now_ms: Callable[[], int] = wall_clock_ms,
        stats_file: Path | None = None,
        stats_interval_s: float = 1.0,
        record: Path | None = None,
        config_path: Path | None = None,
    ) -> None:
        from .metrics import GatewayMetrics

        self.config = config
        self.config_path = config_path
        """The file a reload reads again (None: only the environment and defaults, as at start)."""
        self.now_ms = now_ms
        self.bridge: FileForwarder | None = None
        """``[bridge]``: the accepted readings to the Flink job's files (docs/scale-out.md); the windows, patterns
        and anomaly rules run there, not here."""
        self.kafka: KafkaForwarder | None = None
        if config.bridge.enabled:
            b = config.bridge
            self.bridge = FileForwarder(
                Path(b.dir), b.roll_bytes, int(b.roll_interval_s * 1000), sync=config.state.sync == "full"
            )
            if b.to == "kafka":
                self.kafka = KafkaForwarder(b, Path(b.dir), config.mqtt.client_id)
        self.pipeline = Pipeline(bridge_pipeline_config(config) if self.bridge is not None else config)
        self.store = StateStore(state_path(config), sync=config.state.sync)
        self.metrics = GatewayMetrics(self)
        self.sink = SpoolingSink(
            make_writer(config.influx),
            config.influx,
            self.store,
            spool_max_bytes=config.state.spool_max_bytes,
            observe_latency=self.metrics.observe_write,
        )
        self.ingest_stats = IngestStats()
        self.outbox = Outbox()
        self.stats_file = stats_file
        self.stats_interval_s = stats_interval_s
        self._stats_seq = 0
        self._stats_written = 0
        self._stats_lock = threading.Lock()
        self.started = asyncio.Event()
        # deploy: the live view (stats file for `top`, health points) and `run --record FILE`
        self.live = LiveView(self.pipeline.engine, config.mqtt.client_id, now_ms())
        self.recorder = Recorder(record) if record is not None else None
        both = any(p.on == "both" for p in config.patterns) or config.anomaly.on == "both"
        self.notifier = Notifier(config.notify, now_ms, retractions=both) if config.notify else None
        """``[[notify]]``: alerts to people (docs/notify.md); its own task, fed without waiting from ``_emit``."""
        self.discovery = Discovery(config) if config.homeassistant.enabled else None
        """``[homeassistant]``: discovery messages and device states, retained (docs/homeassistant.md)."""
        self._own_state = f"{config.mqtt.prefix}/_gateway/state/"
        self.pos = 0
        """Log position of the last input the pipeline has taken."""
        self.recovered_from = 0
        self.replayed = 0
        self.checkpoints = 0
        self.fingerprint = _fingerprint(self.pipeline.config) + ("-bridge" if self.bridge is not None else "")
        """The fingerprint of the configuration the pipeline's state belongs to (a reload changes it)."""
        self.reloads = 0
        self.reload_failures = 0
        """Reloads refused (an invalid file, a setting that needs a restart, a failure while applying)."""
        self.restarted: dict[str, int] = {"window": 0, "pattern": 0, "detectors": 0}
        """Operators a reload restarted because their definition (or the engine-wide settings) changed."""
        self.last_reload: dict[str, Any] = {}
        self._reloading = asyncio.Lock()
        self._input_open = asyncio.Event()
        """Cleared while a reload builds its pipeline: the pipeline takes no input meanwhile (inputs are logged)."""
        self._input_open.set()
        self._notify_stop = asyncio.Event()
        self._notify_task: asyncio.Task[None] | None = None
        self._full_next = False
        """Set by a reload: the next checkpoint writes every row (the keys' rows have another layout)."""
        self.recent: deque[bytes] = deque(maxlen=max(1000, 4 * (config.mqtt.max_inflight + config.state.ingest_batch)))
        """Digests of the last logged messages: a re-sent (DUP) message found here was logged already."""
        self.recent_pos: deque[int] = deque(maxlen=self.recent.maxlen)
        """The log position of each of ``recent``: a checkpoint keeps those up to its own position (the replay after
        it gives the rest again, whatever positions the log holds then)."""
        self.redelivered = 0
        self._caught_up = asyncio.Event()
        self._stopping = False
        """Set by a clean stop: take no further input (what is logged and not taken is replayed after a restart)."""
        self._capture: _Capture | None = None
        """While a checkpoint snapshots its keys: an input first has the keys it may change taken."""
        self._checkpointing = asyncio.Lock()
        self.checkpoint_failures = 0
        self._retry_checkpoint = 0.0
        """Monotonic time before which the log's size asks for no checkpoint (one has just failed)."""
        self._row_digests: dict[str, bytes] | None = None
        """The digest of each checkpoint row stored (None: not known, the next checkpoint rewrites them all)."""
        self._row_chunks: dict[str, tuple[str, ...]] = {}
        """Each key's chunk rows stored (``ckpt_rows.chunk_index``), by its row's name: kept with ``_row_digests``."""
        self.last_checkpoint: dict[str, float] = {}
        """What the last checkpoint did: keys snapshotted, slices, rows written, seconds on the loop and in all."""
        self.collector = CollectorPacing()

    # ------------------------------------------------------------------------------------ inputs

    def _accept(self, msgs: list[Incoming]) -> list[LogRecord]:
        """Append to the log (committed when this returns; the caller acknowledges afterwards).

        A message the broker re-sends (DUP) because the PUBACK of a logged copy was lost in a crash is
        recognised by its digest among the last logged messages, acknowledged again and not logged twice.

        A payload over ``limits.max_bytes`` is never stored: the log keeps its stub (size, digest, head;
        :func:`~gateway.ingest.oversize_stub`) as a record of kind ``KIND_OVERSIZE``, which becomes its
        ``oversize`` dead letter. Digests are taken of what is logged, so a replay rebuilds the same ones.
        """
        now = self.now_ms()
        limit = self.config.limits.max_bytes
        rows: list[tuple[int, str, bytes, int]] = []
        received: list[tuple[str, bytes]] = []
        digests = []
        for topic, payload, dup in msgs:
            if topic.endswith("/cmd") or topic.startswith(self._own_state):
                # the gateway's own messages come back (time replies to boards, device states): nothing to keep
                continue
            kind, logged = (KIND_MESSAGE, payload) if len(payload) <= limit else (KIND_OVERSIZE, oversize_stub(payload))
            digest = _digest(topic, logged)
            if dup and (digest in self.recent or digest in digests):
                self.redelivered += 1
                continue
            digests.append(digest)
            rows.append((kind, topic, logged, now))
            received.append((topic, payload))
            if kind == KIND_MESSAGE and topic.endswith("/status") and b'"state":"online"' in payload:
                # a board that just connected: tell it the time (it may have no NTP; docs/protocol.md)
                self.outbox.put_now(topic[: -len("status")] + "cmd", time_reply(now))
        positions = self.store.append(rows)
        # remembered only once committed: a failed append leaves them unacknowledged, and their redelivery
        # must then be logged, not taken for a copy of something logged
        self.recent.extend(digests)
        self.recent_pos.extend(positions)
        if self.recorder is not None:  # deploy
            for topic, payload in received:
                self.recorder.write(topic, payload, now)
        return [LogRecord(p, k, t, b, now) for p, (k, t, b, _) in zip(positions, rows, strict=True)]

    async def _accept_logged(self, msgs: list[Incoming]) -> list[LogRecord]:
        """:meth:`_accept` once the log is not being cut (the log file's ``log_gate``, held for a few milliseconds
        at most): the loop goes on meanwhile, and the messages are acknowledged only once their own commit is done.
        A checkpoint's transaction (on the state file) does not hold it up."""
        async with self.store.log_gate:
            return self._accept(msgs)

    async def _process(self, records: list[LogRecord]) -> None:
        held = time.perf_counter()
        for rec in records:
            if self._stopping:  # the rest is logged (and acknowledged): the restart replays it
                return
            if await self._apply(rec) or time.perf_counter() - held >= PROCESS_SLICE_S:
                # an alert goes out now, not after the rest of the batch (up to ingest_batch messages)
                await asyncio.sleep(0)
                held = time.perf_counter()
        if (
            self.store.log_rows >= self.config.state.checkpoint_max_log_rows
            or (self.bridge is not None and self.bridge.size >= self.bridge.roll_bytes)
        ) and time.monotonic() >= self._retry_checkpoint:
            try:
                await self.checkpoint()
            except Exception:  # a full disk, a lock: everything stays where it was; the tick's checkpoint tries again
                self._retry_checkpoint = time.monotonic() + 1.0
                log.exception("checkpoint failed; trying again later", extra={"event": "checkpoint_error"})

    async def _apply(self, rec: LogRecord) -> bool:
        """Take one logged input; whether it gave messages to publish."""
        if not self._input_open.is_set():  # a reload is building the pipeline that takes this input
            await self._input_open.wait()
        cap = self._capture
        if cap is not None:  # a checkpoint is taking keys: those this input may change are taken first
            if rec.kind == KIND_MESSAGE:
                cap.before(self.pipeline.reach(rec.topic))
            elif rec.kind == KIND_TICK:
                cap.before(self.pipeline.tick_reach(rec.received_ms))
            elif rec.kind == KIND_RELOAD:
                cap.before(None)  # the checkpoint takes the old pipeline's keys; the new one replaces it
            # an oversize message changes only counters (the global part, taken already)
        if rec.kind == KIND_RELOAD:  # in a replay: a live reload takes its record in reload()
            self._replay_reload(rec)
            self.pos = rec.pos
            if self.pos >= self.store.last_pos:
                self._caught_up.set()
            return False
        if rec.kind == KIND_TICK:
            out = self.pipeline.tick(rec.received_ms)
        elif rec.kind == KIND_OVERSIZE:
            size, head = read_oversize_stub(rec.payload)
            out = self.pipeline.handle_oversize(rec.topic, size, head, rec.received_ms)
            self.metrics.messages_in += 1
        else:
            out = self.pipeline.handle(rec.topic, rec.payload, rec.received_ms)
            self.metrics.messages_in += 1
            if self.bridge is not None and out.readings:  # before the position moves: a checkpoint sees both agree
                eng = self.pipeline.config.engine
                limits = {"min_time_ms": eng.min_time_ms, "max_future_ms": eng.max_future_ms}
                lines = message_records(out.readings, rec.pos, rec.received_ms, wm0_ms=self.bridge.top, **limits)
                top = watermark_top(out.readings, rec.received_ms, **limits)
                self.bridge.append(lines, rec.pos * N_PER_POS, self.now_ms(), top)
        self.pos = rec.pos  # before any await: a checkpoint in between sees state and position agree
        if self.pos >= self.store.last_pos:
            self._caught_up.set()
        await self._emit(out)
        return bool(out.publish)

    async def _emit(self, out: Handled) -> None:
        if self.discovery is not None:  # before the alerts: an entity's discovery message goes first
            for topic, payload in self.discovery.observe(out.readings, out.status, out.alerts):
                self.outbox.put_retained(topic, payload)
        for topic, payload in out.publish:
            self.outbox.put(topic, payload)
        self.live.observe(out.readings, out.outputs, out.alerts, out.status)  # deploy
        if out.alerts and self.notifier is not None:
            self.notifier.offer(out.alerts)  # never waits: a full inbox is counted (notify.shed)
        await self.sink.add(out.lines)

    async def _tick(self) -> None:
        # the pipeline takes inputs strictly in log order: a tick waits for logged messages to be taken,
        # else a checkpoint at the tick's position would drop them from the log unprocessed
        while True:
            while self.pos < self.store.last_pos:
                if self._stopping:  # the logged messages wait for the restart; so does this tick
                    return
                self._caught_up.clear()
                await self._caught_up.wait()
            async with self.store.log_gate:  # not while the log is being cut
                if self.pos < self.store.last_pos:
                    continue  # messages were logged while it waited: they are taken first
                now = self.now_ms()
                (pos,) = self.store.append([(KIND_TICK, "", b"", now)])
            break
        # taken at once (no await before the pipeline has it): nothing is logged in between
        await self._apply(LogRecord(pos, KIND_TICK, "", b"", now))

    # ------------------------------------------------------------------------------------- reload

    async def reload(self) -> ReloadResult:
        """Read the configuration file again and apply it (``edgekit-gateway reload``, SIGHUP; docs/semantics.md,
        "Changing rules while running"). An invalid file, or one that changes a setting a reload cannot apply,
        changes nothing and says why."""
        async with self._reloading:
            try:
                result = await self._reload()
            except Exception as exc:  # a failure while building the new pipeline: the old one goes on
                log.exception("reload failed", extra={"event": "reload_error"})
                result = ReloadResult(False, f"reload failed ({type(exc).__name__}: {exc}); nothing was changed")
        if result.ok:
            self.reloads += 1
            log.info("reload: %s", result.message, extra={"event": "reload", **result.details})
        else:
            self.reload_failures += 1
            log.error("reload refused: %s", result.message, extra={"event": "reload_refused", **result.details})
        self.last_reload = {"at_ms": self.now_ms(), **result.as_dict()}
        return result

    async def _reload_http(self) -> tuple[bool, dict[str, Any]]:
        result = await self.reload()
        return result.ok, result.as_dict()

    async def _reload(self) -> ReloadResult:
        if not self.started.is_set() or self._stopping:
            return ReloadResult(False, "the gateway is starting (replaying its log) or stopping; nothing was changed")
        if self.bridge is not None:
            return ReloadResult(
                False,
                "with [bridge] the windows run in the Flink job (docs/scale-out.md): restart the gateway and "
                "the job to change the rules; nothing was changed",
            )
        where = str(self.config_path) if self.config_path is not None else "the environment"
        try:
            new = await asyncio.to_thread(load_config, self.config_path)
        except ConfigError as exc:
            return ReloadResult(False, f"configuration error: {exc}; nothing was changed ({where})")
        fixed = restart_only(self.config, new)
        if fixed:
            return ReloadResult(
                False,
                f"{', '.join(fixed)} changed, which a reload cannot apply: restart the gateway for that "
                "(docs/semantics.md, 'Changing rules while running'); nothing was changed",
                {"restart_only": fixed},
            )
        plan = plan_reload(self.config, new)
        fingerprint, previous = _fingerprint(new), self.fingerprint
        payload = reload_payload(fingerprint, previous, state_sections(new), plan)
        # like a tick: once every logged input is taken, so that the new configuration takes over at one position;
        # the record right after the last input taken; the inputs logged after it wait for the new pipeline, which
        # is built in a worker thread meanwhile (the old one does not change: no input is taken), while the event
        # loop goes on logging and acknowledging messages, answering /metrics and keeping the broker's connection
        while True:
            while self.pos < self.store.last_pos:
                if self._stopping:
                    return ReloadResult(False, "the gateway is stopping; nothing was changed")
                self._caught_up.clear()
                await self._caught_up.wait()
            async with self.store.log_gate:  # not while the log is being cut
                if self.pos < self.store.last_pos:
                    continue  # messages were logged while it waited: they are taken first
                (pos,) = self.store.append([(KIND_RELOAD, "", payload, self.now_ms())])
                self._input_open.clear()
            break
        # as in a checkpoint: the copies' new containers would set off collections of the whole heap, which hold the
        # GIL from the event loop for hundreds of milliseconds (bench/bench_reload.py)
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            pipeline = await asyncio.to_thread(self._build, new, plan) if plan.changes_state else None
        except BaseException:
            # the record must not make a restart take the configuration it did not take: it now names the running one
            back = reload_payload(previous, previous, state_sections(self.pipeline.config), plan_reload(new, new))
            async with self.store.log_gate:
                self.store.replace_payload(pos, back)
            self.pos = pos  # the record is taken (as nothing): ticks and checkpoints go on past it
            if self.pos >= self.store.last_pos:
                self._caught_up.set()
            self._input_open.set()
            raise
        finally:
            if was_enabled:
                gc.enable()
        if self._capture is not None:  # a checkpoint under way takes the old pipeline's keys
            self._capture.before(None)
        if pipeline is not None:
            self._switch(pipeline)
        self.pos = pos
        if self.pos >= self.store.last_pos:
            self._caught_up.set()
        self._input_open.set()
        self.config = new
        self.fingerprint = fingerprint
        if self.notifier is not None or new.notify:
            self._renotify(new)
        for what, n in (("window", plan.windows), ("pattern", plan.patterns), ("detectors", plan.anomaly)):
            self.restarted[what] += len(n.restarted)
        for what, why in plan.reasons.items():
            if not what.startswith("notify"):
                log.warning(
                    "%s restarted: %s; it starts empty",
                    what,
                    why,
                    extra={"event": "restarted", "what": what, "why": why},
                )
        try:  # the new configuration's state at once; failed, the log's reload record is replayed after a restart
            await self.checkpoint()
        except Exception:
            log.exception(
                "the checkpoint after a reload failed; trying again later", extra={"event": "checkpoint_error"}
            )
        return ReloadResult(
            True,
            f"applied {where} (configuration {fingerprint}, was {previous}): " + "; ".join(plan.lines()),
            {"fingerprint": fingerprint, "log_pos": pos, **plan.as_dict()},
        )

    def _build(self, config: Config, plan: ReloadPlan) -> Pipeline:
        """In a worker thread, while no input is taken: the pipeline of ``config`` with the kept operators' state."""
        engine = self.pipeline.engine
        engine.snapshot_pause = _let_others_run  # compiled, the snapshot would hold the GIL from the event loop
        try:
            return reloaded_pipeline(self.pipeline, config, plan)
        finally:
            engine.snapshot_pause = None

    def _replay_reload(self, rec: LogRecord) -> None:
        """A reload record in the log's replay: the pipeline of the configuration it names carries on."""
        fingerprint, sections = read_payload(rec.payload)
        try:
            config = with_sections(self.config, sections)
        except ConfigError as exc:
            raise StateError(
                f"state file {self.store.path}: the reload at log position {rec.pos} names a configuration that no "
                f"longer parses ({exc}); move the file away to start afresh"
            ) from exc
        if _fingerprint(config) != fingerprint:
            raise StateError(
                f"state file {self.store.path}: the reload at log position {rec.pos} was to configuration "
                f"{fingerprint}, made again it is {_fingerprint(config)} (another mqtt.prefix?); run with the "
                "configuration that wrote it, or move the file away to start afresh"
            )
        plan = plan_reload(self.pipeline.config, config)
        if plan.changes_state:
            self._switch(reloaded_pipeline(self.pipeline, config, plan))
        self.fingerprint = fingerprint
        log.info(
            "replayed a reload: configuration %s from log position %d",
            fingerprint,
            rec.pos,
            extra={"event": "reload_replayed", "fingerprint": fingerprint, "log_pos": rec.pos},
        )

    def _switch(self, pipeline: Pipeline) -> None:
        """``pipeline`` (of a reloaded configuration) takes the inputs from now on."""
        self.pipeline = pipeline
        self.live.engine = pipeline.engine
        self._full_next = True  # its keys' rows differ from the stored ones (windows, patterns gone or new)
        if self.discovery is not None:  # alert rules: each announced when it first raises
            self.discovery.patterns = pipeline.config.patterns
            self.discovery.anomaly = pipeline.config.anomaly

    def _renotify(self, config: Config) -> None:
        """``[[notify]]`` after a reload: unchanged targets keep their incidents and queues; new ones start afresh."""
        both = any(p.on == "both" for p in config.patterns) or config.anomaly.on == "both"
        if self.notifier is None:
            self.notifier = Notifier(config.notify, self.now_ms, retractions=both)
            self._notify_task = asyncio.create_task(self.notifier.run(self._notify_stop), name="notify")
        else:
            self.notifier.reconfigure(config.notify)
            self.notifier.retractions = both

    # --------------------------------------------------------------------------- checkpoint/recovery

    async def checkpoint(self) -> None:
        """Save the state at ``pos`` with the sink's memory moved to the spool, and truncate the log.

        The state is stored as a global part and a row per key (``gateway.ckpt_rows``), and only the keys whose
        state changed since the last committed checkpoint (the pipeline's ``dirty`` set) are snapshotted and
        written; rows of keys gone are deleted, in the same transaction.

        On the event loop, at once: the position, the global part and the order of every key (no values), and
        the set of changed keys. Then those keys are snapshotted on the loop a slice at a time while the pipeline
        goes on taking input: an input first has the keys it may change snapshotted (``Pipeline.reach``; a tick,
        or a message whose reach is not known beforehand, takes every key left), so each key is taken as it was at
        the checkpoint's position. The rows are encoded, compared with the stored rows' digests and compressed in
        a worker thread; so is the SQLite transaction, on the checkpoint's own connection, while the loop goes on:
        it holds the state file's ``write_gate`` (the sink's spool writes wait for its commit, without the loop
        waiting: ``StateStore.checkpoint_async``, ``SpoolingSink.spill_async``), while messages go on being
        logged, and so acknowledged, in the log file. Once it is committed, the log rows up to its position are
        dropped (``StateStore.trim_async``); a crash before that leaves rows the replay skips (it starts after the
        checkpoint's position) and the next start drops.

        Two phases: the sink's lines leave memory only after the transaction that spools them is committed. The
        lines spooled are all that are in memory then, the checkpoint's and those of inputs taken after its
        position, which the log still holds: a replay gives the same points again, which overwrite themselves.
        If the transaction fails - a locked database, a full disk, anything - it raises,
        the lines are still in memory, the log still holds everything after the previous checkpoint, and the keys
        taken count as changed again.
        """
        async with self._checkpointing:
            # the snapshot's new containers would set off collections of the whole heap (see _encode); they are all
            # gone when _checkpoint returns, before the collector runs again
            was_enabled = gc.isenabled()
            gc.disable()
            try:
                await self._checkpoint()
            finally:
                if was_enabled:
                    self.collector.after_pause()
                    gc.enable()
        self.checkpoints += 1
        if self.checkpoints % 10 == 0:
            await self.store.compact_async()

    async def _checkpoint(self) -> None:
        """:meth:`checkpoint`'s work, with the collector paused: every snapshot container goes with its frame."""
        pipeline = self.pipeline
        started = time.perf_counter()
        cap: _Capture | None = None
        committed = False
        try:
            pos = self.pos
            state: dict[str, Any] = {
                "version": STATE_VERSION,
                "fingerprint": self.fingerprint,
                "config": state_sections(pipeline.config),  # a restart after a reload restores with these
                "pipeline": pipeline.snapshot(order=True),
                "outbox": [[t, base64.b64encode(p).decode()] for t, p in self.outbox.queue],
                # those of messages logged up to ``pos``: a restart's replay adds the others, once each
                "recent": [d.hex() for d, q in zip(self.recent, self.recent_pos, strict=True) if q <= pos],
            }
            if self.bridge is not None:  # the first phase: the lines so far handed over, a file due complete
                state["bridge"] = self.bridge.prepare(self.now_ms(), roll=self._stopping)
            if self.discovery is not None:  # [homeassistant]: the device states and what is waiting to be sent
                state["homeassistant"] = self.discovery.snapshot()
                state["retained"] = [[t, base64.b64encode(p).decode()] for t, p in self.outbox.retained.items()]
            glob, order = split_order(state)
            glob["rows"] = ROW_MARK
            keys = set(pipeline.dirty)
            pipeline.dirty.clear()
            full = self._row_digests is None or self._full_next
            self._full_next = False
            if full:
                keys |= key_names(order)
            cap = self._capture = _Capture(pipeline, keys, every=full)
            on_loop = time.perf_counter() - started
            while cap.pending:
                t = time.perf_counter()
                cap.take(CAPTURE_SLICE)
                on_loop += time.perf_counter() - t
                if cap.pending:
                    await self._give_way()
            self._capture = None
            blob, delta, digests, index = await asyncio.to_thread(self._encode, glob, order, cap.rows, full)
            saved_ms = self.now_ms()
            t = time.perf_counter()
            await self.sink.spill_async(lambda chunks: self.store.checkpoint_async(pos, blob, saved_ms, chunks, delta))
            commit_s = time.perf_counter() - t
            self._row_digests, self._row_chunks = digests, index  # only once committed: a failed one changed no row
            committed = True
            if self.bridge is not None:  # the second phase: the complete files into the job's sight
                self.bridge.commit()
            try:
                await self.store.trim_async(pos)
            except Exception:  # a full disk: the rows stay, the replay skips them, the next checkpoint drops them
                log.warning(
                    "could not drop the log rows the checkpoint covers; the next checkpoint does",
                    exc_info=True, extra={"event": "log_trim_error"},
                )  # fmt: skip
            self.last_checkpoint = {
                "keys": len(keys), "slices": cap.slices, "rows_written": len(delta.put),
                "rows_deleted": len(delta.delete), "loop_s": on_loop, "commit_s": commit_s,
                "total_s": time.perf_counter() - started,
            }  # fmt: skip
        except Exception:
            self.checkpoint_failures += 1
            raise
        finally:
            self._capture = None
            if not committed and cap is not None:
                pipeline.dirty.update(cap.keys)  # the stored rows are still the last checkpoint's
                pipeline.mark_changed(cap.keys)  # and so are their chunks of panes: the next writes them all

    def _input_waiting(self) -> bool:
        """Input the pipeline has not taken yet: received and not logged, or logged and not taken (none once the
        gateway stops: what is logged then waits for the restart)."""
        if self._stopping:
            return False
        return self.ingest_stats.waiting() > 0 or self.pos < self.store.last_pos

    async def _give_way(self) -> None:
        """Between two slices of a checkpoint: let the input waiting be taken first (at most
        :data:`CHECKPOINT_YIELD_S`)."""
        until = time.perf_counter() + CHECKPOINT_YIELD_S
        await asyncio.sleep(0)
        for _ in range(10_000):  # each pass lets the ready input run once; the time bounds it first
            if not self._input_waiting() or time.perf_counter() >= until:
                return
            await asyncio.sleep(0)

    def _encode(
        self, glob: dict[str, Any], order: dict[str, Any], rows: dict[str, Any], full: bool
    ) -> tuple[bytes, RowDelta, dict[str, bytes], dict[str, tuple[str, ...]]]:
        """In a worker thread: the global part (compressed JSON), the rows to write (those whose JSON text differs
        from the stored one's; all when ``full``) and to delete (stored rows of keys the order row no longer
        names, and chunk rows of panes that a key taken this time no longer names: ``ckpt_rows.rows_gone``), the
        digest of every row stored after the checkpoint and each key's chunk rows then.

        Raises, and the next checkpoint writes every row, if the order row names a key whose row is neither
        taken nor stored (a key changed without being noted: the checkpoint would not restore), or a key's row a
        chunk of its panes that is neither.

        The cyclic garbage collector is paused meanwhile (by the caller): while the snapshot is alive its new
        containers would count as long-lived and set off a scan of the whole heap, holding the GIL (about 55 ms
        for 1,000 devices, bench/bench_checkpoint.py); the copy has no cycles and goes with its last reference.
        """
        old = self._row_digests
        digests: dict[str, bytes] = {} if full or old is None else dict(old)
        put: list[tuple[str, bytes]] = []
        chunks = {name: chunk_rows_of(name, row) for name, row in rows.items() if name.startswith("k")}
        rows[ORDER] = order
        waited, wait_max, row_wait = 0.0, CHECKPOINT_WAIT_MAX_S, CHECKPOINT_YIELD_S / 10
        for i, name in enumerate(list(rows)):
            if waited < wait_max and self._input_waiting():  # the loop has input: it gets the core and the GIL
                t = time.perf_counter()
                while self._input_waiting() and time.perf_counter() - t < row_wait:
                    time.sleep(0.0005)
                waited += time.perf_counter() - t
            # each row's containers are freed here, a row at a time: freed at once (on the loop, after the
            # checkpoint) the snapshot of every key held the GIL for hundreds of milliseconds
            text = encode_row(rows.pop(name))
            d = row_digest(text)
            if full or digests.get(name) != d:
                put.append((name, compress_row(text)))
            digests[name] = d
            if i % 8 == 7:
                _let_others_run()
        live = {"k" + k for k in key_names(order)}
        live.add(ORDER)
        gone, index = rows_gone(digests, {} if full or old is None else self._row_chunks, live, chunks)
        for n in gone:
            del digests[n]
        missing = live.difference(digests)
        for names in chunks.values():  # the chunks a key's row names: written now, or as stored before
            missing.update(names.difference(digests))
        if missing:
            self._row_digests = None
            raise StateError(f"checkpoint: no row taken or stored for keys {sorted(missing)[:5]}; the next writes all")
        delta = RowDelta(put, [] if full else gone, replace=full)
        return compress_checkpoint(dumps_in_pieces(glob)), delta, digests, index

    async def recover(self) -> None:
        """Restore the last checkpoint and replay the log after it through the pipeline.

        A checkpoint or log that cannot be read raises :class:`StateFileError` (damaged: ``edgekit-gateway
        recover`` salvages what is readable); one written with another configuration, :class:`StateError`.
        """
        path = self.store.path
        ck = self.store.load_checkpoint()
        if ck is not None:
            written = ck.state.get("fingerprint")
            # a reload logged after the checkpoint: the state goes on with its configuration, which must be this one
            reload = self.store.last_of_kind(ck.pos, KIND_RELOAD)
            final = read_payload(reload.payload)[0] if reload is not None else written
            check_version(path, ck.state.get("version"))
            if final != self.fingerprint:
                raise StateError(
                    f"state file {path}: the checkpoint was written with other windows, watermarks or prefix "
                    f"(fingerprint {final!r}"
                    + (f", after a reload at log position {reload.pos}" if reload is not None else "")
                    + f", now {self.fingerprint!r}); run with the configuration that wrote it, or move the file "
                    "away to start afresh"
                )
            if written != self.fingerprint:  # written before that reload: restored with the configuration it names
                self._before_reload(ck.state.get("config"), written)
            try:
                self.pipeline.restore(ck.state["pipeline"])
                outbox = [(topic, base64.b64decode(payload)) for topic, payload in ck.state.get("outbox", [])]
                recent = [bytes.fromhex(d) for d in ck.state.get("recent", [])]
                if self.discovery is not None and "homeassistant" in ck.state:
                    self.discovery.restore(ck.state["homeassistant"])
                    for topic, payload in ck.state.get("retained", []):
                        self.outbox.put_retained(topic, base64.b64decode(payload))
            except (KeyError, ValueError, TypeError, AttributeError) as exc:
                raise StateFileError(
                    path, f"damaged: its checkpoint cannot be restored ({type(exc).__name__}: {exc})", damaged=True
                ) from exc
            for topic, payload in outbox:
                self.outbox.put(topic, payload)
            self.recent.extend(recent)
            self.recent_pos.extend([ck.pos] * len(recent))
            self.pos = self.recovered_from = ck.pos
            # the rows stored hold what the state holds; after an older layout (no rows, or fewer parts in them)
            # the next checkpoint rewrites every row
            self._row_digests = (ck.row_digests or None) if ck.state.get("version") in ROW_VERSIONS else None
            self._row_chunks = chunk_index(self._row_digests or ())
            if self._row_digests is not None and ck.state.get("version") in CHUNK_VERSIONS:
                # the panes of the keys with chunk rows are as those hold them (before the replay); a key whose row
                # still holds its panes (written before chunk rows, not taken since) has all its chunks written next
                self.pipeline.mark_stored({owner[1:] for owner in self._row_chunks})
            self.pipeline.dirty.clear()
        if self.bridge is not None:
            self.bridge.recover(ck.state.get("bridge") if ck is not None else None, self.now_ms())
        try:
            for rec in self.store.tail(self.pos):
                if self._stopping:  # stopped during the replay: the next start goes on from the checkpoint
                    break
                if rec.kind in (KIND_MESSAGE, KIND_OVERSIZE):  # as _accept does
                    self.recent.append(_digest(rec.topic, rec.payload))
                    self.recent_pos.append(rec.pos)
                await self._apply(rec)
                self.replayed += 1
        except sqlite3.DatabaseError as exc:
            raise file_error(path, exc) from exc
        if ck is not None or self.replayed:
            log.info(
                "recovered",
                extra={"event": "recovered", "checkpoint_pos": self.recovered_from, "replayed": self.replayed,
                       "spool_lines": self.store.spool_lines},
            )  # fmt: skip

    def _before_reload(self, sections: object, fingerprint: object) -> None:
        """At recovery: the pipeline of the configuration a checkpoint was written with (``sections``, what
        :func:`~gateway.reload.state_sections` gave), which a reload in the log's tail replaced."""
        config = None
        if isinstance(sections, dict):
            try:
                config = with_sections(self.config, sections)
            except ConfigError:
                config = None
        if config is None or _fingerprint(config) != fingerprint:
            raise StateError(
                f"state file {self.store.path}: the checkpoint (configuration {fingerprint!r}) comes before a reload "
                "and does not say its configuration; move the file away to start afresh"
            )
        self._switch(Pipeline(config))
        self.fingerprint = str(fingerprint)

    def _begin_stop(self) -> None:
        """A clean stop: take no more input and let whatever waits for InfluxDB (a full spool) go on."""
        self._stopping = True
        self.sink.stop_waiting()
        self._caught_up.set()

    async def _watch_stop(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._begin_stop()

    # ------------------------------------------------------------------------------------- stats

    def snapshot_stats(self, live: bool = True, devices: object = None, now_ms: int | None = None) -> dict[str, object]:
        """The stats file's content; without ``live`` (every device's row, the recent windows and alerts), only the
        counters (what the health points need, every second). ``devices``: the devices' rows to give (None: made
        now), made at ``now_ms`` (None: now)."""
        stats: dict[str, object] = {
            "pipeline": {**self.pipeline.stats.as_dict(), "devices": len(self.pipeline.devices)},
            "sink": {
                **self.sink.stats.as_dict(),
                "pending": self.sink.pending,
                "memory": self.sink.in_memory,
                "healthy": self.sink.healthy,
                "spool_lines": self.store.spool_lines,
                "spool_bytes": self.store.spool_bytes,
                "spilled_raw": self.sink.spilled_lines[RAW],
                "spilled_other": self.sink.spilled_lines[OTHER],
                "full_waits": self.sink.waits,
            },
            "mqtt": {
                **self.ingest_stats.as_dict(),
                "published": self.outbox.sent,
                "outbox": len(self.outbox.queue),
                "outbox_shed": self.outbox.shed,
                "outbox_too_large": self.outbox.too_large,
                **(
                    {
                        "published_retained": self.outbox.sent_retained,
                        "retained_pending": len(self.outbox.retained),
                        "ha_entities": self.discovery.announced,
                    }
                    if self.discovery is not None
                    else {}
                ),
            },
            **self._bridge_stats(),
            **({"live": self.live.as_dict(self.now_ms() if now_ms is None else now_ms, devices)} if live else {}),
            **({"notify": self.notifier.stats()} if self.notifier is not None else {}),
            "state": {
                "log_pos": self.pos,
                "log_rows": self.store.log_rows,
                "checkpoints": self.checkpoints,
                "checkpoint_failures": self.checkpoint_failures,
                "recovered_from": self.recovered_from,
                "replayed": self.replayed,
                "redelivered": self.redelivered,
                "fingerprint": self.fingerprint,
                "reloads": self.reloads,
                "reloads_refused": self.reload_failures,
            },
            **({"last_reload": self.last_reload} if self.last_reload else {}),
        }
        return stats

    def _bridge_stats(self) -> dict[str, object]:
        if self.bridge is None:
            return {}
        b: dict[str, object] = {
            "lines": self.bridge.lines,
            "files": self.bridge.files,
            "in_progress_bytes": self.bridge.size,
        }
        if self.kafka is not None:
            b.update(kafka_sent=self.kafka.sent, kafka_files=self.kafka.files, kafka_failures=self.kafka.failures)
        return {"bridge": b}

    def _write_stats(self) -> None:
        """The stats file at once (at the stop: nothing else is waiting then)."""
        if self.stats_file is not None:
            self._stats_seq += 1
            self._write_stats_text(_compact(self.snapshot_stats()), self._stats_seq)

    async def _write_stats_async(self) -> None:
        """The stats file while the gateway runs: the devices' rows made and encoded :data:`STATS_SLICE` at a time,
        the loop running between two slices (1,000 devices at once held it for 10-20 ms every second, issue 19),
        the file written in a worker thread. Every row and the file's ``now_ms`` are of one time; the same text as
        :meth:`_write_stats`' at that time when no input is taken meanwhile, else each device's row is as it was
        when its slice was made, the counters as they were after the last."""
        if self.stats_file is None:
            return
        now = self.now_ms()
        pieces: list[str] = []
        async for names in self._device_slices():
            text = _dumps_compact(self.live.device_rows(now, names))
            if text != "{}":
                pieces.append(text[1:-1])
        self._stats_seq += 1
        seq = self._stats_seq
        devices = _Raw("{" + ",".join(pieces) + "}")
        text = _dumps_compact(self.snapshot_stats(devices=devices, now_ms=now))
        await asyncio.to_thread(self._write_stats_text, text, seq)

    async def _device_slices(self) -> AsyncIterator[list[str]]:
        """The live view's devices, :data:`STATS_SLICE` at a time, the event loop running between two slices."""
        names = self.live.device_names()
        for i in range(0, len(names), STATS_SLICE):
            if i:
                await asyncio.sleep(0)
            yield names[i : i + STATS_SLICE]

    def _write_stats_text(self, text: str, seq: int) -> None:
        """Write the stats file's ``text``, the ``seq``-th made, unless a later one is written already (the stop's
        write and a running one's in its worker thread)."""
        assert self.stats_file is not None
        with self._stats_lock:
            if seq <= self._stats_written:
                return
            tmp = self.stats_file.with_suffix(".tmp")
            tmp.write_text(text + "\n", encoding="utf-8")
            os.replace(tmp, self.stats_file)
            self._stats_written = seq

    # --------------------------------------------------------------------------------------- run

    async def _every_interval(self, stop: asyncio.Event, step: Callable[[], Awaitable[None]], what: str) -> None:
        """Run ``step`` every ``stats_interval_s`` until ``stop``; a failure (a full disk, a busy database) is
        logged and tried again next time, never dies silently. The same failure again is logged without its
        traceback, so a disk that stays full does not fill the journal with them."""
        last = ""
        while not stop.is_set():
            try:
                await step()
                last = ""
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                if error != last:
                    log.exception("%s failed; trying again", what, extra={"event": f"{what}_error"})
                else:
                    log.warning("%s failed again; trying again", what, extra={"event": f"{what}_error", "error": error})
                last = error
            try:
                await asyncio.wait_for(stop.wait(), self.stats_interval_s)
            except TimeoutError:
                pass

    async def _tick_loop(self, stop: asyncio.Event) -> None:
        """Once a second: let time move the engine (idle devices), write health points, maybe checkpoint.

        A tick is pipeline input: while the spool is full it waits with the rest (see :meth:`_status_loop`)."""
        last_checkpoint = time.monotonic()

        async def step() -> None:
            nonlocal last_checkpoint
            await self._tick()
            now, live = self.now_ms(), self.live
            lines = live.health_lines(now, self.snapshot_stats(live=False), devices=False)  # deploy
            if live.devices_due(now):  # every device's point, once a minute: a slice at a time, as the stats file
                async for names in self._device_slices():
                    lines += live.device_lines(now, names)
            await self.sink.add(lines)
            if time.monotonic() - last_checkpoint >= self.config.state.checkpoint_interval_s:
                await self.checkpoint()
                last_checkpoint = time.monotonic()

        await self._every_interval(stop, step, "tick")

    async def _status_loop(self, stop: asyncio.Event) -> None:
        """Once a second: sample the metrics and write the stats file - never waiting on the pipeline or the
        sink, so that ``top`` and the stats file go on showing a full spool while InfluxDB is away."""

        async def step() -> None:
            self.metrics.sample()
            self.collector.tick()
            await self._write_stats_async()

        await self._every_interval(stop, step, "stats")

    async def _probe_database(self) -> None:
        """Say at start whether InfluxDB takes writes to the configured database; a database that does not exist
        (and that the gateway is not to create) is a configuration error. InfluxDB away: spool until it is back."""
        from .probe import probe_database

        found = await probe_database(self.config.influx, timeout_s=5.0)
        if found.outcome == "missing" and self.config.influx.target == "v1":
            raise ConfigError(found.message)
        if found.ok:
            level = logging.WARNING if "creates it" in found.message else logging.INFO
            log.log(level, found.message, extra={"event": "influx_probe", "outcome": found.outcome})
        else:
            log.error(
                "%s; the gateway runs on and spools what it cannot write",
                found.message,
                extra={"event": "influx_probe", "outcome": found.outcome},
            )

    async def run(self, stop: asyncio.Event) -> None:
        cfg = self.config
        log.info(
            "gateway starting",
            extra={"event": "start", "influx": cfg.influx.target, "influx_url": redact_url(cfg.influx.url),
                   "broker": f"{cfg.mqtt.host}:{cfg.mqtt.port}", "state": str(self.store.path)},
        )  # fmt: skip
        server = (
            await self.metrics.serve(cfg.metrics.host, cfg.metrics.port, self._reload_http)
            if cfg.metrics.port
            else None
        )
        # a stop is seen at once, even while the replay or ingest waits for room in a full spool
        watcher = asyncio.create_task(self._watch_stop(stop), name="stop-watch")
        status_task = asyncio.create_task(self._status_loop(stop), name="status")  # from the start: the replay too
        self.collector.install()
        notify_stop = self._notify_stop
        if self.notifier is not None:
            self._notify_task = asyncio.create_task(self.notifier.run(notify_stop), name="notify")
        try:
            await self._probe_database()
            await self.sink.start()
            await self.recover()
            await self.checkpoint()
            self.started.set()
            tick_task = asyncio.create_task(self._tick_loop(stop), name="tick")
            if self.kafka is not None:
                kafka_task = asyncio.create_task(self.kafka.run(stop), name="kafka")
            try:
                await run_durable_ingest(
                    cfg.mqtt,
                    self._accept_logged,
                    self._process,
                    self.ingest_stats,
                    stop,
                    self.outbox,
                    batch=cfg.state.ingest_batch,
                    max_packet=max_packet_size(cfg.limits),
                )
            finally:
                stop.set()
                self._begin_stop()
                await tick_task
                if self.kafka is not None:  # a send in flight is cut off: its file is sent again from its progress
                    await asyncio.wait({kafka_task}, timeout=5.0)
                    kafka_task.cancel()
                # with InfluxDB away there is nothing to wait for: the final checkpoint spools what is left
                drained = await self.sink.drain(30.0) if self.sink.healthy else False
                await self.sink.close()
                try:
                    await self.checkpoint()
                    self.store.compact()
                except Exception:  # a full disk: the log keeps every input since the last checkpoint for the restart
                    log.exception(
                        "the final checkpoint failed: the next start replays the log from the last one",
                        extra={"event": "checkpoint_error"},
                    )
                self._write_stats()
                stats: dict[str, Any] = self.snapshot_stats()
                p, s = stats["pipeline"], stats["sink"]
                means = (
                    "every point written to InfluxDB"
                    if drained
                    else "InfluxDB did not take every point before the stop: the rest are in the spool of the "
                    "state file and are written at the next start"
                )
                log.info(
                    "gateway stopped: %d messages, %d readings accepted, %d duplicates, %d dead letters; %d points "
                    "written; drained=%s: %s",
                    p["messages"], p["readings_accepted"], p["duplicates"], p["dead_letters"], s["points_written"],
                    drained, means,
                    # the live view (every device) is the stats file's, not a log line's
                    extra={"event": "stop", "drained": drained, "drained_means": means,
                           **{k: v for k, v in stats.items() if k != "live"}},
                )  # fmt: skip
        finally:
            watcher.cancel()
            status_task.cancel()
            self.collector.remove()
            if self._notify_task is not None:  # a reload may have made one
                notify_stop.set()
                await self._notify_task
            if self.recorder is not None:  # deploy
                self.recorder.close()
            if server is not None:
                await server.cleanup()
            if self.bridge is not None:
                self.bridge.close()
            self.store.close()
