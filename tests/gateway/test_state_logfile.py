"""The ingest log is a file of its own beside the state file (``<state>-log``): a checkpoint commits on the state
file and only then cuts the log, so every crash window between the two files replays each logged input once; and
a state file of the layout before (the log inside it) opens and keeps every logged message."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.app import STATE_VERSION, Gateway
from gateway.config import parse_config
from gateway.state import (
    _SCHEMA,
    APPLICATION_ID,
    KIND_MESSAGE,
    KIND_TICK,
    StateFileError,
    StateStore,
    compress_checkpoint,
    decode_checkpoint,
    log_path,
)

T0 = 1_764_072_000_000


def _records(n: int, start: int = 0) -> list[tuple[int, str, bytes, int]]:
    return [(KIND_MESSAGE, f"p/s/d{i}/readings", f'{{"i":{i}}}'.encode(), T0 + i) for i in range(start, start + n)]


def _replayed(path: Path) -> list[int]:
    store = StateStore(path)
    try:
        ck = store.load_checkpoint()
        return [r.pos for r in store.tail(ck.pos if ck is not None else 0)]
    finally:
        store.close()


@given(logged=st.integers(1, 30), covered=st.integers(0, 30), more=st.integers(0, 10), trimmed=st.booleans())
@settings(max_examples=25, deadline=None)
def test_a_crash_between_the_checkpoints_commit_and_the_cut_replays_nothing_twice(
    tmp_path_factory: object, logged: int, covered: int, more: int, trimmed: bool
) -> None:
    """Whether the process dies after the checkpoint's commit and before the log is cut (``trimmed`` False) or
    after, the next start replays exactly the inputs after the checkpoint's position, once, in order; new inputs
    come after every position used; the rows the checkpoint covers are gone after the start."""
    covered = min(covered, logged)
    path = tmp_path_factory.mktemp("cut") / "s.db"  # type: ignore[attr-defined]
    store = StateStore(path)
    positions = store.append(_records(logged))
    store._write_checkpoint(store.db, covered, {"x": 1}, T0, [], None)  # committed, the log not cut yet
    if trimmed:
        store.trim(covered)
    store.append(_records(more, logged))
    store.close()  # the crash: nothing else happens to either file
    assert _replayed(path) == list(range(covered + 1, logged + more + 1))
    store = StateStore(path)
    try:
        assert store.log_rows == logged + more - covered
        (new,) = store.append(_records(1, 99))
        assert new == logged + more + 1 and positions == list(range(1, logged + 1))
    finally:
        store.close()


def test_the_log_is_cut_only_by_a_committed_checkpoint(tmp_path: Path) -> None:
    """A checkpoint whose transaction fails leaves every log row; a lost log file (moved away) cannot make new
    inputs take positions the checkpoint covers (they would be skipped by the replay)."""
    path = tmp_path / "s.db"
    store = StateStore(path)
    try:
        store.append(_records(5))
        other = sqlite3.connect(path, isolation_level=None, timeout=0)
        other.execute("BEGIN IMMEDIATE")
        store.db.execute("PRAGMA busy_timeout=0")
        try:
            store.checkpoint(3, {"x": 1}, T0)
        except sqlite3.OperationalError:
            pass
        else:
            raise AssertionError("the checkpoint committed while another connection held the write lock")
        other.execute("ROLLBACK")
        other.close()
        assert [r.pos for r in store.tail(0)] == [1, 2, 3, 4, 5] and store.log_rows == 5
        store.checkpoint(3, {"x": 1}, T0)
        assert [r.pos for r in store.tail(0)] == [4, 5] and store.log_rows == 2
        store.checkpoint(5, {"x": 1}, T0)
    finally:
        store.close()
    log_path(path).unlink()
    store = StateStore(path)
    try:
        assert store.append(_records(1)) == [6]
    finally:
        store.close()


def _old_layout(path: Path, logged: int, covered: int) -> None:
    """A state file as the gateway wrote it before the log file: the log table inside it."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(_SCHEMA)
    db.execute(f"PRAGMA application_id={APPLICATION_ID}")
    db.execute("PRAGMA user_version=12345")
    db.executemany("INSERT INTO log (kind, topic, payload, received_ms) VALUES (?, ?, ?, ?)", _records(logged))
    db.execute("INSERT INTO log (kind, topic, payload, received_ms) VALUES (?, '', x'', ?)", (KIND_TICK, T0))
    db.execute("DELETE FROM log WHERE pos <= ?", (covered,))
    db.execute("INSERT INTO checkpoint (id, pos, state, saved_ms) VALUES (1, ?, '{\"x\":1}', ?)", (covered, T0))
    db.close()


def test_a_state_file_of_the_layout_before_moves_its_log_into_the_log_file(tmp_path: Path) -> None:
    """Its logged rows after the checkpoint move to the log file with their positions and bytes, once; a crash in
    the middle of the move (rows in both files) moves them again without doubling; new rows come after them."""
    path = tmp_path / "s.db"
    _old_layout(path, 20, 7)
    before = sqlite3.connect(path)
    want = before.execute("SELECT pos, kind, topic, payload, received_ms FROM log ORDER BY pos").fetchall()
    before.close()
    assert [r[0] for r in want] == list(range(8, 22))
    store = StateStore(path)
    try:
        assert [(r.pos, r.kind, r.topic, r.payload, r.received_ms) for r in store.tail(7)] == want
        assert store.log_rows == 14 and store.db.execute("SELECT COUNT(*) FROM log").fetchone() == (0,)
        assert store.append(_records(1)) == [22]
    finally:
        store.close()
    # the move interrupted after the log file's commit: the same rows in both files
    db = sqlite3.connect(path, isolation_level=None)
    db.executemany("INSERT INTO log (pos, kind, topic, payload, received_ms) VALUES (?, ?, ?, ?, ?)", want)
    db.close()
    store = StateStore(path)
    try:
        assert [r.pos for r in store.tail(7)] == [*range(8, 23)] and store.log_rows == 15
    finally:
        store.close()


def test_a_log_file_of_another_state_file_is_refused(tmp_path: Path) -> None:
    """Replaying another gateway's log would take messages twice or at wrong positions: the pair is refused."""
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    for p in (a, b):
        StateStore(p).close()
    log_path(b).unlink()
    log_path(a).rename(log_path(b))
    try:
        StateStore(b).close()
    except StateFileError as exc:
        assert exc.path == log_path(b) and "belongs to another state file" in str(exc) and exc.lasting
    else:
        raise AssertionError("a log file of another state file was opened")


def _gateway(state_dir: Path) -> Gateway:
    doc = {
        "mqtt": {"prefix": "lf", "client_id": "gw-lf"},
        "influx": {"target": "v1", "url": "http://127.0.0.1:9", "database": "db"},  # never written to here
        "state": {"dir": str(state_dir)},
        "windows": [{"name": "t1m", "kind": "tumbling", "size": "1m", "metrics": ["x"]}],
        "anomaly": {"metrics": ["x"]},
    }
    return Gateway(parse_config(doc, env={}), now_ms=lambda: T0 + 3_600_000)


def _message(i: int) -> tuple[str, bytes, bool]:
    rows = [{"b": 1, "s": i * 10 + j, "t": T0 + (i * 10 + j) * 1000, "q": "s", "m": {"x": j}} for j in range(10)]
    return f"lf/site/d{i % 3}/readings", json.dumps({"v": 1, "dev": f"d{i % 3}", "r": rows}).encode(), False


def _to_layout_before(path: Path) -> int:
    """Rewrite the pair at ``path`` as the gateway before wrote it: the log rows into the state file, the checkpoint
    marked version 3 (its rows are the same), no log file. Returns the log's sequence."""
    with sqlite3.connect(log_path(path)) as log_db:
        rows = log_db.execute("SELECT pos, kind, topic, payload, received_ms FROM log ORDER BY pos").fetchall()
        seq = log_db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'log'").fetchone()[0]
    log_db.close()
    assert len(rows) == 5
    db = sqlite3.connect(path, isolation_level=None)
    db.executemany("INSERT INTO log (pos, kind, topic, payload, received_ms) VALUES (?, ?, ?, ?, ?)", rows)
    db.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'log'", (seq,))
    (blob,) = db.execute("SELECT state FROM checkpoint").fetchone()
    state = decode_checkpoint(blob)
    assert state["version"] == STATE_VERSION >= 4
    state["version"] = 3
    db.execute("UPDATE checkpoint SET state = ?", (compress_checkpoint(json.dumps(state)),))
    db.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{log_path(path)}{suffix}").unlink(missing_ok=True)
    return int(seq)


async def test_a_gateway_starts_on_a_state_directory_of_the_layout_before(tmp_path: Path) -> None:
    """A state directory as the gateway before wrote it (a version-3 checkpoint, the log inside the state file,
    no log file): the gateway restores it and replays the messages logged after the checkpoint, once, to exactly
    the state of the same messages taken in one go; the log has moved to the log file and new checkpoints are of
    this version (4 or later)."""
    reference = _gateway(tmp_path / "reference")
    try:
        await reference._process(reference._accept([_message(i) for i in range(10)]))
        want = reference.pipeline.snapshot()
    finally:
        reference.store.close()
    gw = _gateway(tmp_path / "state")
    path = gw.store.path
    try:
        await gw._process(gw._accept([_message(i) for i in range(5)]))
        await gw.checkpoint()
        gw._accept([_message(i) for i in range(5, 10)])  # logged and acknowledged, not taken yet
    finally:
        gw.store.close()
    seq = _to_layout_before(path)

    again = _gateway(tmp_path / "state")
    try:
        assert again.store.db.execute("SELECT COUNT(*) FROM log").fetchone() == (0,)
        await again.recover()
        assert again.replayed == 5 and again.pipeline.snapshot() == want
        assert again._row_digests, "the rows of a version-3 checkpoint are this version's: kept, not rewritten"
        await again.checkpoint()
        ck = again.store.load_checkpoint()
        assert ck is not None and ck.state["version"] == STATE_VERSION and list(again.store.tail(ck.pos)) == []
        (pos,) = again.store.append([(KIND_TICK, "", b"", T0)])
        assert pos == seq + 1
    finally:
        again.store.close()
