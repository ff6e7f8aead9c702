"""Group-relative values (``[windows.relative]``): every value against a brute-force reference, in order and with
disorder inside the bound, with a sleepy member that sends bursts long after taking its readings; a member asleep
past its idle time does not hold its group; the state stays bounded under a flood; configuration errors."""

from __future__ import annotations

import dataclasses
import json
import math
import random
import statistics
from typing import Any

import pytest
from helpers import sleepy_deliveries
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config import parse_config
from gateway.engine import Engine, parse_engine
from gateway.errors import ConfigError
from gateway.groups import parse_groups
from gateway.model import Batch, Reading, StatusUpdate
from gateway.relative import GroupRelative, RelativeResult

T0 = 1_764_072_000_000
NOW = T0 + 86_400_000
SIZE = 10_000
BOUND = 5_000
SITES = {"d0": "a", "d1": "a", "d2": "b", "d3": "b", "d4": "b"}
GROUPS = {"g1": ["d0", "d1", "d2"], "g2": ["site:b"], "g3": ["d4"]}  # d2 in two groups; d4 alone in g3
MEMBERS = {"g1": ("d0", "d1", "d2"), "g2": ("d2", "d3", "d4"), "g3": ("d4",)}
SLEEPY = "d3"

Row = tuple[str, int, int, float]  # device, seq, t, temp_c


def setup(
    baseline: str = "median", mode: str = "device", min_others: int = 1, **relative: Any
) -> tuple[Engine, GroupRelative]:
    rel = {"baseline": baseline, "min_others": min_others, **relative}
    doc = {
        "engine": {"watermark": {"mode": mode, "out_of_orderness": f"{BOUND}ms"}},
        "windows": [{"name": "w", "kind": "tumbling", "size": f"{SIZE}ms", "metrics": ["temp_c"],
                     "aggregates": ["count", "mean"], "relative": rel}],
    }  # fmt: skip
    spec = parse_engine(doc)
    return Engine(spec), GroupRelative(spec, parse_groups(GROUPS))


def batch(device: str, rows: list[Row], flushed: int | None = None, now: int = NOW) -> Batch:
    site = SITES[device]
    readings = tuple(Reading(site, d, 1, seq, t, "s", {"temp_c": v}) for d, seq, t, v in rows)
    return Batch(site, device, "t", now, readings, (), flushed)


def send(engine: Engine, rel: GroupRelative, b: Batch, now: int = NOW) -> list[RelativeResult]:
    return rel.process_batch(b, engine.process_batch(b, now), now)


def deliveries(rows: list[Row], rng: random.Random | None) -> list[tuple[int, int, str, list[Row], int | None]]:
    """The rows as this file's fleet delivers them, ``SLEEPY`` in bursts (:func:`helpers.sleepy_deliveries`)."""
    return sleepy_deliveries(rows, rng, SITES, SLEEPY, BOUND, T0)


def run(engine: Engine, rel: GroupRelative, rows: list[Row], rng: random.Random | None) -> list[RelativeResult]:
    out: list[RelativeResult] = []
    for _, _, device, chunk, flushed in deliveries(rows, rng):
        out += send(engine, rel, batch(device, chunk, flushed))
    end = max((r[2] for r in rows), default=T0) + 3_600_000
    for device in SITES:
        out += send(engine, rel, batch(device, [], end))
    return out


def reference(rows: list[Row], how: str, min_others: int) -> list[tuple[int, str, str, float, float, int]]:
    """(start, group, device, value, baseline, others) for every member with readings in a window, straight from
    the definition: value = the mean of its readings there, baseline = the median/mean of the other members'."""
    means: dict[tuple[int, str], list[float]] = {}
    for d, _, t, v in rows:
        means.setdefault(((t - T0) // SIZE * SIZE + T0, d), []).append(v)
    out = []
    for (start, d), vs in sorted(means.items()):
        for g, members in sorted(MEMBERS.items()):
            if d not in members:
                continue
            others = [statistics.fmean(means[(start, o)]) for o in sorted(members) if o != d and (start, o) in means]
            if len(others) < min_others:
                continue
            base = statistics.median(others) if how == "median" else statistics.fmean(others)
            out.append((start, g, d, statistics.fmean(vs), base, len(others)))
    return out


@st.composite
def rows_(draw: st.DrawFn) -> list[Row]:
    t = T0
    seqs = dict.fromkeys(SITES, 0)
    rows: list[Row] = []
    for _ in range(draw(st.integers(0, 30))):
        t += draw(st.sampled_from([0, 700, 2_000, 4_000, 9_000]))
        d = draw(st.sampled_from(sorted(SITES)))
        rows.append((d, seqs[d], t, float(draw(st.integers(-20, 40))) / 2))
        seqs[d] += 1
    return rows


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows_(), st.sampled_from(["median", "mean"]), st.integers(1, 2), st.integers(0, 2**32 - 1), st.booleans())
def test_every_group_relative_value_equals_the_definition(
    rows: list[Row], how: str, min_others: int, seed: int, disorder: bool
) -> None:
    engine, rel = setup(how, min_others=min_others)
    got = run(engine, rel, rows, random.Random(seed) if disorder else None)
    want = reference(rows, how, min_others)
    have = sorted((r.start_ms, r.group, r.device, r.value, r.baseline, r.others) for r in got)
    assert len(have) == len(want), (have, want)
    for h, w in zip(have, want, strict=True):
        assert h[:3] == w[:3] and h[5] == w[5] and close(h[3], w[3]) and close(h[4], w[4]), (h, w)
    for r in got:
        assert r.deviation == r.value - r.baseline and r.end_ms == r.start_ms + SIZE
        assert r.site == SITES[r.device]
    assert rel.stats["late"] == 0 and rel.open_values() == 0
    # each group's values are written once, in window order
    starts = [(r.group, r.start_ms) for r in got]
    for g in MEMBERS:
        mine = [s for grp, s in starts if grp == g]
        assert mine == sorted(mine)


def test_the_group_waits_for_a_sleeping_member_until_it_is_idle() -> None:
    engine, rel = setup()
    t = NOW
    engine.process_status(StatusUpdate("b", "d3", "t", t, "online", {"sleep_s": 60}))
    rel.process_status(StatusUpdate("b", "d3", "t", t, "online", {"sleep_s": 60}))
    send(engine, rel, batch("d3", [("d3", 0, T0 + 1_000, 20.0)], T0 + 1_000, now=t), t)  # then sleeps
    out = send(engine, rel, batch("d2", [("d2", 0, T0 + 2_000, 21.0)], T0 + 30_000, now=t), t)
    out += send(engine, rel, batch("d4", [("d4", 0, T0 + 3_000, 26.0)], T0 + 30_000, now=t), t)
    # d2's, d4's windows are final; d3's not (its watermark is T0 + 1001): g2 waits; g1 (d0, d1 silent, d2) goes on
    assert [(r.group, r.device) for r in out] == []
    assert rel.advance(t + 100_000) == []  # within 2 x 60 s + 30 s d3 is asleep, not gone
    late = rel.advance(t + 151_000)
    assert [(r.group, r.device, r.value, r.baseline) for r in late] == [("g2", "d2", 21.0, 26.0),
                                                                        ("g2", "d4", 26.0, 21.0)]  # fmt: skip
    # d3 comes back: its first window is final only now, after g2's closed without it: late, nothing rewritten
    t2 = t + 200_000
    assert send(engine, rel, batch("d3", [], T0 + 30_000, now=t2), t2) == []
    assert rel.stats["late"] == 1


def test_a_member_that_said_online_but_sent_nothing_yet_holds_the_group() -> None:
    engine, rel = setup()
    st_ = StatusUpdate("b", "d3", "t", NOW, "online", {"sleep_s": 600})
    rel.process_status(st_, engine.process_status(st_))
    for d in ("d0", "d1", "d2"):
        send(engine, rel, batch(d, [], T0 - 1))
    out = []
    for d, v in (("d0", 20.0), ("d1", 22.0), ("d2", 30.0)):
        out += send(engine, rel, batch(d, [(d, 0, T0 + 1_000, v)], T0 + SIZE))
    assert sorted((r.group, r.device) for r in out) == [("g1", "d0"), ("g1", "d1"), ("g1", "d2")]
    # g2 (d2, d3; d4 unheard of) waits for d3's first flush, ten minutes later: then d3's window counts
    t = NOW + 600_000
    out = send(engine, rel, batch("d3", [("d3", 0, T0 + 2_000, 26.0)], T0 + SIZE, now=t), t)
    assert sorted((r.group, r.device, r.deviation) for r in out) == [("g2", "d2", 4.0), ("g2", "d3", -4.0)]
    assert rel.stats["late"] == 0


def test_global_mode_closes_every_group_on_the_global_watermark() -> None:
    engine, rel = setup("mean", mode="global")
    send(engine, rel, batch("d0", [("d0", 0, T0 + 1_000, 20.0)]))
    send(engine, rel, batch("d1", [("d1", 0, T0 + 2_000, 22.0)]))
    out = send(engine, rel, batch("d4", [("d4", 0, T0 + SIZE + BOUND + 1, 0.0)]))  # any device's time
    assert sorted((r.group, r.device, r.deviation) for r in out) == [("g1", "d0", -2.0), ("g1", "d1", 2.0)]


def test_state_stays_bounded_under_a_flood_with_a_silent_member() -> None:
    engine, rel = setup()
    t = NOW
    send(engine, rel, batch("d3", [("d3", 0, T0, 1.0)], T0, now=t), t)  # then silent (idle after 600 s)
    sizes = []
    for i in range(3_000):
        now = t + i * 1_000
        for d in ("d2", "d4"):
            send(engine, rel, batch(d, [(d, i, T0 + 10 + i * 1_000, float(i % 7))], now=now), now)
        if i % 100 == 0:
            rel.advance(now, engine.advance(now))
            sizes.append(rel.open_values())
    # d3 holds g2 for its idle timeout: 600 s of windows of two members (120 values), then two windows' worth
    assert max(sizes) <= 2 * 61 * 2 + 4
    assert max(sizes[7:]) <= 8
    assert rel.stats["results"] > 2 * 250  # g2: d2 and d4 in each of the 300 windows, once d3 is idle


def test_snapshot_restore_gives_the_same_values() -> None:
    rng = random.Random(7)
    seqs = dict.fromkeys(SITES, 0)
    rows: list[Row] = []
    for i in range(60):
        d = f"d{rng.randint(0, 4)}"
        rows.append((d, seqs[d], T0 + i * 900, float(rng.randint(0, 30))))
        seqs[d] += 1
    engine, rel = setup()
    whole = run(engine, rel, rows, None)
    plan = deliveries(rows, None)
    cut = len(plan) // 2
    engine, rel = setup()
    got: list[RelativeResult] = []
    for _, _, d, chunk, fl in plan[:cut]:
        got += send(engine, rel, batch(d, chunk, fl))
    e2, r2 = setup()
    e2.restore(engine.snapshot())
    r2.restore(rel.snapshot())
    for _, _, d, chunk, fl in plan[cut:]:
        got += send(e2, r2, batch(d, chunk, fl))
    end = T0 + 3_600_000 * 2
    for d in SITES:
        got += send(e2, r2, batch(d, [], end))
    assert got == whole and len(whole) > 20


def test_a_device_that_moved_stays_in_its_old_sites_groups_after_a_restore() -> None:
    """A device that moves to another site stays a member of the groups it was in (a group's members only grow):
    d3 (site b) moves to site a and stays in g2 (``site:b``), whose watermark waits for it while it is active. A
    restore keeps that (it made the members again from each device's current site: g2 went on without d3 and
    closed its window early); a snapshot from before the members were in it restores as before."""

    def feed(engine: Engine, rel: GroupRelative, t: int, now: int) -> list[RelativeResult]:
        got = []
        for d in ("d0", "d1", "d2", "d4"):  # d3, moved, stays silent (active for its idle timeout)
            got += send(engine, rel, batch(d, [(d, t, T0 + t, float(t % 7))]), now)
        return got

    engine, rel = setup()
    for d in SITES:
        send(engine, rel, batch(d, [(d, 0, T0, 20.0)]))
    engine.move_device("d3", "a")
    rel.move_device("d3", "a")
    assert rel.members["g2"] == ["d2", "d3", "d4"]
    snaps = json.loads(json.dumps([engine.snapshot(), rel.snapshot()]))
    e2, r2 = setup()
    e2.restore(snaps[0])
    r2.restore(snaps[1])
    assert r2.members == rel.members
    got, want = [], []
    for i in range(1, 6):
        want += feed(engine, rel, i * 5_000, NOW + i * 1_000)
        got += feed(e2, r2, i * 5_000, NOW + i * 1_000)
    assert r2.group_wm("w", "g2", NOW + 5_000) == rel.group_wm("w", "g2", NOW + 5_000) == T0 - BOUND
    assert got == want and want and json.dumps(r2.snapshot()) == json.dumps(rel.snapshot())
    older = {k: v for k, v in snaps[1].items() if k != "members"}
    e3, r3 = setup()
    e3.restore(snaps[0])
    r3.restore(older)
    assert r3.members["g2"] == ["d2", "d4"]  # made again from the sites: d3 is at a now


def test_alerts_above_the_threshold_with_an_id_per_window_and_group() -> None:
    engine, rel = setup(alert_above=3.0)
    for d in SITES:  # each says hello first: a member that never sent anything is not waited for
        send(engine, rel, batch(d, [], T0 - 1))
    out = []
    for d, v in (("d0", 20.0), ("d1", 20.5), ("d2", 25.0)):
        out += send(engine, rel, batch(d, [(d, 0, T0 + 1_000, v)], T0 + SIZE))
    for d in SITES:
        out += send(engine, rel, batch(d, [], T0 + SIZE))
    alerts = rel.alerts(out)
    # g1: d2 is 4.75 above the median of d0, d1 (20.25); in g2 d2 has no other member with a value
    assert [(a.source, a.key, a.details["group"], a.details["deviation"]) for a in alerts] == [
        ("relative", "d2", "g1", 4.75)
    ]
    assert alerts[0].message == "d2: temp_c 4.75 above the median of the other 2 in g1 (w)"
    (hot,) = [r for r in out if r.device == "d2"]
    later = rel.alerts([dataclasses.replace(hot, start_ms=hot.start_ms + SIZE, end_ms=hot.end_ms + SIZE)])
    other = rel.alerts([dataclasses.replace(hot, group="g2")])
    again = rel.alerts([hot])
    assert len({alerts[0].id, later[0].id, other[0].id}) == 3 and again[0].id == alerts[0].id


@pytest.mark.parametrize(
    ("relative", "groups", "message"),
    [
        ({"baseline": "max"}, {"g": ["x"]}, "windows[w].relative.baseline: expected 'median' or 'mean'"),
        ({"value": "max"}, {"g": ["x"]}, "windows[w].relative.value: 'max' is not one of the window's aggregates"),
        ({"groups": ["nope"]}, {"g": ["x"]}, "windows[w].relative.groups: 'nope' is not declared; declared: g"),
        ({}, None, "windows[w].relative.groups: the device groups are not declared; declared: none"),
        ({"min_others": 0}, {"g": ["x"]}, "windows[w].relative.min_others: expected a positive integer"),
        ({"typo": 1}, {"g": ["x"]}, "windows[w].relative: unknown key(s) typo"),
    ],
)
def test_configuration_errors(relative: dict[str, Any], groups: dict[str, Any] | None, message: str) -> None:
    doc: dict[str, Any] = {"windows": [{"name": "w", "kind": "tumbling", "size": "1m", "metrics": ["t"],
                                        "aggregates": ["mean"], "relative": relative}]}  # fmt: skip
    if groups is not None:
        doc["groups"] = groups
    with pytest.raises(ConfigError) as exc:
        parse_config(doc, env={})
    assert message in str(exc.value)


def test_session_and_site_windows_are_refused() -> None:
    for extra in ({"kind": "session", "gap": "1m"}, {"kind": "tumbling", "size": "1m", "key": "site"}):
        doc = {"groups": {"g": ["x"]}, "windows": [{"name": "w", "metrics": ["t"], "relative": {}, **extra}]}
        with pytest.raises(ConfigError, match="needs a tumbling or sliding window keyed by device"):
            parse_config(doc, env={})


def test_the_documented_example_is_valid() -> None:
    import re
    import tomllib
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "cep.md").read_text(encoding="utf-8")
    (block,) = [b for b in re.findall(r"```toml\n(.*?)```", doc, re.S) if "[windows.relative]" in b]
    (w,) = parse_config(tomllib.loads(block), env={}).engine.windows
    assert w.relative is not None and (w.relative.baseline, w.relative.groups, w.relative.alert_above) == (
        "median",
        ("greenhouse",),
        3.0,
    )


def _fleet_run(seed: int, walk: bool, devices: int) -> tuple[list[str], str]:
    """Groups of many members (by name, by site, all) that sleep, go offline, come back and move site, with the
    gateway's clock stepping back, time alone moving on, a restore half way and one in place: every result and the
    state."""
    doc = {
        "engine": {"watermark": {"out_of_orderness": "2s", "idle_timeout": "20s", "idle_grace": "2s"}},
        "windows": [{"name": "w", "kind": "tumbling", "size": "5s", "metrics": ["temp_c"],
                     "aggregates": ["count", "mean"], "relative": {"baseline": "median", "min_others": 1}},
                    {"name": "v", "kind": "tumbling", "size": "3s", "metrics": ["temp_c"], "out_of_orderness": "0s",
                     "aggregates": ["mean"], "relative": {"baseline": "mean", "min_others": 1}}],
    }  # fmt: skip
    spec = parse_engine(doc)
    groups = parse_groups({"low": ["d1*", "d2", "d3"], "b": ["site:b"], "all": ["*"]})

    def new() -> tuple[Engine, GroupRelative]:
        rel = GroupRelative(spec, groups)
        for f in rel.fleets.values():
            f.walk = walk
        return Engine(spec), rel

    engine, rel = new()
    rng = random.Random(seed)
    outs: list[str] = []
    clock = T0
    sites = {f"d{i}": "abc"[i % 3] for i in range(devices)}
    for i in range(1200):
        if i == 600:
            snaps = json.loads(json.dumps([engine.snapshot(), rel.snapshot()]))
            engine, rel = new()
            engine.restore(snaps[0])
            rel.restore(snaps[1])
        if i == 900:  # restored in place
            rel.restore(json.loads(json.dumps(rel.snapshot())))
        clock += rng.choice([0, 100, 400, 1500])
        if rng.random() < 0.02:
            clock -= 3000  # the gateway's clock steps back
        dev = f"d{rng.randrange(devices if rng.random() < 0.9 else 3)}"
        u = rng.random()
        if u < 0.05:
            state = rng.choice(["online", "offline", "sleeping"])
            fields = {"sleep_s": float(rng.choice([1, 5, 30]))} if rng.random() < 0.5 else {}
            status = StatusUpdate(sites[dev], dev, "", clock, state, fields)
            got = rel.process_status(status, engine.process_status(status))
        elif u < 0.07:
            sites[dev] = rng.choice("abc")
            engine.move_device(dev, sites[dev])
            rel.move_device(dev, sites[dev])
            got = []
        elif u < 0.12:
            when = clock + rng.choice([0, 5000, 30000])
            got = rel.advance(when, engine.advance(when))
        else:
            t = clock - rng.choice([0, 0, 200, 2500, 9000])
            flushed = t if rng.random() < 0.05 else None
            r = Reading(sites[dev], dev, 1, i, t, rng.choice("sssu"), {"temp_c": rng.uniform(0, 30)})
            b = Batch(sites[dev], dev, "t", clock, (r,), (), flushed)
            got = rel.process_batch(b, engine.process_batch(b, clock + 10), clock + 10)
        outs += [repr(x) for x in got]
    return outs, json.dumps(rel.snapshot())


def test_group_watermarks_from_fleet_heaps_give_what_walking_the_members_gives() -> None:
    """Each group's watermark from a heap of its members (``GroupRelative.fleets``) against the tracker's walk over
    every member, which it replaces (a walk at each message and window)."""
    for seed in range(6):
        devices = (5, 20, 50)[seed % 3]
        heaps = _fleet_run(seed, walk=False, devices=devices)
        walk = _fleet_run(seed, walk=True, devices=devices)
        assert len(heaps[0]) > 100
        assert heaps == walk
