"""sim.anomalies: pure, seeded injectors and scenarios whose labels say exactly what was changed."""

from __future__ import annotations

import random
import tomllib
from pathlib import Path

import pytest

from sim.anomalies import (
    KINDS,
    SIGNALS,
    ScenarioSpec,
    Series,
    baseline_series,
    drift,
    dropout,
    generate_scenario,
    inject,
    level_shift,
    noise_burst,
    scenario_from_mapping,
    spans_overlap,
    spike,
    stuck,
)
from sim.errors import SpecError

MIN = 60_000
SCENARIOS = Path(__file__).resolve().parents[2] / "sim" / "labelled"


def base(n: int = 100) -> Series:
    return baseline_series(SIGNALS["temp_c"], 0, n, MIN, random.Random(1))


def changed(a: Series, b: Series) -> list[int]:
    return [t for t, x, y in zip(a.t_ms, a.values, b.values, strict=True) if x != y]


def test_injectors_change_exactly_their_span_and_never_their_input() -> None:
    s = base()
    before = s.values
    out, span = spike(s, 10 * MIN + 1, 5.0)
    assert changed(s, out) == [11 * MIN] and (span.start_ms, span.end_ms) == (11 * MIN, 11 * MIN + 1)
    assert out.values[11] == round(s.values[11] + 5.0, 2)
    out, span = level_shift(s, 20 * MIN, 30 * MIN, -2.0)
    assert changed(s, out) == [t * MIN for t in range(20, 30)] and span.kind == "level_shift"
    out, _ = drift(s, 20 * MIN, 30 * MIN, 10.0)
    assert [round(y - x, 2) for x, y in zip(s.values[20:30], out.values[20:30], strict=True)] == [
        float(i) for i in range(10)
    ]
    out, _ = stuck(s, 20 * MIN, 30 * MIN)
    assert set(out.values[20:30]) == {s.values[19]} and out.values[30:] == s.values[30:]
    out, span = dropout(s, 20 * MIN, 30 * MIN)
    assert len(out.t_ms) == 90 and not any(20 * MIN <= t < 30 * MIN for t in out.t_ms) and span.magnitude == 0.0
    out, _ = noise_burst(s, 20 * MIN, 30 * MIN, 3.0, random.Random(2))
    assert set(changed(s, out)) <= {t * MIN for t in range(20, 30)} and len(changed(s, out)) >= 8
    assert s.values == before


def test_inject_dispatches_every_kind_with_noise_units() -> None:
    s = base()
    for kind in KINDS:
        out, span = inject(s, kind, 40 * MIN, 10 * MIN, 6.0, 0.15, random.Random(3))
        assert span.kind == kind and span.start_ms == 40 * MIN and out.values != s.values
        if kind in ("spike", "level_shift", "drift"):
            assert abs(span.magnitude) == pytest.approx(0.9)
    with pytest.raises(SpecError, match="end_ms > start_ms"):
        level_shift(s, 10, 10, 1.0)
    with pytest.raises(SpecError, match="no reading before"):
        stuck(s, 0, MIN)


def test_scenario_is_seeded_and_labelled() -> None:
    spec = ScenarioSpec(devices=6, days=1.0, per_series=3)
    a, b = generate_scenario(spec), generate_scenario(spec)
    assert a == b and a != generate_scenario(ScenarioSpec(devices=6, days=1.0, per_series=3, seed=1))
    assert len(a) == 18
    for i, s in enumerate(a):
        assert {sp.kind for sp in s.spans} == {KINDS[i % len(KINDS)]}
        assert len(s.spans) == 3 and not spans_overlap(s.spans)
        assert all(sp.start_ms >= spec.start_ms + spec.quiet_start_ms for sp in s.spans)
        assert list(s.t_ms) == sorted(s.t_ms)
    mixed = generate_scenario(ScenarioSpec(devices=2, metrics=("rh",), days=2.0, per_series=6, mixed=True))
    assert [sp.kind for sp in mixed[0].spans] == list(KINDS)


def test_scenario_files_and_errors() -> None:
    default = scenario_from_mapping(tomllib.loads((SCENARIOS / "anomaly_default.toml").read_text()))
    assert default == ScenarioSpec()
    with pytest.raises(SpecError, match="unknown scenario key"):
        scenario_from_mapping({"device": 3})
    with pytest.raises(SpecError, match="do not fit"):
        ScenarioSpec(days=0.5, per_series=10)
    with pytest.raises(SpecError, match="has no signal"):
        ScenarioSpec(metrics=("lux",))
