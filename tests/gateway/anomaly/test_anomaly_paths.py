"""Anomaly detection on arrival, in event time, or both (``[anomaly] on``), on random series with spikes and
random disorder:

- ``arrival`` (the default) is the engine as it always was;
- ``event_time`` with disorder inside the bound scores exactly what the engine scores with the readings in
  order: the same points, the same alerts;
- ``both`` in order: every arrival alert is confirmed, none retracted or missed;
- ``both`` with any disorder: every arrival alert ends confirmed or retracted once the watermark passes.
"""

from __future__ import annotations

import json
import random
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.alerts import Alert
from gateway.anomaly import AnomalyEngine, parse_anomaly
from gateway.anomaly.paths import AnomalyPaths
from gateway.engine.watermark import WatermarkSpec
from gateway.errors import ConfigError
from gateway.model import Reading

T0 = 1_764_072_000_000
S = 1_000
NOW = T0 + 86_400_000
BOUND = 5 * S
SECTION: dict[str, Any] = {"warmup": 5, "multivariate": False, "compound": {"span": "20s"}, "gap_factor": 50.0}
SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def paths(on: str) -> AnomalyPaths:
    spec = parse_anomaly({"anomaly": {**SECTION, "on": on}})
    return AnomalyPaths(spec, WatermarkSpec(out_of_orderness_ms=BOUND), max_future_ms=300_000)


@st.composite
def series(draw: st.DrawFn) -> list[Reading]:
    """Two devices, 40 readings each a second apart: noisy temperature and humidity with a few spikes."""
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    spikes = draw(st.sets(st.integers(8, 39), max_size=4))
    out: list[Reading] = []
    for device in ("d1", "d2"):
        for i in range(40):
            temp = 20 + rng.gauss(0, 0.2) + (8 if i in spikes else 0)
            rh = 50 + rng.gauss(0, 1.0) + (30 if i in spikes and rng.random() < 0.5 else 0)
            out.append(Reading("s1", device, 1, i, T0 + i * S + (300 if device == "d2" else 0), "s",
                               {"temp_c": temp, "rh": rh}))  # fmt: skip
    return out


def arrive(readings: list[Reading], rng: random.Random | None, spread: int = BOUND) -> list[Reading]:
    if rng is None:
        return sorted(readings, key=lambda r: (r.t_ms, r.device))
    return [r for _, _, r in sorted((r.t_ms + rng.randint(0, spread), i, r) for i, r in enumerate(readings))]


def run(p: AnomalyPaths, order: list[Reading]) -> tuple[list[str], list[Alert]]:
    lines: list[str] = []
    alerts: list[Alert] = []
    for r in order:
        out = p.process([r], NOW, device=r.device)
        lines += out.lines
        alerts += out.alerts
    for device in ("d1", "d2"):  # the boards' flushed markers, past the end
        out = p.process([], NOW, device=device, flushed_ms=T0 + 3_600_000)
        lines += out.lines
        alerts += out.alerts
    return lines, alerts


def per_device(lines: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for ln in lines:
        out.setdefault(ln.split("device=")[1].split(",")[0], []).append(ln)
    return out


@SETTINGS
@given(series())
def test_arrival_is_the_engine_as_it_was(readings: list[Reading]) -> None:
    p = paths("arrival")
    eng = AnomalyEngine(parse_anomaly({"anomaly": SECTION}))
    order = arrive(readings, random.Random(1))
    got = [p.process([r], NOW, device=r.device) for r in order]
    want = [eng.process([r], NOW) for r in order]
    assert [(o.lines, o.alerts) for o in got] == [(o.lines, o.alerts) for o in want]
    assert p.snapshot() == eng.snapshot()


@SETTINGS
@given(series(), st.integers(0, 2**32 - 1))
def test_event_time_undoes_disorder_inside_the_bound(readings: list[Reading], seed: int) -> None:
    eng = AnomalyEngine(parse_anomaly({"anomaly": SECTION}))
    want_lines: list[str] = []
    want_alerts: list[Alert] = []
    for r in arrive(readings, None):
        out = eng.process([r], NOW)
        want_lines += out.lines
        want_alerts += out.alerts
    p = paths("event_time")
    lines, alerts = run(p, arrive(readings, random.Random(seed)))
    assert per_device(lines) == per_device(want_lines)
    assert sorted(a.to_line() for a in alerts) == sorted(a.to_line() for a in want_alerts)
    assert p.stats["late"] == 0 and p.engine.stats["out_of_order"] == 0 and p.buffered() == 0


@SETTINGS
@given(series())
def test_both_in_order_confirms_every_arrival_alert(readings: list[Reading]) -> None:
    p = paths("both")
    _, alerts = run(p, arrive(readings, None))
    fast = [a for a in alerts if a.path == "arrival"]
    exact = [a for a in alerts if a.path == "event_time"]
    assert len(fast) + len(exact) == len(alerts)
    assert all(a.verdict == "confirmed" for a in exact)
    assert sorted(a.refers for a in exact) == sorted(a.id for a in fast)
    assert sorted((a.name, a.key, a.readings) for a in fast) == sorted((a.name, a.key, a.readings) for a in exact)
    assert (p.stats["fast_alerts"], p.stats["confirmed"], p.stats["retracted"], p.stats["missed_fast"]) == (
        len(fast), len(fast), 0, 0,
    )  # fmt: skip


@SETTINGS
@given(series(), st.integers(0, 2**32 - 1), st.sampled_from([BOUND, 4 * BOUND]))
def test_both_gives_every_arrival_alert_one_verdict(readings: list[Reading], seed: int, spread: int) -> None:
    p = paths("both")
    _, alerts = run(p, arrive(readings, random.Random(seed), spread))
    fast = [a for a in alerts if a.path == "arrival" and not a.verdict]
    retracted = [a for a in alerts if a.verdict == "retracted"]
    exact = [a for a in alerts if a.path == "event_time"]
    assert all(a.verdict in ("confirmed", "missed_fast") for a in exact)
    assert sorted([a.refers for a in exact if a.verdict == "confirmed"] + [a.refers for a in retracted]) == sorted(
        a.id for a in fast
    )
    ids = [a.id for a in alerts]
    for i, a in enumerate(alerts):
        if a.refers:
            assert ids.index(a.refers) < i  # a verdict comes after the alert it judges
    assert p.open == []
    s = p.stats
    assert s["confirmed"] + s["retracted"] == s["fast_alerts"] == len(fast)
    # the snapshot goes through JSON and back into an operator that then says the same
    q = paths("both")
    q.restore(json.loads(json.dumps(p.snapshot())))
    assert q.snapshot() == p.snapshot()


def test_on_is_parsed_and_checked() -> None:
    assert parse_anomaly({"anomaly": {}}).on == "arrival"
    assert parse_anomaly({"anomaly": {"on": "both"}}).on == "both"
    try:
        parse_anomaly({"anomaly": {"on": "later"}})
    except ConfigError as exc:
        assert str(exc) == "anomaly.on: expected 'arrival', 'event_time' or 'both', got 'later'"
    else:
        raise AssertionError("on = 'later' was accepted")


def test_pipeline_publishes_the_verdicts_and_counts_them() -> None:
    from gateway.config import parse_config
    from gateway.pipeline import Pipeline

    cfg = parse_config({"anomaly": {**SECTION, "on": "both"}, "engine": {"watermark": {"out_of_orderness": "5s"}}},
                       env={})  # fmt: skip
    pipe = Pipeline(cfg)
    rng = random.Random(4)
    values = [20 + rng.gauss(0, 0.2) for _ in range(30)]
    values[20] = 40.0  # a spike: an arrival alert at once ...
    published: list[dict[str, Any]] = []

    def send(doc: dict[str, Any]) -> None:
        out = pipe.handle("edgekit/s1/d1/readings", json.dumps({"v": 1, "dev": "d1", **doc}).encode(), NOW)
        published.extend(json.loads(p) for _, p in out.publish)

    for i, v in enumerate(values[:21]):
        send({"r": [{"b": 1, "s": i, "t": T0 + i * S, "q": "s", "m": {"temp_c": v}}]})
    assert [(d["name"], d["path"]) for d in published] == [("zscore.temp_c", "arrival")]
    send({"r": [], "flushed": T0 + 60 * S})  # ... and its confirmation once the watermark passes it
    assert [(d["path"], d.get("verdict"), d.get("refers")) for d in published] == [
        ("arrival", None, None),
        ("event_time", "confirmed", published[0]["id"]),
    ]
    s = pipe.stats
    assert (s.fast_alerts, s.alerts_confirmed, s.alerts_retracted, s.alerts_missed_fast) == (1, 1, 0, 0)


def test_the_event_time_buffer_is_bounded(monkeypatch: Any) -> None:
    import gateway.anomaly.paths as paths_module

    monkeypatch.setattr(paths_module, "MAX_BUFFERED", 3)
    p = paths("event_time")
    for i in range(5):  # all inside the bound of the latest: nothing passes the watermark
        p.process([Reading("s1", "d1", 1, i, T0 + i * 100, "s", {"temp_c": 20.0})], NOW, device="d1")
    assert p.buffered() == 3 and p.stats["forced"] == 2 and p.engine.stats["scored"] == 2
