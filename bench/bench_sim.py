#!/usr/bin/env python3
"""Simulator throughput: the 'steady' scenario with 1,000 devices over a simulated hour, in-process.

Prints how long it takes to simulate the fleet (boards, clocks, network), to compute the reference's
expected gateway output, and to drive the gateway's own pipeline (decode, dedup, windows, line protocol)
through every delivery in virtual time, with a tick every virtual second. The target: the whole simulated
hour in under a minute of wall time. Printed numbers, not a timed test.

    python bench/bench_sim.py [--devices 1000] [--duration 1h] [--scenario steady]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sim.inprocess import gateway_config, run_in_process
from sim.reference import engine_spec, expect
from sim.scenario import load_scenario, parse_duration
from sim.world import simulate

NOW = 1_764_072_000_000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--scenario", default="steady")
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--duration", default="1h")
    ap.add_argument("--reference", action="store_true", help="also time the brute-force reference")
    args = ap.parse_args()
    sc = load_scenario(args.scenario).scaled(
        devices=args.devices, duration_ms=parse_duration(args.duration, "--duration")
    )
    hours = sc.duration_ms / 3_600_000

    t0 = time.perf_counter()
    run = simulate(sc, lambda: NOW)
    t_sim = time.perf_counter() - t0
    res = run_in_process(run, gateway_config(sc.gateway, sc.prefix), keep_lines=False)
    t_pipe = res.elapsed_s
    total = t_sim + t_pipe
    n, d = len(run.readings), len(run.deliveries)
    print(f"scenario {sc.name}: {sc.devices} devices, {hours:g} h of event time, windows: "
          f"{', '.join(w['name'] for w in sc.gateway.get('windows', [])) or 'none'}")  # fmt: skip
    print(f"  simulate    {n:>8} readings, {d:>7} deliveries   {t_sim:7.2f} s  ({n / t_sim:,.0f} readings/s)")
    print(f"  pipeline    {res.stats['readings_accepted']:>8} accepted, {res.lines:>8} lines  {t_pipe:7.2f} s  "
          f"({n / t_pipe:,.0f} readings/s, {res.stats['window_results']} window results)")  # fmt: skip
    print(f"  total       {total:7.2f} s of wall time for {hours:g} h simulated: {hours * 3600 / total:,.0f}x "
          "real time "
          f"({'under' if total < 60 else 'OVER'} a minute)")  # fmt: skip
    if args.reference:
        t0 = time.perf_counter()
        exp = expect(run, engine_spec(sc.gateway))
        print(f"  reference   {len(exp.windows)} window points  {time.perf_counter() - t0:7.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
