"""Bytes written to storage per logged message by a log table in SQLite, as the gateway's log is kept, and with
the two layout choices that change it: the page size, and positions counted by ``AUTOINCREMENT`` (SQLite's
sequence table, one more page written at every commit) or given by the writer.

Reproduce (from the repository root)::

    python bench/bench_log_writes.py              # 6,000 messages per case, one commit each, a trim every 200
    python bench/bench_log_writes.py -n 20000 --sizes 150 1100

The log is written as the gateway writes it when it keeps up (WAL journal, ``synchronous=NORMAL``, one message a
commit, the rows a checkpoint covers deleted every 200 messages); what is counted is the process's
``write_bytes`` (``/proc/self/io``: bytes it made dirty for the storage, WAL frames and the WAL's copies into the
file alike, counted when a page is first dirtied; the files start clean after an ``os.sync()``), so ``--dir``
must be on real storage, not a tmpfs. A commit's microseconds include its share of the trims and of SQLite's
automatic WAL checkpoints. Printed: KiB written a message and microseconds a commit, each the median
and range over ``--rounds``. The gateway's own figures under load are printed by ``bench_e2e.py latency``
(writes, MB/s); docs/reliability.md ("Disk writes") shows both.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

TOPIC = "edgekit/s/bench-0001/readings"


def written() -> int:
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("write_bytes:"))


def one(directory: Path, page: int, size: int, n: int, autoincrement: bool) -> tuple[float, float]:
    """KiB written and microseconds per message for one layout."""
    path = directory / f"log-{page}-{size}-{autoincrement}.db"
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute(f"PRAGMA page_size={page}")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(
            f"CREATE TABLE log (pos INTEGER PRIMARY KEY {'AUTOINCREMENT' if autoincrement else ''}, kind INTEGER, "
            "topic TEXT, payload BLOB, received_ms INTEGER)"
        )
        payload = os.urandom(size)
        os.sync()
        before, t0 = written(), time.perf_counter()
        for i in range(n):
            db.execute("BEGIN")
            if autoincrement:
                db.execute(
                    "INSERT INTO log (kind, topic, payload, received_ms) VALUES (1, ?, ?, ?)", (TOPIC, payload, i)
                )
            else:
                db.execute(
                    "INSERT INTO log (pos, kind, topic, payload, received_ms) VALUES (?, 1, ?, ?, ?)",
                    (i + 1, TOPIC, payload, i),
                )
            db.execute("COMMIT")
            if i % 200 == 199:  # a checkpoint's trim
                db.execute("BEGIN")
                db.execute("DELETE FROM log WHERE pos <= ?", (i - 100,))
                db.execute("COMMIT")
        elapsed = time.perf_counter() - t0
        os.sync()
        return (written() - before) / n / 1024, elapsed / n * 1e6
    finally:
        db.close()
        for suffix in ("", "-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", "--messages", type=int, default=6000)
    ap.add_argument("-r", "--rounds", type=int, default=3)
    ap.add_argument("--sizes", type=int, nargs="+", default=[150, 1100, 3000], help="payload bytes")
    ap.add_argument("--pages", type=int, nargs="+", default=[4096, 2048, 1024])
    ap.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="where the files are written (default: the system's temporary "
        "folder; it must be on the storage measured, not a tmpfs)",
    )
    args = ap.parse_args()
    cases = [(page, size, auto) for size in args.sizes for page in args.pages for auto in (True, False)]
    got: dict[tuple[int, int, bool], list[tuple[float, float]]] = {c: [] for c in cases}
    with tempfile.TemporaryDirectory(prefix="log-writes-", dir=args.dir) as d:
        for r in range(args.rounds):  # interleaved, each case once a round
            for page, size, auto in cases if r % 2 == 0 else cases[::-1]:
                got[(page, size, auto)].append(one(Path(d), page, size, args.messages, auto))
    print(f"{'payload':>7} {'page':>5} {'positions':<13} {'KiB a message':<22} us a commit")
    for (page, size, auto), runs in got.items():
        kib, us = [k for k, _ in runs], [u for _, u in runs]
        print(
            f"{size:7d} {page:5d} {'AUTOINCREMENT' if auto else 'given':<13} "
            f"{statistics.median(kib):5.1f} ({min(kib):.1f}-{max(kib):.1f}){'':<6} "
            f"{statistics.median(us):4.0f} ({min(us):.0f}-{max(us):.0f})"
        )


if __name__ == "__main__":
    main()
