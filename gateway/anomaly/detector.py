"""One series (a device's metric): an adaptive z-score with warm-up, hysteresis, change points, recurring
patterns, an optional seasonal baseline and re-baselining.

The online-learning contract: :meth:`Detector.score_one` looks at a point against the baseline without
changing anything; :meth:`Detector.learn_one` then updates the state with that point and says what happened
(an anomaly opened or closed, a new level was found, the baseline was re-learned, a gap).
:meth:`Detector.process` does both. Points must come in event-time order; the caller (``AnomalyEngine``)
refuses older ones.

The reference baseline (what is normal) is either

- ``ewma``: an exponentially weighted mean (weight ``max(alpha, 1/n)`` for the n-th point) and variance
  (weight ``max(var_alpha, 1/n)``, a longer memory: a level that moves is followed by the mean while the
  spread stays stable), West's incremental form; or
- ``window``: the plain mean and (population) variance of the learned points of the last ``window_ms`` of
  event time, or of the last ``window_max_points`` points when ``window_ms`` is 0;

and, with ``season = "day"`` or ``"week"``, an ewma mean and variance per time-of-day (and day-of-week)
bin, used once the bin has seen ``warmup`` points.

A point's distance is ``(x - mean) / max(std, min_std, rel_min_std * |mean|, 1e-9)``. Its z is that distance
read as Student's t (times a factor for the mean's own uncertainty and the population variance,
:func:`ewma_factor`) with the degrees of freedom the variance was learned with (``n - 1``, at most
``2 / var_alpha - 2`` for an ewma: its memory), turned into the standard normal deviate of the same tail
(:func:`t_z`): so a threshold means about the same chance of a false alarm whether the deviation has 30 points
behind it or thousands. A floor is set, not learned: z is never beyond the distance. Its score in [0, 1) is
``r^2 / (1 + r^2)`` with ``r = |z| / threshold``: 0.5 at the threshold, 0.8 at twice it, 0.94 at four times,
and strictly increasing in |z|. A recurring pattern (below) lowers the distance of excursions of its size only.

An anomaly opens when ``min_points`` points in a row reach the threshold; while it is open the reference
is frozen (``protection``). When ``shift_points`` points in a row lie beyond ``clear_threshold`` on one side,
the series has moved to a new level: points are then scored against that level (phase ``shifted``: a
lasting change scores high where it starts, not for its whole length), while the anomaly stays open until
the series comes back to its reference (``clear_points`` points below ``clear_threshold``) or has been away
for ``rebaseline_after`` (``rebaseline_points`` readings when 0): then the new level becomes the reference
and a ``rebaselined`` event says so. A fault never becomes the baseline silently. A run of points that steps
back towards the reference, past half-way between the new level and the reference, closes the anomaly (the
reference takes the level it came back to: a daily cycle may have moved it meanwhile). While shifted, a new
excursion from the new level that is also beyond the threshold from the reference opens a new anomaly.

Recurring patterns: an excursion (|z| at or above the threshold) whose size (its distance) is within a factor of 2 of
``recurring - 1`` earlier excursions in the last ``recur_points`` readings, evenly spaced (the spacings
within 10 % of each other), is a pattern (a spike every hour): for ``recur_points`` readings after it, an
excursion up to twice the pattern's size scores as ``clear_threshold`` (it opens nothing), and a larger one
by how far it goes beyond that. So the ``recurring + 1``-th spike of a regular series is not flagged.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from dataclasses import dataclass, field, fields
from typing import Any, Final, Literal

from .config import DetectorSpec

__all__ = ["FLOOR", "Detector", "Event", "EventKind", "Phase", "Result", "Scored", "score_of", "t_z"]

FLOOR: Final = 1e-9
"""The deviation is never below this, whatever the configuration: a constant series cannot divide by 0."""

Phase = Literal["warmup", "gap", "scored", "shifted"]
EventKind = Literal["opened", "closed", "shifted", "rebaselined", "stuck", "unstuck", "gap", "stalled"]
_DT_ALPHA: Final = 0.1
_LOG1P: Final = math.log1p
"""``math.log1p``, held by the module: compiled, ``math.log1p`` is a look-up on the module at each call (mypyc has
no native ``log1p``, as it has ``log``, ``sqrt`` and ``exp`` for floats)."""
_DAY_MS: Final = 86_400_000
_RECUR_KEEP: Final = 32
"""Excursions remembered for the recurring-pattern rule (the most recent ones)."""
_CALM_HI: Final = 0.1
"""Between the excursions of a pattern, at most this fraction of the points lie beyond ``clear_threshold``
(Gaussian noise: 1.2 % at 2.5; inside a noise burst of four times the noise, about half)."""
STATE_VERSION: Final = 3
"""A detector's snapshot: 3, a list of :class:`State`'s fields in order; 2, a dict of them by name; 1, before change
points and patterns. :meth:`Detector.restore` reads each."""
MIN_CAP_DOF: Final = 9.0
"""The least the memory of an exponentially weighted variance counts for, in degrees of freedom. Such a variance
is read as Student's t with ``2 / var_alpha - 2`` of them, which matches its tail up to ``var_alpha`` 0.1 (the
distance the threshold 4.5 then asks for is 4.58 against the 4.59 that gives its tail at the default 0.005, 6.60
against 6.06 at 0.1); a variance with a memory of a few points has a heavier tail than any t's, and below 9 the
reading asked for distances of hundreds (1,115 at 0.5) where 24 would do. With this bound: 10.5 against 8.2 at
0.2, 11.2 against 11.3 at 0.3, 13.3 against 23.6 at 0.5 (docs/anomaly.md)."""


def by_fields(obj: Any) -> tuple[type[Any], tuple[Any, ...]]:
    """``__reduce__`` of a frozen dataclass: its class and its fields, for copy and pickle. The dataclass's own
    way (``__setstate__`` through ``object.__setattr__``) fails once mypyc has compiled the class.

    The result classes made for every point (:class:`Scored`, :class:`Result`, :class:`Event`,
    ``multivariate.MultiResult``) write their own ``__init__`` (``init=False``), the same as the one
    ``dataclasses`` would write: mypyc compiles it into native stores (about 30 ns), while the generated one stays
    interpreted Python (about 600 ns; frozen, eq, hash and repr unchanged). ``tests/gateway/anomaly/
    test_result_init.py`` checks each against its fields."""
    return type(obj), tuple(getattr(obj, f.name) for f in fields(obj))


def fields_of(snap: list[Any], names: tuple[str, ...], version: int, what: str) -> dict[str, Any]:
    """The fields by name of a snapshot written as a list: ``version``, then the value of each of ``names`` in order.
    ``ValueError`` (naming ``what``) for a list of another version or length."""
    if not snap or snap[0] != version or len(snap) != len(names) + 1:
        raise ValueError(
            f"{what} of version {snap[0] if snap else None!r} with {len(snap)} values, "
            f"expected version {version} with {len(names) + 1}"
        )
    return dict(zip(names, snap[1:], strict=True))


def t_z(t: float, nu: float) -> float:
    """A Student's t of ``nu`` degrees of freedom as a standard normal deviate of the same two-sided tail, with
    ``t``'s sign: Wallace's approximation ``(8 nu + 1) / (8 nu + 3) sqrt(nu ln(1 + t^2 / nu))``. Against the exact
    z (tests/gateway/anomaly/test_anomaly_calibration.py, for tails down to 1e-13) it is within 0.15 % from
    ``nu`` 29 on (the default warm-up gives 29 or more), 0.5 % from 20, 1.2 % from 9 and 16 % from 1, and from
    a t of 2 on never above it: a false alarm is never likelier than the threshold says (at ``nu`` 1 and 2, far
    less likely). Increasing in ``|t|``, never above it, and ``t`` itself as ``nu`` grows without bound."""
    a = abs(t)
    f = (8.0 * nu + 1.0) / (8.0 * nu + 3.0)
    u = a / math.sqrt(nu)
    if u < 1e-100:  # ln(1 + u^2) is u^2 to the last bit, and u * u would lose bits below the normal range
        z = f * a
    else:
        lg = _LOG1P(u * u) if u < 1e150 else 2.0 * math.log(u)  # u * u would overflow
        z = f * math.sqrt(nu * lg)
    return z if t >= 0.0 else -z


def _distance(x: float, mean: float, std: float) -> float:
    """``(x - mean) / std``; beyond what a double holds, +-1e12 (as before z was read as a t: its score stays a
    number, where one of 1e300 squared would not); 0 for NaN. (Scored values are within +-1e15 and ``std`` is at
    least 1e-9, so a distance is at most about 2e24 and this is a guard.)"""
    d = (x - mean) / std
    if math.isfinite(d):
        return d
    return math.copysign(1e12, d) if not math.isnan(d) else 0.0


def _calibrate(dist: float, scale: float, k: float, nu: float) -> float:
    """The z of a distance ``dist`` >= 0 in deviations with their floors, ``scale`` the deviation with its floors
    over the learned one (1 when no floor binds; infinite when nothing was learned): Student's t of the distance
    in learned deviations times ``k`` (:func:`t_z`), never beyond ``dist`` (a floor is set, not learned)."""
    if math.isinf(scale):
        return dist  # no spread learned at all: t is infinite, and the floor's distance is the smaller
    z = t_z(dist * scale * k, nu)
    return z if z < dist else dist


_FACTORS: dict[tuple[float, float], list[float]] = {}


class Knobs:
    """A :class:`DetectorSpec`'s fields as the detectors read them: copied once into a class of this module. Compiled,
    a field of the frozen dataclass is a generic attribute look-up and a float boxed in an object (about 160
    instructions each, dozens a point); one of these is a load. :func:`knobs` keeps one per spec."""

    __slots__ = (
        "after_gap",
        "alpha",
        "baseline",
        "clear_points",
        "clear_threshold",
        "downweight",
        "gap_factor",
        "gap_ms",
        "min_points",
        "min_std",
        "protection",
        "rebaseline_after_ms",
        "rebaseline_points",
        "recur_points",
        "recurring",
        "rel_min_std",
        "season",
        "season_bins",
        "shift_points",
        "stuck_points",
        "threshold",
        "var_alpha",
        "warmup",
        "window_max_points",
        "window_ms",
    )

    def __init__(self, spec: DetectorSpec) -> None:
        self.baseline: str = spec.baseline
        self.alpha: float = spec.alpha
        self.var_alpha: float = spec.var_alpha
        self.window_ms: int = spec.window_ms
        self.window_max_points: int = spec.window_max_points
        self.warmup: int = spec.warmup
        self.threshold: float = spec.threshold
        self.clear_threshold: float = spec.clear_threshold
        self.min_points: int = spec.min_points
        self.clear_points: int = spec.clear_points
        self.min_std: float = spec.min_std
        self.rel_min_std: float = spec.rel_min_std
        self.protection: str = spec.protection
        self.downweight: float = spec.downweight
        self.shift_points: int = spec.shift_points
        self.rebaseline_after_ms: int = spec.rebaseline_after_ms
        self.rebaseline_points: int = spec.rebaseline_points
        self.recurring: int = spec.recurring
        self.recur_points: int = spec.recur_points
        self.season: str = spec.season
        self.season_bins: int = spec.season_bins
        self.gap_factor: float = spec.gap_factor
        self.gap_ms: int = spec.gap_ms
        self.after_gap: str = spec.after_gap
        self.stuck_points: int = spec.stuck_points


_KNOBS: dict[int, tuple[DetectorSpec, Knobs]] = {}
"""id(spec) -> (spec, its Knobs): the spec is kept, so its id is not another's while the entry lives."""
_KNOBS_MAX: Final = 1_000


def knobs(spec: DetectorSpec) -> Knobs:
    """The :class:`Knobs` of ``spec``: one for every detector made with the same spec object (the engine gives
    every detector of a metric the same one), kept for up to ``_KNOBS_MAX`` spec objects."""
    kept = _KNOBS.get(id(spec))
    if kept is not None and kept[0] is spec:
        return kept[1]
    k = Knobs(spec)
    if len(_KNOBS) < _KNOBS_MAX:
        _KNOBS[id(spec)] = (spec, k)
    return k


def ewma_factor(alpha: float, var_alpha: float, n: int) -> float:
    """``k_n`` for a mean of weights ``max(alpha, 1/i)`` and a variance of weights ``max(var_alpha, 1/i)`` after
    ``n`` points (:func:`factor_table`)."""
    return _factor_at(factor_table(alpha, var_alpha), n)


def _factor_at(table: list[float], n: int) -> float:
    """``k_n`` from :func:`factor_table`'s table: its last value past its end."""
    return table[n] if n < len(table) else table[-1]


def factor_table(alpha: float, var_alpha: float) -> list[float]:
    """``k_0 .. k_N`` for a mean of weights ``max(alpha, 1/i)`` and a variance of weights ``max(var_alpha, 1/i)``,
    ``k_n`` after ``n`` points: ``sqrt(e_n / (1 + c_n))``, where ``c_n`` is the variance of the mean over the noise's
    (``c <- (1 - a)^2 c + a^2``) and ``e_n`` the variance's expected value over the noise's
    (``e <- (1 - b) (e + b (1 + c_prev))``, West's recursion on its expectation): a distance times ``k_n`` is
    Student's t. Equal weights give ``sqrt((n - 1) / (n + 1))``. Made once per pair of weights, up to the ``n``
    from which it no longer changes (``(1 - var_alpha)^n`` below 1e-12; at most 20,000 points, after which it
    is within 1 % of its limit whatever the weights); one list for every caller of those weights."""
    table = _FACTORS.get((alpha, var_alpha))
    if table is None:
        table = [0.0]
        c, e = 0.0, 0.0
        i = 0
        limit = 2 + int(27.7 / max(-math.log1p(-min(var_alpha, 0.5)), 1e-9))  # (1 - var_alpha)^limit < 1e-12
        while i < min(limit, 20_000):
            i += 1
            a = max(alpha, 1.0 / i)
            b = max(var_alpha, 1.0 / i)
            e = (1.0 - b) * (e + b * (1.0 + c))
            c = (1.0 - a) * (1.0 - a) * c + a * a
            table.append(math.sqrt(e / (1.0 + c)))
        _FACTORS[(alpha, var_alpha)] = table
    return table


def score_of(z: float, threshold: float) -> float:
    """The anomaly score in [0, 1) of a z-score: 0.5 at the threshold, strictly increasing in ``|z|``.

    ``r² / (1 + r²)``, computed as ``1 / (1 + 1 / r²)``: every step a correctly rounded operation that is
    monotone in r², so a larger ``|z|`` never scores lower, to the last bit (the quotient as it reads rounds
    numerator and denominator separately and fell by an ulp where z rose by one, z = 0.41164991215427255
    against 4.5).
    """
    r = z / threshold
    r2 = r * r
    return 1.0 / (1.0 + 1.0 / r2) if r2 != 0.0 else 0.0


@dataclass(frozen=True, slots=True, init=False)  # its own __init__: see by_fields
class Scored:
    """What :meth:`Detector.score_one` says about a point; ``mean``/``std``/``z`` are ``None`` in warm-up.

    ``mean``/``std``/``z`` are against the level the point is scored against (the new level in phase
    ``shifted``); ``ref_z`` against the reference (what is normal), the same outside ``shifted``. ``dist`` is
    the distance ``(value - mean) / std`` that ``z`` reads as a standard normal deviate (:meth:`Detector.score_one`).
    """

    t_ms: int
    value: float
    phase: Phase
    mean: float | None
    std: float | None
    z: float | None
    score: float
    over: bool
    """The score reached 0.5 (|z| at or above the threshold, not a recurring pattern); never in warm-up, nor
    for the first point after a gap."""
    ref_z: float | None = None
    dist: float | None = None

    def __init__(
        self,
        t_ms: int,
        value: float,
        phase: Phase,
        mean: float | None,
        std: float | None,
        z: float | None,
        score: float,
        over: bool,
        ref_z: float | None = None,
        dist: float | None = None,
    ) -> None:
        object.__setattr__(self, "t_ms", t_ms)
        object.__setattr__(self, "value", value)
        object.__setattr__(self, "phase", phase)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        object.__setattr__(self, "z", z)
        object.__setattr__(self, "score", score)
        object.__setattr__(self, "over", over)
        object.__setattr__(self, "ref_z", ref_z)
        object.__setattr__(self, "dist", dist)

    def __reduce__(self) -> tuple[type[Any], tuple[Any, ...]]:
        return by_fields(self)


@dataclass(frozen=True, slots=True, init=False)  # its own __init__: see by_fields
class Event:
    """Something worth saying: an anomaly ``opened`` (``z``), ``closed``, the series ``shifted`` to a new level
    (``new_mean``), the baseline ``rebaselined`` (``old_mean`` -> ``new_mean`` after ``after_ms`` of anomaly),
    a sensor ``stuck``/``unstuck`` at a value, a ``gap`` of ``after_ms`` before this point, or ``stalled``:
    the window holds fewer than ``warmup`` points however many come (the series can never be scored)."""

    kind: EventKind
    t_ms: int
    since_ms: int
    """When the anomaly (or the gap, or the run of identical values) began."""
    z: float | None = None
    old_mean: float | None = None
    new_mean: float | None = None
    after_ms: int = 0

    def __init__(
        self,
        kind: EventKind,
        t_ms: int,
        since_ms: int,
        z: float | None = None,
        old_mean: float | None = None,
        new_mean: float | None = None,
        after_ms: int = 0,
    ) -> None:
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "t_ms", t_ms)
        object.__setattr__(self, "since_ms", since_ms)
        object.__setattr__(self, "z", z)
        object.__setattr__(self, "old_mean", old_mean)
        object.__setattr__(self, "new_mean", new_mean)
        object.__setattr__(self, "after_ms", after_ms)

    def __reduce__(self) -> tuple[type[Any], tuple[Any, ...]]:
        return by_fields(self)


@dataclass(frozen=True, slots=True, init=False)  # its own __init__: see by_fields
class Result:
    """A point after both steps: its score, whether it is anomalous, and the events it caused."""

    scored: Scored
    anomalous: bool
    """Inside an open anomaly (z-score or stuck sensor), this point included."""
    events: tuple[Event, ...] = ()
    stuck: bool = False
    """Inside a stuck-sensor anomaly (the value has not changed for ``stuck_points`` readings)."""

    def __init__(self, scored: Scored, anomalous: bool, events: tuple[Event, ...] = (), stuck: bool = False) -> None:
        object.__setattr__(self, "scored", scored)
        object.__setattr__(self, "anomalous", anomalous)
        object.__setattr__(self, "events", events)
        object.__setattr__(self, "stuck", stuck)

    def __reduce__(self) -> tuple[type[Any], tuple[Any, ...]]:
        return by_fields(self)


@dataclass(slots=True)
class State:
    """All of a detector's mutable data (snapshot: :meth:`Detector.snapshot`)."""

    n: int = 0
    """Points learned into the reference (ewma) or in the window (window)."""
    mean: float = 0.0
    var: float = 0.0
    window: deque[tuple[int, float]] = field(default_factory=deque)
    anchor: float = 0.0
    s1: float = 0.0
    s2: float = 0.0
    seen: int = 0
    last_t: int | None = None
    log_dt: float | None = None
    # the open z-score anomaly
    run: int = 0
    active: bool = False
    calm: int = 0
    since: int = 0
    since_seen: int = 0
    held_n: int = 0
    held_mean: float = 0.0
    held_m2: float = 0.0
    held: deque[tuple[int, float]] = field(default_factory=deque)
    # a run of points on one side, and the new level it found
    side: int = 0
    side_n: int = 0
    side_mean: float = 0.0
    side_m2: float = 0.0
    shifted: bool = False
    shift_n: int = 0
    shift_mean: float = 0.0
    shift_var: float = 0.0
    # recurring excursions: (seen, |z|, calm before it) of recent ones; a learned pattern's size and when it lapses
    excursions: deque[tuple[int, float, bool]] = field(default_factory=deque)
    pattern: float = 0.0
    pattern_until: int = 0
    exc_prev: bool = False
    # points scored since the last excursion remembered, and how many of them beyond clear_threshold
    gap_n: int = 0
    gap_hi: int = 0
    # the seasonal baseline: n, mean, variance per bin
    bins: list[list[float]] = field(default_factory=list)
    # the stuck-sensor check
    last_value: float | None = None
    repeats: int = 0
    stuck: bool = False
    stuck_since: int = 0
    stalled: bool = False


STATE_FIELDS: Final = (
    "n", "mean", "var", "window", "anchor", "s1", "s2", "seen", "last_t", "log_dt",
    "run", "active", "calm", "since", "since_seen", "held_n", "held_mean", "held_m2", "held",
    "side", "side_n", "side_mean", "side_m2", "shifted", "shift_n", "shift_mean", "shift_var",
    "excursions", "pattern", "pattern_until", "exc_prev", "gap_n", "gap_hi", "bins",
    "last_value", "repeats", "stuck", "stuck_since", "stalled",
)  # fmt: skip
"""The fields a snapshot of version 3 holds after its version, in this order, written out: a snapshot stored must
restore whatever the class's own order becomes (a test holds :class:`State`'s fields to these: a field added or
removed is a new version)."""


class Detector:
    """A z-score detector for one series. ``Detector(spec)``; ``process(t_ms, x)`` per point, in order."""

    __slots__ = ("_factors", "_nbins", "k", "spec", "state")

    def __init__(self, spec: DetectorSpec) -> None:
        self.spec = spec
        self.k = knobs(spec)  # its fields, read at every point
        self.state = State()
        self._nbins = 0 if spec.season == "none" else spec.season_bins * (7 if spec.season == "week" else 1)
        self._factors = factor_table(spec.alpha, spec.var_alpha)  # shared by every detector of these weights

    def __reduce__(self) -> tuple[type[Detector], tuple[DetectorSpec], dict[str, State]]:
        """For copy and pickle, compiled or not (a compiled class is not made without its arguments)."""
        return Detector, (self.spec,), {"state": self.state}

    def __setstate__(self, state: dict[str, State]) -> None:
        self.state = state["state"]

    # -- the baseline -------------------------------------------------------------------------------

    def _window_stats(self, t_ms: int) -> tuple[int, float, float]:
        """n, mean, variance of the window as it is at ``t_ms`` (older points left out, nothing changed)."""
        st = self.state
        n, s1, s2 = len(st.window), st.s1, st.s2
        horizon = t_ms - self.k.window_ms if self.k.window_ms else None
        for t, x in st.window:
            if (horizon is None or t > horizon) and n <= self.k.window_max_points:
                break
            d = x - st.anchor
            n, s1, s2 = n - 1, s1 - d, s2 - d * d
        if n <= 0:
            return 0, 0.0, 0.0
        m = s1 / n
        return n, st.anchor + m, max(0.0, s2 / n - m * m)

    def _bin(self, t_ms: int) -> int:
        per_day = self.k.season_bins
        day, ms = divmod(t_ms, _DAY_MS)
        b = ms * per_day // _DAY_MS
        return b + per_day * ((day + 3) % 7) if self.k.season == "week" else b  # day 0 (1970-01-01) is a Thursday

    def reference(self, t_ms: int) -> tuple[int, float, float]:
        """``(n, mean, variance)`` of what is normal at ``t_ms`` (the seasonal bin's, once it has warmed up), ``n``
        the points they were learned from."""
        n, mean, var, _ = self._reference(t_ms)
        return n, mean, var

    def _reference(self, t_ms: int) -> tuple[int, float, float, bool]:
        """:meth:`reference`, and whether its mean and variance are a ``window``'s plain ones (else exponentially
        weighted: the ``ewma``'s or a seasonal bin's)."""
        st = self.state
        plain = self.k.baseline == "window"
        if plain:
            n, mean, var = self._window_stats(t_ms)
        else:
            n, mean, var = st.n, st.mean, st.var
        if self._nbins and st.bins and n >= self.k.warmup:
            bn, bmean, bvar = st.bins[self._bin(t_ms)]
            if bn >= self.k.warmup:
                return int(bn), bmean, bvar, False
        return n, mean, var, plain

    def baseline(self, t_ms: int) -> tuple[int, float, float]:
        """``(n, mean, variance)`` the point at ``t_ms`` is scored against (the new level when shifted)."""
        st = self.state
        n, mean, var = self.reference(t_ms)
        if st.shifted:
            return n, st.shift_mean, st.shift_var
        return n, mean, var

    def _learn(self, t_ms: int, x: float, weight: float) -> None:
        st, spec = self.state, self.k
        if self._nbins:
            if not st.bins:
                st.bins = [[0.0, 0.0, 0.0] for _ in range(self._nbins)]
            b = st.bins[self._bin(t_ms)]
            b[0] += 1
            a = max(spec.alpha, 1.0 / b[0]) * weight
            av = max(spec.var_alpha, 1.0 / b[0]) * weight
            d = x - b[1]
            b[1] += a * d
            b[2] = (1.0 - av) * (b[2] + av * d * d)
        if spec.baseline == "window":
            self._evict(t_ms)
            if not st.window:
                st.anchor, st.s1, st.s2 = x, 0.0, 0.0
            st.window.append((t_ms, x))
            d = x - st.anchor
            st.s1 += d
            st.s2 += d * d
            self._evict(t_ms)
            st.n = len(st.window)
            return
        n1 = st.n + 1
        a = max(spec.alpha, 1.0 / n1) * weight
        av = max(spec.var_alpha, 1.0 / n1) * weight
        diff = x - st.mean
        st.mean += a * diff
        st.var = (1.0 - av) * (st.var + av * diff * diff)
        st.n = n1

    def _evict(self, t_ms: int) -> None:
        st = self.state
        cap = self.k.window_max_points
        w = st.window
        if self.k.window_ms:
            horizon = t_ms - self.k.window_ms
            while w and (w[0][0] <= horizon or len(w) > cap):
                _, x = w.popleft()
                d = x - st.anchor
                st.s1 -= d
                st.s2 -= d * d
        else:
            while len(w) > cap:
                _, x = w.popleft()
                d = x - st.anchor
                st.s1 -= d
                st.s2 -= d * d
        if not w:
            st.s1 = st.s2 = 0.0
        elif st.seen % 512 == 0:  # keep the shifted sums exact
            st.anchor = w[0][1]
            st.s1 = sum(v - st.anchor for _, v in w)
            st.s2 = sum((v - st.anchor) ** 2 for _, v in w)
        st.n = len(w)

    def _reset_baseline(self, points: list[tuple[int, float]], mean: float, var: float) -> None:
        st = self.state
        if self.k.baseline == "window":
            st.window.clear()
            st.s1 = st.s2 = 0.0
            st.n = 0
            for t, x in points:
                self._learn(t, x, 1.0)
        else:
            st.mean, st.var = mean, var

    # -- the contract -------------------------------------------------------------------------------

    def is_gap(self, t_ms: int) -> bool:
        st = self.state
        if st.last_t is None:
            return False
        dt = t_ms - st.last_t
        if self.k.gap_ms > 0:
            return dt > self.k.gap_ms
        return st.log_dt is not None and dt > self.k.gap_factor * math.exp(st.log_dt)

    def _effective(self, az: float) -> float:
        """A distance ``|x - mean| / std`` after the recurring pattern (whose sizes are distances too): excursions
        up to twice its size count as ``clear_threshold``, larger ones by how far they go beyond that (monotone
        in the distance). :meth:`score_one` reads the result as a z like any distance."""
        st, spec = self.state, self.k
        p = st.pattern
        if p <= 0.0 or st.seen >= st.pattern_until or az <= spec.clear_threshold:
            return az
        top = 2.0 * p
        if az <= top:
            return spec.clear_threshold
        return az - top + spec.clear_threshold

    def _reading(self, n: int, plain: bool) -> tuple[float, float]:
        """How a distance from a mean and variance learned from ``n`` points is read: ``(nu, k)``, Student's t with
        ``nu`` degrees of freedom of the distance times ``k``.

        ``nu`` is ``n - 1``, and for exponential weights at most ``2 / var_alpha - 2`` (the variance's memory: a
        weight ``a`` counts as ``(2 - a) / a`` points, the multivariate score's ``2 memory - 1``), but that bound
        is never below 9 (:data:`MIN_CAP_DOF`); at least 1.
        ``k`` makes the distance a t: the new point's distance from the mean also carries the mean's own
        uncertainty, and the variance is the population one. For a ``window``'s plain mean and variance
        ``sqrt((n - 1) / (n + 1))``; for weights it is :func:`ewma_factor`. A shifted level's points are read with
        the reference's ``n`` (its variance starts from the reference's at least), and so are the points after a
        gap, whose mean the gap's first point set alone (their z comes out too large at first, as it did before z
        was read as a t: docs/anomaly.md)."""
        if plain:
            return max(1.0, float(n) - 1.0), math.sqrt(max(0.0, float(n) - 1.0) / (float(n) + 1.0))
        cap = max(2.0 / self.k.var_alpha - 1.0, MIN_CAP_DOF + 1.0)
        return max(1.0, min(float(n), cap) - 1.0), _factor_at(self._factors, n)

    def _against(self, x: float, mean: float, var: float, k: float, nu: float) -> tuple[float, float, float, float]:
        """``x`` against ``mean`` and ``var``: the deviation with its floors, the distance in it, that deviation over
        the learned one (:func:`_calibrate`'s ``scale``) and the z the distance reads as."""
        spec = self.k
        sd = math.sqrt(var)
        std = max(max(max(sd, spec.min_std), spec.rel_min_std * abs(mean)), FLOOR)  # two at a time: compiled, inline
        dist = _distance(x, mean, std)
        scale = std / sd if sd > 0.0 else math.inf
        return std, dist, scale, math.copysign(_calibrate(abs(dist), scale, k, nu), dist)

    def score_one(self, t_ms: int, x: float) -> Scored:
        """Score ``x`` at ``t_ms`` against the baseline. Changes nothing."""
        spec, st = self.k, self.state
        n, mean, var, plain = self._reference(t_ms)
        if n < spec.warmup:
            return Scored(t_ms, x, "warmup", mean if n else None, math.sqrt(var) if n else None, None, 0.0, False)
        nu, k = self._reading(n, plain)
        std, dist, scale, ref_z = self._against(x, mean, var, k, nu)
        phase: Phase = "scored"
        z = ref_z
        if st.shifted:
            phase = "shifted"
            mean = st.shift_mean
            std, dist, scale, z = self._against(x, mean, st.shift_var, k, nu)
        ad = abs(dist)
        eff_d = self._effective(ad)
        eff = abs(z) if eff_d == ad else _calibrate(eff_d, scale, k, nu)
        score = score_of(eff, spec.threshold)
        if spec.after_gap == "reanchor" and self.is_gap(t_ms):
            return Scored(t_ms, x, "gap", mean, std, z, score, False, ref_z, dist)
        return Scored(t_ms, x, phase, mean, std, z, score, eff >= spec.threshold, ref_z, dist)

    def learn_one(self, s: Scored) -> Result:
        """Learn the point ``score_one`` gave (the same one, next in event time) and say what happened."""
        spec, st = self.k, self.state
        t, x = s.t_ms, s.value
        events: list[Event] = []
        if spec.after_gap == "reanchor" and s.phase != "warmup":
            gap = s.phase == "gap"  # score_one has looked already
        else:
            gap = st.last_t is not None and self.is_gap(t)
        if gap and st.last_t is not None:
            events.append(Event("gap", t, st.last_t, after_ms=t - st.last_t))
        if st.last_t is not None:
            dt = max(1, t - st.last_t)
            # float(dt): compiled, math.log of a float is the C function, of an int a call through the module (the
            # same value: an int below 2**53 is exact as a float, and math.log converts a larger one as float does)
            ln = math.log(float(dt))
            st.log_dt = ln if st.log_dt is None else st.log_dt + _DT_ALPHA * (ln - st.log_dt)
        st.last_t = t
        st.seen += 1

        # stuck sensor: the same value again and again
        stuck_event = self._stuck_step(t, x, gap, events)
        repeated = spec.stuck_points and st.repeats >= 3

        if s.phase == "gap":
            if st.active:
                events.append(Event("closed", t, st.since))
            self._close()
            if spec.baseline == "window":
                self._reset_baseline([(t, x)], x, 0.0)
            else:
                st.mean = x
                st.n += 1
            return Result(s, st.stuck, tuple(events), st.stuck)
        if s.phase == "warmup":
            if not repeated:
                self._learn(t, x, 1.0)
            if (
                not st.stalled
                and spec.baseline == "window"
                and st.seen >= 2 * spec.warmup
                and len(st.window) < spec.warmup
            ):
                st.stalled = True
                events.append(Event("stalled", t, st.window[0][0] if st.window else t))
            return Result(s, st.stuck, tuple(events), st.stuck)

        z = s.z if s.z is not None else 0.0
        ref_z = s.ref_z if s.ref_z is not None else z
        az = abs(z)
        excursion = az >= spec.threshold
        fresh = excursion and not st.exc_prev
        if fresh and not st.active and spec.recurring:
            self._excursion(abs(s.dist) if s.dist is not None else az)  # a pattern's sizes are distances
        st.exc_prev = excursion
        st.gap_n += 1
        if az >= spec.clear_threshold:
            st.gap_hi += 1
        anomalous = False
        if st.active:
            anomalous = True
            if st.shifted and fresh and s.over and abs(ref_z) >= spec.threshold:
                # a new excursion from the new level, and away from the reference: a new anomaly in the open one
                events.append(Event("opened", t, t, z=z))
            back = abs(ref_z) < spec.clear_threshold
            if back:
                st.calm += 1
            else:
                st.calm = 0
            if back and st.calm >= spec.clear_points:
                events.append(Event("closed", t, st.since))
                self._close()
            else:
                self._side_step(t, x, z, events)
        elif s.over:
            st.run += 1
            if st.run == 1:
                st.since, st.since_seen = t, st.seen
            if st.run >= spec.min_points:
                st.active, st.calm = True, 0
                anomalous = True
                events.append(Event("opened", t, st.since, z=z))
            self._side_step(t, x, z, events)
        else:
            st.run = 0
            self._clear_held()
            self._clear_side()

        if st.shifted:
            if st.active and not excursion:  # the new level is followed; a spike on it is not learned
                self._learn_shift(x)
                if spec.baseline == "window":
                    self._hold(t, x)
        elif st.active or st.run > 0 or excursion:
            if spec.protection != "off" and (abs(ref_z) >= spec.clear_threshold or excursion):
                self._hold(t, x)
                if spec.protection == "downweight" and spec.downweight > 0:
                    self._learn(t, x, spec.downweight)
            elif not repeated:
                self._learn(t, x, 1.0)
        elif not repeated:
            self._learn(t, x, 1.0)
        if st.active and self._overdue(t):
            old = self.reference(t)[1]
            new = old  # nothing held back (protection "off"): the baseline has learned the anomaly and is kept
            if st.shifted or st.held_n:
                if st.shifted:
                    held_mean, held_var = st.shift_mean, st.shift_var
                else:
                    held_mean, held_var = st.held_mean, st.held_m2 / st.held_n
                self._reset_baseline(list(st.held), held_mean, held_var)
                self._rebin(held_mean, held_var)
                new = self.reference(t)[1] if spec.baseline == "window" else held_mean
            events.append(Event("rebaselined", t, st.since, z=z, old_mean=old, new_mean=new, after_ms=t - st.since))
            self._close()
        if stuck_event:
            anomalous = True
        return Result(s, anomalous or st.stuck, tuple(events), st.stuck)

    def process(self, t_ms: int, x: float) -> Result:
        """``learn_one(score_one(t_ms, x))``."""
        return self.learn_one(self.score_one(t_ms, x))

    # -- helpers ------------------------------------------------------------------------------------

    def _overdue(self, t: int) -> bool:
        st, spec = self.state, self.k
        if spec.rebaseline_after_ms:
            return t - st.since >= spec.rebaseline_after_ms
        return st.seen - st.since_seen >= spec.rebaseline_points

    def _side_step(self, t: int, x: float, z: float, events: list[Event]) -> None:
        """Count a run of points beyond ``clear_threshold`` on one side; ``shift_points`` of them are a new level."""
        st, spec = self.state, self.k
        side = 1 if z >= spec.clear_threshold else -1 if z <= -spec.clear_threshold else 0
        if side == 0 or side != st.side:
            self._clear_side()
            if side == 0:
                return
            st.side = side
        st.side_n += 1
        d = x - st.side_mean
        st.side_mean += d / st.side_n
        st.side_m2 += d * (x - st.side_mean)
        if st.side_n >= spec.shift_points:
            _, ref_mean, ref_var = self.reference(t)
            if st.shifted and (
                (st.side_mean - ref_mean) * (st.shift_mean - ref_mean) < 0.0
                or abs(st.side_mean - ref_mean) < 0.5 * abs(st.shift_mean - ref_mean)
            ):
                # a step back towards the reference, past half-way: the anomaly is over. The reference,
                # frozen since it opened, takes the level it came back to (a cycle may have moved it).
                events.append(Event("closed", t, st.since, z=z, new_mean=st.side_mean))
                if spec.baseline == "ewma" and not self._nbins:
                    st.mean = st.side_mean
                self._close()
                return
            st.shifted = True
            st.shift_n = st.side_n
            st.shift_mean = st.side_mean
            st.shift_var = max(st.side_m2 / st.side_n, ref_var)
            events.append(Event("shifted", t, st.since, z=z, new_mean=st.shift_mean))
            self._clear_side()
            self._clear_held()

    def _clear_side(self) -> None:
        st = self.state
        st.side, st.side_n, st.side_mean, st.side_m2 = 0, 0, 0.0, 0.0

    def _learn_shift(self, x: float) -> None:
        st, spec = self.state, self.k
        st.shift_n += 1
        a = max(spec.alpha, 1.0 / st.shift_n)
        av = max(spec.var_alpha, 1.0 / st.shift_n)
        d = x - st.shift_mean
        st.shift_mean += a * d
        st.shift_var = (1.0 - av) * (st.shift_var + av * d * d)

    def _excursion(self, az: float) -> None:
        """Remember an excursion; ``recurring`` of one size (within a factor of 2), evenly spaced (within 10 %),
        within ``recur_points`` readings, with the series calm between them (at most ``_CALM_HI`` of the points
        since the previous one beyond ``clear_threshold``: a noise burst's openings are not a pattern), make a
        pattern."""
        st, spec = self.state, self.k
        calm = st.gap_hi <= _CALM_HI * st.gap_n
        st.gap_n = st.gap_hi = 0
        ex = st.excursions
        horizon = st.seen - spec.recur_points
        while ex and ex[0][0] <= horizon:
            ex.popleft()
        similar = [e for e in ex if az / 2.0 <= e[1] <= az * 2.0][-(spec.recurring - 1) :]
        ex.append((st.seen, az, calm))
        while len(ex) > _RECUR_KEEP:
            ex.popleft()
        if len(similar) + 1 < spec.recurring or not calm or not all(c for _, _, c in similar[1:]):
            return
        times = [n for n, _, _ in similar] + [st.seen]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        if max(gaps) - min(gaps) > max(2.0, 0.1 * max(gaps)):
            return
        if st.seen >= st.pattern_until:
            st.pattern = 0.0
        st.pattern = max(st.pattern, az, *(z for _, z, _ in similar))
        st.pattern_until = st.seen + spec.recur_points

    def _rebin(self, mean: float, var: float) -> None:
        """After a re-baseline, the seasonal bins start again from the new level."""
        if self._nbins:
            self.state.bins = [[0.0, 0.0, 0.0] for _ in range(self._nbins)]

    def _stuck_step(self, t: int, x: float, gap: bool, events: list[Event]) -> bool:
        spec, st = self.k, self.state
        if not spec.stuck_points:
            return False
        if st.last_value is not None and x == st.last_value and not gap:
            st.repeats += 1
        else:
            if st.stuck:
                events.append(Event("unstuck", t, st.stuck_since))
                st.stuck = False
            st.repeats = 1
            st.stuck_since = t
        st.last_value = x
        if not st.stuck and st.repeats >= spec.stuck_points:
            st.stuck = True
            events.append(Event("stuck", t, st.stuck_since))
            return True
        return st.stuck

    def _hold(self, t: int, x: float) -> None:
        st = self.state
        st.held_n += 1
        d = x - st.held_mean
        st.held_mean += d / st.held_n
        st.held_m2 += d * (x - st.held_mean)
        if self.k.baseline == "window":
            st.held.append((t, x))
            while len(st.held) > self.k.window_max_points:
                st.held.popleft()

    def _clear_held(self) -> None:
        st = self.state
        st.held_n, st.held_mean, st.held_m2 = 0, 0.0, 0.0
        st.held.clear()

    def _close(self) -> None:
        st = self.state
        st.active, st.run, st.calm = False, 0, 0
        st.shifted, st.shift_n, st.shift_mean, st.shift_var = False, 0, 0.0, 0.0
        self._clear_held()
        self._clear_side()

    # -- state --------------------------------------------------------------------------------------

    def snapshot(self) -> list[Any]:
        """All state as plain JSON-able values: a list, the version (:data:`STATE_VERSION`) then each field of
        :class:`State` in its order (deques as lists of lists). Version 2 was a dict of the same fields by name
        (and ``"v": 2``), about three times as long as JSON: the names were most of a checkpoint's bytes."""
        st = self.state
        return [
            STATE_VERSION,
            st.n, st.mean, st.var, [[t, x] for t, x in st.window], st.anchor, st.s1, st.s2,
            st.seen, st.last_t, st.log_dt,
            st.run, st.active, st.calm, st.since, st.since_seen,
            st.held_n, st.held_mean, st.held_m2, [[t, x] for t, x in st.held],
            st.side, st.side_n, st.side_mean, st.side_m2,
            st.shifted, st.shift_n, st.shift_mean, st.shift_var,
            [[s, z, c] for s, z, c in st.excursions], st.pattern, st.pattern_until, st.exc_prev,
            st.gap_n, st.gap_hi,
            [list(b) for b in st.bins],
            st.last_value, st.repeats, st.stuck, st.stuck_since, st.stalled,
        ]  # fmt: skip

    def restore(self, snap: list[Any] | dict[str, Any]) -> None:
        """Take back a :meth:`snapshot`, or one of an earlier version: a dict of the fields by name (version 2),
        or of the first version (before change points and patterns), which keeps its baseline, window, timing and
        stuck-sensor state (an anomaly it had open is closed)."""
        if isinstance(snap, list):
            values = fields_of(snap, STATE_FIELDS, STATE_VERSION, "anomaly detector state")
        else:
            values = dict(snap)
            version = values.pop("v", 1)
            if version == 1:
                for key in ("run", "active", "calm", "since", "held_n", "held_mean", "held_m2", "held"):
                    values.pop(key, None)
                values["held"] = []
            elif version != 2:
                raise ValueError(
                    f"anomaly detector state version {version!r} as a dict, expected 1 or 2 (version "
                    f"{STATE_VERSION} is a list)"
                )
        values["window"] = deque((int(t), float(x)) for t, x in values["window"])
        values["held"] = deque((int(t), float(x)) for t, x in values["held"])
        values["excursions"] = deque(
            (int(e[0]), float(e[1]), bool(e[2]) if len(e) > 2 else True) for e in values.get("excursions", [])
        )
        values["bins"] = [[float(v) for v in b] for b in values.get("bins", [])]
        self.state = State(**values)
