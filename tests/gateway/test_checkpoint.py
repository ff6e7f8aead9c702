"""The checkpoint's state and its log position agree although the state is encoded in a worker thread while the
pipeline goes on."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from gateway.app import Gateway
from gateway.config import parse_config
from gateway.salvage import recover_state
from gateway.state import dumps_in_pieces, log_path

T0 = 1_764_072_000_000

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=3), inner, max_size=4)
        | st.dictionaries(st.integers(), inner, max_size=2)
    ),
    max_leaves=30,
)


@given(json_values, st.integers(min_value=0, max_value=8))
def test_dumps_in_pieces_is_json_dumps(value: Any, depth: int) -> None:
    assert dumps_in_pieces(value, depth) == json.dumps(value, separators=(",", ":"))


def _config(tmp_path: Path) -> Any:
    doc = {
        "mqtt": {"prefix": "ck", "client_id": "gw-ck"},
        "influx": {"target": "v1", "url": "http://127.0.0.1:9", "database": "db"},  # never written to here
        "state": {"dir": str(tmp_path / "state")},
        "windows": [{"name": "t1m", "kind": "tumbling", "size": "1m", "metrics": ["x"]}],
        "anomaly": {"metrics": ["x"]},
    }
    return parse_config(doc, env={})


def _gateway(tmp_path: Path) -> Gateway:
    return Gateway(_config(tmp_path), now_ms=lambda: T0 + 3_600_000)


def _message(i: int) -> tuple[str, bytes, bool]:
    rows = [{"b": 1, "s": i * 10 + j, "t": T0 + (i * 10 + j) * 1000, "q": "s", "m": {"x": j}} for j in range(10)]
    return "ck/site/d1/readings", json.dumps({"v": 1, "dev": "d1", "r": rows}).encode(), False


async def test_inputs_taken_while_a_checkpoint_encodes_leave_its_state_at_its_position(tmp_path: Path) -> None:
    """The pipeline goes on taking input while a checkpoint encodes its snapshot in a worker thread; the checkpoint
    stores the state and position of the moment it began, and the next one the rest."""
    gw = _gateway(tmp_path)
    try:
        await gw._process(gw._accept([_message(0)]))
        records = gw._accept([_message(i) for i in range(1, 5)])
        encoding, release = threading.Event(), threading.Event()
        encode = gw._encode

        def slow_encode(*args: Any) -> Any:  # holds the worker thread until the test lets it go
            encoding.set()
            release.wait(10)
            return encode(*args)

        gw._encode = slow_encode  # type: ignore[method-assign]
        checkpoint = asyncio.create_task(gw.checkpoint())
        assert await asyncio.to_thread(encoding.wait, 10)
        await asyncio.wait_for(gw._process(records), 5)  # taken while the checkpoint is encoding
        assert gw.pos == records[-1].pos and gw.pipeline.stats.readings_accepted == 50
        release.set()
        await checkpoint
        ck = gw.store.load_checkpoint()  # the state of exactly the first message, at its position
        assert ck is not None and ck.pos == 1
        assert ck.state["pipeline"]["stats"]["readings_accepted"] == 10
        assert [r.pos for r in gw.store.tail(ck.pos)] == [r.pos for r in records]  # the log keeps the rest
        await gw.checkpoint()
        ck = gw.store.load_checkpoint()
        assert ck is not None and ck.pos == records[-1].pos
        assert ck.state["pipeline"]["stats"]["readings_accepted"] == 50
        assert ck.state["pipeline"] == json.loads(json.dumps(gw.pipeline.snapshot()))
    finally:
        gw.store.close()


async def test_the_checkpoints_transaction_waits_off_the_event_loop_and_messages_are_logged_meanwhile(
    tmp_path: Path,
) -> None:
    """The checkpoint's SQLite transaction runs off the event loop: while it waits for the state file's write lock
    (held here by another connection, as a long write would hold it) the loop goes on, and a message offered
    meanwhile is logged - and so acknowledged - at once: the log is a file of its own, whose writes do not wait
    for the state file's. The log rows the checkpoint covers are dropped only after its commit."""
    gw = _gateway(tmp_path)
    other = sqlite3.connect(gw.store.path, isolation_level=None)
    checkpoint: asyncio.Task[None] | None = None
    try:
        await gw._process(gw._accept([_message(0)]))
        encoded = threading.Event()
        encode = gw._encode

        def noted_encode(*args: Any) -> Any:
            try:
                return encode(*args)
            finally:
                encoded.set()

        gw._encode = noted_encode  # type: ignore[method-assign]
        other.execute("BEGIN IMMEDIATE")  # the write lock, until the test lets it go
        checkpoint = asyncio.create_task(gw.checkpoint())
        assert await asyncio.to_thread(encoded.wait, 10)
        for _ in range(20):  # the loop runs while the transaction waits for the lock (SQLite gives up after 5 s)
            await asyncio.sleep(0.01)
        assert not checkpoint.done(), "the checkpoint's transaction held the event loop while it waited for the lock"
        # logged (committed) while the checkpoint's transaction is still open: SQLite gives up after 5 s
        (record,) = await asyncio.wait_for(gw._accept_logged([_message(1)]), 2.5)
        assert not checkpoint.done()
        assert [r.pos for r in gw.store.tail(0)] == [1, record.pos], "the log was cut before the checkpoint's commit"
        other.execute("COMMIT")
        await asyncio.wait_for(checkpoint, 10)
        ck = gw.store.load_checkpoint()
        assert ck is not None and ck.pos == 1 and record.pos > ck.pos
        assert [r.pos for r in gw.store.tail(0)] == [record.pos], "the rows the checkpoint covers stay in the log"
        assert gw.store.log_rows == 1
        await gw._process([record])
        await gw.checkpoint()
        ck = gw.store.load_checkpoint()
        assert ck is not None and ck.state["pipeline"]["stats"]["readings_accepted"] == 20
        assert list(gw.store.tail(0)) == [] and gw.store.log_rows == 0
    finally:
        other.close()  # the lock goes; the checkpoint's thread ends before its connection is closed
        if checkpoint is not None:
            await asyncio.wait([checkpoint], timeout=10)
        gw.store.close()


async def test_a_checkpoint_is_stored_compressed_and_an_older_json_one_still_restores(tmp_path: Path) -> None:
    """The state is stored as zlib-compressed JSON (a BLOB), far smaller than its JSON text; a checkpoint of the
    format before (JSON text) restores into the same state, so an upgrade keeps the window state."""
    gw = _gateway(tmp_path)
    try:
        await gw._process(gw._accept([_message(i) for i in range(20)]))
        await gw.checkpoint()
        stored = gw.store.db.execute("SELECT state FROM checkpoint").fetchone()[0]
        ck = gw.store.load_checkpoint()
        assert ck is not None
        text = json.dumps(ck.state, separators=(",", ":"))
        assert isinstance(stored, bytes) and len(stored) * 3 < len(text) * 2, (type(stored), len(stored), len(text))
        assert ck.state["pipeline"] == json.loads(json.dumps(gw.pipeline.snapshot()))
        pos = ck.pos
    finally:
        gw.store.close()
    # the same state as JSON text, as gateways before wrote it: a fresh gateway restores it and goes on
    old = _gateway(tmp_path)
    try:
        old.store.db.execute("UPDATE checkpoint SET state = ?", (text,))
        await old.recover()
        assert old.pos == pos
        assert old.pipeline.snapshot() == gw.pipeline.snapshot()
        await old._process(old._accept([_message(20)]))
        assert old.pipeline.stats.readings_accepted == 210
    finally:
        old.store.close()


async def _restart_spots(tmp_path: Path, live: list[bytes], i: int) -> None:
    """Restarted, the gateway has the digests ``live`` had, and takes a DUP copy of message ``i`` for what it is."""
    again = _gateway(tmp_path)
    try:
        await again.recover()
        assert list(again.recent) == live
        assert again._accept([(*_message(i)[:2], True)]) == [] and again.redelivered == 1
    finally:
        again.store.close()


class _StopsAfterOne(Gateway):
    """A gateway told to stop (SIGTERM) while it replays its first record."""

    applied = 0

    async def _apply(self, rec: Any) -> bool:
        out = await super()._apply(rec)
        self.applied += 1
        if self.applied == 1:
            self._begin_stop()
        return out


async def test_the_digests_of_recent_messages_survive_a_replay_cut_short_by_a_stop(tmp_path: Path) -> None:
    """A stop during the replay, then the checkpoint a start takes after recovering, then a restart: the digests of
    the messages not replayed the first time still spot their DUP copies."""
    gw = _gateway(tmp_path)
    try:
        await gw._process(gw._accept([_message(0)]))
        await gw.checkpoint()
        gw._accept([_message(i) for i in range(1, 5)])  # logged and acknowledged, not yet taken; then a crash
        live = list(gw.recent)
    finally:
        gw.store.close()
    cut = _StopsAfterOne(_config(tmp_path), now_ms=lambda: T0 + 3_600_000)
    try:
        await cut.recover()
        assert cut.replayed == 1
        await cut.checkpoint()
    finally:
        cut.store.close()
    await _restart_spots(tmp_path, live, 3)


async def test_the_digests_of_recent_messages_survive_a_salvage_that_lost_the_log(tmp_path: Path) -> None:
    """The log file destroyed and salvaged (its checkpoint kept): new messages take the positions after the
    checkpoint's again, and a restart still has their digests."""
    gw = _gateway(tmp_path)
    try:
        await gw._process(gw._accept([_message(0)]))
        gw._accept([_message(i) for i in range(1, 5)])  # logged, not yet taken
        await gw.checkpoint()
        path = gw.store.path
    finally:
        gw.store.close()
    lost = log_path(path)
    lost.write_bytes(b"\0" * lost.stat().st_size)
    assert recover_state(_config(tmp_path)).checkpoint == "kept"
    first = _gateway(tmp_path)
    try:
        await first.recover()
        first._accept([_message(i) for i in range(5, 9)])  # logged and acknowledged; then a crash
        live = list(first.recent)
    finally:
        first.store.close()
    await _restart_spots(tmp_path, live, 6)


async def test_a_restart_rebuilds_the_digests_of_recent_messages_as_they_were(tmp_path: Path) -> None:
    """The digests of the last logged messages (which spot a DUP copy of a logged message) come back after a
    restart as the running gateway had them: once each, in log order. The checkpoint holds those of messages
    logged after its position and not yet taken, which the replay gives again: they were counted twice (the
    window held duplicates and so fewer messages)."""
    gw = _gateway(tmp_path)
    try:
        await gw._process(gw._accept([_message(0)]))
        taken_later = gw._accept([_message(i) for i in range(1, 4)])  # logged, not yet taken
        await gw.checkpoint()
        ck = gw.store.load_checkpoint()
        assert ck is not None and ck.pos == 1
        logged_after = gw._accept([_message(4)])  # logged after the checkpoint
        await gw._process(taken_later + logged_after)
        live = list(gw.recent)
        assert len(live) == len(set(live)) == 5
    finally:
        gw.store.close()
    again = _gateway(tmp_path)
    try:
        await again.recover()
        assert again.replayed == 4
        assert list(again.recent) == live
        assert again._accept([(*_message(2)[:2], True)]) == [] and again.redelivered == 1
    finally:
        again.store.close()
