"""Per device, a Mahalanobis (Hotelling T^2) score over its metrics: a z-score generalised to a vector.

A pump whose current, pressure and flow move against their usual relation is flagged even when each metric
alone is inside its band. The metrics are those of the device's first reading that carried at least two
scored metrics; a reading without all of them is not scored here (the single-metric detectors still are).

- The reference (what is normal): a mean per metric and the covariance of the deviations, learned with
  equal weights through the warm-up (``max(warmup, 10 k)`` readings for k metrics) and then as ewmas with
  a memory of ``memory`` readings (weight ``max(1/n, 1/memory)``, West's form; default 200): the online
  analogue of fitting on a training part, adapted slowly afterwards. A reading is learned only outside an
  anomaly and when its own z is below ``clear_threshold``, so a fault that sets in slowly does not drag
  the reference along before it is flagged.
- ``T^2 = u' (R + ridge I)^-1 u`` with ``u`` the deviations divided by each metric's deviation and ``R``
  the correlation matrix (``ridge`` = 0.01 keeps it invertible when two metrics move as one, or one is
  constant). The inverse is recomputed (Cholesky) every 16 readings, and at every reading of the warm-up.
- The threshold comes from T^2's distribution, with the right degrees of freedom: for a new reading
  against a mean and covariance estimated from n readings, ``T^2 n (n - k) / (k (n + 1) (n - 1))``
  follows F(k, n - k) (Tracy, Young and Mason 1992), with n the reference's effective sample size
  (``min(learned, 2 memory - 1)``); Paulson's normal approximation of F turns it into a normal deviate z
  (for large n it is the Wilson-Hilferty transform of chi-square(k)), so the score, the threshold and the
  hysteresis are those of a single metric (``score_of(z, threshold)``), at the same false-alarm rate per
  reading whatever k is.
- Evidence over a few readings (a MEWMA chart, Lowry et al. 1992): the standardised deviations are also
  smoothed, ``e = LAMBDA u + (1 - LAMBDA) e`` (``LAMBDA`` = 0.2: about the last nine readings), and
  ``T_e^2 = e' (R_e + ridge I)^-1 e`` with ``R_e`` the correlation of ``e`` itself, learned from the same
  readings as the reference (so a sensor whose readings are correlated in time, as a temperature is, does
  not look like a shift). A small lasting shift that no single reading shows (a flow 3.5 deviations lower
  for minutes: each reading at z ~ 3.5, the average of nine far more) is found by ``T_e^2``. It is used once
  ``memory`` readings have taught ``R_e``, halved (``EVIDENCE_DIVISOR``: consecutive values of ``e`` are not
  independent, so its exceedances come in runs; on the simulator the device score's false alarms per
  device-day were 0.33 undivided, 0.13 halved) and turned into a z like ``T^2``.
- The same evidence one metric at a time: ``T_e^2`` spreads its power over all k metrics, so a shift in
  one of eight (a flow a few deviations low, nothing else moving) needs to be large before the chi-square(8)
  tail reaches the threshold. Each metric's ``e_i / sd(e_i)`` is a standard normal deviate too; the largest
  in absolute value, its square halved like ``T_e^2``, is turned into one z by Bonferroni (its two-sided
  tail probability times k, :func:`max_z`), so k metrics tested one by one still hold the device to one
  false-alarm rate. The reading's z is the largest of the three.
- An anomaly opens at ``z >= threshold`` and closes after ``clear_points`` readings below
  ``clear_threshold``; while it is open nothing is learned, but the reference's mean goes on along the trend
  it had (per metric, an ewma of how far each learned reading moved the mean, with a memory of ``memory / 2``
  readings): a sensor that drifts steadily (a pump's temperature as it warms up) does not carry T^2 away from
  a frozen reference and hold the anomaly open long after the fault is over; one still open after ``rebaseline_after``
  (``rebaseline_points`` readings when 0) is taken as normal: the mean becomes the mean of its readings,
  and a ``rebaselined`` event says so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any, Final

from .config import DetectorSpec
from .detector import FLOOR, Event, by_fields, fields_of, knobs, score_of

__all__ = ["MEMORY", "MultiDetector", "MultiResult", "chi2_z", "max_z", "t2_z"]

RIDGE: Final = 0.01
LAMBDA: Final = 0.2
"""The weight of a new reading in the smoothed deviations ``e`` (the MEWMA chart's lambda)."""
EVIDENCE_DIVISOR: Final = 2.0
"""``T_e^2`` and the square of each metric's standardised ``e`` are divided by this before their z (their values
come in runs; see the module's docstring)."""
MEMORY: Final = 200
"""The reference's memory in readings after the warm-up (``anomaly.multivariate_memory``)."""
_REFRESH: Final = 16
_ND: Final = NormalDist()
_V_EXACT: Final = 37.0


def chi2_z(t2: float, k: int) -> float:
    """A chi-square value with ``k`` degrees of freedom as a standard normal deviate (Wilson-Hilferty), >= 0."""
    if t2 <= 0.0:
        return 0.0
    c = 2.0 / (9.0 * k)
    return max(0.0, (math.pow(t2 / k, 1.0 / 3.0) - (1.0 - c)) / math.sqrt(c))


def t2_z(t2: float, k: int, n: float) -> float:
    """A T^2 of ``k`` metrics against a reference of ``n`` readings as a standard normal deviate, >= 0.

    ``f = T^2 n (n - k) / (k (n + 1) (n - 1))`` follows F(k, n - k); Paulson's approximation
    ``z = ((1 - 2/(9 d2)) f^(1/3) - (1 - 2/(9 d1))) / sqrt(2/(9 d1) + 2/(9 d2) f^(2/3))``. As n grows this is
    :func:`chi2_z`; fewer than ``k + 3`` readings fall back to it (never reached after the warm-up)."""
    d2 = n - k
    if d2 < 3.0:
        return chi2_z(t2, k)
    if t2 <= 0.0:
        return 0.0
    f = t2 * n * d2 / (k * (n + 1.0) * (n - 1.0))
    a1, a2 = 2.0 / (9.0 * k), 2.0 / (9.0 * d2)
    f3 = math.pow(f, 1.0 / 3.0)
    return max(0.0, ((1.0 - a2) * f3 - (1.0 - a1)) / math.sqrt(a1 + a2 * f3 * f3))


def max_z(v: float, k: int) -> float:
    """The largest of ``k`` standard normal deviates in absolute value, ``v``, as one standard normal deviate,
    >= 0: its two-sided tail probability times ``k`` (Bonferroni), turned back into a z. Increasing in ``v``;
    ``v`` itself for ``k`` = 1. Beyond ``v`` = 37 (a tail below 1e-299) it goes on parallel to ``v``."""
    if v > _V_EXACT:
        return v - _V_EXACT + max_z(_V_EXACT, k)
    p = k * math.erfc(v / math.sqrt(2.0))
    if p >= 1.0:
        return 0.0
    return max(0.0, -_ND.inv_cdf(p / 2.0))


def _reading_z(t2: float, t2e: float, vmax: float, k: int, n: int) -> float:
    """A reading's z: the largest of ``T^2``'s, ``T_e^2``'s (halved) and the largest single evidence term's (halved,
    over ``k`` by Bonferroni), against a reference of ``n`` readings."""
    z = max(t2_z(t2, k, n), t2_z(t2e / EVIDENCE_DIVISOR, k, n))
    v = vmax / math.sqrt(EVIDENCE_DIVISOR)
    if v > z:  # max_z(v, k) <= v: only then can it be the largest
        z = max(z, max_z(v, k))
    return z


def _terms(inv: list[list[float]], u: list[float]) -> list[float]:
    """``u_i (inv u)_i`` for each i: the terms of the quadratic form ``u' inv u``, each row's product summed from
    the left from 0 as ``sum`` does (written out: compiled, a generator per row)."""
    k = len(u)
    out: list[float] = []
    for i in range(k):
        row = inv[i]
        w = 0.0
        for j in range(k):
            w += row[j] * u[j]
        out.append(u[i] * w)
    return out


def _sum_at_least_0(terms: list[float]) -> float:
    """``max(0.0, sum(terms))``: added from the left from 0, as ``sum`` adds; 0 for a NaN, as ``max`` keeps its
    first (written out: compiled, ``max`` boxes its floats)."""
    t = 0.0
    for x in terms:
        t += x
    return t if t > 0.0 else 0.0


def _quad(inv: list[list[float]], v: list[float]) -> float:
    """``max(0, v' inv v)``: the terms of :func:`_terms`, summed."""
    return _sum_at_least_0(_terms(inv, v))


def _cholesky_inverse(a: list[list[float]]) -> list[list[float]]:
    """The inverse of a symmetric positive definite matrix (Cholesky, then two triangular solves). Each sum of
    products is added from the left from 0, as ``sum`` adds (written out: compiled, a generator per sum; no ``max``
    or ``reversed``, which box their floats or make an iterator)."""
    k = len(a)
    low = [[0.0] * k for _ in range(k)]
    for i in range(k):
        li = low[i]
        ai = a[i]
        for j in range(i + 1):
            lj = low[j]
            acc = 0.0
            for m in range(j):
                acc += li[m] * lj[m]
            s = ai[j] - acc
            if i == j:
                li[i] = math.sqrt(FLOOR if FLOOR > s else s)  # max(s, FLOOR): s kept on a tie or a NaN
            else:
                li[j] = s / lj[j]
    inv = [[0.0] * k for _ in range(k)]
    y = [0.0] * k
    for col in range(k):
        for i in range(k):  # L y = e_col
            li = low[i]
            acc = 0.0
            for m in range(i):
                acc += li[m] * y[m]
            y[i] = ((1.0 if i == col else 0.0) - acc) / li[i]
        i = k - 1
        while i >= 0:  # L' x = y
            acc = 0.0
            for m in range(i + 1, k):
                acc += low[m][i] * inv[m][col]
            inv[i][col] = (y[i] - acc) / low[i][i]
            i -= 1
    return inv


def _inverse2(a00: float, a01: float, a10: float, a11: float) -> tuple[float, float, float, float]:
    """:func:`_correlation_inverse` of the matrix ``[[a00, a01], [a10, a11]]``, its entries row by row."""
    inv = _correlation_inverse([[a00, a01], [a10, a11]], 2)
    return inv[0][0], inv[0][1], inv[1][0], inv[1][1]


def _square2(m: list[list[float]]) -> bool:
    """Whether ``m`` is a matrix of two rows of two."""
    return len(m) == 2 and len(m[0]) == 2 and len(m[1]) == 2


def _root(c: float) -> float:
    """``sqrt(max(c, FLOOR * FLOOR))``: a variance's root, at least ``FLOOR`` (``c`` kept on a tie or a NaN, as ``max``
    keeps its first; written out: compiled, ``max`` boxes its floats)."""
    return math.sqrt(FLOOR * FLOOR if FLOOR * FLOOR > c else c)


def _correlation_inverse(cov: list[list[float]], k: int) -> list[list[float]]:
    """The inverse of ``cov``'s first ``k`` rows and columns as a correlation, its diagonal raised by ``RIDGE``: each
    entry over the roots of the two variances (each at least ``FLOOR``), then :func:`_cholesky_inverse`."""
    sd: list[float] = []
    for i in range(k):
        sd.append(_root(cov[i][i]))
    r: list[list[float]] = []
    for i in range(k):
        ci, si = cov[i], sd[i]
        row: list[float] = []
        for j in range(k):
            row.append(ci[j] / (si * sd[j]) + (RIDGE if i == j else 0.0))
        r.append(row)
    return _cholesky_inverse(r)


@dataclass(frozen=True, slots=True, init=False)  # its own __init__: see by_fields
class MultiResult:
    """One reading's multivariate score. ``z`` is ``None`` in warm-up; ``top`` is the metric that contributes
    most to ``t2`` (its share in ``share``: a term of ``u_i (R^-1 u)_i``, which can exceed 1 when another
    term is negative), ``ranked`` every metric by its term, largest first (when the reading caused an event)."""

    t_ms: int
    t2: float
    z: float | None
    score: float
    anomalous: bool
    phase: str
    events: tuple[Event, ...] = ()
    top: str = ""
    share: float = 0.0
    ranked: tuple[str, ...] = ()

    def __init__(
        self,
        t_ms: int,
        t2: float,
        z: float | None,
        score: float,
        anomalous: bool,
        phase: str,
        events: tuple[Event, ...] = (),
        top: str = "",
        share: float = 0.0,
        ranked: tuple[str, ...] = (),
    ) -> None:
        object.__setattr__(self, "t_ms", t_ms)
        object.__setattr__(self, "t2", t2)
        object.__setattr__(self, "z", z)
        object.__setattr__(self, "score", score)
        object.__setattr__(self, "anomalous", anomalous)
        object.__setattr__(self, "phase", phase)
        object.__setattr__(self, "events", events)
        object.__setattr__(self, "top", top)
        object.__setattr__(self, "share", share)
        object.__setattr__(self, "ranked", ranked)

    def __reduce__(self) -> tuple[type[Any], tuple[Any, ...]]:
        return by_fields(self)


@dataclass(slots=True)
class MultiState:
    names: list[str] = field(default_factory=list)
    n: int = 0
    mean: list[float] = field(default_factory=list)
    cov: list[list[float]] = field(default_factory=list)
    inv: list[list[float]] = field(default_factory=list)
    stale: int = 0
    seen: int = 0
    active: bool = False
    calm: int = 0
    since: int = 0
    since_seen: int = 0
    held_n: int = 0
    held_mean: list[float] = field(default_factory=list)
    ew: list[float] = field(default_factory=list)
    """The smoothed standardised deviations ``e``."""
    ecov: list[list[float]] = field(default_factory=list)
    """The second moments of ``e`` over the learned readings, and the inverse of their correlation."""
    einv: list[list[float]] = field(default_factory=list)
    n_e: int = 0
    trend: list[float] = field(default_factory=list)
    """Per metric, how far a learned reading moves the mean (an ewma): the mean moves on by it while frozen."""


MULTI_FIELDS: Final = (
    "names", "n", "mean", "cov", "inv", "stale", "seen", "active", "calm", "since", "since_seen",
    "held_n", "held_mean", "ew", "ecov", "einv", "n_e", "trend",
)  # fmt: skip
"""The fields a snapshot of version 2 holds after its version, in this order, written out (as
``detector.STATE_FIELDS``: a test holds :class:`MultiState`'s fields to these)."""
STATE_VERSION: Final = 2
"""A multivariate detector's snapshot: 2, a list of :class:`MultiState`'s fields in order; 1, a dict of them by name."""


class MultiDetector:
    """The T^2 detector of one device. ``process(t_ms, values)`` per reading, in event-time order."""

    __slots__ = (
        "_c00", "_c01", "_c10", "_c11", "_e0", "_e1", "_ew", "_h0", "_h1", "_held", "_i00", "_i01", "_i10", "_i11",
        "_inv", "_m0", "_m1", "_st", "_t0", "_t1", "_trend", "_two", "_x00", "_x01", "_x10", "_x11", "_y00", "_y01",
        "_y10", "_y11", "fields", "k", "memory", "spec",
    )  # fmt: skip

    def __init__(self, spec: DetectorSpec, memory: int = MEMORY, fields: bool = True) -> None:
        self.spec = spec
        self.k = knobs(spec)  # its fields, read at every point
        self.memory = memory
        self.fields = fields  # two metrics' state held in fields (tests turn it off to compare with the lists)
        self._st = MultiState()
        # Two metrics, the common case: the state's lists of floats are held in these fields while ``_two`` (compiled,
        # a float in a list is an object made at each change, a field is not). :attr:`state` puts them back in its
        # lists whenever it is read; :meth:`_two_from_lists` takes them from there. The arithmetic is that of the
        # general code, operation for operation (the same bits: tests/gateway/anomaly/test_anomaly_two.py).
        self._two = False
        self._m0 = self._m1 = 0.0  # mean
        self._c00 = self._c01 = self._c10 = self._c11 = 0.0  # cov
        self._inv = False
        self._i00 = self._i01 = self._i10 = self._i11 = 0.0  # inv, while _inv
        self._trend = False
        self._t0 = self._t1 = 0.0  # trend, while _trend
        self._ew = False
        self._e0 = self._e1 = 0.0  # ew, while _ew, with ecov and einv
        self._x00 = self._x01 = self._x10 = self._x11 = 0.0
        self._y00 = self._y01 = self._y10 = self._y11 = 0.0
        self._held = False
        self._h0 = self._h1 = 0.0  # held_mean, while _held

    @property
    def state(self) -> MultiState:
        """The detector's state, to read: with two metrics its lists are made afresh from the fields that hold them,
        so changing them changes nothing (a state is set by :meth:`restore`)."""
        if self._two:
            self._two_to_lists()
        return self._st

    def __reduce__(self) -> tuple[type[MultiDetector], tuple[DetectorSpec, int, bool], dict[str, MultiState]]:
        """For copy and pickle, compiled or not (a compiled class is not made without its arguments)."""
        return MultiDetector, (self.spec, self.memory, self.fields), {"state": self.state}

    def __setstate__(self, state: dict[str, MultiState]) -> None:
        self._st = state["state"]
        self._two_from_lists()

    def _two_to_lists(self) -> None:
        st = self._st
        st.mean = [self._m0, self._m1]
        st.cov = [[self._c00, self._c01], [self._c10, self._c11]]
        st.inv = [[self._i00, self._i01], [self._i10, self._i11]] if self._inv else []
        st.trend = [self._t0, self._t1] if self._trend else []
        if self._ew:
            st.ew = [self._e0, self._e1]
            st.ecov = [[self._x00, self._x01], [self._x10, self._x11]]
            st.einv = [[self._y00, self._y01], [self._y10, self._y11]]
        else:
            st.ew, st.ecov, st.einv = [], [], []
        st.held_mean = [self._h0, self._h1] if self._held else []

    def _two_from_lists(self) -> None:
        """Hold the state's lists in the fields if it has two metrics and lists of the shapes the detector makes
        (any other state, a hand-made one, is left to the general code, which says what is wrong with it)."""
        st = self._st
        self._two = False
        if not self.fields or len(st.names) != 2 or len(st.mean) != 2 or not _square2(st.cov):
            return
        inv = _square2(st.inv)
        if not (inv or (not st.inv and st.n < self.warmup())):
            return
        ew = len(st.ew) == 2 and _square2(st.ecov) and _square2(st.einv)
        if not (ew or (not st.ew and not st.ecov and not st.einv)):
            return
        if len(st.trend) not in (0, 2) or len(st.held_mean) not in (0, 2) or (st.active and not st.held_mean):
            return
        self._m0, self._m1 = st.mean[0], st.mean[1]
        self._c00, self._c01, self._c10, self._c11 = st.cov[0][0], st.cov[0][1], st.cov[1][0], st.cov[1][1]
        self._inv = inv
        if inv:
            self._i00, self._i01, self._i10, self._i11 = st.inv[0][0], st.inv[0][1], st.inv[1][0], st.inv[1][1]
        self._trend = len(st.trend) == 2
        if self._trend:
            self._t0, self._t1 = st.trend[0], st.trend[1]
        self._ew = ew
        if ew:
            self._e0, self._e1 = st.ew[0], st.ew[1]
            self._x00, self._x01, self._x10, self._x11 = st.ecov[0][0], st.ecov[0][1], st.ecov[1][0], st.ecov[1][1]
            self._y00, self._y01, self._y10, self._y11 = st.einv[0][0], st.einv[0][1], st.einv[1][0], st.einv[1][1]
        self._held = len(st.held_mean) == 2
        if self._held:
            self._h0, self._h1 = st.held_mean[0], st.held_mean[1]
        self._two = True

    def warmup(self) -> int:
        return max(self.k.warmup, 10 * len(self._st.names))

    def _weight(self, n: int) -> float:
        """A learned reading's weight when it is the ``n``-th: ``max(1 / memory, 1 / n)`` (written out: compiled,
        ``max`` boxes its floats)."""
        w = 1.0 / self.memory
        if 1.0 / n > w:
            w = 1.0 / n
        return w

    def _closes(self, t_ms: int, z: float, events: list[Event]) -> bool:
        """A reading of ``z`` while an anomaly is open: whether it closes it now (``clear_points`` readings below
        ``clear_threshold`` in a row; its event added)."""
        st, spec = self._st, self.k
        st.calm = st.calm + 1 if z < spec.clear_threshold else 0
        if st.calm >= spec.clear_points:
            events.append(Event("closed", t_ms, st.since))
            st.active = False
            return True
        return False

    def _open(self, t_ms: int, z: float, events: list[Event]) -> None:
        """An anomaly opens at the reading of ``z`` (the caller holds its values as the held mean)."""
        st = self._st
        st.active, st.calm, st.since, st.since_seen = True, 0, t_ms, st.seen
        st.held_n = 1
        events.append(Event("opened", t_ms, t_ms, z=z))

    def _overdue(self, t_ms: int) -> bool:
        """An anomaly open since ``since`` is to be taken as normal (rebaselined) at ``t_ms``."""
        st, spec = self._st, self.k
        if spec.rebaseline_after_ms:
            return t_ms - st.since >= spec.rebaseline_after_ms
        return st.seen - st.since_seen >= spec.rebaseline_points

    def _u(self, xs: list[float]) -> list[float]:
        """Each metric's deviation from the mean in its own deviations: ``(x - mean) / sd`` with ``sd`` the
        largest of the covariance's root, ``min_std``, ``rel_min_std * |mean|`` and ``FLOOR`` (compared as
        ``max`` compares, first kept on a tie; written out: compiled, ``max`` of four boxes each float)."""
        st = self._st
        mean, cov = st.mean, st.cov
        if len(xs) != len(mean):
            raise ValueError("a reading's values and the reference's means differ in number")
        u: list[float] = []
        for i in range(len(xs)):
            u.append((xs[i] - mean[i]) / self._sd(cov[i][i], mean[i]))
        return u

    def _refresh(self) -> None:
        st = self._st
        st.inv = _correlation_inverse(st.cov, len(st.names))
        st.stale = 0

    def _learn(self, xs: list[float]) -> None:
        st = self._st
        st.n += 1
        a = b = self._weight(st.n)
        mean = st.mean
        k = len(xs)
        if len(mean) != k:
            raise ValueError(f"the multivariate state holds {len(mean)} means for {k} metrics")
        d: list[float] = []  # not zip(..., strict=True): compiled, a call parsing its keyword
        for i in range(k):
            d.append(xs[i] - mean[i])
        if len(st.trend) != k:
            st.trend = [0.0] * k
        trend = st.trend
        c = 2.0 / self.memory
        warm = self.warmup()
        past = st.n > warm
        for i in range(k):
            mean[i] = mean[i] + a * d[i]
            if past:
                trend[i] = trend[i] + c * (a * d[i] - trend[i])
        cov = st.cov
        for i in range(k):
            row, di = cov[i], d[i]
            for j in range(i, k):
                v = (1.0 - b) * (row[j] + b * di * d[j])
                row[j] = v
                cov[j][i] = v
        st.stale += 1
        if st.n <= warm or st.stale >= _REFRESH:
            self._refresh()

    def _evidence(self, u: list[float]) -> tuple[float, float]:
        """Smooth ``u`` into ``e``; return ``T_e^2`` and the largest ``|e_i| / sd(e_i)`` (both 0 until ``memory``
        readings have taught ``R_e``)."""
        st = self._st
        k = len(u)
        if not st.ew:
            st.ew = [0.0] * k
            st.ecov = [[0.0] * k for _ in range(k)]
            st.einv = [[0.0] * k for _ in range(k)]
        e = st.ew
        for i in range(k):
            e[i] += LAMBDA * (u[i] - e[i])
        if st.n_e < self.memory:
            return 0.0, 0.0
        ecov = st.ecov
        v: list[float] = []
        for i in range(k):
            v.append(e[i] / _root(ecov[i][i]))
        t2e = _quad(st.einv, v)
        vmax = abs(v[0])
        for i in range(1, k):
            if abs(v[i]) > vmax:
                vmax = abs(v[i])
        return t2e, vmax

    def _learn_evidence(self) -> None:
        st = self._st
        if not st.ew:
            return
        st.n_e += 1
        b = self._weight(st.n_e)
        k, e, ecov = len(st.ew), st.ew, st.ecov
        for i in range(k):
            row, ei = ecov[i], e[i]
            for j in range(i, k):
                v = (1.0 - b) * row[j] + b * ei * e[j]
                row[j] = v
                ecov[j][i] = v
        if st.n_e % _REFRESH == 0 or st.n_e == self.memory:
            st.einv = _correlation_inverse(ecov, k)

    def process(self, t_ms: int, values: Mapping[str, float]) -> MultiResult | None:
        """Score and learn one reading; ``None`` when it does not carry all of the device's metrics."""
        st, spec = self._st, self.k
        if not st.names:
            if len(values) < 2:
                return None
            st.names = sorted(values)
            k = len(st.names)
            st.mean = [0.0] * k
            st.cov = [[0.0] * k for _ in range(k)]
            self._two_from_lists()
        if self._two:
            return self._process_two(t_ms, values)
        try:
            xs = [values[m] for m in st.names]
        except KeyError:
            return None
        st.seen += 1
        k = len(xs)
        if st.n < self.warmup():
            self._learn(xs)
            return MultiResult(t_ms, 0.0, None, 0.0, False, "warmup")
        if st.active and st.trend:  # frozen: the mean goes on along its trend
            for i in range(k):
                st.mean[i] += st.trend[i]
        u = self._u(xs)
        parts = _terms(st.inv, u)
        t2 = _sum_at_least_0(parts)
        t2e, vmax = self._evidence(u)
        z = _reading_z(t2, t2e, vmax, k, min(st.n, 2 * self.memory - 1))
        score = score_of(z, spec.threshold)
        events: list[Event] = []
        anomalous = st.active
        if st.active:
            if not self._closes(t_ms, z, events):
                st.held_n += 1
                for i in range(k):
                    st.held_mean[i] += (xs[i] - st.held_mean[i]) / st.held_n
                if self._overdue(t_ms):
                    old = list(st.mean)
                    st.mean = list(st.held_mean)
                    events.append(
                        Event("rebaselined", t_ms, st.since, z=z, old_mean=old[0], new_mean=st.mean[0],
                              after_ms=t_ms - st.since)
                    )  # fmt: skip
                    st.active = False
        elif z >= spec.threshold:
            self._open(t_ms, z, events)
            st.held_mean = list(xs)
            anomalous = True
        elif z < spec.clear_threshold:
            self._learn(xs)
            self._learn_evidence()
        i_top = 0
        for i in range(1, k):  # the first of the largest, as max(range(k), key=...) picks it
            if parts[i] > parts[i_top]:
                i_top = i
        share = parts[i_top] / t2 if t2 > 0 else 0.0
        ranked = tuple(st.names[i] for i in sorted(range(k), key=lambda i: -parts[i])) if events else ()
        return MultiResult(t_ms, t2, z, score, anomalous, "scored", tuple(events), st.names[i_top], share, ranked)

    def _process_two(self, t_ms: int, values: Mapping[str, float]) -> MultiResult | None:
        """:meth:`process` with two metrics, their state in fields (each step as in the general code)."""
        st, spec = self._st, self.k
        try:
            x0 = values[st.names[0]]
            x1 = values[st.names[1]]
        except KeyError:
            return None
        st.seen += 1
        if st.n < self.warmup():
            self._learn_two(x0, x1)
            return MultiResult(t_ms, 0.0, None, 0.0, False, "warmup")
        if st.active and self._trend:  # frozen: the mean goes on along its trend
            self._m0 += self._t0
            self._m1 += self._t1
        u0 = (x0 - self._m0) / self._sd(self._c00, self._m0)
        u1 = (x1 - self._m1) / self._sd(self._c11, self._m1)
        p0 = u0 * ((0.0 + self._i00 * u0) + self._i01 * u1)  # _terms: each row's products added from 0
        p1 = u1 * ((0.0 + self._i10 * u0) + self._i11 * u1)
        t2 = (0.0 + p0) + p1
        if not t2 > 0.0:  # _sum_at_least_0
            t2 = 0.0
        t2e, vmax = self._evidence_two(u0, u1)
        z = _reading_z(t2, t2e, vmax, 2, min(st.n, 2 * self.memory - 1))
        score = score_of(z, spec.threshold)
        events: list[Event] = []
        anomalous = st.active
        if st.active:
            if not self._closes(t_ms, z, events):
                st.held_n += 1
                self._h0 += (x0 - self._h0) / st.held_n
                self._h1 += (x1 - self._h1) / st.held_n
                if self._overdue(t_ms):
                    old = self._m0
                    self._m0, self._m1 = self._h0, self._h1
                    events.append(
                        Event("rebaselined", t_ms, st.since, z=z, old_mean=old, new_mean=self._m0,
                              after_ms=t_ms - st.since)
                    )  # fmt: skip
                    st.active = False
        elif z >= spec.threshold:
            self._open(t_ms, z, events)
            self._held, self._h0, self._h1 = True, x0, x1
            anomalous = True
        elif z < spec.clear_threshold:
            self._learn_two(x0, x1)
            self._learn_evidence_two()
        i_top = 1 if p1 > p0 else 0  # the first of the largest
        share = (p1 if i_top else p0) / t2 if t2 > 0 else 0.0
        names = st.names
        ranked: tuple[str, ...] = ()
        if events:  # sorted(range(2), key=lambda i: -parts[i]): swapped only if the second sorts first
            ranked = (names[1], names[0]) if -p1 < -p0 else (names[0], names[1])
        return MultiResult(t_ms, t2, z, score, anomalous, "scored", tuple(events), names[i_top], share, ranked)

    def _sd(self, c: float, mean: float) -> float:
        """One metric's deviation, from its variance ``c`` and its mean (see :meth:`_u`)."""
        spec = self.k
        if 0.0 > c:
            c = 0.0
        sd = math.sqrt(c)
        if spec.min_std > sd:
            sd = spec.min_std
        r = spec.rel_min_std * abs(mean)
        if r > sd:
            sd = r
        if FLOOR > sd:
            sd = FLOOR
        return sd

    def _learn_two(self, x0: float, x1: float) -> None:
        """:meth:`_learn` with two metrics."""
        st = self._st
        st.n += 1
        a = b = self._weight(st.n)
        d0 = x0 - self._m0
        d1 = x1 - self._m1
        if not self._trend:
            self._trend, self._t0, self._t1 = True, 0.0, 0.0
        c = 2.0 / self.memory
        warm = self.warmup()
        past = st.n > warm
        self._m0 = self._m0 + a * d0
        self._m1 = self._m1 + a * d1
        if past:
            self._t0 = self._t0 + c * (a * d0 - self._t0)
            self._t1 = self._t1 + c * (a * d1 - self._t1)
        v = (1.0 - b) * (self._c00 + b * d0 * d0)
        self._c00 = v
        v = (1.0 - b) * (self._c01 + b * d0 * d1)
        self._c01 = v
        self._c10 = v
        self._c11 = (1.0 - b) * (self._c11 + b * d1 * d1)
        st.stale += 1
        if st.n <= warm or st.stale >= _REFRESH:
            self._inv = True
            self._i00, self._i01, self._i10, self._i11 = _inverse2(self._c00, self._c01, self._c10, self._c11)
            st.stale = 0

    def _evidence_two(self, u0: float, u1: float) -> tuple[float, float]:
        """:meth:`_evidence` with two metrics."""
        if not self._ew:
            self._ew = True
            self._e0 = self._e1 = 0.0
            self._x00 = self._x01 = self._x10 = self._x11 = 0.0
            self._y00 = self._y01 = self._y10 = self._y11 = 0.0
        self._e0 += LAMBDA * (u0 - self._e0)
        self._e1 += LAMBDA * (u1 - self._e1)
        if self._st.n_e < self.memory:
            return 0.0, 0.0
        v0 = self._e0 / _root(self._x00)
        v1 = self._e1 / _root(self._x11)
        q0 = v0 * ((0.0 + self._y00 * v0) + self._y01 * v1)
        q1 = v1 * ((0.0 + self._y10 * v0) + self._y11 * v1)
        t2e = (0.0 + q0) + q1
        if not t2e > 0.0:
            t2e = 0.0
        vmax = abs(v0)
        if abs(v1) > vmax:
            vmax = abs(v1)
        return t2e, vmax

    def _learn_evidence_two(self) -> None:
        """:meth:`_learn_evidence` with two metrics."""
        st = self._st
        if not self._ew:
            return
        st.n_e += 1
        b = self._weight(st.n_e)
        e0, e1 = self._e0, self._e1
        self._x00 = (1.0 - b) * self._x00 + b * e0 * e0
        v = (1.0 - b) * self._x01 + b * e0 * e1
        self._x01 = v
        self._x10 = v
        self._x11 = (1.0 - b) * self._x11 + b * e1 * e1
        if st.n_e % _REFRESH == 0 or st.n_e == self.memory:
            self._y00, self._y01, self._y10, self._y11 = _inverse2(self._x00, self._x01, self._x10, self._x11)

    def snapshot(self) -> list[Any]:
        """All state as plain JSON-able values: a list, the version (:data:`STATE_VERSION`) then each field of
        :class:`MultiState` in its order (matrices as lists of rows). The first version was a dict of the same
        fields by name."""
        st = self.state
        return [
            STATE_VERSION,
            list(st.names), st.n, list(st.mean), [list(r) for r in st.cov], [list(r) for r in st.inv], st.stale,
            st.seen, st.active, st.calm, st.since, st.since_seen, st.held_n, list(st.held_mean),
            list(st.ew), [list(r) for r in st.ecov], [list(r) for r in st.einv], st.n_e, list(st.trend),
        ]  # fmt: skip

    def restore(self, snap: list[Any] | Mapping[str, Any]) -> None:
        """Take back a :meth:`snapshot`, or one of the first version (a dict by name; one from before the evidence
        term and the trend starts them afresh)."""
        if isinstance(snap, list):
            snap = fields_of(snap, MULTI_FIELDS, STATE_VERSION, "multivariate state")
        st = MultiState(
            names=[str(m) for m in snap["names"]], n=int(snap["n"]), mean=[float(v) for v in snap["mean"]],
            cov=[[float(v) for v in r] for r in snap["cov"]], inv=[[float(v) for v in r] for r in snap["inv"]],
            stale=int(snap["stale"]), seen=int(snap["seen"]), active=bool(snap["active"]),
            calm=int(snap["calm"]), since=int(snap["since"]), since_seen=int(snap["since_seen"]),
            held_n=int(snap["held_n"]), held_mean=[float(v) for v in snap["held_mean"]],
            ew=[float(v) for v in snap.get("ew", [])], ecov=[[float(v) for v in r] for r in snap.get("ecov", [])],
            einv=[[float(v) for v in r] for r in snap.get("einv", [])], n_e=int(snap.get("n_e", 0)),
            trend=[float(v) for v in snap.get("trend", [])],
        )  # fmt: skip
        self._st = st
        self._two_from_lists()
