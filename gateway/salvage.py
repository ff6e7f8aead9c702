"""``edgekit-gateway recover``: salvage what is readable of a damaged state file into a fresh one.

The state file and its log file (``<file>-log``) are salvaged together, into a fresh pair. The damaged files
(and their ``-wal``) are copied aside, byte for byte, to ``<file>.damaged-<UTC time>`` before
anything else; the salvage reads a scratch copy, so that SQLite's own recovery of the WAL changes nothing that
is kept. Rows are read through SQLite's b-tree in key order; where a page cannot be read (or reads as rows that
cannot be the gateway's), the reader finds the next readable key (probing forward, then bisecting back), then
reads every key it did not get on its own. What is lost is counted from what must have been there: the log's
positions after the checkpoint's follow one by one up to its counter, and the spool's index lists every chunk.
Kept:

- the checkpoint, if it can be read, parses, and restores into a pipeline of this configuration;
- every readable log row after the checkpoint's position (messages already acknowledged to the broker: the
  next start replays them), with the log's position counter, so that new rows come after the checkpoint;
- every readable spool chunk (lines not yet written to InfluxDB), as stored.

A state file that cannot be read at all still gives its log file's rows (replayed into empty state).

The fresh file replaces the damaged one only once it is complete and closed; until then the damaged file is
where it was. :class:`Salvage` says exactly what was kept and what is lost.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .app import _fingerprint, check_version, state_path
from .config import Config
from .errors import StateError
from .pipeline import Pipeline
from .state import (
    APPLICATION_ID,
    KIND_MESSAGE,
    KIND_OVERSIZE,
    KIND_RELOAD,
    KIND_TICK,
    ROW_MARKS,
    SPOOL_JSON,
    SPOOL_NEWLINES,
    StateStore,
    compress_checkpoint,
    decode_checkpoint,
    expected_columns,
    file_error,
    fsync_dir,
    lock_file,
    log_path,
    read_rows,
    spool_lines,
    wal_identity,
)

__all__ = ["Salvage", "page_size", "recover_state"]

_MAX_KEY = 2**62


@dataclass
class Salvage:
    """What ``recover`` found, kept and lost (``lines()`` says it in words)."""

    path: Path
    aside: list[Path] = field(default_factory=list)
    readable: bool = True
    """False when nothing at all could be read (not an SQLite file, or its first page destroyed)."""
    unreadable_why: str = ""
    wal_ignored: str = ""
    checkpoint: str = "absent"
    """"kept", "absent" or "lost"."""
    checkpoint_why: str = ""
    checkpoint_pos: int = 0
    checkpoint_saved_ms: int = 0
    messages: int = 0
    ticks: int = 0
    log_rows_lost: int | None = 0
    """Log rows that could not be read: None when their number cannot be known."""
    log_lost_exact: bool = True
    """False when the checkpoint is lost: positions it had deleted cannot be told from lost rows."""
    log_holes: list[tuple[int, int | None]] = field(default_factory=list)
    chunks: int = 0
    chunk_lines: int = 0
    spool_holes: list[tuple[int, int | None]] = field(default_factory=list)
    spool_lost: int | None = None
    """Chunks lost, as the spool's index counts them (None: the index could not be read whole)."""
    log_begins: int = 0
    """Without a checkpoint, the log's first position when it is not 1 and nothing before it could be damaged: a
    checkpoint took the positions before, and the file has none."""

    @property
    def lost_anything(self) -> bool:
        return (
            not self.readable
            or self.checkpoint == "lost"
            or self.log_rows_lost != 0
            or bool(self.log_holes)
            or bool(self.spool_holes)
        )

    def lines(self) -> list[str]:
        out = [f"recovered {self.path}: a fresh state file with everything that could be read"]
        out.append("damaged file kept as " + ", ".join(str(p) for p in self.aside))
        if not self.readable:
            out.append(
                f"nothing of the state file could be read ({self.unreadable_why}): the checkpoint and the spooled "
                "lines are lost; window, dedup, pattern and anomaly state start empty"
            )
            out.append(self._log_line())
            return out
        if self.wal_ignored:
            out.append(f"WAL file ignored: {self.wal_ignored}")
        if self.checkpoint == "kept":
            saved = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.checkpoint_saved_ms / 1000))
            out.append(f"checkpoint: kept (log position {self.checkpoint_pos:,}, saved {saved})")
        elif self.checkpoint == "lost":
            out.append(
                f"checkpoint unreadable ({self.checkpoint_why}): window, dedup, pattern and anomaly state start "
                "empty, so readings re-sent by the boards may be counted again in windows; alerts not yet "
                "published are lost"
            )
        elif self.log_begins:
            out.append(
                f"checkpoint: none, but the log begins at position {self.log_begins:,}: a checkpoint took the "
                "positions before it and this file does not have it (a file recover wrote after losing the "
                "checkpoint, or a checkpoint table that reads empty): window, dedup, pattern and anomaly state "
                "start empty"
            )
        else:
            out.append("checkpoint: none (the gateway had not taken one yet)")
        out.append(self._log_line())
        spool = f"spool: {self.chunks:,} chunks ({self.chunk_lines:,} lines) kept and will be written"
        if self.spool_holes:
            where = ", ".join(
                f"after chunk {a}" + (f" and before chunk {b}" if b is not None else "") for a, b in self.spool_holes
            )
            n = self.spool_lost
            many = "chunks" if n is None else f"{n:,} chunk{'s' if n != 1 else ''}"
            spool += f"; {many} unreadable ({where}): their lines (not yet written to InfluxDB) are lost"
        else:
            spool += "; no chunk lost"
        out.append(spool)
        if not self.lost_anything and not self.log_begins:
            out.append("nothing was lost")
        return out

    def _log_line(self) -> str:
        kept = f"log: {self.messages:,} logged messages kept and will be replayed" + (
            f" (and {self.ticks:,} ticks)" if self.ticks else ""
        )
        if self.log_rows_lost is None:
            lost = "; rows could not be read and their number is unknown (a part of the log that tells it is lost)"
        elif self.log_rows_lost:
            lost = (
                f"; {'' if self.log_lost_exact else 'up to '}{self.log_rows_lost:,} "
                f"row{'s' if self.log_rows_lost != 1 else ''} unreadable (positions "
                f"{_ranges(self.log_holes)}): the messages among them were acknowledged to the broker and are lost"
            )
        else:
            lost = "; no row lost"
        return kept + lost


def _ranges(holes: list[tuple[int, int | None]]) -> str:
    return ", ".join(
        (f"{a + 1}-{b - 1}" if b - a > 2 else f"{a + 1}") if b is not None else f"after {a}" for a, b in holes
    )


# --- reading a damaged file row by row ---------------------------------------------------------------


def _select_one(table: str, key: str, columns: list[str]) -> str:
    """The row whose key is the parameter: a seek to that key alone, through the interior pages."""
    return f"SELECT {', '.join([key, *columns])} FROM {table} WHERE {key} = ?"


def _select(table: str, key: str, columns: list[str]) -> str:
    # ">=": SQLite seeks to the key itself, so a seek from the first key of a readable page stays on that page
    return f"SELECT {', '.join([key, *columns])} FROM {table} WHERE {key} >= ? ORDER BY {key}"


_Good = Callable[[tuple[Any, ...], int], bool]
"""Whether a row read from a key on can be kept: its key is a whole number from that key on, no higher than the
table's counter, and its columns pass the table's checks."""


def _forget(db: sqlite3.Connection) -> None:
    """Drop the pages SQLite holds in memory after it met a damaged one. SQLite marks a page as read before it
    checks the page's cells, and does not unmark it when the check fails: read again from its cache, the same
    damaged page would pass unchecked and its made-up cells could lead a seek past it without an error."""
    db.execute("PRAGMA shrink_memory")


def _readable_from(db: sqlite3.Connection, select: str, start: int, good: _Good) -> bool:
    """Whether the first row with a key from ``start`` on can be read whole and kept (or there is none)."""
    try:
        row = db.execute(select + " LIMIT 1", (start,)).fetchone()
    except sqlite3.DatabaseError:
        _forget(db)
        return False
    return row is None or good(row, start)


def _next_readable(db: sqlite3.Connection, select: str, start: int, good: _Good, top: int) -> int | None:
    """The smallest ``x > start`` from which the table reads again (probing forward, then bisecting back), or
    None when nothing from ``start`` on up to ``top`` can be read."""
    step = 1
    while not _readable_from(db, select, start + step, good):
        if start + step >= top:
            return None
        step = min(step * 2, top - start)
    lo, hi = start + step // 2, start + step  # unreadable from lo (or lo is ``start``), readable from hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _readable_from(db, select, mid, good):
            hi = mid
        else:
            lo = mid
    return hi


class _Damaged(Exception):
    pass


def _read_rows(
    db: sqlite3.Connection,
    table: str,
    key: str,
    columns: list[str],
    take: Callable[[tuple[Any, ...]], None],
    *,
    valid: Callable[[tuple[Any, ...]], bool],
    last: int | None,
    dense: bool = False,
    first: int = 1,
) -> list[tuple[int, int | None]]:
    """Hand every readable row of ``table`` (``key`` first, then ``columns``) to ``take``, in key order; return
    the holes ``(a, b)``: rows with ``a < key < b`` (``b`` None: to the end) could not be read.

    A damaged page may still read as cells: SQLite follows its damaged cell pointers to whatever bytes they lead
    to, and may read a made-up row with any key. So a row is kept only if its key comes after the last one kept
    and is no higher than ``last`` (the table's AUTOINCREMENT counter, when it can be read) and ``valid`` says its
    columns can be kept; any other row is damage, and the reader looks for the next key from which rows are kept
    again, so that a made-up key never leads it past readable rows. With ``dense`` (keys that follow one by one,
    as the log's positions do), a row is kept after the first only with the very next key. (A made-up row that
    passes all of this cannot be told from a real one.) What the walk misses, :func:`_sweep` reads key by key."""
    select = _select(table, key, columns)
    top = _MAX_KEY if last is None else max(1, min(last, _MAX_KEY))

    taken = dense and first > 1  # dense from ``first`` on: the first row kept must be ``first`` itself

    alone = _select_one(table, key, columns)

    def good(row: tuple[Any, ...], start: int) -> bool:
        key_ = row[0]
        if not isinstance(key_, int) or key_ < start or not valid(row):
            return False
        if dense and taken:  # keys that follow one by one (the log's positions): a jump is damage
            return key_ == start
        if not (key_ <= top or key_ == start):  # above the counter (one read low), only the very next key
            return False
        if dense and key_ != start:
            # the first row, after a jump: a seek to its own key must find this very row (a damaged page's
            # made-up row is found where the seek for ``start`` landed, not where its key belongs)
            try:
                return bool(db.execute(alone, (key_,)).fetchone() == row)
            except sqlite3.DatabaseError:
                _forget(db)
                return False
        return True

    def keep(row: tuple[Any, ...]) -> None:
        nonlocal taken
        taken = True
        take(row)

    holes: list[tuple[int, int | None]] = []
    start = first  # AUTOINCREMENT keys start at 1
    while True:
        try:
            for row in db.execute(select, (start,)):
                if not good(row, start):
                    raise _Damaged
                keep(row)
                start = row[0] + 1
            return holes
        except sqlite3.DatabaseError:
            _forget(db)
        except _Damaged:
            pass
        # the module steps one row ahead, so the row just before a damaged page is not returned: read it alone
        try:
            one = db.execute(select + " LIMIT 1", (start,)).fetchone()
            if one is not None and not good(one, start):
                raise _Damaged
        except (sqlite3.DatabaseError, _Damaged) as exc:
            if isinstance(exc, sqlite3.DatabaseError):
                _forget(db)
            resume = _next_readable(db, select, start, good, top)
            try:
                one = None if resume is None else db.execute(select + " LIMIT 1", (resume,)).fetchone()
            except sqlite3.DatabaseError:
                _forget(db)
                one = None
            if one is not None and (resume is None or not good(one, resume)):
                one = None
            holes.append((start - 1, None if one is None else one[0]))
        if one is None:
            return holes
        keep(one)
        start = one[0] + 1


def _sweep(
    db: sqlite3.Connection,
    table: str,
    key: str,
    columns: list[str],
    keys: list[int],
    take: Callable[[tuple[Any, ...]], None],
    valid: Callable[[tuple[Any, ...]], bool],
) -> None:
    """Read each of ``keys`` on its own (a seek to that key alone, through the interior pages); hand the rows
    found whole and valid to ``take``. What a walk in key order misses: a readable page
    between damaged ones, where probing forward jumped over it, or a page a damaged one's made-up cells led the
    walk past without an error."""
    select = _select_one(table, key, columns)
    for k in keys:
        try:
            row = db.execute(select, (k,)).fetchone()
        except sqlite3.DatabaseError:
            _forget(db)
            continue
        if row is not None and row[0] == k and valid(row):
            take(row)


_SWEEP_MOST = 100_000
"""The most keys :func:`_sweep` reads one by one (all of them into a destroyed page: 2.3 s, measured)."""


def _counter(db: sqlite3.Connection, table: str) -> int | None:
    """The AUTOINCREMENT counter of ``table`` (``sqlite_sequence``), or None when it cannot be read."""
    row = _try(lambda: db.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)).fetchone())
    return row[0] if row is not None and isinstance(row[0], int) else None


def _try(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except sqlite3.DatabaseError:
        return None


# --- the command ------------------------------------------------------------------------------------------


def recover_state(config: Config, *, now_ms: int | None = None) -> Salvage:
    """Salvage the state file of ``config`` into a fresh one; keep the damaged one aside.

    Raises :class:`StateError` when nothing was changed: no state file, the directory cannot be written, the
    file is in use, or the checkpoint was written with another configuration.
    """
    path = state_path(config)
    if not path.exists():
        raise StateError(f"state file {path}: does not exist, nothing to recover")
    directory = path.parent
    try:
        probe = tempfile.NamedTemporaryFile(dir=directory, prefix=f".{path.name}.", delete=True)
        probe.close()
    except OSError as exc:
        raise StateError(
            f"state file {path}: cannot write in {directory} ({exc.strerror}); nothing was changed"
        ) from exc
    lock = lock_file(path)  # no gateway may run on it meanwhile
    stamp = time.strftime(
        "%Y%m%dT%H%M%SZ", time.gmtime((now_ms if now_ms is not None else time.time_ns() // 10**6) / 1000)
    )
    scratch = Path(tempfile.mkdtemp(dir=directory, prefix=f".{path.name}.scratch-"))
    fresh = directory / f".{path.name}.recovered"
    made: list[Path] = []
    try:
        report = Salvage(path=path)
        aside = f"{path.name}.damaged-{stamp}"
        n = 1
        while (directory / aside).exists():  # recovered twice in one second: keep the first copy too
            n += 1
            aside = f"{path.name}.damaged-{stamp}-{n}"
        for suffix in ("", "-wal", "-log", "-log-wal"):
            src = Path(f"{path}{suffix}")
            if src.exists():
                dst = directory / f"{aside}{suffix}"
                shutil.copy2(src, dst)
                made.append(dst)
                shutil.copy2(src, scratch / f"state.db{suffix}")
        report.aside = list(made)
        _fsync_all(made)
        fresh.unlink(missing_ok=True)
        _salvage_into(fresh, config, scratch / "state.db", report)
        st = path.stat()  # the fresh file belongs to whoever the damaged one did (the service's user, not root)
        if os.geteuid() == 0:
            os.chown(fresh, st.st_uid, st.st_gid)
        fresh.chmod(st.st_mode & 0o777)
        fresh_log = log_path(fresh)
        if os.geteuid() == 0:
            os.chown(fresh_log, st.st_uid, st.st_gid)
        fresh_log.chmod(st.st_mode & 0o777)
        for suffix in ("-wal", "-shm", "-log-wal", "-log-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        # the log first: interrupted between the two, the gateway refuses the pair (the log names the fresh state
        # file) and recover runs again on what is there
        os.replace(fresh_log, log_path(path))
        os.replace(fresh, path)
        fsync_dir(directory)
        return report
    except BaseException:
        for p in made:
            p.unlink(missing_ok=True)
        for suffix in ("", "-wal", "-shm", "-log", "-log-wal", "-log-shm"):
            Path(f"{fresh}{suffix}").unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        os.close(lock)


def _salvage_into(fresh: Path, config: Config, scratch: Path, report: Salvage) -> None:
    """Read the scratch copy, writing what is kept into the fresh file as it is read (one transaction)."""
    store = StateStore(fresh, sync=config.state.sync)
    out, out_log = store.db, store.log_db
    assert out_log is not None
    try:
        out.execute("BEGIN IMMEDIATE")
        out_log.execute("BEGIN IMMEDIATE")
        floor = _salvage(config, scratch, report, out, out_log)
        # new log rows must come after every position the checkpoint or a lost row may have used
        if floor:
            if out_log.execute("SELECT 1 FROM sqlite_sequence WHERE name = 'log'").fetchone() is None:
                out_log.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('log', ?)", (floor,))
            else:
                out_log.execute("UPDATE sqlite_sequence SET seq = MAX(seq, ?) WHERE name = 'log'", (floor,))
        out_log.execute("COMMIT")
        out.execute("COMMIT")
    except sqlite3.Error as exc:
        for db in (out_log, out):
            if db.in_transaction:
                db.execute("ROLLBACK")
        raise file_error(fresh, exc) from exc
    except BaseException:
        for db in (out_log, out):
            if db.in_transaction:
                db.execute("ROLLBACK")
        raise
    finally:
        store.close()
    for p in (fresh, log_path(fresh)):
        with open(p, "rb+") as f:
            os.fsync(f.fileno())


def _salvage(
    config: Config, scratch: Path, report: Salvage, out: sqlite3.Connection, out_log: sqlite3.Connection
) -> int:
    """Salvage into ``out`` (the fresh state file) and ``out_log`` (its log file); returns the lowest position the
    log's counter must keep."""
    header = _header(scratch)
    if header is None:
        report.readable = False
        report.unreadable_why = "not an SQLite database: its header is missing or destroyed"
        return _salvage_log_alone(scratch, report, out_log)
    _drop_partial_page(scratch)
    wal = Path(f"{scratch}-wal")
    foreign = wal_identity(wal)
    if header[0] == APPLICATION_ID and foreign is not None and foreign != header:
        wal.unlink()
        report.wal_ignored = "it belongs to another database (its first page carries another file id)"
    db = _connect(scratch)
    try:
        tables = _try(lambda: {r[0] for r in db.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")})
    except BaseException:
        db.close()
        raise
    if tables is None:
        db.close()
        report.readable = False
        report.unreadable_why = "its schema page cannot be read"
        return _salvage_log_alone(scratch, report, out_log)
    try:
        after = _salvage_checkpoint(config, db, tables, report, out)
        acc = _LogRead(after=after, exact=report.checkpoint != "lost")
        _salvage_log(db, tables, report, out_log, acc)  # a state file of the layout before the log file
        _salvage_spool(db, tables, report, out)
    finally:
        db.close()
    _salvage_log_file(log_path(scratch), report, out_log, acc)
    if report.checkpoint == "absent" and acc.kept:
        lowest = min(acc.kept)
        if lowest > 1 and not any(a < lowest - 1 for a, _ in acc.walk_holes):
            # read cleanly from position 1, the log begins later: a checkpoint took the rows before, and this
            # file has none (a file recover wrote after losing one, or a checkpoint table that reads empty)
            report.log_begins = lowest
            acc.exact = False
    _count_lost_log(report, acc)
    return max(after, acc.highest)


def _salvage_log_alone(scratch: Path, report: Salvage, out_log: sqlite3.Connection) -> int:
    """The state file cannot be read at all: the log file is another file, and its rows are messages already
    acknowledged to the broker; without the checkpoint they are replayed into empty state."""
    acc = _LogRead(after=0, exact=False)
    if not log_path(scratch).exists():  # the layout before: the log was in the state file, lost with it
        acc.unknown = True
    _salvage_log_file(log_path(scratch), report, out_log, acc)
    _count_lost_log(report, acc)
    return acc.highest


def _salvage_log_file(scratch: Path, report: Salvage, out: sqlite3.Connection, acc: _LogRead) -> None:
    """The log rows of the log file's scratch copy, added to what the state file's own log table gave."""
    if not scratch.exists():
        return  # none: the layout before
    if _header(scratch) is None:
        # nothing readable (a gateway's log file always has its header: empty, it is damaged too): its rows after
        # the checkpoint are lost, uncounted
        acc.unknown = True
        return
    _drop_partial_page(scratch)
    wal = Path(f"{scratch}-wal")
    foreign = wal_identity(wal)
    header = _header(scratch)
    if header is not None and header[0] == APPLICATION_ID and foreign is not None and foreign != header:
        wal.unlink()
        report.wal_ignored = "it belongs to another database (its first page carries another file id)"
    if header is None:  # cut inside its first page: nothing of it is left
        acc.unknown = True
        return
    db = _connect(scratch)
    try:
        tables = _try(lambda: {r[0] for r in db.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")})
        if tables is None or "log" not in tables:
            acc.unknown = True  # its schema cannot be read: its rows are lost, uncounted
            return
        _salvage_log(db, tables, report, out, acc)
    finally:
        db.close()


def _connect(scratch: Path) -> sqlite3.Connection:
    """The scratch copy, read as far as it goes: with ``writable_schema`` SQLite reads a file shorter than its
    header says (cut mid-page) up to where it ends instead of refusing it whole. Nothing is written to it."""
    db = sqlite3.connect(f"file:{scratch}?mode=rw", uri=True, isolation_level=None)
    db.execute("PRAGMA writable_schema=ON")
    # a page's cell pointers are checked when the page is read: a damaged one is an error, where SQLite would
    # otherwise follow it, masked to the page size, even to bytes past the page's end (whatever memory holds)
    db.execute("PRAGMA cell_size_check=ON")
    return db


def page_size(path: Path) -> int:
    """The page size an SQLite file's header gives (its bytes 16-17; 1 means 65,536), as written: a damaged header
    can give any number, and 0 for a file shorter than that."""
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(18)[16:18], "big")
    return 65536 if size == 1 else size


def _drop_partial_page(scratch: Path) -> None:
    """A file cut in the middle of a page: SQLite would read the missing part of that page as zeros, and a cell
    that lay across the cut as a row with zeros in it. Cut the copy back to whole pages: the partial page then
    reads as damaged (a page holds its cells at its end, so almost nothing readable is lost with it)."""
    page = page_size(scratch)
    length = scratch.stat().st_size
    if page >= 512 and length % page:
        os.truncate(scratch, length - length % page)


def _header(path: Path) -> tuple[int, int] | None:
    with open(path, "rb") as f:
        head = f.read(100)
    if len(head) < 100 or not head.startswith(b"SQLite format 3\x00"):
        return None
    return int.from_bytes(head[68:72], "big"), int.from_bytes(head[60:64], "big")


def _salvage_checkpoint(
    config: Config, db: sqlite3.Connection, tables: set[str], report: Salvage, out: sqlite3.Connection
) -> int:
    """Keep the checkpoint if it can be read, parses and restores; returns its position (0 without one)."""
    if "checkpoint" not in tables:
        return 0
    try:
        row = db.execute("SELECT pos, state, saved_ms FROM checkpoint WHERE id = 1").fetchone()
    except sqlite3.DatabaseError as exc:
        report.checkpoint, report.checkpoint_why = "lost", f"its page cannot be read: {exc}"
        return 0
    if row is None:
        return 0
    pos, text, saved_ms = row  # text: compressed JSON (bytes), or JSON text from before compression
    try:
        if not isinstance(pos, int) or not isinstance(saved_ms, int) or not isinstance(text, (str, bytes)):
            raise ValueError("a column holds a value of the wrong type")
        state = decode_checkpoint(text)
        if not isinstance(state, dict):
            raise ValueError("not a JSON object")
        if state.get("rows") in ROW_MARKS:  # the per-key rows: kept joined, as one value (the older layout)
            if "ckpt_row" not in tables:
                raise ValueError("its per-key rows are missing (no ckpt_row table)")
            try:
                state, _ = read_rows(db, state)
            except (sqlite3.DatabaseError, KeyError, TypeError) as exc:
                raise ValueError(f"its per-key rows cannot be read: {exc}") from exc
            text = compress_checkpoint(json.dumps(state, separators=(",", ":")))
    except ValueError as exc:
        report.checkpoint, report.checkpoint_why = "lost", f"it does not parse: {exc}"
        return 0
    check_version(report.path, state.get("version"), "with which recover can salvage it; nothing was changed")
    if state.get("fingerprint") != _fingerprint(config):
        raise StateError(
            f"state file {report.path}: the checkpoint was written with other windows, watermarks or prefix "
            f"(fingerprint {state.get('fingerprint')!r}, now {_fingerprint(config)!r}): run recover with the "
            "configuration that wrote it; nothing was changed"
        )
    try:
        Pipeline(config).restore(state["pipeline"])
        for _, payload in state.get("outbox", []):
            base64.b64decode(payload, validate=True)
        for d in state.get("recent", []):
            bytes.fromhex(d)
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        report.checkpoint, report.checkpoint_why = "lost", f"it does not restore: {type(exc).__name__}: {exc}"
        return 0
    out.execute("INSERT INTO checkpoint (id, pos, state, saved_ms) VALUES (1, ?, ?, ?)", (pos, text, saved_ms))
    report.checkpoint, report.checkpoint_pos, report.checkpoint_saved_ms = "kept", pos, saved_ms
    return pos


@dataclass
class _LogRead:
    """What the log's copies gave (the state file's own log table of the layout before, and the log file)."""

    after: int
    """The checkpoint's position (0 without one): rows up to it were taken into it."""
    exact: bool
    """The checkpoint was kept: every position after ``after`` up to the counter held a row."""
    kept: set[int] = field(default_factory=set)
    highest: int = 0
    """The highest position either copy used (its counter, or a row read)."""
    counters: list[int] = field(default_factory=list)
    walk_holes: list[tuple[int, int | None]] = field(default_factory=list)
    """The holes the walks of both copies found."""
    open_end: bool = False
    """A walk found no readable row after a hole, and no counter says where the log ended."""
    unknown: bool = False
    """A copy could not be read at all: its rows are lost and their number is unknown."""


def _salvage_log(
    db: sqlite3.Connection, tables: set[str], report: Salvage, out: sqlite3.Connection, acc: _LogRead
) -> None:
    """Keep every readable, valid log row after the checkpoint's position (each position once)."""
    if "log" not in tables:
        return
    seq = _counter(db, "log")
    if seq is not None and seq >= 0:
        seq = min(seq, _MAX_KEY)
        acc.counters.append(seq)
    else:
        seq = None
    insert = "INSERT OR IGNORE INTO log (pos, kind, topic, payload, received_ms) VALUES (?, ?, ?, ?, ?)"
    after = acc.after

    def valid(row: tuple[Any, ...]) -> bool:
        _, kind, topic, payload, received_ms = row
        return (
            kind in (KIND_MESSAGE, KIND_OVERSIZE, KIND_TICK, KIND_RELOAD)
            and isinstance(topic, str)
            and isinstance(payload, bytes)
            and isinstance(received_ms, int)
            and received_ms > 0  # a gateway's wall clock; zeros are a page read past its end
            and (kind in (KIND_MESSAGE, KIND_OVERSIZE)) == bool(topic)
        )

    seen: set[int] = set()

    def take(row: tuple[Any, ...]) -> None:
        pos, kind = row[0], row[1]
        seen.add(pos)
        acc.highest = max(acc.highest, pos)
        if pos <= after or pos in acc.kept:
            return  # taken into the checkpoint already, or kept from the other copy (a layout change cut short)
        out.execute(insert, row)
        acc.kept.add(pos)
        if kind in (KIND_MESSAGE, KIND_OVERSIZE):  # a message, or the stub of an oversize one (its dead letter)
            report.messages += 1
        else:  # a tick, or a reload (counted with them: neither is a reading)
            report.ticks += 1

    columns = ["kind", "topic", "payload", "received_ms"]
    # with the checkpoint, the positions after its own follow one by one from the very first
    first = after + 1 if acc.exact and after > 0 else 1
    holes = _read_rows(db, "log", "pos", columns, take, valid=valid, last=seq, dense=True, first=first)
    if seq is not None:
        acc.highest = max(acc.highest, seq)
    acc.walk_holes += holes
    if seq is None and any(b is None for _, b in holes):
        acc.open_end = True
    # positions after the checkpoint's are consecutive: read each one not yet kept on its own (a readable page
    # the walk jumped over); the rest are counted by _count_lost_log
    # up to _SWEEP_MOST below the highest row read and as many above it up to the counter (a log holds far fewer)
    read_top = max(seen) if seen else max(after, seq or 0)
    low = max(_low_position(acc, seen, max(read_top, seq or 0)), read_top - _SWEEP_MOST)
    high = max(read_top, min(seq or 0, read_top + _SWEEP_MOST))
    _sweep(db, "log", "pos", columns, [p for p in range(low + 1, high + 1) if p not in acc.kept], take, valid)


def _low_position(acc: _LogRead, seen: set[int], high: int) -> int:
    """The position after which every position up to ``high`` held a row: the checkpoint's; without it, the
    lowest one read (or where a walk's first hole began), as positions below it may have been deleted by an
    earlier checkpoint (nothing read and no hole: a log trimmed whole, ``high``)."""
    if acc.exact:
        return acc.after
    lows = [p - 1 for p in (seen or acc.kept)] + [a for a, _ in acc.walk_holes]
    return max(acc.after, min(lows)) if lows else max(acc.after, high)


def _count_lost_log(report: Salvage, acc: _LogRead) -> None:
    """Every position after the low one up to the end (the highest counter or row) that no copy gave is a lost
    row (without the checkpoint, "up to": some may be positions a checkpoint had deleted)."""
    high = max([acc.highest, *acc.counters])
    low = _low_position(acc, acc.kept, high)
    inside = sorted(p for p in acc.kept if low < p <= high)
    lost_n = max(0, high - low) - len(inside)
    holes: list[tuple[int, int | None]] = []
    for a, b in zip([low, *inside], [*inside, high + 1], strict=True):  # the gaps between kept positions
        if b - a > 1:
            holes.append((a, b))
    report.log_holes = holes
    report.log_rows_lost = None if (acc.unknown or acc.open_end) else lost_n
    if report.log_rows_lost is None and not holes:
        report.log_holes = [(high, None)]
    report.log_lost_exact = acc.exact


def _salvage_spool(db: sqlite3.Connection, tables: set[str], report: Salvage, out: sqlite3.Connection) -> None:
    """Keep every readable spool chunk as it was stored (whatever the encoding of its lines). Chunk ids have gaps
    (chunks are deleted once written), so what is lost is told by the spool's index (``spool_prio``, its own
    pages), which lists every chunk's id: a chunk it lists that could not be read is lost."""
    if "spool" not in tables:
        return
    fresh = expected_columns("spool")
    have = _try(lambda: [r[1] for r in db.execute("PRAGMA table_info(spool)")]) or fresh
    columns = [c for c in fresh if c in have and c != "id"]
    insert = f"INSERT INTO spool ({', '.join(['id', *columns])}) VALUES ({', '.join('?' * (1 + len(columns)))})"
    seq = _counter(db, "spool")
    select_tail = f"SELECT {', '.join(['id', *columns])} FROM spool ORDER BY id DESC LIMIT 1"

    def valid(row: tuple[Any, ...]) -> bool:
        values = dict(zip(columns, row[1:], strict=True))
        n, text, fmt = values.get("n"), values.get("lines"), values.get("fmt", SPOOL_NEWLINES)
        if None in row or not isinstance(n, int) or n < 0 or not isinstance(values.get("prio"), int):
            return False  # every column is NOT NULL
        if not isinstance(text, str) or fmt not in (SPOOL_NEWLINES, SPOOL_JSON):
            return False
        try:
            lines = spool_lines(text, fmt)
        except ValueError:
            return False
        return lines is not None and len(lines) == n

    kept: set[int] = set()

    def take(row: tuple[Any, ...]) -> None:
        if row[0] in kept:
            return
        out.execute(insert, row)
        kept.add(row[0])
        report.chunks += 1
        report.chunk_lines += row[1 + columns.index("n")]

    # the chunk ids have gaps: a counter that reads low would stop the walk at the first gap above it, so the
    # last chunk, if it reads whole and valid, bounds the keys too
    tail = _try(lambda: db.execute(select_tail).fetchone())
    if tail is not None and isinstance(tail[0], int) and valid(tail) and (seq is None or tail[0] > seq):
        seq = tail[0]
    walked = _read_rows(db, "spool", "id", columns, take, valid=valid, last=seq)
    listed = _index_ids(db)
    if listed is None or kept - listed:  # the index cannot be read whole, or misses chunks read: the walk's holes
        report.spool_holes = walked
        return
    missing = sorted(listed - kept)
    if missing:
        _sweep(db, "spool", "id", columns, missing[:_SWEEP_MOST], take, valid)
    lost = sorted(listed - kept)
    report.spool_lost = len(lost)
    report.spool_holes = []
    for i in lost:  # runs of consecutive lost ids: (the id before, the id after)
        if report.spool_holes and report.spool_holes[-1][1] == i:
            report.spool_holes[-1] = (report.spool_holes[-1][0], i + 1)
        else:
            report.spool_holes.append((i - 1, i + 1))


def _index_ids(db: sqlite3.Connection) -> set[int] | None:
    """Every chunk id the spool's index lists (read from the index's pages alone), or None when it cannot be read
    whole."""
    try:
        return {r[0] for r in db.execute("SELECT id FROM spool INDEXED BY spool_prio WHERE prio >= -1000000000000")}
    except sqlite3.DatabaseError:
        _forget(db)
        return None


def _fsync_all(paths: list[Path]) -> None:
    for p in paths:
        with open(p, "rb") as f:
            os.fsync(f.fileno())
    if paths:
        fsync_dir(paths[0].parent)
