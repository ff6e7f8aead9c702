"""A point's z read through Student's t: the variance it is scored against is learned from a few points at first,
so its z is wider than a normal deviate's, and the threshold must mean the same tail at the 31st point as at the
thousandth. ``t_z`` is held to the exact tail of Student's t (Abramowitz & Stegun 26.7.3 and 26.7.4, summed here,
not the detector's code) and to published critical values; the detector's early false alarms to the rate the
threshold promises."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Set
from statistics import NormalDist

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.anomaly import Detector, DetectorSpec
from gateway.anomaly.detector import ewma_factor, t_z

_ND = NormalDist()
EwmaStates = tuple[int, np.ndarray, np.ndarray]


def t_cdf_two_sided(t: float, nu: int) -> float:
    """A(t | nu) = P(|T| <= t) for an integer ``nu`` (Abramowitz & Stegun 26.7.3 for even, 26.7.4 for odd)."""
    th = math.atan(t / math.sqrt(nu))
    c2 = math.cos(th) ** 2
    if nu == 1:
        return 2.0 * th / math.pi
    term, total = 1.0, 1.0
    if nu % 2 == 0:
        for j in range(2, nu - 1, 2):  # 1 + 1/2 c^2 + 1*3/(2*4) c^4 + ... up to c^(nu-2)
            term *= (j - 1) / j * c2
            total += term
        return math.sin(th) * total
    for j in range(3, nu - 1, 2):  # 1 + 2/3 c^2 + 2*4/(3*5) c^4 + ... up to c^(nu-3)
        term *= (j - 1) / j * c2
        total += term
    return 2.0 / math.pi * (th + math.sin(th) * math.cos(th) * total)


def exact_z(t: float, nu: int) -> float:
    return -_ND.inv_cdf((1.0 - t_cdf_two_sided(t, nu)) / 2.0)


@pytest.mark.parametrize("nu", [1, 2, 3, 4, 5, 9, 10, 20, 29, 30, 59, 99, 199, 398])
def test_t_z_is_the_normal_deviate_of_the_same_tail(nu: int) -> None:
    """Within what the docstring of t_z says, out to tails of 1e-13; from a t of 2 on, never above the exact z
    (a false alarm is never more likely than the threshold says)."""
    tol = 0.0015 if nu >= 29 else 0.005 if nu >= 20 else 0.012 if nu >= 9 else 0.16
    t = 0.05
    while 1.0 - t_cdf_two_sided(t, nu) > 1e-13:  # beyond, the subtraction cannot tell the tail
        want = exact_z(t, nu)
        got = t_z(t, nu)
        assert abs(got - want) <= tol * want, (nu, t)
        if t >= 2.0:
            assert got <= want * (1.0 + 1e-12), (nu, t)
        t *= 1.05


# two-sided 0.1 %, 1 % and 5 % points of Student's t from the printed tables (Fisher & Yates; any statistics
# textbook), and the normal's for the same tails: 3.2905, 2.5758, 1.9600
TABLE = {
    10: (4.587, 3.169, 2.228),
    20: (3.850, 2.845, 2.086),
    30: (3.646, 2.750, 2.042),
    60: (3.460, 2.660, 2.000),
    120: (3.373, 2.617, 1.980),
}


@pytest.mark.parametrize("nu", sorted(TABLE))
def test_t_z_of_the_printed_critical_values(nu: int) -> None:
    for t, z in zip(TABLE[nu], (3.2905, 2.5758, 1.9600), strict=True):
        assert t_z(t, nu) == pytest.approx(z, rel=0.01 if nu < 29 else 0.0015, abs=0.002)  # 3 printed decimals
        assert t_z(-t, nu) == -t_z(t, nu)


@given(a=st.floats(0.0, 1e300), b=st.floats(0.0, 1e300), nu=st.floats(1.0, 1e6))
def test_t_z_is_increasing_in_t_never_above_it_and_finite(a: float, b: float, nu: float) -> None:
    za, zb = t_z(a, nu), t_z(b, nu)
    assert math.isfinite(za) and 0.0 <= za <= a
    if a < b:
        assert za <= zb


def test_t_z_is_t_itself_for_a_variance_known_exactly() -> None:
    for t in (0.1, 1.0, 4.5, 30.0):
        assert t_z(t, 1e12) == pytest.approx(t, rel=1e-6)


def test_the_early_false_alarms_of_plain_noise_are_at_the_rate_the_threshold_says() -> None:
    """Fresh series of Gaussian noise, each scored from the end of its warm-up (30 points) for 15 points: with a
    threshold of 3 a point should pass 0.27 % of the time. Read as a normal deviate, the distance from a mean and
    variance of 30 points passed it about twice as often (165 here, against 81 promised); now 94 (71-101 over
    seeds 0-19, mean 84)."""
    rng = random.Random(7)
    spec = DetectorSpec(threshold=3.0, stuck_points=0, recurring=0)
    passed = scored = 0
    for _ in range(2000):
        det = Detector(spec)
        for i in range(spec.warmup + 15):
            r = det.process(i * 60_000, rng.gauss(20.0, 0.8))
            if r.scored.phase == "scored":
                scored += 1
                passed += r.scored.over
    promised = 2.0 * (1.0 - _ND.cdf(3.0)) * scored
    assert scored == 2000 * 15
    assert 0.7 * promised <= passed <= 1.3 * promised, (passed, promised)


def test_a_variance_of_more_points_is_trusted_more() -> None:
    """The same distance from the same mean and deviation scores higher when the variance has more points behind
    it: its degrees of freedom grow up to the ewma's memory (2 / var_alpha - 1 points), and the factor that makes
    the distance a t (the mean's own uncertainty, the population variance) goes to its limit, sqrt(1 - var_alpha)."""
    zs = []
    for n in (30, 60, 199, 399, 2000, 10**6):
        det = Detector(DetectorSpec(stuck_points=0))
        det.state.n, det.state.mean, det.state.var = n, 10.0, 1.0
        s = det.score_one(0, 14.5)
        assert s.z is not None and s.mean == 10.0 and s.std == 1.0 and s.dist == 4.5
        zs.append(s.z)
    assert zs[0] < zs[1] < zs[2] < zs[3] < zs[4] <= zs[5] < 4.5
    assert zs[3] == pytest.approx(t_z(4.5 * ewma_factor(0.07, 0.005, 399), 398.0))
    assert zs[5] == pytest.approx(t_z(4.5 * math.sqrt(1.0 - 0.005), 398.0), rel=1e-12)
    window = Detector(DetectorSpec(baseline="window", stuck_points=0))
    for i in range(1000):
        window.process(i, 10.0 + (1.0 if i % 2 else -1.0))
    s = window.score_one(1000, 14.5)
    assert s.z == pytest.approx(t_z(4.5 * math.sqrt(999 / 1001), 999.0))
    # a seasonal bin's variance has its own points behind it, however many the whole series has
    daily = Detector(DetectorSpec(season="day", stuck_points=0))
    daily.state.n, daily.state.mean, daily.state.var = 5000, 0.0, 100.0
    daily.state.bins = [[30.0, 10.0, 1.0] for _ in range(24)]
    s = daily.score_one(0, 14.5)
    assert (s.mean, s.std) == (10.0, 1.0) and s.z == pytest.approx(t_z(4.5 * ewma_factor(0.07, 0.005, 30), 29.0))


def t_threshold(z: float, nu: float) -> float:
    """The t whose ``t_z`` is ``z`` (bisection)."""
    lo, hi = 0.0, 1e6
    for _ in range(200):
        mid = (lo + hi) / 2.0
        lo, hi = (mid, hi) if t_z(mid, nu) < z else (lo, mid)
    return hi


def ewma_states(spec: DetectorSpec, steps: int, seed: int, at: Set[int] = frozenset()) -> Iterator[EwmaStates]:
    """The ewma's mean and variance of plain noise (standard normal) in 20,000 series at once, by its recursions
    written out here (numpy, not the detector's code): ``(n, mean, variance)`` after each ``n`` in ``at`` and after
    the last of ``steps`` points."""
    rng = np.random.default_rng(seed)
    m, v = np.zeros(20_000), np.zeros(20_000)
    for step in range(1, steps + 1):
        if step - 1 in at:
            yield step - 1, m, v
        x = rng.normal(0.0, 1.0, m.size)
        a, b = max(spec.alpha, 1.0 / step), max(spec.var_alpha, 1.0 / step)
        d1 = x - m
        m = m + a * d1
        v = (1.0 - b) * (v + b * d1 * d1)
    yield steps, m, v


def tail_ratio(det: Detector, n: int, m: np.ndarray, v: np.ndarray, z: float) -> float:
    """The chance that the next point of the noise passes the threshold ``z`` given each series' mean and variance,
    averaged over the series, against the normal tail the threshold names."""
    nu, k = det._reading(n, False)
    d = t_threshold(z, nu) / k * np.sqrt(v)  # the distance in learned deviations the threshold asks for
    tail = np.array([_ND.cdf(float(x)) for x in np.concatenate([m - d, -(m + d)])]).reshape(2, -1).sum(0)
    return float(tail.mean()) / (2.0 * _ND.cdf(-z))


def test_the_threshold_means_the_same_tail_after_any_number_of_points() -> None:
    """At each n (one draw of 20,000 series) the tail ratio, now 0.91-1.04. The distance read as a normal deviate
    gave 2.6 and 22.6 times the promise at 30 points (thresholds 3 and 4.5), 1.46 and 3.6 at 100, and 1.09 and
    1.37 at 1,000."""
    det = Detector(DetectorSpec())
    for n, m, v in ewma_states(det.spec, 1000, 5, {30, 44, 100, 200, 399}):
        for z, low, high in ((3.0, 0.9, 1.1), (4.5, 0.8, 1.2)):
            r = tail_ratio(det, n, m, v, z)
            assert low <= r <= high, (n, z, r)


def test_a_spike_well_beyond_a_recurring_pattern_is_flagged() -> None:
    """Hourly spikes of 20 deviations make a pattern; a spike of 50 goes 10 beyond twice its size and is an
    anomaly, one of 30 is not. The pattern's sizes are distances, not the z they read as (read as z, 50 deviations
    came to 28 against a pattern of 21: within twice its size)."""
    for big, flagged in ((50.0, 20), (30.0, 0)):
        seen = 0
        for seed in range(20):
            rng = random.Random(seed)
            det = Detector(DetectorSpec(stuck_points=0))
            for i in range(841):
                x = rng.gauss(0.0, 1.0) + (20.0 if i in (600, 660, 720, 780) else big if i == 840 else 0.0)
                r = det.process(i * 60_000, x)
            assert det.state.pattern > 0.0
            seen += r.scored.over and any(e.kind == "opened" for e in r.events)
        assert seen == flagged, big


@pytest.mark.parametrize(("var_alpha", "low", "high"), [(0.05, 0.4, 1.2), (0.1, 0.2, 1.2), (0.3, 0.5, 2.0)])
def test_a_variance_of_a_short_memory_is_read_near_its_tail(var_alpha: float, low: float, high: float) -> None:
    """A variance that remembers a few points has a heavier tail than a normal deviate's and than Student's t with
    its memory's degrees of freedom. At 400 points of plain noise, the chance that the next point passes 4.5 against
    the normal tail (as in the test above): now 0.76, 0.33 and 0.75 at 0.05, 0.1 and 0.3. Read as a normal deviate
    it was 11, 48 and 980 times the promise; read with ``2 / var_alpha - 2`` degrees of freedom and no bound, at
    0.3 it asked for 28 deviations (the tail's are 11) and never passed (0.0)."""
    det = Detector(DetectorSpec(var_alpha=var_alpha))
    ((n, m, v),) = ewma_states(det.spec, 400, 4)
    ratio = tail_ratio(det, n, m, v, 4.5)
    assert low <= ratio <= high, ratio


def test_a_variance_of_two_points_memory_still_flags_a_spike() -> None:
    det = Detector(DetectorSpec(var_alpha=0.5, stuck_points=0))
    rng = random.Random(3)
    for i in range(200):
        det.process(i * 60_000, rng.gauss(0.0, 1.0))
    r = det.process(200 * 60_000, 60.0)
    assert r.scored.over and r.anomalous


def test_the_largest_distances_have_a_score_and_flag() -> None:
    """Values within +-1e15 against a deviation at its floor (1e-9): distances up to about 2e24, read with no spread
    learned (a constant series) and with a tiny one; every score is a number in [0.5, 1], and every such point is
    over."""
    for var in (0.0, 1e-30):
        det = Detector(DetectorSpec(stuck_points=0, rel_min_std=0.0, warmup=30))
        det.state.n, det.state.mean, det.state.var = 100, -1e15, var
        for x in (1e15, -1e15 + 1.0, 0.0):
            s = det.score_one(0, x)
            assert s.dist is not None and s.z is not None and math.isfinite(s.z)
            assert 0.5 <= s.score <= 1.0 and s.over, (var, x, s)  # 1.0 only beyond |z| ~ 1e8 * threshold
