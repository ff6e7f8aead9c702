"""Throughput of the CEP operator alone (no MQTT, no sinks), on one core, and its memory under a flood.

Reproduce (from the repository root)::

    python bench/bench_cep.py              # 1,000,000 readings through ten patterns over 1,000 devices
    python bench/bench_cep.py -n 200000    # quicker
    python bench/bench_cep.py -n 100000 --against main -r 5   # (a) side by side with another revision, and
                                                              # with the ten patterns on = "both"

(a) ten patterns (the four examples of docs/cep.md and six more: thresholds, ranges, relative changes,
    quantifiers, a middle and a final negation) over 1,000 devices, one reading per device per second with
    temp_c, pressure_hpa, vib, status and door, 10% of readings delayed 0-3 s (disorder inside the 5 s
    bound), batches of 5 readings of one device;
(b) a flood of partial matches: every reading starts a run of a pattern that never completes and has no
    ``within``; the number of runs, the buffered readings and the snapshot size must stay flat as the
    stream grows (the oldest runs are evicted and counted). 50,000 readings with max_runs 1,000 and
    200,000 with max_runs 100: a reading costs O(live runs of its key).

Peak RSS includes the pre-generated readings of (a) (about 0.5 GB for 1,000,000).

Readings are generated outside the timed loop; the time is that of ``Cep.process_batch`` only.
``--against REV`` runs (a) in subprocesses, alternating round by round: this tree, ``gateway/`` of REV (from a
temporary copy), and this tree with every pattern ``on = "both"`` (the fast path and its verdicts too); it
prints each variant's median and spread (min-max) of the process's CPU time per reading.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.cep import Cep, CepSpec, Pattern, PatternSpec
from gateway.config import load_config
from gateway.engine import parse_engine
from gateway.model import Batch, Reading

T0 = 1_764_072_000_000
NOW = T0 + 365 * 86_400_000
ROOT = Path(__file__).resolve().parent.parent


def ten_patterns() -> tuple[PatternSpec, ...]:
    examples = load_config(ROOT / "gateway" / "examples" / "gateway.toml", env={}).patterns
    more = (
        Pattern.begin("hot").where("temp_c > 30").times(3).within("1m").build("hot_3x"),
        Pattern.begin("cold").where("temp_c < 5").build("cold"),
        Pattern.begin("a").where("vib in [0.5, 5]").followed_by("b").where("vib > 2 * a.vib").within("20s")
        .build("vib_doubles"),
        Pattern.begin("ok").where('status == "OK"').next("bad").where('status != "OK"').next("ok2")
        .where('status == "OK"').build("flap"),
        Pattern.begin("up").where("pressure_hpa > 1015").not_followed_by("dip").where("pressure_hpa < 1010")
        .followed_by("up2").where("pressure_hpa > 1016").within("30s").build("pressure_high_stable"),
        Pattern.begin("t").where("temp_c >= 22").at_least(2).followed_by("drop").where("temp_c < prev.temp_c - 1")
        .within("2m").build("temp_drop"),
    )  # fmt: skip
    pats = (*examples, *more)
    assert len(pats) == 10
    return pats


def stream(n: int, devices: int, seed: int = 1) -> list[Batch]:
    rng = random.Random(seed)
    per = 5
    rows: list[list[Reading]] = [[] for _ in range(devices)]
    batches: list[Batch] = []
    state = {d: (20.0, 1013.0, 0.05, "closed") for d in range(devices)}
    seqs = [0] * devices
    for i in range(n):
        d = i % devices
        sec = i // devices
        temp, press, vib, door = state[d]
        temp = min(95.0, max(0.0, temp + rng.gauss(0, 1.5)))
        press = max(850.0, min(1040.0, press + rng.gauss(0, 3)))
        vib = abs(vib + rng.gauss(0, 0.05))
        if rng.random() < 0.01:
            door = "open" if door == "closed" else "closed"
        state[d] = (temp, press, vib, door)
        status = "FAILED" if rng.random() < 0.02 else "OK"
        t = T0 + sec * 1_000 + (rng.randint(0, 3_000) if rng.random() < 0.1 else 0)
        m = {"temp_c": round(temp, 2), "pressure_hpa": round(press, 1), "vib": round(vib, 3), "status": status,
             "door": door}  # fmt: skip
        rows[d].append(Reading("s1", f"dev-{d:04d}", 1, seqs[d], t, "s", m))
        seqs[d] += 1
        if len(rows[d]) == per:
            batches.append(Batch("s1", f"dev-{d:04d}", "t", NOW, tuple(rows[d]), ()))
            rows[d] = []
    return batches


def spec(patterns: tuple[PatternSpec, ...], **kw: int) -> CepSpec:
    return CepSpec(patterns, parse_engine({"engine": {"watermark": {"out_of_orderness": "5s"}}}), **kw)


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def throughput(n: int) -> None:
    batches = stream(n, 1_000)
    cep = Cep(spec(ten_patterns()))
    start = time.perf_counter()
    matches = 0
    for b in batches:
        matches += len(cep.process_batch(b, NOW))
    elapsed = time.perf_counter() - start
    readings = sum(len(b.readings) for b in batches)
    rate = readings / elapsed
    print(f"(a) ten patterns x 1,000 devices: {readings:,} readings in {elapsed:.2f} s = {rate:,.0f} readings/s")
    print(f"    matches {matches:,}, partial matches alive {cep.partial_matches():,}, buffered {cep.buffered():,}, "
          f"stats {cep.stats}, peak RSS {maxrss_mb():.0f} MB")  # fmt: skip


def cpu_per_reading(n: int, on: str) -> float:
    """(a) once: the process's CPU time per reading, in microseconds (``on``: every pattern's path)."""
    batches = stream(n, 1_000)
    patterns = ten_patterns()
    if on != "event_time":
        patterns = tuple(dataclasses.replace(p, on=on) for p in patterns)  # type: ignore[call-arg]
    cep = Cep(spec(patterns))
    cpu = time.process_time()
    for b in batches:
        cep.process_batch(b, NOW)
    return (time.process_time() - cpu) / sum(len(b.readings) for b in batches) * 1e6


def _run(path: Path, n: int, on: str) -> float:
    """:func:`cpu_per_reading` in a subprocess, on the ``gateway/`` package at ``path``."""
    code = (f"import sys; sys.path.insert(0, {str(path)!r}); import gateway; "  # this gateway/, before bench's own
            f"sys.path.insert(0, {str(ROOT / 'bench')!r}); import bench_cep as b; "
            f"print(b.cpu_per_reading({n}, {on!r}))")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=path)
    return float(done.stdout.strip().splitlines()[-1])


def against(rev: str, n: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "archive", rev, "gateway"], cwd=ROOT, check=True, capture_output=True).stdout
        tarfile.open(fileobj=BytesIO(archive)).extractall(tmp, filter="data")
        variants = {"this tree": (ROOT, "event_time"), rev: (Path(tmp), "event_time"), "on = both": (ROOT, "both")}
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(rounds):
            for name, (path, on) in variants.items():
                times[name].append(_run(path, n, on))
    print(f"(a) ten patterns x 1,000 devices, {n:,} readings, {rounds} rounds: CPU us per reading")
    for name, xs in times.items():
        print(f"    {name:>12}: median {statistics.median(xs):6.1f}  min {min(xs):6.1f}  max {max(xs):6.1f}")


def flood(n: int, max_runs: int) -> None:
    never = Pattern.begin("a").where("x >= 0").followed_by("b").where("x < 0").build("never")
    cep = Cep(spec((never,), max_runs=max_runs))
    print(f"(b) flood: every reading starts a run that never completes (no within), one device, max_runs={max_runs:,}")
    print(f"    {'readings':>10} {'runs':>6} {'buffered':>8} {'evicted':>10} {'snapshot KB':>11} {'peak RSS MB':>11}")
    step = max(n // 5, 1)
    seq = 0
    start = time.perf_counter()
    for chunk in range(5):
        for _ in range(step // 10):
            readings = tuple(
                Reading("s1", "d1", 1, seq + i, T0 + (seq + i) * 10, "s", {"x": seq + i}) for i in range(10)
            )
            seq += 10
            cep.process_batch(Batch("s1", "d1", "t", NOW, readings, ()), NOW)
        size = len(json.dumps(cep.snapshot())) / 1024
        print(f"    {seq:>10,} {cep.partial_matches():>6,} {cep.buffered():>8,} {cep.stats['evicted']:>10,} "
              f"{size:>11,.0f} {maxrss_mb():>11,.0f}")  # fmt: skip
        del chunk
    print(f"    {seq / (time.perf_counter() - start):,.0f} readings/s under the flood")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=1_000_000, help="readings per workload")
    parser.add_argument("--against", help="a git revision to measure (a) against, side by side (e.g. main)")
    parser.add_argument("-r", "--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.against:
        against(args.against, args.n, args.rounds)
        return
    throughput(args.n)
    flood(min(args.n, 50_000), 1_000)  # each reading visits every live run of its key: O(max_runs) per reading
    flood(min(args.n, 200_000), 100)


if __name__ == "__main__":
    main()
