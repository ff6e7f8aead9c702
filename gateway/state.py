"""The gateway's durable state: one SQLite file with the ingest log, the checkpoint and the sink spool.

- ``log``: every accepted MQTT message (topic, payload, arrival time) and every engine tick, appended and
  committed *before* the message is acknowledged to the broker. Positions grow monotonically.
- ``checkpoint``: one row, the pipeline state (dedup, engine, dead-letter counter, stats) and the log
  position it includes. Written in the same transaction that moves the sink's unwritten lines into the
  spool and deletes the log up to that position, so after a crash the state, the spool and the log tail
  always agree.
- ``spool``: lines for InfluxDB that are not written yet, in chunks, oldest first, with a priority class
  (0 raw readings, 1 everything else). Bounded by ``spool_max_bytes``.

Sync policy: WAL journal. ``sync = "normal"`` (the default, ``PRAGMA synchronous=NORMAL``) makes every
commit durable against a crash of the gateway process (SIGKILL, OOM kill, an exception): the commit is in
the OS page cache before the message is acknowledged. Only a power loss or kernel crash can lose the last
commits. ``sync = "full"`` (``synchronous=FULL``) fsyncs the WAL at each commit and survives a power loss
too, at the price of one fsync per acknowledged batch of messages.

All calls are synchronous and short (one transaction each); the gateway calls them from its event loop.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

__all__ = ["KIND_MESSAGE", "KIND_OVERSIZE", "KIND_TICK", "Checkpoint", "LogRecord", "StateStore", "dumps_in_pieces"]

KIND_MESSAGE: Final = 0
KIND_TICK: Final = 1
KIND_OVERSIZE: Final = 2
"""A message over ``limits.max_bytes``: the payload column holds only its size, a digest and its head
(``gateway.ingest.oversize_stub``), enough for its ``oversize`` dead letter."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS log (
    pos INTEGER PRIMARY KEY AUTOINCREMENT,
    kind INTEGER NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    received_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoint (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    pos INTEGER NOT NULL,
    state TEXT NOT NULL,
    saved_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS spool (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    prio INTEGER NOT NULL,
    n INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    lines TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS spool_prio ON spool (prio, id);
"""


def dumps_in_pieces(obj: Any, depth: int = 6) -> str:
    """``json.dumps(obj, separators=(",", ":"))``, the same text, encoded one small piece at a time.

    Dicts (with string keys) and lists down to ``depth`` levels are walked in Python and only their leaves
    go through the C encoder. The C encoder holds the GIL for a whole call, so one call on a large state
    (megabytes) in a worker thread stalls the event loop as much as on the loop itself; between pieces
    the interpreter can hand the GIL to the loop.
    """
    out: list[str] = []
    _encode(obj, depth, out)
    return "".join(out)


_dumps = json.JSONEncoder(separators=(",", ":")).encode


def _encode(obj: Any, depth: int, out: list[str]) -> None:
    if depth > 0 and isinstance(obj, dict) and obj and all(type(k) is str for k in obj):
        sep = "{"
        for k, v in obj.items():
            out.append(sep)
            out.append(_dumps(k))
            out.append(":")
            _encode(v, depth - 1, out)
            sep = ","
        out.append("}")
    elif depth > 0 and isinstance(obj, (list, tuple)) and obj:
        sep = "["
        for v in obj:
            out.append(sep)
            _encode(v, depth - 1, out)
            sep = ","
        out.append("]")
    else:
        out.append(_dumps(obj))


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One logged input: a message (``kind`` 0), a tick (``kind`` 1, ``received_ms`` is its ``now``) or an
    oversize message (``kind`` 2, ``payload`` is its stub)."""

    pos: int
    kind: int
    topic: str
    payload: bytes
    received_ms: int


@dataclass(frozen=True, slots=True)
class Checkpoint:
    pos: int
    state: dict[str, Any]
    saved_ms: int


class StateStore:
    """The SQLite file ``path`` (created with its directory). ``close()`` when done."""

    def __init__(self, path: Path, *, sync: Literal["normal", "full"] = "normal") -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={'FULL' if sync == 'full' else 'NORMAL'}")
        self.db.executescript(_SCHEMA)
        row = self.db.execute("SELECT COALESCE(SUM(bytes), 0), COUNT(*), COALESCE(SUM(n), 0) FROM spool").fetchone()
        self.spool_bytes: int = row[0]
        self.spool_chunks: int = row[1]
        self.spool_lines: int = row[2]
        self.last_pos: int = self.db.execute("SELECT COALESCE(MAX(pos), 0) FROM log").fetchone()[0]
        seq = self.db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'log'").fetchone()
        if seq is not None:
            self.last_pos = max(self.last_pos, seq[0])
        self.log_rows: int = self.db.execute("SELECT COUNT(*) FROM log").fetchone()[0]

    def close(self) -> None:
        self.db.close()

    # ------------------------------------------------------------------------------------------- log

    def append(self, records: Sequence[tuple[int, str, bytes, int]]) -> list[int]:
        """Append ``(kind, topic, payload, received_ms)`` records in one committed transaction."""
        positions: list[int] = []
        with self._tx():
            for kind, topic, payload, received_ms in records:
                cur = self.db.execute(
                    "INSERT INTO log (kind, topic, payload, received_ms) VALUES (?, ?, ?, ?)",
                    (kind, topic, payload, received_ms),
                )
                assert cur.lastrowid is not None
                positions.append(cur.lastrowid)
        if positions:
            self.last_pos = positions[-1]
            self.log_rows += len(positions)
        return positions

    def tail(self, after: int) -> Iterator[LogRecord]:
        """Logged records after position ``after``, in order."""
        cur = self.db.execute(
            "SELECT pos, kind, topic, payload, received_ms FROM log WHERE pos > ? ORDER BY pos", (after,)
        )
        for pos, kind, topic, payload, received_ms in cur:
            yield LogRecord(pos, kind, topic, bytes(payload), received_ms)

    def log_bytes(self) -> int:
        row = self.db.execute("SELECT COALESCE(SUM(LENGTH(payload) + LENGTH(topic)), 0) FROM log").fetchone()
        return int(row[0])

    # ------------------------------------------------------------------------------------ checkpoint

    def load_checkpoint(self) -> Checkpoint | None:
        row = self.db.execute("SELECT pos, state, saved_ms FROM checkpoint WHERE id = 1").fetchone()
        if row is None:
            return None
        return Checkpoint(pos=row[0], state=json.loads(row[1]), saved_ms=row[2])

    def checkpoint(
        self, pos: int, state: dict[str, Any] | str, saved_ms: int, spill: Sequence[tuple[int, list[str]]] = ()
    ) -> None:
        """Atomically: spool ``spill`` chunks ``(prio, lines)``, save ``state`` at ``pos``, drop the log to ``pos``.

        ``state`` is a JSON-able dict, or its JSON text already encoded (:func:`dumps_in_pieces`).
        """
        blob = state if isinstance(state, str) else json.dumps(state, separators=(",", ":"))
        with self._tx():
            self._spool_insert(spill)
            self.db.execute(
                "INSERT OR REPLACE INTO checkpoint (id, pos, state, saved_ms) VALUES (1, ?, ?, ?)",
                (pos, blob, saved_ms),
            )
            deleted = self.db.execute("DELETE FROM log WHERE pos <= ?", (pos,)).rowcount
        self.log_rows -= deleted
        self._spool_count(spill)

    def compact(self) -> None:
        """Give the WAL's pages back (after a checkpoint truncated the log)."""
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    # ----------------------------------------------------------------------------------------- spool

    def spool(self, chunks: Sequence[tuple[int, list[str]]]) -> None:
        with self._tx():
            self._spool_insert(chunks)
        self._spool_count(chunks)

    def spool_head(self, prio: int) -> tuple[int, list[str]] | None:
        """The oldest chunk of class ``prio``: ``(id, lines)``, or None."""
        row = self.db.execute("SELECT id, lines FROM spool WHERE prio = ? ORDER BY id LIMIT 1", (prio,)).fetchone()
        if row is None:
            return None
        return row[0], row[1].split("\n")

    def spool_delete(self, chunk_id: int) -> None:
        row = self.db.execute("SELECT n, bytes FROM spool WHERE id = ?", (chunk_id,)).fetchone()
        if row is None:
            return
        with self._tx():
            self.db.execute("DELETE FROM spool WHERE id = ?", (chunk_id,))
        self.spool_lines -= row[0]
        self.spool_bytes -= row[1]
        self.spool_chunks -= 1

    def _spool_insert(self, chunks: Sequence[tuple[int, list[str]]]) -> None:
        for prio, lines in chunks:
            if lines:
                text = "\n".join(lines)
                self.db.execute(
                    "INSERT INTO spool (prio, n, bytes, lines) VALUES (?, ?, ?, ?)",
                    (prio, len(lines), len(text), text),
                )

    def _spool_count(self, chunks: Sequence[tuple[int, list[str]]]) -> None:
        for _, lines in chunks:
            if lines:
                self.spool_chunks += 1
                self.spool_lines += len(lines)
                self.spool_bytes += sum(map(len, lines)) + len(lines) - 1

    # ---------------------------------------------------------------------------------------- helper

    def _tx(self) -> _Tx:
        return _Tx(self.db)


class _Tx:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on an exception."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")
