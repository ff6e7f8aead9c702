"""Throughput of anomaly detection alone (no MQTT, no sinks), on one core.

Reproduce (from the repository root)::

    python bench/bench_anomaly.py            # 1,000 devices x 3 metrics, 100 readings each
    python bench/bench_anomaly.py -n 50      # quicker

Each device sends batches of 20 readings; the time is that of ``AnomalyEngine.process`` only, for the
``ewma`` and the ``window`` (2 h) baselines. State is the size of the engine's JSON snapshot.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.anomaly import AnomalyEngine, parse_anomaly
from gateway.model import Reading

T0 = 1_704_067_200_000


def batches(devices: int, per_device: int) -> list[list[Reading]]:
    rng = random.Random(1)
    out = []
    for start in range(0, per_device, 20):
        for d in range(devices):
            rows = [
                Reading("s", f"dev-{d:04d}", 1, i, T0 + i * 60_000, "s",
                        {"temp_c": 20 + rng.gauss(0, 0.2), "rh": 50 + rng.gauss(0, 1), "vib": abs(rng.gauss(0, 0.05))})
                for i in range(start, min(per_device, start + 20))
            ]  # fmt: skip
            out.append(rows)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-d", "--devices", type=int, default=1000)
    parser.add_argument("-n", "--readings", type=int, default=100, help="readings per device")
    args = parser.parse_args()
    work = batches(args.devices, args.readings)
    values = sum(len(b) for b in work) * 3
    for baseline in ("ewma", "window"):
        eng = AnomalyEngine(parse_anomaly({"anomaly": {"baseline": baseline}}))
        now = T0 + args.readings * 60_000
        start = time.perf_counter()
        lines = 0
        for b in work:
            lines += len(eng.process(b, now).lines)
        elapsed = time.perf_counter() - start
        state = len(json.dumps(eng.snapshot()))
        print(
            f"{baseline:>6}: {values:,} values ({args.devices} devices x 3 metrics) in {elapsed:.2f} s = "
            f"{values / elapsed:,.0f} values/s, {elapsed / values * 1e6:.1f} us each; {lines:,} anomaly points; "
            f"state {state / 1e6:.1f} MB JSON"
        )


if __name__ == "__main__":
    main()
