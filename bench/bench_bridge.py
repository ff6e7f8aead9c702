"""What bridge mode adds per reading: the input schema's line (docs/scale-out.md), fast and reference side by side.

Reproduce (from the repository root)::

    python bench/bench_bridge.py                 # 7 rounds of 20,000 readings, alternating
    python bench/bench_bridge.py -r 11 -n 50000

The readings are the benchmark's of docs/performance.md (four float metrics). Each round encodes every reading
with ``bridge.reading_record`` and with ``bridge.reading_record_reference`` (``json.dumps`` of the whole object),
in alternating order, and checks both give the same bytes; printed: microseconds per reading of CPU time, the
median and the range over the rounds, for each.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.bridge import reading_record, reading_record_reference
from gateway.model import Reading


def readings(n: int) -> list[Reading]:
    return [
        Reading(f"site-{i % 4}", f"dev-{i % 1000:04d}", 1, i, 1_767_225_600_000 + i * 100, "s",
                {"temp_c": 21.5 + (i % 97) * 0.01, "rh": 40.25 + (i % 13), "pressure_hpa": 1013.2, "vib": i * 1e-4})
        for i in range(n)
    ]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-r", "--rounds", type=int, default=7)
    ap.add_argument("-n", "--readings", type=int, default=20_000)
    args = ap.parse_args()
    rs = readings(args.readings)
    funcs = {"fast": reading_record, "reference": reading_record_reference}
    times: dict[str, list[float]] = {name: [] for name in funcs}
    for k in range(args.rounds):
        order = list(funcs) if k % 2 == 0 else list(reversed(funcs))
        out: dict[str, list[bytes]] = {}
        for name in order:
            f = funcs[name]
            t = time.process_time()
            out[name] = [f(r, i, 1_767_225_600_000, None) for i, r in enumerate(rs)]
            times[name].append((time.process_time() - t) * 1e6 / len(rs))
        assert out["fast"] == out["reference"]
    for name, ts in times.items():
        print(f"{name:<10} {statistics.median(ts):6.2f} us a reading (range {min(ts):.2f}-{max(ts):.2f}, "
              f"{args.rounds} rounds of {len(rs)})")  # fmt: skip


if __name__ == "__main__":
    main()
