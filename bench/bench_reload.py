"""How long a reload holds the gateway's input: building the new pipeline from the old one's state.

Reproduce (from the repository root)::

    python bench/bench_reload.py                 # 1,000 devices, 60 readings each, 5 runs
    python bench/bench_reload.py -d 5000 -r 3

The state is bench_checkpoint.py's (the example patterns, three windows over three metrics, anomaly detection),
warmed up with ``-n`` readings per device. The new configuration changes one window (``t1m``: 1 min -> 2 min) and
adds a pattern; the rest is kept. A reload takes no input while it builds the new pipeline (a snapshot of the
old one, a fresh pipeline, a restore: ``gateway.reload.reloaded_pipeline``), so that time is the pause in ingest;
printed beside it, a whole snapshot of the same state alone (what a checkpoint that writes every row takes on the
loop). Median, min and max over ``-r`` runs, each on a freshly warmed pipeline; the garbage collector as in the
gateway (on).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_checkpoint import config, warm_up

from gateway.app import Gateway
from gateway.config import parse_config
from gateway.engine import ENGINE_BUILD
from gateway.reload import plan_reload, reloaded_pipeline

T0 = 1_764_072_000_000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-d", "--devices", type=int, default=1000)
    ap.add_argument("-n", "--readings", type=int, default=60, help="readings per device before the reload")
    ap.add_argument("-r", "--runs", type=int, default=5)
    args = ap.parse_args()
    reload_s: list[float] = []
    snapshot_s: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        old = config(Path(tmp))
        doc = copy.deepcopy(dict(old.raw))
        for w in doc["windows"]:
            if w["name"] == "t1m":
                w["size"] = "2m"
        doc["patterns"].append({"name": "very_hot", "steps": [{"name": "hot", "where": "temp_c > 90"}]})
        new = parse_config(doc, env={})
        plan = plan_reload(old, new)
        print(f"engine: {ENGINE_BUILD}; {args.devices} devices x {args.readings} readings; " + "; ".join(plan.lines()))
        for _ in range(args.runs):
            gw = Gateway(old, now_ms=lambda: T0)
            warm_up(gw, args.devices, args.readings, T0)
            t = time.perf_counter()
            gw.pipeline.snapshot()
            snapshot_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            reloaded_pipeline(gw.pipeline, new, plan)
            reload_s.append(time.perf_counter() - t)
            gw.store.close()
    for name, xs in (("reload (input paused)", reload_s), ("whole snapshot alone", snapshot_s)):
        print(
            f"{name:<22} median {statistics.median(xs) * 1000:8.1f} ms  min {min(xs) * 1000:8.1f}  "
            f"max {max(xs) * 1000:8.1f}  ({len(xs)} runs)"
        )


if __name__ == "__main__":
    main()
