"""Patterns honour ``engine.watermark.mode``: in ``global`` mode every key's watermark is the one global watermark
(max over devices of max t - bound), as the engine's windows use; flushed markers carry nothing there."""

from __future__ import annotations

import dataclasses
import json
import random
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_cep_properties import patterns

from gateway.cep import Cep, CepSpec, Match, Pattern, PatternSpec
from gateway.engine import parse_engine
from gateway.model import Batch, Reading

T0 = 1_764_072_000_000
NOW = T0 + 86_400_000
HOT = Pattern.begin("hot").where("temp_c > 80").build("hot")


def cep(mode: str, key: str = "device") -> Cep:
    engine = parse_engine({"engine": {"watermark": {"mode": mode, "out_of_orderness": "5s"}}})
    p = Pattern.begin("hot").where("temp_c > 80").build("hot", key=key)
    return Cep(CepSpec((p,), engine))


def batch(device: str, seq: int, t: int, temp: float, flushed: int | None = None) -> Batch:
    return Batch("s", device, "t", NOW, (Reading("s", device, 1, seq, t, "s", {"temp_c": temp}),), (), flushed)


def test_global_mode_releases_one_device_on_another_devices_time() -> None:
    c = cep("global")
    assert c.process_batch(batch("a", 0, T0 + 10_000, 90.0), NOW) == []
    # b's time moves the one watermark past a's hot reading: a's match is due now
    got = c.process_batch(batch("b", 0, T0 + 100_000, 20.0), NOW)
    assert [m.readings for m in got] == [(("a", 1, 0),)]
    # and a's reading older than the global watermark is late, as the engine's windows count it
    assert c.process_batch(batch("a", 1, T0 + 50_000, 95.0), NOW) == []
    assert c.stats["late"] == 1


def test_device_mode_keeps_per_device_watermarks() -> None:
    c = cep("device")
    assert c.process_batch(batch("a", 0, T0 + 10_000, 90.0), NOW) == []
    assert c.process_batch(batch("b", 0, T0 + 100_000, 20.0), NOW) == []
    assert c.process_batch(batch("a", 1, T0 + 11_000, 95.0), NOW) == []
    assert c.stats["late"] == 0


def test_global_mode_ignores_flushed_markers() -> None:
    c = cep("global")
    assert c.process_batch(batch("a", 0, T0 + 10_000, 90.0, flushed=T0 + 10_000), NOW) == []
    d = cep("device")
    assert len(d.process_batch(batch("a", 0, T0 + 10_000, 90.0, flushed=T0 + 10_000), NOW)) == 1


def test_global_mode_site_keys_use_the_global_watermark() -> None:
    c = cep("global", key="site")
    c.process_batch(batch("a", 0, T0 + 10_000, 90.0), NOW)
    # b is the only active device with a later time; in device mode the fleet minimum (a's) would hold it
    got = c.process_batch(batch("b", 0, T0 + 100_000, 20.0), NOW)
    assert [m.readings for m in got] == [(("a", 1, 0),)]


def test_global_watermark_survives_a_snapshot() -> None:
    c = cep("global")
    c.process_batch(batch("b", 0, T0 + 100_000, 20.0), NOW)
    r = cep("global")
    r.restore(c.snapshot())
    r.process_batch(batch("a", 0, T0 + 50_000, 95.0), NOW)
    assert r.stats["late"] == 1


@st.composite
def jittered(draw: st.DrawFn) -> list[tuple[str, int, int, dict[str, Any]]]:
    """Readings of three devices with millisecond-apart times, so the global watermark moves on most messages."""
    t = T0
    rows = []
    seqs = {"d0": 0, "d1": 0, "d2": 0}
    for _ in range(draw(st.integers(0, 25))):
        t += draw(st.sampled_from([0, 3, 400, 1_000, 4_000]))
        d = draw(st.sampled_from(sorted(seqs)))
        m: dict[str, Any] = {"a": draw(st.integers(0, 3))} if draw(st.integers(0, 5)) else {"k": "x"}
        rows.append((d, seqs[d], t, m))
        seqs[d] += 1
    return rows


def global_run(
    cep: Cep, rows: list[tuple[str, int, int, dict[str, Any]]], rng: random.Random
) -> list[list[tuple[object, ...]]]:
    """What each message produced (per message, so a match released one message late would show)."""
    out = []
    delayed = sorted((t + rng.randint(0, 7_000), i, (d, seq, t, m)) for i, (d, seq, t, m) in enumerate(rows))
    for _, _, (d, seq, t, m) in delayed:  # some beyond the bound: late for the global watermark
        b = Batch("s", d, "t", NOW, (Reading("s", d, 1, seq, t, "s", dict(m)),), ())
        out.append([as_tuple(x) for x in cep.process_batch(b, NOW)])
    end = max((r[2] for r in rows), default=T0) + 3_600_000
    b = Batch("s", "d0", "t", NOW, (Reading("s", "d0", 1, 10_000, end, "s", {"z": 0}),), ())
    out.append([as_tuple(x) for x in cep.process_batch(b, NOW)])
    return out


def as_tuple(m: Match) -> tuple[object, ...]:
    return (m.pattern.name, m.site, m.key, m.readings, m.times, m.details, m.path, m.verdict, m.refers)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(patterns(), jittered(), st.integers(0, 2**32 - 1), st.sampled_from(["event_time", "both"]), st.data())
def test_global_mode_visits_only_the_keys_due_with_the_same_output(
    spec: PatternSpec, rows: list[tuple[str, int, int, dict[str, Any]]], seed: int, on: str, data: st.DataObject
) -> None:
    """An advance of the global watermark visits only the keys it reaches (a heap of due times), in creation
    order: the same matches, verdicts and counters as a walk over every key; and so after a restore."""
    spec = dataclasses.replace(spec, on=on)
    engine = parse_engine({"engine": {"watermark": {"mode": "global", "out_of_orderness": "5s"}}})
    walk = Cep(CepSpec((spec,), engine))
    walk.scan_all = True
    want = global_run(walk, rows, random.Random(seed))
    heap = Cep(CepSpec((spec,), engine))
    assert global_run(heap, rows, random.Random(seed)) == want
    assert heap.stats == walk.stats
    # the same from a snapshot taken half way, restored into a fresh operator
    cut = data.draw(st.integers(0, len(rows)))
    first = Cep(CepSpec((spec,), engine))
    rng = random.Random(seed)
    delayed = sorted((t + rng.randint(0, 7_000), i, (d, seq, t, m)) for i, (d, seq, t, m) in enumerate(rows))
    got = []
    for _, _, (d, seq, t, m) in delayed[:cut]:
        b = Batch("s", d, "t", NOW, (Reading("s", d, 1, seq, t, "s", dict(m)),), ())
        got.append([as_tuple(x) for x in first.process_batch(b, NOW)])
    second = Cep(CepSpec((spec,), engine))
    second.restore(json.loads(json.dumps(first.snapshot())))
    for _, _, (d, seq, t, m) in delayed[cut:]:
        b = Batch("s", d, "t", NOW, (Reading("s", d, 1, seq, t, "s", dict(m)),), ())
        got.append([as_tuple(x) for x in second.process_batch(b, NOW)])
    end = max((r[2] for r in rows), default=T0) + 3_600_000
    b = Batch("s", "d0", "t", NOW, (Reading("s", "d0", 1, 10_000, end, "s", {"z": 0}),), ())
    got.append([as_tuple(x) for x in second.process_batch(b, NOW)])
    assert got == want


def test_an_arrival_alert_due_in_the_batch_that_raised_it_is_retracted_there_as_a_walk_does() -> None:
    """Found by the property above: a reading that raises an arrival alert and moves the global watermark past
    the alert's verdict time. The key's new due time must be in the heap before the advance, or the retraction
    comes one message late (a walk over every key retracts at once)."""
    spec = (
        Pattern.begin("s0").where("a > 1").followed_by("s1").where("a <= 1").followed_by("s2").where("a > 1")
        .not_followed_by("quiet", within="2s").where("a > 1").build("p", on="both")
    )  # fmt: skip
    rows = [("d0", i, T0, {"a": 2} if i in (0, 6) else {"k": "x"}) for i in range(12)]
    rows += [("d0", 12, T0 + 400, {"a": 0}), ("d1", 0, T0 + 4_400, {"k": "x"}), ("d1", 1, T0 + 8_400, {"k": "x"})]
    engine = parse_engine({"engine": {"watermark": {"mode": "global", "out_of_orderness": "5s"}}})
    walk = Cep(CepSpec((spec,), engine))
    walk.scan_all = True
    want = global_run(walk, rows, random.Random(0))
    assert any(m[7] == "retracted" for per in want for m in per)  # the case: a retraction
    heap = Cep(CepSpec((spec,), engine))
    assert global_run(heap, rows, random.Random(0)) == want
    assert heap.stats == walk.stats


def test_global_mode_completes_a_quiet_period_of_a_key_with_nothing_buffered() -> None:
    """d0's run waits out its quiet period with nothing buffered: the advance that passes its end (on d1's time)
    must visit d0's key and raise the alert then, not later; and an arrival alert is retracted on time."""
    quiet = (
        Pattern.begin("a").where("temp_c > 80").not_followed_by("q", within="2s").where("temp_c < 0")
        .build("quiet", on="both")
    )  # fmt: skip
    engine = parse_engine({"engine": {"watermark": {"mode": "global", "out_of_orderness": "5s"}}})
    c = Cep(CepSpec((quiet,), engine))
    fast = c.process_batch(batch("d0", 0, T0, 90.0), NOW)
    assert [m.path for m in fast] == []  # the arrival path waits for its clock to pass the quiet period too
    assert c.process_batch(batch("d1", 0, T0 + 6_000, 20.0), NOW) == []  # releases d0's reading: run pending
    got = c.process_batch(batch("d1", 1, T0 + 7_001, 20.0), NOW)  # global watermark T0 + 2001: past the end
    assert [(m.readings, m.path) for m in got] == [((("d0", 1, 0),), "event_time")]
    assert c.keys["d:d0"].buf == [] and c.keys["d:d0"].runs == [[]]


def _site_run(seed: int, walk: bool, devices: int) -> tuple[list[str], str]:
    """Site- and group-keyed patterns (and a device-keyed one) over devices that sleep, go offline, come back and
    move site, with the gateway's clock stepping back, time alone moving on, classes of out-of-orderness bounds, a
    restore half way and one in place: every match's repr and the final snapshot as JSON."""
    from gateway.groups import parse_groups
    from gateway.model import StatusUpdate

    wm = {"out_of_orderness": "2s", "idle_timeout": "20s", "idle_grace": "2s",
          "classes": [{"name": "slow", "devices": ["d1*"], "out_of_orderness": "9s"}]}  # fmt: skip
    engine = parse_engine({"engine": {"watermark": wm}})
    pats = (
        Pattern.begin("hot").where("temp_c > 80").build("hot_site", key="site"),
        Pattern.begin("hot").where("temp_c > 70").followed_by("cool").where("temp_c < 30").build("cycle", key="site"),
        Pattern.begin("hot").where("temp_c > 85").build("hot_dev"),
        Pattern.begin("hot").where("temp_c > 70").followed_by("cool").where("temp_c < 30").build("g1", key="group:g1"),
        Pattern.begin("hot").where("temp_c > 80").build("g2", key="group:g2"),
        Pattern.begin("hot").where("temp_c > 80").build("all", key="group:all"),
    )
    groups = parse_groups({"g1": ["d1*", "d2"], "g2": ["site:b"], "all": ["*"]})

    def new() -> Cep:
        c = Cep(CepSpec(pats, engine, groups=groups))
        c.fleets.walk = walk
        c.group_fleets.walk = walk
        return c

    c = new()
    rng = random.Random(seed)
    outs: list[str] = []
    clock = T0
    sites = {f"d{i}": "abc"[i % 3] for i in range(devices)}
    for i in range(1500):
        if i == 700:
            snap = json.loads(json.dumps(c.snapshot()))
            c = new()
            c.restore(snap)
        if i == 1100:  # restored in place: the operator's own state again, in new containers
            c.restore(json.loads(json.dumps(c.snapshot())))
        clock += rng.choice([0, 100, 400, 1500])
        if rng.random() < 0.02:
            clock -= 3000  # the gateway's clock steps back
        dev = f"d{rng.randrange(devices if rng.random() < 0.9 else 3)}"
        u = rng.random()
        if u < 0.05:
            state = rng.choice(["online", "offline", "sleeping"])
            fields = {"sleep_s": float(rng.choice([1, 5, 30]))} if rng.random() < 0.5 else {}
            got = c.process_status(StatusUpdate(sites[dev], dev, "", clock, state, fields))
        elif u < 0.07:
            sites[dev] = rng.choice("abc")
            c.move_device(dev, sites[dev])
            got = []
        elif u < 0.12:
            got = c.advance(clock + rng.choice([0, 5000, 30000]))
        else:
            t = clock - rng.choice([0, 0, 200, 2500, 9000])
            flushed = t if rng.random() < 0.05 else None
            r = Reading(sites[dev], dev, 1, i, t, rng.choice("sssu"), {"temp_c": rng.choice([10.0, 50.0, 75.0, 90.0])})
            got = c.process_batch(Batch(sites[dev], dev, "t", clock, (r,), (), flushed), clock + 10)
        outs += [repr(m) for m in got]
    return outs, json.dumps(c.snapshot())


def test_site_and_group_keys_from_fleet_heaps_give_what_walking_the_devices_gives() -> None:
    """A site or group key's watermark from a heap of its devices (``Cep.fleets``, ``Cep.group_fleets``) against
    the tracker's walk over every device of the site or member of the group, which it replaces (a walk a message:
    453 and 413 us a reading with 1,000 devices on one site or in one group)."""
    runs = [(seed, (5, 20, 60)[seed % 3]) for seed in range(8)]
    runs += [(109, 80), (113, 45), (116, 8)]  # members moved into a group before they were heard from
    for seed, devices in runs:
        heaps = _site_run(seed, walk=False, devices=devices)
        walk = _site_run(seed, walk=True, devices=devices)
        assert len(heaps[0]) > 100
        assert heaps == walk
