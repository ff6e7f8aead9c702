"""SKAB's two protocols as the benchmark defines them: hand-made cases for the rules, and the published
T-squared row reproduced exactly from the data (the benchmark's Hotelling T^2 recipe, written here with NumPy:
fit on the first 400 rows, scaled, a rolling median of 5, twice the F-distribution control limit).

The data is never in this repository: ``EDGEKIT_SKAB``, or ``shared/data/skab`` next to the repository (or
next to the checkout it was cloned from); a missing folder fails the test (it is not skipped)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
from helpers import skab_dir

from gateway.anomaly import AnomalySpec
from gateway.anomaly.evaluate import main
from gateway.anomaly.skab import (
    FileRun,
    SkabFile,
    changepoint_score,
    evaluate_skab,
    load_skab,
    nab_windows,
    outlier_score,
    predicted_changepoints,
)

ROOT = Path(__file__).resolve().parents[3]


def test_outlier_counts_and_rates() -> None:
    s = outlier_score([[1, 1, 0, 0, 0]], [[1, 0, 1, 0, 0]])
    assert (s.tp, s.fn, s.fp, s.tn) == (1, 1, 1, 2)
    assert math.isclose(s.f1, 0.5) and math.isclose(s.far, 100 / 3) and math.isclose(s.mar, 50.0)


def test_changepoints_windows_and_nab_profiles() -> None:
    # SKAB's notebooks (waico/SKAB notebooks/Conv_AE.ipynb and the others of the strict leaderboard):
    # prediction_cp = abs(prediction.diff()); prediction_cp[0] = prediction[0] -> every rise and every fall
    assert predicted_changepoints([1, 1, 0, 0, 1]) == [0, 2, 4]
    assert predicted_changepoints([0, 0, 1]) == [2]
    # the gateway's level shifts are change points too, once each, wherever the verdict stands
    assert predicted_changepoints([0, 0, 1, 1, 0, 0], [0, 1, 1, 0, 0, 1]) == [1, 2, 4, 5]
    # chp_score(..., window_width="60s", anomaly_window_destination="righter"), "cut right window" on overlaps
    assert nab_windows([0, 30_000, 200_000]) == [[0, 60_000], [60_000, 90_000], [200_000, 260_000]]
    # a detection at a window's start scores A_tp, at its end A_fp; one outside costs A_fp; a miss A_fn
    s = changepoint_score([[0, 1_000_000]], [[0, 500_000]])
    assert s.windows == 2 and s.missed == 1 and s.false_positives == 1
    assert math.isclose(s.raw["standard"], 1.0 - 0.11 - 1.0)
    assert math.isclose(s.score("standard"), 100 * ((1.0 - 0.11 - 1.0) + 2) / 4)
    late = changepoint_score([[0]], [[60_000]])
    assert math.isclose(late.raw["low FP"], -0.22)
    assert math.isclose(changepoint_score([[0]], [[0]]).score("low FN"), 100.0)


def _f_cdf(x: float, d1: int, d2: int) -> float:
    """The F distribution's CDF by integrating its density (Simpson, fine grid); NumPy only."""
    if x <= 0:
        return 0.0
    t = np.linspace(0.0, x, 20_001)
    lg = math.lgamma((d1 + d2) / 2) - math.lgamma(d1 / 2) - math.lgamma(d2 / 2)
    with np.errstate(divide="ignore"):
        logpdf = lg + (d1 / 2) * math.log(d1 / d2) + (d1 / 2 - 1) * np.log(t) - ((d1 + d2) / 2) * np.log1p(d1 * t / d2)
    pdf = np.exp(logpdf)
    pdf[0] = 0.0 if d1 > 2 else pdf[1]
    h = x / 20_000
    return float(h / 3 * (pdf[0] + pdf[-1] + 4 * pdf[1:-1:2].sum() + 2 * pdf[2:-1:2].sum()))


def _t2(file: SkabFile, _spec: AnomalySpec) -> FileRun:
    x = np.array([file.columns[m] for m in file.columns]).T
    train, test = x[:400], x[400:]
    mu, sd = train.mean(0), train.std(0)
    inv = np.linalg.inv(np.cov(((train - mu) / sd).T))
    m, n = x.shape[1], 400
    grid = np.linspace(0, 15, 10_000)
    lo, hi = 0, len(grid) - 1  # the last grid value whose CDF is below 0.999 (the CDF increases: bisect)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if _f_cdf(float(grid[mid]), m, n - m) < 0.999 else (lo, mid - 1)
    c = grid[lo]
    ucl = m * (n - 1) * (n + 1) / (n * (n - m)) * c
    xt = (test - mu) / sd
    t2 = np.einsum("ij,jk,ik->i", xt, inv, xt)
    pred = [0] * 400 + [int(i >= 4 and np.median(t2[i - 4 : i + 1]) > 2 * ucl) for i in range(len(t2))]
    return FileRun(pred, [0.0] * len(pred))


def test_the_published_t_squared_row_is_reproduced() -> None:
    files = load_skab(skab_dir())
    assert len(files) == 34
    res = evaluate_skab(files, AnomalySpec(enabled=True), predict=_t2)
    o, c = res.outlier, res.changepoint
    assert (round(o.f1, 2), round(o.far, 2), round(o.mar, 2)) == (0.66, 19.21, 42.6)
    assert c.windows == 127 and (c.missed, c.false_positives) == (84, 203)
    assert (round(c.score("standard"), 2), round(c.score("low FP"), 2), round(c.score("low FN"), 2)) == (
        19.54,
        10.2,
        24.31,
    )


def test_the_command_prints_both_tables(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["skab", str(skab_dir())]) == 0
    out = capsys.readouterr().out
    assert "| Algorithm | F1 | FAR, % | MAR, % |" in out and "| Conv-AE | 0.78 | 13.55 | 28.02 |" in out
    assert "| Algorithm | NAB (standard) | NAB (lowFP) | NAB (LowFN) |" in out and "| MSCRED | 32.42 |" in out
    assert "127 change points scored" in out
    assert "| edgekit, change points from the verdict's rises and falls only |" in out
    # the targets, with the default settings: outlier F1 >= 0.78, changepoint NAB (standard) >= 33
    m = re.search(r"\(edgekit \(defaults\): TP .*; F1 ([0-9.]+)\)", out)
    assert m is not None
    f1 = float(m.group(1))
    nab = [line for line in out.splitlines() if line.startswith("| **edgekit (defaults)**")][1]
    assert f1 >= 0.78 and float(nab.split("|")[2].strip(" *")) >= 33.0, (f1, nab)


def test_a_missing_folder_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["skab", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
