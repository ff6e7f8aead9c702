"""Properties of the score the issue asks for: in [0, 1], monotonic in |z| for a fixed baseline, never stuck
at its maximum through a lasting level shift, and a periodic spike no longer flagged after a stated number
of periods. Also: old (version 1) detector state restores, and a series that can never leave its warm-up
says so."""

from __future__ import annotations

import json
import math
import random

from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.anomaly import Detector, DetectorSpec, score_of, t_z
from gateway.anomaly.detector import ewma_factor

MIN = 60_000


def noise(n: int, *, seed: int, level: float = 10.0, sd: float = 1.0, start: int = 0) -> list[tuple[int, float]]:
    rng = random.Random(seed)
    return [((start + i) * MIN, level + rng.gauss(0.0, sd)) for i in range(n)]


@settings(max_examples=200, deadline=None)
@given(z=st.floats(-1e7, 1e7, allow_nan=False), threshold=st.floats(0.5, 20.0))
def test_score_is_in_0_1_and_strictly_below_1(z: float, threshold: float) -> None:
    s = score_of(z, threshold)
    assert 0.0 <= s < 1.0  # no saturation: 1.0 is never reached for |z| <= 1e7
    assert score_of(threshold, threshold) == 0.5


def test_the_score_never_falls_where_z_rises_by_one_ulp() -> None:
    """Found by the property below: ``r² / (1 + r²)`` computed as it reads rounds its quotient down by an ulp
    where z rises by one (numerator and denominator both round up), so a larger |z| scored lower."""
    z = 0.41164991215427255
    assert score_of(z, 4.5) <= score_of(math.nextafter(z, math.inf), 4.5)


@settings(max_examples=2_000, deadline=None)
@given(z=st.floats(0.0, 1e12, allow_nan=False), threshold=st.floats(0.5, 20.0), steps=st.integers(1, 4))
def test_the_score_is_monotonic_in_z_to_the_last_bit(z: float, threshold: float, steps: int) -> None:
    """Over the whole range of z, and for neighbours a few ulps apart (where rounding, not z, decides)."""
    above = z
    for _ in range(steps):
        above = math.nextafter(above, math.inf)
    assert score_of(z, threshold) <= score_of(above, threshold)
    assert score_of(-z, threshold) == score_of(z, threshold)


@settings(max_examples=200, deadline=None)
@given(
    history=st.lists(st.floats(-100, 100, allow_nan=False), min_size=31, max_size=80),
    a=st.floats(-1e6, 1e6, allow_nan=False),
    b=st.floats(-1e6, 1e6, allow_nan=False),
)
def test_score_is_monotonic_in_abs_z_for_a_fixed_baseline(history: list[float], a: float, b: float) -> None:
    det = Detector(DetectorSpec(stuck_points=0))
    for i, x in enumerate(history):
        det.process(i * MIN, x)
    t = len(history) * MIN
    sa, sb = det.score_one(t, a), det.score_one(t, b)  # score_one changes nothing: the same baseline
    assert sa.z is not None and sb.z is not None
    assert 0.0 <= sa.score < 1.0
    if abs(sa.z) < abs(sb.z):
        assert sa.score <= sb.score
        # strictly, from where a double tells r² apart from 0 (|z| about 1e-161: below, every score is 0.0) to
        # values far beyond the threshold, which still rank; z's an ulp or so apart (a value of 1.7e-15 against
        # 0.0) may give one r = z / threshold, and with it one score, so only beyond rounding
        if 1e-150 < abs(sb.z) < 1e6 and abs(sb.z) > abs(sa.z) * (1.0 + 1e-12):
            assert sa.score < sb.score
    assert (sa.score >= 0.5) == sa.over


@settings(max_examples=60, deadline=None)
@example(seed=5718, size=10.0, sign=-1.0, length=20)  # a spike of its own after the shift (found by Hypothesis)
@given(
    seed=st.integers(0, 10_000),
    size=st.floats(10.0, 1000.0),
    sign=st.sampled_from([-1.0, 1.0]),
    length=st.integers(20, 400),
)
def test_a_lasting_level_shift_does_not_hold_the_score_at_its_top(
    seed: int, size: float, sign: float, length: int
) -> None:
    """After the shift's first points the score falls below 0.5 and stays there; the anomaly opens once."""
    det = Detector(DetectorSpec(stuck_points=0))
    for t, x in noise(200, seed=seed):
        det.process(t, x)
    shifted = noise(length, seed=seed + 1, start=200)
    res = [det.process(t, x + sign * size) for t, x in shifted]
    top = max(r.scored.score for r in res)
    assert max(r.scored.score for r in res[:10]) == top and res[0].scored.score > 0.5  # high where it starts
    # After shift_points (5) to find the level and a few more to learn it, the score stays below 0.5 wherever the
    # noise is within 3 sd of its level. A draw the noise throws 3 sd or more out may reach it, as it would unshifted
    # (seed 395, length 22 ends with a draw 4 sd out: 0.39 unshifted, 0.50 a few points after a shift). The bound was
    # 1 % of the settled points, which for fewer than 100 of them allowed no such draw at all.
    calm = [r.scored.score for r, (_, x) in zip(res[10:], shifted[10:], strict=True) if abs(x - 10.0) < 3.0]
    assert all(s < 0.5 for s in calm), max(calm)
    # the shift is flagged once, at its first point; an anomaly opens again only at a draw the noise throws 3 sd
    # or more out of the new level, a spike of its own (seed 5718, length 20: 3.44 sd at the shift's ninth point)
    opened = [i for i, r in enumerate(res[:10]) for e in r.events if e.kind == "opened"]
    assert opened[:1] == [0], opened
    assert all(abs(shifted[i][1] - 10.0) >= 3.0 for i in opened[1:]), [(i, shifted[i][1]) for i in opened]
    assert all(r.anomalous for r in res)  # still flagged: away from what is normal, until re-baselined


def test_a_periodic_spike_stops_being_flagged_after_three_periods() -> None:
    """``recurring = 3``: the first three hourly spikes open anomalies, from the fourth on none does."""
    spec = DetectorSpec(stuck_points=0)
    assert spec.recurring == 3
    det = Detector(spec)
    pts = noise(24 * 60, seed=7, sd=0.5)
    flagged = []
    for t, x in pts:
        i = t // MIN
        spike = i >= 120 and i % 60 == 0
        r = det.process(t, x + (8.0 if spike else 0.0))
        if spike:
            flagged.append(any(e.kind == "opened" for e in r.events))
    assert flagged[:3] == [True, True, True]
    assert not any(flagged[3:]), flagged
    # a spike well beyond the pattern still opens one
    bigger = det.process(24 * 60 * MIN, 10.0 + 40.0)
    assert any(e.kind == "opened" for e in bigger.events)


def test_irregular_excursions_are_not_a_pattern() -> None:
    det = Detector(DetectorSpec(stuck_points=0))
    pts = noise(2000, seed=8, sd=0.5)
    at = {150, 210, 300, 340, 470, 520, 700}  # uneven spacing
    opened = 0
    for t, x in pts:
        r = det.process(t, x + (8.0 if t // MIN in at else 0.0))
        opened += sum(1 for e in r.events if e.kind == "opened")
    assert opened == len(at)


def test_a_noise_burst_is_not_a_pattern_that_hides_the_next_one() -> None:
    """Inside a noise burst the anomaly opens and closes again and again; a few of those openings may happen
    to be evenly spaced. They are not a recurring pattern: the series is not calm between them, so the next
    burst, hours later, is flagged. (The simulator's seed-0 scenario lost two of dev-0012's pressure bursts
    to this: openings 20 and 19 readings apart were taken for a pattern.)"""
    for seed in range(12):
        det = Detector(DetectorSpec(stuck_points=0))
        rng = random.Random(seed + 100)
        bursts = [(300, 360), (700, 760), (1100, 1160)]
        found = []
        for t, x in noise(1400, seed=seed, sd=0.5):
            i = t // MIN
            inside = next((b for b in bursts if b[0] <= i < b[1]), None)
            r = det.process(t, x + (rng.gauss(0.0, 3.0) if inside else 0.0))  # 6 times the noise
            if inside and any(e.kind == "opened" for e in r.events) and inside not in found:
                found.append(inside)
        assert found == bursts, (seed, found)


def test_version_1_state_restores_with_its_baseline() -> None:
    old = {
        "n": 500,
        "mean": 10.0,
        "var": 1.0,
        "window": [],
        "anchor": 0.0,
        "s1": 0.0,
        "s2": 0.0,
        "seen": 500,
        "last_t": 499 * MIN,
        "log_dt": 11.002,
        "run": 3,
        "active": True,
        "calm": 0,
        "since": 497 * MIN,
        "held_n": 3,
        "held_mean": 30.0,
        "held_m2": 0.5,
        "held": [],
        "last_value": 30.0,
        "repeats": 1,
        "stuck": False,
        "stuck_since": 499 * MIN,
    }  # fmt: skip  (the snapshot of a detector before change points and patterns)
    det = Detector(DetectorSpec())
    det.restore(json.loads(json.dumps(old)))
    assert (det.state.n, det.state.mean, det.state.var, det.state.active) == (500, 10.0, 1.0, False)
    r = det.process(500 * MIN, 10.5)
    assert r.scored.phase == "scored" and r.scored.z is not None
    # 500 points: the ewma's memory, 399, less one
    assert r.scored.dist == 0.5 and abs(r.scored.z - t_z(0.5 * ewma_factor(0.07, 0.005, 500), 398.0)) < 1e-12
    bad = dict(old, v=99)
    try:
        det.restore(bad)
    except ValueError as exc:
        assert "version 99" in str(exc)
    else:
        raise AssertionError("an unknown state version must be refused")


def test_a_window_too_short_for_the_warmup_says_so() -> None:
    spec = DetectorSpec(baseline="window", window_ms=120 * MIN, rebaseline_after_ms=60 * MIN, stuck_points=0)
    det = Detector(spec)  # hourly data: a 2 h window holds 2 points, never the 30 of the warm-up
    events = [e.kind for i in range(200) for e in det.process(i * 60 * MIN, 10.0 + (i % 3)).events]
    assert events.count("stalled") == 1
    fine = Detector(DetectorSpec(baseline="window", stuck_points=0))  # the default window counts readings
    res = [fine.process(i * 60 * MIN, 10.0 + (i % 3)) for i in range(60)]
    assert res[-1].scored.phase == "scored" and not any(e.kind == "stalled" for r in res for e in r.events)
