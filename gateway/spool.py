"""A sink that never loses a line: memory first, then the on-disk spool, written to InfluxDB in order.

``SpoolingSink.add(lines)`` puts lines into one of two bounded memory queues: raw readings (class 0, the
``reading`` measurement) and everything else (class 1: windows, late readings, alerts, dead letters,
statuses). A background loop writes batches in this order: spooled class 1, memory class 1, spooled class 0,
memory class 0. Class 1 lines are strictly first in, first out (a window's revision 2 is always written after
its revision 1); raw readings are independent points with deterministic timestamps, so writing them after
newer window results changes nothing but latency.

Overload policy (more than ``max_buffered`` lines in memory, because InfluxDB is slow or down): raw readings
are moved to the spool first; only if class 1 alone is over the limit is it moved too, after what is left of its
batch in flight from memory (the oldest class 1 lines: left in flight, a checkpoint would spool them after the
newer ones). Nothing is dropped.
When the spool is over ``spool_max_bytes``, ``add`` waits until the writer makes room: the gateway stops
reading from the broker (no acknowledgements, so the broker keeps the messages for the persistent session).
``stop_waiting()`` ends that wait for a clean stop: the lines stay in memory for the final checkpoint.

``spill(commit)`` hands everything in memory (including a batch being written) to a checkpoint, which stores
it in the spool in the same transaction as the pipeline state; only once that transaction is committed are
the lines dropped from memory, so a checkpoint that fails (a locked or full disk, anything) leaves them
where they were. A batch written twice (once from memory, once from the spool) is harmless: every point
is deterministic. ``spill_async(commit)`` does the same with a transaction that runs off the event loop: while it
runs, the writer takes no new batch, the result of a write in flight waits for its outcome (not counted when the
transaction took the batch's lines, counted as usual when it failed), memory is not moved to the spool (an
overflow that was waiting for the state file's gate looks again once it has it), and new lines are only added
after the ones handed over; once it is committed exactly those are dropped.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable

from .config import InfluxConfig
from .errors import SinkError
from .points import READING
from .sinks import Pending, SinkStats, Writer, write_batch
from .state import StateStore

__all__ = ["OTHER", "RAW", "SpoolingSink", "line_class"]

log = logging.getLogger("gateway.sink")

RAW = 0
"""Class of raw reading points (shed to the spool first)."""
OTHER = 1
"""Class of everything else (window results, late readings, alerts, dead letters, statuses)."""

_RAW_PREFIX = READING + ","


def line_class(line: str) -> int:
    return RAW if line.startswith(_RAW_PREFIX) else OTHER


class _Batch:
    """The batch being written: from the spool (``chunk_id``) or taken from memory (``chunk_id`` None)."""

    __slots__ = ("chunk_id", "cls", "pending", "spilled")

    def __init__(self, cls: int, chunk_id: int | None, lines: list[str]) -> None:
        self.cls = cls
        self.chunk_id = chunk_id
        self.pending = Pending(lines)
        self.spilled = False
        """A checkpoint moved what was left of it (from memory) to the spool: it is written from there."""

    @property
    def in_memory(self) -> bool:
        """Its unwritten lines are only in memory (a checkpoint must move them to the spool)."""
        return self.chunk_id is None and not self.spilled


class SpoolingSink:
    def __init__(
        self,
        writer: Writer,
        cfg: InfluxConfig,
        store: StateStore,
        *,
        spool_max_bytes: int,
        observe_latency: Callable[[float], None] | None = None,
    ) -> None:
        self.writer = writer
        self.cfg = cfg
        self.store = store
        self.spool_max_bytes = spool_max_bytes
        self.observe_latency = observe_latency
        self.stats = SinkStats()
        self.memory: tuple[deque[str], deque[str]] = (deque(), deque())
        self.spilled_lines = [0, 0]
        """Lines moved to the spool under overload, per class."""
        self.waits = 0
        """Times ``add`` had to wait because memory and spool were both full."""
        self.healthy = True
        """False from a failed write until the next successful one."""
        self._batch: _Batch | None = None
        """The batch being written: kept until each of its lines is written or dead-lettered, whatever fails."""
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        self._closing = False
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._spilling: asyncio.Event | None = None
        """Set (and replaced by None) when the transaction of ``spill_async`` has ended: until then the lines it was
        handed are in memory and perhaps in the spool, and nothing may take them from either."""

    # ----------------------------------------------------------------------------------------- views

    @property
    def in_memory(self) -> int:
        batch = self._batch
        inflight = len(batch.pending) if batch is not None and batch.in_memory else 0
        return len(self.memory[0]) + len(self.memory[1]) + inflight

    @property
    def pending(self) -> int:
        """Lines not written yet: memory plus spool."""
        return self.in_memory + self.store.spool_lines

    # ----------------------------------------------------------------------------------------- input

    async def start(self) -> None:
        await self.writer.start()
        self._task = asyncio.create_task(self._run(), name="influx-sink")

    async def add(self, lines: list[str]) -> None:
        if not lines:
            return
        raw, other = self.memory
        for ln in lines:
            (raw if ln.startswith(_RAW_PREFIX) else other).append(ln)
        limit = self.cfg.max_buffered
        while len(raw) + len(other) > limit:
            await self._spilled()
            if self.store.spool_bytes < self.spool_max_bytes:
                try:
                    async with self.store.write_gate:
                        if self._spilling is not None:  # a checkpoint took memory while this waited: its outcome first
                            continue
                        self._overflow()
                    break
                except Exception:  # a full or locked disk: the lines stay in memory, ingest waits as if it were full
                    log.exception("could not move lines to the spool", extra={"event": "sink_spill_error"})
            if self._stopping:  # the lines stay in memory; the final checkpoint spools them
                break
            self.waits += 1
            log.warning(
                "memory and spool full: ingest waits for the database",
                extra={"event": "sink_full", "memory": len(raw) + len(other), "spool_bytes": self.store.spool_bytes},
            )
            self._progress.clear()
            self._wake.set()
            await self._progress.wait()
        if len(raw) + len(other) >= self.cfg.batch_size:
            self._wake.set()

    def stop_waiting(self) -> None:
        """The gateway is stopping: ``add`` no longer waits for room (now or later), it keeps lines in memory.

        What it keeps is bounded by the inputs the gateway takes after this (it takes none but the one in
        hand) and goes to the spool in the final checkpoint, over ``spool_max_bytes`` if need be.
        """
        self._stopping = True
        self._progress.set()

    def _overflow(self) -> None:
        """Move raw readings to the spool; the other class too if it alone is over the limit, after what is left
        of its batch in flight from memory (older than its memory, and first in, first out). The lines leave
        memory only once the spool has them (if writing the spool fails, they stay and the error is raised)."""
        raw, other = self.memory
        move_other = len(other) > self.cfg.max_buffered
        batch = self._batch
        if not (move_other and batch is not None and batch.in_memory and batch.cls == OTHER):
            batch = None
        chunks = self._chunks(RAW, raw)
        if batch is not None:
            chunks += self._chunks(OTHER, batch.pending.lines())
        if move_other:
            chunks += self._chunks(OTHER, other)
        self.store.spool(chunks)
        self.spilled_lines[RAW] += len(raw)
        raw.clear()
        if batch is not None:  # written from the spool now; a result of its write in flight is not counted
            self.spilled_lines[OTHER] += len(batch.pending)
            batch.spilled = True
        if move_other:
            self.spilled_lines[OTHER] += len(other)
            other.clear()
        log.warning(
            "sink behind: lines moved to the spool",
            extra={"event": "sink_spill", "spool_lines": self.store.spool_lines, "spool_bytes": self.store.spool_bytes},
        )

    def spill(self, commit: Callable[[list[tuple[int, list[str]]]], None]) -> None:
        """Hand everything in memory to ``commit`` as spool chunks ``(class, lines)``, oldest first within each
        class; drop it from memory only when ``commit`` has returned (it stores them durably, or raises and
        memory is left as it was). ``commit`` runs synchronously: nothing else touches memory meanwhile."""
        chunks: list[tuple[int, list[str]]] = []
        # what is left of the batch in flight, once only: a second copy would land after newer lines
        batch = self._batch if self._batch is not None and self._batch.in_memory else None
        if batch is not None:
            chunks += self._chunks(batch.cls, batch.pending.lines())
        for cls in (OTHER, RAW):
            chunks += self._chunks(cls, self.memory[cls])
        commit(chunks)
        if batch is not None:
            batch.spilled = True
        for cls in (OTHER, RAW):
            self.memory[cls].clear()
        self._wake.set()

    async def spill_async(self, commit: Callable[[list[tuple[int, list[str]]]], Awaitable[None]]) -> None:
        """:meth:`spill` with a ``commit`` that awaits its transaction (run off the event loop). Meanwhile the
        pipeline may add lines: they go after those handed over and stay. The writer holds off: it takes no new
        batch, and the result of the batch in flight waits for the outcome (committed: the lines are in the spool
        and the result is not counted; failed: it is counted and the batch goes on), so no line is written and
        counted from both memory and spool; memory is not moved to the spool meanwhile either."""
        await self._spilled()  # one at a time
        batch = self._batch if self._batch is not None and self._batch.in_memory else None
        chunks: list[tuple[int, list[str]]] = []
        if batch is not None:
            chunks += self._chunks(batch.cls, batch.pending.lines())
        handed = [0, 0]
        for cls in (OTHER, RAW):
            handed[cls] = len(self.memory[cls])
            chunks += self._chunks(cls, self.memory[cls])
        done = self._spilling = asyncio.Event()
        try:
            await commit(chunks)
            if batch is not None:
                batch.spilled = True
            for cls in (OTHER, RAW):
                mem = self.memory[cls]
                for _ in range(handed[cls]):  # those handed over are the oldest: later ones were appended
                    mem.popleft()
            self._wake.set()
        finally:
            self._spilling = None
            done.set()

    async def _spilled(self) -> None:
        """Wait until no ``spill_async`` transaction is running."""
        while self._spilling is not None:
            await self._spilling.wait()

    def _chunks(self, cls: int, lines: deque[str] | list[str]) -> list[tuple[int, list[str]]]:
        items = list(lines)
        n = self.cfg.batch_size
        return [(cls, items[i : i + n]) for i in range(0, len(items), n)]

    # ---------------------------------------------------------------------------------------- output

    def _next(self) -> _Batch | None:
        """The batch to write: the one in hand if it is not done, else the next from the spool or memory."""
        if self._batch is not None and not self._batch.spilled:
            return self._batch
        self._batch = None
        for cls in (OTHER, RAW):
            head = self.store.spool_head(cls) if self.store.spool_chunks else None
            if head is not None:
                self._batch = _Batch(cls, head[0], head[1])
                return self._batch
            mem = self.memory[cls]
            if mem:
                n = min(self.cfg.batch_size, len(mem))
                self._batch = _Batch(cls, None, [mem.popleft() for _ in range(n)])
                return self._batch
        return None

    async def _run(self) -> None:
        interval = self.cfg.flush_interval_ms / 1000
        while True:
            try:
                done = await self._step(interval)
            except Exception:  # the spool's disk, a broken writer: say so, wait, try the same batch again
                log.exception("sink writer failed; retrying in 1 s", extra={"event": "sink_error"})
                self.healthy = False
                await asyncio.sleep(1.0)
                continue
            if done:
                return

    async def _step(self, interval: float) -> bool:
        """Write one batch, or wait for lines; True when closing and nothing is left."""
        await self._spilled()  # memory and the spool are being handed to a checkpoint: wait for its outcome
        batch = self._next()
        if batch is None:
            self._progress.set()
            if self._closing:
                return True
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), interval)
            except TimeoutError:
                pass
            return False
        if await self._write(batch):
            # every line written or dead-lettered: only now does the batch leave the spool (or memory)
            if batch.chunk_id is not None:
                async with self.store.write_gate:
                    self.store.spool_delete(batch.chunk_id)
            self._batch = None
        self._progress.set()
        return False

    async def _write(self, batch: _Batch) -> bool:
        def moved_to_spool() -> bool:  # a checkpoint moved this batch to the spool: it is written from there
            return batch.spilled

        def down(err: SinkError) -> None:
            if self.healthy:
                log.warning(
                    "InfluxDB write failed (%s): spooling until it takes writes again",
                    err,
                    extra={"event": "sink_down", "error": str(err)},
                )
            self.healthy = False

        def up(elapsed: float) -> None:
            if not self.healthy:
                log.warning("influx reachable again", extra={"event": "sink_up", "spool_lines": self.store.spool_lines})
            self.healthy = True
            if self.observe_latency is not None:
                self.observe_latency(elapsed)

        return await write_batch(
            self.writer,
            batch.pending,
            self.stats,
            self.cfg.retry_max_s,
            give_up=moved_to_spool,
            on_retry=down,
            on_written=up,
            hold=self._spilled,
        )

    async def drain(self, timeout_s: float) -> bool:
        """Wait until nothing is pending (True), or ``timeout_s`` passes or a write fails (False)."""
        try:
            async with asyncio.timeout(timeout_s):
                while self.pending:
                    if not self.healthy:  # InfluxDB went away: nothing to wait for, the spool keeps the rest
                        return False
                    self._wake.set()
                    await asyncio.sleep(0.05)
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        """Stop the writer (what is left stays in memory for the final checkpoint) and close the client."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        await self.writer.close()
