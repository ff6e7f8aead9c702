"""NAB's threshold sweep (gateway/anomaly/nabscore.py) on a hand-made file, each number worked out from
numenta/NAB's sweeper.py rules: the probation, a detection's worth by its place in the window, a false
positive's by its distance after the last window, the earliest detection of a window counting, and the
normalisation between the null and the perfect detector."""

from __future__ import annotations

import math

import pytest

from gateway.anomaly.evaluate import main
from gateway.anomaly.nabscore import NAB_PROFILES, probation_length, scaled_sigmoid, sweep


def ss(x: float) -> float:
    return 2.0 / (1.0 + math.exp(5.0 * x)) - 1.0


def test_scaled_sigmoid_and_probation() -> None:
    assert math.isclose(scaled_sigmoid(-1.0), 0.98661, abs_tol=1e-5) and scaled_sigmoid(0.0) == 0.0
    assert math.isclose(scaled_sigmoid(1.0), -0.98661, abs_tol=1e-5) and scaled_sigmoid(3.0) == -1.0
    assert probation_length(20) == 3 and probation_length(100_000) == 750


def test_a_hand_made_file() -> None:
    # 20 points a second apart; a window over points 10..13; probation: floor(0.15 * 20) = 3 points
    t = [i * 1000 for i in range(20)]
    scores = [0.0] * 20
    scores[11], scores[17], scores[5], scores[1] = 0.9, 0.8, 0.7, 0.95  # point 1 is in the probation
    sw = sweep([(t, scores, [(10_000, 14_000)])])
    assert sw.windows == 1 and sw.points == 17
    tp = ss(-(13 - 11 + 1) / 4) / ss(-1.0)  # a quarter into the window's last three quarters
    fp17 = ss(abs(13 - 17) / (4 - 1))  # four points after a window four wide
    std = NAB_PROFILES["standard"]
    r = sw.at(0.9)
    assert (r.detected, r.fp_points) == (1, 0) and math.isclose(r.score(std, 1), tp)
    assert math.isclose(sw.normalised("standard", r), 100 * (tp + 1) / 2)
    r = sw.at(0.8)
    assert math.isclose(r.score(std, 1), tp + 0.11 * fp17)
    r = sw.at(0.7)  # point 5: a false positive before any window costs the whole A_fp
    assert r.fp_points == 2 and math.isclose(r.score(std, 1), tp + 0.11 * fp17 - 0.11)
    assert math.isclose(r.score(NAB_PROFILES["reward_low_FP_rate"], 1), tp + 0.22 * fp17 - 0.22)
    r = sw.at(0.0)  # everything: the window's first point is worth A_tp exactly; 13 false positives
    fps = 7 * -1.0 + sum(ss(abs(13 - i) / 3) for i in range(14, 20))
    assert r.fp_points == 13 and math.isclose(r.score(std, 1), 1.0 + 0.11 * fps)
    assert sw.best("standard").threshold == 0.9
    nothing = sw.rows[0]
    assert nothing.detected == 0 and sw.normalised("standard", nothing) == 0.0  # the null detector
    assert math.isclose(sw.normalised("reward_low_FN_rate", nothing), 0.0)


def test_a_window_inside_the_probation_is_not_scored() -> None:
    t = [i * 1000 for i in range(100)]  # probation 15 points
    sw = sweep([(t, [0.0] * 100, [(2_000, 5_000), (50_000, 60_000)])])
    assert sw.windows == 1


def test_the_command_prints_the_sweep(capsys: pytest.CaptureFixture[str]) -> None:
    from pathlib import Path

    fixture = Path(__file__).resolve().parent / "nab_fixture"
    assert main(["nab", str(fixture)]) == 0
    out = capsys.readouterr().out
    assert "NAB scoring" in out
    for profile in NAB_PROFILES:
        line = next(ln for ln in out.splitlines() if ln.startswith(profile))
        best, at_half = float(line.split()[2]), float(line.split()[5])
        assert 0.0 < at_half <= best <= 100.0, line
