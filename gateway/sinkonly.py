"""Sink-only mode: a Flink job's results to InfluxDB, each committed file once (docs/scale-out.md).

The job writes its results in the output schema of docs/scale-out.md ("Output") as part files under
``sink_only.dir``: ``windows/``, ``late/`` and ``alerts/`` (a files sink commits a part file by renaming it to a
name without a leading ``.``; names starting with ``.`` or ``_`` are never read, in any folder). Each record
becomes the very point the gateway itself writes for the same result (:class:`~gateway.engine.outputs.WindowResult`,
:class:`~gateway.engine.outputs.LateReading`, :class:`~gateway.alerts.Alert`), in the same measurements, through
the gateway's spooling sink: memory, then the on-disk spool while InfluxDB is away or slow, retries with backoff.

Which files are consumed is part of the checkpoint (in the state file, ``<state.dir>/<client id>.db``), taken with
the sink's unwritten lines moved to the spool in one transaction, every ``state.checkpoint_interval_s`` and at a
clean stop. A crash after the last checkpoint reads the files taken since once more: their points are written
again onto themselves (every point is deterministic; a window's ``emitted_ms`` is this gateway's clock).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .alerts import Alert, alert_topic
from .app import state_path, wall_clock_ms
from .config import Config
from .engine.outputs import LateReading, WindowResult
from .errors import StateError
from .ingest import IngestStats, Outbox, run_publisher
from .lineproto import NS_PER_MS, line
from .live import GATEWAY_HEALTH, HEALTH_INTERVAL_MS, health_fields
from .metrics import Served, notify_metrics, sink_metrics
from .model import DeadLetter, MetricValue
from .notify import Notifier
from .pipeline import window_topic
from .points import dead_letter_line
from .protocol import NAME_RE
from .sinks import make_writer
from .spool import OTHER, RAW, SpoolingSink
from .state import StateStore

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

__all__ = ["KINDS", "SinkOnly", "alert_from_record", "alert_line", "late_line", "window_from_record", "window_line"]

log = logging.getLogger("gateway.sink_only")

KINDS: Final = ("windows", "late", "alerts")
"""The job's output folders under ``sink_only.dir``, each read in this order."""

STATE_VERSION: Final = 2
"""1: the files consumed; 2: and the publish queue (``outbox``). A version 1 state is taken as it is."""
CHUNK_BYTES: Final = 1 << 20
"""A result file is read and converted about this many bytes at a time."""


def window_line(doc: dict[str, Any], emitted_ms: int) -> str:
    """The ``window`` point of a window result record (``WindowResult.to_payload``'s object)."""
    return window_from_record(doc, emitted_ms).to_line()


def _site(doc: dict[str, Any]) -> str:
    """The record's site: a topic level, as the gateway's sites are (docs/protocol.md); else the record is amiss (the
    site names the topic its alert or window result is published on, which MQTT would refuse)."""
    site = str(doc["site"])
    if not NAME_RE.fullmatch(site):
        raise ValueError(f"site {site!r}: not a site name (1 to 32 of A-Z a-z 0-9 _ -)")
    return site


def window_from_record(doc: dict[str, Any], emitted_ms: int) -> WindowResult:
    """The gateway's :class:`WindowResult` of a window result record, stamped ``emitted_ms``."""
    device = doc.get("device")
    aggs = {str(k): float(v) for k, v in dict(doc["aggregates"]).items() if v is not None}
    site = _site(doc)
    key = str(device if device is not None else site)
    res = WindowResult(
        str(doc["window"]), "device" if device is not None else "site", key, site, int(doc["start_ms"]),
        int(doc["end_ms"]), str(doc["metric"]), int(doc["count"]), aggs,
        int(doc["revision"]), doc["fired"],
    )  # fmt: skip
    if res.fired not in ("watermark", "late", "superseded", "early"):
        raise ValueError(f"fired {res.fired!r}")
    res.emitted_ms = emitted_ms
    return res


def late_line(doc: dict[str, Any]) -> str:
    """The ``late_reading`` point of a late record."""
    value = doc.get("value")
    wm = doc.get("watermark_ms")
    return LateReading(
        str(doc["window"]), _site(doc), str(doc["device"]), str(doc["metric"]), int(doc["t_ms"]),
        int(doc["boot"]), int(doc["seq"]), int(doc["late_by_ms"]), None if wm is None else int(wm), str(doc["reason"]),
        None if value is None else float(value),
    ).to_line()  # fmt: skip


def alert_line(doc: dict[str, Any], config: Config) -> str:
    """The ``alert`` point of a pattern alert record (:func:`alert_from_record`)."""
    return alert_from_record(doc, config).to_line()


def alert_from_record(doc: dict[str, Any], config: Config) -> Alert:
    """The gateway's :class:`Alert` of a pattern alert record: its id from the readings (``alerts.alert_id``), its
    details in their metrics' declared types, its message as the gateway writes it (the pattern's ``message``, or
    its name and the steps the alert's details name, or every required step when they name none)."""
    readings = []
    for text in doc["readings"]:
        device, boot, seq = str(text).rsplit("/", 2)
        readings.append((device, int(boot), int(seq)))
    details: dict[str, MetricValue] = {}
    for name, raw in dict(doc.get("details") or {}).items():
        if raw is None:  # the step's reading lacks the metric: the gateway shows no value either
            continue
        metric = str(name).rpartition(".")[2]
        details[str(name)] = _typed(str(raw), config.metric_types.of(metric))
    name = str(doc["name"])
    pattern = next((p for p in config.patterns if p.name == name), None)
    message = str(doc.get("message") or "")
    if not message and pattern is not None:
        named = {k.partition(".")[0] for k in details}
        steps = [s.name for s in pattern.steps if not s.negated and (s.name in named or (s.min_count and not named))]
        message = pattern.message or f"{name}: " + " -> ".join(dict.fromkeys(steps)) + f" on {doc['key']}"
    return Alert(
        source="pattern", name=name, site=_site(doc), key=str(doc["key"]), severity=doc["severity"],
        first_ms=int(doc["first_ms"]), last_ms=int(doc["last_ms"]), readings=tuple(readings), message=message,
        details=details,
    )  # fmt: skip


def _typed(raw: str, kind: str) -> MetricValue:
    """A detail written as a string by the job (``CAST(... AS STRING)``) as the gateway's value of that type."""
    if kind == "string":
        return raw
    if kind == "boolean":
        low = raw.strip().lower()
        if low not in ("true", "false"):
            raise ValueError(f"not a boolean: {raw!r}")
        return low == "true"
    if kind == "integer":
        return int(float(raw)) if "." in raw or "e" in raw.lower() else int(raw)
    return float(raw)


def _visible(path: Path, root: Path) -> bool:
    return not any(part.startswith((".", "_")) for part in path.relative_to(root).parts)


class SinkOnly:
    """The sink-only gateway: ``await SinkOnly(config).run(stop)`` until ``stop`` is set."""

    def __init__(
        self,
        config: Config,
        *,
        now_ms: Callable[[], int] = wall_clock_ms,
        stats_file: Path | None = None,
        stats_interval_s: float = 1.0,
    ) -> None:
        self.config = config
        self.now_ms = now_ms
        self.root = Path(config.sink_only.dir)
        self.store = StateStore(state_path(config), sync=config.state.sync)
        self.sink = SpoolingSink(
            make_writer(config.influx), config.influx, self.store, spool_max_bytes=config.state.spool_max_bytes
        )
        self.stats_file = stats_file
        self.stats_interval_s = stats_interval_s
        self.done: set[str] = set()
        """Files consumed (paths relative to ``sink_only.dir``), as of the last checkpoint and since."""
        self.files = 0
        self.records = 0
        self.bad_records = 0
        self.checkpoints = 0
        self.checkpoint_failures = 0
        self.unreadable = 0
        """Times a committed result file could not be read (tried again at the next poll)."""
        self._unreadable_logged: set[str] = set()
        self.recovered = 0
        self.by_kind = dict.fromkeys(KINDS, 0)
        """Records taken (and not dead letters), by output folder."""
        self.started_ms = now_ms()
        self.outbox = Outbox()
        """What to publish (``sink_only.publish``): the job's alerts, and the results of windows with ``publish``;
        what is unsent is in the checkpoint."""
        self._published = frozenset(w.name for w in config.engine.windows if w.publish)
        self.mqtt_stats = IngestStats()
        self.notifier = Notifier(config.notify, now_ms) if config.notify else None
        """``[[notify]]``: the job's alerts to people, as a standalone gateway sends its own (docs/notify.md)."""

    def _scan(self) -> Iterator[tuple[str, Path]]:
        for kind in KINDS:
            base = self.root / kind
            if not base.is_dir():
                continue
            found = [p for p in base.rglob("*") if p.is_file() and _visible(p, self.root)]
            for p in sorted(found):
                rel = p.relative_to(self.root).as_posix()
                if rel not in self.done:
                    yield kind, p

    def _convert(
        self, kind: str, path: Path, raw: list[bytes], first: int
    ) -> tuple[list[str], list[Alert], list[tuple[str, bytes]]]:
        """The points of a file's lines ``raw`` (its line ``first`` on), the alerts among them, and what to publish
        (``sink_only.publish``: alerts, results of windows with ``publish``) as a standalone gateway does."""
        now = self.now_ms()
        lines: list[str] = []
        alerts: list[Alert] = []
        messages: list[tuple[str, bytes]] = []
        publish, prefix = self.config.sink_only.publish, self.config.mqtt.prefix
        for i, raw_line in enumerate(raw, first):
            text = raw_line.rstrip(b"\r\n")
            if not text.strip():
                continue
            try:
                doc = json.loads(text)
                if kind == "windows":
                    res = window_from_record(doc, now)
                    lines.append(res.to_line())
                    if publish and res.window in self._published:
                        messages.append((window_topic(prefix, res.site, res.window), res.to_payload()))
                elif kind == "late":
                    lines.append(late_line(doc))
                else:
                    alert = alert_from_record(doc, self.config)
                    lines.append(alert.to_line())
                    alerts.append(alert)
                    if publish:
                        messages.append((alert_topic(prefix, alert.site, alert.source), alert.to_json()))
                self.by_kind[kind] += 1
            # a number too large for an integer (1e400), JSON nested deeper than Python recurses: also amiss
            except (ValueError, KeyError, TypeError, AttributeError, ArithmeticError, RecursionError) as exc:
                self.bad_records += 1
                lines.append(self._bad(path, i, text, f"{type(exc).__name__}: {exc}"))
                log.error(
                    "a result record not in the documented schema: a dead letter bad_result",
                    extra={"event": "bad_result", "file": str(path), "line": i, "error": f"{type(exc).__name__}: {exc}",
                           "excerpt": text[:200].decode("utf-8", "replace")},
                )  # fmt: skip
        self.records += len(lines)
        return lines, alerts, messages

    def _bad(self, path: Path, number: int, text: bytes, error: str) -> str:
        """The ``bad_result`` dead letter of a line: the same point again when the file is read again (timestamped at
        the file's modification time, kept apart by the line's number)."""
        rel = path.relative_to(self.root).as_posix()
        try:
            mtime_ms = int(path.stat().st_mtime * 1000)
        except OSError:
            mtime_ms = self.now_ms()
        dead = DeadLetter(
            reason="bad_result", detail=error[:500], topic=rel, received_ms=mtime_ms, size=len(text),
            excerpt=text[:200].decode("utf-8", "replace"), index=number,
        )  # fmt: skip
        return dead_letter_line(dead, number)

    def recover(self) -> None:
        ck = self.store.load_checkpoint()
        if ck is None:
            return
        version = ck.state.get("version")
        if ck.state.get("mode") != "sink_only" or not isinstance(version, int):
            raise StateError(
                f"state file {self.store.path}: written by a gateway in another mode; give the sink-only gateway a "
                "client id (mqtt.client_id) or state.dir of its own"
            )
        if version > STATE_VERSION:
            raise StateError(
                f"state file {self.store.path}: written by a newer edgekit (sink-only state version {version}, this "
                f"one reads up to {STATE_VERSION}); run that version, or move the file away to start afresh (the "
                "files it consumed would be read again)"
            )
        self.done = set(ck.state.get("done", []))
        self.recovered = len(self.done)
        for topic, payload in ck.state.get("outbox", []):  # alerts not yet acknowledged by the broker
            self.outbox.put(str(topic), base64.b64decode(payload))

    async def checkpoint(self) -> None:
        """The files consumed, and the sink's lines in memory moved to the spool, in one transaction. Names of files
        no longer in the folder are dropped (the job's old output removed)."""
        present = {p.relative_to(self.root).as_posix() for kind in KINDS for p in (self.root / kind).rglob("*")}
        self.done &= present
        state: dict[str, Any] = {"version": STATE_VERSION, "mode": "sink_only", "done": sorted(self.done)}
        if self.outbox.queue:  # the files they came from are done: unsent alerts go with them
            state["outbox"] = [[t, base64.b64encode(p).decode()] for t, p in self.outbox.queue]
        self.sink.spill(lambda chunks: self.store.checkpoint(0, state, self.now_ms(), chunks))
        self.checkpoints += 1

    def snapshot_stats(self) -> dict[str, object]:
        return {
            "mode": "sink_only",
            "files": {"consumed": self.files, "known": len(self.done), "records": self.records,
                      "bad_records": self.bad_records, "recovered": self.recovered, "unreadable": self.unreadable},
            "sink": {**self.sink.stats.as_dict(), "pending": self.sink.pending, "healthy": self.sink.healthy,
                     "spool_lines": self.store.spool_lines},
            "pipeline": {"window_results": self.by_kind["windows"], "late_readings": self.by_kind["late"],
                         "alerts": self.by_kind["alerts"], "dead_letters": self.bad_records},
            "state": {"checkpoints": self.checkpoints, "checkpoint_failures": self.checkpoint_failures},
            **({"mqtt": {"connected": self.mqtt_stats.connected, "connects": self.mqtt_stats.connects,
                         "published": self.outbox.sent, "outbox": len(self.outbox.queue),
                         "outbox_shed": self.outbox.shed, "outbox_too_large": self.outbox.too_large}}
               if self.config.sink_only.publish else {}),
            **({"notify": self.notifier.stats()} if self.notifier is not None else {}),
        }  # fmt: skip

    async def _health(self) -> None:
        """A ``gateway_health`` point (the fields the gateway's have that this mode counts), in processing time."""
        now = self.now_ms()
        fields = health_fields(self.snapshot_stats())
        fields["uptime_s"] = (now - self.started_ms) // 1000
        await self.sink.add([line(GATEWAY_HEALTH, {"gateway": self.config.mqtt.client_id}, fields, now * NS_PER_MS)])

    async def _checkpoint_or_later(self) -> None:
        """A checkpoint; one that fails (a full disk, a lock) changes nothing and is tried again at the next interval:
        the files since the last one are read again after a crash."""
        try:
            await self.checkpoint()
        except Exception:
            self.checkpoint_failures += 1
            log.exception("checkpoint failed; trying again later", extra={"event": "checkpoint_error"})

    async def _status_loop(self, stop: asyncio.Event) -> None:
        """Every ``stats_interval_s`` the stats file, every 10 s a ``gateway_health`` point, beside the reader: both go
        on while it waits for room in a full spool or reads a long backlog (the point itself then waits in a task of
        its own, as the gateway's does). A failure (a full disk) is logged and tried again next time."""
        health: asyncio.Task[None] | None = None
        next_health = 0
        try:
            while not stop.is_set():
                try:
                    self._write_stats()
                    now = self.now_ms()
                    if now >= next_health and (health is None or health.done()):
                        health = asyncio.create_task(self._health())
                        next_health = now - now % HEALTH_INTERVAL_MS + HEALTH_INTERVAL_MS
                except Exception:
                    log.exception("stats failed; trying again", extra={"event": "stats_error"})
                try:
                    await asyncio.wait_for(stop.wait(), self.stats_interval_s)
                except TimeoutError:
                    pass
        finally:
            if health is not None:
                health.cancel()

    def _write_stats(self) -> None:
        if self.stats_file is None:
            return
        tmp = self.stats_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.snapshot_stats(), separators=(",", ":")) + "\n", encoding="utf-8")
        os.replace(tmp, self.stats_file)

    async def _consume(self, kind: str, path: Path) -> None:
        """A file's points into the sink, about :data:`CHUNK_BYTES` at a time (a part file may be large)."""
        fh = await asyncio.to_thread(open, path, "rb")
        with fh:
            first = 1
            while True:
                raw = await asyncio.to_thread(fh.readlines, CHUNK_BYTES)
                if not raw:
                    return
                lines, alerts, messages = await asyncio.to_thread(self._convert, kind, path, raw, first)
                first += len(raw)
                for topic, payload in messages:
                    self.outbox.put(topic, payload)
                if alerts and self.notifier is not None:
                    self.notifier.offer(alerts)  # never waits: a full inbox is counted (notify.shed)
                await self.sink.add(lines)  # waits while memory and spool are full

    async def run(self, stop: asyncio.Event) -> None:
        cfg = self.config
        log.info("sink-only gateway starting", extra={"event": "start", "dir": str(self.root)})

        async def watch() -> None:  # a stop is seen at once, also while a full spool holds the reader back
            await stop.wait()
            self.sink.stop_waiting()

        try:
            self.recover()  # first: the state file of a gateway in another mode is left as it is (its spool too)
        except BaseException:
            self.store.close()
            raise
        watcher = asyncio.create_task(watch())
        tasks: list[asyncio.Task[None]] = []
        server = None
        status: asyncio.Task[None] | None = None
        notify_stop = asyncio.Event()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            await self.sink.start()
            await self.checkpoint()
            if cfg.sink_only.publish:
                tasks.append(asyncio.create_task(run_publisher(cfg.mqtt, self.outbox, self.mqtt_stats, stop)))
            if self.notifier is not None:
                tasks.append(asyncio.create_task(self.notifier.run(notify_stop)))
            if cfg.metrics.port:
                server = await SinkOnlyMetrics(self).serve(cfg.metrics.host, cfg.metrics.port)
            status = asyncio.create_task(self._status_loop(stop))
            last = time.monotonic()
            while not stop.is_set():
                for kind, path in self._scan():
                    rel = path.relative_to(self.root).as_posix()
                    try:
                        await self._consume(kind, path)
                    except OSError as exc:  # removed meanwhile, an I/O error: not consumed; read at a later poll
                        self.unreadable += 1
                        if rel not in self._unreadable_logged:  # once a file, not at every poll
                            self._unreadable_logged.add(rel)
                            log.error(
                                "a result file cannot be read: tried again at each poll",
                                extra={"event": "result_unreadable", "file": str(path),
                                       "error": f"{type(exc).__name__}: {exc}"},
                            )  # fmt: skip
                        continue
                    self._unreadable_logged.discard(rel)
                    self.done.add(rel)
                    self.files += 1
                    if stop.is_set():
                        break
                    if time.monotonic() - last >= cfg.state.checkpoint_interval_s:
                        await self._checkpoint_or_later()
                        last = time.monotonic()
                if time.monotonic() - last >= cfg.state.checkpoint_interval_s:
                    await self._checkpoint_or_later()
                    last = time.monotonic()
                try:
                    await asyncio.wait_for(stop.wait(), cfg.sink_only.poll_interval_s)
                except TimeoutError:
                    pass
        finally:
            watcher.cancel()
            if status is not None:
                status.cancel()
            self.sink.stop_waiting()  # from here on, add never waits
            await self._health()  # the counts and the connection at the stop
            stop.set()  # the publisher sends what is queued (5 s at most) and ends
            notify_stop.set()
            if tasks:
                await asyncio.wait(tasks, timeout=10.0)
                for t in tasks:
                    t.cancel()
            drained = await self.sink.drain(30.0) if self.sink.healthy else False
            await self.sink.close()
            try:
                await self.checkpoint()
            except Exception:
                log.exception("the final checkpoint failed", extra={"event": "checkpoint_error"})
            self._write_stats()
            if server is not None:
                await server.cleanup()
            log.info(
                "sink-only gateway stopped: %d files, %d records; drained=%s",
                self.files, self.records, drained, extra={"event": "stop", "drained": drained},
            )  # fmt: skip
            self.store.close()


class SinkOnlyMetrics(Served):
    """``[metrics] port``: ``/metrics`` (Prometheus: the gateway's names where the meaning is the same), ``/healthz``
    and ``/readyz`` (ready while InfluxDB takes writes) of a sink-only gateway."""

    def __init__(self, so: SinkOnly) -> None:
        self.so = so
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_SinkOnlyCollector(so))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def health(self) -> dict[str, object]:
        so = self.so
        publish = so.config.sink_only.publish
        ok = so.sink.healthy and (so.mqtt_stats.connected or not publish)
        return {
            "status": "ok" if ok else "degraded",
            "mode": "sink_only",
            "influx_healthy": so.sink.healthy,
            "mqtt_connected": so.mqtt_stats.connected if publish else None,
            "spool_lines": so.store.spool_lines,
            "files_known": len(so.done),
        }

    def ready(self, health: dict[str, object]) -> bool:
        return bool(health["influx_healthy"])


class _SinkOnlyCollector(Collector):
    def __init__(self, so: SinkOnly) -> None:
        self.so = so

    def collect(self) -> Iterator[Metric]:
        so = self.so
        files = CounterMetricFamily("edgekit_sink_only_files", "Result files consumed in this run", value=so.files)
        yield files
        yield GaugeMetricFamily("edgekit_sink_only_files_known", "Result files consumed, as checkpointed and since",
                                value=len(so.done))  # fmt: skip
        yield CounterMetricFamily("edgekit_window_results", "Window results written (the job's)",
                                  value=so.by_kind["windows"])  # fmt: skip
        yield CounterMetricFamily("edgekit_late_readings", "Late records written (the job's)", value=so.by_kind["late"])
        yield CounterMetricFamily("edgekit_alerts", "Alerts written (the job's)", value=so.by_kind["alerts"])
        dead = CounterMetricFamily("edgekit_dead_letters", "Dead letters by reason", labels=["reason"])
        by_reason = {"bad_result": so.bad_records, **so.sink.stats.by_reason()}
        for reason, n in sorted(by_reason.items()):
            dead.add_metric([reason], n)
        yield dead
        depth = GaugeMetricFamily("edgekit_queue_depth", "Items waiting, by queue", labels=["queue"])
        depth.add_metric(["sink_memory_raw"], len(so.sink.memory[RAW]))
        depth.add_metric(["sink_memory_other"], len(so.sink.memory[OTHER]))
        depth.add_metric(["outbox"], len(so.outbox.queue))
        yield depth
        yield from sink_metrics(so.store, so.sink)
        if so.config.sink_only.publish:
            yield GaugeMetricFamily("edgekit_mqtt_connected", "1 while connected to the broker",
                                    value=float(so.mqtt_stats.connected))  # fmt: skip
        yield CounterMetricFamily("edgekit_checkpoints", "Checkpoints taken", value=so.checkpoints)
        yield CounterMetricFamily("edgekit_checkpoint_failures",
                                  "Checkpoints that failed (tried again later; nothing moved)",
                                  value=so.checkpoint_failures)  # fmt: skip
        if so.notifier is not None:
            yield from notify_metrics(so.notifier)
