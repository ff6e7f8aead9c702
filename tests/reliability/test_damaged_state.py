"""A damaged state file, for real: cut mid-page, pages overwritten, a cut checkpoint, not SQLite at all, a WAL
file from another database, a read-only directory. The real CLI, as a subprocess, must refuse to start with a
clear error that names the file and what it holds (exit 3, no traceback), and ``recover`` must salvage every
readable row into a fresh file, keep the damaged one aside and say exactly what was kept and what is lost.

The state files are made by the gateway's own code (messages logged and processed, a checkpoint, spooled lines),
then damaged byte by byte; which pages hold which table comes from SQLite's ``dbstat``.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import REPO
from helpers import influx_query, poll

from gateway.app import Gateway, state_path
from gateway.config import load_config
from gateway.salvage import page_size, recover_state
from gateway.state import KIND_MESSAGE, KIND_OVERSIZE, StateStore, log_path

pytestmark = pytest.mark.integration

T0 = 1_764_072_000_000
NOW = T0 + 600_000
CHECKPOINTED = 60
"""Messages processed and taken into the checkpoint (their lines go to the spool with it)."""
LOGGED = 200
"""Messages logged after the checkpoint (acknowledged to the broker, not processed)."""
EXTRA_CHUNKS = 40


def _toml(
    state_dir: Path, broker: str = "mqtt://127.0.0.1:9", influx: str = "http://127.0.0.1:9", db: str = "x"
) -> str:
    return f"""
[mqtt]
url = "{broker}"
prefix = "dmg"
client_id = "gw-dmg"
[influx]
url = "{influx}"
database = "{db}"
flush_interval_ms = 100
[state]
dir = "{state_dir}"
[log]
format = "text"
[[windows]]
name = "t1m"
kind = "tumbling"
size = "1m"
metrics = ["x"]
"""


def _message(i: int) -> tuple[str, bytes, bool]:
    # ~1.3 KB a message: a few rows on each leaf page of the log
    rows = [{"b": 1, "s": i * 10 + j, "t": T0 + (i * 10 + j) * 100, "q": "s", "m": {"x": float(j)}} for j in range(10)]
    body = {"v": 1, "dev": "d1", "r": rows, "pad": "p" * 600}
    return "dmg/site/d1/readings", json.dumps(body).encode(), False


def make_state(config: Path) -> dict[str, Any]:
    """A state file made by the gateway: a checkpoint, LOGGED messages in the log after it, spooled chunks.
    Returns what it holds (log rows by position, spool chunks by id)."""

    async def build() -> None:
        gw = Gateway(load_config(config, env={}), now_ms=lambda: NOW)
        try:
            await gw._process(gw._accept([_message(i) for i in range(CHECKPOINTED)]))
            await gw.checkpoint()
            gw._accept([_message(i) for i in range(CHECKPOINTED, CHECKPOINTED + LOGGED)])
            for c in range(EXTRA_CHUNKS):
                gw.store.spool([(1, [f"spooled,chunk={c} n={k}i {T0 * 1_000_000 + k}" for k in range(50)])])
        finally:
            gw.store.close()

    asyncio.run(build())
    path = state_path(load_config(config, env={}))
    db = sqlite3.connect(path)
    log_db = sqlite3.connect(log_path(path))
    held = {
        "path": path,
        "log": _log(log_db),
        "spool": {r[0]: r for r in db.execute("SELECT id, prio, n, bytes, lines FROM spool")},
        "checkpoint": db.execute("SELECT pos, state FROM checkpoint").fetchone(),
        "pages": _pages(db),
        "log_pages": _pages(log_db),
    }
    assert db.execute("SELECT COUNT(*) FROM log").fetchone() == (0,)  # the log is in its own file
    db.close()
    log_db.close()
    assert len(held["log"]) == LOGGED and held["checkpoint"][0] == CHECKPOINTED
    return held


def _log(db: sqlite3.Connection) -> dict[int, tuple[Any, ...]]:
    return {r[0]: r for r in db.execute("SELECT pos, kind, topic, payload, received_ms FROM log")}


def _pages(db: sqlite3.Connection) -> dict[str, list[tuple[int, int]]]:
    """Leaf pages of each table: ``{table: [(page number, cells)]}`` (SQLite's dbstat)."""
    out: dict[str, list[tuple[int, int]]] = {}
    for name, pageno, ncell in db.execute("SELECT name, pageno, ncell FROM dbstat WHERE pagetype = 'leaf'"):
        out.setdefault(name, []).append((pageno, ncell))
    return out


def cli(*args: str, user: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "gateway", *args]
    if user is not None:
        cmd = ["setpriv", f"--reuid={user}", "--regid=nogroup", "--clear-groups", *cmd]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env = {k: v for k, v in env.items() if not k.startswith("EDGEKIT_")}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def assert_refused(done: subprocess.CompletedProcess[str], path: Path, config: Path, problem: str) -> None:
    """Refused, naming ``path`` (the state file or its log file) and what that file holds."""
    out = done.stdout + done.stderr
    assert done.returncode == 3, out
    assert "Traceback" not in out, out
    assert f"state file {path}: damaged" in done.stderr and problem in done.stderr, out
    assert "ingest log (messages already acknowledged to the broker" in done.stderr
    whole = "the checkpoint" in done.stderr and "the spool (lines not yet written to InfluxDB)" in done.stderr
    assert whole != path.name.endswith("-log"), out  # the log file holds the log only
    assert f"edgekit-gateway recover --config {config}" in done.stderr


def recovered(
    config: Path, path: Path, damaged: bytes, *, log_damaged: bytes | None = None
) -> tuple[str, sqlite3.Connection, sqlite3.Connection]:
    """Run recover; the report, and connections to the fresh state file and its fresh log file."""
    done = cli("recover", "--config", str(config))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    aside = sorted(path.parent.glob(f"{path.name}.damaged-*"))
    state_aside = [p for p in aside if not p.name.endswith(("-wal", "-log"))]
    log_aside = [p for p in aside if p.name.endswith("-log")]
    assert len(state_aside) == 1 and len(log_aside) == 1, aside
    assert state_aside[0].read_bytes() == damaged  # kept aside byte for byte
    if log_damaged is not None:
        assert log_aside[0].read_bytes() == log_damaged
    store = StateStore(path)  # the fresh pair opens (quick_check and all)
    store.close()
    return done.stdout, sqlite3.connect(path), sqlite3.connect(log_path(path))


@pytest.fixture
def state(tmp_path: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    config = tmp_path / "gw.toml"
    config.write_text(_toml(tmp_path / "state"), encoding="utf-8")
    yield config, make_state(config)


def test_pages_of_the_log_overwritten(state: tuple[Path, dict[str, Any]]) -> None:
    config, held = state
    path: Path = held["path"]
    logfile = log_path(path)
    leaves = sorted(held["log_pages"]["log"])
    hit = leaves[len(leaves) // 3 : len(leaves) // 3 + 3]  # three consecutive leaf pages in the middle
    ps = page_size(logfile)
    with open(logfile, "r+b") as f:
        for page, _ in hit:
            f.seek((page - 1) * ps)
            f.write(random.Random(page).randbytes(ps))
    damaged = logfile.read_bytes()
    assert_refused(cli("run", "--config", str(config)), logfile, config, "quick_check says: Page")

    report, db, log_db = recovered(config, path, path.read_bytes(), log_damaged=damaged)
    log = _log(log_db)
    lost = sum(cells for _, cells in hit)
    assert set(log) < set(held["log"]) and all(log[p] == held["log"][p] for p in log)  # byte for byte
    assert len(log) == LOGGED - lost
    gone = sorted(set(held["log"]) - set(log))
    assert gone == list(range(gone[0], gone[-1] + 1))  # the rows of three neighbouring pages
    assert f"log: {LOGGED - lost:,} logged messages kept and will be replayed" in report, report
    assert f"{lost:,} rows unreadable (positions {gone[0]}-{gone[-1]})" in report, report
    assert "checkpoint: kept (log position 60" in report
    assert {r[0]: r for r in db.execute("SELECT id, prio, n, bytes, lines FROM spool")} == held["spool"]
    assert "no chunk lost" in report
    # new log rows come after every old position
    assert log_db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'log'").fetchone()[0] >= max(held["log"])


@pytest.mark.parametrize("which", ["state", "log"])
def test_file_cut_mid_page(state: tuple[Path, dict[str, Any]], which: str) -> None:
    config, held = state
    path: Path = held["path"]
    cut_path = path if which == "state" else log_path(path)
    size = cut_path.stat().st_size
    ps = page_size(cut_path)
    cut = (size // ps // 2) * ps + ps // 3  # half the file, in the middle of a page
    os.truncate(cut_path, cut)
    damaged = cut_path.read_bytes()
    done = cli("run", "--config", str(config))
    assert_refused(done, cut_path, config, "malformed")

    if which == "state":
        report, db, log_db = recovered(config, path, damaged)
    else:
        report, db, log_db = recovered(config, path, path.read_bytes(), log_damaged=damaged)
    log = _log(log_db)
    spool = {r[0]: r for r in db.execute("SELECT id, prio, n, bytes, lines FROM spool")}
    assert all(log[p] == held["log"][p] for p in log) and all(spool[i] == held["spool"][i] for i in spool)
    kept_pages = {p for p in range(1, cut // ps + 1)}
    if which == "log":
        log_cells = sum(c for p, c in held["log_pages"]["log"] if p in kept_pages)
        assert len(log) == log_cells  # every row on a page before the cut, none after
        assert len(spool) == len(held["spool"]) and "no chunk lost" in report, report
    else:
        assert log == held["log"]
        spool_cells = sum(c for p, c in held["pages"]["spool"] if p in kept_pages)
        assert len(spool) == spool_cells  # every chunk on a page before the cut, none after
    assert f"log: {len(log):,} logged messages kept" in report, report
    assert ("no row lost" in report) == (len(log) == LOGGED), report
    if len(spool) < len(held["spool"]):
        assert re.search(r"\d+ chunks? unreadable \(after chunk", report) and "are lost" in report, report


def test_checkpoint_cut(state: tuple[Path, dict[str, Any]]) -> None:
    config, held = state
    path: Path = held["path"]
    db = sqlite3.connect(path)
    db.execute("UPDATE checkpoint SET state = substr(state, 1, length(state) / 2)")
    db.commit()
    db.close()
    damaged = path.read_bytes()
    assert_refused(cli("run", "--config", str(config)), path, config, "its checkpoint cannot be read")

    report, db, log_db = recovered(config, path, damaged)
    assert db.execute("SELECT COUNT(*) FROM checkpoint").fetchone()[0] == 0
    assert "checkpoint unreadable (it does not parse" in report, report
    assert "window, dedup, pattern and anomaly state start empty" in report
    assert "re-sent by the boards may be counted again in windows" in report
    assert _log(log_db) == held["log"]
    assert f"log: {LOGGED} logged messages kept and will be replayed; no row lost" in report, report
    assert f"spool: {len(held['spool'])} chunks" in report


def test_not_sqlite_at_all(state: tuple[Path, dict[str, Any]]) -> None:
    config, held = state
    path: Path = held["path"]
    path.write_bytes(random.Random(7).randbytes(50_000))
    damaged = path.read_bytes()
    assert_refused(cli("run", "--config", str(config)), path, config, "not an SQLite database")
    report, _db, log_db = recovered(config, path, damaged)
    assert "nothing of the state file could be read (not an SQLite database" in report, report
    assert "the checkpoint and the spooled lines are lost" in report
    # the log file is another file, intact: its messages (acknowledged to the broker) are replayed into empty
    # state (they were lost with the state file before)
    assert _log(log_db) == held["log"], report
    assert f"log: {LOGGED} logged messages kept and will be replayed; no row lost" in report, report


def test_wal_file_of_another_database(tmp_path: Path, state: tuple[Path, dict[str, Any]]) -> None:
    config, held = state
    path: Path = held["path"]
    other_config = tmp_path / "other.toml"
    other_config.write_text(_toml(tmp_path / "other"), encoding="utf-8")
    other = StateStore(state_path(load_config(other_config, env={})))
    # left in its WAL: a gateway's WAL holds the first page once its file grew or freed pages (here: grew)
    other.append([(0, "dmg/site/x/readings", b"not ours" * 100, NOW)] * 30)
    shutil.copy(f"{other.log_path}-wal", f"{log_path(path)}-wal")  # the log file's: an append grew it
    other.close()
    damaged = path.read_bytes()
    assert_refused(cli("run", "--config", str(config)), log_path(path), config, "belongs to another database")

    report, _db, log_db = recovered(config, path, damaged)
    assert "WAL file ignored: it belongs to another database" in report, report
    assert _log(log_db) == held["log"]
    assert "nothing was lost" in report, report
    for ours in (path, log_path(path)):
        assert not Path(f"{ours}-wal").exists() or b"not ours" not in Path(f"{ours}-wal").read_bytes()


def test_read_only_directory() -> None:
    """As an unprivileged user (root writes anywhere): the gateway says it cannot write there, exit 3; recover
    changes nothing and says why."""
    base = Path(tempfile.mkdtemp(prefix="edgekit-ro-"))
    try:
        base.chmod(0o755)
        state_dir = base / "state"
        config = base / "gw.toml"
        config.write_text(_toml(state_dir), encoding="utf-8")
        config.chmod(0o644)
        held = make_state(config)
        path: Path = held["path"]
        user = None
        if os.geteuid() == 0:
            user = "nobody"
            for p in (state_dir, path, log_path(path)):
                shutil.chown(p, user="nobody")
        before = path.read_bytes()
        state_dir.chmod(0o555)
        done = cli("run", "--config", str(config), user=user)
        out = done.stdout + done.stderr
        assert done.returncode == 3 and "Traceback" not in out, out
        assert f"state file {path}: cannot be opened for writing" in done.stderr, out
        assert "check the permissions of the file and its directory" in done.stderr
        done = cli("recover", "--config", str(config), user=user)
        out = done.stdout + done.stderr
        assert done.returncode == 1 and "Traceback" not in out, out
        assert f"cannot write in {state_dir} (Permission denied); nothing was changed" in done.stderr, out
        assert sorted(p.name for p in state_dir.iterdir()) == [path.name, f"{path.name}-log"]
        assert path.read_bytes() == before
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_recover_refuses_a_running_gateway_and_another_configuration(state: tuple[Path, dict[str, Any]]) -> None:
    config, held = state
    path: Path = held["path"]
    before = path.read_bytes()
    store = StateStore(path)  # a gateway holds it
    try:
        done = cli("recover", "--config", str(config))
        assert done.returncode == 1 and "in use by another process" in done.stderr, done.stderr
    finally:
        store.close()
    other = config.with_name("changed.toml")
    other.write_text(config.read_text().replace('size = "1m"', 'size = "2m"'), encoding="utf-8")
    done = cli("recover", "--config", str(other))
    assert done.returncode == 1 and "written with other windows" in done.stderr, done.stderr
    assert "nothing was changed" in done.stderr
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name, f"{path.name}-log"]
    assert path.read_bytes() == before
    done = cli("recover", "--config", str(config))  # an intact file: everything kept
    assert done.returncode == 0 and "nothing was lost" in done.stdout, done.stdout + done.stderr
    assert f"log: {LOGGED} logged messages kept" in done.stdout
    assert cli("recover", "--config", str(config)).returncode == 0  # again: the first copy aside is kept too
    aside = sorted(p for p in path.parent.glob(f"{path.name}.damaged-*") if not p.name.endswith(("-log", "-wal")))
    assert len(aside) == 2 and aside[0].read_bytes() == before, aside


def test_recovered_state_is_replayed_into_influxdb(
    tmp_path: Path, broker: Any, influxdb_v1: Any, state: tuple[Path, dict[str, Any]]
) -> None:
    """After pages of the log and of the spool are overwritten and recovered, the gateway starts on the fresh
    file and writes exactly what recover said it kept: the spooled lines and the replayed messages' readings."""
    _, held = state
    path: Path = held["path"]
    hit = [(log_path(path), sorted(held["log_pages"]["log"])[5]), (path, sorted(held["pages"]["spool"])[-2])]
    for file, (page, _) in hit:
        ps = page_size(file)
        with open(file, "r+b") as f:
            f.seek((page - 1) * ps + 8)  # past the page header's first bytes: the cell pointers
            f.write(b"\xff" * (ps - 96))
    db_name = f"dmg_{uuid.uuid4().hex[:8]}"
    live = tmp_path / "live.toml"
    live.write_text(
        _toml(path.parent, f"mqtt://{broker.host}:{broker.port}", influxdb_v1.url, db_name), encoding="utf-8"
    )
    assert cli("run", "--config", str(live)).returncode == 3
    done = cli("recover", "--config", str(live))
    assert done.returncode == 0, done.stderr
    report = done.stdout
    messages = int(re.search(r"log: ([\d,]+) logged messages kept", report)[1].replace(",", ""))  # type: ignore[index]
    assert messages < LOGGED and "rows unreadable" in report, report
    db = sqlite3.connect(path)
    raw = sum(n for (n,) in db.execute("SELECT n FROM spool WHERE prio = 0"))  # readings of the checkpointed
    extra = {int(c) for (t,) in db.execute("SELECT lines FROM spool") for c in re.findall(r"spooled,chunk=(\d+)", t)}
    db.close()
    assert raw > 0 and len(extra) < EXTRA_CHUNKS, report

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    gw = subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", "--config", str(live)],
        cwd=REPO,
        env={k: v for k, v in env.items() if not k.startswith("EDGEKIT_")},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        want = raw + 10 * messages

        def readings() -> int:
            try:
                rows = influx_query(influxdb_v1.url, db_name, 'SELECT count("seq") FROM "reading"')
            except Exception:
                return 0
            return int(rows[0]["count"]) if rows else 0

        got = poll(readings, until=lambda n: n >= want, timeout=60)
        assert got == want
        rows = poll(
            lambda: influx_query(influxdb_v1.url, db_name, 'SELECT count("n") FROM "spooled" GROUP BY "chunk"'),
            until=lambda r: len(r) >= len(extra),
            timeout=30,
        )
        assert {int(r["chunk"]) for r in rows} == extra and all(r["count"] == 50 for r in rows)
    finally:
        gw.terminate()
        _, err = gw.communicate(timeout=60)
    assert gw.returncode == 0, err[-3000:]


def test_recover_keeps_the_stub_of_an_oversize_message(tmp_path: Path) -> None:
    """A payload over the limit is logged as a stub (kind KIND_OVERSIZE) so that it becomes its dead letter after
    a restart; recover keeps that row like any logged message, byte for byte."""
    config = tmp_path / "gw.toml"
    config.write_text(_toml(tmp_path / "state"), encoding="utf-8")
    cfg = load_config(config, env={})
    big = ("dmg/site/d1/readings", b'{"v":1,"pad":"' + b"x" * (cfg.limits.max_bytes + 100) + b'"}', False)

    async def build() -> None:
        gw = Gateway(cfg, now_ms=lambda: NOW)
        try:
            gw._accept([_message(0), big, _message(1)])
        finally:
            gw.store.close()

    asyncio.run(build())
    path = state_path(cfg)
    with sqlite3.connect(log_path(path)) as db:
        before = db.execute("SELECT pos, kind, topic, payload, received_ms FROM log ORDER BY pos").fetchall()
    assert [r[1] for r in before] == [KIND_MESSAGE, KIND_OVERSIZE, KIND_MESSAGE]
    done = cli("recover", "--config", str(config))
    assert done.returncode == 0 and "nothing was lost" in done.stdout, done.stdout + done.stderr
    assert "log: 3 logged messages kept" in done.stdout, done.stdout
    with sqlite3.connect(log_path(path)) as db:
        after = db.execute("SELECT pos, kind, topic, payload, received_ms FROM log ORDER BY pos").fetchall()
    assert after == before


# --- a damaged page read as cells: the reader must not be led past readable rows -----------------------------


def _varint(v: int) -> bytes:
    """SQLite's varint (big-endian, seven bits a byte, up to nine bytes)."""
    if v < 0x80:
        return bytes([v])
    out = [v & 0x7F]
    v >>= 7
    while v:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    return bytes(reversed(out))


# a row of each table that passes every check of recover (the key aside): (serial types, body)
_FAKE_RECORD = {
    "log": ([0, 8, 15, 14, 1], b"xy\x05"),  # pos (the rowid), kind 0, topic "x", payload b"y", received_ms 5
    "spool": ([0, 8, 8, 8, 13, 8], b""),  # id (the rowid), prio 0, n 0, bytes 0, lines "", fmt 0
}


def _fake_cells(file: Path, page: int, table: str, key: int) -> None:
    """Rewrite leaf ``page`` of ``file`` so that every cell pointer leads to one well-formed cell of ``table`` with
    rowid ``key``: what a damaged page can look like to SQLite, and no check of SQLite's or of a row's catches it."""
    types, body = _FAKE_RECORD[table]
    record = bytes([1 + len(types), *types]) + body
    cell = _varint(len(record)) + _varint(key) + record
    ps = page_size(file)
    with open(file, "r+b") as f:
        f.seek((page - 1) * ps)
        data = bytearray(f.read(ps))
        assert data[0] == 0x0D  # a table's leaf page
        ncell = int.from_bytes(data[3:5], "big")
        at = ps // 2
        data[at : at + len(cell)] = cell
        for i in range(ncell):
            data[8 + 2 * i : 10 + 2 * i] = at.to_bytes(2, "big")
        f.seek((page - 1) * ps)
        f.write(data)


def _read_varint(data: bytes, at: int) -> tuple[int, int]:
    v = 0
    for i in range(8):
        v = (v << 7) | (data[at + i] & 0x7F)
        if not data[at + i] & 0x80:
            return v, at + i + 1
    return (v << 8) | data[at + 8], at + 9


def _rows_by_page(file: Path, table: str) -> dict[int, list[int]]:
    """The keys on each leaf page of ``table`` (pages from SQLite's dbstat, keys from each page's own cells)."""
    db = sqlite3.connect(file)
    pages = [p for p, _ in _pages(db)[table]]
    db.close()
    raw, ps = file.read_bytes(), page_size(file)
    out: dict[int, list[int]] = {}
    for p in pages:
        data = raw[(p - 1) * ps : p * ps]
        keys = []
        for i in range(int.from_bytes(data[3:5], "big")):
            at = int.from_bytes(data[8 + 2 * i : 10 + 2 * i], "big")
            _, at = _read_varint(data, at)  # the payload's size
            keys.append(_read_varint(data, at)[0])
        out[p] = sorted(keys)
    return out


@pytest.mark.parametrize("table", ["log", "spool"])
def test_a_damaged_page_read_as_a_row_past_the_end_loses_no_readable_row(
    state: tuple[Path, dict[str, Any]], table: str
) -> None:
    """A leaf page whose cell pointers lead to a well-formed cell with a key far past the table's last (what
    SQLite reads from a page whose pointers were damaged): recover keeps every row of every other page, and
    counts the damaged page's rows as lost."""
    config, held = state
    path: Path = held["path"]
    file = log_path(path) if table == "log" else path
    by_page = _rows_by_page(file, table)
    page = sorted(by_page)[len(by_page) // 3]
    hit = by_page[page]
    _fake_cells(file, page, table, 10**9)

    report = recover_state(load_config(config, env={}))
    text = "\n".join(report.lines())
    with sqlite3.connect(log_path(path)) as log_db, sqlite3.connect(path) as db:
        if table == "log":
            kept = _log(log_db)
            assert set(kept) == set(held["log"]) - set(hit), text
            assert report.log_rows_lost == len(hit) and report.log_holes == [(hit[0] - 1, hit[-1] + 1)], text
            assert f"{len(hit)} rows unreadable (positions {hit[0]}-{hit[-1]})" in text, text
        else:
            kept = {r[0]: r for r in db.execute("SELECT id, prio, n, bytes, lines FROM spool")}
            assert set(kept) == set(held["spool"]) - set(hit), text
            assert report.spool_holes == [(hit[0] - 1, hit[-1] + 1)], text
            assert "no chunk lost" not in text, text
        assert all(kept[k] == (held["log"] if table == "log" else held["spool"])[k] for k in kept)
        # new rows come after every real position, not after the damaged page's made-up key
        seq = (
            (log_db if table == "log" else db)
            .execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,))
            .fetchone()[0]
        )
        assert seq == max(held[table]), text


def test_every_leaf_page_overwritten_in_turn_is_counted_exactly(tmp_path: Path) -> None:
    """Each leaf page of the log and of the spool in turn has its cell pointers overwritten (what the replay test
    below does to one): SQLite may then read a cell from bytes past the page's end, so the damage reads as a
    made-up row or as an error depending on memory. Either way recover keeps every row of every other page and
    counts exactly the damaged page's rows as lost."""
    base = tmp_path / "base"
    base.mkdir()
    (base / "gw.toml").write_text(_toml(base / "state"), encoding="utf-8")
    held = make_state(base / "gw.toml")
    name = held["path"].name
    log_pages = _rows_by_page(log_path(held["path"]), "log")
    spool_pages = _rows_by_page(held["path"], "spool")
    wrong: list[str] = []
    for table, pages in (("log", log_pages), ("spool", spool_pages)):
        for page, hit in sorted(pages.items()):
            work = tmp_path / f"{table}-{page}"
            shutil.copytree(base / "state", work / "state")
            (work / "gw.toml").write_text(_toml(work / "state"), encoding="utf-8")
            path = work / "state" / name
            file = log_path(path) if table == "log" else path
            _overwrite(file, page, 8, b"\xff" * min(4000, page_size(file) - 8))  # inside the page, whatever its size
            report = recover_state(load_config(work / "gw.toml", env={}))
            if table == "log":
                with sqlite3.connect(log_path(path)) as db:
                    kept = set(_log(db))
                good = kept == set(held["log"]) - set(hit) and report.log_rows_lost == len(hit)
            else:
                with sqlite3.connect(path) as db:
                    kept = {r[0] for r in db.execute("SELECT id FROM spool")}
                good = (
                    kept == set(held["spool"]) - set(hit)
                    and report.spool_holes == [(hit[0] - 1, hit[-1] + 1)]  # the index lists every chunk's id
                    and report.spool_lost == len(hit)
                )
            if not good:
                missing = sorted(set(held[table]) - kept)
                wrong.append(f"{table} page {page} (keys {hit[0]}-{hit[-1]}): missing {missing}: {report.lines()[3:5]}")
            shutil.rmtree(work)
    assert not wrong, "\n".join(wrong)


# --- what an outside review of recover found (each case failed on the code before) -----------------------------


def _by_key(file: Path, table: str) -> list[tuple[int, list[int]]]:
    """Leaf pages of ``table`` in key order: ``[(page, keys)]``."""
    return sorted(_rows_by_page(file, table).items(), key=lambda kv: kv[1][0])


def _recover(config: Path) -> tuple[Any, dict[int, tuple[Any, ...]], dict[int, tuple[Any, ...]]]:
    """recover in process; the report, and the log rows and spool chunks of the fresh files."""
    cfg = load_config(config, env={})
    report = recover_state(cfg)
    path = state_path(cfg)
    log_db, db = sqlite3.connect(log_path(path)), sqlite3.connect(path)
    try:
        return report, _log(log_db), {r[0]: r for r in db.execute("SELECT id, prio, n, bytes, lines FROM spool")}
    finally:
        log_db.close()
        db.close()


def _overwrite(file: Path, page: int, at: int, data: bytes) -> None:
    with open(file, "r+b") as f:
        f.seek((page - 1) * page_size(file) + at)
        f.write(data)


@pytest.mark.parametrize("how", ["schema page", "its cell pointers", "cut inside it"])
def test_the_log_files_first_page_lost_is_not_nothing_lost(state: tuple[Path, dict[str, Any]], how: str) -> None:
    """The log file's schema page destroyed: the gateway refuses the file; recover must not then say that nothing
    was lost (it said so, with none of the 200 rows kept)."""
    config, held = state
    logfile = log_path(held["path"])
    if how == "schema page":
        _overwrite(logfile, 1, 100, random.Random(3).randbytes(page_size(logfile) - 100))
    elif how == "its cell pointers":
        _overwrite(logfile, 1, 108, b"\xff" * 8)
    else:
        os.truncate(logfile, 2000)
    report, log, _ = _recover(config)
    text = "\n".join(report.lines())
    assert not log and report.log_rows_lost is None and report.lost_anything, text
    assert "nothing was lost" not in text and "no row lost" not in text, text
    assert "their number is unknown" in text, text


@pytest.mark.parametrize("table", ["log", "spool"])
def test_a_damaged_page_read_as_a_row_with_a_lower_key_is_counted(
    state: tuple[Path, dict[str, Any]], table: str
) -> None:
    """A damaged page whose cells read as one row with a key below the next expected one: the walk's seek passes
    over the page without an error (its rows vanished, "nothing was lost")."""
    config, held = state
    file = log_path(held["path"]) if table == "log" else held["path"]
    page, hit = _by_key(file, table)[10]
    _fake_cells(file, page, table, 5 if table == "log" else 3)
    report, log, spool = _recover(config)
    text = "\n".join(report.lines())
    kept = log if table == "log" else spool
    assert set(kept) == set(held[table]) - set(hit), text
    if table == "log":
        assert report.log_rows_lost == len(hit) and f"{len(hit)} rows unreadable" in text, text
    else:
        assert report.spool_lost == len(hit) and report.spool_holes == [(hit[0] - 1, hit[-1] + 1)], text


@pytest.mark.parametrize("counter_above", [0, 100_000])
def test_a_readable_page_between_damaged_ones_is_kept(state: tuple[Path, dict[str, Any]], counter_above: int) -> None:
    """Three damaged leaves, an intact one, a damaged one: probing forward jumped over the intact page, whose rows
    were dropped and counted lost (and again, in a second review, when the counter read 100,000 too high: the
    positions read one by one were the last ones below the counter)."""
    config, held = state
    logfile = log_path(held["path"])
    if counter_above:
        with sqlite3.connect(logfile) as db:
            db.execute("UPDATE sqlite_sequence SET seq = seq + ? WHERE name = 'log'", (counter_above,))
    order = _by_key(logfile, "log")
    hit = [order[10], order[11], order[12], order[14]]
    for page, _ in hit:
        _overwrite(logfile, page, 0, random.Random(page).randbytes(page_size(logfile)))
    lost = {k for _, keys in hit for k in keys}
    report, log, _ = _recover(config)
    assert set(log) == set(held["log"]) - lost, report.lines()
    assert all(log[p] == held["log"][p] for p in log)
    assert report.log_rows_lost == len(lost) + counter_above, report.lines()  # a high counter counts as lost


def test_a_counter_that_reads_low_drops_no_row(state: tuple[Path, dict[str, Any]]) -> None:
    """The log's counter reads lower than its last rows (a stale page) and a leaf is destroyed: the rows above the
    counter were dropped and not counted."""
    config, held = state
    logfile = log_path(held["path"])
    with sqlite3.connect(logfile) as db:
        db.execute("UPDATE sqlite_sequence SET seq = 230 WHERE name = 'log'")
    page, hit = _by_key(logfile, "log")[5]
    _overwrite(logfile, page, 0, random.Random(1).randbytes(page_size(logfile)))
    report, log, _ = _recover(config)
    assert set(log) == set(held["log"]) - set(hit), report.lines()
    assert report.log_rows_lost == len(hit), report.lines()


def test_a_counter_past_every_key_ends(state: tuple[Path, dict[str, Any]]) -> None:
    """A counter read as more than 2**62 and the last leaf destroyed: probing forward never reached the counter and
    recover did not end. It ends, keeps every other row and says rows are lost."""
    config, held = state
    logfile = log_path(held["path"])
    with sqlite3.connect(logfile) as db:
        db.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'log'", (2**62 + 260,))
    page, hit = _by_key(logfile, "log")[-1]
    _overwrite(logfile, page, 0, random.Random(1).randbytes(page_size(logfile)))
    done = cli("recover", "--config", str(config), timeout=60)
    assert done.returncode == 0 and "rows unreadable" in done.stdout, done.stdout + done.stderr
    with sqlite3.connect(log_path(held["path"])) as db:
        assert set(_log(db)) == set(held["log"]) - set(hit)


def test_a_layout_change_cut_short_keeps_each_row_once(state: tuple[Path, dict[str, Any]]) -> None:
    """The log's rows both in the state file's own log table (the layout before) and in the log file, as a crash
    in the middle of moving them leaves them: recover ended with "UNIQUE constraint failed" and kept nothing."""
    config, held = state
    path: Path = held["path"]
    db = sqlite3.connect(path)
    with db:
        db.executemany(
            "INSERT INTO log (pos, kind, topic, payload, received_ms) VALUES (?, ?, ?, ?, ?)",
            list(held["log"].values()),
        )
        db.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('log', ?)", (max(held["log"]),))
    db.close()
    report, log, _ = _recover(config)
    assert log == held["log"] and report.messages == LOGGED and not report.lost_anything, report.lines()


def test_a_spool_chunk_whose_lines_do_not_decode_is_not_kept(state: tuple[Path, dict[str, Any]]) -> None:
    """A damaged page read as a chunk with its own id whose lines are a number and whose format is unknown: it was
    kept ("nothing was lost"), and the gateway then failed reading the recovered spool."""
    config, held = state
    path: Path = held["path"]
    page, hit = _by_key(path, "spool")[0]
    record = dict(_FAKE_RECORD)
    try:
        _FAKE_RECORD["spool"] = ([0, 8, 8, 8, 9, 1], b"\x07")  # prio 0, n 0, bytes 0, lines = 1 (an integer), fmt 7
        _fake_cells(path, page, "spool", hit[0])
    finally:
        _FAKE_RECORD.update(record)
    report, _, spool = _recover(config)
    assert hit[0] not in spool and report.spool_lost == 1 and "no chunk lost" not in "\n".join(report.lines())
    store = StateStore(path)
    try:
        while (head := store.spool_head(0)) is not None:  # the recovered spool reads back whole
            store.spool_delete(head[0])
    finally:
        store.close()


# --- a second outside review of recover (each case failed on the code before) ----------------------------------


def _shift_and_lose_checkpoint(held: dict[str, Any], shift: int) -> None:
    """Move every log position (and the counter and the checkpoint's position) up by ``shift``, as a gateway that
    has run a long time has them, then make the checkpoint unreadable."""
    path: Path = held["path"]
    log_db, db = sqlite3.connect(log_path(path)), sqlite3.connect(path)
    with log_db, db:
        log_db.execute("UPDATE log SET pos = pos + ?", (shift,))
        log_db.execute("UPDATE sqlite_sequence SET seq = seq + ? WHERE name = 'log'", (shift,))
        db.execute("UPDATE checkpoint SET pos = pos + ?, state = x'00112233'", (shift,))
    for c in (log_db, db):
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        c.close()


def test_checkpoint_lost_far_positions_and_the_first_and_last_pages_destroyed(
    state: tuple[Path, dict[str, Any]],
) -> None:
    """Positions near a million, the checkpoint unreadable, the first and last leaves of the log destroyed:
    probing forward from position 1 jumped from one damaged page to the other and every readable row was
    dropped."""
    config, held = state
    _shift_and_lose_checkpoint(held, 1_000_000)
    logfile = log_path(held["path"])
    order = _by_key(logfile, "log")
    lost: set[int] = set()
    for page, keys in (order[0], order[-1]):
        _overwrite(logfile, page, 0, random.Random(page).randbytes(page_size(logfile)))
        lost |= set(keys)
    report, log, _ = _recover(config)
    assert set(log) == {p + 1_000_000 for p in held["log"]} - lost, report.lines()
    assert not report.log_lost_exact and (report.log_rows_lost or 0) >= len(lost), report.lines()


def test_checkpoint_lost_and_the_log_trimmed_whole_loses_no_row(state: tuple[Path, dict[str, Any]]) -> None:
    """The log trimmed whole by the checkpoint (no row left), and the checkpoint unreadable: recover said 'up to
    260 rows unreadable'; no row was lost."""
    config, held = state
    with sqlite3.connect(log_path(held["path"])) as log_db:
        log_db.execute("DELETE FROM log")
    _shift_and_lose_checkpoint(held, 0)
    report, log, _ = _recover(config)
    assert not log and report.log_rows_lost == 0 and not report.log_holes, report.lines()
    assert "no row lost" in "\n".join(report.lines())


def test_an_index_that_misses_chunks_is_not_trusted(state: tuple[Path, dict[str, Any]]) -> None:
    """The spool's index reads without an error but lists one chunk only, and a table page is destroyed: recover
    said 'no chunk lost'."""
    config, held = state
    path: Path = held["path"]
    with sqlite3.connect(path) as db:
        leaves = [p for (p,) in db.execute("SELECT pageno FROM dbstat WHERE name = 'spool_prio' AND pagetype = 'leaf'")]
    record = bytes([3, 1, 1, 1, 1])  # an index cell: (prio 1, id 1)
    cell = bytes([len(record)]) + record
    ps = page_size(path)
    with open(path, "r+b") as f:
        f.seek((leaves[0] - 1) * ps)
        data = bytearray(f.read(ps))
        assert data[0] == 0x0A  # an index's leaf page
        data[ps // 2 : ps // 2 + len(cell)] = cell
        for i in range(int.from_bytes(data[3:5], "big")):
            data[8 + 2 * i : 10 + 2 * i] = (ps // 2).to_bytes(2, "big")
        f.seek((leaves[0] - 1) * ps)
        f.write(data)
    page, hit = _by_key(path, "spool")[20]
    _overwrite(path, page, 0, random.Random(page).randbytes(page_size(path)))
    report, _, spool = _recover(config)
    text = "\n".join(report.lines())
    assert set(spool) == set(held["spool"]) - set(hit), text
    assert report.spool_holes and report.spool_lost is None and "no chunk lost" not in text, text


def test_a_made_up_first_row_after_the_checkpoint_is_not_kept(state: tuple[Path, dict[str, Any]]) -> None:
    """The log's first page read as one well-formed row with a key further on (150): it was kept in place of the
    real row 150."""
    config, held = state
    logfile = log_path(held["path"])
    page, hit = _by_key(logfile, "log")[0]
    _fake_cells(logfile, page, "log", 150)
    report, log, _ = _recover(config)
    assert set(log) == set(held["log"]) - set(hit) and log[150] == held["log"][150], report.lines()
    assert report.log_rows_lost == len(hit), report.lines()


def test_a_checkpoint_table_that_reads_empty_is_said(state: tuple[Path, dict[str, Any]]) -> None:
    """The checkpoint's page reads with no cell (a stale page): recover said 'checkpoint: none' and counted the 60
    positions the checkpoint had taken as lost rows. It cannot be told from a file recover wrote after losing the
    checkpoint (that file has none either, and its log begins at 61), so it says both, and never 'nothing was
    lost'."""
    config, held = state
    path: Path = held["path"]
    with sqlite3.connect(path) as db:
        (leaf,) = [
            p for (p,) in db.execute("SELECT pageno FROM dbstat WHERE name = 'checkpoint' AND pagetype = 'leaf'")
        ]
    _overwrite(path, leaf, (100 if leaf == 1 else 0) + 3, b"\x00\x00")
    report, log, _ = _recover(config)
    text = "\n".join(report.lines())
    assert log == held["log"] and report.log_rows_lost == 0, text
    assert "checkpoint: none, but the log begins at position 61" in text and "nothing was lost" not in text, text


def test_a_spool_counter_that_reads_low_with_gaps_in_the_ids_drops_no_chunk(tmp_path: Path) -> None:
    """Chunk ids with gaps (chunks deleted once written), the spool's counter reading low and its index destroyed:
    each gap above the counter was reported as lost chunks (19 of them here, none lost), and on a larger spool
    with a damaged page readable chunks were dropped."""
    config = tmp_path / "gw.toml"
    config.write_text(_toml(tmp_path / "state"), encoding="utf-8")
    held = make_state(config)
    path: Path = held["path"]
    store = StateStore(path)
    try:
        store.spool([(1, [f"more,chunk={c} n=1i {T0 * 1_000_000}"]) for c in range(60)])
        for chunk_id in range(EXTRA_CHUNKS, EXTRA_CHUNKS + 60, 3):
            store.spool_delete(chunk_id)
    finally:
        store.close()
    with sqlite3.connect(path) as db:
        want = {r[0]: r for r in db.execute("SELECT id, prio, n, bytes, lines FROM spool")}
        db.execute("UPDATE sqlite_sequence SET seq = 41 WHERE name = 'spool'")
        leaves = [p for (p,) in db.execute("SELECT pageno FROM dbstat WHERE name = 'spool_prio' AND pagetype = 'leaf'")]
    for p in leaves:
        _overwrite(path, p, 0, random.Random(p).randbytes(page_size(path)))
    report, _, spool = _recover(config)
    assert spool == want, report.lines()
    assert not report.spool_holes and "no chunk lost" in "\n".join(report.lines()), report.lines()  # no gap a loss


# --- a third outside review (each case failed on the code before) ----------------------------------------------


@pytest.mark.parametrize("how", ["checkpoint unreadable", "state file unreadable", "no counter, far key"])
def test_a_made_up_first_row_without_the_checkpoint_is_not_kept(state: tuple[Path, dict[str, Any]], how: str) -> None:
    """Without the checkpoint the walk starts at position 1 and took a damaged first page's made-up row (key 150,
    or 10**9 with the log's counter page destroyed) as the log's first: the rows below it were neither read nor
    counted ('no row lost', 86 readable rows dropped, or all 197)."""
    config, held = state
    path: Path = held["path"]
    logfile = log_path(path)
    page, hit = _by_key(logfile, "log")[0]
    if how == "state file unreadable":
        path.write_bytes(random.Random(7).randbytes(50_000))
    else:
        _shift_and_lose_checkpoint(held, 0)
    key = 150
    if how == "no counter, far key":
        with sqlite3.connect(logfile) as db:
            (seq_page,) = [p for (p,) in db.execute("SELECT pageno FROM dbstat WHERE name = 'sqlite_sequence'")]
        db.close()
        _overwrite(logfile, seq_page, 0, random.Random(3).randbytes(page_size(logfile)))
        key = 10**9
    _fake_cells(logfile, page, "log", key)
    report, log, _ = _recover(config)
    text = "\n".join(report.lines())
    assert log == {p: r for p, r in held["log"].items() if p not in hit}, text  # the real row 150, not the made-up
    assert report.log_rows_lost is not None and report.log_rows_lost >= len(hit) and "up to" in text, text


def test_recover_again_on_a_file_it_wrote_after_losing_the_checkpoint(state: tuple[Path, dict[str, Any]]) -> None:
    """A second recover on the intact file the first one wrote (no checkpoint, the log from 61) said 'checkpoint
    unreadable' and that something was lost."""
    config, held = state
    _shift_and_lose_checkpoint(held, 0)
    _recover(config)
    report, log, _ = _recover(config)
    assert log == held["log"] and report.checkpoint == "absent" and not report.lost_anything, report.lines()


@pytest.mark.parametrize("log_file", ["missing (the layout before)", "empty"])
def test_an_unreadable_state_file_without_a_readable_log_file_says_the_loss_is_unknown(
    state: tuple[Path, dict[str, Any]], log_file: str
) -> None:
    """The state file unreadable and no log file beside it (its log was in the state file), or an empty one:
    recover said '0 logged messages kept; no row lost'."""
    config, held = state
    path: Path = held["path"]
    path.write_bytes(random.Random(7).randbytes(50_000))
    if log_file == "empty":
        log_path(path).write_bytes(b"")
    else:
        log_path(path).unlink()
    report = recover_state(load_config(config, env={}))
    text = "\n".join(report.lines())
    assert report.log_rows_lost is None and "their number is unknown" in text and "no row lost" not in text, text
