"""Throughput of the compiled Flink SQL job on a local standalone cluster, beside the gateway's engine.

Reproduce (from the repository root, after scripts/setup.sh)::

    python bench/bench_flink.py                     # 100,000 readings, 3 rounds, 1 and 10 readings a message
    python bench/bench_flink.py -n 300000 --rounds 5 --per-message 1 10 50

Workload (a) of bench/bench_engine.py (100 devices, one reading a second each, 10% delayed 0-3 s, 0.05% 8-12 s,
a 10 s tumbling mean per device, 5 s bound) in the global watermark mode. bench_engine.py sends every reading
as its own message; ``--per-message K`` also groups each device's readings K at a time into one message (as a
board that buffers and sends K readings at once; the message arrives with its last reading). Both sides get
the same messages: the job reads them as the bridge writes them (``wm_ms`` on each message's last line, so
the job's watermark moves once per message, as the gateway's does; ``wm0_ms`` on every line, from which the job
decides lateness).

After one warm-up job per K at parallelism 2 (not counted: the first jobs on fresh JVMs run before the JIT
compiler has compiled Flink's code, and were up to 10 times slower here), each round runs, alternating, for
each K: the gateway's engine (``Engine.process_batch`` per message; CPU time of this process, one core), and
the compiled job at parallelism 1 and 2 reading the same readings from one file (a bounded job on a cluster of
a JobManager and two TaskManagers of one slot each, started once here). For the job two figures, both
excluding the cluster's start and the client's planning of the SQL:

- ``wall``: readings over the job's run time as the JobManager measures it (deploy to finish, so a fixed
  second or two of deployment is in it), on this machine's 2 cores shared by all the cluster's JVMs;
- ``cpu``: readings over the CPU time (user + system) the JobManager's and TaskManagers' processes spent
  between submission and the job's end (JIT compilation, garbage collection and checkpoints included).

The median and the range over the rounds are printed; the per-slot rate for ``edgekit-gateway plan
--flink-slot-rate`` is the parallelism-1 ``wall`` figure (one slot, as it runs).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_engine import stream  # bench/bench_engine.py: workload (a)'s readings
from flink_cluster import Cluster, start_cluster  # scripts/flink_cluster.py

from gateway.bridge import message_records, watermark_top
from gateway.config import parse_config
from gateway.engine import Engine
from gateway.flinksql import SinkPaths, compile_flink_sql
from gateway.model import Batch

WINDOW = {"name": "t10", "kind": "tumbling", "size": "10s", "metrics": ["temp_c"], "aggregates": ["count", "mean"]}
TICK = os.sysconf("SC_CLK_TCK")


def grouped(messages: list[tuple[int, Batch]], k: int) -> list[tuple[int, Batch]]:
    """Each device's readings ``k`` at a time in one message, arriving with its last one (a remainder too)."""
    if k == 1:
        return messages
    out: list[tuple[int, Batch]] = []
    held: dict[str, list[tuple[int, Batch]]] = {}
    for arrival, b in messages:
        got = held.setdefault(b.device, [])
        got.append((arrival, b))
        if len(got) == k:
            readings = tuple(r for _, x in got for r in x.readings)
            out.append((arrival, Batch(b.site, b.device, "", arrival, readings, ())))
            del held[b.device]
    last = max(a for a, _ in messages)
    for dev, got in held.items():
        out.append((last, Batch(got[0][1].site, dev, "", last, tuple(r for _, x in got for r in x.readings), ())))
    return out


def cluster_cpu_s(cluster: Cluster) -> float:
    """User + system CPU seconds of every process of the cluster (each one's process group)."""
    groups = {p.pid for p in cluster.procs.values()}
    total = 0
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) in groups:  # pgrp; then utime, stime at 14, 15 of stat (11, 12 here)
            total += int(fields[11]) + int(fields[12])
    return total / TICK


def write_input(path: Path, messages: Iterable[tuple[int, Batch]], min_time_ms: int, max_future_ms: int) -> None:
    """The lines as the bridge writes them: ``wm0_ms`` on every line, ``wm_ms`` on each message's last."""
    limits = {"min_time_ms": min_time_ms, "max_future_ms": max_future_ms}
    top: int | None = None
    with path.open("wb") as f:
        for pos, (arrival, b) in enumerate(messages, 1):
            f.writelines(message_records(b.readings, pos, arrival, wm0_ms=top, **limits))
            mt = watermark_top(b.readings, arrival, **limits)
            if mt is not None and (top is None or mt > top):
                top = mt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=100_000, help="readings (default 100,000)")
    ap.add_argument("--devices", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--per-message", type=int, nargs="+", default=[1, 10], metavar="K")
    args = ap.parse_args()
    cfg = parse_config({"engine": {"watermark": {"mode": "global"}}, "windows": [WINDOW]}, env={})
    eng = cfg.engine
    single = [m for chunk in stream(args.n, args.devices, ("temp_c",)) for m in chunk]
    workloads = {k: grouped(single, k) for k in args.per_message}
    rates: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-flink-") as tmp_name:
        tmp = Path(tmp_name)
        for k, messages in workloads.items():
            (tmp / f"in{k}").mkdir()
            write_input(tmp / f"in{k}" / f"readings-{1:020d}.jsonl", messages, eng.min_time_ms, eng.max_future_ms)
        print(
            f"workload (a), global watermark: {len(single):,} readings, {args.devices} devices, "
            f"{', '.join(f'{len(m):,} messages of {k}' for k, m in workloads.items())}",
            flush=True,
        )
        cluster = start_cluster(tmp / "cluster", slots=1)
        try:
            for k in workloads:  # warm-up, not counted: the first jobs on fresh JVMs run interpreted code
                paths = SinkPaths(readings=f"file://{tmp / f'in{k}'}", windows=f"file://{tmp}/warm{k}/w",
                                  late=f"file://{tmp}/warm{k}/l")  # fmt: skip
                (tmp / "job.sql").write_text(compile_flink_sql(cfg, paths, parallelism=2))
                cluster.run_sql(tmp / "job.sql")
            for r in range(args.rounds):
                for k, messages in workloads.items():
                    engine = Engine(cfg.engine)
                    start = time.process_time()
                    for arrival, b in messages:
                        engine.process_batch(b, arrival)
                    rates.setdefault(f"{k}/msg gateway engine, per CPU-s", []).append(
                        len(single) / (time.process_time() - start)
                    )
                    for p in (1, 2):
                        out = tmp / f"out-{r}-{k}-{p}"
                        paths = SinkPaths(
                            readings=f"file://{tmp / f'in{k}'}", windows=f"file://{out}/w", late=f"file://{out}/l"
                        )
                        (tmp / "job.sql").write_text(compile_flink_sql(cfg, paths, parallelism=p))
                        cpu0 = cluster_cpu_s(cluster)
                        (jid,) = cluster.run_sql(tmp / "job.sql")
                        cpu = cluster_cpu_s(cluster) - cpu0
                        ms = cluster.rest(f"/jobs/{jid}")["duration"]
                        rates.setdefault(f"{k}/msg Flink p{p}, per wall-s", []).append(len(single) / (ms / 1000))
                        rates.setdefault(f"{k}/msg Flink p{p}, per CPU-s", []).append(len(single) / cpu)
                print(f"round {r + 1}: " + "; ".join(f"{n} {v[-1]:,.0f}" for n, v in rates.items()), flush=True)
        finally:
            cluster.close()
    print(f"readings per second, median (range) of {args.rounds} rounds:")
    for name, v in rates.items():
        print(f"  {name:<32} {statistics.median(v):>10,.0f}  ({min(v):,.0f}-{max(v):,.0f})")


if __name__ == "__main__":
    main()
