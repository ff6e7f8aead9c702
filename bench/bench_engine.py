"""Throughput of the event-time engine alone (no MQTT, no sinks), on one core.

Reproduce (from the repository root)::

    python bench/bench_engine.py            # all workloads, 1,000,000 readings each
    python bench/bench_engine.py -n 200000  # quicker

Workloads:

(a) reference: 100 devices, one reading per device per second, 10% delayed 0-3 s, 0.05% delayed 8-12 s;
    a 10 s tumbling mean per device, 5 s out-of-orderness bound; one reading per batch (worst case).
(b) 1,000 devices x 3 metrics through tumbling 60 s + sliding 60 s/1 s + session 30 s together.
(c) sliding windows with size/slide = 1, 10, 60, 600: the cost per reading should not grow with it.

Readings are generated in chunks outside the timed loop; the time is that of ``process_batch`` only.
Peak memory is the process's maximum resident set size; state is the size of the engine's JSON snapshot.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.engine import Engine, parse_engine
from gateway.model import Batch, Reading

T0 = 1_764_072_000_000
CHUNK = 100_000


def stream(n: int, devices: int, metrics: tuple[str, ...], seed: int = 1) -> Iterator[list[tuple[int, Batch]]]:
    """Chunks of (arrival ms, one-reading batch), in arrival order, with the reference workload's delays."""
    rng = random.Random(seed)
    names = [f"dev-{i:04d}" for i in range(devices)]
    made = 0
    second = 0
    pending: list[tuple[int, int, Batch]] = []
    order = 0
    while made < n or pending:
        out: list[tuple[int, Batch]] = []
        while len(out) < CHUNK and (made < n or pending):
            if made < n:
                for i, dev in enumerate(names):
                    if made >= n:
                        break
                    t = T0 + second * 1000 + i * 7 % 1000
                    u = rng.random()
                    delay = rng.randint(0, 3000) if u < 0.10 else rng.randint(8000, 12000) if u < 0.1005 else 0
                    vals = {m: 20.0 + rng.random() for m in metrics}
                    r = Reading("site-a", dev, 1, second, t, "s", vals)
                    order += 1
                    pending.append((t + delay + 50, order, Batch("site-a", dev, "", t, (r,), ())))
                    made += 1
                second += 1
            pending.sort(key=lambda x: (x[0], x[1]))
            horizon = T0 + second * 1000 if made < n else None
            keep = []
            for arrival, o, b in pending:
                if horizon is None or arrival < horizon - 13_000:
                    out.append((arrival, b))
                else:
                    keep.append((arrival, o, b))
            pending = keep
        yield out


def run(name: str, windows: list[dict[str, Any]], n: int, devices: int, metrics: tuple[str, ...]) -> float:
    engine = Engine(parse_engine({"windows": windows}))
    total = 0.0
    outputs = 0
    late = 0
    count = 0
    for chunk in stream(n, devices, metrics):
        process = engine.process_batch
        start = time.perf_counter()
        for arrival, b in chunk:
            outs = process(b, arrival)
            outputs += len(outs)
        total += time.perf_counter() - start
        count += len(chunk)
    late = engine.late_count()
    state = len(json.dumps(engine.snapshot()))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rate = count / total
    print(
        f"{name:<34} {count:>9,} readings {rate:>10,.0f} /s  {total * 1e6 / count:6.2f} us/reading  "
        f"outputs {outputs:>9,}  late {late:>5,}  state {state / 1024:8.1f} KiB  peak RSS {peak:6.0f} MiB"
    )
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", "--readings", type=int, default=1_000_000)
    ap.add_argument("--only", choices=["a", "b", "c"], default=None)
    args = ap.parse_args()
    n = args.readings
    if args.only in (None, "a"):
        print("(a) reference workload: 100 devices, 10 s tumbling mean, 5 s bound")
        run(
            "tumbling 10s mean",
            [
                {
                    "name": "t10",
                    "kind": "tumbling",
                    "size": "10s",
                    "metrics": ["temp_c"],
                    "aggregates": ["count", "mean"],
                }
            ],
            n,
            100,
            ("temp_c",),
        )
    if args.only in (None, "b"):
        print("(b) 1,000 devices x 3 metrics, tumbling 60 s + sliding 60 s/1 s + session 30 s")
        ms = ("temp_c", "rh", "lux")
        run(
            "three windows together",
            [
                {"name": "t60", "kind": "tumbling", "size": "60s", "metrics": list(ms)},
                {"name": "s60", "kind": "sliding", "size": "60s", "slide": "1s", "metrics": list(ms)},
                {"name": "ses", "kind": "session", "gap": "30s", "metrics": list(ms)},
            ],
            n,
            1000,
            ms,
        )
    if args.only in (None, "c"):
        print("(c) sliding windows, 100 devices: cost per reading against size/slide")
        for size, slide in (("60s", "60s"), ("60s", "6s"), ("60s", "1s"), ("600s", "10s"), ("600s", "1s")):
            run(
                f"sliding {size}/{slide}",
                [
                    {
                        "name": "s",
                        "kind": "sliding",
                        "size": size,
                        "slide": slide,
                        "metrics": ["temp_c"],
                        "aggregates": ["count", "mean", "max"],
                    }
                ],
                n,
                100,
                ("temp_c",),
            )
        run(
            "session 30s",
            [{"name": "ses", "kind": "session", "gap": "30s", "metrics": ["temp_c"]}],
            n,
            100,
            ("temp_c",),
        )


if __name__ == "__main__":
    main()
