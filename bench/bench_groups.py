"""Cost of the group operators alone (no MQTT, no sinks), on one core: patterns keyed by a group, and
group-relative values.

Reproduce (from the repository root)::

    python bench/bench_groups.py                 # 200,000 readings, 5 rounds
    python bench/bench_groups.py -n 50000 -r 3   # quicker

The fleet: 100 groups of 4 boards (400 devices), one reading per board per second with ``current_a`` and
``flow_lpm``, 10% of readings delayed 0-3 s (disorder inside the 5 s bound), batches of 5 readings of one board.
Now and then a board's current rises above 10 and, 0-40 s later, another board of its group sees the flow fall
below 2 (a pump fault across two boards).

(a) the pattern ``pump_fault`` (``current_a > 10`` followed by ``flow_lpm < 2`` within 30 s) keyed by ``group``
    (one match state per group, over its four boards) against the same pattern keyed by ``site`` on a fleet whose
    sites are the groups: the same readings in the same keys, so the difference is what a group key costs. The
    two variants alternate round by round; printed: CPU time per reading and matches per CPU second (median and
    min-max over the rounds), and the state per group at the end (partial matches, buffered readings, bytes of
    the key's JSON snapshot).
(b) a tumbling 1-minute window of ``current_a`` with and without ``[windows.relative]`` (median of the other
    three boards), alternating: CPU time per reading of engine + relative values against the engine alone, the
    values written per CPU second, and the values held per group at the end.
(c) patterns in ``global`` watermark mode: bench_cep.py's ten patterns over 1,000 devices (its workload (a),
    each device's times a few milliseconds apart from the others', so the global watermark moves on nearly
    every message), per-device watermarks against the global one visiting only the keys due (a heap of due
    times) and against the global one walking every key (``Cep.scan_all``), alternating.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_cep import stream, ten_patterns  # bench/ is on the path (above)

from gateway.cep import Cep, CepSpec, Pattern
from gateway.engine import Engine, parse_engine
from gateway.groups import parse_groups
from gateway.model import Batch, Reading
from gateway.relative import GroupRelative

T0 = 1_764_072_000_000
NOW = T0 + 365 * 86_400_000
GROUPS = 100
BOARDS = 4


def device(g: int, b: int) -> str:
    return f"p{g:03d}-{b}"


def make_batches(n: int, by_site: bool, seed: int = 1) -> list[Batch]:
    """``n`` readings of the fleet as batches in arrival order; the site is the group when ``by_site``."""
    rng = random.Random(seed)
    devices = [(g, b) for g in range(GROUPS) for b in range(BOARDS)]
    faults: dict[tuple[int, int], int] = {}  # (group, board) -> second its flow falls
    rows: list[tuple[int, int, str, str, int, dict[str, float]]] = []
    seqs = dict.fromkeys(devices, 0)
    for s in range(n // len(devices) + 1):
        for g, b in devices:
            cur = 5.0 + rng.random()
            flow = 10.0 + rng.random()
            if rng.random() < 0.002:  # an overcurrent, and another board of the group sees the flow fall
                cur = 12.0
                other = (b + 1 + rng.randrange(BOARDS - 1)) % BOARDS
                faults[(g, other)] = s + rng.randint(0, 40)
            if faults.get((g, b)) == s:
                flow = 1.0
            t = T0 + s * 1000 + b * 10
            arrival = t + (rng.randint(0, 3000) if rng.random() < 0.1 else 0)
            site = f"g{g:03d}" if by_site else "plant"
            rows.append((arrival, len(rows), site, device(g, b), seqs[(g, b)], {"current_a": cur, "flow_lpm": flow}))
            seqs[(g, b)] += 1
            if len(rows) >= n:
                break
        if len(rows) >= n:
            break
    rows.sort()
    batches: list[Batch] = []
    pending: dict[str, list[Reading]] = {}
    for _arrival, _, site, dev, seq, m in rows:
        t = T0 + (seq * 1000) + int(dev[-1]) * 10
        group = pending.setdefault(dev, [])
        group.append(Reading(site, dev, 1, seq, t, "s", m))
        if len(group) == 5:
            batches.append(Batch(site, dev, "t", NOW, tuple(sorted(group, key=lambda r: r.seq)), ()))
            pending[dev] = []
    for dev, group in pending.items():
        if group:
            batches.append(Batch(group[0].site, dev, "t", NOW, tuple(group), ()))
    return batches


def run_pattern(batches: list[Batch], key: str) -> tuple[float, int, dict[str, float]]:
    engine = parse_engine({"engine": {"watermark": {"out_of_orderness": "5s"}}})
    spec = (
        Pattern.begin("current").where("current_a > 10").followed_by("flow").where("flow_lpm < 2")
        .within("30s").build("pump_fault", key=key)
    )  # fmt: skip
    groups = parse_groups({f"g{g:03d}": [f"p{g:03d}-*"] for g in range(GROUPS)})
    cep = Cep(CepSpec((spec,), engine, groups=groups))
    matches = 0
    cpu = time.process_time()
    for b in batches:
        matches += len(cep.process_batch(b, NOW))
    spent = time.process_time() - cpu
    keys = [k for k in cep.keys.values() if k.name[0] in "gs"]
    snap = cep.snapshot()
    state = {
        "runs": statistics.fmean(sum(len(r) for r in k.runs) for k in keys),
        "buffered": statistics.fmean(len(k.buf) for k in keys),
        "bytes": statistics.fmean(len(json.dumps(snap["keys"][k.name])) for k in keys),
    }
    return spent, matches, state


def run_relative(batches: list[Batch], relative: bool) -> tuple[float, int, float]:
    window: dict[str, Any] = {"name": "c1m", "kind": "tumbling", "size": "1m", "metrics": ["current_a"],
                              "aggregates": ["count", "mean"]}  # fmt: skip
    if relative:
        window["relative"] = {"baseline": "median"}
    spec = parse_engine({"engine": {"watermark": {"out_of_orderness": "5s"}}, "windows": [window]})
    engine = Engine(spec)
    rel = GroupRelative(spec, parse_groups({f"g{g:03d}": [f"p{g:03d}-*"] for g in range(GROUPS)}))
    values = 0
    cpu = time.process_time()
    for b in batches:
        outputs = engine.process_batch(b, NOW)
        if rel:
            values += len(rel.process_batch(b, outputs, NOW))
    spent = time.process_time() - cpu
    return spent, values, rel.open_values() / GROUPS if rel else 0.0


def run_global(batches: list[Batch], variant: str) -> float:
    mode = "device" if variant == "device" else "global"
    cep = Cep(
        CepSpec(ten_patterns(), parse_engine({"engine": {"watermark": {"mode": mode, "out_of_orderness": "5s"}}}))
    )
    cep.scan_all = variant == "global, every key"
    cpu = time.process_time()
    for b in batches:
        cep.process_batch(b, NOW)
    return (time.process_time() - cpu) / sum(len(b.readings) for b in batches) * 1e6


def spread(xs: list[float]) -> str:
    return f"{statistics.median(xs):,.1f} ({min(xs):,.1f}-{max(xs):,.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=200_000, help="readings per run (default 200,000)")
    parser.add_argument("-r", "--rounds", type=int, default=5)
    args = parser.parse_args()
    by_group = make_batches(args.n, by_site=False)
    by_site = make_batches(args.n, by_site=True)
    n = sum(len(b.readings) for b in by_group)
    us: dict[str, list[float]] = {"group": [], "site": [], "window": [], "window+relative": []}
    rate: dict[str, list[float]] = {"group": [], "site": [], "window+relative": []}
    found: dict[str, int] = {}
    states: dict[str, dict[str, float]] = {}
    held = 0.0
    jittered = [
        dataclasses.replace(b, readings=tuple(dataclasses.replace(r, t_ms=r.t_ms + int(b.device[-4:]) % 1000)
                                              for r in b.readings))
        for b in stream(min(args.n, 100_000), 1_000)
    ]  # fmt: skip
    modes: dict[str, list[float]] = {"device": [], "global, keys due": [], "global, every key": []}
    for _ in range(args.rounds):
        for variant in modes:
            modes[variant].append(run_global(jittered, variant))
        for key, batches in (("group", by_group), ("site", by_site)):
            spent, matches, state = run_pattern(batches, key)
            us[key].append(spent / n * 1e6)
            rate[key].append(matches / spent)
            states[key] = state
            found[key] = matches
        for variant in ("window", "window+relative"):
            spent, values, held_now = run_relative(by_group, variant != "window")
            us[variant].append(spent / n * 1e6)
            if variant != "window":
                rate[variant].append(values / spent)
                held = held_now
    print(f"{n:,} readings, {GROUPS} groups x {BOARDS} boards, {args.rounds} rounds alternating; "
          "median (min-max)")  # fmt: skip
    for key in ("group", "site"):
        s = states[key]
        per_s = 1e6 / statistics.median(us[key])
        print(
            f"(a) pump_fault keyed by {key:5}: {spread(us[key])} us CPU per reading ({per_s:,.0f} readings/s), "
            f"{found[key]} matches, {spread(rate[key])} matches per CPU second; per {key} at the end (snapshot bytes): "
            f"{s['runs']:.2f} partial matches, {s['buffered']:.1f} buffered readings, {s['bytes']:,.0f} bytes"
        )
    print(f"(b) 1-minute window alone:          {spread(us['window'])} us CPU per reading")
    print(
        f"(b) with [windows.relative] median: {spread(us['window+relative'])} us CPU per reading, "
        f"{spread(rate['window+relative'])} values per CPU second; {held:.1f} member values held per group at the end"
    )
    for variant, xs in modes.items():
        print(f"(c) ten patterns, 1,000 devices, watermark {variant:17}: {spread(xs)} us CPU per reading")


if __name__ == "__main__":
    main()
