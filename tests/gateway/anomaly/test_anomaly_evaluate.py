"""The evaluation command: the accuracy the issue asks for on the simulator's scenario, the scoring rules,
and the NAB layout (a fixture the project generates, checked to be exactly what the exporter writes)."""

from __future__ import annotations

import filecmp
import math
import random
from pathlib import Path

import pytest

from gateway.anomaly import AnomalySpec, DetectorSpec
from gateway.anomaly.evaluate import Case, Window, evaluate, evaluate_devices, load_nab, main, score_case, sim_cases

ROOT = Path(__file__).resolve().parents[3]
FIXTURE = Path(__file__).resolve().parent / "nab_fixture"
FIXTURE_SCENARIO = ROOT / "sim" / "labelled" / "anomaly_nab_fixture.toml"


def table(text: str) -> dict[str, list[str]]:
    rows = (ln.split() for ln in text.splitlines())
    return {cols[0]: cols[1:] for cols in rows if len(cols) > 7 and cols[1].isdigit() and cols[2].isdigit()}


def test_default_settings_reach_f1_0_9_for_spikes_and_level_shifts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    printed = capsys.readouterr().out
    rows = table(printed)
    for kind in ("spike", "level_shift", "drift", "stuck", "dropout", "noise_burst", "all"):
        assert kind in rows, printed
    f1 = {k: float(v[5]) for k, v in rows.items() if len(v) >= 6 and v[5] != "-"}
    assert f1["spike"] >= 0.9 and f1["level_shift"] >= 0.9, printed
    assert "false alarms per device-day:" in printed
    per_day = float(printed.split("false alarms per device-day:")[1].split()[0])
    assert per_day < 0.5, printed
    # the device's multivariate score over its three metrics: the bound of 0.2 false alarms a day
    line = next(ln for ln in printed.splitlines() if ln.startswith("multivariate"))
    assert float(line.split(" per device-day")[0].rsplit(", ", 1)[1]) <= 0.2, line


def test_the_multivariate_score_per_device_counts_its_openings_against_every_window() -> None:
    t = [i * 60_000 for i in range(600)]
    rng = random.Random(5)
    a = [10.0 + rng.gauss(0, 0.5) for _ in t]
    b = [2.0 * v + rng.gauss(0, 0.2) for v in a]  # b follows a
    b[400] -= 6.0  # the relation broken once, each metric inside its own band
    b[500] += 40.0  # and a plain spike
    cases = [
        Case("dev/a", "dev", "spike", t, a, []),
        Case("dev/b", "dev", "spike", t, b, [Window("spike", t[500], t[500] + 1)]),
    ]
    rep = evaluate_devices(cases, AnomalySpec(enabled=True), tolerance_ms=60_000)
    assert (rep.devices, rep.windows, rep.detected) == (1, 1, 1)
    assert rep.openings == 2 and rep.false_alarms == 1  # the broken relation is not labelled here
    assert math.isclose(rep.device_days, 599 / 1440)


def test_scoring_rules() -> None:
    case = Case("c", "d", "spike", [], [], [Window("spike", 1000, 1001), Window("level_shift", 5000, 9000)])
    delays, fa = score_case(case, [400, 1000, 1200, 9500, 12_000], tolerance_ms=1000)
    assert delays == [0, 4500] and fa == 2  # 400 is before the first, 12000 after the second plus tolerance
    delays, fa = score_case(case, [], tolerance_ms=1000)
    assert delays == [None, None] and fa == 0


def test_report_rows_and_rates() -> None:
    t = [i * 60_000 for i in range(400)]
    x = [10.0 + (0.5 if i % 2 else -0.5) for i in range(400)]
    x[200] = 30.0
    case = Case("c", "dev", "spike", t, x, [Window("spike", t[200], t[200] + 1)])
    rep = evaluate([case], DetectorSpec())
    row = rep.rows["spike"]
    assert (row.windows, row.detected, row.false_alarms, row.delays_ms) == (1, 1, 0, [0])
    assert row.f1 == 1.0 and math.isclose(rep.device_days, 399 / 1440)


def test_nab_fixture_is_what_the_exporter_writes(tmp_path: Path) -> None:
    assert main(["export-nab", str(tmp_path), "--scenario", str(FIXTURE_SCENARIO)]) == 0
    cmp = filecmp.dircmp(tmp_path, FIXTURE)
    files = [p.relative_to(FIXTURE) for p in FIXTURE.rglob("*") if p.is_file()]
    assert len(files) == 3
    for rel in files:
        assert (tmp_path / rel).read_bytes() == (FIXTURE / rel).read_bytes(), rel
    assert not cmp.left_only and not cmp.right_only


def test_nab_layout_scores_like_the_series_it_came_from(capsys: pytest.CaptureFixture[str]) -> None:
    import tomllib

    from sim.anomalies import scenario_from_mapping

    cases = load_nab(FIXTURE)
    assert [c.name for c in cases] == ["sim/dev-0001_temp_c.csv", "sim/dev-0002_temp_c.csv"]
    assert all(len(c.t_ms) == 720 and c.group == "sim" for c in cases)
    direct = sim_cases(scenario_from_mapping(tomllib.loads(FIXTURE_SCENARIO.read_text())))
    for a, b in zip(cases, direct, strict=True):
        assert list(a.t_ms) == list(b.t_ms) and list(a.values) == list(b.values)
        assert [(w.start_ms, w.end_ms) for w in a.windows] == [
            (w.start_ms, w.start_ms + max(1000, w.end_ms - w.start_ms)) for w in b.windows
        ]
    spec = DetectorSpec()
    nab, sim = evaluate(cases, spec), evaluate(direct, spec)
    assert (nab.total.windows, nab.total.detected, nab.total.false_alarms) == (
        sim.total.windows,
        sim.total.detected,
        sim.total.false_alarms,
    )
    assert main(["nab", str(FIXTURE)]) == 0
    rows = table(capsys.readouterr().out)
    assert rows["sim"][0] == "6" and rows["sim"][1] == str(nab.total.detected)


def test_bad_nab_folder_is_an_error_not_a_crash(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["nab", str(tmp_path)]) == 2
    assert "cannot read NAB labels" in capsys.readouterr().err
