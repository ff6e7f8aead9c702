"""A join key's watermark from a heap of its members (``Joins.fleets``) against the tracker's walk over every
member, which it replaces: the same joined records, in the same order, and the same state."""

from __future__ import annotations

import json
import random

from join_helpers import T0, make_join

from gateway.engine import parse_engine
from gateway.joins import Joins, JoinsSpec
from gateway.model import Batch, Reading, StatusUpdate


def _run(seed: int, walk: bool, devices: int) -> tuple[list[str], str]:
    """Doors and thermometers on three sites (a site-keyed join) that sleep, go offline, come back and move site,
    with the gateway's clock stepping back, time alone moving on, a restore half way and one in place."""
    spec = make_join({
        "name": "door_then_cold", "key": "site", "between": "b.t BETWEEN a.t - 20s AND a.t + 10s",
        "a": {"devices": ["door-*"], "metrics": ["door"], "where": "door == 1"},
        "b": {"devices": ["th-*"], "metrics": ["temp_c"], "where": "temp_c < 10"},
    })  # fmt: skip
    wm = {"out_of_orderness": "2s", "idle_timeout": "20s", "idle_grace": "2s"}
    engine = parse_engine({"engine": {"watermark": wm}})

    def new() -> Joins:
        op = Joins(JoinsSpec((spec,), engine, {}))
        op.fleets.walk = walk
        return op

    op = new()
    rng = random.Random(seed)
    outs: list[str] = []
    clock = T0
    names = [f"door-{i}" if i % 4 == 0 else f"th-{i}" for i in range(devices)]
    sites = {d: "abc"[i % 3] for i, d in enumerate(names)}
    for i in range(1500):
        if i == 700:
            snap = json.loads(json.dumps(op.snapshot()))
            op = new()
            op.restore(snap)
        if i == 1100:  # restored in place
            op.restore(json.loads(json.dumps(op.snapshot())))
        clock += rng.choice([0, 100, 400, 1500])
        if rng.random() < 0.02:
            clock -= 3000  # the gateway's clock steps back
        dev = names[rng.randrange(devices if rng.random() < 0.9 else 3)]
        u = rng.random()
        if u < 0.05:
            state = rng.choice(["online", "offline", "sleeping"])
            fields = {"sleep_s": float(rng.choice([1, 5, 30]))} if rng.random() < 0.5 else {}
            got = op.process_status(StatusUpdate(sites[dev], dev, "", clock, state, fields))
        elif u < 0.07:
            sites[dev] = rng.choice("abc")
            op.move_device(dev, sites[dev])
            got = []
        elif u < 0.12:
            got = op.advance(clock + rng.choice([0, 5000, 30000]))
        else:
            t = clock - rng.choice([0, 0, 200, 2500, 9000])
            m = {"door": rng.choice([0, 1])} if dev.startswith("door") else {"temp_c": rng.choice([5.0, 20.0])}
            flushed = t if rng.random() < 0.05 else None
            r = Reading(sites[dev], dev, 1, i, t, rng.choice("sssu"), m)
            got = op.process_batch(Batch(sites[dev], dev, "t", clock, (r,), (), flushed), clock + 10)
        outs += [repr(j) for j in got]
    return outs, json.dumps(op.snapshot())


def test_join_keys_from_fleet_heaps_give_what_walking_the_members_gives() -> None:
    for seed in range(8):
        devices = (6, 24, 60)[seed % 3]
        heaps = _run(seed, walk=False, devices=devices)
        walk = _run(seed, walk=True, devices=devices)
        assert len(heaps[0]) > 50
        assert heaps == walk
