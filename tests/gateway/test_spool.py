"""The spool: its order under an outage (a batch being retried is spilled once, so revisions stay in order; the
other class's batch in flight goes to the spool before the newer lines an overflow moves), and that it gives back
exactly the lines it was given, whatever characters they hold."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import InfluxConfig
from gateway.errors import SinkError
from gateway.spool import OTHER, RAW, SpoolingSink
from gateway.state import StateStore


class FlakyWriter:
    """Refuses (retryably) while ``down``; records what it wrote."""

    def __init__(self) -> None:
        self.down = True
        self.tries = 0
        self.written: list[str] = []

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def write(self, lines: list[str]) -> None:
        self.tries += 1
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
    sink.spill(lambda chunks: store.checkpoint(0, {}, 0, chunks))  # a checkpoint spills the batch in flight and memory
    await asyncio.sleep(0.1)
    sink.spill(lambda chunks: store.checkpoint(0, {}, 0, chunks))  # and another, while the same batch is retried
    writer.down = False
    async with asyncio.timeout(10):
        while sink.pending or store.spool_lines:
            await asyncio.sleep(0.02)
    await sink.close()
    assert writer.written == ["window,w=W rev=1i 1", "window,w=W rev=2i 1"]


async def until(cond: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not cond():
            await asyncio.sleep(0.01)


async def test_the_other_class_batch_in_flight_goes_to_the_spool_before_an_overflow_of_newer_lines(
    tmp_path: Path,
) -> None:
    """Window results are first in, first out. Revision 1 of two windows is the batch in flight (from memory) while
    InfluxDB is down; newer window results put the other class over ``max_buffered`` and are moved to the spool,
    revision 2 with them; then a checkpoint. Before: the overflow left the batch in flight out, the checkpoint
    spooled it after the overflow's chunks, so revision 1 was written last and InfluxDB kept it."""
    store = StateStore(tmp_path / "state.db")
    writer = FlakyWriter()
    cfg = InfluxConfig(batch_size=2, max_buffered=4, flush_interval_ms=10)
    sink = SpoolingSink(writer, cfg, store, spool_max_bytes=10**9)
    await sink.start()
    first = ["window,w=W rev=1i 1", "window,w=X rev=1i 1"]
    await sink.add(first)
    await until(lambda: writer.tries > 0)  # revision 1 is the batch in flight, retried
    newer = ["window,w=W rev=2i 1", "window,w=X rev=2i 1", "window,w=Y rev=1i 1", "window,w=Z rev=1i 1"]
    newer.append("window,w=V rev=1i 1")
    await sink.add(newer)  # 5 > 4 lines of the other class: moved to the spool
    assert sink.spilled_lines[OTHER] > 0
    await sink.spill_async(lambda chunks: store.checkpoint_async(0, {}, 0, chunks))
    writer.down = False
    await until(lambda: not sink.pending)
    await sink.close()
    assert writer.written == first + newer
    assert sink.stats.points_written == len(first + newer)
    store.close()


async def test_an_overflow_that_waited_for_the_gate_does_not_move_lines_a_checkpoint_was_handed(tmp_path: Path) -> None:
    """``add`` over the limit waits for the state file's gate (held here as ``compact_async`` holds it); a
    checkpoint's ``spill_async`` takes memory meanwhile and waits for the gate too. Before: the overflow ran first
    and emptied memory, and once the checkpoint committed it dropped as many lines from memory as it had been
    handed - newer ones, in neither the checkpoint nor the spool (or it raised IndexError after its commit)."""
    store = StateStore(tmp_path / "state.db")
    writer = FlakyWriter()
    cfg = InfluxConfig(batch_size=2, max_buffered=4, flush_interval_ms=10)
    sink = SpoolingSink(writer, cfg, store, spool_max_bytes=10**9)
    lines = [f"reading,device=d seq={i}i {i}" for i in range(11)]
    await sink.start()
    await sink.add(lines[0:2])
    await until(lambda: writer.tries > 0)  # the batch in flight
    await sink.add(lines[2:5])  # 3 in memory, under the limit
    await store.write_gate.acquire()
    try:
        adding = asyncio.create_task(sink.add(lines[5:7]))  # 5 > 4: an overflow, waiting for the gate
        await until(lambda: sink.in_memory == 7)
        checkpoint = asyncio.create_task(sink.spill_async(lambda chunks: store.checkpoint_async(0, {}, 0, chunks)))
        await until(lambda: sink._spilling is not None)  # memory handed over; its transaction waits for the gate
    finally:
        store.write_gate.release()
    await adding
    await sink.add(lines[7:11])  # while the checkpoint's transaction runs, or after it
    await checkpoint
    assert store.spool_lines + sink.in_memory == len(lines)  # each line in the spool or in memory, once
    writer.down = False
    await until(lambda: not sink.pending)
    await sink.close()
    assert sorted(writer.written, key=lines.index) == lines
    assert sink.stats.points_written == len(lines)
    store.close()


# ------------------------------------------------------------------------------------ round trip

any_text = st.text(st.characters(exclude_categories=()), max_size=12)  # every code point: newlines, lone surrogates
line_lists = st.lists(any_text, min_size=1, max_size=6)


@settings(max_examples=300, deadline=None)
@given(st.lists(line_lists, min_size=1, max_size=4))
def test_the_spool_gives_back_any_lines_exactly(
    tmp_path_factory: pytest.TempPathFactory, chunks: list[list[str]]
) -> None:
    store = StateStore(tmp_path_factory.mktemp("spool") / "state.db")
    try:
        store.spool([(OTHER, lines) for lines in chunks[: len(chunks) // 2]])
        store.checkpoint(0, {}, 0, [(OTHER, lines) for lines in chunks[len(chunks) // 2 :]])
        got = []
        while (head := store.spool_head(OTHER)) is not None:
            got.append(head[1])
            store.spool_delete(head[0])
        assert got == chunks
        assert store.spool_lines == store.spool_chunks == store.spool_bytes == 0
    finally:
        store.close()


def test_spool_rows_of_the_old_format_are_still_read(tmp_path: Path) -> None:
    """Before: a chunk was its lines joined by newlines (the line protocol then escaped every newline)."""
    path = tmp_path / "state.db"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE spool (id INTEGER PRIMARY KEY AUTOINCREMENT, prio INTEGER NOT NULL, n INTEGER NOT NULL,"
        " bytes INTEGER NOT NULL, lines TEXT NOT NULL);"
        "CREATE INDEX spool_prio ON spool (prio, id);"
    )
    lines = ["reading,site=s,device=d x=1.5 1", 'dead_letter,reason=bad_json detail="a\\nb" 2']
    text = "\n".join(lines)
    old.execute("INSERT INTO spool (prio, n, bytes, lines) VALUES (?, ?, ?, ?)", (RAW, 2, len(text), text))
    old.commit()
    old.close()
    store = StateStore(path)
    try:
        assert (store.spool_lines, store.spool_chunks, store.spool_bytes) == (2, 1, len(text))
        store.spool([(RAW, ['reading,site=s,device=d s="a\nb" 3'])])  # a new chunk after the old one
        first = store.spool_head(RAW)
        assert first is not None and first[1] == lines
        store.spool_delete(first[0])
        second = store.spool_head(RAW)
        assert second is not None and second[1] == ['reading,site=s,device=d s="a\nb" 3']
    finally:
        store.close()
