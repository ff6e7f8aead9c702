"""How long a checkpoint takes, and how long it stalls the gateway's event loop, for a realistic state.

Reproduce (from the repository root)::

    python bench/bench_checkpoint.py                  # 1,000 devices, 10,000 lines to spill, 10 checkpoints
    python bench/bench_checkpoint.py -d 5000 -s 50000 # bigger
    python bench/bench_checkpoint.py -r 5 -s 0 --feed 500 [--code /path/to/other/checkout]

The state is the pipeline of a gateway that runs the four example patterns (gateway/examples/gateway.toml),
three windows per device (tumbling 1 min, sliding 10 min every minute, session with a 5 min gap, over
temp_c, rh and pressure_hpa, with 2 min allowed lateness) and anomaly detection on those three metrics
(EWMA baseline, compound alerts), warmed up with ``-n`` readings per device (one every 10 s, batches of
10; past the detectors' warm-up of 30). Before each checkpoint the sink holds ``-s`` lines in memory
(InfluxDB away), which the checkpoint moves to the spool in the same transaction, as in the gateway.

Each checkpoint runs in an event loop beside a heartbeat task that sleeps 1 ms at a time; its lag is each gap
between two heartbeats less the 1 ms, the stall the longest. With ``--feed N``, N messages a second (one reading
of a random device each) are logged and taken as the gateway does while each checkpoint runs, and the time each
waited to be taken is printed (a checkpoint that stops the pipeline's input makes them wait for all of it).
``--code PATH`` measures the gateway of another checkout with this file (run both, alternating, to compare).
Printed: the state size (its JSON text and what is stored,
zlib-compressed), the time of each part done by a synchronous checkpoint (snapshot, JSON, compression, SQLite
transaction) and of every key's row as the gateway's checkpoint writes it (its JSON text, compressed), and per
checkpoint at steady state (after a first one; before each, ``-c`` devices, a tenth by default, send ten readings
each) the duration, the stall and the bytes written (the WAL's size after the checkpoint's transaction, the WAL
emptied before it), median, min and max over ``-r`` runs. State file in a
temporary directory (``--dir`` to choose its disk).
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import itertools
import json
import random
import statistics
import sys
import tempfile
import time
import tomllib
import zlib
from pathlib import Path
from typing import Any


def _code() -> Path:
    """The checkout whose gateway is measured: ``--code PATH`` (read before the imports), else this one."""
    if "--code" in sys.argv:
        return Path(sys.argv[sys.argv.index("--code") + 1]).resolve()
    return Path(__file__).resolve().parent.parent


sys.path.insert(0, str(_code()))

from gateway.app import Gateway  # noqa: E402
from gateway.config import Config, parse_config  # noqa: E402
from gateway.engine import ENGINE_BUILD  # noqa: E402
from gateway.spool import RAW  # noqa: E402

try:
    from gateway.state import compress_checkpoint
except ImportError:  # a checkout from before compressed checkpoints (to compare): the JSON text is stored

    def compress_checkpoint(text: str) -> bytes:
        return text.encode()


ROOT = Path(__file__).resolve().parent.parent
PREFIX = "edgekit"
STEP_MS = 10_000

EXTRA_TOML = """
[[windows]]
name = "t1m"
kind = "tumbling"
size = "1m"
metrics = ["temp_c", "rh", "pressure_hpa"]
aggregates = ["count", "mean", "min", "max", "stddev"]
allowed_lateness = "2m"

[[windows]]
name = "s10m"
kind = "sliding"
size = "10m"
slide = "1m"
metrics = ["temp_c", "rh", "pressure_hpa"]
aggregates = ["count", "mean", "min", "max"]
allowed_lateness = "2m"

[[windows]]
name = "sess5m"
kind = "session"
gap = "5m"
metrics = ["temp_c", "rh", "pressure_hpa"]
aggregates = ["count", "mean", "first", "last"]
allowed_lateness = "2m"

[anomaly]
metrics = ["temp_c", "rh", "pressure_hpa"]
baseline = "ewma"

[anomaly.compound]
span = "5m"
min_metrics = 2
"""


def config(state_dir: Path) -> Config:
    doc = tomllib.loads((ROOT / "gateway" / "examples" / "gateway.toml").read_text() + EXTRA_TOML)
    doc["mqtt"]["client_id"] = "bench-checkpoint"
    doc["influx"]["url"] = "http://127.0.0.1:9"  # never written to: the sink is not started
    doc["state"] = {"dir": str(state_dir)}
    return parse_config(doc, env={})


def warm_up(
    gw: Gateway, devices: int, per_device: int, t0: int, first: int = 0, only: range | None = None
) -> list[str]:
    """Feed ``per_device`` readings of each device (of ``only``; from reading ``first``) through the pipeline;
    the lines it produced, in order."""
    rng = random.Random(7 + first)
    lines: list[str] = []
    base = {d: (20 + rng.random() * 5, 1000 + rng.random() * 20) for d in range(devices)}
    for start in range(first, first + per_device, 10):
        for d in only if only is not None else range(devices):
            temp, hpa = base[d]
            rows = []
            for s in range(start, min(first + per_device, start + 10)):
                rows.append({
                    "b": 1, "s": s, "t": t0 + s * STEP_MS, "q": "s",
                    "m": {"temp_c": round(temp + rng.gauss(0, 0.3), 2), "rh": round(50 + rng.gauss(0, 2), 1),
                          "pressure_hpa": round(hpa + rng.gauss(0, 0.5), 1), "vib": round(abs(rng.gauss(0, 1)), 3),
                          "status": "FAILED" if rng.random() < 0.01 else "OK",
                          "door": "open" if rng.random() < 0.05 else "closed"},
                })  # fmt: skip
            dev = f"dev-{d:04d}"
            payload = json.dumps({"v": 1, "dev": dev, "r": rows}).encode()
            received = t0 + (start + 10) * STEP_MS
            lines += gw.pipeline.handle(f"{PREFIX}/site-{d % 10}/{dev}/readings", payload, received).lines
        lines += gw.pipeline.tick(t0 + (start + 10) * STEP_MS).lines
    return lines


class Feed:
    """Messages offered to the gateway while a checkpoint runs (``--feed`` per second, from random devices, as a
    broker would hand them over): each logged and taken as the gateway does (``_accept`` then ``_process``), and
    the time each one waited to be taken recorded."""

    def __init__(self, devices: int, per_s: float, t_ms: int) -> None:
        self.devices = devices
        self.period = 1.0 / per_s if per_s > 0 else 0.0
        self.t_ms = t_ms
        self.seq = 0
        self.rng = random.Random(11)

    def message(self) -> tuple[str, bytes, bool]:
        d = self.rng.randrange(self.devices)
        self.seq += 1
        dev = f"dev-{d:04d}"
        metrics = {"temp_c": 21.0, "rh": 50.0, "pressure_hpa": 1000.0, "vib": 0.5, "status": "OK", "door": "closed"}
        row = {"b": 2, "s": self.seq, "t": self.t_ms, "q": "s", "m": metrics}
        return f"{PREFIX}/site-{d % 10}/{dev}/readings", json.dumps({"v": 1, "dev": dev, "r": [row]}).encode(), False


async def timed_checkpoint(gw: Gateway, feed: Feed | None) -> tuple[float, list[float], list[float]]:
    """One ``gw.checkpoint()``: its duration, the event loop's lags (each gap between two heartbeats of 1 ms less
    the 1 ms) and the time each fed message waited to be taken, in seconds."""
    beats: list[float] = []
    waits: list[float] = []
    running = True

    async def heartbeat() -> None:
        while running:
            beats.append(time.perf_counter())
            await asyncio.sleep(0.001)

    # as the gateway's ingest logs messages: waiting, where the checkout has it, while a checkpoint writes
    accept_logged = getattr(gw, "_accept_logged", None)

    async def feeder() -> None:
        assert feed is not None
        while running:
            t = time.perf_counter()
            msgs = [feed.message()]
            await gw._process(await accept_logged(msgs) if accept_logged is not None else gw._accept(msgs))
            waits.append(time.perf_counter() - t)
            await asyncio.sleep(max(0.0, feed.period - (time.perf_counter() - t)))

    hb = asyncio.create_task(heartbeat())
    fd = asyncio.create_task(feeder()) if feed is not None and feed.period else None
    await asyncio.sleep(0.02)  # the heartbeat is going
    start = time.perf_counter()
    result = gw.checkpoint()
    if inspect.isawaitable(result):  # an asynchronous checkpoint
        await result
    duration = time.perf_counter() - start
    await asyncio.sleep(0.02)
    running = False
    await hb
    if fd is not None:
        await fd
    lags = [max(0.0, b - a - 0.001) for a, b in itertools.pairwise(beats) if b >= start and a <= start + duration]
    return duration, lags, waits


def parts(gw: Gateway, spill_lines: list[str]) -> dict[str, float]:
    """The parts of a synchronous checkpoint, each timed on its own (seconds), and the state size."""
    t = time.perf_counter()
    snap = gw.pipeline.snapshot()
    t_snap = time.perf_counter() - t
    t = time.perf_counter()
    blob = json.dumps({"pipeline": snap}, separators=(",", ":"))
    t_json = time.perf_counter() - t
    t = time.perf_counter()
    packed = compress_checkpoint(blob)
    t_pack = time.perf_counter() - t
    gw.sink.memory[RAW].extend(spill_lines)
    stored = packed if len(packed) < len(blob) else blob  # what this checkout stores
    t = time.perf_counter()
    gw.sink.spill(lambda chunks: gw.store.checkpoint(gw.pos, stored, 0, chunks))
    t_store = time.perf_counter() - t
    got = {
        "snapshot": t_snap,
        "json": t_json,
        "compress": t_pack if stored is packed else 0.0,
        "sqlite": t_store,
        "bytes": float(len(blob)),
        "stored": float(len(stored)),
    }
    return got | _rows(snap)


def _rows(snap: dict[str, Any]) -> dict[str, float]:
    """Each key's row as the gateway's checkpoint writes it (``ckpt_rows.encode_row``, or ``json`` in a checkout
    without it), then compressed as it stores them (zstd from checkpoint version 6, zlib before): seconds for all
    rows, and their count (none in a checkout without rows)."""
    try:
        from gateway.ckpt_rows import split_state
    except ImportError:
        return {}
    try:
        from gateway.ckpt_rows import encode_row
    except ImportError:

        def encode_row(row: Any) -> bytes:
            return json.dumps(row, separators=(",", ":")).encode()

    _, rows = split_state({"pipeline": snap})
    t = time.perf_counter()
    texts = [encode_row(r) for r in rows.values()]
    t_json = time.perf_counter() - t
    from gateway import state

    compress = getattr(state, "compress_row", None) or (lambda text: zlib.compress(text, 1))  # zstd, or zlib before
    t = time.perf_counter()
    for text in texts:
        compress(text)
    return {"rows": float(len(texts)), "rows_json": t_json, "rows_zlib": time.perf_counter() - t}


def _pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


async def main_async(args: argparse.Namespace, state_dir: Path) -> None:
    gw = Gateway(config(state_dir))
    t0 = (time.time_ns() // 1_000_000 // 60_000) * 60_000 - args.readings * STEP_MS - 3_600_000
    start = time.perf_counter()
    lines = warm_up(gw, args.devices, args.readings, t0)
    took = time.perf_counter() - start
    print(
        f"engine {ENGINE_BUILD}; warm-up: {args.devices:,} devices x {args.readings} readings in {took:.1f} s; "
        f"{len(lines):,} lines; {gw.pipeline.stats.window_results:,} window results, "
        f"{gw.pipeline.stats.alerts:,} alerts"
    )
    spill = (lines * (args.spill // max(1, len(lines)) + 1))[: args.spill]
    p = parts(gw, spill)
    print(
        f"state {p['bytes'] / 1e6:.1f} MB JSON, stored {p['stored'] / 1e6:.1f} MB; parts of a synchronous "
        f"checkpoint: snapshot {p['snapshot'] * 1e3:.0f} ms, JSON {p['json'] * 1e3:.0f} ms, "
        f"compression {p['compress'] * 1e3:.0f} ms, "
        f"SQLite transaction with {len(spill):,} spilled lines {p['sqlite'] * 1e3:.0f} ms"
    )
    if "rows" in p:
        print(
            f"the {p['rows']:,.0f} rows of every key as the checkpoint writes them: "
            f"JSON {p['rows_json'] * 1e3:.0f} ms, compressed {p['rows_zlib'] * 1e3:.0f} ms"
        )
    durations, stalls, written, all_lags, all_waits, max_waits = [], [], [], [], [], []
    feed = Feed(args.devices, args.feed, t0 + (args.readings + 10 * args.runs) * STEP_MS)
    wal = Path(f"{gw.store.path}-wal")
    changed = args.devices // 10 if args.changed is None else args.changed
    await gw.checkpoint()  # the first one writes everything; the runs are the steady state after it
    for run in range(args.runs):
        # between two checkpoints, ``changed`` devices (a different tenth each time) send ten readings each
        group = range((run * changed) % max(1, args.devices), (run * changed) % max(1, args.devices) + changed)
        warm_up(
            gw,
            args.devices,
            10,
            t0,
            first=args.readings + 10 * run,
            only=range(group.start, min(group.stop, args.devices)),
        )
        gw.sink.memory[RAW].extend(spill)
        gw.store.compact()  # an empty WAL: what the checkpoint's transaction writes is what the WAL then holds
        d, lags, waits = await timed_checkpoint(gw, feed)
        durations.append(d)
        stalls.append(max(lags, default=0.0))
        all_lags += lags
        all_waits += waits
        max_waits.append(max(waits, default=0.0))
        written.append(_size(wal))
    print(
        f"checkpoint ({args.runs} runs, {changed:,} devices with new readings before each): duration median "
        f"{statistics.median(durations) * 1e3:.0f} ms (min {min(durations) * 1e3:.0f}, max "
        f"{max(durations) * 1e3:.0f}); event-loop stall (longest lag) median {statistics.median(stalls) * 1e3:.0f} "
        f"ms (min {min(stalls) * 1e3:.0f}, max {max(stalls) * 1e3:.0f}), lag p99 over all checkpoints "
        f"{_pct(all_lags, 99) * 1e3:.1f} ms; written (WAL) median "
        f"{statistics.median(written) / 1e6:.2f} MB (min {min(written) / 1e6:.2f}, max {max(written) / 1e6:.2f})"
    )
    if all_waits:
        print(
            f"messages fed during the checkpoints ({args.feed:g}/s, {len(all_waits):,} in all): wait to be taken p50 "
            f"{_pct(all_waits, 50) * 1e3:.1f} ms, p99 {_pct(all_waits, 99) * 1e3:.1f} ms, longest per checkpoint "
            f"median {statistics.median(max_waits) * 1e3:.0f} ms (min {min(max_waits) * 1e3:.0f}, max "
            f"{max(max_waits) * 1e3:.0f})"
        )
    gw.store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", "--devices", type=int, default=1000)
    parser.add_argument("-n", "--readings", type=int, default=60, help="readings per device in the warm-up")
    parser.add_argument("-s", "--spill", type=int, default=10_000, help="lines in the sink's memory at a checkpoint")
    parser.add_argument("-r", "--runs", type=int, default=10)
    parser.add_argument(
        "-c", "--changed", type=int, default=None, help="devices with new readings before each checkpoint (a tenth)"
    )
    parser.add_argument("--dir", type=Path, default=None, help="directory for the state file (default: a temp dir)")
    parser.add_argument(
        "--feed", type=float, default=0.0, help="messages per second offered during each checkpoint (default none)"
    )
    parser.add_argument("--code", type=Path, default=None, help="the checkout whose gateway is measured (default this)")
    args = parser.parse_args()
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
        asyncio.run(main_async(args, args.dir))
        return
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main_async(args, Path(tmp)))


if __name__ == "__main__":
    main()
