"""Throughput of the interval join operator alone (no MQTT, no sinks), and its state per open key.

Reproduce (from the repository root)::

    python bench/bench_join.py                 # 20 sites x 10 boards, 300,000 readings, 5 rounds
    python bench/bench_join.py -n 50000 -r 3   # quicker

(a) ``door_then_cold`` (``b.t BETWEEN a.t - 2m AND a.t + 30s``, keyed by site) over ``--sites`` sites, each with a
    door board and ``--boards - 1`` thermometers reading once a second (5% of readings delayed 0-3 s: disorder
    inside the 5 s bound), batches of 5 readings of one board; a door opens on 2% of its readings, a
    thermometer reads cold on 5% of its readings: every door joins a few cold readings. Prints readings/s and
    joined records/s (median and spread, min-max, over the rounds; CPU time of ``Joins.process_batch`` only,
    readings generated outside the timed loop), and the state per open key when the stream ends: events held
    (waiting for the watermark and kept for the interval) and bytes (``bench/memsize.deep_size``).
(b) a flood of unmatched events: one key's door board opens its door on every reading (ten a second) and no
    thermometer ever reads cold, with ``max_events`` 1,000. With a thermometer reading on time the watermark
    moves and the key holds the doors of the last 35 s (their interval ends 30 s after them, the bound is 5 s);
    with one that announced an hour's sleep the watermark waits and ``max_events`` alone holds the state: the
    events held and the bytes of the key stay flat as the stream grows (the oldest are shed, counted).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from memsize import deep_size

from gateway.engine import parse_engine
from gateway.joins import Joins, JoinsSpec, parse_join
from gateway.model import Batch, Reading

T0 = 1_764_072_000_000
NOW = T0 + 365 * 86_400_000
JOIN = {
    "name": "door_then_cold",
    "between": "b.t BETWEEN a.t - 2m AND a.t + 30s",
    "a": {"devices": ["door-*"], "metrics": ["door"], "where": "door == 1"},
    "b": {"devices": ["th-*"], "metrics": ["temp_c"], "where": "temp_c < 10"},
}


def make(max_events: int = 10_000) -> Joins:
    engine = parse_engine({"engine": {"watermark": {"out_of_orderness": "5s"}}})
    return Joins(JoinsSpec((parse_join({**JOIN, "max_events": max_events}),), engine))


def stream(n: int, sites: int, boards: int, seed: int) -> list[Batch]:
    """``n`` readings as batches of 5 of one board, in arrival order."""
    rng = random.Random(seed)
    devices = [(f"s{s}", f"door-{s}" if b == 0 else f"th-{s}-{b}") for s in range(sites) for b in range(boards)]
    seqs = dict.fromkeys((d for _, d in devices), 0)
    arrivals: list[tuple[int, int, Reading]] = []
    t = 0
    k = 0
    while len(arrivals) < n:
        for site, dev in devices:
            if dev.startswith("door"):
                m: dict[str, float] = {"door": 1.0 if rng.random() < 0.02 else 0.0}
            else:
                m = {"temp_c": 5.0 if rng.random() < 0.05 else 20.0}
            seqs[dev] += 1
            at = T0 + t * 1000 + (rng.randint(0, 3000) if rng.random() < 0.05 else 0)
            arrivals.append((at, k, Reading(site, dev, 1, seqs[dev], T0 + t * 1000, "s", m)))
            k += 1
        t += 1
    arrivals.sort(key=lambda x: (x[0], x[1]))
    pending: dict[str, list[Reading]] = {}
    out: list[Batch] = []
    for _, _, r in arrivals[:n]:
        buf = pending.setdefault(r.device, [])
        buf.append(r)
        if len(buf) == 5:
            out.append(Batch(r.site, r.device, "t", NOW, tuple(buf), ()))
            pending[r.device] = []
    return out


def run_a(n: int, sites: int, boards: int, seed: int) -> tuple[float, float, int, float, float]:
    """(readings/s, joins/s, joined, events per open key, bytes per open key)."""
    batches = stream(n, sites, boards, seed)
    readings = sum(len(b.readings) for b in batches)
    op = make()
    joined = 0
    start = time.process_time()
    for b in batches:
        joined += len(op.process_batch(b, NOW))
    cpu = time.process_time() - start
    keys = len(op.keys)
    return readings / cpu, joined / cpu, joined, op.events() / keys, deep_size(op.keys) / keys


def run_b(n: int, live: bool) -> list[tuple[int, int, int, int]]:
    """(readings in, events held, bytes of the key, shed) at four points of a flood on one key: a door opening on
    every reading, ten a second, that no cold reading ever joins. ``live``: the thermometer reads on time (the
    watermark moves); else it read once and sleeps for an hour (announced: the watermark waits for it)."""
    from gateway.model import StatusUpdate

    op = make(max_events=1_000)
    op.process_status(StatusUpdate("s", "th-1", "t", NOW, "online", {"sleep_s": 3600}))
    op.process_batch(Batch("s", "th-1", "t", NOW, (Reading("s", "th-1", 1, 0, T0, "s", {"temp_c": 20.0}),), ()), NOW)
    out = []
    seq = 0
    for step in range(1, 5):
        while seq < n * step // 4:
            rs = tuple(Reading("s", "door-1", 1, seq + i, T0 + (seq + i) * 100, "s", {"door": 1.0}) for i in range(5))
            seq += 5
            op.process_batch(Batch("s", "door-1", "t", NOW, rs, ()), NOW)
            if live:
                th = (Reading("s", "th-1", 1, seq, T0 + seq * 100, "s", {"temp_c": 20.0}),)
                op.process_batch(Batch("s", "th-1", "t", NOW, th, ()), NOW)
        out.append((seq, op.events(), deep_size(op.keys), op.stats["shed"]))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=300_000, help="readings in (a) (default 300,000)")
    ap.add_argument("-r", "--rounds", type=int, default=5, help="rounds of (a) (default 5)")
    ap.add_argument("--sites", type=int, default=20)
    ap.add_argument("--boards", type=int, default=10, help="boards a site: one door, the others thermometers")
    ap.add_argument("--flood", type=int, default=200_000, help="readings of the flood (b) (default 200,000)")
    args = ap.parse_args(argv)
    rows = [run_a(args.n, args.sites, args.boards, seed) for seed in range(args.rounds)]

    def show(i: int, fmt: str = "{:,.0f}") -> str:
        vals = [r[i] for r in rows]
        return f"{fmt.format(statistics.median(vals))} ({fmt.format(min(vals))}-{fmt.format(max(vals))})"

    print(f"(a) {args.n:,} readings, {args.sites} sites x {args.boards} boards, {args.rounds} rounds, median (min-max)")
    print(f"    readings/s            {show(0)}")
    print(f"    joins/s               {show(1)}")
    print(f"    joined records        {show(2)}")
    print(f"    events per open key   {show(3, '{:,.1f}')}")
    print(f"    bytes per open key    {show(4)}")
    for live in (True, False):
        how = "live thermometer: the watermark moves" if live else "sleeping thermometer: max_events holds"
        print(f"(b) flood of unmatched door events on one key, max_events = 1,000, {how}")
        for seq, events, size, shed in run_b(args.flood, live):
            print(f"    after {seq:>9,} readings: {events:>6,} events held, {size:>10,} bytes, {shed:>9,} shed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
