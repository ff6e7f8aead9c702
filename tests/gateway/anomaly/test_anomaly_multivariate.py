"""The per-device multivariate (T^2) score: checked against NumPy's Mahalanobis distance, flags a broken
relation that no single metric sees, writes its points and alert, and survives snapshot/restore."""

from __future__ import annotations

import copy
import json
import math
import random

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.anomaly import AnomalyEngine, DetectorSpec, parse_anomaly
from gateway.anomaly.detector import STATE_FIELDS
from gateway.anomaly.engine import AnomalyOutput
from gateway.anomaly.multivariate import MEMORY, RIDGE, MultiDetector, chi2_z, max_z, t2_z
from gateway.model import Reading

MIN = 60_000
T0 = 1_704_067_200_000


def pump(n: int, seed: int = 3) -> list[dict[str, float]]:
    """current and flow move together (flow = 10 * current + noise), pressure on its own."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        c = 5.0 + rng.gauss(0, 1.0)
        out.append({"current": c, "flow": 10.0 * c + rng.gauss(0, 1.0), "pressure": 2.0 + rng.gauss(0, 0.1)})
    return out


def test_t2_matches_numpy_mahalanobis_over_the_learned_statistics() -> None:
    spec = DetectorSpec()
    md = MultiDetector(spec)
    rows = pump(400)
    for i, row in enumerate(rows):
        md.process(i * MIN, row)
    md._refresh()  # the inverse as of now (it is otherwise refreshed every 16 readings)
    st = md.state
    x = {"current": 7.0, "flow": 52.0, "pressure": 2.05}
    res = md.process(400 * MIN, x)
    assert res is not None and res.z is not None
    cov = np.array(st.cov)
    sd = np.sqrt(np.diag(cov))
    corr = cov / np.outer(sd, sd) + RIDGE * np.eye(3)
    u = (np.array([x[m] for m in st.names]) - np.array(st.mean)) / sd
    want = float(u @ np.linalg.inv(corr) @ u)
    assert math.isclose(res.t2, want, rel_tol=1e-9)
    assert math.isclose(res.z, t2_z(want, 3, min(st.n, 2 * MEMORY - 1)))


def test_the_reference_is_the_plain_mean_and_covariance_through_the_warm_up_then_has_a_long_memory() -> None:
    rows = pump(400)
    md = MultiDetector(DetectorSpec())
    k = 3
    for i, row in enumerate(rows[: 10 * k]):
        md.process(i * MIN, row)
    x = np.array([[r[m] for m in md.state.names] for r in rows[: 10 * k]])
    assert np.allclose(md.state.mean, x.mean(0)) and np.allclose(md.state.cov, np.cov(x.T, bias=True))
    for i, row in enumerate(rows[10 * k :], start=10 * k):
        md.process(i * MIN, row)
    st = md.state
    assert 390 <= st.n <= 400  # readings with a z beyond clear_threshold (rare in noise) are not learned
    assert st.n >= MEMORY
    # after the warm-up each learned reading weighs max(1/n, 1/memory): here 1/200
    before = list(st.mean)
    calm = {m: v + 0.01 for m, v in zip(st.names, before, strict=True)}
    res = md.process(400 * MIN, calm)
    assert res is not None and res.z is not None and res.z < 2.5
    assert np.allclose(np.array(st.mean) - np.array(before), 0.01 / MEMORY, rtol=1e-9, atol=0)
    # a reading beyond clear_threshold (but below the threshold) is not learned
    before = list(st.mean)
    mean = dict(zip(st.names, before, strict=True))
    for off in (x / 4 for x in range(40)):  # flow below its relation with current, further and further
        probe = copy.deepcopy(md)
        row = {**mean, "flow": mean["flow"] - off}
        r = probe.process(401 * MIN, row)
        assert r is not None and r.z is not None
        if 2.5 <= r.z < 4.5:
            break
    odd = md.process(401 * MIN, row)
    assert odd is not None and odd.z is not None and 2.5 <= odd.z < 4.5, odd.z
    assert st.mean == before and not odd.anomalous


def test_paulson_against_the_f_distribution() -> None:
    """t2_z turns T^2 against a reference of n readings into a normal deviate through F(k, n - k): at the
    exact 0.999 quantile of F (computed here by integrating its density) it gives 3.09, the normal one."""
    for k, n in ((8, 80), (3, 30), (8, 399), (2, 200)):
        q = f_quantile(0.999, k, n - k)
        t2 = q * k * (n + 1) * (n - 1) / (n * (n - k))
        assert abs(t2_z(t2, k, n) - 3.090) < 0.04, (k, n, t2_z(t2, k, n))
    assert abs(t2_z(26.124, 8, 1e9) - chi2_z(26.124, 8)) < 1e-6  # a large reference: chi-square(k)
    assert t2_z(30.0, 8, 80) < chi2_z(30.0, 8)  # a small one: the same T^2 is less surprising


def f_cdf(x: float, d1: int, d2: int) -> float:
    if x <= 0:
        return 0.0
    t = np.linspace(0.0, x, 40_001)
    lg = math.lgamma((d1 + d2) / 2) - math.lgamma(d1 / 2) - math.lgamma(d2 / 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        logpdf = lg + (d1 / 2) * math.log(d1 / d2) + (d1 / 2 - 1) * np.log(t) - ((d1 + d2) / 2) * np.log1p(d1 * t / d2)
    pdf = np.exp(logpdf)
    pdf[0] = 0.0 if d1 > 2 else 1.0
    h = x / 40_000
    return float(h / 3 * (pdf[0] + pdf[-1] + 4 * pdf[1:-1:2].sum() + 2 * pdf[2:-1:2].sum()))


def f_quantile(p: float, d1: int, d2: int) -> float:
    lo, hi = 0.0, 100.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if f_cdf(mid, d1, d2) < p else (lo, mid)
    return (lo + hi) / 2


def test_wilson_hilferty_against_known_chi_square_quantiles() -> None:
    # chi-square upper quantiles (p = 0.001): k=2: 13.816, k=8: 26.124 -> the normal deviate 3.090
    assert abs(chi2_z(13.816, 2) - 3.090) < 0.08
    assert abs(chi2_z(26.124, 8) - 3.090) < 0.03  # Wilson-Hilferty is an approximation
    assert chi2_z(0.0, 3) == 0.0


def test_a_broken_relation_is_flagged_when_no_single_metric_is() -> None:
    eng = AnomalyEngine(parse_anomaly({"anomaly": {}}))
    rows = pump(300)
    for i, row in enumerate(rows):
        eng.process([Reading("s", "p1", 1, i, T0 + i * MIN, "s", row)], T0 + i * MIN)
    # current high, flow low: each within 2.5 of its own deviation, together far outside the relation
    odd = Reading("s", "p1", 1, 300, T0 + 300 * MIN, "s", {"current": 7.0, "flow": 30.0, "pressure": 2.0})
    out = eng.process([odd], odd.t_ms)
    names = [a.name for a in out.alerts]
    assert names == ["multivariate"], names
    alert = out.alerts[0]
    assert alert.severity == "warning" and alert.details["metrics"] == "current,flow,pressure"
    assert float(alert.details["z"]) >= 4.5 and alert.details["top"] in ("current", "flow")
    mv = [ln for ln in out.lines if "metric=_multivariate" in ln]
    assert len(mv) == 1 and "anomalous=true" in mv[0]
    singles = [ln for ln in out.lines if "metric=_multivariate" not in ln]
    assert singles and all("anomalous=false" in ln for ln in singles)


def test_multivariate_state_survives_snapshot_and_restore() -> None:
    section = {"anomaly": {}}
    rows = pump(200)
    rs = [Reading("s", "p1", 1, i, T0 + i * MIN, "s", row) for i, row in enumerate(rows)]
    rs.append(Reading("s", "p1", 1, 200, T0 + 200 * MIN, "s", {"current": 7.0, "flow": 30.0, "pressure": 2.0}))
    whole = AnomalyEngine(parse_anomaly(section))
    want = [whole.process([r], r.t_ms) for r in rs]
    first = AnomalyEngine(parse_anomaly(section))
    got = [first.process([r], r.t_ms) for r in rs[:120]]
    second = AnomalyEngine(parse_anomaly(section))
    second.restore(json.loads(json.dumps(first.snapshot())))
    got += [second.process([r], r.t_ms) for r in rs[120:]]
    assert [(o.lines, o.alerts) for o in got] == [(o.lines, o.alerts) for o in want]
    assert any(a.name == "multivariate" for o in want for a in o.alerts)


def test_a_version_1_engine_snapshot_restores() -> None:
    eng = AnomalyEngine(parse_anomaly({"anomaly": {}}))
    rs = [Reading("s", "p1", 1, i, T0 + i * MIN, "s", row) for i, row in enumerate(pump(50))]
    eng.process(rs, T0 + 50 * MIN)
    snap = json.loads(json.dumps(eng.snapshot()))
    old = {**snap, "version": 1}
    del old["multi"]
    # version 1's detectors were dicts by name, without the "v" of version 2 (today each is a list of the fields)
    old["detectors"] = [[d, m, dict(zip(STATE_FIELDS, state[1:], strict=True))] for d, m, state in old["detectors"]]
    again = AnomalyEngine(parse_anomaly({"anomaly": {}}))
    again.restore(old)
    assert set(again.detectors) == set(eng.detectors) and again.multi == {}
    assert again.detectors[("p1", "flow")].state.mean == eng.detectors[("p1", "flow")].state.mean


def test_the_device_verdict_is_the_multivariate_one_once_it_has_warmed_up() -> None:
    """A reading's verdict (``ReadingResult.anomalous``, what SKAB scores) is the device's multivariate one:
    one metric a little beyond its own threshold is an anomaly of that metric (its alert is raised), not of
    the device, whose T^2 over three metrics is held to the same false-alarm rate; a stuck sensor is."""
    eng = AnomalyEngine(parse_anomaly({"anomaly": {}}))
    rows = pump(300)
    for i, row in enumerate(rows):
        res = eng.score_reading(Reading("s", "p1", 1, i, T0 + i * MIN, "s", row))
    assert res.multi is not None and res.multi.phase == "scored"
    det = eng.detectors[("p1", "pressure")]
    mean, sd = det.state.mean, math.sqrt(det.state.var)
    for k in (x / 10 for x in range(45, 80)):  # pressure alone, further and further out
        probe = copy.deepcopy(eng)
        row = {"current": 5.0, "flow": 50.0, "pressure": mean + k * sd}
        got = probe.score_reading(Reading("s", "p1", 1, 300, T0 + 300 * MIN, "s", row))
        if got.results["pressure"].anomalous and got.multi is not None and not got.multi.anomalous:
            break
    else:
        raise AssertionError("no single-metric excursion below the multivariate threshold")
    out = AnomalyOutput()
    got = eng.score_reading(Reading("s", "p1", 1, 300, T0 + 300 * MIN, "s", row), out)
    assert got.any_metric and not got.anomalous
    assert [a.name for a in out.alerts] == ["zscore.pressure"]
    stuck = 0
    for i in range(301, 340):  # pressure frozen at its mean: a stuck sensor
        rowi = {**rows[i - 300], "pressure": 2.0}
        got = eng.score_reading(Reading("s", "p1", 1, i, T0 + i * MIN, "s", rowi))
        stuck += got.anomalous
    assert got.results["pressure"].stuck and got.anomalous and stuck >= 10


def test_a_small_lasting_shift_that_no_single_reading_shows_is_flagged() -> None:
    """pressure 4 deviations low for 60 readings: one reading's T^2 (z about 3) rarely reaches the threshold,
    the evidence of the last few readings (the MEWMA) does, soon after the shift starts and not before."""
    rows = pump(1000, seed=5)
    for row in rows[800:860]:
        row["pressure"] -= 0.4
    md = MultiDetector(DetectorSpec())
    flags = []
    for i, row in enumerate(rows):
        res = md.process(i * MIN, row)
        assert res is not None
        flags.append(res.anomalous)
    assert not any(flags[:800])
    assert sum(flags[800:860]) >= 50 and any(flags[800:810])
    assert not any(flags[880:])


def test_a_steady_drift_does_not_hold_the_anomaly_open_after_the_fault() -> None:
    """temp rises steadily for the whole run (a pump warming up); flow is 8 deviations off for 500 readings.
    While the anomaly is open the reference's mean goes on along temp's trend, so the anomaly closes within a
    few readings of the fault's end; a frozen mean would fall ever further behind temp and hold it open."""
    rng = random.Random(4)
    rows = []
    for i in range(1500):
        c = 5.0 + rng.gauss(0, 1.0)
        rows.append({"current": c, "flow": 10.0 * c + rng.gauss(0, 1.0), "temp": 20.0 + 0.005 * i + rng.gauss(0, 0.1)})
    for row in rows[600:1100]:
        row["flow"] += 8.0
    md = MultiDetector(DetectorSpec())
    flags = []
    for i, row in enumerate(rows):
        res = md.process(i * MIN, row)
        assert res is not None
        flags.append(res.anomalous)
    assert not any(flags[:600])
    assert sum(flags[600:1100]) >= 490
    assert sum(flags[1100:]) <= 10 and not any(flags[1120:])


@settings(max_examples=150, deadline=None)
@given(v=st.floats(0.0, 60.0), dv=st.floats(0.0, 5.0), k=st.integers(1, 32))
def test_max_z_is_a_bonferroni_normal_deviate(v: float, dv: float, k: int) -> None:
    """max_z(v, k) is >= 0, increasing in v, v itself for one metric, and where the tail is representable
    its two-sided tail probability is k times that of v (the Bonferroni bound for the largest of k)."""
    z = max_z(v, k)
    assert z >= 0.0 and max_z(v + dv, k) >= z - 1e-9
    assert z <= v + 1e-9
    if k == 1:
        assert math.isclose(z, v, abs_tol=1e-6) or (v < 1e-6 and z == 0.0)
    p = k * math.erfc(v / math.sqrt(2.0))
    if 1e-280 < p < 0.9:
        assert math.isclose(math.erfc(z / math.sqrt(2.0)), p, rel_tol=1e-6)


def test_max_z_at_the_quantile_of_the_largest_of_eight() -> None:
    # the largest |N(0,1)| of 8 independent ones passes v with probability 1 - (1 - erfc(v/sqrt 2))^8: 0.002 at
    # v = 3.662; a two-sided 0.002 tail of one normal deviate is 3.090 (Bonferroni is exact to first order)
    v = 3.66204
    assert abs(1 - (1 - math.erfc(v / math.sqrt(2))) ** 8 - 0.002) < 1e-5
    assert abs(max_z(v, 8) - 3.090) < 0.01


def test_a_slow_shift_of_one_metric_in_eight_is_flagged_for_its_length() -> None:
    """Eight independent metrics; one of them (flow) drifts 3 deviations low over 60 readings and stays there
    for 300 more, nothing else moving (a valve closing slowly). One reading's T^2 (about chi-square(8) + 9)
    never reaches the threshold and the joint evidence T_e^2 spreads itself over eight metrics; the evidence of
    flow alone, taken as the largest of eight, finds it before the drift ends and holds it to the end. The
    same 8 metrics without the shift raise nothing in 2,000 readings."""
    rng = random.Random(11)
    names = [f"m{i}" for i in range(7)] + ["flow"]
    rows = [{m: rng.gauss(0.0, 1.0) for m in names} for _ in range(2000)]
    quiet = copy.deepcopy(rows)
    rows = rows[:1500]
    for i in range(1000, 1360):
        rows[i]["flow"] -= 3.0 * min(1.0, (i - 1000) / 60)
    for data, expect_fault in ((rows, True), (quiet, False)):
        md = MultiDetector(DetectorSpec())
        flags = []
        for i, row in enumerate(data):
            res = md.process(i * MIN, row)
            assert res is not None
            flags.append(res.anomalous)
        assert not any(flags[:1000])
        if expect_fault:
            assert any(flags[1000:1060]) and sum(flags[1060:1360]) >= 270, (flags.index(True), sum(flags[1060:1360]))
            assert not any(flags[1400:])
        else:
            assert not any(flags)
