"""InfluxDB sinks: a writer per target and one batching, retrying front for both.

- ``InfluxV1Writer``: HTTP ``/write`` with database, retention policy and user/password (InfluxDB 1.x).
- ``InfluxV2Writer``: influxdb-client's async write API with org, bucket and token (InfluxDB 2.x/3.x,
  1.8+ through its v2 compatibility endpoint, and other servers that speak ``/api/v2/write``).
- ``BatchingSink``: ``add(lines)`` then a background loop writes batches of ``batch_size`` lines or
  whatever is there every ``flush_interval_ms``; a retryable failure (server down, 5xx, timeout) is
  retried with exponential backoff and jitter, keeping the batch; a refused batch (4xx) is logged and
  counted, not retried forever. ``add`` waits while ``max_buffered`` lines are pending, so a slow
  database slows ingest down instead of filling memory.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import aiohttp

from .config import InfluxConfig
from .errors import SinkError

__all__ = ["BatchingSink", "InfluxV1Writer", "InfluxV2Writer", "SinkStats", "Writer", "make_writer", "write_with_retry"]

log = logging.getLogger("gateway.sink")


class Writer(Protocol):
    async def start(self) -> None: ...
    async def write(self, lines: list[str]) -> None: ...
    async def close(self) -> None: ...


RETRYABLE_4XX = frozenset({401, 403, 404, 408, 429})
"""Refusals that say nothing about the data: credentials (a rotated token), a database or bucket not created
yet, a timeout, a rate limit. Retried with backoff (the spool holds the lines) rather than dropped; a refusal
of the data itself (400, 413, 422, ...) is counted and logged, and the batch is not retried."""


def _classify(status: int, body: str, retry_after: str | None) -> SinkError:
    hint = float(retry_after) if retry_after and retry_after.isdigit() else None
    retryable = status >= 500 or status in RETRYABLE_4XX
    return SinkError(f"HTTP {status}: {body.strip()[:300]}", retryable=retryable, retry_after=hint)


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
                    body = await resp.json(content_type=None)
                    errors = [r["error"] for r in body.get("results", []) if "error" in r]
                    if errors:
                        raise SinkError(f"query failed: {errors[0]}", retryable=False)
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
    points_written: int = 0
    batches_written: int = 0
    points_refused: int = 0
    write_failures: int = 0
    last_write_ms: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "points_written": self.points_written,
            "batches_written": self.batches_written,
            "points_refused": self.points_refused,
            "write_failures": self.write_failures,
            "last_write_ms": round(self.last_write_ms, 1),
        }


async def write_with_retry(
    writer: Writer,
    batch: list[str],
    stats: SinkStats,
    retry_max_s: float,
    *,
    give_up: Callable[[], bool] | None = None,
    on_retry: Callable[[SinkError], None] | None = None,
) -> float | None:
    """Write ``batch``; retry a retryable failure with exponential backoff and jitter (or the server's
    ``Retry-After``), count a refusal (4xx about the data) and move on. Returns the seconds the successful
    write took, or ``None`` when the batch was refused or ``give_up()`` said to stop before an attempt."""
    delay = 0.2
    while True:
        if give_up is not None and give_up():
            return None
        start = time.perf_counter()
        try:
            await writer.write(batch)
        except SinkError as err:
            if not err.retryable:
                stats.points_refused += len(batch)
                log.error(
                    "influx refused a batch",
                    extra={"event": "sink_refused", "points": len(batch), "error": str(err)},
                )
                return None
            stats.write_failures += 1
            if on_retry is not None:
                on_retry(err)
            wait = err.retry_after or delay * (0.5 + random.random())
            log.info(
                "influx write failed, retrying",
                extra={"event": "sink_retry", "points": len(batch), "error": str(err), "wait_s": round(wait, 2)},
            )
            await asyncio.sleep(wait)
            delay = min(delay * 2, retry_max_s)
            continue
        elapsed = time.perf_counter() - start
        stats.last_write_ms = elapsed * 1000
        stats.points_written += len(batch)
        stats.batches_written += 1
        return elapsed


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
                batch = [self._pending[i] for i in range(n)]
                await write_with_retry(self.writer, batch, self.stats, self.cfg.retry_max_s)
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
