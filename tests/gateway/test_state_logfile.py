"""The ingest log is a file of its own beside the state file (``<state>-log``): a checkpoint commits on the state
file and only then cuts the log, so every crash window between the two files replays each logged input once; and
a state file of the layout before (the log inside it) opens and keeps every logged message."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.state import _SCHEMA, APPLICATION_ID, KIND_MESSAGE, KIND_TICK, StateFileError, StateStore, log_path

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
