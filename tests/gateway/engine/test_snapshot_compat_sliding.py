"""Checkpoints whose sliding windows hold every pane as an accumulator and every front stack entry restore, and
so do those that hold the back's accumulator.

``data/snapshot_v2_sliding_a7cd5b9.json`` was written by the engine of commit a7cd5b9 (snapshot version 2: each
pane of a sliding window as the accumulator's flat list, the front stack with every entry, and the back's panes
listed) after the first ``CUT`` messages of the stream below: ``json.dumps(engine.snapshot())``, compiled. Restored
into today's engine, it must continue exactly as today's engine does when it never stops; and today's snapshot of
it must restore the same way. ``data/snapshot_v3_sliding_76b8443.json`` was written the same way by commit 76b8443
(version 3: panes of one reading as readings, the front as its newest pane, the back as its first pane and its
accumulator, which version 4 no longer writes: it is made again from the panes).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from engine_helpers import Event, feed_events, late_rows, rows_close, whole_transfers, window_rows

from gateway.engine import Engine, parse_engine

DATA = Path(__file__).resolve().parent / "data"
OLD = DATA / "snapshot_v2_sliding_a7cd5b9.json"
V3 = DATA / "snapshot_v3_sliding_76b8443.json"
SPEC: dict[str, Any] = {
    "windows": [
        {"name": "s3", "kind": "sliding", "size": "10s", "slide": "1s", "metrics": ["x", "y", "z"],
         "allowed_lateness": "4s"},
        {"name": "s4", "kind": "sliding", "size": "6s", "slide": "2s", "metrics": ["x", "y", "z", "u"]},
        {"name": "s5", "kind": "sliding", "size": "9s", "slide": "3s", "metrics": ["x", "y", "z", "u", "q"],
         "allowed_lateness": "2s"},
        {"name": "sd", "kind": "sliding", "size": "8s", "slide": "2s", "metrics": ["x"],
         "aggregates": ["count", "sum", "first", "last"]},
        {"name": "site", "kind": "sliding", "size": "20s", "slide": "5s", "metrics": ["y"], "key": "site"},
    ]
}  # fmt: skip
T0 = 1_764_072_000_000
CUT = 1700


def events() -> list[Event]:
    rng = random.Random(11)  # the stream the fixture was written from: do not change
    out: list[Event] = []
    for i in range(3400):
        dev = f"d{rng.randrange(6)}"
        now = T0 + i * 200
        t = now - rng.choice([0, 0, 0, 0, 150, 900, 2500, 5000, 12000])
        names = rng.sample(["x", "y", "z", "u", "q"], rng.randrange(1, 6))
        vals: dict[str, float | int] = {}
        for m in names:
            u = rng.random()
            vals[m] = -0.0 if u < 0.03 else rng.randrange(-3, 4) if u < 0.15 else rng.uniform(-50, 50)
        out.append((dev, t, i, vals, now))
        if rng.random() < 0.05:  # a second reading in the same pane
            out.append((dev, t + 1, 100_000 + i, {"x": rng.uniform(0, 1)}, now))
    return out


def write_fixture() -> None:
    """How the fixture was written, with commit a7cd5b9's code (today's would write version 3)."""
    engine = Engine(parse_engine(SPEC))
    feed_events(engine, events()[:CUT])
    OLD.write_text(json.dumps(engine.snapshot(), separators=(",", ":")))


def _today_and_old(fixture: Path = OLD, whole: bool = True) -> tuple[list[Event], Engine, Engine]:
    """The stream; an engine that took its first ``CUT`` messages; one restored from the fixture (``whole``: both
    transferring whole windows, as the fixture's writer did)."""
    evs = events()
    today = Engine(parse_engine(SPEC))
    old = Engine(parse_engine(SPEC))
    if whole:
        whole_transfers(today)
        whole_transfers(old)
    feed_events(today, evs[:CUT])
    old.restore(json.loads(fixture.read_text()))
    return evs, today, old


@pytest.mark.parametrize("fixture", [OLD, V3], ids=["v2", "v3"])
def test_a_snapshot_with_accumulator_panes_and_whole_fronts_restores_and_continues_identically(fixture: Path) -> None:
    evs, today, old = _today_and_old(fixture)
    expected = [repr(o) for o in feed_events(today, evs[CUT:])]
    assert len(expected) > 3000
    assert [repr(o) for o in feed_events(old, evs[CUT:])] == expected


def test_a_version_3_snapshot_held_backs_that_version_4_makes_from_the_panes() -> None:
    """The fixture of version 3 has sliding keys with a back (its accumulator written out); today's snapshot of the
    same state writes none, and is version 4."""
    v3 = json.loads(V3.read_text())
    assert v3["version"] == 3
    assert sum(1 for w in v3["windows"].values() for k in w.get("keys", {}).values() if k["back_acc"]) >= 10
    _, today, _ = _today_and_old(V3)
    snap = today.snapshot()
    assert snap["version"] == 4
    assert all("back_acc" not in k for w in snap["windows"].values() for k in w.get("keys", {}).values())


@pytest.mark.parametrize("fixture", [OLD, V3], ids=["v2", "v3"])
def test_todays_snapshot_of_it_restores_and_continues_identically(fixture: Path) -> None:
    evs, today, old = _today_and_old(fixture)
    again = whole_transfers(Engine(parse_engine(SPEC)))
    again.restore(json.loads(json.dumps(old.snapshot())))
    assert json.dumps(again.snapshot()) == json.dumps(today.snapshot())
    assert [repr(o) for o in feed_events(again, evs[CUT:])] == [repr(o) for o in feed_events(today, evs[CUT:])]


@pytest.mark.parametrize("fixture", [OLD, V3], ids=["v2", "v3"])
def test_restored_into_an_engine_whose_keys_transfer_in_phases_it_continues_with_the_same_numbers(
    fixture: Path,
) -> None:
    """Restored into today's engine as it runs (each key transferring in a phase of its own), the fixture goes on
    with the same windows, counts, first and last readings, minima and maxima as an engine of today that never
    stopped, and sums, means and deviations equal but for their rounding (their panes are grouped at other
    transfers)."""
    evs, today, old = _today_and_old(fixture, whole=False)
    expected = feed_events(today, evs[CUT:])
    got = feed_events(old, evs[CUT:])
    assert len(expected) > 3000
    assert rows_close(window_rows(got), window_rows(expected))
    assert late_rows(got) == late_rows(expected)
    exact = {"count", "min", "max", "first", "last"}
    pick = [(r[:6], {k: v for k, v in r[6].items() if k in exact}) for r in window_rows(got)]
    assert pick == [(r[:6], {k: v for k, v in r[6].items() if k in exact}) for r in window_rows(expected)]
