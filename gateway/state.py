"""The gateway's durable state: two SQLite files, the state file (the checkpoint and the sink spool) and beside it
the log file ``<state file>-log`` (the ingest log). SQLite takes one writer per file: with the log in a file of
its own, messages are logged (and acknowledged) while a checkpoint's transaction writes the state file.

- ``log`` (the log file): every accepted MQTT message (topic, payload, arrival time) and every engine tick,
  appended and committed *before* the message is acknowledged to the broker. Positions grow monotonically, and
  always past the checkpoint's. The log file carries the state file's id (``user_version``): a log file of
  another state file is refused. A state file of the layout before has the log in its own ``log`` table: its
  rows move to the log file at open (the same positions; the move is repeated, not doubled, after a crash).
- ``checkpoint``: one row, the pipeline state (dedup, engine, dead-letter counter, stats) and the log
  position it includes. The state is compact JSON compressed with zlib (a BLOB; a checkpoint written before,
  JSON text, is still read). Written in the same transaction that moves the sink's unwritten lines into the
  spool, so after a crash the state and the spool always agree; the log rows up to its position are deleted
  only after that commit (a crash in between leaves rows the replay skips, as it starts after the checkpoint's
  position, and the next open deletes).
- ``ckpt_row``: the checkpoint's per-key rows (``gateway.ckpt_rows``): when the checkpoint's state says
  ``"rows": 2`` (1 before version 6) it is the global part, and the per-key maps are in these rows, one JSON text
  per key plus the order row, each compressed with zstd (:func:`compress_row`; a row written before, with zlib,
  is still read). A checkpoint rewrites only the rows that changed and deletes those of keys gone, in the same
  transaction. A checkpoint of the older layout (the whole state in one value) has no rows and still reads.
- ``spool``: lines for InfluxDB that are not written yet, in chunks, oldest first, with a priority class
  (0 raw readings, 1 everything else). Bounded by ``spool_max_bytes``. A chunk is stored as a JSON array of
  its lines (``fmt`` 1), so any list of strings comes back exactly: a raw newline inside a quoted string
  value, any Unicode, even a lone surrogate (escaped by the JSON encoder). Rows of the first format (``fmt``
  0: the lines joined by newlines, written when the line protocol escaped every newline) are still read.

Sync policy: WAL journal. ``sync = "normal"`` (the default, ``PRAGMA synchronous=NORMAL``) makes every
commit durable against a crash of the gateway process (SIGKILL, OOM kill, an exception): the commit is in
the OS page cache before the message is acknowledged. Only a power loss or kernel crash can lose the last
commits. ``sync = "full"`` (``synchronous=FULL``) fsyncs the WAL at each commit and survives a power loss
too, at the price of one fsync per acknowledged batch of messages.

All calls are synchronous and short (one transaction each). The gateway calls them from its event loop, except
the checkpoint's transaction, the log's cutting and the WALs' truncation (:meth:`StateStore.checkpoint_async`,
:meth:`StateStore.trim_async`, :meth:`StateStore.compact_async`): they run in a worker thread on second
connections, holding the file's gate (:attr:`StateStore.write_gate` for the state file, which the spool's
writes from the loop take too; :attr:`StateStore.log_gate` for the log file, which the appends take), so the loop
never waits on SQLite's lock.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import secrets
import sqlite3
import struct
import threading
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import zstandard

from .ckpt_rows import join_state
from .errors import StateError

__all__ = [
    "APPLICATION_ID",
    "CHECKPOINT_LEVEL",
    "HOLDS",
    "KIND_MESSAGE",
    "KIND_OVERSIZE",
    "KIND_RELOAD",
    "KIND_TICK",
    "Checkpoint",
    "LogRecord",
    "RowDelta",
    "StateFileError",
    "StateStore",
    "dumps_in_pieces",
    "expected_columns",
    "file_error",
    "fsync_dir",
    "lock_file",
    "read_header",
    "read_rows",
    "row_digest",
    "spool_lines",
    "wal_identity",
]

KIND_MESSAGE: Final = 0
KIND_TICK: Final = 1
KIND_OVERSIZE: Final = 2
"""A message over ``limits.max_bytes``: the payload column holds only its size, a digest and its head
(``gateway.ingest.oversize_stub``), enough for its ``oversize`` dead letter."""
KIND_RELOAD: Final = 3
"""A reload (``edgekit-gateway reload``, SIGHUP): the inputs after it were taken with the configuration whose state
sections and fingerprint its payload holds (``gateway.reload.reload_payload``); its topic is empty."""

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
    lines TEXT NOT NULL,
    fmt INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS spool_prio ON spool (prio, id);
CREATE TABLE IF NOT EXISTS ckpt_row (
    name TEXT PRIMARY KEY,
    data BLOB NOT NULL
);
"""

_LOG_SCHEMA = """
CREATE TABLE IF NOT EXISTS log (
    pos INTEGER PRIMARY KEY AUTOINCREMENT,
    kind INTEGER NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    received_ms INTEGER NOT NULL
);
"""
"""The log file's one table (``log_path``): the same ``log`` table as the state file's of the layout before."""


def log_path(path: Path) -> Path:
    """The log file beside the state file ``path``: ``<path>-log`` (a name no other state file can have)."""
    return Path(f"{path}-log")


SPOOL_NEWLINES: Final = 0
"""Spool chunk format 0: the lines joined by newlines (files written before the JSON format)."""
SPOOL_JSON: Final = 1
"""Spool chunk format 1: a JSON array of the lines (ASCII, so any ``str`` is stored and read back exactly)."""

APPLICATION_ID: Final = 0x65646B67
"""``PRAGMA application_id`` of a state file ("edkg"). Its ``user_version`` is a random id of the file, set when
the file is made: a WAL file whose first page carries another id belongs to another database."""

LOG_HOLDS: Final = "the ingest log (messages already acknowledged to the broker and not yet in a checkpoint)"
"""What a log file holds."""

HOLDS: Final = (
    "the ingest log (messages already acknowledged to the broker and not yet in a checkpoint), the checkpoint "
    "(window, dedup, pattern and anomaly state, alerts not yet published) and the spool (lines not yet written "
    "to InfluxDB)"
)
"""What a state file holds, for the messages that name a damaged or unusable one."""

# SQLite primary result codes (https://www.sqlite.org/rescode.html)
_DAMAGED_CODES: Final = {11: "SQLITE_CORRUPT", 26: "SQLITE_NOTADB"}
_LASTING_CODES: Final = {3: "SQLITE_PERM", 8: "SQLITE_READONLY", 14: "SQLITE_CANTOPEN", 23: "SQLITE_AUTH"}
_BUSY_CODES: Final = {5: "SQLITE_BUSY", 6: "SQLITE_LOCKED"}
_HEADER = b"SQLite format 3\x00"


class StateFileError(StateError):
    """The state file ``path`` cannot be used. ``damaged``: its content is (``edgekit-gateway recover`` salvages
    what is readable); ``lasting``: starting again will not help until someone acts (damage, permissions);
    otherwise (a full disk, another process holding it) a later start may succeed."""

    def __init__(self, path: Path, problem: str, *, damaged: bool, lasting: bool = True) -> None:
        super().__init__(f"state file {path}: {problem}")
        self.path = path
        self.problem = problem
        self.damaged = damaged
        self.lasting = lasting or damaged


def file_error(path: Path, exc: BaseException) -> StateFileError:
    """The :class:`StateFileError` for an SQLite or OS error met while using the state file ``path``."""
    if isinstance(exc, StateFileError):
        return exc
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    what = str(exc) or type(exc).__name__
    if primary in _DAMAGED_CODES:
        if primary == 26:
            return StateFileError(path, f"damaged: not an SQLite database ({what})", damaged=True)
        return StateFileError(path, f"damaged: {what}", damaged=True)
    if primary in _LASTING_CODES or isinstance(exc, PermissionError):
        return StateFileError(
            path, f"cannot be opened for writing ({what}): check the permissions of the file and its directory",
            damaged=False,
        )  # fmt: skip
    if primary in _BUSY_CODES:
        return StateFileError(path, f"in use by another process ({what})", damaged=False, lasting=False)
    if isinstance(exc, OSError) and exc.strerror:
        what = exc.strerror
    return StateFileError(path, f"cannot be used: {what}", damaged=False, lasting=False)


def fsync_dir(directory: Path) -> None:
    """Make a directory's entries (a rename, a new file) durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def lock_file(path: Path) -> int:
    """Open ``path`` (created if missing) and take an exclusive ``flock`` on it: one gateway (or ``recover``) per
    state file. Returns the descriptor, which holds the lock until it is closed.

    A ``flock`` lock is independent of SQLite's own (POSIX ``fcntl``) locks on Linux. The descriptor stays open
    as long as the database is: closing any descriptor of the file would drop the process's POSIX locks.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    except OSError as exc:
        raise file_error(path, exc) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        os.close(fd)
        raise StateFileError(
            path, "in use by another process (a gateway running with the same client id and state dir?)",
            damaged=False, lasting=False,
        ) from exc  # fmt: skip
    return fd


def read_header(fd: int) -> tuple[int, int] | None:
    """``(application_id, user_version)`` from the database file's own header (not what its WAL says), or
    None when the file has no SQLite header yet (a new file whose first page is still in the WAL)."""
    head = os.pread(fd, 100, 0)
    if len(head) < 100 or not head.startswith(_HEADER):
        return None
    user_version, application_id = struct.unpack(">I", head[60:64])[0], struct.unpack(">I", head[68:72])[0]
    return application_id, user_version


def wal_identity(wal: Path) -> tuple[int, int] | None:
    """``(application_id, user_version)`` of the last committed copy of the first page in the WAL file ``wal``
    (https://www.sqlite.org/fileformat.html#the_write_ahead_log), or None when it holds none: frames count as
    SQLite counts them (the header's salts, the cumulative checksum, up to the last commit frame).

    Read by hand, before SQLite sees the WAL: SQLite applies any WAL file beside a database, even one left by
    another database, and then reads a mix of the two (or calls it malformed)."""
    try:
        with open(wal, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    if len(data) < 32 or data[:4] not in (b"\x37\x7f\x06\x82", b"\x37\x7f\x06\x83"):
        return None
    big = data[3] == 0x83  # the checksums' byte order
    page_size = int.from_bytes(data[8:12], "big")
    if page_size < 512 or page_size & (page_size - 1):
        return None
    salts = data[16:24]
    sums = _wal_checksum(data[:24], 0, 0, big)
    if sums != struct.unpack(">II", data[24:32]):
        return None
    found = None
    pending = None  # page 1 as written by a transaction not yet seen committed
    frame = 24 + page_size
    for at in range(32, len(data) - frame + 1, frame):
        head = data[at : at + 24]
        if head[8:16] != salts:
            break
        sums = _wal_checksum(data[at + 24 : at + frame], *_wal_checksum(head[:8], *sums, big), big)
        if sums != struct.unpack(">II", head[16:24]):
            break  # SQLite stops at the first frame whose checksum is wrong (a torn or stale frame)
        if int.from_bytes(head[0:4], "big") == 1:
            page = data[at + 24 : at + 24 + 100]
            pending = int.from_bytes(page[68:72], "big"), int.from_bytes(page[60:64], "big")
        if int.from_bytes(head[4:8], "big"):  # a commit frame: what its transaction wrote counts
            if pending is not None:
                found, pending = pending, None
    return found


def _wal_checksum(data: bytes, s0: int, s1: int, big: bool) -> tuple[int, int]:
    """SQLite's WAL checksum of ``data`` (a multiple of 8 bytes) continued from ``(s0, s1)``."""
    words = struct.unpack(f"{'>' if big else '<'}{len(data) // 4}I", data)
    mask = 0xFFFFFFFF
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & mask
        s1 = (s1 + words[i + 1] + s0) & mask
    return s0, s1


def _columns(db: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in db.execute(f"PRAGMA table_info({table})")]


_EXPECTED: dict[str, list[str]] = {}


def expected_columns(table: str) -> list[str]:
    """The columns of ``table`` in a state file made by this version."""
    if not _EXPECTED:
        mem = sqlite3.connect(":memory:")
        mem.executescript(_SCHEMA)
        for name in ("log", "checkpoint", "spool"):
            _EXPECTED[name] = _columns(mem, name)
        mem.close()
    return _EXPECTED[table]


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


CHECKPOINT_LEVEL: Final = 1
"""zlib level of a checkpoint: the fastest, about a seventh of the JSON for the engine's state."""


def compress_checkpoint(text: str) -> bytes:
    """A checkpoint's JSON text as stored: zlib-compressed UTF-8 (zlib lets other threads run meanwhile)."""
    return zlib.compress(text.encode(), CHECKPOINT_LEVEL)


ROW_MARK: Final = 2
"""The global part's ``"rows"`` when the per-key rows hold the rest: 2 from checkpoint version 6 (zstd rows), 1
before. A gateway of version 5 reads rows only under 1: under 2 it leaves them alone, reads the version, and
refuses the checkpoint, where it would have failed on a zstd row and called the state file damaged."""
ROW_MARKS: Final = (1, ROW_MARK)
"""The marks of a global part whose state is in the rows (both still read)."""
ROW_LEVEL: Final = 1
"""zstd level of a checkpoint's rows: the fastest of its regular levels."""
_ZSTD_MAGIC: Final = b"\x28\xb5\x2f\xfd"
_CODECS = threading.local()
"""Each thread's zstd compressor and decompressor (one may not be used by two threads at once)."""


def compress_row(text: bytes) -> bytes:
    """A checkpoint row's JSON text as stored: a zstd frame at :data:`ROW_LEVEL`.

    A device's row is one to a few KB: zlib took 13-17 us to compress one of about 1 KB at its fastest level, zstd
    takes about 5 for as many bytes out (docs/performance.md). The global part stays zlib
    (:func:`compress_checkpoint`): a gateway of an older version reads its version there and refuses the
    checkpoint, rather than calling it damaged."""
    z = getattr(_CODECS, "compress", None)
    if z is None:
        z = _CODECS.compress = zstandard.ZstdCompressor(level=ROW_LEVEL).compress
    out: bytes = z(text)
    return out


def decompress_row(data: bytes) -> bytes:
    """The JSON text of a stored row: a zstd frame (:func:`compress_row`) or, written before, zlib. ``ValueError``
    naming the codec's error for data that is cut or altered."""
    if data[:4] != _ZSTD_MAGIC:
        try:
            return zlib.decompress(data)
        except zlib.error as exc:
            raise ValueError(f"zlib: {exc}") from exc
    z = getattr(_CODECS, "decompress", None)
    if z is None:
        z = _CODECS.decompress = zstandard.ZstdDecompressor().decompress
    try:
        out: bytes = z(data)
    except zstandard.ZstdError as exc:
        raise ValueError(f"zstd: {exc}") from exc
    except MemoryError as exc:  # a frame altered to claim more than memory holds: damaged, like any other
        raise ValueError(f"zstd: a row of {zstandard.frame_content_size(data):,} bytes does not fit in memory") from exc
    return out


def decode_checkpoint(value: object) -> Any:
    """The JSON value of a stored checkpoint: compressed (bytes) or, written before compression, JSON text.

    Raises ``ValueError`` (``json.JSONDecodeError``, or for compressed data that is cut or altered, a
    ``ValueError`` naming zlib's error) for anything else."""
    if isinstance(value, bytes):
        try:
            text = zlib.decompress(value)
        except zlib.error as exc:
            raise ValueError(f"zlib: {exc}") from exc
        return json.loads(text)
    if isinstance(value, str):
        return json.loads(value)
    raise ValueError(f"a checkpoint is bytes or text, not {type(value).__name__}")


def read_rows(db: sqlite3.Connection, state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The whole state from a checkpoint's global part ``state`` and the rows of ``db``'s ``ckpt_row``, and the
    digest of each row. ``ValueError`` when a row cannot be read or the rows do not fit the state."""
    rows: dict[str, Any] = {}
    digests: dict[str, bytes] = {}
    for name, data in db.execute("SELECT name, data FROM ckpt_row"):
        if not isinstance(name, str) or not isinstance(data, bytes):
            raise ValueError(f"checkpoint row {name!r} is not a compressed JSON text")
        try:
            text = decompress_row(data)
        except ValueError as exc:
            raise ValueError(f"checkpoint row {name!r}: {exc}") from exc
        rows[name] = json.loads(text)
        digests[name] = row_digest(text)
    del state["rows"]
    return join_state(state, rows), digests


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One logged input: a message (``kind`` 0), a tick (``kind`` 1, ``received_ms`` is its ``now``), an
    oversize message (``kind`` 2, ``payload`` is its stub) or a reload (``kind`` 3, :data:`KIND_RELOAD`)."""

    pos: int
    kind: int
    topic: str
    payload: bytes
    received_ms: int


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A checkpoint read back: ``state`` whole (rows joined in); ``row_digests``: the digest of each row's JSON
    text as stored (:func:`row_digest`; empty for a checkpoint of the older, one-value layout)."""

    pos: int
    state: dict[str, Any]
    saved_ms: int
    row_digests: dict[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RowDelta:
    """What a checkpoint changes in ``ckpt_row``: rows to write ``(name, compressed JSON)``, names to delete,
    and ``replace``: delete every row first (the rows stored are not known, e.g. the first checkpoint after
    a start from the older layout)."""

    put: Sequence[tuple[str, bytes]]
    delete: Sequence[str] = ()
    replace: bool = False


def row_digest(text: bytes) -> bytes:
    """The digest a checkpoint compares a row's JSON text (UTF-8) by, to tell whether it must be rewritten."""
    return hashlib.blake2b(text, digest_size=16).digest()


_ROWS_PER_STATEMENT: Final = 250
"""Checkpoint rows written (or deleted) by one SQL statement: 500 parameters, under the 999 of old SQLite builds."""


class StateStore:
    """The SQLite file ``path`` (created with its directory). ``close()`` when done.

    Opening checks the file and raises :class:`StateFileError` (naming the file and what is wrong) instead of
    starting on it: SQLite's ``quick_check`` over every page (``verify``), a WAL file left by another database,
    the tables being the gateway's, the file being writable and used by no other process.
    """

    def __init__(self, path: Path, *, sync: Literal["normal", "full"] = "normal", verify: bool = True) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise file_error(path, exc) from exc
        self._lock = lock_file(path)
        try:
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            os.close(self._lock)
            raise file_error(path, exc) from exc
        self._ckpt_db: sqlite3.Connection | None = None
        self.log_path = log_path(path)
        self.log_db: sqlite3.Connection | None = None
        self._trim_db: sqlite3.Connection | None = None
        at = path
        try:
            self._open(sync, verify)
            # the checkpoint's own connection, used only in a worker thread (checkpoint_async, compact_async)
            self._ckpt_db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._ckpt_db.execute(f"PRAGMA synchronous={'FULL' if sync == 'full' else 'NORMAL'}")
            at = self.log_path
            # its header read before SQLite opens it: closing a descriptor of a file drops the process's POSIX
            # locks on it, SQLite's included
            header = _peek_header(self.log_path)
            self.log_db = sqlite3.connect(self.log_path, isolation_level=None, check_same_thread=False)
            self._open_log(header, sync, verify)
            # the log's connection for cutting it after a checkpoint, in a worker thread (trim_async)
            self._trim_db = sqlite3.connect(self.log_path, isolation_level=None, check_same_thread=False)
            self._trim_db.execute(f"PRAGMA synchronous={'FULL' if sync == 'full' else 'NORMAL'}")
        except (sqlite3.Error, OSError, StateFileError) as exc:
            for conn in (self._trim_db, self.log_db, self._ckpt_db):
                if conn is not None:
                    conn.close()
            self.db.close()
            os.close(self._lock)
            raise file_error(at, exc) from exc
        self.write_gate = asyncio.Lock()
        """The state file's: held by every write of the event loop's asynchronous callers to it (the sink's spool
        writes) and by the checkpoint's transaction in its worker thread: SQLite takes one writer at a time, and a
        write on the loop's connection while the thread writes would block the loop on SQLite's lock."""
        self.log_gate = asyncio.Lock()
        """The log file's, the same way: held by every append (``append_async``, the ticks) and by the cutting of the
        log after a checkpoint (``trim_async``), never for long. A checkpoint's transaction does not hold it: the
        log is a file of its own, so messages are logged (and acknowledged) while a checkpoint writes."""

    def _open(self, sync: str, verify: bool) -> None:
        db = self.db
        application_id = _check_file(db, self.path, read_header(self._lock), sync, verify)
        db.executescript(_SCHEMA)
        self._upgrade_spool()
        for table in ("log", "checkpoint"):
            if _columns(db, table) != expected_columns(table):
                raise StateFileError(
                    self.path,
                    f"not a gateway state file: its table {table!r} has columns {_columns(db, table)}",
                    damaged=False,
                )
        if application_id == 0:  # a new file, or one from before the id: stamp it, and into the file itself
            with self._tx():
                db.execute(f"PRAGMA application_id={APPLICATION_ID}")
                db.execute(f"PRAGMA user_version={secrets.randbits(31) or 1}")
            _wal_checkpoint(db)
        row = db.execute("SELECT COALESCE(SUM(bytes), 0), COUNT(*), COALESCE(SUM(n), 0) FROM spool").fetchone()
        self.spool_bytes: int = row[0]
        self.spool_chunks: int = row[1]
        self.spool_lines: int = row[2]
        self.file_id: int = db.execute("PRAGMA user_version").fetchone()[0]

    def _open_log(self, header: tuple[int, int] | None, sync: str, verify: bool) -> None:
        """Open the log file (made if missing, stamped with the state file's id), move the rows of a state file
        of the layout before into it, and drop the rows a committed checkpoint covers."""
        path, db = self.log_path, self.log_db
        assert db is not None
        application_id = _check_file(db, path, header, sync, verify)
        db.executescript(_LOG_SCHEMA)
        if _columns(db, "log") != expected_columns("log"):
            raise StateFileError(
                path, f"not a gateway log file: its table 'log' has columns {_columns(db, 'log')}", damaged=False
            )
        if application_id == 0:  # a new file: it belongs to this state file
            with _Tx(db):
                db.execute(f"PRAGMA application_id={APPLICATION_ID}")
                db.execute(f"PRAGMA user_version={self.file_id}")
            _wal_checkpoint(db)
        else:
            owner = db.execute("PRAGMA user_version").fetchone()[0]
            if owner != self.file_id:
                raise StateFileError(
                    path,
                    f"belongs to another state file (its id is {owner:#x}, the state file {self.path.name}'s "
                    f"{self.file_id:#x}): replaying it would take another gateway's messages; move it away",
                    damaged=False,
                )
        ckpt = self.db.execute("SELECT pos FROM checkpoint WHERE id = 1").fetchone()
        covered = ckpt[0] if ckpt is not None and isinstance(ckpt[0], int) else 0
        old_seq = self.db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'log'").fetchone()
        floor = max(covered, old_seq[0] if old_seq is not None else 0)
        # the layout before: the log in the state file. Its rows go to the log file first (a crash in between
        # finds them in both, the same rows at the same positions, and moves them again), then leave the state file
        old = self.db.execute(
            "SELECT pos, kind, topic, payload, received_ms FROM log WHERE pos > ? ORDER BY pos", (covered,)
        )
        with _Tx(db):
            for rows in iter(lambda: old.fetchmany(1000), []):
                db.executemany(
                    "INSERT OR IGNORE INTO log (pos, kind, topic, payload, received_ms) VALUES (?, ?, ?, ?, ?)", rows
                )
            # new positions come after every one the checkpoint or the state file's log has used, whatever
            # happened to this file
            seq = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'log'").fetchone()
            if seq is None:
                db.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('log', ?)", (floor,))
            elif seq[0] < floor:
                db.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'log'", (floor,))
            # a crash after a checkpoint's commit, before the log was cut: those rows are in the checkpoint
            db.execute("DELETE FROM log WHERE pos <= ?", (covered,))
        if self.db.execute("SELECT 1 FROM log LIMIT 1").fetchone() is not None:
            with self._tx():
                self.db.execute("DELETE FROM log")
        self.last_pos: int = max(floor, db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'log'").fetchone()[0])
        self.log_rows: int = db.execute("SELECT COUNT(*) FROM log").fetchone()[0]

    def close(self) -> None:
        if self._ckpt_db is not None:
            self._ckpt_db.close()
            self._ckpt_db = None
        if self._trim_db is not None:
            self._trim_db.close()
            self._trim_db = None
        if self.log_db is not None:
            self.log_db.close()
            self.log_db = None
        self.db.close()
        if self._lock >= 0:
            os.close(self._lock)  # after the database: closing it drops the process's POSIX locks on the file
            self._lock = -1

    # ------------------------------------------------------------------------------------------- log

    def append(self, records: Sequence[tuple[int, str, bytes, int]]) -> list[int]:
        """Append ``(kind, topic, payload, received_ms)`` records in one committed transaction."""
        positions: list[int] = []
        db = self.log_db
        assert db is not None, "the state file is closed"
        with _Tx(db):
            for kind, topic, payload, received_ms in records:
                cur = db.execute(
                    "INSERT INTO log (kind, topic, payload, received_ms) VALUES (?, ?, ?, ?)",
                    (kind, topic, payload, received_ms),
                )
                assert cur.lastrowid is not None
                positions.append(cur.lastrowid)
        if positions:
            self.last_pos = positions[-1]
            self.log_rows += len(positions)
        return positions

    async def append_async(self, records: Sequence[tuple[int, str, bytes, int]]) -> list[int]:
        """:meth:`append` once the log is not being cut (:attr:`log_gate`); committed when it returns. A checkpoint's
        transaction does not hold it up."""
        async with self.log_gate:
            return self.append(records)

    def tail(self, after: int) -> Iterator[LogRecord]:
        """Logged records after position ``after``, in order."""
        assert self.log_db is not None, "the state file is closed"
        cur = self.log_db.execute(
            "SELECT pos, kind, topic, payload, received_ms FROM log WHERE pos > ? ORDER BY pos", (after,)
        )
        for pos, kind, topic, payload, received_ms in cur:
            yield LogRecord(pos, kind, topic, bytes(payload), received_ms)

    def replace_payload(self, pos: int, payload: bytes) -> None:
        """Rewrite the payload of the logged record at ``pos`` (a reload record whose reload failed)."""
        assert self.log_db is not None, "the state file is closed"
        with _Tx(self.log_db):
            self.log_db.execute("UPDATE log SET payload = ? WHERE pos = ?", (payload, pos))

    def last_of_kind(self, after: int, kind: int) -> LogRecord | None:
        """The last logged record of ``kind`` after position ``after``, if any."""
        assert self.log_db is not None, "the state file is closed"
        row = self.log_db.execute(
            "SELECT pos, kind, topic, payload, received_ms FROM log WHERE pos > ? AND kind = ? ORDER BY pos DESC "
            "LIMIT 1",
            (after, kind),
        ).fetchone()
        return None if row is None else LogRecord(row[0], row[1], row[2], bytes(row[3]), row[4])

    def log_bytes(self) -> int:
        assert self.log_db is not None, "the state file is closed"
        row = self.log_db.execute("SELECT COALESCE(SUM(LENGTH(payload) + LENGTH(topic)), 0) FROM log").fetchone()
        return int(row[0])

    # ------------------------------------------------------------------------------------ checkpoint

    def load_checkpoint(self) -> Checkpoint | None:
        """The checkpoint, or None before the first; :class:`StateFileError` (damaged) if it cannot be read."""
        try:
            row = self.db.execute("SELECT pos, state, saved_ms FROM checkpoint WHERE id = 1").fetchone()
            if row is None:
                return None
            state = decode_checkpoint(row[1])
            digests: dict[str, bytes] = {}
            if isinstance(state, dict) and state.get("rows") in ROW_MARKS:
                state, digests = self._join_rows(state)
        except (sqlite3.DatabaseError, ValueError, TypeError, KeyError) as exc:
            if isinstance(exc, sqlite3.DatabaseError) and not file_error(self.path, exc).damaged:
                raise
            raise StateFileError(self.path, f"damaged: its checkpoint cannot be read ({exc})", damaged=True) from exc
        if not isinstance(state, dict) or not isinstance(row[0], int):
            raise StateFileError(self.path, "damaged: its checkpoint is not a gateway checkpoint", damaged=True)
        return Checkpoint(pos=row[0], state=state, saved_ms=row[2], row_digests=digests)

    def _join_rows(self, state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, bytes]]:
        """The whole state from the global part ``state`` and the rows of ``ckpt_row``, and the rows' digests."""
        return read_rows(self.db, state)

    def checkpoint(
        self,
        pos: int,
        state: dict[str, Any] | str | bytes,
        saved_ms: int,
        spill: Sequence[tuple[int, list[str]]] = (),
        rows: RowDelta | None = None,
    ) -> None:
        """Atomically: spool ``spill`` chunks ``(prio, lines)``, save ``state`` at ``pos``; then, once that is
        committed, drop the log up to ``pos`` (:meth:`trim`).

        ``state`` is a JSON-able dict, its JSON text (:func:`dumps_in_pieces`), or that text already compressed
        (:func:`compress_checkpoint`, as the gateway does in a worker thread). With ``rows`` it is the global part
        of a state split into rows (``"rows": 2``; ``gateway.ckpt_rows``) and ``rows`` changes the stored rows in
        the same transaction; without, it is the whole state and any stored rows are deleted.
        """
        self._write_checkpoint(self.db, pos, state, saved_ms, spill, rows)
        self._spool_count(spill)
        self.trim(pos)

    async def checkpoint_async(
        self,
        pos: int,
        state: dict[str, Any] | str | bytes,
        saved_ms: int,
        spill: Sequence[tuple[int, list[str]]] = (),
        rows: RowDelta | None = None,
    ) -> None:
        """:meth:`checkpoint`'s transaction, in a worker thread on the checkpoint's own connection, while the
        event loop goes on: it holds :attr:`write_gate`, so the loop's other writes to the state file (the spool)
        wait for its commit (without blocking the loop), and its reads see the state before the commit until then.
        Appends to the log go on meanwhile (another file). Committed when it returns; raises, with nothing changed,
        when the transaction fails. The log is not cut here: :meth:`trim_async` does that after the commit."""
        db = self._ckpt_db
        assert db is not None, "the state file is closed"
        async with self.write_gate:
            await asyncio.to_thread(self._write_checkpoint, db, pos, state, saved_ms, spill, rows)
        self._spool_count(spill)

    def _write_checkpoint(
        self,
        db: sqlite3.Connection,
        pos: int,
        state: dict[str, Any] | str | bytes,
        saved_ms: int,
        spill: Sequence[tuple[int, list[str]]],
        rows: RowDelta | None,
    ) -> None:
        """The checkpoint's transaction on ``db``. Changes no counter."""
        if isinstance(state, bytes):
            blob = state
        else:
            blob = compress_checkpoint(state if isinstance(state, str) else json.dumps(state, separators=(",", ":")))
        with _Tx(db):
            _spool_insert(db, spill)
            db.execute(
                "INSERT OR REPLACE INTO checkpoint (id, pos, state, saved_ms) VALUES (1, ?, ?, ?)",
                (pos, blob, saved_ms),
            )
            if rows is None or rows.replace:
                db.execute("DELETE FROM ckpt_row")
            if rows is not None:
                # many rows a statement: each statement is one wait for the GIL in the checkpoint's worker thread,
                # which a busy event loop can make last its whole switch interval (5 ms), one per row with executemany
                if rows.delete and not rows.replace:
                    for i in range(0, len(rows.delete), _ROWS_PER_STATEMENT):
                        names = rows.delete[i : i + _ROWS_PER_STATEMENT]
                        db.execute(f"DELETE FROM ckpt_row WHERE name IN ({','.join('?' * len(names))})", names)
                for i in range(0, len(rows.put), _ROWS_PER_STATEMENT):
                    put = rows.put[i : i + _ROWS_PER_STATEMENT]
                    db.execute(
                        f"INSERT OR REPLACE INTO ckpt_row (name, data) VALUES {','.join(['(?,?)'] * len(put))}",
                        [x for row in put for x in row],
                    )

    def trim(self, pos: int) -> None:
        """Drop the log's rows up to ``pos``, which a committed checkpoint covers (never before its commit: a crash
        in between leaves rows the replay skips, as it starts after the checkpoint's position, and the next open
        drops them)."""
        assert self.log_db is not None, "the state file is closed"
        while _trim_some(self.log_db, pos) == _TRIM_ROWS:
            pass
        self.log_rows = self.log_db.execute("SELECT COUNT(*) FROM log").fetchone()[0]

    async def trim_async(self, pos: int) -> None:
        """:meth:`trim` in a worker thread on the log's second connection, :data:`_TRIM_ROWS` rows a transaction,
        each holding :attr:`log_gate` (an append waits for one of them at most)."""
        db = self._trim_db
        assert db is not None, "the state file is closed"
        deleted = _TRIM_ROWS
        while deleted == _TRIM_ROWS:
            async with self.log_gate:
                deleted = await asyncio.to_thread(_trim_some, db, pos)
                self.log_rows -= deleted

    def compact(self) -> None:
        """Give the WALs' pages back (after checkpoints cut the log)."""
        _wal_checkpoint(self.db)
        if self.log_db is not None:
            _wal_checkpoint(self.log_db)

    async def compact_async(self) -> None:
        """:meth:`compact` in a worker thread on the checkpoint's and trim's connections, holding :attr:`write_gate`
        and then :attr:`log_gate` (it copies a WAL into its file: tens of milliseconds after a few checkpoints)."""
        db, log_db = self._ckpt_db, self._trim_db
        assert db is not None and log_db is not None, "the state file is closed"
        async with self.write_gate:
            await asyncio.to_thread(_wal_checkpoint, db)
        async with self.log_gate:
            await asyncio.to_thread(_wal_checkpoint, log_db)

    # ----------------------------------------------------------------------------------------- spool

    def spool(self, chunks: Sequence[tuple[int, list[str]]]) -> None:
        with self._tx():
            _spool_insert(self.db, chunks)
        self._spool_count(chunks)

    def spool_head(self, prio: int) -> tuple[int, list[str]] | None:
        """The oldest chunk of class ``prio``: ``(id, lines)``, or None."""
        row = self.db.execute("SELECT id, lines, fmt FROM spool WHERE prio = ? ORDER BY id LIMIT 1", (prio,)).fetchone()
        if row is None:
            return None
        chunk_id, text, fmt = row
        lines = spool_lines(text, fmt)
        if lines is None:
            raise ValueError(f"{self.path}: spool chunk {chunk_id} is not a list of lines")
        return chunk_id, lines

    def spool_delete(self, chunk_id: int) -> None:
        row = self.db.execute("SELECT n, bytes FROM spool WHERE id = ?", (chunk_id,)).fetchone()
        if row is None:
            return
        with self._tx():
            self.db.execute("DELETE FROM spool WHERE id = ?", (chunk_id,))
        self.spool_lines -= row[0]
        self.spool_bytes -= row[1]
        self.spool_chunks -= 1

    def _upgrade_spool(self) -> None:
        """A spool table from before the ``fmt`` column gets it; its rows keep format 0 (newline-joined)."""
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(spool)")}
        if "fmt" not in columns:
            self.db.execute(f"ALTER TABLE spool ADD COLUMN fmt INTEGER NOT NULL DEFAULT {SPOOL_NEWLINES}")

    def _spool_count(self, chunks: Sequence[tuple[int, list[str]]]) -> None:
        for _, lines in chunks:
            if lines:
                self.spool_chunks += 1
                self.spool_lines += len(lines)
                self.spool_bytes += _size(lines)

    # ---------------------------------------------------------------------------------------- helper

    def _tx(self) -> _Tx:
        return _Tx(self.db)


_TRIM_ROWS: Final = 2000
"""Log rows dropped by one transaction of :meth:`StateStore.trim_async`."""


def _wal_checkpoint(db: sqlite3.Connection) -> None:
    """Copy the WAL's pages into the file and empty it, reading the pragma's row: a cursor left unread keeps its
    statement running, and a COMMIT on the connection fails while it lives (tests/gateway/test_state_tx.py)."""
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()


def _trim_some(db: sqlite3.Connection, pos: int) -> int:
    """Drop up to :data:`_TRIM_ROWS` of the oldest log rows at or before ``pos``; how many were dropped."""
    with _Tx(db):
        n: int = db.execute(
            "DELETE FROM log WHERE pos IN (SELECT pos FROM log WHERE pos <= ? ORDER BY pos LIMIT ?)", (pos, _TRIM_ROWS)
        ).rowcount
    return n


def _peek_header(path: Path) -> tuple[int, int] | None:
    """:func:`read_header` of ``path``, None when it does not exist."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        return read_header(fd)
    finally:
        os.close(fd)


def _check_file(db: sqlite3.Connection, path: Path, header: tuple[int, int] | None, sync: str, verify: bool) -> int:
    """The checks of a state or log file at open: its WAL file is its own, SQLite's quick_check, its application
    id; sets the journal and sync mode. Returns the file's application id (0: new)."""
    wal = wal_identity(Path(f"{path}-wal"))
    if header is not None and header[0] == APPLICATION_ID and wal is not None and wal != header:
        raise StateFileError(
            path,
            f"damaged: its WAL file ({path.name}-wal) belongs to another database (the file's id is "
            f"{header[1]:#x}, the WAL's first page says {wal[1]:#x}); SQLite would mix the two",
            damaged=True,
        )
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={'FULL' if sync == 'full' else 'NORMAL'}")
    application_id: int = db.execute("PRAGMA application_id").fetchone()[0]
    if verify:
        said = [str(row[0]) for row in db.execute("PRAGMA quick_check(3)")]
        if said != ["ok"]:
            problems = [ln for text in said for ln in text.splitlines() if not ln.startswith("***")]
            raise StateFileError(path, "damaged: SQLite's quick_check says: " + "; ".join(problems), damaged=True)
    if application_id not in (0, APPLICATION_ID):
        raise StateFileError(
            path, f"not a gateway state file (SQLite application_id {application_id:#x})", damaged=False
        )
    return application_id


_spool_json = json.JSONEncoder(ensure_ascii=True, separators=(",", ":")).encode
"""A chunk's text: ASCII, so SQLite stores it whatever the lines hold (a lone surrogate cannot be UTF-8)."""


def spool_lines(text: str, fmt: int) -> list[str] | None:
    """A spool chunk's lines from its stored text: ``fmt`` 0 (:data:`SPOOL_NEWLINES`) the lines joined by
    newlines, otherwise a JSON array of strings; None when the JSON is not one (raises ``ValueError`` when it is
    not JSON)."""
    if fmt == SPOOL_NEWLINES:
        return text.split("\n")
    lines = json.loads(text)
    if not isinstance(lines, list) or not all(isinstance(ln, str) for ln in lines):
        return None
    return lines


def _spool_insert(db: sqlite3.Connection, chunks: Sequence[tuple[int, list[str]]]) -> None:
    for prio, lines in chunks:
        if lines:
            db.execute(
                "INSERT INTO spool (prio, n, bytes, lines, fmt) VALUES (?, ?, ?, ?, ?)",
                (prio, len(lines), _size(lines), _spool_json(lines), SPOOL_JSON),
            )


def _size(lines: Sequence[str]) -> int:
    """What ``spool_bytes`` counts for a chunk: the length of its lines as line protocol (joined by newlines)."""
    return sum(map(len, lines)) + len(lines) - 1


class _Tx:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on an exception."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self.db.execute("ROLLBACK")
            return
        try:
            self.db.execute("COMMIT")
        except BaseException:
            # a COMMIT that fails (a statement of the connection still running, an I/O error) leaves the transaction
            # open, and its write lock would keep every other connection out of the file for good
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise
