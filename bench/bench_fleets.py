"""The fleet rule at 1,000 devices: a watermark from a heap of the devices against a walk over every one of them.

Reproduce (from the repository root)::

    python bench/bench_fleets.py                # 10,000 readings a variant, 3 rounds
    python bench/bench_fleets.py -n 5000 -r 5

A site's (or a group's, or a join key's) watermark is the minimum watermark of its active devices (docs/semantics.md,
"fleet"). Each operator that keeps one has a switch back to the device tracker's walk over every device (``walk``,
for the tests that compare the two): this measures both, alternating round by round in one process, with 1,000
devices on one site reading once a second in turn (one reading a message), and prints the CPU time of the operator
alone per reading, median and min-max over the rounds:

- ``pattern site``: a two-step pattern keyed by site (``Cep``), and keyed by device beside it (no fleet rule);
- ``pattern group``: the same keyed by a group of every device (``key = "group:all"``);
- ``join site``: an interval join keyed by site (doors and thermometers, ``Joins``);
- ``relative``: a tumbling 10 s window with ``[windows.relative]`` over a group of every device (``GroupRelative``;
  the window engine's own time not counted).

The window engine's site windows are measured by ``bench_engine.py --only g`` (``fleet``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.cep import CEP_BUILD, Cep, CepSpec, parse_patterns
from gateway.engine import ENGINE_BUILD, Engine, parse_engine
from gateway.groups import parse_groups
from gateway.joins import Joins, JoinsSpec, parse_join
from gateway.model import Batch, Reading
from gateway.relative import GroupRelative

T0 = 1_764_072_000_000
DEVICES = 1_000


def batches(n: int, metric: Callable[[int, str], dict[str, float]]) -> list[tuple[Batch, int]]:
    """Every device in turn, once a second; arrival 50 ms after the reading."""
    out = []
    for i in range(n):
        d = f"d{i % DEVICES:04d}"
        t = T0 + (i // DEVICES) * 1_000 + i % DEVICES
        out.append((Batch("s1", d, "t", t, (Reading("s1", d, 1, i, t, "s", metric(i, d)),), ()), t + 50))
    return out


def temps(i: int, d: str) -> dict[str, float]:
    return {"temp_c": (50.0, 85.0, 15.0, 40.0)[i * 7 % 4]}


def pattern(key: str, walk: bool, n: int) -> float:
    pat = {"name": "hot_then_cool", "within": "30s", "key": key,
           "steps": [{"name": "hot", "where": "temp_c > 80"},
                     {"name": "cool", "where": "temp_c < 20", "follow": "followed_by"}]}  # fmt: skip
    groups = parse_groups({"all": ["*"]} if key.startswith("group") else {})
    cep = Cep(CepSpec(parse_patterns([pat]), parse_engine({}), groups=groups))
    cep.fleets.walk = cep.group_fleets.walk = walk
    work = batches(n, temps)
    start = time.process_time()
    for b, now in work:
        cep.process_batch(b, now)
    return (time.process_time() - start) / n * 1e6


def join(walk: bool, n: int) -> float:
    spec = parse_join({
        "name": "door_then_cold", "key": "site", "between": "b.t BETWEEN a.t - 2m AND a.t + 30s",
        "a": {"devices": ["d0000"], "metrics": ["door"], "where": "door == 1"},
        "b": {"metrics": ["temp_c"], "where": "temp_c < 10"},
    })  # fmt: skip
    op = Joins(JoinsSpec((spec,), parse_engine({}), {}))
    op.fleets.walk = walk

    def metric(i: int, d: str) -> dict[str, float]:
        return {"door": float(i % 7 == 0)} if d == "d0000" else {"temp_c": 5.0 if i % 20 == 0 else 20.0}

    work = batches(n, metric)
    start = time.process_time()
    for b, now in work:
        op.process_batch(b, now)
    return (time.process_time() - start) / n * 1e6


def relative(walk: bool, n: int) -> float:
    doc = {"windows": [{"name": "w", "kind": "tumbling", "size": "10s", "metrics": ["temp_c"], "aggregates": ["mean"],
                        "relative": {"baseline": "median", "min_others": 1}}]}  # fmt: skip
    spec = parse_engine(doc)
    engine, rel = Engine(spec), GroupRelative(spec, parse_groups({"all": ["*"]}))
    for f in rel.fleets.values():
        f.walk = walk
    spent = 0.0
    for b, now in batches(n, temps):
        outs = engine.process_batch(b, now)
        start = time.process_time()
        rel.process_batch(b, outs, now)
        spent += time.process_time() - start
    return spent / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("-n", type=int, default=10_000, help="readings a variant (default 10,000)")
    ap.add_argument("-r", "--rounds", type=int, default=3)
    args = ap.parse_args()
    variants: dict[str, Callable[[], float]] = {
        "pattern device (no fleet rule)": lambda: pattern("device", False, args.n),
        "pattern site, heap": lambda: pattern("site", False, args.n),
        "pattern site, walk": lambda: pattern("site", True, args.n),
        "pattern group, heap": lambda: pattern("group:all", False, args.n),
        "pattern group, walk": lambda: pattern("group:all", True, args.n),
        "join site, heap": lambda: join(False, args.n),
        "join site, walk": lambda: join(True, args.n),
        "relative, heap": lambda: relative(False, args.n),
        "relative, walk": lambda: relative(True, args.n),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.rounds):
        for name, run in variants.items():
            times[name].append(run())
    print(f"{DEVICES:,} devices on one site, {args.n:,} readings a variant, {args.rounds} rounds "
          f"(patterns {CEP_BUILD}, engine {ENGINE_BUILD}); us of CPU a reading, median (min-max):")  # fmt: skip
    for name, xs in times.items():
        print(f"  {name:32} {statistics.median(xs):9.1f} ({min(xs):.1f}-{max(xs):.1f})")


if __name__ == "__main__":
    main()
