"""What ``[homeassistant]`` costs per message: ``Discovery.observe`` beside ``Pipeline.handle``, in one process.

Reproduce (from the repository root)::

    python bench/bench_homeassistant.py            # 200 devices x 3 metrics, 100 readings each, batches of 10
    python bench/bench_homeassistant.py -r 9 -d 500

Each round decodes a simulated fleet's messages through the pipeline (patterns and anomaly detection off), then
times, alternating within the round (half the rounds the other way round), the pipeline alone and the pipeline
followed by ``Discovery.observe`` (discovery messages and device states, encoded as JSON). Prints the median and
spread (min-max) over the rounds of the time per message of each, and of their difference. The messages the
outbox would publish are counted too (one state per device per message; the discovery messages once).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.config import parse_config
from gateway.homeassistant import Discovery
from gateway.pipeline import Pipeline
from sim.fleet import FleetSpec, generate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-d", "--devices", type=int, default=200)
    ap.add_argument("-n", "--readings", type=int, default=100)
    ap.add_argument("-r", "--rounds", type=int, default=7)
    args = ap.parse_args()
    cfg = parse_config({"homeassistant": {"enabled": True}, "devices": {"max_devices": 100_000}}, env={})
    plan = generate(FleetSpec(devices=args.devices, readings_per_device=args.readings, batch_size=10,
                              metrics=("temp_c", "rh", "pressure_hpa"), seed=1))  # fmt: skip
    msgs = [(m.topic, m.payload) for m in plan.messages]
    now = time.time_ns() // 1_000_000

    def run(with_ha: bool) -> tuple[float, int]:
        pipeline, disc, sent = Pipeline(cfg), Discovery(cfg), 0
        t = time.perf_counter()
        for i, (topic, payload) in enumerate(msgs):
            out = pipeline.handle(topic, payload, now + i)
            if with_ha:
                sent += len(disc.observe(out.readings, out.status, out.alerts))
        return (time.perf_counter() - t) / len(msgs) * 1e6, sent

    base: list[float] = []
    ha: list[float] = []
    sent = 0
    for r in range(args.rounds):
        for with_ha in (False, True) if r % 2 == 0 else (True, False):
            us, n = run(with_ha)
            (ha if with_ha else base).append(us)
            sent = max(sent, n)
    diff = [h - b for h, b in zip(ha, base, strict=True)]

    def show(name: str, xs: list[float]) -> None:
        print(f"{name:<22} median {statistics.median(xs):8.1f} us/message  (min {min(xs):.1f}, max {max(xs):.1f})")

    print(f"{len(msgs)} messages ({args.devices} devices, {len(plan.readings)} readings), {args.rounds} rounds")
    show("pipeline", base)
    show("pipeline + discovery", ha)
    show("discovery's share", diff)
    print(f"retained messages put in the outbox: {sent} ({sent / len(msgs):.2f} a message)")


if __name__ == "__main__":
    main()
