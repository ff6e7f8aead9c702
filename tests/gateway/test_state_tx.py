"""A commit that fails never leaves its transaction open, and the WAL checkpoints leave no statement running.

Seen in a clean clone's CI (test_bridge_crash): the log's trim failed its COMMIT with "cannot commit transaction -
SQL statements in progress", the transaction stayed open on the trim's connection, and from then on every append
found the log "database is locked": the gateway took no more messages. The statement in progress was the
``PRAGMA wal_checkpoint(TRUNCATE)`` of ``compact_async``, whose row was never read, on the same connection, its
cursor still alive (the result of a worker thread's future; the gateway pauses the cyclic collector during
checkpoints). SQLite's behaviour is the reference: a COMMIT while a statement of its connection is running fails
and leaves the transaction open.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from gateway import state
from gateway.state import StateStore, _Tx


def test_a_failed_commit_leaves_no_transaction_open(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE log(pos INTEGER PRIMARY KEY)")
    db.executemany("INSERT INTO log VALUES (?)", [(i,) for i in range(5)])
    running = db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # a statement of the connection, its row not read
    with pytest.raises(sqlite3.OperationalError, match="in progress"):
        with _Tx(db):
            db.execute("DELETE FROM log WHERE pos < 2")
    assert not db.in_transaction
    other = sqlite3.connect(path, isolation_level=None, timeout=0.2)
    other.execute("BEGIN IMMEDIATE")  # not "database is locked"
    other.execute("ROLLBACK")
    assert [r[0] for r in other.execute("SELECT pos FROM log")] == [0, 1, 2, 3, 4], "the rows stay where they were"
    del running
    other.close()
    db.close()


async def test_trimming_the_log_after_a_compaction_whose_results_are_kept(tmp_path: Path, monkeypatch: Any) -> None:
    kept: list[Any] = []
    to_thread = asyncio.to_thread

    async def keeping(func: Any, /, *args: Any, **kwargs: Any) -> Any:
        result = await to_thread(func, *args, **kwargs)
        kept.append(result)  # as a future that holds its result until the cyclic collector frees it
        return result

    monkeypatch.setattr(state.asyncio, "to_thread", keeping)
    store = StateStore(tmp_path / "state.db")
    try:
        store.append([(1, "t", b"x", 1000 + i) for i in range(10)])
        await store.compact_async()
        await store.trim_async(5)
        assert store.log_rows == 5
        store.append([(1, "t", b"y", 2000)])  # the log still takes messages
    finally:
        kept.clear()
        store.close()
