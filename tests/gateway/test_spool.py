"""The spool's order under an outage: a batch being retried is spilled once, so revisions stay in order."""

from __future__ import annotations

import asyncio
from pathlib import Path

from gateway.config import InfluxConfig
from gateway.errors import SinkError
from gateway.spool import SpoolingSink
from gateway.state import StateStore


class FlakyWriter:
    """Refuses (retryably) while ``down``; records what it wrote."""

    def __init__(self) -> None:
        self.down = True
        self.written: list[str] = []

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def write(self, lines: list[str]) -> None:
        if self.down:
            raise SinkError("InfluxDB is down", retryable=True, retry_after=0.05)
        self.written += lines


async def test_a_retried_batch_is_spilled_once_and_revisions_stay_in_order(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    writer = FlakyWriter()
    cfg = InfluxConfig(batch_size=2, max_buffered=10, flush_interval_ms=10)
    sink = SpoolingSink(writer, cfg, store, spool_max_bytes=10**9)
    await sink.start()
    await sink.add(["window,w=W rev=1i 1"])
    await asyncio.sleep(0.1)  # revision 1 is being written, and retried
    await sink.add(["window,w=W rev=2i 1"])
    store.checkpoint(0, {}, 0, sink.spill())  # a checkpoint spills the batch in flight and memory
    await asyncio.sleep(0.1)
    store.checkpoint(0, {}, 0, sink.spill())  # and another one, while the same batch is still retried
    writer.down = False
    async with asyncio.timeout(10):
        while sink.pending or store.spool_lines:
            await asyncio.sleep(0.02)
    await sink.close()
    assert writer.written == ["window,w=W rev=1i 1", "window,w=W rev=2i 1"]
