"""The detector's statistics against a NumPy reference: the EWMA's weighted mean and variance, the rolling
window's plain mean and variance over (t - window, t], and the score."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.anomaly import Detector, DetectorSpec, score_of, t_z
from gateway.anomaly.detector import ewma_factor

values = st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=2, max_size=120)


def weights(n: int, alpha: float) -> np.ndarray:
    """a_i * prod_{j>i}(1 - a_j) with a_i = max(alpha, 1/(i+1)): the plain mean first, then an EWMA."""
    a = np.maximum(alpha, 1.0 / np.arange(1, n + 1))
    tail = np.append(np.cumprod((1.0 - a)[::-1])[::-1][1:], 1.0)
    w = a * tail
    assert math.isclose(w.sum(), 1.0, rel_tol=1e-9)
    return w


def ewma_reference(xs: np.ndarray, alpha: float) -> tuple[float, float]:
    """The weighted mean and variance with one weight for both (alpha = var_alpha)."""
    w = weights(len(xs), alpha)
    mean = float(np.dot(w, xs))
    return mean, float(np.dot(w, (xs - mean) ** 2))


def ewmv_reference(xs: np.ndarray, alpha: float, var_alpha: float) -> float:
    """West's recursion with its own weight for the variance: v_n = (1 - b_n) (v_{n-1} + b_n d_n^2), where
    d_n is the new point's distance from the previous mean (written out, not the detector's code)."""
    mean, var = 0.0, 0.0
    for i, x in enumerate(xs, start=1):
        a, b = max(alpha, 1.0 / i), max(var_alpha, 1.0 / i)
        d = float(x) - mean
        mean += a * d
        var = (1.0 - b) * (var + b * d * d)
    return var


@settings(max_examples=150, deadline=None)
@given(xs=values, alpha=st.sampled_from([0.01, 0.07, 0.3, 1.0]))
def test_ewma_mean_and_variance_match_the_weighted_reference(xs: list[float], alpha: float) -> None:
    spec = DetectorSpec(
        alpha=alpha, var_alpha=alpha, protection="off", stuck_points=0, warmup=2, threshold=1e9, clear_threshold=1e9
    )
    det = Detector(replace(spec, after_gap="score"))
    for i, x in enumerate(xs):
        det.process(i * 1000, x)
        mean, var = ewma_reference(np.array(xs[: i + 1]), alpha)
        scale = max(1.0, float(np.max(np.abs(xs[: i + 1]))))
        assert math.isclose(det.state.mean, mean, rel_tol=1e-9, abs_tol=1e-9 * scale)
        assert math.isclose(det.state.var, var, rel_tol=1e-7, abs_tol=1e-9 * scale * scale)


@settings(max_examples=100, deadline=None)
@given(xs=values, var_alpha=st.sampled_from([0.005, 0.02, 0.3]))
def test_the_variance_has_its_own_memory(xs: list[float], var_alpha: float) -> None:
    spec = DetectorSpec(
        alpha=0.07, var_alpha=var_alpha, protection="off", stuck_points=0, warmup=2, threshold=1e9,
        clear_threshold=1e9, after_gap="score",
    )  # fmt: skip
    det = Detector(spec)
    for i, x in enumerate(xs):
        det.process(i * 1000, x)
    mean, _ = ewma_reference(np.array(xs), 0.07)
    scale = max(1.0, float(np.max(np.abs(xs))))
    assert math.isclose(det.state.mean, mean, rel_tol=1e-9, abs_tol=1e-9 * scale)
    want = ewmv_reference(np.array(xs), 0.07, var_alpha)
    assert math.isclose(det.state.var, want, rel_tol=1e-7, abs_tol=1e-9 * scale * scale)


def test_ewma_is_the_plain_mean_during_the_first_points() -> None:
    xs = [3.0, 5.0, 10.0, 2.0]
    det = Detector(DetectorSpec(alpha=0.1, warmup=10, stuck_points=0))
    for i, x in enumerate(xs):
        det.process(i, x)
    assert math.isclose(det.state.mean, np.mean(xs)) and math.isclose(det.state.var, np.var(xs))


@settings(max_examples=150, deadline=None)
@given(
    points=st.lists(st.tuples(st.integers(0, 5_000), st.floats(-1e3, 1e3, allow_nan=False)), min_size=2, max_size=120),
    window=st.sampled_from([1_000, 7_000, 60_000]),
)
def test_window_mean_and_variance_match_numpy(points: list[tuple[int, float]], window: int) -> None:
    spec = DetectorSpec(
        baseline="window", window_ms=window, rebaseline_after_ms=window - 1, protection="off", stuck_points=0,
        after_gap="score", warmup=2, threshold=1e9, clear_threshold=1e9,
    )  # fmt: skip
    det = Detector(spec)
    t = 0
    seen: list[tuple[int, float]] = []
    for dt, x in points:
        t += dt
        n, mean, var = det.baseline(t)
        inside = np.array([v for ts, v in seen if ts > t - window])
        assert n == len(inside)
        if n:
            scale = max(1.0, float(np.max(np.abs(inside))))
            assert math.isclose(mean, float(np.mean(inside)), rel_tol=1e-9, abs_tol=1e-9 * scale)
            assert math.isclose(var, float(np.var(inside)), rel_tol=1e-6, abs_tol=1e-7 * scale * scale)
        det.process(t, x)
        seen.append((t, x))


def test_z_and_score_of_a_scored_point() -> None:
    det = Detector(DetectorSpec(warmup=4, stuck_points=0, alpha=0.5))
    for i, x in enumerate([9.0, 11.0, 9.0, 11.0]):
        det.process(i, x)
    s = det.score_one(4, 14.0)
    assert s.phase == "scored" and s.mean is not None and s.std is not None
    # the distance in deviations learned from 4 points, read as Student's t with 3 degrees of freedom
    assert s.dist == (14.0 - s.mean) / s.std
    assert math.isclose(s.z or 0.0, t_z(s.dist * ewma_factor(0.5, 0.005, 4), 3.0))
    assert 0.0 < (s.z or 0.0) < 0.6 * s.dist
    r = (s.z or 0.0) / 4.5
    assert math.isclose(s.score, r * r / (1 + r * r))
    assert s.over == (abs(s.z or 0.0) >= 4.5)


@given(z=st.floats(-1e6, 1e6, allow_nan=False))
def test_score_is_in_0_1_monotone_and_half_at_the_threshold(z: float) -> None:
    s = score_of(z, 4.0)
    assert 0.0 <= s <= 1.0
    assert score_of(abs(z) + 0.5, 4.0) >= s
    assert math.isclose(score_of(4.0, 4.0), 0.5) and score_of(0.0, 4.0) == 0.0
