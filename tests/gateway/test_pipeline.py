from __future__ import annotations

import json

import pytest

from gateway.config import parse_config
from gateway.lineproto import reading_time_ns
from gateway.pipeline import Pipeline

NOW = 1_764_072_100_000


def batch(dev: str, readings: list[tuple[int, int, int, dict[str, object]]]) -> bytes:
    r = [{"b": b, "s": s, "t": t, "q": "s", "m": m} for b, s, t, m in readings]
    return json.dumps({"v": 1, "dev": dev, "r": r}).encode()


def test_accepts_dedups_and_dead_letters() -> None:
    p = Pipeline(parse_config({}, env={}))
    t = NOW - 60_000
    out = p.handle("edgekit/s/d1/readings", batch("d1", [(1, 0, t, {"x": 1.5}), (1, 1, t + 1, {"x": 2})]), NOW)
    assert len(out.readings) == 2
    assert out.lines[0] == f'reading,device=d1,site=s x=1.5,boot=1i,seq=0i,q="s" {reading_time_ns(t, 1, 0)}'
    assert out.lines[1] == f'reading,device=d1,site=s x=2.0,boot=1i,seq=1i,q="s" {reading_time_ns(t + 1, 1, 1)}'
    again = p.handle("edgekit/s/d1/readings", batch("d1", [(1, 1, t + 1, {"x": 2}), (1, 2, t + 2, {"x": 3})]), NOW)
    assert [r.seq for r in again.readings] == [2]
    bad = p.handle("edgekit/s/d1/readings", b"{nope", NOW)
    assert bad.readings == [] and len(bad.lines) == 1
    assert bad.lines[0].startswith("dead_letter,device=d1,reason=bad_json,site=s ")
    s = p.stats
    assert (s.messages, s.readings_in, s.readings_accepted, s.duplicates, s.dead_letters) == (3, 4, 3, 1, 1)
    assert dict(s.dead_by_reason) == {"bad_json": 1}


def test_dead_letters_in_the_same_millisecond_stay_apart() -> None:
    p = Pipeline(parse_config({}, env={}))
    lines = [p.handle("edgekit/s/d1/readings", b"x", NOW).lines[0] for _ in range(3)]
    assert len({ln.rsplit(" ", 1)[1] for ln in lines}) == 3


def test_unknown_device_and_status() -> None:
    p = Pipeline(parse_config({"devices": {"allow_unknown": False, "known": ["d1"]}}, env={}))
    out = p.handle("edgekit/s/d2/readings", batch("d2", [(1, 0, NOW, {"x": 1})]), NOW)
    assert out.readings == [] and "reason=unknown_device" in out.lines[0]
    st = p.handle("edgekit/s/d1/status", b'{"v":1,"dev":"d1","state":"sleeping","sleep_s":300}', NOW)
    # a dead letter took the counter's 1: statuses of one millisecond stay apart by it too
    assert st.lines == [f'device_status,device=d1,site=s state="sleeping",sleep_s=300i {NOW * 1_000_000 + 2}']
    assert p.stats.status_updates == 1


def test_bad_topic_has_no_device_tag() -> None:
    p = Pipeline(parse_config({}, env={}))
    out = p.handle("elsewhere/x", b"{}", NOW)
    assert out.lines[0].startswith("dead_letter,reason=bad_topic ")


def test_own_topics_are_ignored_not_dead_lettered() -> None:
    p = Pipeline(parse_config({}, env={}))
    assert p.handle("edgekit/s/d1/cmd", b'{"do":"x"}', NOW).lines == []
    assert p.handle("edgekit/_gateway/alerts/x", b"{}", NOW).lines == []
    assert p.handle("edgekit/s/d1/status", b"", NOW).lines == []  # a retained status being cleared
    assert p.stats.ignored == 3 and p.stats.messages == 0
    assert "reason=bad_json" in p.handle("edgekit/s/d1/readings", b"", NOW).lines[0]
    assert "reason=bad_topic" in p.handle("edgekit/s/d1/telemetry", b"{}", NOW).lines[0]


def test_an_absurd_sleep_interval_is_dead_lettered_not_a_crash() -> None:
    """A finite but huge ``sleep_s`` once overflowed the watermark's idle timeout, in every replay of the log."""
    p = Pipeline(
        parse_config({"windows": [{"name": "w", "kind": "tumbling", "size": "60s", "metrics": ["x"]}]}, env={})
    )
    for bad, reason in (
        (b"1e308", "schema"), (b"0", "schema"), (b"-5", "schema"), (b"99999999999999999999999", "schema"),
        (b'"300"', "type_mismatch"), (b"true", "type_mismatch"), (b"300.5", "type_mismatch"),
    ):  # fmt: skip
        out = p.handle("edgekit/s/d1/status", b'{"v":1,"dev":"d1","state":"sleeping","sleep_s":%s}' % bad, NOW)
        assert len(out.lines) == 1 and f"reason={reason}" in out.lines[0], bad
    ok = p.handle("edgekit/s/d1/status", b'{"v":1,"dev":"d1","state":"sleeping","sleep_s":300}', NOW)
    assert ok.lines[0].startswith("device_status,")


def test_a_failure_of_the_gateways_own_code_is_a_dead_letter(monkeypatch: pytest.MonkeyPatch) -> None:
    p = Pipeline(parse_config({}, env={}))

    def broken(*args: object) -> list[object]:
        raise RuntimeError("a bug")

    monkeypatch.setattr(p, "_engine_out", broken)  # the window engine's results fail to come out
    out = p.handle("edgekit/s/d1/readings", batch("d1", [(1, 0, NOW - 1_000, {"x": 1.5})]), NOW)
    # the raw reading it had produced is kept, and the failure is on record with its reason
    assert out.lines[0].startswith("reading,device=d1,site=s x=1.5")
    assert "reason=internal" in out.lines[1] and "RuntimeError: a bug" in out.lines[1]
    assert p.stats.dead_by_reason["internal"] == 1


def _capped() -> Pipeline:
    return Pipeline(parse_config({"devices": {"max_devices": 2}}, env={}))


def _status(dev: str) -> tuple[str, bytes]:
    return f"edgekit/s/{dev}/status", b'{"v":1,"dev":"%s","state":"online"}' % dev.encode()


def _readings(dev: str, seq: int) -> tuple[str, bytes]:
    return f"edgekit/s/{dev}/readings", batch(dev, [(1, seq, NOW - 60_000 + seq, {"x": 1.0})])


def test_devices_beyond_max_devices_are_dead_letters_and_the_others_go_on() -> None:
    p = _capped()
    assert len(p.handle(*_readings("d1", 0), NOW).readings) == 1
    assert p.handle(*_status("d2"), NOW).lines[0].startswith("device_status,device=d2,")  # a status admits too
    new = p.handle(*_readings("d3", 0), NOW)
    assert new.readings == [] and len(new.lines) == 1
    assert new.lines[0].startswith("dead_letter,device=d3,reason=too_many_devices,site=s ")
    assert "'d3' is new" in new.lines[0] and "devices.max_devices = 2" in new.lines[0]
    st = p.handle(*_status("d3"), NOW)
    assert len(st.lines) == 1 and st.lines[0].startswith("dead_letter,device=d3,reason=too_many_devices,")
    assert len(p.handle(*_readings("d1", 1), NOW).readings) == 1
    assert len(p.handle(*_readings("d2", 0), NOW).readings) == 1
    assert p.devices == {"d1": "s", "d2": "s"}
    assert "d3" not in p.dedup.state and "d3" not in p.engine.tracker.state  # no state kept for it
    assert dict(p.stats.dead_by_reason) == {"too_many_devices": 2}
    assert (p.stats.dead_letters, p.stats.readings_accepted, p.stats.status_updates) == (2, 3, 1)


def test_a_message_whose_every_reading_is_rejected_admits_no_device() -> None:
    """Such a message leaves no state, so it must not take one of the ``max_devices`` places: its readings'
    dead letters keep their own reasons, and a real device still gets in afterwards."""
    p = _capped()
    p.handle(*_readings("d1", 0), NOW)
    bad = batch("d9", [(1, 0, NOW - 60_000, {"x": [1]}), (1, 1, NOW - 59_000, {"x": {"y": 2}})])
    out = p.handle("edgekit/s/d9/readings", bad, NOW)
    assert out.readings == [] and len(out.lines) == 2
    assert all(line.startswith("dead_letter,device=d9,") for line in out.lines)
    assert "too_many_devices" not in "".join(out.lines)
    assert p.devices == {"d1": "s"} and "d9" not in p.engine.tracker.state and "d9" not in p.dedup.state
    assert len(p.handle(*_readings("d2", 0), NOW).readings) == 1  # the second place is still free
    assert p.devices == {"d1": "s", "d2": "s"}
    full = p.handle("edgekit/s/d9/readings", bad, NOW)  # past the cap now: still its readings' own reasons
    assert len(full.lines) == 2 and "too_many_devices" not in "".join(full.lines)
    flushed = json.dumps({"v": 1, "dev": "d9", "r": [], "flushed": NOW - 1}).encode()
    assert "reason=too_many_devices" in p.handle("edgekit/s/d9/readings", flushed, NOW).lines[0]  # a marker keeps state


def test_past_the_cap_a_broken_message_keeps_its_own_reason() -> None:
    p = _capped()
    p.handle(*_readings("d1", 0), NOW)
    p.handle(*_readings("d2", 0), NOW)
    assert "reason=bad_json" in p.handle("edgekit/s/d3/readings", b"{nope", NOW).lines[0]  # decoding comes first
    assert "reason=too_many_devices" in p.handle(*_readings("d3", 0), NOW).lines[0]


def test_admitted_devices_survive_snapshot_and_restore() -> None:
    p = _capped()
    p.handle(*_readings("d1", 0), NOW)
    p.handle(*_status("d2"), NOW)
    snap = json.loads(json.dumps(p.snapshot()))
    assert snap["devices"] == {"d1": "s", "d2": "s"}
    q = _capped()
    q.restore(snap)
    assert "reason=too_many_devices" in q.handle(*_readings("d3", 0), NOW).lines[0]
    assert len(q.handle(*_readings("d1", 1), NOW).readings) == 1
    assert q.handle(*_status("d2"), NOW).lines[0].startswith("device_status,")


def test_a_checkpoint_from_before_the_cap_admits_the_devices_it_has_state_for() -> None:
    p = _capped()
    p.handle(*_readings("d1", 0), NOW)  # in the dedup (and the tracker)
    p.handle(*_status("d2"), NOW)  # only in the engine's tracker
    snap = json.loads(json.dumps(p.snapshot()))
    del snap["devices"]
    q = _capped()
    q.restore(snap)
    assert q.devices == {"d1": "s", "d2": "s"}
    assert len(q.handle(*_readings("d1", 1), NOW).readings) == 1
    assert len(q.handle(*_readings("d2", 0), NOW).readings) == 1
    assert "reason=too_many_devices" in q.handle(*_readings("d3", 0), NOW).lines[0]


def _windowed() -> Pipeline:
    window = {"name": "m1", "kind": "tumbling", "size": "60s", "metrics": ["x"], "aggregates": ["count", "mean"],
              "allowed_lateness": "3h"}  # fmt: skip
    return Pipeline(parse_config({"windows": [window]}, env={}))


def test_readings_of_a_forgotten_boot_are_stale_dead_letters_and_stay_out_of_the_windows() -> None:
    p = _windowed()
    t0 = NOW - NOW % 60_000 - 3_600_000
    first = [(1, s, t0 + 1_000 + s * 5_000, {"x": 10.0 + 2 * s}) for s in range(10)]
    p.handle("edgekit/s/d1/readings", batch("d1", first), NOW)
    for boot in range(2, 10):  # eight newer boots: boot 1 is forgotten
        p.handle("edgekit/s/d1/readings", batch("d1", [(boot, 0, t0 + 60_000 * boot, {"x": 1.0})]), NOW)
    resent = [(2, 0, t0 + 120_000, {"x": 1.0}), *first[:3]]  # a duplicate of a tracked boot, then the stale ones
    out = p.handle("edgekit/s/d1/readings", batch("d1", resent), NOW)
    assert out.readings == [] and out.outputs == []  # no window re-fired
    assert len(out.lines) == 3
    for index, line in enumerate(out.lines, start=1):
        assert line.startswith("dead_letter,device=d1,reason=stale_boot,site=s ")
        assert f"index={index}i" in line and "at most 8 boots a device" in line
    assert '"{\\"b\\":1,\\"s\\":0,' in out.lines[0]  # the reading as sent
    assert (p.stats.duplicates, p.stats.dead_by_reason["stale_boot"], p.stats.readings_accepted) == (1, 3, 18)


def test_a_checkpoint_of_the_older_dedup_state_is_restored() -> None:
    p = _windowed()
    t = NOW - 600_000
    p.handle("edgekit/s/d1/readings", batch("d1", [(1, s, t + s, {"x": 1.0}) for s in range(5)]), NOW)
    snap = json.loads(json.dumps(p.snapshot()))
    snap["dedup"] = {"d1": {"1": [[0, 5]]}}  # what older versions stored: ranges only
    q = _windowed()
    q.restore(snap)
    assert q.handle("edgekit/s/d1/readings", batch("d1", [(1, 3, t + 3, {"x": 1.0})]), NOW).readings == []
    assert q.stats.duplicates == 1
    for boot in range(2, 10):
        q.handle("edgekit/s/d1/readings", batch("d1", [(boot, 0, t + 1_000 * boot, {"x": 1.0})]), NOW)
    # boot 1 forgotten: its times were at most the device's latest event time then (the tracker's), t + 4
    assert "reason=stale_boot" in q.handle("edgekit/s/d1/readings", batch("d1", [(1, 0, t, {"x": 1.0})]), NOW).lines[0]


def _at(site: str, dev: str, seq: int, value: float = 1.0, boot: int = 1) -> tuple[str, bytes]:
    return f"edgekit/{site}/{dev}/readings", batch(dev, [(boot, seq, NOW - 60_000 + seq, {"x": value})])


def _status_at(site: str, dev: str) -> tuple[str, bytes]:
    return f"edgekit/{site}/{dev}/status", b'{"v":1,"dev":"%s","state":"online"}' % dev.encode()


def test_a_device_is_bound_to_the_site_it_was_first_admitted_under() -> None:
    p = Pipeline(parse_config({}, env={}))
    assert len(p.handle(*_at("north", "d1", 0), NOW).readings) == 1
    # another board with the same id elsewhere: its readings are not duplicates, its status not accepted
    for msg in (_at("south", "d1", 0, 9.0), _at("south", "d1", 1, 9.0), _status_at("south", "d1")):
        out = p.handle(*msg, NOW)
        assert out.readings == [] and len(out.lines) == 1
        assert out.lines[0].startswith("dead_letter,device=d1,reason=site_mismatch,site=south ")
        assert "bound to site 'north'" in out.lines[0] and "under site 'south'" in out.lines[0]
        assert "devices.sites.d1 = 'south'" in out.lines[0]  # how to move it
    bad = batch("d1", [(1, 5, NOW - 60_000, {"x": [1]})])  # a message whose readings are all rejected too
    assert "reason=site_mismatch" in p.handle("edgekit/south/d1/readings", bad, NOW).lines[0]
    assert len(p.handle(*_at("north", "d1", 1), NOW).readings) == 1
    s = p.stats
    assert (s.readings_accepted, s.duplicates, dict(s.dead_by_reason)) == (2, 0, {"site_mismatch": 4})
    assert p.devices == {"d1": "north"} and p.engine.tracker.sites == {"north": ["d1"]}
    snap = json.loads(json.dumps(p.snapshot()))
    q = Pipeline(parse_config({}, env={}))
    q.restore(snap)
    assert "reason=site_mismatch" in q.handle(*_at("south", "d1", 2), NOW).lines[0]


def test_a_declared_site_binds_from_the_first_message() -> None:
    p = Pipeline(parse_config({"devices": {"sites": {"d1": "north"}}}, env={}))
    out = p.handle(*_at("south", "d1", 0), NOW)
    assert "reason=site_mismatch" in out.lines[0] and "declared under site 'north'" in out.lines[0]
    assert p.devices == {} and "d1" not in p.dedup.state
    assert len(p.handle(*_at("north", "d1", 0), NOW).readings) == 1
    assert p.devices == {"d1": "north"}


def test_a_board_moves_to_its_declared_site_at_its_first_message_there() -> None:
    window = {"name": "w", "kind": "tumbling", "size": "60s", "metrics": ["x"], "key": "site"}
    before = Pipeline(parse_config({"windows": [window]}, env={}))
    for seq in range(3):
        before.handle(*_at("north", "d1", seq), NOW)
    snap = json.loads(json.dumps(before.snapshot()))
    # the operator declares the new site and restarts the gateway, then re-configures the board
    p = Pipeline(parse_config({"windows": [window], "devices": {"sites": {"d1": "south"}}}, env={}))
    p.restore(snap)
    assert len(p.handle(*_at("north", "d1", 3), NOW).readings) == 1  # its backlog from the old site still counts
    out = p.handle(*_at("south", "d1", 4), NOW)
    assert [(r.site, r.seq) for r in out.readings] == [("south", 4)]
    assert p.devices == {"d1": "south"} and p.stats.moved == 1
    assert p.engine.tracker.state["d1"][0] == "south"
    assert p.handle(*_at("south", "d1", 2), NOW).readings == []  # re-sent from before the move: a duplicate
    assert p.stats.duplicates == 1
    late = p.handle(*_at("north", "d1", 5), NOW)
    assert "reason=site_mismatch" in late.lines[0] and "bound to site 'south'" in late.lines[0]
    assert p.stats.dead_by_reason == {"site_mismatch": 1}


def test_a_checkpoint_from_before_site_binding_binds_devices_where_they_were_first_seen() -> None:
    p = Pipeline(parse_config({}, env={}))
    p.handle(*_at("north", "d1", 0), NOW)
    p.handle(*_status_at("south", "d2"), NOW)
    snap = json.loads(json.dumps(p.snapshot()))
    snap["devices"] = sorted(snap["devices"])  # what older versions stored: the ids only
    q = Pipeline(parse_config({}, env={}))
    q.restore(snap)
    assert q.devices == {"d1": "north", "d2": "south"}
    assert "reason=site_mismatch" in q.handle(*_at("south", "d1", 1), NOW).lines[0]


def test_a_device_beyond_its_metric_names_gets_too_many_metrics_and_the_others_go_on() -> None:
    p = Pipeline(parse_config({"devices": {"max_metric_names": 4}}, env={}))
    t = NOW - 60_000
    made_up = [(1, i, t + i, {f"x{i}_a": 1.0, f"x{i}_b": 1.0}) for i in range(4)]
    out = p.handle("edgekit/s/d1/readings", batch("d1", made_up), NOW)
    assert [r.seq for r in out.readings] == [0, 1]  # four names: the first two readings
    dead = [line for line in out.lines if line.startswith("dead_letter")]
    assert len(dead) == 2 and all("reason=too_many_metrics" in line for line in dead)
    assert "index=2i" in dead[0] and "devices.max_metric_names = 4" in dead[0] and "x2_a, x2_b" in dead[0]
    assert p.metric_names == {"d1": {"x0_a", "x0_b", "x1_a", "x1_b"}}
    # names it already has are free; a duplicate of a refused reading is refused again, not a duplicate
    again = p.handle("edgekit/s/d1/readings", batch("d1", [(1, 9, t + 9, {"x0_a": 2.0}), made_up[3]]), NOW)
    assert [r.seq for r in again.readings] == [9] and "reason=too_many_metrics" in again.lines[1]
    assert len(p.handle("edgekit/s/d2/readings", batch("d2", made_up), NOW).readings) == 2  # its own share
    snap = json.loads(json.dumps(p.snapshot()))
    q = Pipeline(parse_config({"devices": {"max_metric_names": 4}}, env={}))
    q.restore(snap)
    assert q.metric_names == p.metric_names
    assert "reason=too_many_metrics" in q.handle("edgekit/s/d1/readings", batch("d1", made_up[2:3]), NOW).lines[0]
    del snap["metric_names"]  # an older checkpoint: counted again from the next readings
    r = Pipeline(parse_config({"devices": {"max_metric_names": 4}}, env={}))
    r.restore(snap)
    assert r.metric_names == {}
    assert p.stats.dead_by_reason == {"too_many_metrics": 5}  # d1: 2 + 1, d2: 2
