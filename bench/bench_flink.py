"""Throughput of the compiled Flink SQL job on a local standalone cluster, beside the gateway's engine.

Reproduce (from the repository root, after scripts/setup.sh)::

    python bench/bench_flink.py                     # workload (a), 300,000 readings, 3 rounds
    python bench/bench_flink.py -n 100000 --rounds 1

Workload (a) of bench/bench_engine.py (100 devices, one reading a second each, 10% delayed 0-3 s, 0.05% 8-12 s,
a 10 s tumbling mean per device) in the global watermark mode, one reading per message. Each round runs, in
turn: the gateway's engine (``Engine.process_batch`` per message, CPU time of this process), and the compiled
job at parallelism 1 and 2 reading the same readings as the bridge's JSON from one file (a bounded job on a
cluster of a JobManager and two TaskManagers started here). For the job: its run time as the JobManager
measures it (deploy to finish, without the client's planning), and readings per second of that; the job's CPU
is spread over the JobManager's and TaskManagers' JVMs, so its rate is per wall-clock second on this
machine's cores, the engine's per CPU-second of one core.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_engine import stream  # bench/bench_engine.py: workload (a)'s readings
from flink_cluster import start_cluster  # scripts/flink_cluster.py

from gateway.bridge import message_records
from gateway.config import parse_config
from gateway.engine import Engine
from gateway.flinksql import SinkPaths, compile_flink_sql

WINDOW = {"name": "t10", "kind": "tumbling", "size": "10s", "metrics": ["temp_c"], "aggregates": ["count", "mean"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=300_000, help="readings (default 300,000)")
    ap.add_argument("--devices", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    cfg = parse_config({"engine": {"watermark": {"mode": "global"}}, "windows": [WINDOW]}, env={})
    messages = [m for chunk in stream(args.n, args.devices, ("temp_c",)) for m in chunk]
    with tempfile.TemporaryDirectory(prefix="bench-flink-") as tmp_name:
        tmp = Path(tmp_name)
        inp = tmp / "in"
        inp.mkdir()
        eng = cfg.engine
        with (inp / f"readings-{1:020d}.jsonl").open("wb") as f:
            for pos, (arrival, b) in enumerate(messages, 1):
                f.writelines(
                    message_records(
                        b.readings, pos, arrival, min_time_ms=eng.min_time_ms, max_future_ms=eng.max_future_ms
                    )
                )
        print(f"workload (a), global watermark: {len(messages):,} readings, {args.devices} devices", flush=True)
        cluster = start_cluster(tmp / "cluster", slots=1)
        rates: dict[str, list[float]] = {"gateway engine": [], "Flink p1": [], "Flink p2": []}
        try:
            for r in range(args.rounds):
                engine = Engine(cfg.engine)
                start = time.process_time()
                for arrival, b in messages:
                    engine.process_batch(b, arrival)
                rates["gateway engine"].append(len(messages) / (time.process_time() - start))
                for p in (1, 2):
                    out = tmp / f"out-{r}-{p}"
                    paths = SinkPaths(readings=f"file://{inp}", windows=f"file://{out}/w", late=f"file://{out}/l")
                    (tmp / "job.sql").write_text(compile_flink_sql(cfg, paths, parallelism=p))
                    (jid,) = cluster.run_sql(tmp / "job.sql")
                    ms = cluster.rest(f"/jobs/{jid}")["duration"]
                    rates[f"Flink p{p}"].append(len(messages) / (ms / 1000))
                print(
                    f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:,.0f} readings/s" for k, v in rates.items()),
                    flush=True,
                )
        finally:
            cluster.close()
    for k, v in rates.items():
        print(f"{k:<15} median {statistics.median(v):>10,.0f} readings/s  (range {min(v):,.0f}-{max(v):,.0f})")


if __name__ == "__main__":
    main()
