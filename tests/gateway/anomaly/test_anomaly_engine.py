"""The fleet engine: series per device and metric, compound alerts, refusals, output lines, state; and the
pipeline feeding it."""

from __future__ import annotations

import json
import random
from typing import Any

from gateway.anomaly import AnomalyEngine, parse_anomaly
from gateway.config import parse_config
from gateway.lineproto import reading_time_ns
from gateway.model import MetricValue, Reading
from gateway.pipeline import Pipeline

MIN = 60_000
T0 = 1_704_067_200_000


def reading(device: str, i: int, metrics: dict[str, MetricValue], *, site: str = "s1", q: str = "s") -> Reading:
    return Reading(site, device, 1, i, T0 + i * MIN, q, metrics)  # type: ignore[arg-type]


def history(device: str, n: int = 60, seed: int = 0) -> list[Reading]:
    rng = random.Random(seed)
    return [reading(device, i, {"temp_c": 20 + rng.gauss(0, 0.2), "rh": 50 + rng.gauss(0, 1.0)}) for i in range(n)]


def engine(section: dict[str, Any] | None = None) -> AnomalyEngine:
    return AnomalyEngine(parse_anomaly({"anomaly": section or {}}))


def test_one_point_per_scored_value_and_alerts_for_each_metric_plus_one_compound() -> None:
    eng = engine({"multivariate": False})  # its own points and alert: test_anomaly_multivariate.py
    out = eng.process(history("d1"), T0 + 60 * MIN)
    assert len(out.lines) == 120 and not out.alerts
    assert all(ln.startswith("anomaly,device=d1,metric=") for ln in out.lines)
    bad = reading("d1", 60, {"temp_c": 30.0, "rh": 80.0, "door": True, "label": "x"})
    out = eng.process([bad], T0 + 61 * MIN)
    names = [(a.name, a.severity, a.key) for a in out.alerts]
    assert names == [
        ("zscore.temp_c", "warning", "d1"),
        ("zscore.rh", "warning", "d1"),
        ("compound.device", "critical", "d1"),
    ]
    compound = out.alerts[2]
    assert compound.readings == (bad.key,) and compound.details["metrics"] == "rh,temp_c"
    assert all(a.source == "anomaly" and a.site == "s1" for a in out.alerts)
    z = out.alerts[0]
    assert float(z.details["z"]) > 4.5 and z.details["metric"] == "temp_c" and "above its baseline" in z.message
    # the distance in deviations, and the z it reads as (smaller: the deviation was learned from a few points)
    dist = (float(z.details["value"]) - float(z.details["mean"])) / float(z.details["std"])
    assert float(z.details["dist"]) == dist > float(z.details["z"])
    assert f"is {float(z.details['dist']):.4g} deviations above" in z.message and "(z " in z.message
    temp_line = next(ln for ln in out.lines if "metric=temp_c" in ln)
    assert "anomalous=true" in temp_line and 'phase="scored"' in temp_line
    assert temp_line.endswith(f" {reading_time_ns(bad.t_ms, bad.boot, bad.seq)}")  # the reading's own point time
    assert eng.stats["scored"] == 122 and eng.stats["compound_alerts"] == 1


def test_compound_needs_the_metrics_within_the_span() -> None:
    eng = engine({"compound": {"span": "5m"}, "gap_factor": 20.0, "multivariate": False})
    eng.process(history("d1"), T0 + 60 * MIN)
    out = eng.process([reading("d1", 60, {"temp_c": 30.0, "rh": 50.0})], T0 + 60 * MIN)
    out2 = eng.process([reading("d1", 70, {"temp_c": 20.0, "rh": 80.0})], T0 + 70 * MIN)  # 10 min later: too late
    assert [a.name for a in out.alerts + out2.alerts] == ["zscore.temp_c", "zscore.rh"]


def test_group_compound_across_devices() -> None:
    eng = engine({"groups": [{"name": "greenhouse", "devices": ["gh-*"], "min_devices": 2}]})
    for d in ("gh-1", "gh-2", "field-1"):
        eng.process(history(d, seed=hash(d) % 100), T0 + 60 * MIN)
    now = T0 + 63 * MIN
    a = eng.process([reading("gh-1", 60, {"temp_c": 30.0})], now)
    b = eng.process([reading("field-1", 61, {"temp_c": 30.0})], now)  # not in the group
    c = eng.process([reading("gh-2", 63, {"temp_c": 31.0})], now)
    assert [x.name for x in a.alerts + b.alerts] == ["zscore.temp_c", "zscore.temp_c"]
    assert [(x.name, x.key, x.severity) for x in c.alerts] == [
        ("zscore.temp_c", "gh-2", "warning"),
        ("compound.group", "greenhouse", "critical"),
    ]
    group = c.alerts[1]
    assert group.details["devices"] == "gh-1,gh-2" and (group.first_ms, group.last_ms) == (T0 + 60 * MIN, T0 + 63 * MIN)
    assert set(group.readings) == {("gh-1", 1, 60), ("gh-2", 1, 63)}


def test_refusals_are_counted_never_raised() -> None:
    eng = engine()
    eng.process(history("d1"), T0 + 60 * MIN)
    out = eng.process(
        [
            reading("d1", 10, {"temp_c": 99.0}),  # older than what the series has scored
            reading("d1", 61, {"temp_c": 99.0}, q="u"),  # unsynced: no place in time
            reading("d1", 10_000, {"temp_c": 20.0}),  # a week in the future
            reading("d1", 62, {"temp_c": 1e300, "rh": 10**400}),  # absurd values
        ],
        T0 + 62 * MIN,
    )
    assert not out.alerts and not out.lines
    assert (eng.stats["out_of_order"], eng.stats["unsynced"], eng.stats["time_refused"], eng.stats["out_of_range"]) == (
        1,
        1,
        1,
        2,
    )


def test_readings_of_a_batch_are_scored_in_event_time_order() -> None:
    rs = history("d1", 80)
    a, b = engine(), engine()
    want = a.process(rs, T0 + 80 * MIN).lines
    shuffled = rs[:]
    random.Random(3).shuffle(shuffled)
    assert b.process(shuffled, T0 + 80 * MIN).lines == want and b.stats["out_of_order"] == 0


def test_max_series_bounds_the_state() -> None:
    eng = engine({"max_series": 3})
    eng.process(history("d1", 5) + history("d2", 5), T0 + 5 * MIN)
    assert len(eng.detectors) == 3 and eng.stats["series_refused"] == 5  # d2's rh


def test_write_flagged_only() -> None:
    eng = engine({"write": "flagged", "metrics": ["temp_c"]})
    assert eng.process(history("d1"), T0 + 60 * MIN).lines == []
    out = eng.process([reading("d1", 60, {"temp_c": 30.0, "rh": 90.0})], T0 + 61 * MIN)
    assert len(out.lines) == 1 and "metric=temp_c" in out.lines[0]


def test_rebaseline_alert_says_so() -> None:
    eng = engine({"metrics": ["temp_c"], "rebaseline_after": "1h"})
    rng = random.Random(5)
    rs = [reading("d1", i, {"temp_c": 20 + rng.gauss(0, 0.2) + (5.0 if i >= 60 else 0.0)}) for i in range(200)]
    alerts = eng.process(rs, T0 + 200 * MIN).alerts
    assert [(a.name, a.severity) for a in alerts] == [("zscore.temp_c", "warning"), ("rebaseline.temp_c", "info")]
    rb = alerts[1]
    assert rb.first_ms == T0 + 60 * MIN and rb.last_ms == T0 + 120 * MIN and rb.details["after_ms"] == 60 * MIN
    assert "anomalous for 60 min: taken as its new normal" in rb.message


def test_gap_alerts_once_per_reading() -> None:
    eng = engine({"gap_alerts": True})
    eng.process(history("d1"), T0 + 60 * MIN)
    out = eng.process([reading("d1", 200, {"temp_c": 20.0, "rh": 50.0})], T0 + 200 * MIN)
    assert [(a.name, a.details["gap_ms"]) for a in out.alerts] == [("gap", 141 * MIN)]


def test_snapshot_restore_gives_identical_output() -> None:
    section = {"groups": [{"name": "g", "devices": ["d*"]}]}
    rs = history("d1", 100) + history("d2", 100, seed=1)
    rs += [reading("d1", 100, {"temp_c": 30.0, "rh": 90.0}), reading("d2", 101, {"temp_c": 40.0})]
    whole = engine(section)
    want = [whole.process([r], r.t_ms) for r in rs]
    first = engine(section)
    got = [first.process([r], r.t_ms) for r in rs[:150]]
    second = engine(section)
    second.restore(json.loads(json.dumps(first.snapshot())))
    got += [second.process([r], r.t_ms) for r in rs[150:]]
    assert got == want and second.snapshot() == whole.snapshot()
    assert any(a.name == "compound.group" for o in want for a in o.alerts)


def test_pipeline_scores_new_readings_and_publishes_alerts() -> None:
    cfg = parse_config({"anomaly": {"metrics": ["temp_c"]}}, env={})
    pipe = Pipeline(cfg)
    rng = random.Random(2)
    rows = [
        {"b": 1, "s": i, "t": T0 + i * MIN, "q": "s", "m": {"temp_c": round(20 + rng.gauss(0, 0.2), 2)}}
        for i in range(60)
    ]
    rows.append({"b": 1, "s": 60, "t": T0 + 60 * MIN, "q": "s", "m": {"temp_c": 35.0}})
    topic = "edgekit/s1/d1/readings"
    outs = [pipe.handle(topic, json.dumps({"v": 1, "dev": "d1", "r": rows[i : i + 20]}).encode(), T0 + 70 * MIN)
            for i in range(0, 61, 20)]  # fmt: skip
    dup = pipe.handle(topic, json.dumps({"v": 1, "dev": "d1", "r": rows[-1:]}).encode(), T0 + 70 * MIN)
    assert not dup.publish and not any(ln.startswith("anomaly,") for ln in dup.lines)  # a duplicate is not rescored
    anomaly_lines = [ln for o in outs for ln in o.lines if ln.startswith("anomaly,")]
    assert len(anomaly_lines) == 61
    published = [(t, json.loads(p)) for o in outs for t, p in o.publish]
    assert [(t, d["name"]) for t, d in published] == [("edgekit/_gateway/alerts/s1/anomaly", "zscore.temp_c")]
    assert any(ln.startswith("alert,") and "source=anomaly" in ln for ln in outs[-1].lines)
    assert pipe.stats.alerts == 1
    off = Pipeline(parse_config({}, env={}))
    assert off.anomaly is None
    quiet = off.handle(topic, json.dumps({"v": 1, "dev": "d1", "r": rows[:5]}).encode(), T0 + 70 * MIN)
    assert not any(ln.startswith("anomaly,") for ln in quiet.lines)


def test_the_engine_writes_exactly_what_anomaly_line_writes() -> None:
    """The engine builds its points directly (one per value); they must be line() output, byte for byte."""
    from gateway.anomaly import Detector
    from gateway.anomaly.engine import anomaly_line

    eng = engine({"multivariate": False})
    last = reading("d 1,x=y", 80, {"temp_c": 35.0, "rh": 50.0}, site="a\\b")
    rs = [*history("d 1,x=y", 80, seed=4), last]
    out = eng.process(rs, T0 + 90 * MIN)
    dets = {m: Detector(eng.spec.detector_for(m)) for m in ("temp_c", "rh")}
    want = []
    for r in rs:
        for m, v in r.metrics.items():
            want.append(anomaly_line(r.site, r.device, m, dets[m].process(r.t_ms, float(v)), r.boot, r.seq))  # type: ignore[arg-type]
    assert out.lines == want
