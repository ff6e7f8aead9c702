"""Scenarios in virtual time, in-process: every shipped scenario through the gateway's own pipeline must
match the simulator's brute-force reference exactly, and each one must actually contain its faults."""

from __future__ import annotations

import json
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from gateway.lineproto import line, reading_time_ns
from gateway.model import StatusUpdate
from gateway.protocol import decode
from sim.cli import main
from sim.commands import Prepared, prepare
from sim.errors import SpecError
from sim.faults import sequence_events
from sim.inprocess import gateway_config, run_in_process
from sim.scenario import load_scenario, parse_scenario, scenario_names
from sim.verify import LineStore, compare, parse_line

ROOT = Path(__file__).resolve().parents[2]

NOW = 1_764_072_000_000  # 2025-11-25T12:00:00Z


def fixed_now() -> int:
    return NOW


def prepared(name: str) -> Prepared:
    return prepare(load_scenario(name), now_ms=fixed_now)


def in_process(prep: Prepared) -> tuple[Any, LineStore]:
    res = run_in_process(prep.run, gateway_config(prep.gateway, prep.scenario.prefix))
    assert res.store is not None
    return res, res.store


def test_the_nine_scenarios_are_shipped() -> None:
    assert scenario_names() == [
        "clock-chaos", "correlated", "flaky-network", "pattern-sequences", "pump-group", "sensor-faults", "sleepy",
        "steady", "storm",
    ]  # fmt: skip


@pytest.mark.parametrize("name", scenario_names())
def test_pipeline_matches_the_reference(name: str) -> None:
    prep = prepared(name)
    res, store = in_process(prep)
    verdict = compare(prep.truth(), store.found())
    assert verdict.ok, verdict.render()
    assert verdict.table("reading").expected == len(prep.expected.readings) > 0
    assert verdict.table("window").expected > 0
    assert res.stats["readings_accepted"] == len(prep.expected.readings)
    assert res.stats["duplicates"] == prep.expected.duplicates
    assert res.stats["late_readings"] == len(prep.expected.late)


@pytest.mark.parametrize("name", scenario_names())
def test_every_delivery_follows_the_contract(name: str) -> None:
    prep = prepared(name)
    types = gateway_config(prep.gateway, prep.scenario.prefix).metric_types
    for d in prep.run.deliveries:
        msg = decode(d.topic, d.payload, d.arrival_ms, prefix=prep.scenario.prefix, types=types)
        assert msg.device == d.device
        assert isinstance(msg, StatusUpdate) or all(r.reason != "type_mismatch" for r in msg.rejected)
        assert len(d.payload) <= 4096


def test_verify_reads_lines_as_influxdb_does() -> None:
    """Strings: only a backslash and a double quote are escaped; two readings in one millisecond are two
    points of the store (their offsets differ) and both are found, at that millisecond."""
    for v in ['a "quoted" word', "back\\slash", "ends with \\", "a literal \\n", "é 😀", "x, y = z", ""]:
        text = line("reading", {"site": "a b", "device": "d,1"}, {"note": v, "seq": 1}, 5)
        assert parse_line(text) == ("reading", {"site": "a b", "device": "d,1"}, {"note": v, "seq": 1}, 5)
    t = 1_764_072_000_123
    store = LineStore()
    store.write(
        line("reading", {"site": "s", "device": "d"}, {"x": float(s), "boot": 1, "seq": s}, reading_time_ns(t, 1, s))
        for s in (7, 8, 7)
    )
    rows = store.found().rows["reading"]
    assert sorted((r["seq"], r["time"]) for r in rows) == [(7, t), (8, t)]


def test_a_run_is_deterministic() -> None:
    a, b = prepared("flaky-network"), prepared("flaky-network")
    first = [(d.arrival_ms, d.payload) for d in a.run.deliveries]
    assert first == [(d.arrival_ms, d.payload) for d in b.run.deliveries]
    c = prepare(load_scenario("flaky-network").scaled(seed=99), now_ms=fixed_now)
    assert [d.payload for d in c.run.deliveries] != [d.payload for d in a.run.deliveries]


def test_verify_sees_a_lost_point_and_a_wrong_value() -> None:
    prep = prepared("steady")
    _, store = in_process(prep)
    key = next(k for k in store.points if k[0] == "reading")
    fields = store.points.pop(key)
    found = store.found()
    verdict = compare(prep.truth(), found)
    assert not verdict.ok and verdict.table("reading").missing == 1
    store.points[key] = {**fields, "temp_c": -99.0}
    verdict = compare(prep.truth(), store.found())
    assert verdict.table("reading").differ == 1 and verdict.table("reading").missing == 0
    wkey = next(k for k in store.points if k[0] == "window")
    store.points[wkey]["count"] += 1
    assert compare(prep.truth(), store.found()).table("window").differ == 1


def test_steady_is_on_time() -> None:
    prep = prepared("steady")
    assert not prep.expected.late and not prep.expected.dead_letters and prep.expected.duplicates == 0
    assert all(r.arrival_ms - r.true_ms < 10_000 for r in prep.run.readings)


def test_sleepy_boards_burst_and_stay_on_time() -> None:
    prep = prepared("sleepy")
    sleepy = {b.device for b in prep.run.boards if b.sleep_s}
    assert len(sleepy) == 6
    flushed = [d for d in prep.run.deliveries if d.flushed is not None]
    assert {d.device for d in flushed} == sleepy
    waits = [r.arrival_ms - r.true_ms for r in prep.run.readings if r.device in sleepy]
    assert max(waits) >= 19 * 60_000  # held for up to 20 minutes in the buffer
    assert not prep.expected.late  # and still on time: per-device watermarks and flushed markers


def test_flaky_network_loses_resends_duplicates_and_reorders() -> None:
    prep = prepared("flaky-network")
    net = prep.run.network
    assert net["lost"] > 0 and net["ack_lost"] > 0 and net["broker_duplicates"] > 0 and net["held_back"] > 0
    assert net["outage_failures"] > 0
    kinds = Counter(d.kind for d in prep.run.deliveries)
    assert kinds["resent"] > 0 and kinds["duplicate"] > 0
    assert prep.expected.duplicates > 0
    assert any(k[6] == "too_late" for k in prep.expected.late)
    assert any(v[2] > 1 for v in prep.expected.windows.values())  # re-fired by a late reading
    assert all(r.deliveries >= 1 for r in prep.run.readings)  # nothing lost for good: the board re-sends
    retried = [r for r in prep.run.readings if r.attempts > 1]
    assert retried


def test_storm_is_ten_times_the_load_for_a_minute() -> None:
    prep = prepared("storm")
    start = prep.run.start_ms
    in_storm = [r for r in prep.run.readings if start + 15 * 60_000 <= r.true_ms < start + 16 * 60_000]
    before = [r for r in prep.run.readings if start + 10 * 60_000 <= r.true_ms < start + 11 * 60_000]
    assert len(in_storm) >= 9 * len(before) > 0


def test_sensor_faults_are_injected_with_labelled_spans() -> None:
    prep = prepared("sensor-faults")
    kinds = {a.kind: (a, labelled) for a, labelled in prep.run.anomalies}
    assert set(kinds) == {"spike", "level_shift", "drift", "stuck", "dropout", "noise_burst"}
    for a, labelled in kinds.values():
        assert labelled and all(a.start_ms <= t < a.end_ms for t in labelled)
    stuck, _ = kinds["stuck"]
    values = {r.metrics[stuck.metric] for r in prep.run.readings if stuck.covers(r.device, stuck.metric, r.true_ms)}
    assert len(values) == 1
    drop, _ = kinds["dropout"]
    inside = [r for r in prep.run.readings if r.device == drop.device and drop.start_ms <= r.true_ms < drop.end_ms]
    assert inside and all(drop.metric not in r.metrics for r in inside)
    spike, _ = kinds["spike"]
    spiked = [r.metrics["temp_c"] for r in prep.run.readings if spike.covers(r.device, "temp_c", r.true_ms)]
    assert max(spiked) > 35.0


def test_pattern_sequences_are_in_the_stream_with_their_truth() -> None:
    prep = prepared("pattern-sequences")
    truth = prep.truth()
    # each door is closed once before it is left open: the example pattern's "opened" follows a "closed"
    assert [(s["kind"], s["device"], s["expect_alert"]) for s in truth["sequences"]] == [
        ("door_closed", "dev-0001", False), ("door_left_open", "dev-0001", True),
        ("door_closed", "dev-0002", False), ("door_closed", "dev-0002", False),
        ("three_failures", "dev-0003", True), ("two_failures", "dev-0004", False),
        ("door_closed", "dev-0005", False), ("door_left_open", "dev-0005", True),
    ]  # fmt: skip
    example = tomllib.loads((ROOT / "gateway" / "examples" / "gateway.toml").read_text())
    names = {p["name"] for p in example["patterns"]}
    assert {s["pattern"] for s in truth["sequences"]} == {"door_left_open", "failed_3x_5m"} <= names
    # the scenario carries the example's patterns themselves, so it raises the same alerts without the file
    mine = {p["name"]: p for p in prep.gateway["patterns"]}
    assert all(mine[n] == next(p for p in example["patterns"] if p["name"] == n) for n in mine), mine
    for seq in prep.run.sequences:
        mine = [r for r in prep.run.readings if r.device == seq.device]
        sent = [(r.true_ms, r.metrics) for r in mine if "temp_c" not in r.metrics]
        want = [(seq.at_ms + e.offset_ms, {e.metric: e.value}) for e in sequence_events(seq.kind)]
        assert [x for x in sent if x in want] == want
    opened = [e for e in sequence_events("door_left_open") if e.value == "closed"]
    assert opened[0].offset_ms > 300_000
    fails = [e.offset_ms for e in sequence_events("three_failures") if e.value == "FAILED"]
    assert len(fails) == 3 and fails[-1] - fails[0] < 300_000


def test_pump_group_correlates_two_boards_with_its_truth() -> None:
    """Each correlated sequence puts its overcurrent on its device and its flow drop on its partner; the truth
    keys its alert by the group; in process, exactly the two pump_fault alerts come out, one per pump, each on
    the readings of two boards."""
    prep = prepared("pump-group")
    truth = prep.truth()
    assert [(s["kind"], s["device"], s["partner"], s["key"], s["expect_alert"]) for s in truth["sequences"]] == [
        ("pump_fault", "dev-0001", "dev-0003", "pump_1", True),
        ("pump_fault_apart", "dev-0002", "dev-0004", "pump_2", False),
        ("pump_fault_apart", "dev-0001", "dev-0002", "pump_1", False),
        ("pump_fault", "dev-0004", "dev-0002", "pump_2", True),
    ]
    for seq in prep.run.sequences:
        for e in sequence_events(seq.kind):
            board = seq.partner if e.partner else seq.device
            assert any(r.device == board and r.true_ms == seq.at_ms + e.offset_ms and r.metrics == {e.metric: e.value}
                       for r in prep.run.readings)  # fmt: skip
    assert {b.device: b.sleep_s for b in prep.run.boards} == {"dev-0001": None, "dev-0002": None,
                                                             "dev-0003": 600, "dev-0004": 600}  # fmt: skip
    _, store = in_process(prep)
    alerts = store.found().rows["alert"]
    assert sorted((a["name"], a["key"]) for a in alerts) == [("pump_fault", "pump_1"), ("pump_fault", "pump_2")]
    assert all(len({x.split("/")[0] for x in a["reading_ids"].split(",")}) == 2 for a in alerts)
    verdict = compare(truth, store.found())
    assert verdict.ok and verdict.table("alert").expected == 2


def test_the_report_draws_a_correlated_sequence_on_both_boards_and_a_group_alert_on_a_board() -> None:
    from sim.report import _sequence_chart, render_report

    prep = prepared("pump-group")
    truth = prep.truth()
    _, store = in_process(prep)
    alerts = store.found().rows["alert"]
    _, chart, _ = _sequence_chart(truth, alerts)
    by_label = {x.label: x for x in chart.series}
    # the flow drops are on the partners' rows (3 and 4, and 2 for the pump_fault with dev-0004 first)
    flow = by_label["flow=low"]
    assert sorted(flow.ys) == [2.0, 2.0, 3.0, 4.0]
    assert sorted(by_label["pump=overcurrent"].ys) == [1.0, 1.0, 2.0, 4.0]
    # each group alert on the row of its first reading's board (pump_1: dev-0001, pump_2: dev-0004)
    assert sorted(by_label["pattern alert"].ys) == [1.0, 4.0]
    assert "pump_fault" in render_report(truth, None, alerts)


def test_clock_chaos_marks_unsynced_corrects_and_dead_letters() -> None:
    prep = prepared("clock-chaos")
    q = Counter(r.quality for r in prep.run.readings)
    assert q["s"] and q["u"] and q["c"]
    reasons = Counter(reason for reason, _ in prep.expected.dead_letters.elements())
    assert reasons["time_in_future"] == 3 and reasons["time_too_old"] > 0
    assert any(k[6] == "unsynced" for k in prep.expected.late)
    corrected = [r for r in prep.run.readings if r.quality == "c"]
    assert all(r.t_ms == r.true_ms for r in corrected if r.reason is None)  # re-timed: skew 0 in that group
    drifting = [b for b in prep.run.boards if b.group == "drifting"]
    assert any(abs(b.drift_ppm) > 20 for b in drifting) and any(b.skew_ms != 0 for b in drifting)


def test_scaling_and_renaming() -> None:
    sc = load_scenario("sleepy").scaled(devices=100, duration_ms=600_000, sites=("x",), prefix="p1")
    assert sc.devices == 100 and [g.devices for g in sc.groups] == [40, 60]
    assert sc.sites == ("x",) and sc.prefix == "p1" and sc.duration_ms == 600_000


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({}, "scenario.name: required"),
        ({"scenario": {"name": "x", "duration": "ten"}}, "scenario.duration"),
        ({"scenario": {"name": "x"}, "fleet": {"metrics": ["nope"]}}, "fleet.metrics"),
        ({"scenario": {"name": "x"}, "network": {"loss": 1.5}}, "network.loss"),
        ({"scenario": {"name": "x"}, "network": {"delay": {"dist": "pareto"}}}, "network.delay.dist"),
        ({"scenario": {"name": "x"}, "anomalies": [{"kind": "melt"}]}, "anomalies[0].kind"),
        ({"scenario": {"name": "x"}, "sequences": [{"kind": "door_left_open", "device": "dev-9999"}]}, "dev-9999"),
        ({"scenario": {"name": "x"}, "sequences": [{"kind": "door_left_open", "device": "dev-0001"}]},
         "sequences send 'door' as a string"),
        ({"scenario": {"name": "x"}, "sequences": [{"kind": "three_failures", "device": "dev-0001"}],
          "gateway": {"metric_types": {"string": ["door"]}}}, "sequences send 'status' as a string"),
        ({"scenario": {"name": "x"}, "fleet": {"colour": 1}}, "unknown key(s) colour"),
        ({"scenario": {"name": "x"}, "gateway": {"windows": [{"name": "w", "kind": "tumbling", "size": "1m",
          "metrics": ["temp_c"], "key": "site"}]}}, "site-keyed"),
    ],
)  # fmt: skip
def test_bad_scenarios_name_the_key(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        sc = parse_scenario(doc)
        prepare(sc, now_ms=fixed_now)


def test_cli_simulate_in_process_writes_truth_and_report(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    truth, report = tmp_path / "t.json", tmp_path / "r.html"
    code = main(
        ["simulate", "storm", "--in-process", "--devices", "3", "--duration", "20m", "--truth", str(truth),
         "--report", str(report)],
        now_ms=fixed_now,
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert "verdict: OK" in out
    doc = json.loads(truth.read_text())
    assert doc["format"] == "edgekit-sim-truth/2" and len(doc["boards"]) == 3
    page = report.read_text()
    # arrivals, watermarks, windows; a storm has no late reading, anomaly or sequence: those say "None"
    assert page.count("<svg") == 3 and page.count("<p class='none'>None:") == 4
    assert main(["simulate", "no-such-scenario", "--in-process"]) == 2
    assert main(["report", "--truth", str(tmp_path / "missing.json"), "--out", str(report)]) == 1


def test_correlated_doors_and_cold_readings_join_at_their_site_within_two_minutes() -> None:
    """The ground truth's joined records are the injected correlations within 2 minutes at one site (one with a
    sleepy thermometer), not the one 3 minutes late nor the one at the other site; the pipeline writes exactly
    them, each with its alert; and verify sees a gateway that joins over a wider interval."""
    prep = prepared("correlated")
    truth = prep.truth()
    sites = {b["device"]: b["site"] for b in truth["boards"]}
    pairs = [(j[2].split("/")[0], j[3].split("/")[0], j[5] - j[4]) for j in truth["expected"]["joins"]]
    joined = [(c["device"], c["other"], c["after_ms"]) for c in truth["correlations"]]
    assert pairs == [c for c in joined if c[2] <= 120_000 and sites[c[0]] == sites[c[1]]]
    assert len(pairs) == 2 and any(truth["boards"][int(o[-4:]) - 1]["sleep_s"] for _, o, _ in pairs)
    res, store = in_process(prep)
    verdict = compare(truth, store.found())
    assert verdict.ok, verdict.render()
    assert verdict.table("join").found == verdict.table("join").expected == 2 == res.stats["joined"]
    assert sum(1 for a in res.alerts if a["source"] == "join") == 2
    wide = dict(prep.gateway)
    wide["joins"] = [{**wide["joins"][0], "between": "b.t BETWEEN a.t AND a.t + 4m"}]
    res, store = run_in_process(prep.run, gateway_config(wide, prep.scenario.prefix)), None
    assert res.store is not None
    wrong = compare(truth, res.store.found())
    assert (wrong.table("join").extra, wrong.table("alert").extra) == (1, 1) and not wrong.ok
