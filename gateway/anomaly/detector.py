"""One series (a device's metric): an adaptive z-score with warm-up, hysteresis, protection and re-baselining.

The online-learning contract: :meth:`Detector.score_one` looks at a point against the baseline without
changing anything; :meth:`Detector.learn_one` then updates the state with that point and says what happened
(an anomaly opened or closed, the baseline was re-learned, a gap). :meth:`Detector.process` does both.
Points must come in event-time order; the caller (``AnomalyEngine``) refuses older ones.

The baseline is either

- ``ewma``: exponentially weighted mean and variance (West's incremental form), with the weight of the
  n-th point ``a = max(alpha, 1/n)``: the plain mean during the first ``1/alpha`` points, then an EWMA;
  exactly the weighted mean and (population) variance with weights ``a_i * prod_{j>i} (1 - a_j)``; or
- ``window``: the plain mean and (population) variance of the learned points of the last ``window_ms``
  of event time.

A point's z is ``(x - mean) / max(std, min_std, rel_min_std * |mean|, 1e-9)``; its score in [0, 1] is
``1 - 2 ** -((|z| / threshold) ** 2)``: 0 at the mean, 0.5 at the threshold, 0.94 at twice the threshold.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from .config import DetectorSpec

__all__ = ["FLOOR", "Detector", "Event", "EventKind", "Phase", "Result", "Scored", "score_of"]

FLOOR: Final = 1e-9
"""The deviation is never below this, whatever the configuration: a constant series cannot divide by 0."""

Phase = Literal["warmup", "gap", "scored"]
EventKind = Literal["opened", "closed", "rebaselined", "stuck", "unstuck", "gap"]
_DT_ALPHA: Final = 0.1


def score_of(z: float, threshold: float) -> float:
    """The anomaly score in [0, 1] of a z-score: 0.5 at the threshold, monotone in ``|z|``."""
    r = abs(z) / threshold
    if r > 8.0:
        return 1.0
    return 1.0 - math.pow(2.0, -(r * r))


@dataclass(frozen=True, slots=True)
class Scored:
    """What :meth:`Detector.score_one` says about a point; ``mean``/``std``/``z`` are ``None`` in warm-up."""

    t_ms: int
    value: float
    phase: Phase
    mean: float | None
    std: float | None
    z: float | None
    score: float
    over: bool
    """|z| at or above the threshold (never in warm-up, nor for the first point after a gap)."""


@dataclass(frozen=True, slots=True)
class Event:
    """Something worth saying: an anomaly ``opened`` (``z``), ``closed``, the baseline ``rebaselined``
    (``old_mean`` -> ``new_mean`` after ``after_ms`` of anomaly), a sensor ``stuck``/``unstuck`` at a value,
    or a ``gap`` of ``after_ms`` before this point."""

    kind: EventKind
    t_ms: int
    since_ms: int
    """When the anomaly (or the gap, or the run of identical values) began."""
    z: float | None = None
    old_mean: float | None = None
    new_mean: float | None = None
    after_ms: int = 0


@dataclass(frozen=True, slots=True)
class Result:
    """A point after both steps: its score, whether it is anomalous, and the events it caused."""

    scored: Scored
    anomalous: bool
    """Inside an open anomaly (z-score or stuck sensor), this point included."""
    events: tuple[Event, ...] = ()


@dataclass(slots=True)
class State:
    """All of a detector's mutable data (snapshot: :meth:`Detector.snapshot`)."""

    n: int = 0
    """Points learned into the baseline (ewma) or in the window (window)."""
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
    held_n: int = 0
    held_mean: float = 0.0
    held_m2: float = 0.0
    held: deque[tuple[int, float]] = field(default_factory=deque)
    # the stuck-sensor check
    last_value: float | None = None
    repeats: int = 0
    stuck: bool = False
    stuck_since: int = 0


class Detector:
    """A z-score detector for one series. ``Detector(spec)``; ``process(t_ms, x)`` per point, in order."""

    __slots__ = ("spec", "state")

    def __init__(self, spec: DetectorSpec) -> None:
        self.spec = spec
        self.state = State()

    # -- the baseline -------------------------------------------------------------------------------

    def _window_stats(self, t_ms: int) -> tuple[int, float, float]:
        """n, mean, variance of the window as it is at ``t_ms`` (older points left out, nothing changed)."""
        st = self.state
        n, s1, s2 = len(st.window), st.s1, st.s2
        horizon = t_ms - self.spec.window_ms
        for t, x in st.window:
            if t > horizon and n <= self.spec.window_max_points:
                break
            d = x - st.anchor
            n, s1, s2 = n - 1, s1 - d, s2 - d * d
        if n <= 0:
            return 0, 0.0, 0.0
        m = s1 / n
        return n, st.anchor + m, max(0.0, s2 / n - m * m)

    def baseline(self, t_ms: int) -> tuple[int, float, float]:
        """``(n, mean, variance)`` the point at ``t_ms`` is scored against."""
        st = self.state
        if self.spec.baseline == "window":
            return self._window_stats(t_ms)
        return st.n, st.mean, st.var

    def _learn(self, t_ms: int, x: float, weight: float) -> None:
        st = self.state
        if self.spec.baseline == "window":
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
        a = max(self.spec.alpha, 1.0 / (st.n + 1)) * weight
        diff = x - st.mean
        incr = a * diff
        st.mean += incr
        st.var = (1.0 - a) * (st.var + diff * incr)
        st.n += 1

    def _evict(self, t_ms: int) -> None:
        st = self.state
        horizon = t_ms - self.spec.window_ms
        w = st.window
        while w and (w[0][0] <= horizon or len(w) > self.spec.window_max_points):
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
        if self.spec.baseline == "window":
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
        if self.spec.gap_ms > 0:
            return dt > self.spec.gap_ms
        return st.log_dt is not None and dt > self.spec.gap_factor * math.exp(st.log_dt)

    def score_one(self, t_ms: int, x: float) -> Scored:
        """Score ``x`` at ``t_ms`` against the baseline. Changes nothing."""
        spec = self.spec
        n, mean, var = self.baseline(t_ms)
        if n < spec.warmup:
            return Scored(t_ms, x, "warmup", mean if n else None, math.sqrt(var) if n else None, None, 0.0, False)
        std = max(math.sqrt(var), spec.min_std, spec.rel_min_std * abs(mean), FLOOR)
        z = (x - mean) / std
        if not math.isfinite(z):
            z = math.copysign(1e12, z) if not math.isnan(z) else 0.0
        score = score_of(z, spec.threshold)
        if spec.after_gap == "reanchor" and self.is_gap(t_ms):
            return Scored(t_ms, x, "gap", mean, std, z, score, False)
        return Scored(t_ms, x, "scored", mean, std, z, score, abs(z) >= spec.threshold)

    def learn_one(self, s: Scored) -> Result:
        """Learn the point ``score_one`` gave (the same one, next in event time) and say what happened."""
        spec, st = self.spec, self.state
        t, x = s.t_ms, s.value
        events: list[Event] = []
        gap = st.last_t is not None and self.is_gap(t)
        if gap and st.last_t is not None:
            events.append(Event("gap", t, st.last_t, after_ms=t - st.last_t))
        if st.last_t is not None:
            dt = max(1, t - st.last_t)
            st.log_dt = math.log(dt) if st.log_dt is None else st.log_dt + _DT_ALPHA * (math.log(dt) - st.log_dt)
        st.last_t = t
        st.seen += 1

        # stuck sensor: the same value again and again
        stuck_event = self._stuck_step(t, x, gap, events)

        if s.phase == "gap":
            if st.active:
                events.append(Event("closed", t, st.since))
            self._close()
            if spec.baseline == "window":
                self._reset_baseline([(t, x)], x, 0.0)
            else:
                st.mean = x
                self._learn_count_only()
            return Result(s, st.stuck, tuple(events))
        if s.phase == "warmup":
            if not (spec.stuck_points and st.repeats >= 3):
                self._learn(t, x, 1.0)
            return Result(s, st.stuck, tuple(events))

        z = s.z if s.z is not None else 0.0
        anomalous = False
        if st.active:
            anomalous = True
            if abs(z) < spec.clear_threshold:
                st.calm += 1
                if st.calm >= spec.clear_points:
                    events.append(Event("closed", t, st.since))
                    self._close()
            else:
                st.calm = 0
        elif s.over:
            st.run += 1
            if st.run == 1:
                st.since = t
            if st.run >= spec.min_points:
                st.active, st.calm = True, 0
                anomalous = True
                events.append(Event("opened", t, st.since, z=z))
        else:
            st.run = 0
            self._clear_held()

        protected = abs(z) >= spec.clear_threshold and (st.active or st.run > 0)
        if protected and spec.protection != "off":
            self._hold(t, x)
            if spec.protection == "downweight" and spec.downweight > 0:
                self._learn(t, x, spec.downweight)
            if st.active and t - st.since >= spec.rebaseline_after_ms:
                old = st.mean if spec.baseline == "ewma" else self.baseline(t)[1]
                held_var = st.held_m2 / st.held_n if st.held_n else 0.0
                self._reset_baseline(list(st.held), st.held_mean, held_var)
                new = st.mean if spec.baseline == "ewma" else self.baseline(t)[1]
                events.append(Event("rebaselined", t, st.since, z=z, old_mean=old, new_mean=new, after_ms=t - st.since))
                self._close()
        elif not (spec.stuck_points and st.repeats >= 3):
            self._learn(t, x, 1.0)
        if stuck_event:
            anomalous = True
        return Result(s, anomalous or st.stuck, tuple(events))

    def process(self, t_ms: int, x: float) -> Result:
        """``learn_one(score_one(t_ms, x))``."""
        return self.learn_one(self.score_one(t_ms, x))

    # -- helpers ------------------------------------------------------------------------------------

    def _learn_count_only(self) -> None:
        self.state.n += 1

    def _stuck_step(self, t: int, x: float, gap: bool, events: list[Event]) -> bool:
        spec, st = self.spec, self.state
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
        if self.spec.baseline == "window":
            st.held.append((t, x))
            while len(st.held) > self.spec.window_max_points:
                st.held.popleft()

    def _clear_held(self) -> None:
        st = self.state
        st.held_n, st.held_mean, st.held_m2 = 0, 0.0, 0.0
        st.held.clear()

    def _close(self) -> None:
        st = self.state
        st.active, st.run, st.calm = False, 0, 0
        self._clear_held()

    # -- state --------------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """All state as plain JSON-able values."""
        st = self.state
        return {
            "n": st.n, "mean": st.mean, "var": st.var,
            "window": [list(p) for p in st.window], "anchor": st.anchor, "s1": st.s1, "s2": st.s2,
            "seen": st.seen, "last_t": st.last_t, "log_dt": st.log_dt,
            "run": st.run, "active": st.active, "calm": st.calm, "since": st.since,
            "held_n": st.held_n, "held_mean": st.held_mean, "held_m2": st.held_m2, "held": [list(p) for p in st.held],
            "last_value": st.last_value, "repeats": st.repeats, "stuck": st.stuck, "stuck_since": st.stuck_since,
        }  # fmt: skip

    def restore(self, snap: dict[str, Any]) -> None:
        """Take back a :meth:`snapshot`."""
        values = dict(snap)
        values["window"] = deque((int(t), float(x)) for t, x in snap["window"])
        values["held"] = deque((int(t), float(x)) for t, x in snap["held"])
        self.state = State(**values)
