"""NAB-style scoring of per-point anomaly scores: a threshold swept over the scores, the Numenta Anomaly
Benchmark's weighting of each detection by where it falls, and the best threshold for the whole corpus.

This follows numenta/NAB's ``nab/sweeper.py`` (``calcSweepScore``, ``calcScoreByThreshold``) and the
normalisation of its ``runner.py``:

- The first ``min(floor(0.15 n), 750)`` points of a file (n points) are its probation: not scored.
- A point inside a labelled window at index ``i`` (the window's points ``left..right``, ``w`` of them) would
  be a true positive worth ``scaled_sigmoid(-(right - i + 1) / w) / scaled_sigmoid(-1)`` times ``A_tp``;
  a window's worth is that of its earliest detection (its best), ``-A_fn`` without one.
- A point outside every window is a false positive worth ``scaled_sigmoid(d) * A_fp`` (negative), with
  ``d = |i - right| / (w - 1)`` of the last window before it (one point wide: 1), and ``d = 3`` (worth
  ``-A_fp``) before any window: false positives just after a window cost less.
- ``scaled_sigmoid(x) = 2 / (1 + e^(5x)) - 1``, and -1 from ``x >= 3``.
- At threshold ``T`` every point scoring ``>= T`` is a detection. The corpus's score at ``T`` is the sum
  over its files; the reported threshold is the one with the best sum (NAB's optimiser), per profile.
- Normalised: ``100 (score - null) / (perfect - null)`` with ``null = -A_fn`` and ``perfect = A_tp`` per
  scored window (the null detector detects nothing; the perfect one each window at its first point).

Profiles (A_tp, A_fp, A_fn), as NAB's ``config/profiles.json``: standard (1, 0.11, 1), reward_low_FP_rate
(1, 0.22, 1), reward_low_FN_rate (1, 0.11, 2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

__all__ = ["NAB_PROFILES", "NabSweep", "probation_length", "scaled_sigmoid", "sweep"]

NAB_PROFILES: Final[dict[str, tuple[float, float, float]]] = {
    "standard": (1.0, 0.11, 1.0),
    "reward_low_FP_rate": (1.0, 0.22, 1.0),
    "reward_low_FN_rate": (1.0, 0.11, 2.0),
}
"""(A_tp, A_fp, A_fn) of NAB's three application profiles."""
PROBATION: Final = 0.15


def scaled_sigmoid(x: float) -> float:
    """NAB's weight of a relative position: 0.987 at a window's left edge (-1), 0 at its right edge (0),
    -0.987 one window-width after it (1), -1 from 3 on."""
    if x >= 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * x)) - 1.0


_MAX_TP: Final = scaled_sigmoid(-1.0)


def probation_length(n: int) -> float:
    """Points at the start of a file of ``n`` points that are not scored."""
    return min(math.floor(PROBATION * n), PROBATION * 5000)


@dataclass(frozen=True, slots=True)
class Threshold:
    """The corpus at one threshold: detected windows, the sum of their best (unweighted) true-positive
    worths, and the sum of the false positives' (unweighted, negative) worths."""

    threshold: float
    detected: int
    tp: float
    fp: float
    detections: int
    """Points at or above the threshold (after the probation)."""
    fp_points: int
    """Those of them outside every window."""

    def score(self, profile: tuple[float, float, float], windows: int) -> float:
        a_tp, a_fp, a_fn = profile
        return a_tp * self.tp + a_fp * self.fp - a_fn * (windows - self.detected)


@dataclass(slots=True)
class NabSweep:
    """Every threshold's totals (highest threshold first; the first row detects nothing)."""

    windows: int = 0
    points: int = 0
    rows: list[Threshold] = field(default_factory=list)

    def normalised(self, profile: str, row: Threshold) -> float:
        a_tp, _, a_fn = NAB_PROFILES[profile]
        null, perfect = -a_fn * self.windows, a_tp * self.windows
        return (
            100.0 * (row.score(NAB_PROFILES[profile], self.windows) - null) / (perfect - null)
            if self.windows
            else math.nan
        )

    def best(self, profile: str) -> Threshold:
        """The threshold NAB's optimiser would pick for ``profile``: the best score (of equal ones, the
        highest threshold, as NAB's stable sort keeps it)."""
        p = NAB_PROFILES[profile]
        return max(self.rows, key=lambda r: r.score(p, self.windows))

    def at(self, threshold: float) -> Threshold:
        """The totals when every point scoring ``>= threshold`` is a detection."""
        chosen = self.rows[0]
        for row in self.rows:
            if row.threshold < threshold:
                break
            chosen = row
        return chosen


def sweep(files: Sequence[tuple[Sequence[int], Sequence[float], Sequence[tuple[int, int]]]]) -> NabSweep:
    """Score every threshold over ``files``: ``(t_ms, scores, windows)`` each, windows ``[start, end)`` in
    event time (NAB's inclusive ends plus one step), points in time order."""
    out = NabSweep()
    scored: list[tuple[float, int, float]] = []  # (score, window id or -1, unweighted worth)
    for t_ms, scores, windows in files:
        n = len(t_ms)
        probation = probation_length(n)
        spans: list[tuple[int, int]] = []  # point index ranges of the windows
        for start, end in windows:
            idx = [i for i, t in enumerate(t_ms) if start <= t < end]
            if idx:
                spans.append((idx[0], idx[-1]))
        ids: list[int] = []
        for _, right in spans:
            if right >= probation:  # a window wholly inside the probation is not scored (NAB: no name)
                ids.append(out.windows)
                out.windows += 1
            else:
                ids.append(-1)
        k = 0
        prev: tuple[int, int] | None = None
        for i in range(n):
            while k < len(spans) and spans[k][1] < i:
                prev = spans[k]
                k += 1
            if i < probation:
                continue
            out.points += 1
            if k < len(spans) and spans[k][0] <= i:
                left, right = spans[k]
                width = right - left + 1
                scored.append((scores[i], ids[k], scaled_sigmoid(-(right - i + 1) / width) / _MAX_TP))
            else:
                past = 3.0 if prev is None else abs(prev[1] - i) / max(1, prev[1] - prev[0])
                scored.append((scores[i], -1, scaled_sigmoid(past)))
    scored.sort(key=lambda p: -p[0])
    best: dict[int, float] = {}
    tp = fp = 0.0
    detections = fp_points = 0
    out.rows.append(Threshold(math.inf, 0, 0.0, 0.0, 0, 0))
    for j, (score, wid, worth) in enumerate(scored):
        detections += 1
        if wid < 0:
            fp += worth
            fp_points += 1
        elif worth > best.get(wid, -math.inf):
            tp += worth - best.get(wid, 0.0)
            best[wid] = worth
        if j + 1 == len(scored) or scored[j + 1][0] != score:
            out.rows.append(Threshold(score, len(best), tp, fp, detections, fp_points))
    return out
