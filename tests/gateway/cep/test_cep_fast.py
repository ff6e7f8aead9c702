"""The fast alert path (``on = "arrival"`` / ``"both"``) beside the event-time one, on random patterns and streams.

- in order, the arrival path raises exactly the event-time path's matches, and every one is confirmed;
- with disorder inside the bound, the event-time path of ``on = "both"`` is today's output exactly;
- with any disorder (late readings too), every arrival alert ends confirmed or retracted once the watermark
  passes, exactly once, and a confirmation pairs overlapping spans;
- snapshot/restore at every cut gives the same output.
"""

from __future__ import annotations

import dataclasses
import json
import random

from cep_helpers import NOW, SITE, T0, Row, arrival_order, events, feed, make_cep
from cep_reference import reference_matches
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_cep_properties import patterns, streams

from gateway.cep import Cep, Match, Pattern, PatternError, PatternSpec, parse_pattern
from gateway.model import Batch, Reading

SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow]
)


def both(spec: PatternSpec) -> PatternSpec:
    return dataclasses.replace(spec, on="both")


def plain(m: Match) -> tuple[object, ...]:
    """A match without its path and verdict."""
    return (m.pattern.name, m.site, m.key, m.steps, m.readings, m.times, m.details)


def split(out: list[Match]) -> tuple[list[Match], list[Match], list[Match]]:
    fast = [m for m in out if m.path == "arrival" and not m.verdict]
    retracted = [m for m in out if m.verdict == "retracted"]
    slow = [m for m in out if m.path == "event_time"]
    assert len(fast) + len(retracted) + len(slow) == len(out)
    return fast, retracted, slow


@SETTINGS
@given(patterns(), st.data())
def test_in_order_both_paths_raise_the_same_alerts_all_confirmed(spec: PatternSpec, data: st.DataObject) -> None:
    rows = data.draw(streams(2 if spec.key == "site" else 1))
    cep = make_cep([both(spec)])
    fast, retracted, slow = split(feed(cep, rows, None))
    assert [m.readings for m in fast] == [m.readings for m in slow]
    assert [m.readings for m in slow] == reference_matches(spec, events(rows))
    assert retracted == []
    assert all(m.verdict == "confirmed" for m in slow)
    assert [m.refers for m in slow] == [m.alert_id() for m in fast]  # each confirms its own twin
    assert {m.alert_id() for m in fast}.isdisjoint(m.alert_id() for m in slow)
    assert cep.stats["fast_alerts"] == cep.stats["confirmed"] == len(slow)
    assert cep.stats["retracted"] == cep.stats["missed_fast"] == 0


@SETTINGS
@given(patterns(), st.data(), st.integers(0, 2**32 - 1))
def test_event_time_path_is_unchanged_by_the_fast_path(spec: PatternSpec, data: st.DataObject, seed: int) -> None:
    rows = data.draw(streams(2 if spec.key == "site" else 1))
    alone = make_cep([spec])
    want = feed(alone, rows, random.Random(seed))
    assert all(not m.path and not m.verdict and not m.refers for m in want)  # on = "event_time": as before
    assert [m.readings for m in want] == reference_matches(spec, events(rows))
    cep = make_cep([both(spec)])
    _, _, slow = split(feed(cep, rows, random.Random(seed)))
    assert [plain(m) for m in slow] == [plain(m) for m in want]
    # the event-time alerts keep their ids and points: only the path and verdict tags/fields are added
    assert [m.to_alert().id for m in slow] == [m.to_alert().id for m in want]
    assert {k: v for k, v in cep.stats.items() if k in alone.stats} == alone.stats


def feed_far(cep: Cep, rows: list[Row], rng: random.Random, spread_ms: int) -> list[Match]:
    """One reading a batch, each delayed by up to ``spread_ms`` (beyond the bound: some are late), then flushed
    markers past the end."""
    out: list[Match] = []
    for d, seq, t, m in arrival_order(rows, rng, spread_ms):
        batch = Batch(SITE, d, "t", NOW, (Reading(SITE, d, 1, seq, t, "s", dict(m)),), ())
        out.extend(cep.process_batch(batch, NOW))
    end = max((r[2] for r in rows), default=T0) + 3_600_000
    for device in ("d0", "d1"):
        out.extend(cep.process_batch(Batch(SITE, device, "t", NOW, (), (), end), NOW))
    return out


@SETTINGS
@given(patterns(), st.data(), st.integers(0, 2**32 - 1), st.sampled_from([5_000, 15_000]))
def test_every_arrival_alert_ends_confirmed_or_retracted(
    spec: PatternSpec, data: st.DataObject, seed: int, spread: int
) -> None:
    rows = data.draw(streams(2 if spec.key == "site" else 1))
    cep = make_cep([both(spec)])
    out = feed_far(cep, rows, random.Random(seed), spread)
    fast, retracted, slow = split(out)
    fast_ids = [m.alert_id() for m in fast]
    verdicts = [m.refers for m in slow if m.verdict == "confirmed"] + [m.refers for m in retracted]
    assert sorted(verdicts) == sorted(fast_ids)  # exactly one verdict each
    assert all(m.verdict in ("confirmed", "missed_fast") for m in slow)
    position = {m.alert_id(): i for i, m in enumerate(out) if m in fast}
    by_id = {m.alert_id(): m for m in fast}
    for i, m in enumerate(out):
        if m.refers:
            assert position[m.refers] < i  # a verdict comes after the alert it judges
        if m.verdict == "confirmed":
            a = by_id[m.refers]
            assert a.span[0] <= m.span[1] and m.span[0] <= a.span[1]  # overlapping spans
        if m.verdict == "retracted":
            assert plain(m) == plain(by_id[m.refers]) and m.to_alert().id != m.refers
    assert all(not opens for k in cep.keys.values() for opens in k.open)
    s = cep.stats
    missed = len(slow) - s["confirmed"]
    assert (s["fast_alerts"], s["retracted"], s["missed_fast"]) == (len(fast), len(retracted), missed)
    assert s["confirmed"] + s["retracted"] == s["fast_alerts"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(patterns(), st.data(), st.integers(0, 2**32 - 1))
def test_snapshot_restore_with_fast_paths(spec: PatternSpec, data: st.DataObject, seed: int) -> None:
    rows = arrival_order(data.draw(streams(1)), random.Random(seed), 12_000)
    spec = dataclasses.replace(spec, key="device")
    specs = [both(spec), dataclasses.replace(spec, name="q", on="arrival")]

    def publish(cep: Cep, part: list[Row]) -> list[Match]:
        out: list[Match] = []
        for d, seq, t, m in part:
            out.extend(cep.process_batch(Batch(SITE, d, "t", NOW, (Reading(SITE, d, 1, seq, t, "s", m),), ()), NOW))
        return out

    full = make_cep(specs)
    want = publish(full, rows) + full.flush_key("d:d0", T0 + 3_600_000)
    cut = data.draw(st.integers(0, len(rows)))
    first = make_cep(specs)
    got = publish(first, rows[:cut])
    second = make_cep(specs)
    second.restore(json.loads(json.dumps(first.snapshot())))
    got += publish(second, rows[cut:]) + second.flush_key("d:d0", T0 + 3_600_000)
    assert got == want
    assert second.snapshot() == full.snapshot()


def test_arrival_only_reads_in_arrival_order_and_keeps_no_event_time_state() -> None:
    spec = Pattern.begin("hot").where("t > 80").followed_by("hotter").where("t > hot.t").build("p", on="arrival")
    older, newer = ("d0", 0, T0, {"t": 85}), ("d0", 1, T0 + 2_000, {"t": 90})
    cep = make_cep([spec])
    out = feed(cep, [older, newer], None)  # in event-time order: 85 then 90
    assert [(m.path, m.verdict, m.readings) for m in out] == [("arrival", "", (("d0", 1, 0), ("d0", 1, 1)))]
    assert cep.stats["fast_alerts"] == 1 and cep.stats["matches"] == 0
    assert all(not runs and not k.buf for k in cep.keys.values() for runs in k.runs)
    cep = make_cep([spec])
    assert feed(cep, [newer], None) + feed(cep, [older], None) == []  # 90 arrives first: 85 is not hotter


def test_on_is_validated_and_parsed() -> None:
    raw = {"name": "p", "on": "both", "steps": [{"name": "a", "where": "x > 1"}]}
    assert parse_pattern(raw).on == "both"
    assert parse_pattern({**raw, "on": "event_time"}) == parse_pattern({k: v for k, v in raw.items() if k != "on"})
    try:
        parse_pattern({**raw, "on": "soon"})
    except PatternError as exc:
        assert str(exc) == "patterns[p].on: expected one of event_time, arrival, both, got 'soon'"
    else:
        raise AssertionError("on = 'soon' was accepted")


def test_top_shows_how_often_the_fast_path_was_wrong() -> None:
    from gateway.top import render

    pipeline = {"alerts": 9, "fast_alerts": 4, "alerts_confirmed": 3, "alerts_retracted": 1, "alerts_missed_fast": 1}
    frame = render({"pipeline": pipeline, "live": {"now_ms": NOW}}, None)
    assert frame[2] == "fast alerts 4: confirmed 3, retracted 1; event-time alerts it missed 1"
    assert not any("fast" in ln for ln in render({"pipeline": {"alerts": 2}, "live": {"now_ms": NOW}}, None))
