"""Labelled series for anomaly detection: a plausible sensor signal with injected anomalies and their spans.

Everything here is pure and seeded: the same arguments give the same series. Three layers, each usable
on its own (the fleet simulator can call the injectors on its own signals):

1. **Signals** - :func:`baseline_series` makes ``n`` readings of a metric every ``interval_ms``: a level, a
   daily cycle and Gaussian noise (:data:`SIGNALS` has ``temp_c``, ``rh`` and ``pressure_hpa``), rounded
   like a board would send them.
2. **Injectors** - one pure function per anomaly kind, ``(series, start_ms, end_ms, ...) -> (series, span)``:
   :func:`spike`, :func:`level_shift`, :func:`drift`, :func:`stuck`, :func:`dropout`, :func:`noise_burst`.
   They never change their input; the :class:`Span` says what was done where (``[start_ms, end_ms)``).
   :func:`inject` calls the right one from a kind and a magnitude in units of the signal's noise.
3. **Scenarios** - :func:`generate_scenario` builds a fleet's labelled series from a :class:`ScenarioSpec`
   (devices, metrics, days, anomalies per series, magnitude and duration ranges, seed). By default each
   series carries anomalies of one kind, so every kind can be scored on its own (precision included).

>>> from sim.anomalies import ScenarioSpec, generate_scenario
>>> fleet = generate_scenario(ScenarioSpec(devices=2, metrics=("temp_c",), days=1.0, per_series=2, seed=7))
>>> [(s.device, s.metric, len(s.spans)) for s in fleet]
[('dev-0001', 'temp_c', 2), ('dev-0002', 'temp_c', 2)]
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal, get_args

from .errors import SpecError

__all__ = [
    "DAY_MS",
    "DEFAULT_RANGES",
    "KINDS",
    "SIGNALS",
    "AnomalyKind",
    "KindRange",
    "LabelledSeries",
    "ScenarioSpec",
    "Series",
    "SignalSpec",
    "Span",
    "baseline_series",
    "drift",
    "dropout",
    "generate_scenario",
    "inject",
    "level_shift",
    "noise_burst",
    "scenario_from_mapping",
    "spans_overlap",
    "spike",
    "stuck",
]

DAY_MS: Final = 86_400_000
AnomalyKind = Literal["spike", "level_shift", "drift", "stuck", "dropout", "noise_burst"]
KINDS: Final[tuple[AnomalyKind, ...]] = get_args(AnomalyKind)


@dataclass(frozen=True, slots=True)
class Series:
    """Readings of one metric: event times (ms, increasing) and values, of equal length."""

    t_ms: tuple[int, ...]
    values: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.t_ms) != len(self.values):
            raise SpecError(f"series has {len(self.t_ms)} times but {len(self.values)} values")


@dataclass(frozen=True, slots=True)
class Span:
    """An injected anomaly: its kind, where it is (``[start_ms, end_ms)``) and its size.

    ``magnitude`` is in the metric's unit: the spike's or the shift's offset, the drift's total, the burst's
    noise standard deviation; 0 for ``stuck`` and ``dropout``.
    """

    kind: AnomalyKind
    start_ms: int
    end_ms: int
    magnitude: float = 0.0


@dataclass(frozen=True, slots=True)
class LabelledSeries:
    """One device's metric with its anomalies: what an evaluation scores the detector against."""

    device: str
    metric: str
    series: Series
    spans: tuple[Span, ...]
    noise: float
    """Standard deviation of the signal's noise, the unit of the scenario's magnitudes."""
    interval_ms: int

    @property
    def t_ms(self) -> tuple[int, ...]:
        return self.series.t_ms

    @property
    def values(self) -> tuple[float, ...]:
        return self.series.values


# --- 1. signals ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SignalSpec:
    """A metric's normal behaviour: ``level + amplitude * daily cycle + N(0, noise)``, rounded."""

    level: float
    amplitude: float
    noise: float
    decimals: int = 2
    period_ms: int = DAY_MS


SIGNALS: Final[Mapping[str, SignalSpec]] = {
    "temp_c": SignalSpec(level=21.0, amplitude=2.5, noise=0.15),
    "rh": SignalSpec(level=45.0, amplitude=-6.0, noise=0.8),
    "pressure_hpa": SignalSpec(level=1013.25, amplitude=1.5, noise=0.1),
}
"""Signals like the fleet simulator's (``sim/devices.py``), by metric name."""


def baseline_series(
    signal: SignalSpec, start_ms: int, n: int, interval_ms: int, rng: random.Random, *, offset: float = 0.0
) -> Series:
    """``n`` normal readings from ``start_ms``, one every ``interval_ms``; ``offset`` moves the level."""
    t = tuple(start_ms + i * interval_ms for i in range(n))
    two_pi = 2.0 * math.pi
    values = tuple(
        round(
            signal.level
            + offset
            + signal.amplitude * math.sin(two_pi * ((ti % signal.period_ms) / signal.period_ms - 0.375))
            + rng.gauss(0.0, signal.noise),
            signal.decimals,
        )
        for ti in t
    )
    return Series(t, values)


# --- 2. injectors ----------------------------------------------------------------------------------


def _check(series: Series, start_ms: int, end_ms: int) -> None:
    if end_ms <= start_ms:
        raise SpecError(f"an anomaly needs end_ms > start_ms, got [{start_ms}, {end_ms})")


def _map(series: Series, start_ms: int, end_ms: int, fn: Any) -> Series:
    values = tuple(fn(t, x) if start_ms <= t < end_ms else x for t, x in zip(series.t_ms, series.values, strict=True))
    return Series(series.t_ms, values)


def spike(series: Series, at_ms: int, delta: float, *, decimals: int = 2) -> tuple[Series, Span]:
    """One reading (the first at or after ``at_ms``) moved by ``delta``. The span covers that reading only."""
    i = next((k for k, t in enumerate(series.t_ms) if t >= at_ms), None)
    if i is None:
        raise SpecError(f"no reading at or after {at_ms} to spike")
    values = list(series.values)
    values[i] = round(values[i] + delta, decimals)
    t = series.t_ms[i]
    return Series(series.t_ms, tuple(values)), Span("spike", t, t + 1, delta)


def level_shift(series: Series, start_ms: int, end_ms: int, delta: float, *, decimals: int = 2) -> tuple[Series, Span]:
    """Readings in ``[start_ms, end_ms)`` moved by ``delta`` (a step up or down and back)."""
    _check(series, start_ms, end_ms)
    return _map(series, start_ms, end_ms, lambda t, x: round(x + delta, decimals)), Span(
        "level_shift", start_ms, end_ms, delta
    )


def drift(series: Series, start_ms: int, end_ms: int, total: float, *, decimals: int = 2) -> tuple[Series, Span]:
    """A ramp from 0 at ``start_ms`` to ``total`` at ``end_ms`` (a drifting sensor), then back to normal."""
    _check(series, start_ms, end_ms)
    length = end_ms - start_ms
    return _map(series, start_ms, end_ms, lambda t, x: round(x + total * (t - start_ms) / length, decimals)), Span(
        "drift", start_ms, end_ms, total
    )


def stuck(series: Series, start_ms: int, end_ms: int) -> tuple[Series, Span]:
    """Readings in ``[start_ms, end_ms)`` repeat the last value before ``start_ms`` (a frozen sensor)."""
    _check(series, start_ms, end_ms)
    before = [x for t, x in zip(series.t_ms, series.values, strict=True) if t < start_ms]
    if not before:
        raise SpecError(f"no reading before {start_ms} for the sensor to be stuck at")
    held = before[-1]
    return _map(series, start_ms, end_ms, lambda t, x: held), Span("stuck", start_ms, end_ms)


def dropout(series: Series, start_ms: int, end_ms: int) -> tuple[Series, Span]:
    """No readings in ``[start_ms, end_ms)``: the board sent nothing (the series gets shorter)."""
    _check(series, start_ms, end_ms)
    kept = [(t, x) for t, x in zip(series.t_ms, series.values, strict=True) if not start_ms <= t < end_ms]
    return Series(tuple(t for t, _ in kept), tuple(x for _, x in kept)), Span("dropout", start_ms, end_ms)


def noise_burst(
    series: Series, start_ms: int, end_ms: int, std: float, rng: random.Random, *, decimals: int = 2
) -> tuple[Series, Span]:
    """Readings in ``[start_ms, end_ms)`` get extra Gaussian noise of ``std`` (interference, a loose wire)."""
    _check(series, start_ms, end_ms)
    return _map(series, start_ms, end_ms, lambda t, x: round(x + rng.gauss(0.0, std), decimals)), Span(
        "noise_burst", start_ms, end_ms, std
    )


def inject(
    series: Series,
    kind: AnomalyKind,
    start_ms: int,
    duration_ms: int,
    magnitude: float,
    noise: float,
    rng: random.Random,
) -> tuple[Series, Span]:
    """Inject one anomaly of ``kind``; ``magnitude`` is in units of ``noise`` (its sign is drawn from ``rng``
    for spikes, shifts and drifts). ``duration_ms`` is ignored for a spike."""
    size = magnitude * noise * (1.0 if rng.random() < 0.5 else -1.0)
    end = start_ms + duration_ms
    if kind == "spike":
        return spike(series, start_ms, size)
    if kind == "level_shift":
        return level_shift(series, start_ms, end, size)
    if kind == "drift":
        return drift(series, start_ms, end, size)
    if kind == "stuck":
        return stuck(series, start_ms, end)
    if kind == "dropout":
        return dropout(series, start_ms, end)
    if kind == "noise_burst":
        return noise_burst(series, start_ms, end, abs(magnitude) * noise, rng)
    raise SpecError(f"unknown anomaly kind {kind!r}; known: {', '.join(KINDS)}")


# --- 3. scenarios ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KindRange:
    """How big and how long one kind's anomalies are: drawn uniformly from these ranges.

    Magnitudes are in units of the signal's noise (for ``noise_burst``: the burst's standard deviation).
    """

    magnitude: tuple[float, float]
    duration_ms: tuple[int, int]


DEFAULT_RANGES: Final[Mapping[str, KindRange]] = {
    "spike": KindRange((6.0, 12.0), (0, 0)),
    "level_shift": KindRange((5.0, 10.0), (20 * 60_000, 180 * 60_000)),
    "drift": KindRange((8.0, 16.0), (60 * 60_000, 180 * 60_000)),
    "stuck": KindRange((0.0, 0.0), (30 * 60_000, 120 * 60_000)),
    "dropout": KindRange((0.0, 0.0), (30 * 60_000, 180 * 60_000)),
    "noise_burst": KindRange((4.0, 8.0), (15 * 60_000, 60 * 60_000)),
}


@dataclass(frozen=True, slots=True)
class ScenarioSpec:
    """A labelled fleet. Series ``i`` (device-major, then metric) gets anomalies of ``kinds[i % len(kinds)]``
    only, or of every kind in turn when ``mixed``."""

    devices: int = 24
    metrics: tuple[str, ...] = ("temp_c", "rh", "pressure_hpa")
    days: float = 2.0
    interval_ms: int = 60_000
    start_ms: int = 1_704_067_200_000
    """2024-01-01T00:00:00Z: fixed, so a scenario is the same whenever it is generated."""
    kinds: tuple[AnomalyKind, ...] = KINDS
    mixed: bool = False
    per_series: int = 4
    quiet_start_ms: int = 6 * 3_600_000
    """No anomaly before this (the detector's warm-up, and some normal behaviour to learn)."""
    clearance_ms: int = 2 * 3_600_000
    """Normal time after each anomaly, before the next one's slot may start."""
    ranges: Mapping[str, KindRange] = field(default_factory=lambda: dict(DEFAULT_RANGES))
    seed: int = 0

    def __post_init__(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise SpecError(what)

        need(self.devices >= 1, f"devices must be at least 1, got {self.devices}")
        need(bool(self.metrics), "at least one metric is needed")
        for m in self.metrics:
            need(m in SIGNALS, f"metric {m!r} has no signal; known: {', '.join(SIGNALS)}")
        need(self.days > 0, f"days must be positive, got {self.days}")
        need(self.interval_ms >= 1, f"interval_ms must be at least 1, got {self.interval_ms}")
        need(bool(self.kinds), "at least one anomaly kind is needed")
        for k in self.kinds:
            need(k in KINDS, f"unknown anomaly kind {k!r}; known: {', '.join(KINDS)}")
            need(k in self.ranges, f"no range for anomaly kind {k!r}")
        need(self.per_series >= 0, f"per_series must be >= 0, got {self.per_series}")
        slot = self.slot_ms
        longest = max(self.ranges[k].duration_ms[1] for k in self.kinds)
        need(
            self.per_series == 0 or slot >= longest + self.clearance_ms,
            f"{self.per_series} anomalies per series do not fit in {self.days} days: a slot of {slot} ms is shorter"
            f" than the longest anomaly ({longest} ms) plus the clearance ({self.clearance_ms} ms)",
        )

    @property
    def points(self) -> int:
        return int(self.days * DAY_MS // self.interval_ms)

    @property
    def slot_ms(self) -> int:
        usable = self.points * self.interval_ms - self.quiet_start_ms
        return usable // max(1, self.per_series)


def generate_scenario(spec: ScenarioSpec) -> list[LabelledSeries]:
    """Every device's metrics, each with ``per_series`` anomalies placed at random in consecutive slots."""
    rng = random.Random(spec.seed)
    out: list[LabelledSeries] = []
    index = 0
    for d in range(spec.devices):
        device = f"dev-{d + 1:04d}"
        for metric in spec.metrics:
            signal = SIGNALS[metric]
            series = baseline_series(
                signal, spec.start_ms, spec.points, spec.interval_ms, rng, offset=rng.uniform(-2, 2) * signal.noise * 5
            )
            spans: list[Span] = []
            for k in range(spec.per_series):
                kind = spec.kinds[(index + k) % len(spec.kinds)] if spec.mixed else spec.kinds[index % len(spec.kinds)]
                rg = spec.ranges[kind]
                duration = max(spec.interval_ms, rng.randint(*rg.duration_ms) // spec.interval_ms * spec.interval_ms)
                magnitude = rng.uniform(*rg.magnitude)
                slot_start = spec.start_ms + spec.quiet_start_ms + k * spec.slot_ms
                latest = slot_start + spec.slot_ms - spec.clearance_ms - duration
                start = rng.randint(slot_start, max(slot_start, latest))
                start = spec.start_ms + (start - spec.start_ms) // spec.interval_ms * spec.interval_ms
                series, span = inject(series, kind, start, duration, magnitude, signal.noise, rng)
                spans.append(span)
            out.append(LabelledSeries(device, metric, series, tuple(spans), signal.noise, spec.interval_ms))
            index += 1
    return out


def scenario_from_mapping(doc: Mapping[str, Any]) -> ScenarioSpec:
    """A :class:`ScenarioSpec` from a parsed TOML/JSON table (``sim/labelled/anomaly_*.toml``).

    Keys are the spec's field names; durations in ms; ``[ranges.<kind>]`` tables with ``magnitude`` and
    ``duration_ms`` pairs replace the defaults of those kinds.
    """
    allowed = set(ScenarioSpec.__dataclass_fields__)
    unknown = set(doc) - allowed
    if unknown:
        raise SpecError(f"unknown scenario key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(allowed))}")
    values: dict[str, Any] = {}
    for key, value in doc.items():
        if key in ("metrics", "kinds"):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise SpecError(f"{key}: expected a list of names, got {value!r}")
            values[key] = tuple(value)
        elif key == "ranges":
            if not isinstance(value, Mapping):
                raise SpecError(f"ranges: expected a table of kinds, got {value!r}")
            ranges = dict(DEFAULT_RANGES)
            for kind, r in value.items():
                try:
                    mag, dur = r["magnitude"], r["duration_ms"]
                    ranges[kind] = KindRange((float(mag[0]), float(mag[1])), (int(dur[0]), int(dur[1])))
                except (KeyError, TypeError, ValueError, IndexError) as exc:
                    raise SpecError(f"ranges.{kind}: expected magnitude = [lo, hi], duration_ms = [lo, hi]") from exc
            values[key] = ranges
        else:
            values[key] = value
    return replace(ScenarioSpec(), **values)


def spans_overlap(spans: Sequence[Span]) -> bool:
    """Whether any two spans overlap (scenarios never make overlapping anomalies)."""
    ordered = sorted(spans, key=lambda s: s.start_ms)
    return any(a.end_ms > b.start_ms for a, b in itertools.pairwise(ordered))
