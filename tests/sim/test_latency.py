"""The latency and accuracy measurement (sim/latency.py) on runs small enough to check by hand.

One board, a 60 s tumbling mean with no out-of-orderness, readings whose arrival times are chosen here: every
latency, late reading, pending reading and error below is worked out in the comments from the rules of
docs/semantics.md, not taken from the code.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from sim.cli import main
from sim.latency import Setting, eventful_instance, measure, sweep
from sim.report import latency_html
from sim.scenario import Scenario
from sim.wire import WireReading, encode_batch
from sim.world import Delivery, Run

T0 = 1_764_072_000_000  # 2025-11-25 12:00:00 UTC, on the minute


def run_of(
    *msgs: tuple[int, Sequence[tuple[int, int, float]]] | tuple[int, Sequence[tuple[int, int, float]], int],
) -> Run:
    """A run of one board (dev-1 at site a): each message (arrival, [(seq, t, temp_c)], [flushed]), times from T0."""
    deliveries = []
    for order, msg in enumerate(msgs):
        arrival, readings = msg[0], msg[1]
        flushed = T0 + msg[2] if len(msg) > 2 else None  # type: ignore[misc]
        wire = [WireReading(1, seq, T0 + t, "s", {"temp_c": v}) for seq, t, v in readings]
        payload = encode_batch("dev-1", wire, flushed)
        deliveries.append(Delivery(T0 + arrival, order, "edgekit/a/dev-1/readings", payload, "batch", "dev-1",
                                   T0 + arrival, 1, (), flushed))  # fmt: skip
    return Run(Scenario("hand"), T0, T0 + 600_000, [], [], deliveries, [], [])


def gateway(lateness: str = "0s", **extra: Any) -> dict[str, Any]:
    return {"windows": [{"name": "m1", "kind": "tumbling", "size": "60s", "metrics": ["temp_c"],
                         "aggregates": ["count", "mean"], "allowed_lateness": lateness, "out_of_orderness": "0s",
                         **extra}]}  # fmt: skip


# seq 1 and 2 fall in [T0, T0+60s); seq 3 at T0+60s closes it (watermark T0+60s, bound 0); seq 4 at T0+45s comes
# after that; seq 5 at T0+120s closes [T0+60s, T0+120s); nothing closes [T0+120s, T0+180s).
RUN = run_of(
    (1_000, [(1, 0, 10.0)]),
    (31_000, [(2, 30_000, 20.0)]),
    (61_000, [(3, 60_000, 30.0)]),
    (62_000, [(4, 45_000, 99.0)]),
    (125_000, [(5, 120_000, 40.0)]),
)


def test_a_known_late_reading_is_counted_late_and_the_latencies_are_the_hand_computed_ones() -> None:
    m = measure(RUN, gateway("0s"))
    assert m.mismatches == 0
    finals = [r for r in m.results if r.kind == "final"]
    assert [(r.start_ms - T0, r.at_ms - T0, r.count, r.value) for r in finals] == [
        (0, 61_000, 2, 15.0),  # (10 + 20) / 2, fired by seq 3's arrival
        (60_000, 125_000, 1, 30.0),  # fired by seq 5's arrival
    ]
    # from the newest reading's event time: 61 s - 30 s, 125 s - 60 s; from the last arrival: 61 s - 31 s, 125 - 61 s
    assert [(r.since_event_ms, r.since_arrival_ms) for r in finals] == [(31_000, 30_000), (65_000, 64_000)]
    assert [r.kind for r in m.results] == ["final", "final"]  # no lateness: seq 4 changes nothing
    c = m.windows["m1"]
    assert (c.readings, c.in_result, c.late, c.pending) == (5, 3, 1, 1)  # seq 4 late, seq 5 pending
    assert m.late_share == pytest.approx(1 / 5)
    # the truth of [T0, T0+60s) holds seq 4 too: mean (10 + 20 + 99) / 3 = 43, 3 readings; the final says 15 from 2
    err = m.truth_error("final")
    assert (err.n, err.exact) == (2, 1)
    assert err.mae == pytest.approx(28 / 2)  # |15 - 43| on the first window, 0 on the second
    assert err.mre == pytest.approx((28 / 43 + 0) / 2)
    assert err.count_error == pytest.approx(0.5)
    assert m.state_max_bytes >= m.state_end_bytes > 0


def test_allowed_lateness_turns_the_late_reading_into_an_update_and_the_last_result_is_exact() -> None:
    m = measure(RUN, gateway("60s"))
    kinds = [(r.kind, r.start_ms - T0, r.at_ms - T0, r.count, r.value) for r in m.results]
    assert kinds == [
        ("final", 0, 61_000, 2, 15.0),
        ("update", 0, 62_000, 3, 43.0),  # seq 4 arrived at 62 s: the window re-fires at once
        ("final", 60_000, 125_000, 1, 30.0),
    ]
    update = m.results[1]
    assert (update.since_event_ms, update.since_arrival_ms) == (62_000 - 45_000, 0)
    assert m.windows["m1"].late == 0 and m.late_share == 0
    assert m.truth_error("last").exact == 2 and m.truth_error("final").exact == 1
    assert m.latency_table()[0]["kind"] == "final" and m.latency_table()[1]["kind"] == "update"


def test_a_flushed_marker_makes_the_final_come_with_the_burst() -> None:
    # a sleepy board: three readings taken over two minutes, sent at once at 150 s with flushed = its last reading
    run = run_of((150_000, [(1, 0, 1.0), (2, 30_000, 2.0), (3, 70_000, 4.0)], 70_000))
    m = measure(run, gateway("0s"))
    # watermark max(70 s - 0, flushed + 1 ms): [T0, T0+60s) fires at 150 s, [T0+60s, T0+120s) waits
    assert [(r.start_ms - T0, r.count, r.since_event_ms, r.since_arrival_ms) for r in m.results] == [
        (0, 2, 150_000 - 30_000, 0)  # the newest reading was taken at 30 s and arrived with the result
    ]
    assert (m.windows["m1"].in_result, m.windows["m1"].pending) == (2, 1)
    assert m.windows["m1"].late == 0


def test_provisional_error_is_zero_when_no_reading_arrives_after_the_trigger() -> None:
    # both readings of [T0, T0+60s) arrive before the first tick (2 s): the provisional result there already
    # holds them, the final (on seq 3, 61 s) says the same
    run = run_of((1_000, [(1, 0, 10.0)]), (1_500, [(2, 500, 20.0)]), (61_000, [(3, 60_000, 30.0)]))
    m = measure(run, gateway("0s", early_every="10s"))
    first = [r for r in m.results if r.start_ms == T0]
    assert [(r.kind, r.at_ms - T0, r.count, r.value) for r in first] == [
        ("provisional", 2_000, 2, 15.0),
        ("final", 61_000, 2, 15.0),
    ]
    assert (first[0].since_event_ms, first[0].since_arrival_ms) == (1_500, 500)
    err = m.provisional_error()
    assert (err.n, err.exact, err.mae, err.mre, err.count_error) == (2 - 1, 1, 0.0, 0.0, 0.0)


def test_provisional_results_before_the_final_and_their_error_against_it() -> None:
    # early_every 10 s fires at the first tick after a window took readings, then at least 10 s later:
    # [T0, T0+60s) at 2 s (seq 1: 10) and at 32 s (seq 1, 2: 15), final at 61 s (15), update at 62 s (seq 4: 43);
    # [T0+60s, T0+120s) at 62 s (seq 3: 30), final at 125 s (30)
    m = measure(RUN, gateway("60s", early_every="10s"))
    assert [(r.kind, r.start_ms - T0, r.at_ms - T0, r.count, r.value) for r in m.results] == [
        ("provisional", 0, 2_000, 1, 10.0),
        ("provisional", 0, 32_000, 2, 15.0),
        ("final", 0, 61_000, 2, 15.0),
        ("provisional", 60_000, 62_000, 1, 30.0),  # the tick at 62 s runs before the message that arrives then
        ("update", 0, 62_000, 3, 43.0),
        ("final", 60_000, 125_000, 1, 30.0),
    ]
    assert [(r.since_event_ms, r.since_arrival_ms) for r in m.results if r.kind == "provisional"] == [
        (2_000, 1_000), (2_000, 1_000), (2_000, 1_000)
    ]  # fmt: skip
    # against the finals: |10 - 15| = 5 (a third of 15, one reading short), then exact twice
    err = m.provisional_error()
    assert (err.n, err.exact) == (3, 2)
    assert (
        err.mae == pytest.approx(5 / 3) and err.mre == pytest.approx(1 / 9) and err.count_error == pytest.approx(1 / 3)
    )
    assert m.latency_table()[0]["kind"] == "provisional"  # provisional, final, update in that order per window


def test_the_sweep_applies_each_setting_to_every_window() -> None:
    rows = sweep(RUN, gateway("0s"), [Setting(lateness_ms=0), Setting(lateness_ms=60_000)])
    assert [r.late for r in rows] == [1, 0]
    assert [r.final_error.exact for r in rows] == [1, 1]
    assert [r.last_error.exact for r in rows] == [1, 2]
    assert rows[0].final_event_p50 == 31_000 and rows[0].final_event_p95 == 65_000
    assert eventful_instance([r.to_json() for r in measure(RUN, gateway("60s")).results]) == (
        "m1",
        "dev-1",
        T0,
        "temp_c",
    )


def test_simulate_measure_keeps_the_measurement_in_the_truth_and_the_report_draws_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    truth, page = tmp_path / "t.json", tmp_path / "r.html"
    argv = ["simulate", "flaky-network", "--in-process", "--measure", "--trigger", "30s,5m", "--duration", "40m",
            "--start-ms", str(T0), "--truth", str(truth), "--report", str(page)]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "latency (as configured):" in out and "too late for any result" in out
    doc = json.loads(truth.read_text())["latency"]
    m = doc["measurement"]
    assert m["mismatches"] == 0 and m["results"]
    # every reading of a window is in a result, too late for all, or still pending: nothing unaccounted
    for c in m["windows"].values():
        assert c["in_result"] + c["late"] + c["pending"] == c["readings"] > 0
    html = page.read_text()
    for plot in ("latency-event", "latency-arrival", "error-trigger", "window-value"):
        assert f"data-plot='{plot}'" in html
    # the longer trigger interval gives fewer provisional results
    assert [(r["window"], r["trigger_ms"]) for r in doc["sweep"]] == [
        ("temp_5m", 30_000), ("rh_session", 30_000), ("temp_5m", 300_000), ("rh_session", 300_000)
    ]  # fmt: skip
    short, long = (r for r in doc["sweep"] if r["window"] == "temp_5m")
    assert (short["trigger_ms"], long["trigger_ms"]) == (30_000, 300_000)
    assert short["provisional_error"]["n"] > long["provisional_error"]["n"] > 0
    # the whole trade-off table: every combination, per window; the error chart has a line per bound
    argv = ["simulate", "steady", "--in-process", "--duration", "20m", "--start-ms", str(T0), "--bound", "0,1m",
            "--trigger", "30s,1m", "--truth", str(truth), "--report", str(page)]  # fmt: skip
    assert main(argv) == 0
    rows = json.loads(truth.read_text())["latency"]["sweep"]
    assert [(r["bound_ms"], r["trigger_ms"]) for r in rows] == [
        (0, 30_000),
        (0, 60_000),
        (60_000, 30_000),
        (60_000, 60_000),
    ]
    assert "temp_5m, bound 1.0 min, lateness as set" in page.read_text()
    assert main(["simulate", "steady", "--broker", "mqtt://127.0.0.1:1", "--measure"]) == 2
    assert "need --in-process" in capsys.readouterr().err


HOT_THEN_COLD = {"name": "hot_cold", "on": "both", "within": "5m", "steps": [
    {"name": "hot", "where": "temp_c > 80"}, {"name": "cold", "follow": "next", "where": "temp_c < 20"}]}  # fmt: skip


def test_the_fast_paths_false_and_missed_alerts_are_counted_against_the_exact_path() -> None:
    # hot at 0 s, cold at 20 s: in order, the fast alert comes on cold's arrival (21 s) and is confirmed
    # once the watermark passes 20 s (the reading at 60 s, arriving at 61 s: 40 s later).
    # hot at 100 s, mild at 110 s, cold at 120 s, mild arriving last: on arrival hot -> cold matches (false),
    # in event time mild sits between them ("next"): no match, the fast alert is retracted.
    # cold at 200 s arriving before hot at 190 s: on arrival cold -> hot is no match; in event time it is (missed).
    run = run_of(
        (1_000, [(1, 0, 90.0)]),
        (21_000, [(2, 20_000, 10.0)]),
        (61_000, [(3, 60_000, 50.0)]),
        (101_000, [(4, 100_000, 90.0)]),
        (121_000, [(6, 120_000, 10.0)]),
        (122_000, [(5, 110_000, 50.0)]),
        (201_000, [(8, 200_000, 10.0)]),
        (202_000, [(7, 190_000, 90.0)]),
        (300_000, [(9, 290_000, 50.0)]),
        (800_000, [(10, 790_000, 50.0)]),  # the watermark passes the false alert's span + within: its verdict
    )
    m = measure(run, {"patterns": [HOT_THEN_COLD], "engine": {"watermark": {"out_of_orderness": "15s"}}})
    rule = m.rules()["pattern/hot_cold"]
    assert (rule.fast, rule.exact, rule.confirmed, rule.false, rule.missed) == (2, 2, 1, 1, 1)
    fast = [a for a in m.alerts if a.path == "arrival" and not a.verdict]
    assert [(a.at_ms - T0, a.since_arrival_ms) for a in fast] == [(21_000, 0), (121_000, 0)]
    assert rule.fast_p50_ms == 0
    confirmed = next(a for a in m.alerts if a.verdict == "confirmed")
    assert confirmed.at_ms - T0 == 61_000 and rule.head_start_p50_ms == 40_000
    html = latency_html({"setting": "as configured", "measurement": m.as_dict(), "sweep": []})
    assert '<td class="l">pattern/hot_cold</td><td class="">2</td><td class="">2</td><td class="">1</td>' in html


def test_plan_with_a_scenario_prints_the_trade_off_table(capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli import main as gateway_main

    argv = ["plan", "--scenario", "flaky-network", "--duration", "40m", "--bound", "0,1m", "--lateness", "0,5m"]
    assert gateway_main([*argv, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    rows = {(r["bound_ms"], r["lateness_ms"]): r for r in doc["rows"]}
    assert list(rows) == [(0, 0), (0, 300_000), (60_000, 0), (60_000, 300_000)]
    # a longer bound or lateness never makes more readings late, and this network delays some beyond 0 and 1 min
    assert rows[(0, 0)]["late"] > rows[(60_000, 0)]["late"] >= rows[(60_000, 300_000)]["late"]
    assert rows[(0, 0)]["late"] > rows[(0, 300_000)]["late"]
    # waiting longer costs delay: the final's median latency grows with the bound
    assert rows[(60_000, 0)]["final_event_p50_ms"] > rows[(0, 0)]["final_event_p50_ms"]
    assert gateway_main(argv) == 0
    out = capsys.readouterr().out
    assert "bound 1m, lateness 5m, trigger as set" in out and "late share" in out
    assert gateway_main(["plan", "--scenario", "no-such-scenario"]) == 2


def test_plan_with_triggers_adds_provisional_results_and_changes_no_final(capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli import main as gateway_main

    argv = ["plan", "--scenario", "flaky-network", "--duration", "40m", "--trigger", "off,1m", "--json"]
    assert gateway_main(argv) == 0
    off, every = json.loads(capsys.readouterr().out)["rows"]
    assert (off["trigger_ms"], every["trigger_ms"]) == (0, 60_000)
    assert off["provisional_error"]["n"] == 0 < every["provisional_error"]["n"]
    assert every["first_event_p50_ms"] < off["first_event_p50_ms"]  # a first value sooner
    for same in ("final_event_p50_ms", "final_event_p95_ms", "final_error", "last_error", "late", "missed_windows"):
        assert off[same] == every[same], same


def test_the_latency_pictures_the_docs_show_are_there_and_all_are_shown() -> None:
    """docs/pictures/latency-*.png are drawn by scripts/latency_fleets.py (headless Chromium, not byte for byte
    repeatable, so not compared here: the numbers in docs/semantics.md are, by running the script)."""
    docs = Path(__file__).resolve().parents[2] / "docs"
    shown = set(re.findall(r"pictures/(latency-[a-z0-9-]+\.png)", (docs / "semantics.md").read_text(encoding="utf-8")))
    on_disk = {p.name for p in (docs / "pictures").glob("latency-*.png")}
    assert shown == on_disk and len(shown) == 7
    for name in on_disk:
        data = (docs / "pictures" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and 5_000 < len(data) < 60_000, name  # small, and not blank
