"""Checkpoints written before the accumulators became ``Stat`` objects still restore.

``data/snapshot_v2_flat_lists.json`` was written by the engine of commit 05ad81d (snapshot version 2, one
flat list of numbers per window, pure Python) after the first half of the stream below. Restored into
today's engine, it must continue exactly as today's engine does when it never stops.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from engine_helpers import Event, feed_events, whole_transfers

from gateway.engine import Engine, parse_engine

OLD = Path(__file__).resolve().parent / "data" / "snapshot_v2_flat_lists.json"
SPEC = {
    "windows": [
        {"name": "t", "kind": "tumbling", "size": "10s", "metrics": ["x", "y"], "allowed_lateness": "5s"},
        {"name": "s", "kind": "sliding", "size": "30s", "slide": "5s", "metrics": ["x", "y"], "allowed_lateness": "5s"},
        {
            "name": "g",
            "kind": "session",
            "gap": "7s",
            "metrics": ["x"],
            "allowed_lateness": "3s",
            "aggregates": ["count", "first", "last", "stddev"],
        },
        {"name": "site", "kind": "tumbling", "size": "20s", "metrics": ["x"], "key": "site"},
    ]
}
T0 = 1_764_072_000_000
CUT = 1500


def events() -> list[Event]:
    rng = random.Random(7)  # the stream the fixture was written from: do not change
    out: list[Event] = []
    for i in range(3000):
        dev = f"d{rng.randrange(5)}"
        t = T0 + i * 300 - rng.choice([0, 0, 0, 800, 4000, 20000])
        vals: dict[str, float | int] = (
            {"x": rng.uniform(-5, 5), "y": rng.randrange(3)} if rng.random() < 0.8 else {"x": rng.uniform(0, 1)}
        )
        out.append((dev, t, i, vals, T0 + i * 300))
    return out


def test_a_version_2_snapshot_of_flat_lists_restores_and_continues_identically() -> None:
    evs = events()
    today = whole_transfers(Engine(parse_engine(SPEC)))
    feed_events(today, evs[:CUT])
    old = whole_transfers(Engine(parse_engine(SPEC)))
    old.restore(json.loads(OLD.read_text()))
    expected = [repr(o) for o in feed_events(today, evs[CUT:])]
    got = [repr(o) for o in feed_events(old, evs[CUT:])]
    assert len(expected) > 1000
    assert any("first=" in o or "'first'" in o for o in expected)  # first/last by (t, boot, seq) are compared too
    assert got == expected
