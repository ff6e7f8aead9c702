"""InfluxDB sinks: a writer per target, and the batch writer that isolates what InfluxDB refuses.

- ``InfluxV1Writer``: HTTP ``/write`` with database, retention policy and user/password (InfluxDB 1.x).
- ``InfluxV2Writer``: influxdb-client's async write API with org, bucket and token (InfluxDB 2.x/3.x,
  1.8+ through its v2 compatibility endpoint, and other servers that speak ``/api/v2/write``).
- ``write_batch``: writes one batch. A retryable failure (server down, 5xx, 401/403/404/408/429, timeout) is
  retried with exponential backoff and jitter, keeping the batch. A refusal of the data (400, 413, 422, ...;
  InfluxDB 1.x answers 400 "partial write" when it took some points of a batch and not others, without saying
  which) and any unexpected error (a line the writer cannot encode) are *isolated*: the batch is cut in
  halves, each written on its own, down to single lines; each line that is still refused alone becomes a
  dead letter (``influx_refused`` with InfluxDB's message, ``unwritable`` with the error), and the rest is
  written. Rewriting points InfluxDB had already taken is harmless: every point is deterministic.
- ``BatchingSink``: ``add(lines)`` then a background loop writes batches of ``batch_size`` lines or whatever
  is there every ``flush_interval_ms``. ``add`` waits while ``max_buffered`` lines are pending, so a slow
  database slows the producer down instead of filling memory. (The gateway uses ``spool.SpoolingSink``.)
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, Protocol

import aiohttp

from .config import InfluxConfig
from .errors import SinkError
from .lineproto import NS_PER_MS
from .model import DeadLetter
from .points import dead_letter_line
from .schema import parse_point

__all__ = [
    "INFLUX_REFUSED",
    "UNWRITABLE",
    "BatchingSink",
    "InfluxV1Writer",
    "InfluxV2Writer",
    "Pending",
    "SinkStats",
    "Writer",
    "dead_letter_for_line",
    "make_writer",
    "write_batch",
]

log = logging.getLogger("gateway.sink")


class Writer(Protocol):
    async def start(self) -> None: ...
    async def write(self, lines: list[str]) -> None: ...
    async def close(self) -> None: ...


RETRYABLE_4XX = frozenset({401, 403, 404, 408, 429})
"""Refusals that say nothing about the data: credentials (a rotated token), a database or bucket not created
yet, a timeout, a rate limit. Retried with backoff (the spool holds the lines) rather than dropped; a refusal
of the data itself (400, 413, 422, ...) is isolated to the lines at fault (``write_batch``)."""


def _server_message(body: str) -> str:
    """InfluxDB's own words: ``{"error": ...}`` (1.x) or ``{"message": ...}`` (2.x), else the body as it is."""
    text = body.strip()
    try:
        doc = json.loads(text)
    except ValueError:
        return text
    if isinstance(doc, dict):
        for key in ("error", "message"):
            if isinstance(doc.get(key), str):
                return str(doc[key])
    return text


def _classify(status: int, body: str, retry_after: str | None) -> SinkError:
    hint = float(retry_after) if retry_after and retry_after.isdigit() else None
    retryable = status >= 500 or status in RETRYABLE_4XX
    return SinkError(f"HTTP {status}: {_server_message(body)[:500]}", retryable=retryable, retry_after=hint)


class InfluxV1Writer:
    """InfluxDB 1.x ``/write`` and ``/query`` over aiohttp."""

    def __init__(self, cfg: InfluxConfig) -> None:
        self.cfg = cfg
        self._session: aiohttp.ClientSession | None = None
        self._database_ready = False

    def _auth(self) -> aiohttp.BasicAuth | None:
        if self.cfg.username:
            # UTF-8, as InfluxDB reads it (aiohttp's default, latin-1, raises on other characters)
            return aiohttp.BasicAuth(self.cfg.username, self.cfg.password or "", encoding="utf-8")
        return None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.cfg.timeout_s), auth=self._auth()
        )
        # the database is created before the first write, not here: the gateway starts (and spools) while
        # InfluxDB is still down
        self._database_ready = not self.cfg.create_database

    async def _create_database(self) -> None:
        db = self.cfg.database.replace('"', '\\"')
        await self._post("/query", params={"q": f'CREATE DATABASE "{db}"'})

    async def _post(self, path: str, *, params: dict[str, str], data: bytes | None = None) -> None:
        assert self._session is not None, "start() first"
        try:
            async with self._session.post(self.cfg.url + path, params=params, data=data) as resp:
                if resp.status >= 300:
                    raise _classify(resp.status, await resp.text(), resp.headers.get("Retry-After"))
                if path == "/query":
                    # a failed CREATE DATABASE says nothing about the lines: retried (the spool keeps them)
                    try:
                        body = await resp.json(content_type=None)
                        errors = [r["error"] for r in body.get("results", []) if "error" in r]
                    except (ValueError, TypeError, AttributeError, KeyError) as exc:
                        raise SinkError(f"query answer not understood: {exc}", retryable=True) from exc
                    if errors:
                        raise SinkError(f"query failed: {errors[0]}", retryable=True)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise SinkError(f"{type(exc).__name__}: {exc}", retryable=True) from exc

    async def write(self, lines: list[str]) -> None:
        if not self._database_ready:
            await self._create_database()  # raises a (retryable) SinkError while InfluxDB is away
            self._database_ready = True
        params = {"db": self.cfg.database, "precision": "ns"}
        if self.cfg.retention_policy:
            params["rp"] = self.cfg.retention_policy
        await self._post("/write", params=params, data="\n".join(lines).encode("utf-8"))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class InfluxV2Writer:
    """influxdb-client's async API (``/api/v2/write``)."""

    def __init__(self, cfg: InfluxConfig) -> None:
        self.cfg = cfg
        self._client: object | None = None

    async def start(self) -> None:
        from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync

        self._client = InfluxDBClientAsync(
            url=self.cfg.url,
            token=self.cfg.token or "",
            org=self.cfg.org or "-",
            timeout=int(self.cfg.timeout_s * 1000),
        )

    async def write(self, lines: list[str]) -> None:
        from influxdb_client.rest import ApiException

        assert self._client is not None, "start() first"
        api = self._client.write_api()  # type: ignore[attr-defined]
        try:
            await api.write(bucket=self.cfg.bucket, org=self.cfg.org or "-", record=lines, write_precision="ns")
        except ApiException as exc:
            headers: dict[str, str] = dict(exc.headers or {})
            raise _classify(int(exc.status or 0), str(exc.body or exc.reason), headers.get("Retry-After")) from exc
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise SinkError(f"{type(exc).__name__}: {exc}", retryable=True) from exc

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()  # type: ignore[attr-defined]
            self._client = None


def make_writer(cfg: InfluxConfig) -> Writer:
    return InfluxV1Writer(cfg) if cfg.target == "v1" else InfluxV2Writer(cfg)


@dataclass(slots=True)
class SinkStats:
    """What became of the lines given to a sink. Every line taken ends up in exactly one of ``points_written``,
    ``points_refused`` and ``points_unwritable``; each of the last two has a dead letter, counted in
    ``dead_letters_written`` or, when InfluxDB refused that too, ``dead_letters_lost``."""

    points_written: int = 0
    """Lines InfluxDB took (dead letters made by the sink not included)."""
    batches_written: int = 0
    """Successful write requests (a batch being isolated takes several)."""
    points_refused: int = 0
    """Lines InfluxDB refused on their own (4xx about the data): dead letters ``influx_refused``."""
    points_unwritable: int = 0
    """Lines the writer could not send at all (an unexpected error): dead letters ``unwritable``."""
    dead_letters_written: int = 0
    dead_letters_lost: int = 0
    """Dead letters of refused or unwritable lines that InfluxDB refused too: logged, not retried."""
    write_failures: int = 0
    """Failed write requests that are retried (server down, 5xx, timeouts, ...)."""
    isolations: int = 0
    """Batches that had to be cut up to find the lines InfluxDB refused or the writer could not send."""
    last_write_ms: float = 0.0

    def by_reason(self) -> dict[str, int]:
        """Dead letters the sink made, by reason code (written or lost)."""
        return {INFLUX_REFUSED: self.points_refused, UNWRITABLE: self.points_unwritable}

    def as_dict(self) -> dict[str, object]:
        return {
            "points_written": self.points_written,
            "batches_written": self.batches_written,
            "points_refused": self.points_refused,
            "points_unwritable": self.points_unwritable,
            "dead_letters_written": self.dead_letters_written,
            "dead_letters_lost": self.dead_letters_lost,
            "write_failures": self.write_failures,
            "isolations": self.isolations,
            "last_write_ms": round(self.last_write_ms, 1),
        }


# ------------------------------------------------------------------------------------- dead letters

INFLUX_REFUSED: Final = "influx_refused"
UNWRITABLE: Final = "unwritable"
PAYLOAD_CHARS: Final = 4096
"""A sink dead letter's ``payload`` is the refused line itself, up to this many characters."""

_TIMESTAMP = re.compile(r"-?[0-9]{1,19}")


def _printable(text: str) -> str:
    """``text`` as InfluxDB can take it: what cannot be UTF-8 (a lone surrogate) as a ``\\udXXX`` escape."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def dead_letter_for_line(line: str, reason: str, detail: str, fallback_ms: int) -> str:
    """The ``dead_letter`` point of a line of line protocol that could not be written.

    Tags ``site`` and ``device`` are the line's own when it has them. The timestamp is the line's, at
    millisecond precision, plus a sub-millisecond part taken from a hash of the line: the same refusal made
    again (a retry, a replay after a crash) overwrites its dead letter instead of adding one, and two refused
    lines of the same millisecond do not overwrite each other. ``fallback_ms`` is used only for a line whose
    timestamp cannot be read.
    """
    site = device = None
    t_ns: int | None = None
    try:
        _, tags, _, t_ns = parse_point(line)
        site, device = tags.get("site"), tags.get("device")
    except (ValueError, IndexError):
        last = line.rpartition(" ")[2].strip()
        t_ns = int(last) if _TIMESTAMP.fullmatch(last) else None
    raw = line.encode("utf-8", "surrogatepass")
    unique = int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "big")
    payload = _printable(line)
    dead = DeadLetter(
        reason=reason,
        detail=_printable(detail)[:1000],
        topic="",
        received_ms=t_ns // NS_PER_MS if t_ns is not None else fallback_ms,
        size=len(raw),
        excerpt=payload if len(payload) <= PAYLOAD_CHARS else payload[:PAYLOAD_CHARS] + "…",
        site=_printable(site) if site else None,
        device=_printable(device) if device else None,
    )
    return dead_letter_line(dead, unique)


@dataclass(slots=True)
class Refusal:
    """A line that cannot be written, with its reason and detail, and its dead letter."""

    line: str
    reason: str
    detail: str
    dead_letter: str


class Pending:
    """One batch being written: the parts still to write, in order (a refused part is replaced by its two
    halves), then the lines found unwritable whose dead letters are not written yet.

    ``lines()`` is what is neither written nor dead-lettered yet: what a checkpoint must keep.
    """

    __slots__ = ("isolating", "reached", "refused", "todo")

    def __init__(self, lines: list[str]) -> None:
        self.todo: deque[list[str]] = deque([lines] if lines else [])
        self.refused: list[Refusal] = []
        self.reached = False
        """A write of this batch reached InfluxDB (it was taken or refused by the server)."""
        self.isolating = False
        """The batch has been cut up to find the lines at fault."""

    def lines(self) -> list[str]:
        return [r.line for r in self.refused] + [ln for part in self.todo for ln in part]

    def __len__(self) -> int:
        return len(self.refused) + sum(map(len, self.todo))


def _wall_ms() -> int:
    return time.time_ns() // NS_PER_MS


class _HeldWriter:
    """A writer whose ``write`` returns (or raises) only once ``hold()`` has returned too."""

    def __init__(self, writer: Writer, hold: Callable[[], Awaitable[None]]) -> None:
        self.writer = writer
        self.hold = hold

    async def start(self) -> None:
        await self.writer.start()

    async def write(self, lines: list[str]) -> None:
        try:
            await self.writer.write(lines)
        except Exception:
            await self.hold()
            raise
        await self.hold()

    async def close(self) -> None:
        await self.writer.close()


async def _attempt(
    writer: Writer,
    lines: list[str],
    stats: SinkStats,
    retry_max_s: float,
    stop: Callable[[], bool],
    on_retry: Callable[[SinkError], None] | None,
) -> float | Exception | None:
    """Write ``lines``, retrying retryable failures with backoff. Returns the seconds the successful write took,
    the refusal (a non-retryable ``SinkError``) or the unexpected error, or None when ``stop()`` said to stop."""
    delay = 0.2
    while True:
        if stop():
            return None
        start = time.perf_counter()
        try:
            await writer.write(lines)
        except SinkError as err:
            if not err.retryable:
                return err
            stats.write_failures += 1
            if on_retry is not None:
                on_retry(err)
            wait = err.retry_after or delay * (0.5 + random.random())
            log.info(
                "influx write failed, retrying",
                extra={"event": "sink_retry", "points": len(lines), "error": str(err), "wait_s": round(wait, 2)},
            )
            await asyncio.sleep(wait)
            delay = min(delay * 2, retry_max_s)
            continue
        except Exception as exc:  # a line the writer cannot send, or the writer's own failure: the caller tells
            return exc
        return time.perf_counter() - start


async def write_batch(
    writer: Writer,
    pending: Pending,
    stats: SinkStats,
    retry_max_s: float,
    *,
    give_up: Callable[[], bool] | None = None,
    on_retry: Callable[[SinkError], None] | None = None,
    on_written: Callable[[float], None] | None = None,
    now_ms: Callable[[], int] = _wall_ms,
    hold: Callable[[], Awaitable[None]] | None = None,
) -> bool:
    """Write ``pending`` until each of its lines is written or dead-lettered (True), or ``give_up()`` says to stop
    (False: what is left is in ``pending``; a result that arrives after ``give_up()`` turned true is not counted,
    the lines are written again from wherever they were moved to). ``hold()`` is awaited after each write, before
    its result is looked at and ``give_up()`` asked (a checkpoint that is moving the batch to the spool decides
    first whether the result counts).

    A refused or unsendable part is cut in halves until single lines are left. A single line InfluxDB refuses
    is dead-lettered ``influx_refused``; one that raises something unexpected, ``unwritable``, but only once
    the writer has shown it works: if nothing of the batch reached InfluxDB yet, that line's dead letter is
    written at once, and if it fails the same way the fault is the writer's, not the line's - the line is kept
    and a retryable ``SinkError`` is raised (the caller waits and calls again with the same ``pending``).
    """

    def stop() -> bool:
        return give_up is not None and give_up()

    if hold is not None:
        writer = _HeldWriter(writer, hold)

    def written(elapsed: float, points: int) -> None:
        pending.reached = True
        stats.batches_written += 1
        stats.last_write_ms = elapsed * 1000
        stats.points_written += points
        if on_written is not None:
            on_written(elapsed)

    while pending.todo:
        part = pending.todo[0]
        outcome = await _attempt(writer, part, stats, retry_max_s, stop, on_retry)
        if outcome is None or stop():
            return False
        if isinstance(outcome, float):
            pending.todo.popleft()
            written(outcome, len(part))
            continue
        if isinstance(outcome, SinkError):
            pending.reached = True
        if len(part) > 1:
            if not pending.isolating:  # say so once a batch
                pending.isolating = True
                stats.isolations += 1
                log.warning(
                    "influx refused a batch, or it could not be sent: isolating the lines at fault",
                    extra={"event": "sink_isolate", "points": len(part), "error": _describe(outcome)},
                )
            pending.todo.popleft()
            if _dropped(outcome) >= len(part):  # InfluxDB dropped every point of it: try them one by one
                pending.todo.extendleft([ln] for ln in reversed(part))
            else:
                half = len(part) // 2
                pending.todo.appendleft(part[half:])
                pending.todo.appendleft(part[:half])
            continue
        line = part[0]
        reason = INFLUX_REFUSED if isinstance(outcome, SinkError) else UNWRITABLE
        detail = _describe(outcome)
        pending.refused.append(Refusal(line, reason, detail, dead_letter_for_line(line, reason, detail, now_ms())))
        pending.todo.popleft()
        if reason == UNWRITABLE and not pending.reached:
            # is it the line or the writer? the line's dead letter (plain ASCII) tells
            if not await _write_dead_letters(writer, pending, stats, retry_max_s, stop, on_retry, written):
                return False
    if pending.refused:
        return await _write_dead_letters(writer, pending, stats, retry_max_s, stop, on_retry, written)
    return True


_DROPPED = re.compile(r"dropped=([0-9]+)\s*$")


def _dropped(outcome: Exception) -> int:
    """How many points InfluxDB 1.x says it dropped ("partial write: ... dropped=N"; it counts the points it
    refused for a field type conflict or a retention policy, not the lines it could not parse); 0 if unsaid."""
    if not isinstance(outcome, SinkError):
        return 0
    m = _DROPPED.search(str(outcome))
    return int(m.group(1)) if m else 0


def _describe(outcome: Exception) -> str:
    if isinstance(outcome, SinkError):
        return str(outcome)
    return f"{type(outcome).__name__}: {outcome}"


async def _write_dead_letters(
    writer: Writer,
    pending: Pending,
    stats: SinkStats,
    retry_max_s: float,
    stop: Callable[[], bool],
    on_retry: Callable[[SinkError], None] | None,
    written: Callable[[float, int], None],
) -> bool:
    """Write the dead letters of ``pending.refused`` (isolating any InfluxDB refuses: those are logged and counted
    as lost, never dead-lettered in turn). Each refusal leaves ``pending`` once its dead letter is settled."""
    parts: deque[list[Refusal]] = deque([list(pending.refused)])
    while parts:
        part = parts[0]
        outcome = await _attempt(writer, [r.dead_letter for r in part], stats, retry_max_s, stop, on_retry)
        if outcome is None or stop():
            return False
        if isinstance(outcome, SinkError):
            pending.reached = True
        if isinstance(outcome, float):
            written(outcome, 0)
            _settle(part, stats, lost=None)
        elif len(part) > 1:
            half = len(part) // 2
            parts.popleft()
            parts.appendleft(part[half:])
            parts.appendleft(part[:half])
            continue
        elif isinstance(outcome, SinkError) or pending.reached:
            _settle(part, stats, lost=_describe(outcome))
        else:  # neither the line nor its dead letter could be sent, and nothing of the batch reached InfluxDB
            pending.todo.appendleft([r.line for r in pending.refused])
            pending.refused.clear()
            raise SinkError(f"the writer fails on every write: {_describe(outcome)}", retryable=True) from outcome
        parts.popleft()
        del pending.refused[: len(part)]
    return True


def _settle(refusals: list[Refusal], stats: SinkStats, *, lost: str | None) -> None:
    for r in refusals:
        if r.reason == INFLUX_REFUSED:
            stats.points_refused += 1
        else:
            stats.points_unwritable += 1
        head = _printable(r.line[:200])
        if lost is None:
            stats.dead_letters_written += 1
            log.warning(
                "dead letter %s: %s",
                r.reason,
                r.detail,
                extra={"event": "sink_dead_letter", "reason": r.reason, "detail": r.detail, "line": head},
            )
        else:
            stats.dead_letters_lost += 1
            log.error(
                "dead letter %s: %s; its dead letter was refused too: %s",
                r.reason,
                r.detail,
                lost,
                extra={"event": "sink_dead_letter_lost", "reason": r.reason, "detail": r.detail, "line": head,
                       "error": lost},
            )  # fmt: skip


class BatchingSink:
    def __init__(self, writer: Writer, cfg: InfluxConfig) -> None:
        self.writer = writer
        self.cfg = cfg
        self.stats = SinkStats()
        self._pending: deque[str] = deque()
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def start(self) -> None:
        await self.writer.start()
        self._task = asyncio.create_task(self._run(), name="influx-sink")

    async def add(self, lines: list[str]) -> None:
        if not lines:
            return
        while len(self._pending) >= self.cfg.max_buffered:
            self._room.clear()
            await self._room.wait()
        self._pending.extend(lines)
        if len(self._pending) >= self.cfg.batch_size:
            self._wake.set()

    async def _run(self) -> None:
        interval = self.cfg.flush_interval_ms / 1000
        while True:
            if not self._closing:
                try:
                    await asyncio.wait_for(self._wake.wait(), interval)
                except TimeoutError:
                    pass
            self._wake.clear()
            while self._pending:
                n = min(self.cfg.batch_size, len(self._pending))
                batch = Pending([self._pending[i] for i in range(n)])
                while True:
                    try:
                        await write_batch(self.writer, batch, self.stats, self.cfg.retry_max_s)
                        break
                    except SinkError:  # the writer fails on everything: the batch is kept, tried again
                        log.exception("sink writer failed; retrying in 1 s", extra={"event": "sink_error"})
                        await asyncio.sleep(1.0)
                for _ in range(n):
                    self._pending.popleft()
                if len(self._pending) < self.cfg.max_buffered:
                    self._room.set()
            if self._closing:
                return

    async def close(self, timeout_s: float = 30.0) -> None:
        """Write what is pending (up to ``timeout_s``), then close the writer."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout_s)
            except TimeoutError:
                log.error(
                    "sink closed with points unwritten",
                    extra={"event": "sink_unwritten", "points": len(self._pending)},
                )
        await self.writer.close()
