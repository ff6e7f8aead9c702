"""Bridge mode: every accepted reading forwarded to an Apache Flink job, exactly once (docs/scale-out.md).

The gateway at a site runs ingest, decoding, validation, deduplication and the durable log as in standalone mode,
and the per-device rules that ``compile --target flink-sql`` leaves to the site (patterns, joins, anomaly
detection); the windows of its configuration run on the cluster instead. Each accepted reading
becomes one line of the input schema (:func:`reading_record`, docs/scale-out.md "Input"), appended to a file.

**Files, committed with the checkpoint** (:class:`FileForwarder`, the two phases of Flink's own file sink). Lines
go to an in-progress file whose name starts with ``.`` (Flink's file source never reads it). Every checkpoint of
the gateway records, in the same SQLite transaction as the pipeline state and the log position, how many bytes
of the in-progress file belong to it, and which files are complete. A file is complete ("rolled") when it is
over ``bridge.roll_bytes`` or older than ``bridge.roll_interval_s`` at a checkpoint, and at a clean stop; only
after the transaction has committed is it renamed to ``readings-<first n>.jsonl``, in the same directory
(atomic: the job sees the whole file or nothing). After a crash, the restart renames the complete files the
checkpoint names that are still hidden, cuts the in-progress file back to the checkpoint's length, deletes
hidden files begun after it, and replays the log: the pipeline is deterministic, so the replay writes the same
lines again, with the same ``n``. Nothing is lost (a reading is acknowledged to MQTT only once logged, as
always) and nothing is written twice.

**Kafka** (:class:`KafkaForwarder`): the committed files are then a local outbox; each line is sent as a record
(key ``site/device``, value the line) by aiokafka's producer with idempotence and ``acks=all``, and a file is
deleted once every record of it is acknowledged, its progress kept in ``.kafka-progress`` (renamed into
place). A crash between a send and the progress file repeats the records of that file since the last progress:
at least once into Kafka, each repeat with the same ``(device, boot, seq)`` and ``n``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from .config import BridgeConfig, Config
from .errors import StateError
from .model import Reading
from .state import fsync_dir

__all__ = [
    "N_PER_POS",
    "FileForwarder",
    "KafkaForwarder",
    "bridge_pipeline_config",
    "committed_files",
    "kafka_record",
    "message_records",
    "producer_config",
    "reading_record",
    "reading_record_reference",
    "watermark_top",
]

log = logging.getLogger("gateway.bridge")

N_PER_POS: Final = 1 << 16
"""``n`` = log position x this + the reading's place among its message's accepted readings (at most
``limits.max_readings``, which bridge mode keeps at or below this)."""

PREFIX: Final = "readings-"
SUFFIX: Final = ".jsonl"
HIDDEN_SUFFIX: Final = ".inprogress"
FINAL_RE: Final = re.compile(r"readings-([0-9]{20})\.jsonl")
HIDDEN_RE: Final = re.compile(r"\.readings-([0-9]{20})\.jsonl\.inprogress")


def final_name(first_n: int) -> str:
    """``readings-<first n, 20 digits>.jsonl``: the files sort by name in the order they were written."""
    return f"{PREFIX}{first_n:020d}{SUFFIX}"


def hidden_name(final: str) -> str:
    return f".{final}{HIDDEN_SUFFIX}"


_HEADS: dict[tuple[str, str], str] = {}
_KEYS: dict[str, str] = {}
_CACHE_MAX: Final = 100_000
_HUGE: Final = 1.7976931348623157e308
_Q: Final = {"s": '"s"', "c": '"c"', "u": '"u"'}


def _key(name: str) -> str:
    k = _KEYS.get(name)
    if k is None:
        k = json.dumps(name, ensure_ascii=False) + ":"
        if len(_KEYS) < _CACHE_MAX:
            _KEYS[name] = k
    return k


def reading_record(
    reading: Reading, n: int, received_ms: int, wm_ms: int | None = None, wm0_ms: int | None = None
) -> bytes:
    """One line of the input schema (docs/scale-out.md): the reading, its place ``n``, the watermark field of the
    earlier messages (``wm0_ms``) and, on the last reading of a message, its own (``wm_ms``). Booleans are in
    ``num`` as 1.0 / 0.0 and in ``bool``; strings only in ``str``.

    The same bytes as :func:`reading_record_reference` (a test compares them), with each device's head and each
    metric's key rendered once, and numbers written as ``json.dumps`` writes them."""
    num: list[str] = []
    text: list[str] = []
    flags: list[str] = []
    for name, v in reading.metrics.items():
        if type(v) is float:
            if not -_HUGE <= v <= _HUGE:  # NaN, infinity: the reference refuses them
                return reading_record_reference(reading, n, received_ms, wm_ms, wm0_ms)
            num.append(_key(name) + repr(v))
        elif type(v) is bool:
            k = _key(name)
            num.append(k + ("1.0" if v else "0.0"))
            flags.append(k + ("true" if v else "false"))
        elif type(v) is str:
            text.append(_key(name) + json.dumps(v, ensure_ascii=False))
        elif type(v) is int and -(2**63) <= v < 2**64:
            num.append(_key(name) + repr(float(v)))
        else:
            return reading_record_reference(reading, n, received_ms, wm_ms, wm0_ms)
    q = _Q.get(reading.quality)
    boot, seq, t_ms = reading.boot, reading.seq, reading.t_ms
    if q is None or type(boot) is not int or type(seq) is not int or type(t_ms) is not int:
        return reading_record_reference(reading, n, received_ms, wm_ms, wm0_ms)
    where = (reading.site, reading.device)
    head = _HEADS.get(where)
    if head is None:
        head = f'{{"v":1,"site":{json.dumps(where[0], ensure_ascii=False)},"device":' + json.dumps(
            where[1], ensure_ascii=False
        )
        if len(_HEADS) < _CACHE_MAX:
            _HEADS[where] = head
    wm = "" if wm0_ms is None else f',"wm0_ms":{int(wm0_ms)}'
    if wm_ms is not None:
        wm += f',"wm_ms":{int(wm_ms)}'
    return (
        f'{head},"boot":{boot},"seq":{seq},"t_ms":{t_ms},"q":{q},"num":{{{",".join(num)}}},"str":{{{",".join(text)}}},'
        f'"bool":{{{",".join(flags)}}},"n":{int(n)}{wm},"received_ms":{int(received_ms)}}}\n'
    ).encode()


def reading_record_reference(
    reading: Reading, n: int, received_ms: int, wm_ms: int | None = None, wm0_ms: int | None = None
) -> bytes:
    """:func:`reading_record` through ``json.dumps`` of the whole object (the reference)."""
    num: dict[str, float] = {}
    text: dict[str, str] = {}
    flags: dict[str, bool] = {}
    for name, v in reading.metrics.items():
        if isinstance(v, bool):
            num[name] = 1.0 if v else 0.0
            flags[name] = v
        elif isinstance(v, str):
            text[name] = v
        else:
            num[name] = float(v)
    doc: dict[str, Any] = {
        "v": 1,
        "site": reading.site,
        "device": reading.device,
        "boot": reading.boot,
        "seq": reading.seq,
        "t_ms": reading.t_ms,
        "q": reading.quality,
        "num": num,
        "str": text,
        "bool": flags,
        "n": n,
    }
    if wm0_ms is not None:
        doc["wm0_ms"] = wm0_ms
    if wm_ms is not None:
        doc["wm_ms"] = wm_ms
    doc["received_ms"] = received_ms
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode() + b"\n"


def watermark_top(readings: Sequence[Reading], received_ms: int, *, min_time_ms: int, max_future_ms: int) -> int | None:
    """The largest event time of a message's readings that move a watermark, as the gateway's engine has it - not
    unsynced (``q`` = ``u``), and within the engine's time limits (``engine.min_time_ms``, ``received_ms +
    engine.max_future``), which refuse a reading before any window; None when none does."""
    fut = received_ms + max_future_ms
    wm: int | None = None
    for r in readings:
        if r.quality != "u" and min_time_ms <= r.t_ms <= fut and (wm is None or r.t_ms > wm):
            wm = r.t_ms
    return wm


def message_records(
    readings: Sequence[Reading],
    pos: int,
    received_ms: int,
    *,
    min_time_ms: int,
    max_future_ms: int,
    wm0_ms: int | None = None,
) -> list[bytes]:
    """The lines of one message's accepted readings, in order, logged at ``pos``.

    ``wm_ms`` goes on the last line: the message's :func:`watermark_top`. ``wm0_ms`` goes on every line: the
    largest ``wm_ms`` of the earlier messages (:attr:`FileForwarder.top`), so that the job knows the gateway's
    watermark before the message (``wm0_ms`` - bound) on every reading, whatever its own watermark is."""
    if len(readings) > N_PER_POS:
        raise ValueError(f"{len(readings)} readings in one message: bridge mode takes at most {N_PER_POS}")
    wm = watermark_top(readings, received_ms, min_time_ms=min_time_ms, max_future_ms=max_future_ms)
    last = len(readings) - 1
    base = pos * N_PER_POS
    return [reading_record(r, base + i, received_ms, wm if i == last else None, wm0_ms) for i, r in enumerate(readings)]


@dataclass
class _Open:
    """The in-progress file."""

    final: str
    opened_ms: int
    fh: Any
    size: int = 0


@dataclass
class FileForwarder:
    """The input schema's lines into files the Flink job monitors, committed with the gateway's checkpoints.

    ``append(lines, first_n)`` as the pipeline takes each message; ``prepare(now_ms, roll)`` in a checkpoint, at the
    position it saves (synchronously, before any further input): the lines so far are handed to the OS (and to the
    disk with ``sync``), the in-progress file is rolled if due, and the state to save is returned; ``commit()``
    once the checkpoint is committed (renames the complete files); ``recover(state)`` before the log's replay.
    """

    dir: Path
    roll_bytes: int
    roll_interval_ms: int
    sync: bool = False
    current: _Open | None = None
    pending: list[str] = field(default_factory=list)
    """Complete files a checkpoint is to name (and whose rename follows its commit)."""
    committing: list[str] = field(default_factory=list)
    """The complete files of the last prepared checkpoint: renamed by :meth:`commit`."""
    files: int = 0
    lines: int = 0
    top: int | None = None
    """The largest ``wm_ms`` of the messages appended so far (the next message's ``wm0_ms``): saved with each
    checkpoint, so that the replay after a crash writes the same ``wm0_ms`` again."""

    def recover(self, state: dict[str, Any] | None, now_ms: int) -> None:
        """Back to the files as the checkpoint ``state`` left them (None: no checkpoint yet)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        keep: str | None = None
        self.top = None
        if state is not None:
            top = state.get("top")
            self.top = None if top is None else int(top)
            for name in state.get("pending", []):
                self._rename(str(name), recovering=True)
            cur = state.get("file")
            if cur is not None:
                keep = hidden_name(str(cur))
                path = self.dir / keep
                size = int(state["bytes"])
                if not path.exists():
                    if size:
                        raise StateError(
                            f"bridge: the in-progress file {path} that the checkpoint holds {size} bytes of is gone; "
                            "the readings in it were acknowledged to the broker and are lost. Move the state file "
                            "away to start afresh"
                        )
                    path.touch()
                have = path.stat().st_size
                if have < size:  # a power cut with state.sync = "normal": the file lost what the OS had not written
                    with open(path, "rb") as f:
                        size = f.read(have).rfind(b"\n") + 1  # its last whole line
                    log.error(
                        "bridge: the in-progress file is shorter than the checkpoint says: the readings after its "
                        "last whole line are lost (state.sync = \"full\" keeps them)",
                        extra={"event": "bridge_file_short", "file": str(path), "bytes": int(state["bytes"]),
                               "kept": size},
                    )  # fmt: skip
                fh = open(path, "r+b")
                fh.truncate(size)
                fh.seek(size)
                self.current = _Open(str(cur), int(state.get("opened_ms", now_ms)), fh, size)
        for p in self.dir.iterdir():  # begun after the checkpoint: the replay writes their lines again
            if HIDDEN_RE.fullmatch(p.name) and p.name != keep:
                p.unlink()
        self.pending = []
        self.committing = []

    def append(self, lines: Iterable[bytes], first_n: int, now_ms: int, top: int | None = None) -> None:
        """A message's lines; ``top`` its :func:`watermark_top`, which moves :attr:`top`."""
        if top is not None and (self.top is None or top > self.top):
            self.top = top
        cur = self.current
        if cur is None:
            final = final_name(first_n)
            fh = open(self.dir / hidden_name(final), "wb")
            cur = self.current = _Open(final, now_ms, fh)
        for ln in lines:
            cur.fh.write(ln)
            cur.size += len(ln)
            self.lines += 1

    @property
    def size(self) -> int:
        return 0 if self.current is None else self.current.size

    def due(self, now_ms: int) -> bool:
        cur = self.current
        return cur is not None and (cur.size >= self.roll_bytes or now_ms - cur.opened_ms >= self.roll_interval_ms)

    def prepare(self, now_ms: int, *, roll: bool = False) -> dict[str, Any]:
        """The state a checkpoint saves (its first phase): every line so far is in the OS (with ``sync``: on the
        disk), and the in-progress file, if due or ``roll``, is complete and closed (always on the disk)."""
        cur = self.current
        if cur is not None:
            cur.fh.flush()
            if roll or self.due(now_ms):
                os.fsync(cur.fh.fileno())
                cur.fh.close()
                self.pending.append(cur.final)
                self.current = cur = None
            elif self.sync:
                os.fsync(cur.fh.fileno())
        self.committing = list(self.pending)
        state: dict[str, Any] = {"pending": list(self.pending), "file": None, "bytes": 0, "top": self.top}
        if cur is not None:
            state.update(file=cur.final, bytes=cur.size, opened_ms=cur.opened_ms)
        return state

    def commit(self) -> None:
        """The checkpoint that named :attr:`committing` is committed: rename them into the job's sight."""
        for name in self.committing:
            self.pending.remove(name)  # first: a file that cannot be renamed is not tried at every checkpoint
            self._rename(name)
        if self.committing:
            fsync_dir(self.dir)
        self.committing = []

    def _rename(self, final: str, *, recovering: bool = False) -> None:
        """Into the job's sight. After a crash the checkpoint may name a file renamed already, and gone since: sent
        to Kafka and deleted, or removed once the job had read it."""
        src, dst = self.dir / hidden_name(final), self.dir / final
        if src.exists():
            if recovering:
                with open(src, "rb") as fh:
                    os.fsync(fh.fileno())
            os.replace(src, dst)
            self.files += 1
        elif not recovering and not dst.exists():
            log.error(
                "bridge: a complete file is gone before its rename: its readings are lost",
                extra={"event": "bridge_file_gone", "file": str(src)},
            )

    def close(self) -> None:
        if self.current is not None:
            self.current.fh.close()
            self.current = None


def committed_files(directory: Path) -> list[Path]:
    """The complete files of a bridge directory, in the order they were written."""
    return sorted(p for p in directory.iterdir() if FINAL_RE.fullmatch(p.name))


# ------------------------------------------------------------------------------------------------- Kafka


def kafka_record(line: bytes) -> tuple[bytes, bytes]:
    """``(key, value)`` of a line of the input schema: key ``site/device`` (a device's readings stay in one
    partition, in order), value the JSON object without its newline."""
    value = line.rstrip(b"\n")
    doc = json.loads(value)
    return f"{doc['site']}/{doc['device']}".encode(), value


def producer_config(cfg: BridgeConfig, client_id: str) -> dict[str, Any]:
    """The keyword arguments of ``aiokafka.AIOKafkaProducer``: idempotence (a retry never writes a record twice
    within a producer session), ``acks="all"`` (a record is acknowledged once every in-sync replica has it), in
    order per partition (aiokafka sends one batch at a time per partition while idempotent)."""
    return {
        "bootstrap_servers": list(cfg.kafka_servers),
        "client_id": cfg.kafka_client_id or client_id,
        "enable_idempotence": True,
        "acks": "all",
        "linger_ms": cfg.kafka_linger_ms,
        "compression_type": None,
        "request_timeout_ms": 30_000,
    }


PROGRESS: Final = ".kafka-progress"


class KafkaForwarder:
    """Sends the committed files of the bridge's directory to Kafka, oldest first; deletes each once sent.

    Not run against a Kafka broker in this project's tests (none can be installed here): the record encoding
    and the producer configuration are tested, the sending loop is not."""

    def __init__(self, cfg: BridgeConfig, directory: Path, client_id: str) -> None:
        self.cfg = cfg
        self.dir = directory
        self.client_id = client_id
        self.sent = 0
        self.files = 0
        self.failures = 0

    def _progress(self) -> tuple[str, int]:
        try:
            name, _, done = (self.dir / PROGRESS).read_text(encoding="utf-8").partition(" ")
            return name, int(done)
        except (OSError, ValueError):
            return "", 0

    def _save_progress(self, name: str, done: int) -> None:
        tmp = self.dir / (PROGRESS + ".tmp")
        tmp.write_text(f"{name} {done}", encoding="utf-8")
        os.replace(tmp, self.dir / PROGRESS)

    async def run(self, stop: asyncio.Event, poll_s: float = 0.5) -> None:
        from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]  # the optional dependency: edgekit[kafka]
        from aiokafka.errors import KafkaError  # type: ignore[import-untyped]

        delay = 1.0
        while not stop.is_set():
            producer = AIOKafkaProducer(**producer_config(self.cfg, self.client_id))
            try:
                await producer.start()
                delay = 1.0
                while not stop.is_set():
                    files = committed_files(self.dir)
                    if not files:
                        try:
                            await asyncio.wait_for(stop.wait(), poll_s)
                        except TimeoutError:
                            pass
                        continue
                    await self._send_file(producer, files[0])
            except (KafkaError, OSError) as exc:
                self.failures += 1
                log.warning(
                    "Kafka not reachable (%s): the files wait in %s; retrying in %.0f s",
                    exc,
                    self.dir,
                    delay,
                    extra={"event": "kafka_down", "error": str(exc)},
                )
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                except TimeoutError:
                    pass
                delay = min(delay * 2, 30.0)
            finally:
                await producer.stop()

    async def _send_file(self, producer: Any, path: Path) -> None:
        name, done = self._progress()
        skip = done if name == path.name else 0
        lines = (await asyncio.to_thread(path.read_bytes)).splitlines(keepends=True)
        step = 1000
        for i in range(skip, len(lines), step):
            futures = [
                await producer.send(self.cfg.kafka_topic, value=v, key=k)
                for k, v in map(kafka_record, lines[i : i + step])
            ]
            await asyncio.gather(*futures)  # acks=all: every in-sync replica has them
            self.sent += len(futures)
            self._save_progress(path.name, i + len(futures))
        await asyncio.to_thread(path.unlink)
        self.files += 1


def bridge_pipeline_config(config: Config) -> Config:
    """The configuration of a bridge's pipeline: decoding, validation, deduplication, the engine's time limits;
    the patterns, joins and anomaly detection, which ``compile --target flink-sql`` leaves to the site; no windows
    (the cluster's)."""
    return dataclasses.replace(config, engine=dataclasses.replace(config.engine, windows=()))
