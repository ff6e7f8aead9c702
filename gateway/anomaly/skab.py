"""The Skoltech Anomaly Benchmark (SKAB v0.9) scored with the benchmark's two published protocols.

SKAB is a water-pump test bed: 34 experiments (``valve1/``, ``valve2/``, ``other/``; ``anomaly-free/`` is
not scored), one row a second, ``;``-separated: ``datetime`` and eight sensors, then the labels ``anomaly``
and ``changepoint`` (0/1). It is GPL-3.0 and is never copied into this repository: the evaluation reads
it from a folder given on the command line.

The protocol, as the benchmark's own code defines it (its ``core/utils.py`` and ``core/metrics.py``, and
the notebooks that produce the leaderboard):

- **Training part.** Each file is split without shuffling: the first 400 rows train, the rest are scored.
  Here the 400 rows are fed to a fresh :class:`~gateway.anomaly.engine.AnomalyEngine` exactly like the
  rest (it learns online from every row), and only the later rows count.
- **Outlier detection.** Every scored row is a binary prediction against the ``anomaly`` label; TP, TN, FP
  and FN are summed over all files; F1 = TP / (TP + (FN + FP) / 2), FAR = FP / (FP + TN) in %,
  MAR = FN / (FN + TP) in %.
- **Changepoint detection.** The leaderboard's notebooks (``notebooks/*.ipynb`` of the strict leaderboard,
  e.g. ``Conv_AE.ipynb``) take the rows where the binary prediction changes (``abs(prediction.diff())``, the
  first scored row counting as its own value): every rise and every fall. The change-point algorithms of
  the leaderboard (ruptures, CPDE) give their change points directly. The gateway has both kinds of output,
  so its change points are the rows where the device's verdict rises or falls *and* the rows where a sensor's
  change-point rule finds a new level (a ``shifted`` event: ``shift_points`` readings in a row beyond
  ``clear_threshold`` on one side); a second row of the table gives the notebooks' derivation alone. Each true
  change point (``changepoint`` = 1 in the scored rows) opens a detection window of 60 s
  to its right, ``[t, t + 60 s]``, both ends included; where a window reaches the next one's start, the
  next one starts where the first ends. The first prediction inside a window is its detection, scored
  ``A_fp + (A_tp - A_fp) * (1 - tanh(x) / tanh(pi / 2)) / 2`` with ``x`` running from ``-pi/2`` at the
  window's start to ``pi/2`` at its end in 1000 steps; later predictions inside a window count for
  nothing; a prediction outside every window costs ``A_fp``; a window without one costs ``A_fn``.
  Profiles (A_tp, A_fp, A_fn): standard (1, -0.11, -1), low FP (1, -0.22, -1), low FN (1, -0.11, -2).
  Scores are summed over files and normalised: 100 * (score - null) / (perfect - null), where the null
  detector misses every window and the perfect one finds each at its start.

What the detector is asked per row is fixed, not tuned: the row is predicted anomalous when the device's
verdict on it is (``ReadingResult.anomalous``: its multivariate detector, once warmed up, inside an open
anomaly, or a stuck sensor; before that, any sensor's detector), with the default settings or a
``--config`` file's. A second row of each table shows the other view the gateway writes: any sensor's
detector or the multivariate one inside an open anomaly.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from ..errors import ConfigError
from ..model import Reading
from .config import AnomalySpec
from .engine import AnomalyEngine

__all__ = [
    "CP_WINDOW_MS",
    "PROFILES",
    "PUBLISHED_CHANGEPOINT",
    "PUBLISHED_OUTLIER",
    "TRAIN_ROWS",
    "ChangepointScore",
    "OutlierScore",
    "SkabFile",
    "changepoint_score",
    "format_tables",
    "load_skab",
    "nab_windows",
    "outlier_score",
    "predict_file",
    "predicted_changepoints",
]

TRAIN_ROWS: Final = 400
CP_WINDOW_MS: Final = 60_000
PROFILES: Final[dict[str, tuple[float, float, float]]] = {
    "standard": (1.0, -0.11, -1.0),
    "low FP": (1.0, -0.22, -1.0),
    "low FN": (1.0, -0.11, -2.0),
}
"""(A_tp, A_fp, A_fn) of the NAB profiles as SKAB's metrics define them."""

PUBLISHED_OUTLIER: Final[tuple[tuple[str, float, float, float], ...]] = (
    ("Conv-AE", 0.78, 13.55, 28.02),
    ("MSET", 0.78, 39.73, 14.13),
    ("T-squared+Q (PCA)", 0.76, 26.62, 24.92),
    ("LSTM-AE", 0.74, 29.96, 25.92),
    ("T-squared", 0.66, 19.21, 42.6),
    ("Isolation forest", 0.29, 2.56, 82.89),
    ("Null detector", 0.0, 0.0, 100.0),
)
"""The leaderboard's outlier rows (F1, FAR %, MAR %) that ``../shared/data/skab/ORIGIN.md`` records."""

PUBLISHED_CHANGEPOINT: Final[tuple[tuple[str, float], ...]] = (
    ("MSCRED", 32.42),
    ("Isolation forest", 26.16),
    ("T-squared+Q (PCA)", 25.35),
    ("Conv-AE", 23.61),
    ("LSTM-AE", 23.51),
    ("T-squared", 19.54),
    ("MSET", 13.84),
    ("Null detector", 0.0),
)
"""The leaderboard's changepoint rows (NAB standard, 60 s window to the right)."""

_TIME_FORMAT: Final = "%Y-%m-%d %H:%M:%S"
ANY_LABEL: Final = "edgekit, any sensor or the multivariate score"
FLAG_LABEL: Final = "edgekit, change points from the verdict's rises and falls only"


@dataclass(frozen=True, slots=True)
class SkabFile:
    """One experiment: row times (ms, UTC as written), the sensors' columns and the two label columns."""

    name: str
    t_ms: Sequence[int]
    columns: dict[str, Sequence[float]]
    anomaly: Sequence[int]
    changepoint: Sequence[int]


def metric_name(column: str) -> str:
    """A SKAB column as a metric name the gateway accepts (``Volume Flow RateRMS`` -> ``volume_flow_raterms``)."""
    name = re.sub(r"[^a-z0-9]+", "_", column.strip().lower()).strip("_")
    return name[:32] if name and name[0].isalpha() else f"m_{name}"[:32]


def load_skab(root: Path) -> list[SkabFile]:
    """Every ``*.csv`` under ``root`` but ``anomaly-free/``, sorted by path. Fails loudly on a missing
    folder, a file without the label columns or a value that is not a number."""
    if not root.is_dir():
        raise ConfigError(f"SKAB folder {str(root)!r} does not exist (the data is never in this repository)")
    paths = sorted(p for p in root.rglob("*.csv") if "anomaly-free" not in p.parts)
    if not paths:
        raise ConfigError(f"no SKAB data files (*.csv) under {str(root)!r}")
    files = []
    for path in paths:
        rel = path.relative_to(root).as_posix()
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f, delimiter=";"))
        if not rows:
            raise ConfigError(f"{rel}: empty file")
        head = [h.strip() for h in rows[0]]
        if head[:1] != ["datetime"] or "anomaly" not in head or "changepoint" not in head:
            raise ConfigError(f"{rel}: expected datetime;...;anomaly;changepoint, got {';'.join(head)!r}")
        ia, ic = head.index("anomaly"), head.index("changepoint")
        sensors = [(i, metric_name(h)) for i, h in enumerate(head) if i not in (0, ia, ic)]
        t_ms: list[int] = []
        columns: dict[str, list[float]] = {m: [] for _, m in sensors}
        anomaly: list[int] = []
        changepoint: list[int] = []
        for n, row in enumerate(rows[1:], start=2):
            try:
                t = datetime.strptime(row[0].strip(), _TIME_FORMAT).replace(tzinfo=UTC)
                t_ms.append(int(t.timestamp() * 1000))
                for i, m in sensors:
                    columns[m].append(float(row[i]))
                anomaly.append(int(float(row[ia])))
                changepoint.append(int(float(row[ic])))
            except (ValueError, IndexError) as exc:
                raise ConfigError(f"{rel} line {n}: {exc}") from exc
        files.append(SkabFile(rel, t_ms, dict(columns), anomaly, changepoint))
    return files


# --- running the detector --------------------------------------------------------------------------


@dataclass(slots=True)
class FileRun:
    """Per row: the prediction (the device's verdict), the row's highest score and, when known, whether any
    sensor's detector or the multivariate one was inside an open anomaly, and whether a sensor moved to a new
    level (a ``shifted`` event)."""

    predicted: list[int] = field(default_factory=list)
    score: list[float] = field(default_factory=list)
    any_predicted: list[int] = field(default_factory=list)
    shifted: list[int] = field(default_factory=list)


def predict_file(file: SkabFile, spec: AnomalySpec, device: str = "pump") -> FileRun:
    """Feed every row, in order, to a fresh engine as one reading of one device."""
    eng = AnomalyEngine(spec)
    run = FileRun()
    names = list(file.columns)
    for i, t in enumerate(file.t_ms):
        r = Reading("skab", device, 0, i, t, "s", {m: file.columns[m][i] for m in names})
        res = eng.score_reading(r)
        run.predicted.append(1 if res.anomalous else 0)
        run.score.append(res.score)
        run.any_predicted.append(1 if res.any_metric or (res.multi is not None and res.multi.anomalous) else 0)
        run.shifted.append(1 if res.shifted else 0)
    return run


# --- the outlier table -----------------------------------------------------------------------------


@dataclass(slots=True)
class OutlierScore:
    tp: int = 0
    tn: int = 0
    fp: int = 0
    fn: int = 0

    def add(self, truth: Sequence[int], predicted: Sequence[int]) -> None:
        for y, p in zip(truth, predicted, strict=True):
            if y and p:
                self.tp += 1
            elif y:
                self.fn += 1
            elif p:
                self.fp += 1
            else:
                self.tn += 1

    @property
    def f1(self) -> float:
        d = self.tp + (self.fn + self.fp) / 2
        return self.tp / d if d else math.nan

    @property
    def far(self) -> float:
        d = self.fp + self.tn
        return 100.0 * self.fp / d if d else math.nan

    @property
    def mar(self) -> float:
        d = self.fn + self.tp
        return 100.0 * self.fn / d if d else math.nan


def outlier_score(truth: Sequence[Sequence[int]], predicted: Sequence[Sequence[int]]) -> OutlierScore:
    s = OutlierScore()
    for y, p in zip(truth, predicted, strict=True):
        s.add(y, p)
    return s


# --- the changepoint table -------------------------------------------------------------------------


def predicted_changepoints(predicted: Sequence[int], shifted: Sequence[int] = ()) -> list[int]:
    """Row positions where the prediction changes, the first row counting as its own value (SKAB's notebooks:
    ``prediction_cp = abs(prediction.diff()); prediction_cp[0] = prediction[0]``), and, when given, the rows
    where a sensor moved to a new level (``shifted``)."""
    return [
        i
        for i, p in enumerate(predicted)
        if (p if i == 0 else p != predicted[i - 1]) or (i < len(shifted) and shifted[i])
    ]


def nab_windows(cp_times: Sequence[int], width_ms: int = CP_WINDOW_MS) -> list[list[int]]:
    """``[t, t + width]`` for each true change point; a window reaching the next one's start pushes that
    start to its own end (the benchmark's "cut right window")."""
    wins = [[t, t + width_ms] for t in cp_times]
    for i in range(len(wins) - 1):
        if wins[i][1] >= wins[i + 1][0]:
            wins[i + 1][0] = wins[i][1]
    return wins


_STEPS: Final = 1000


def _scale(position: float, a_tp: float, a_fp: float) -> float:
    """The score of a detection at ``position`` (0 at the window's start, 1 at its end)."""
    event = min(_STEPS - 1, int(position * _STEPS))
    x = -math.pi / 2 + event * math.pi / (_STEPS - 1)
    half = (a_tp - a_fp) / 2
    return -half * math.tanh(x) / math.tanh(math.pi / 2) + half + a_fp


@dataclass(slots=True)
class ChangepointScore:
    raw: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PROFILES, 0.0))
    null: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PROFILES, 0.0))
    perfect: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PROFILES, 0.0))
    windows: int = 0
    missed: int = 0
    false_positives: int = 0

    def add(self, cp_times: Sequence[int], predicted_times: Sequence[int], width_ms: int = CP_WINDOW_MS) -> None:
        wins = nab_windows(cp_times, width_ms)
        preds = sorted(predicted_times)
        detected: list[tuple[int, int, int]] = []  # (start, detection, end)
        fps = 0
        if not wins:
            fps = len(preds)
        else:
            fps += sum(1 for t in preds if t < wins[0][0])
            for i, (a, b) in enumerate(wins):
                inside = [t for t in preds if a <= t <= b]
                if inside:
                    detected.append((a, inside[0], b))
                if i + 1 < len(wins):
                    nxt = wins[i + 1][0]
                    fps += sum(1 for t in preds if b < t < nxt)
            fps += sum(1 for t in preds if t > wins[-1][1])
        missed = len(wins) - len(detected)
        self.windows += len(wins)
        self.missed += missed
        self.false_positives += fps
        for profile, (a_tp, a_fp, a_fn) in PROFILES.items():
            s = a_fp * fps + a_fn * missed
            for a, t, b in detected:
                s += _scale((t - a) / (b - a), a_tp, a_fp)
            self.raw[profile] += s
            self.null[profile] += len(wins) * a_fn
            self.perfect[profile] += len(wins) * a_tp

    def score(self, profile: str) -> float:
        d = self.perfect[profile] - self.null[profile]
        return 100.0 * (self.raw[profile] - self.null[profile]) / d if d else math.nan


def changepoint_score(
    cp_times: Sequence[Sequence[int]], predicted_times: Sequence[Sequence[int]], width_ms: int = CP_WINDOW_MS
) -> ChangepointScore:
    s = ChangepointScore()
    for cps, preds in zip(cp_times, predicted_times, strict=True):
        s.add(cps, preds, width_ms)
    return s


# --- the whole evaluation --------------------------------------------------------------------------


@dataclass(slots=True)
class SkabResult:
    outlier: OutlierScore
    changepoint: ChangepointScore
    files: int
    rows_scored: int
    any_outlier: OutlierScore | None = None
    any_changepoint: ChangepointScore | None = None
    """The same for "any sensor or the multivariate detector" (when the runs said)."""
    flag_changepoint: ChangepointScore | None = None
    """The change points of the verdict's rises and falls alone (when the runs also gave level shifts)."""


def evaluate_skab(
    files: Sequence[SkabFile],
    spec: AnomalySpec,
    *,
    train_rows: int = TRAIN_ROWS,
    predict: Callable[[SkabFile, AnomalySpec], FileRun] = predict_file,
) -> SkabResult:
    truth, preds, cps, pred_cps, flag_cps, any_preds, any_cps = [], [], [], [], [], [], []
    rows = 0
    shifts_known = True
    for f in files:
        run = predict(f, spec)
        y, p = list(f.anomaly[train_rows:]), run.predicted[train_rows:]
        t = list(f.t_ms[train_rows:])
        truth.append(y)
        preds.append(p)
        rows += len(y)
        cps.append([t[i] for i, c in enumerate(f.changepoint[train_rows:]) if c])
        s = run.shifted[train_rows:]
        shifts_known = shifts_known and len(s) == len(y)
        pred_cps.append([t[i] for i in predicted_changepoints(p, s)])
        flag_cps.append([t[i] for i in predicted_changepoints(p)])
        q = run.any_predicted[train_rows:]
        any_preds.append(q)
        any_cps.append([t[i] for i in predicted_changepoints(q, s)])
    result = SkabResult(outlier_score(truth, preds), changepoint_score(cps, pred_cps), len(files), rows)
    if shifts_known:
        result.flag_changepoint = changepoint_score(cps, flag_cps)
    if all(len(q) == len(y) for q, y in zip(any_preds, truth, strict=True)):
        result.any_outlier = outlier_score(truth, any_preds)
        result.any_changepoint = changepoint_score(cps, any_cps)
    return result


def format_tables(result: SkabResult, label: str = "edgekit (defaults)") -> str:
    o, c = result.outlier, result.changepoint
    lines = [
        f"SKAB: {result.files} files, {result.rows_scored} rows scored (the first {TRAIN_ROWS} of each file train)",
        "",
        "Outlier detection (per row; F1 bigger is better, FAR and MAR smaller)",
        "",
        "| Algorithm | F1 | FAR, % | MAR, % |",
        "|---|---|---|---|",
        f"| **{label}** | **{o.f1:.2f}** | **{o.far:.2f}** | **{o.mar:.2f}** |",
    ]
    ao, ac = result.any_outlier, result.any_changepoint
    if ao is not None:
        lines.append(f"| {ANY_LABEL} | {ao.f1:.2f} | {ao.far:.2f} | {ao.mar:.2f} |")
    lines += [f"| {n} | {f1:.2f} | {far:.2f} | {mar:.2f} |" for n, f1, far, mar in PUBLISHED_OUTLIER]
    lines += [
        f"({label}: TP {o.tp}, TN {o.tn}, FP {o.fp}, FN {o.fn}; F1 {o.f1:.4f})",
        "",
        f"Changepoint detection (NAB scoring, {CP_WINDOW_MS // 1000} s window right of each change point; bigger is "
        "better)",
        "",
        "| Algorithm | NAB (standard) | NAB (lowFP) | NAB (LowFN) | Number of Missed CPs | Number of FPs |",
        "|---|---|---|---|---|---|",
        f"| **{label}** | **{c.score('standard'):.2f}** | **{c.score('low FP'):.2f}** | **{c.score('low FN'):.2f}** | "
        f"**{c.missed}** | **{c.false_positives}** |",
    ]
    fc = result.flag_changepoint
    if fc is not None:
        lines.append(
            f"| {FLAG_LABEL} | {fc.score('standard'):.2f} | {fc.score('low FP'):.2f} | {fc.score('low FN'):.2f} | "
            f"{fc.missed} | {fc.false_positives} |"
        )
    if ac is not None:
        lines.append(
            f"| {ANY_LABEL} | {ac.score('standard'):.2f} | {ac.score('low FP'):.2f} | {ac.score('low FN'):.2f} | "
            f"{ac.missed} | {ac.false_positives} |"
        )
    lines += [f"| {n} | {s:.2f} | | | | |" for n, s in PUBLISHED_CHANGEPOINT]
    lines.append(f"({label}: {c.windows} change points scored)")
    return "\n".join(lines)
