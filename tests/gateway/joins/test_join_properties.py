"""The interval join against the brute-force reference on random fleets and random joins.

Streams come in order or with disorder inside the watermark bound, from live boards and from sleepy boards
that wake every few minutes and flush their buffer (device mode: the key's watermark waits for them), in both
watermark modes, with a snapshot and restore at a random point; the output must be every pair of the
reference, in its order. A flood of events that join nothing keeps the state bounded: by the interval once
the watermark moves, by ``max_events`` when it does not.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from join_helpers import BOUND_MS, T0, Message, Row, by_key, make_join, make_joins, pairs, reference, run, schedule

from gateway.model import Batch, Reading

DEVICES = ("a-1", "a-2", "b-1", "b-2", "c-1")
"""``a-*`` read x, ``b-*`` read y, ``c-1`` both (it may take part on both sides, even with itself)."""
BETWEEN = [
    "b.t BETWEEN a.t AND a.t + 2m",
    "b.t BETWEEN a.t - 2m AND a.t + 30s",
    "b.t BETWEEN a.t - 10s AND a.t - 5s",
    "b.t BETWEEN a.t AND a.t",
    "b.t BETWEEN a.t + 1m AND a.t + 3m",
]
A_WHERE = ["", "x > 1", "x in [1, 2]"]
B_WHERE = ["", "y < 2", "y < a.x", "y >= a.x + 1"]


@st.composite
def joins(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "name": "j",
        "key": "site",
        "between": draw(st.sampled_from(BETWEEN)),
        "allowed_lateness": draw(st.sampled_from(["0s", "30s"])),
        "a": {"devices": ["a-*", "c-*"], "metrics": ["x"], "where": draw(st.sampled_from(A_WHERE))},
        "b": {"devices": ["b-*", "c-*"], "metrics": ["y"], "where": draw(st.sampled_from(B_WHERE))},
    }


@st.composite
def fleets(draw: st.DrawFn) -> tuple[list[Row], dict[str, int]]:
    """Rows over two sites (each device reads at T0 first, so every key knows its devices from the start)."""
    rows: list[Row] = []
    for device in DEVICES:
        site = draw(st.sampled_from(["s1", "s2"]))
        n = draw(st.integers(0, 8))
        times = [T0, *sorted(T0 + draw(st.integers(0, 600)) * 1000 for _ in range(n))]
        for seq, t in enumerate(times):
            m: dict[str, Any] = {}
            if device[0] in "ac":
                m["x"] = draw(st.integers(0, 3))
            if device[0] in "bc":
                m["y"] = draw(st.integers(0, 3))
            rows.append((site, device, seq, t, m))
    sleepy = {d: draw(st.sampled_from([60_000, 180_000])) for d in DEVICES if draw(st.integers(0, 3)) == 0}
    return rows, sleepy


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=joins(), fleet=fleets(), seed=st.integers(0, 2**32 - 1), mode=st.sampled_from(["device", "global"]))
def test_every_join_result_in_order(
    raw: dict[str, Any], fleet: tuple[list[Row], dict[str, int]], seed: int, mode: str
) -> None:
    rows, sleepy = fleet
    rng = random.Random(seed)
    if mode == "global":
        sleepy = {}  # one watermark for all: a board's flush after a sleep is late there (docs/semantics.md)
    spec = make_join(raw)
    disorder = rng.random() < 0.7
    msgs = schedule(rows, sleepy, rng if disorder else None)
    snap = rng.randint(0, len(msgs)) if rng.random() < 0.5 else None
    end = T0 + 3_600_000
    out, op = run(make_joins([spec], mode), msgs, end, snapshot_at=snap)
    want = reference(spec, rows)
    assert by_key(pairs(out)) == by_key(want)
    if snap is not None:  # a restored operator goes on exactly as one never interrupted, across keys too
        assert pairs(out) == pairs(run(make_joins([spec], mode), msgs, end)[0])
    assert op.stats["late"] == 0 and op.stats["joined"] == len(want)
    # everything passed: nothing is kept that could still join
    assert all(not k.buf for k in op.keys.values())


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=joins(), fleet=fleets(), seed=st.integers(0, 2**32 - 1), mode=st.sampled_from(["device", "global"]))
def test_readings_later_than_the_bound_but_within_the_allowed_lateness_join_all_the_same(
    raw: dict[str, Any], fleet: tuple[list[Row], dict[str, int]], seed: int, mode: str
) -> None:
    """Delays up to the bound plus the allowed lateness: some readings arrive behind their key's watermark, join at
    once what is kept, and no pair is lost nor emitted twice (the order is then the arrival's)."""
    rows, sleepy = fleet
    raw = {**raw, "allowed_lateness": "30s"}
    spec = make_join(raw)
    msgs = schedule(rows, {} if mode == "global" else sleepy, random.Random(seed), BOUND_MS + 30_000)
    out, op = run(make_joins([spec], mode), msgs, T0 + 3_600_000)
    want = reference(spec, rows)
    assert sorted(pairs(out)) == sorted(want) and len(pairs(out)) == len(set(pairs(out)))
    assert op.stats["late"] == 0


def test_a_door_then_a_cold_reading_joins_once_per_pair() -> None:
    spec = make_join({
        "name": "door_cold", "between": "b.t BETWEEN a.t AND a.t + 2m",
        "a": {"devices": ["door-*"], "metrics": ["door"], "where": "door == 1"},
        "b": {"devices": ["th-*"], "metrics": ["temp_c"], "where": "temp_c < 18"},
    })  # fmt: skip
    rows: list[Row] = [
        ("s1", "door-1", 0, T0, {"door": 0}),
        ("s1", "th-1", 0, T0, {"temp_c": 21.0}),
        ("s1", "door-1", 1, T0 + 60_000, {"door": 1}),
        ("s1", "th-1", 1, T0 + 90_000, {"temp_c": 19.0}),
        ("s1", "th-1", 2, T0 + 150_000, {"temp_c": 17.5}),  # 90 s after the door: joins
        ("s1", "th-1", 3, T0 + 200_000, {"temp_c": 17.0}),  # 140 s after: too late
        ("s2", "th-2", 0, T0 + 100_000, {"temp_c": 10.0}),  # another site
    ]
    out, _ = run(make_joins([spec]), schedule(rows, {}, None), T0 + 3_600_000)
    assert pairs(out) == [("s1", ("door-1", 1, 1), ("th-1", 1, 2))]
    rec = out[0]
    assert rec.values() == {"a.door": 1, "b.temp_c": 17.5}
    line = rec.to_line()
    assert line.startswith("join,key=s1,name=door_cold,site=s1 ") and "offset_ms=90000i" in line


def test_a_property_key_joins_devices_of_different_sites() -> None:
    spec = make_join({
        "name": "pump_flow", "key": "property:line", "between": "b.t BETWEEN a.t - 10s AND a.t + 10s",
        "a": {"devices": ["pump-*"], "metrics": ["amps"], "where": "amps > 5"},
        "b": {"devices": ["flow-*"], "metrics": ["lpm"], "where": "lpm < 10"},
    })  # fmt: skip
    props = {"pump-1": {"line": "l1"}, "flow-9": {"line": "l1"}, "flow-2": {"line": "l2"}}
    rows: list[Row] = [
        ("plant", "pump-1", 0, T0, {"amps": 6.0}),
        ("yard", "flow-9", 0, T0 + 5_000, {"lpm": 3.0}),
        ("plant", "flow-2", 0, T0 + 5_000, {"lpm": 3.0}),  # line l2: no pump there
        ("plant", "flow-3", 0, T0 + 5_000, {"lpm": 3.0}),  # no line at all: not joined, counted
    ]
    op = make_joins([spec], **props)
    out, op = run(op, schedule(rows, {}, None), T0 + 3_600_000)
    assert pairs(out) == reference(spec, rows, props) == [("l1", ("pump-1", 1, 0), ("flow-9", 1, 0))]
    assert op.stats["unkeyed"] == 1


def test_a_group_key_joins_the_groups_devices_across_sites_and_no_others() -> None:
    from gateway.engine import parse_engine
    from gateway.groups import parse_groups
    from gateway.joins import Joins, JoinsSpec

    spec = make_join({
        "name": "gh", "key": "group:greenhouse", "between": "b.t BETWEEN a.t - 1m AND a.t + 1m",
        "a": {"metrics": ["door"], "where": "door == 1"}, "b": {"metrics": ["temp_c"], "where": "temp_c < 10"},
    })  # fmt: skip
    groups = parse_groups({"greenhouse": ["gh-*", "site:annex"]})
    op = Joins(JoinsSpec((spec,), parse_engine({}), {}, groups))
    rows: list[Row] = [
        ("north", "gh-door", 0, T0, {"door": 1}),
        ("south", "gh-th", 0, T0 + 10_000, {"temp_c": 5.0}),  # another site, same group: joins
        ("annex", "th-9", 0, T0 + 20_000, {"temp_c": 4.0}),  # in the group by its site: joins
        ("north", "th-1", 0, T0 + 5_000, {"temp_c": 3.0}),  # not in the group
    ]
    out, op = run(op, schedule(rows, {}, None), T0 + 3_600_000)
    assert pairs(out) == [
        ("greenhouse", ("gh-door", 1, 0), ("gh-th", 1, 0)),
        ("greenhouse", ("gh-door", 1, 0), ("th-9", 1, 0)),
    ]
    assert list(op.keys) == ["j:gh:greenhouse"]


def test_late_readings_within_the_allowed_lateness_still_join() -> None:
    spec = make_join({
        "name": "j", "between": "b.t BETWEEN a.t AND a.t + 1m", "allowed_lateness": "2m",
        "a": {"devices": ["a-*"], "metrics": ["x"]}, "b": {"devices": ["b-*"], "metrics": ["y"]},
    })  # fmt: skip
    op = make_joins([spec])

    def send(device: str, seq: int, t: int, m: dict[str, Any], now: int) -> list[Any]:
        return op.process_batch(Batch("s", device, "t", now, (Reading("s", device, 1, seq, t, "s", m),), ()), now)

    out = send("a-1", 0, T0, {"x": 1}, T0) + send("b-1", 0, T0, {"y": 0}, T0)
    out += send("b-1", 1, T0 + 300_000, {"y": 1}, T0 + 300_000)
    out += send("a-1", 1, T0 + 300_000, {"x": 1}, T0 + 300_000)  # both watermarks now at T0 + 295 s
    assert pairs(out) == [("s", ("a-1", 1, 0), ("b-1", 1, 0))]
    # 40 s behind the watermark (allowed: 2 min): joins the kept a at T0 + 300 s - 60 s... none; a at T0 + 250 s
    more = send("a-1", 2, T0 + 250_000, {"x": 2}, T0 + 300_000)
    more += send("b-1", 2, T0 + 260_000, {"y": 2}, T0 + 300_000)
    assert pairs(more) == [("s", ("a-1", 1, 2), ("b-1", 1, 2))]
    # 4 min behind: late, counted, not joined
    assert send("b-1", 3, T0 + 55_000, {"y": 3}, T0 + 300_000) == []
    assert op.stats["late"] == 1


def test_a_side_that_sleeps_past_its_idle_timeout_does_not_hold_state() -> None:
    """A door board announces a 60 s sleep, then falls silent for an hour while a thermometer reads every
    second: after 2 x 60 s + 30 s it is idle, the key's watermark follows the thermometer, and the kept events
    stay those of the interval. Had it announced a two-hour sleep, the key would wait for it (and keep all)."""
    spec = make_join({
        "name": "j", "between": "b.t BETWEEN a.t AND a.t + 2m",
        "a": {"devices": ["door-*"], "metrics": ["door"]}, "b": {"devices": ["th-*"], "metrics": ["temp_c"]},
    })  # fmt: skip
    sizes = {}
    for sleep_s in (60, 7200):
        op = make_joins([spec])
        msgs = [
            Message(T0 - 1, "s", "door-1", sleep_s=sleep_s),
            Message(T0, "s", "door-1", (("s", "door-1", 0, T0, {"door": 1}),)),
        ]
        msgs += [
            Message(T0 + i * 1000, "s", "th-1", (("s", "th-1", i, T0 + i * 1000, {"temp_c": 20.0}),))
            for i in range(3600)
        ]
        out = []
        peak = 0
        for m in msgs:
            got, op = run(op, [m])
            out += got
            peak = max(peak, op.events())
        sizes[sleep_s] = peak
        assert len(out) == (121 if sleep_s == 60 else 0)  # the door's 2 min; with a 2 h sleep: not yet released
    assert sizes[60] <= (120_000 + BOUND_MS) // 1000 + 40
    assert sizes[7200] > 3000


@settings(max_examples=60, deadline=None)
@given(
    max_events=st.integers(2, 50),
    n=st.integers(0, 400),
    step=st.sampled_from([0, 1, 1000]),
    seed=st.integers(0, 2**32 - 1),
)
def test_a_flood_of_unmatched_events_keeps_state_bounded(max_events: int, n: int, step: int, seed: int) -> None:
    """One side floods a key whose other side never reads anything: at most ``max_events`` events are held at
    any time (the rest shed or forced out, counted), whatever the times; with a watermark that moves (``step``
    > 0) the kept events are at most those of the interval plus the bound."""
    spec = make_join({
        "name": "j", "between": "b.t BETWEEN a.t AND a.t + 10s", "max_events": max_events,
        "a": {"devices": ["a-*"], "metrics": ["x"]}, "b": {"devices": ["b-*"], "metrics": ["y"]},
    })  # fmt: skip
    op = make_joins([spec])
    rng = random.Random(seed)
    op.process_batch(Batch("s", "b-1", "t", T0, (Reading("s", "b-1", 1, 0, T0, "s", {"z": 0}),), ()), T0)
    peak = 0
    for i in range(n):
        t = T0 + i * step + rng.randint(0, BOUND_MS)
        now = T0 + i * step + BOUND_MS
        op.process_batch(Batch("s", "a-1", "t", now, (Reading("s", "a-1", 1, i, t, "s", {"x": 1}),), ()), now)
        op.process_batch(Batch("s", "b-1", "t", now, (), (), now - BOUND_MS), now)  # b is live, reads nothing
        peak = max(peak, op.events())
        assert op.events() <= max_events
    assert op.stats["joined"] == 0
    if step == 0 and n > max_events:  # the watermark never passes them: the limit is what holds
        assert op.stats["shed"] + op.stats["late"] >= n - max_events
    if step == 1000 and n > 0:
        assert peak <= min(max_events, (10_000 + 2 * BOUND_MS) // step + 2)


@pytest.mark.parametrize("mode", ["device", "global"])
def test_snapshot_restore_round_trip_gives_the_same_state(mode: str) -> None:
    spec = make_join({
        "name": "j", "between": "b.t BETWEEN a.t - 1m AND a.t + 1m",
        "a": {"devices": ["a-*"], "metrics": ["x"]}, "b": {"devices": ["b-*"], "metrics": ["y"]},
    })  # fmt: skip
    rows: list[Row] = [
        ("s", d, i, T0 + i * 7_000, {"x" if d[0] == "a" else "y": i}) for d in ("a-1", "b-1") for i in range(20)
    ]
    msgs = schedule(rows, {}, random.Random(1))
    _, op = run(make_joins([spec], mode), msgs[: len(msgs) // 2])
    snap = op.snapshot()
    again = make_joins([spec], mode)
    again.restore(snap)
    assert again.snapshot() == snap and op.events() > 0
