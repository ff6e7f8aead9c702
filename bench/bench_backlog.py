"""Late readings into a key that keeps many windows: what one costs the window engine.

Reproduce (from the repository root)::

    python bench/bench_backlog.py                       # 1 hour, compiled engine if built, else pure
    python bench/bench_backlog.py --hours 2 --against ../other-checkout   # side by side, alternating
    EDGEKIT_ENGINE=pure python bench/bench_backlog.py  # the pure-Python engine

A 1 s tumbling window with an allowed lateness of ``--hours`` + 1 h keeps every window of the last hours for late
readings. One board reads once a second for ``--hours`` hours (its windows fire and are kept); then the late
readings come, 60 a message, all within the lateness:

- ``site flush``: the window keyed by site; another board of the site flushes the same hours, oldest first (a board
  back from a long sleep);
- ``newest first``: keyed by device; the same board is sent the hours again, the newest message first;
- ``random``: keyed by device; readings of random windows of those hours.

Printed per scenario: the CPU time of the late readings alone (``time.process_time``), in microseconds a reading,
the median and range over ``--rounds``. Each run is a fresh process; with ``--against`` the other checkout's
engine runs the same, alternating round by round. Found by an outside review: a window looked up by walking the
key's windows one by one made each late reading cost every window kept.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_700_000_000_000
SCENARIOS = ("site flush", "newest first", "random")


def child(root: str, scenario: str, hours: int) -> float:
    """Microseconds of CPU a late reading in ``scenario``, with the engine of the checkout at ``root``."""
    sys.path.insert(0, root)
    from gateway.engine import Engine, parse_engine
    from gateway.model import Batch, Reading

    key = "site" if scenario == "site flush" else "device"
    spec = {
        "engine": {"watermark": {"out_of_orderness": "1s", "idle_timeout": "1h"}},
        "windows": [
            {"name": "t", "kind": "tumbling", "size": "1s", "metrics": ["x"],
             "allowed_lateness": f"{hours + 1}h", "key": key}
        ],
    }  # fmt: skip
    engine = Engine(parse_engine(spec))
    seq = [0]

    def send(device: str, times: list[int], now: int) -> None:
        readings = []
        for t in times:
            seq[0] += 1
            readings.append(Reading("s", device, 1, seq[0], t, "s", {"x": 1.0}))
        engine.process_batch(Batch("s", device, f"edgekit/s/{device}/readings", now, tuple(readings), ()), now)

    seconds = 3600 * hours
    for i in range(seconds):  # the live board: one window a second, each kept for the lateness
        send("d0", [T0 + i * 1000 + 500], T0 + i * 1000 + 600)
    now = T0 + seconds * 1000 + 600
    messages: list[tuple[str, list[int]]] = []
    rng = random.Random(1)
    for m in range(seconds // 60):
        if scenario == "site flush":
            messages.append(("d1", [T0 + (m * 60 + j) * 1000 + 250 for j in range(60)]))
        elif scenario == "newest first":
            k = seconds // 60 - 1 - m
            messages.append(("d0", [T0 + (k * 60 + j) * 1000 + 100 for j in range(59, -1, -1)]))
        else:
            messages.append(("d0", [T0 + rng.randrange(seconds) * 1000 + 300 for _ in range(60)]))
    start = time.process_time()
    for device, times in messages:
        send(device, times, now)
    return (time.process_time() - start) / (len(messages) * 60) * 1e6


def run(root: Path, scenario: str, hours: int) -> float:
    code = f"import sys; sys.path.insert(0, {str(ROOT / 'bench')!r}); import bench_backlog as b; "
    code += f"print(b.child({str(root)!r}, {scenario!r}, {hours}))"
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=root)
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--hours", type=int, default=1, help="hours of windows kept and of late readings (default 1)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--against", type=Path, help="another checkout, run the same way, alternating")
    args = ap.parse_args()
    trees = [("this", ROOT)] + ([("other", args.against.resolve())] if args.against else [])
    results: dict[str, dict[str, list[float]]] = {s: {label: [] for label, _ in trees} for s in SCENARIOS}
    for r in range(args.rounds):
        for scenario in SCENARIOS:
            for label, root in trees if r % 2 == 0 else trees[::-1]:
                results[scenario][label].append(run(root, scenario, args.hours))
    print(f"late readings into a key keeping {args.hours} h of 1 s windows; us of CPU a late reading, "
          f"median (range) of {args.rounds} rounds")  # fmt: skip
    for scenario, by in results.items():
        row: list[Any] = [f"  {scenario:<13}"]
        for label, xs in by.items():
            row.append(f"{label} {statistics.median(xs):9.2f} ({min(xs):.2f}-{max(xs):.2f})")
        print("  ".join(row))
    print(json.dumps({s: {k: statistics.median(v) for k, v in by.items()} for s, by in results.items()}))


if __name__ == "__main__":
    main()
