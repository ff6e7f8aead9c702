"""Patterns keyed by a declared group (``key = "group:NAME"``): steps from different devices of the group, the
same timeout and disorder rules as a site key, the group waiting for its members' watermarks (fleet rules).

The property test compares every match with the brute-force matcher over the group members' readings merged in
event-time order, in order and with disorder inside the bound, with a sleepy member that sends its readings in
bursts long after taking them (its flushed marker moves its watermark); a device outside the group must not
change anything."""

from __future__ import annotations

import dataclasses
import json
import random
from typing import Any

import pytest
from cep_helpers import NOW, T0, Row, events
from cep_reference import reference_matches
from helpers import sleepy_deliveries
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_cep_properties import patterns

from gateway.cep import Cep, CepSpec, Match, Pattern, PatternSpec
from gateway.config import parse_config
from gateway.engine import parse_engine
from gateway.errors import ConfigError
from gateway.groups import parse_groups
from gateway.model import Batch, Reading, StatusUpdate

SITES = {"d0": "site-a", "d1": "site-a", "d2": "site-b", "d3": "site-b"}
GROUPS = parse_groups({"g": ["d0", "site:site-b"]})  # d0, d2, d3; d1 is in no group
MEMBERS = ("d0", "d2", "d3")
SLEEPY = "d3"
BOUND = 5_000


def make(patterns: tuple[PatternSpec, ...], mode: str = "device", **kw: Any) -> Cep:
    engine = parse_engine({"engine": {"watermark": {"mode": mode, "out_of_orderness": f"{BOUND}ms"}}})
    return Cep(CepSpec(patterns, engine, groups=GROUPS, **kw))


def batch(device: str, rows: list[Row], flushed: int | None = None, now: int = NOW) -> Batch:
    site = SITES[device]
    readings = tuple(Reading(site, d, 1, seq, t, "s", dict(m)) for d, seq, t, m in rows)
    return Batch(site, device, "t", now, readings, (), flushed)


def deliveries(rows: list[Row], rng: random.Random | None) -> list[tuple[int, int, str, list[Row], int | None]]:
    """The rows as this file's fleet delivers them, ``SLEEPY`` in bursts (:func:`helpers.sleepy_deliveries`)."""
    return sleepy_deliveries(rows, rng, SITES, SLEEPY, BOUND, T0)


def run(cep: Cep, rows: list[Row], rng: random.Random | None) -> list[Match]:
    out: list[Match] = []
    for _, _, device, chunk, flushed in deliveries(rows, rng):
        out.extend(cep.process_batch(batch(device, chunk, flushed), NOW))
    end = max((r[2] for r in rows), default=T0) + 3_600_000
    for device in SITES:
        out.extend(cep.process_batch(batch(device, [], end), NOW))
    return out


@st.composite
def group_streams(draw: st.DrawFn) -> list[Row]:
    n = draw(st.integers(0, 11))
    t = T0
    rows: list[Row] = []
    seqs = dict.fromkeys(SITES, 0)
    for _ in range(n):
        t += draw(st.sampled_from([0, 500, 1_000, 2_000, 4_000]))
        d = draw(st.sampled_from(sorted(SITES)))
        m: dict[str, Any] = {}
        if draw(st.integers(0, 5)):
            m["a"] = draw(st.integers(0, 3))
        if draw(st.booleans()):
            m["k"] = draw(st.sampled_from(["x", "y"]))
        if not m:
            m["other"] = 1
        rows.append((d, seqs[d], t, m))
        seqs[d] += 1
    return rows


def group_pattern(spec: PatternSpec, key: str = "group:g") -> PatternSpec:
    return PatternSpec(spec.name, spec.steps, key, spec.within_ms, spec.severity, spec.skip)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(patterns(), group_streams(), st.integers(0, 2**32 - 1), st.booleans(), st.sampled_from(["group:g", "group"]))
def test_group_pattern_equals_brute_force(
    spec: PatternSpec, rows: list[Row], seed: int, disorder: bool, key: str
) -> None:
    spec = group_pattern(spec, key)
    cep = make((spec,))
    got = run(cep, rows, random.Random(seed) if disorder else None)
    members = [r for r in rows if r[0] in MEMBERS]
    assert [m.readings for m in got] == reference_matches(spec, events(members))
    assert all(m.key == "g" and m.site == SITES[m.readings[0][0]] for m in got)
    assert cep.stats["late"] == 0
    assert cep.partial_matches() == 0 or spec.within_ms is None
    assert cep.buffered() == 0


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(patterns(), group_streams(), st.integers(0, 2**32 - 1), st.booleans())
def test_group_pattern_fast_path_every_arrival_alert_gets_one_verdict(
    spec: PatternSpec, rows: list[Row], seed: int, disorder: bool
) -> None:
    """``on = "both"`` on a group key: the event-time alerts are the brute force's, and every arrival alert ends
    confirmed or retracted, exactly once (the sleepy member's bursts make arrival order differ from event time)."""
    spec = dataclasses.replace(group_pattern(spec), on="both")
    cep = make((spec,))
    out = run(cep, rows, random.Random(seed) if disorder else None)
    fast = [m for m in out if m.path == "arrival" and not m.verdict]
    retracted = [m for m in out if m.verdict == "retracted"]
    slow = [m for m in out if m.path == "event_time"]
    assert len(fast) + len(retracted) + len(slow) == len(out)
    assert [m.readings for m in slow] == reference_matches(spec, events([r for r in rows if r[0] in MEMBERS]))
    settled = [m.refers for m in slow if m.verdict == "confirmed"] + [m.refers for m in retracted]
    assert sorted(settled) == sorted(m.alert_id() for m in fast)
    assert all(m.key == "g" for m in out)


def pump(name: str = "pump_fault", within: str = "30s") -> PatternSpec:
    return (
        Pattern.begin("current").where("current_a > 10")
        .followed_by("flow").where("flow_lpm < 2")
        .within(within)
        .build(name, key="group:g", severity="critical")
    )  # fmt: skip


def test_steps_from_two_boards_of_the_group_and_not_from_outside() -> None:
    cep = make((pump(),))
    hello = [cep.process_batch(batch(d, [], T0 - 1), NOW) for d in SITES]
    assert hello == [[]] * 4
    out = cep.process_batch(batch("d0", [("d0", 0, T0 + 1_000, {"current_a": 12.0})]), NOW)
    # the flow drop on d1 (no group) is not the group's; on d2 it is
    out += cep.process_batch(batch("d1", [("d1", 0, T0 + 2_000, {"flow_lpm": 1.0})]), NOW)
    out += cep.process_batch(batch("d2", [("d2", 0, T0 + 3_000, {"flow_lpm": 1.5})]), NOW)
    assert out == []  # d3 (a member) has said nothing since T0: the group waits for it
    out += cep.process_batch(batch("d3", [], T0 + 10_000), NOW)
    out += cep.process_batch(batch("d0", [], T0 + 10_000), NOW)
    out += cep.process_batch(batch("d2", [], T0 + 10_000), NOW)
    assert [m.readings for m in out] == [(("d0", 1, 0), ("d2", 1, 0))]
    (m,) = out
    assert (m.key, m.site, m.to_alert().key, m.details) == ("g", "site-a", "g", {"current.current_a": 12.0,
                                                                                 "flow.flow_lpm": 1.5})  # fmt: skip


def test_a_member_asleep_past_its_idle_time_does_not_hold_the_group() -> None:
    cep = make((pump(),))
    t = NOW
    cep.process_status(StatusUpdate("site-b", "d3", "t", t, "online", {"sleep_s": 60}))
    cep.process_batch(batch("d3", [("d3", 0, T0, {"current_a": 0.0})], T0, now=t), t)  # then sleeps
    cep.process_batch(batch("d0", [("d0", 0, T0 + 1_000, {"current_a": 12.0})], now=t), t)
    out = cep.process_batch(batch("d2", [("d2", 0, T0 + 3_000, {"flow_lpm": 1.0})], T0 + 20_000, now=t), t)
    out += cep.process_batch(batch("d0", [], T0 + 20_000, now=t), t)
    assert out == []  # d3's watermark (T0 + 1) holds the group while it may still send
    assert cep.advance(t + 60_000) == []  # within 2 x 60 s + 30 s it counts as asleep, not gone
    late = cep.advance(t + 151_000)  # past it: idle, the group goes on without it
    assert [m.readings for m in late] == [(("d0", 1, 0), ("d2", 1, 0))]


def test_a_member_that_said_online_but_sent_nothing_yet_holds_the_group() -> None:
    """A sleepy board says online, then takes readings for 10 minutes before its first flush: the group waits for
    that flush (its readings are not late), until the board would count as idle."""
    cep = make((pump(),))
    t = NOW
    cep.process_status(StatusUpdate("site-b", "d3", "t", t, "online", {"sleep_s": 600}))
    out = cep.process_batch(batch("d0", [("d0", 0, T0 + 1_000, {"current_a": 12.0})], T0 + 300_000, now=t), t)
    out += cep.process_batch(batch("d2", [], T0 + 300_000, now=t), t)
    assert out == [] and cep.group_wm("g", t) is None
    t += 600_000  # the first flush: the flow fell 20 s after the overcurrent
    out = cep.process_batch(batch("d3", [("d3", 0, T0 + 21_000, {"flow_lpm": 1.0})], T0 + 600_000, now=t), t)
    assert [m.readings for m in out] == [(("d0", 1, 0), ("d3", 1, 0))] and cep.stats["late"] == 0
    # one that never sends anything stops holding it once idle (2 x 600 s + 30 s after its status)
    cep.process_status(StatusUpdate("site-b", "d1x", "t", t, "online", {"sleep_s": 600}))
    assert cep.group_wm("g", t + 1_230_000) is None
    assert cep.group_wm("g", t + 1_231_000) is not None


def test_group_keys_in_global_mode_use_the_global_watermark() -> None:
    cep = make((pump(),), mode="global")
    cep.process_batch(batch("d0", [("d0", 0, T0 + 1_000, {"current_a": 12.0})]), NOW)
    cep.process_batch(batch("d2", [("d2", 0, T0 + 3_000, {"flow_lpm": 1.0})]), NOW)
    out = cep.process_batch(batch("d1", [("d1", 0, T0 + 60_000, {"x": 1.0})]), NOW)  # any device's time
    assert [m.readings for m in out] == [(("d0", 1, 0), ("d2", 1, 0))]


def test_state_stays_bounded_under_a_flood_with_a_silent_member() -> None:
    """A member floods the group with starts that never finish while another member has gone silent: runs stay
    at max_runs, shared fairly (the other member's run survives), and the buffer empties once the silent member
    is idle, however long the flood."""
    never = Pattern.begin("a").where("x >= 0").followed_by("b").where("x < -100").build("never", key="group:g")
    cep = make((never,), max_runs=50)
    t = NOW
    cep.process_batch(batch("d3", [], T0, now=t), t)  # says hello, then is silent
    cep.process_batch(batch("d2", [("d2", 0, T0 + 1, {"x": 1.0})], T0 + 1, now=t), t)
    sizes = []
    for i in range(2_000):
        now = t + i * 1_000
        cep.process_batch(batch("d0", [("d0", i, T0 + 10 + i * 1_000, {"x": 1.0})], now=now), now)
        cep.process_batch(batch("d2", [], T0 + 10 + i * 1_000, now=now), now)
        if i % 100 == 0:
            cep.advance(now)
            sizes.append((cep.partial_matches(), cep.buffered()))
    runs = cep.keys["g:g"].runs[0]
    assert max(p for p, _ in sizes) <= 50 and len(runs) == 50
    assert any(r.start[1] == "d2" for r in runs)  # the flooder evicted only its own
    # d3 holds the group for its idle timeout (600 s, a reading a second), then nothing waits for it any more
    assert max(b for _, b in sizes) <= 610
    assert max(b for _, b in sizes[7:]) <= 6  # the 5 s bound: 6 readings a second apart
    assert cep.stats["evicted"] > 1_000


def test_snapshot_restore_keeps_members_and_group_state() -> None:
    rows: list[Row] = [("d0", 0, T0 + 1_000, {"current_a": 12.0}), ("d2", 0, T0 + 3_000, {"flow_lpm": 1.0})]
    whole = run(make((pump(),)), rows, None)
    cep = make((pump(),))
    for d in SITES:
        cep.process_batch(batch(d, [], T0 - 1), NOW)
    cep.process_batch(batch("d0", rows[:1]), NOW)
    again = make((pump(),))
    again.restore(cep.snapshot())
    assert again.members == {"g": ["d0", "d2", "d3"]}
    out = again.process_batch(batch("d2", rows[1:]), NOW)
    end = T0 + 3_600_000
    for d in SITES:
        out += again.process_batch(batch(d, [], end), NOW)
    assert [m.readings for m in out] == [m.readings for m in whole] == [(("d0", 1, 0), ("d2", 1, 0))]


def test_a_device_that_moved_stays_a_member_of_its_old_sites_group_after_a_restore() -> None:
    """d2 (site-b, a member of g through ``site:site-b``) moves to site-a: it stays a member of g, whose watermark
    waits for it, and a restore keeps it so (the members were made again from each device's current site: d2 left
    g, and the group key's watermark went past readings the uninterrupted run still held); a snapshot from before
    the members were in it restores as before."""
    cep = make((pump(),))
    for d in SITES:
        cep.process_batch(batch(d, [], T0 - 1), NOW)
    cep.move_device("d2", "site-a")
    assert cep.members == {"g": ["d0", "d2", "d3"]}
    snap = json.loads(json.dumps(cep.snapshot()))
    again = make((pump(),))
    again.restore(snap)
    assert again.members == cep.members
    rows: list[Row] = [("d0", 0, T0 + 1_000, {"current_a": 12.0}), ("d3", 0, T0 + 3_000, {"flow_lpm": 1.0})]
    for c in (cep, again):
        for d, seq, t, m in rows:
            c.process_batch(batch(d, [(d, seq, t, m)], T0 + 20_000), NOW)
    # d2 holds the group back (at its flushed marker + 1): both readings wait in the group key
    assert again.group_wm("g", NOW) == cep.group_wm("g", NOW) == cep.tracker.device_wm("d2", BOUND) == T0
    assert again.buffered() == cep.buffered() == 2
    assert again.snapshot() == cep.snapshot()
    older = make((pump(),))
    older.restore({k: v for k, v in snap.items() if k != "members"})
    assert older.members == {"g": ["d0", "d3"]}  # made again from the sites: d2 is at site-a now


def test_config_refuses_a_pattern_on_an_undeclared_group() -> None:
    doc: dict[str, Any] = {
        "patterns": [{"name": "p", "key": "group:pumps", "steps": [{"name": "a", "where": "x > 1"}]}]
    }
    try:
        parse_config(doc, env={})
    except ConfigError as exc:
        assert "patterns[p].key: 'group:pumps' names no declared group; declared: none" in str(exc)
    else:
        raise AssertionError("accepted")
    cfg = parse_config({**doc, "groups": {"pumps": ["p-*"]}}, env={})
    assert cfg.patterns[0].key == "group:pumps"


def test_key_group_runs_the_pattern_in_every_declared_group() -> None:
    groups = parse_groups({"p1": ["a*"], "p2": ["b*"]})
    engine = parse_engine({"engine": {"watermark": {"out_of_orderness": f"{BOUND}ms"}}})
    spec = (
        Pattern.begin("current").where("current_a > 10").followed_by("flow").where("flow_lpm < 2")
        .within("30s").build("pump_fault", key="group")
    )  # fmt: skip
    cep = Cep(CepSpec((spec,), engine, groups=groups))
    assert cep.group_names == ("p1", "p2")
    out = []
    for d, seq, t, m in [("a1", 0, 1_000, {"current_a": 12.0}), ("b1", 0, 2_000, {"flow_lpm": 1.0}),
                         ("a2", 0, 3_000, {"flow_lpm": 1.0}), ("b2", 0, 4_000, {"current_a": 11.0}),
                         ("b1", 1, 5_000, {"flow_lpm": 0.5})]:  # fmt: skip
        r = Reading("s", d, 1, seq, T0 + t, "s", m)
        out += cep.process_batch(Batch("s", d, "t", NOW, (r,), (), T0 + t), NOW)
    for d in ("a1", "a2", "b1", "b2"):
        out += cep.process_batch(Batch("s", d, "t", NOW, (), (), T0 + 60_000), NOW)
    assert [(m.key, m.readings) for m in out] == [("p1", (("a1", 1, 0), ("a2", 1, 0))),
                                                  ("p2", (("b2", 1, 0), ("b1", 1, 1)))]  # fmt: skip
    with pytest.raises(ConfigError, match="'group' runs the pattern in every declared group, and none"):
        parse_config({"patterns": [{"name": "p", "key": "group", "steps": [{"name": "a", "where": "x > 1"}]}]}, env={})


def test_the_documented_group_pattern_is_valid() -> None:
    import re
    import tomllib
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[3] / "docs" / "cep.md").read_text(encoding="utf-8")
    (block,) = [b for b in re.findall(r"```toml\n(.*?)```", doc, re.S) if 'key = "group:' in b]
    cfg = parse_config(tomllib.loads(block), env={})
    assert [(p.name, p.key) for p in cfg.patterns] == [("pump_fault", "group:pump_1")]
    assert cfg.groups.index().groups_of("pump1-a", "x") == ("pump_1",)


def test_a_device_moved_into_a_group_before_it_was_heard_from_holds_nothing() -> None:
    """A device the operator has never heard from, moved to a site that makes it a member of a keyed group, is not
    active (nothing was heard from it): the group goes on on its other members' time, and neither the group's
    watermark nor time alone raises (it did: the tracker looked the unknown device up)."""
    p = Pattern.begin("hot").where("temp_c > 80").followed_by("cool").where("temp_c < 30").build("g", key="group:g")
    c = Cep(CepSpec((p,), parse_engine({}), groups=parse_groups({"g": ["site:b"]})))
    hot = Reading("b", "d1", 1, 1, T0, "s", {"temp_c": 90.0})
    assert c.process_batch(Batch("b", "d1", "t", T0, (hot,), ()), T0) == []
    c.move_device("dx", "b")
    assert c.members["g"] == ["d1", "dx"]
    assert c.advance(T0 + 60_000) == []
    assert c.group_wm("g", T0 + 60_000) == c.tracker.device_wm("d1", 5_000)
    cool = Reading("b", "d1", 1, 2, T0 + 1_000, "s", {"temp_c": 20.0})
    got = c.process_batch(Batch("b", "d1", "t", T0 + 1_000, (cool,), (), T0 + 1_000), T0 + 60_000)
    assert [m.readings for m in got] == [(("d1", 1, 1), ("d1", 1, 2))]
