"""The ``[anomaly]`` section of the gateway's TOML file, parsed into frozen specs.

```toml
[anomaly]                      # present: detection is on (enabled = false turns it off again)
metrics = ["temp_c", "rh"]     # default: every numeric metric
baseline = "ewma"              # or "window": an event-time rolling window of `window`
alpha = 0.07                   # ewma: weight of a new point in the mean (per point, after the warm-up)
var_alpha = 0.005              # ewma: weight of a new point in the variance (about 200 readings: a stable spread)
window = "0s"                  # window: its length in event time; 0: the last window_max_points points
window_max_points = 1000
warmup = 30                    # points learned before any point is flagged
threshold = 4.5                # |z| at or above it is anomalous
clear_threshold = 2.5          # hysteresis: an open anomaly closes after clear_points points below it
min_points = 1                 # consecutive points at or above the threshold before an anomaly opens
clear_points = 3
min_std = 0.0                  # floor on the deviation, in the metric's unit ...
rel_min_std = 0.0001           # ... and as a fraction of |mean|; never below 1e-9
protection = "exclude"         # anomalous points: "exclude" from the baseline, "downweight", or "off"
downweight = 0.1               # downweight: alpha * downweight for a protected point
shift_points = 5               # a run of this many points on one side of the baseline is a new level: score against it
rebaseline_after = "0s"        # an anomaly still open after this is a new normal: re-learn, say so ...
rebaseline_points = 600        # ... or after this many readings when rebaseline_after is 0
recurring = 3                  # an excursion of a size seen this many times within recur_points is a pattern (0: off)
recur_points = 1000
season = "none"                # "day" or "week": a baseline per time-of-day (and day-of-week) bin, learned online
season_bins = 24               # bins per day
gap_factor = 5.0               # a gap is dt > gap_factor * the series' typical interval ...
gap = "0s"                     # ... or dt > gap when it is set (> 0)
after_gap = "reanchor"         # first point after a gap: not flagged, the mean moves to it; or "score"
gap_alerts = false             # raise an alert for a device's first reading after a gap
stuck_points = 20              # this many identical values in a row is a stuck sensor (0: off)
write = "all"                  # the anomaly measurement: a point per scored value, or "flagged" only
multivariate = true            # per device, a Mahalanobis (Hotelling T^2) score over its metrics ...
multivariate_memory = 200      # ... whose mean and covariance have a memory of this many readings
max_series = 100000            # series (device, metric) tracked at most; more are counted, not scored
on = "arrival"                 # score as readings arrive (today's); "event_time": after the watermark; "both"

[anomaly.compound]
span = "5m"                    # anomalies opening within this much event time of each other ...
min_metrics = 2                # ... on this many metrics of one device: one critical alert

[[anomaly.groups]]             # declared groups of devices (glob patterns on the device id)
name = "greenhouse"
devices = ["gh-*"]
min_devices = 2                # devices of the group with an anomaly within the span: one critical alert

[anomaly.overrides.rh]         # per-metric values of any detector key above
min_std = 0.5
```
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Final, Literal

from ..engine.config import parse_duration
from ..errors import ConfigError

__all__ = ["AnomalySpec", "CompoundSpec", "DetectorSpec", "GroupSpec", "parse_anomaly"]

Baseline = Literal["ewma", "window"]
Season = Literal["none", "day", "week"]
Protection = Literal["exclude", "downweight", "off"]
AfterGap = Literal["reanchor", "score"]

_METRIC_RE: Final = re.compile(r"[a-z][a-z0-9_]{0,31}")
_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True, slots=True)
class DetectorSpec:
    """How one series (a device's metric) is scored. Durations are milliseconds."""

    baseline: Baseline = "ewma"
    alpha: float = 0.07
    var_alpha: float = 0.005
    window_ms: int = 0
    window_max_points: int = 1_000
    warmup: int = 30
    threshold: float = 4.5
    clear_threshold: float = 2.5
    min_points: int = 1
    clear_points: int = 3
    min_std: float = 0.0
    rel_min_std: float = 0.0001
    protection: Protection = "exclude"
    downweight: float = 0.1
    shift_points: int = 5
    rebaseline_after_ms: int = 0
    rebaseline_points: int = 600
    recurring: int = 3
    recur_points: int = 1_000
    season: Season = "none"
    season_bins: int = 24
    gap_factor: float = 5.0
    gap_ms: int = 0
    after_gap: AfterGap = "reanchor"
    stuck_points: int = 20

    def __post_init__(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ConfigError(what)

        need(self.baseline in ("ewma", "window"), f"baseline: expected 'ewma' or 'window', got {self.baseline!r}")
        need(0.0 < self.alpha <= 1.0, f"alpha: must be in (0, 1], got {self.alpha!r}")
        need(0.0 < self.var_alpha <= 1.0, f"var_alpha: must be in (0, 1], got {self.var_alpha!r}")
        need(
            self.window_ms >= 0,
            f"window: must be >= 0 (0: the last window_max_points points), got {self.window_ms!r} ms",
        )
        need(self.window_max_points >= 2, f"window_max_points: must be at least 2, got {self.window_max_points!r}")
        need(self.warmup >= 2, f"warmup: must be at least 2 points, got {self.warmup!r}")
        need(self.threshold > 0, f"threshold: must be > 0, got {self.threshold!r}")
        need(
            0 < self.clear_threshold <= self.threshold,
            f"clear_threshold: must be in (0, threshold={self.threshold}], got {self.clear_threshold!r}",
        )
        need(self.min_points >= 1, f"min_points: must be at least 1, got {self.min_points!r}")
        need(self.clear_points >= 1, f"clear_points: must be at least 1, got {self.clear_points!r}")
        need(self.min_std >= 0, f"min_std: must be >= 0, got {self.min_std!r}")
        need(self.rel_min_std >= 0, f"rel_min_std: must be >= 0, got {self.rel_min_std!r}")
        need(
            self.protection in ("exclude", "downweight", "off"),
            f"protection: expected 'exclude', 'downweight' or 'off', got {self.protection!r}",
        )
        need(0.0 <= self.downweight < 1.0, f"downweight: must be in [0, 1), got {self.downweight!r}")
        need(self.shift_points >= 2, f"shift_points: must be at least 2, got {self.shift_points!r}")
        need(self.rebaseline_after_ms >= 0, f"rebaseline_after: must be >= 0, got {self.rebaseline_after_ms!r} ms")
        need(self.rebaseline_points >= 1, f"rebaseline_points: must be at least 1, got {self.rebaseline_points!r}")
        need(
            self.baseline != "window" or not self.window_ms or 0 < self.rebaseline_after_ms < self.window_ms,
            f"rebaseline_after: {self.rebaseline_after_ms} ms must be set and shorter than window {self.window_ms} ms,"
            " or the window empties during a long anomaly",
        )
        need(
            self.baseline != "window" or bool(self.window_ms) or self.rebaseline_points < self.window_max_points,
            f"rebaseline_points: {self.rebaseline_points} must be fewer than window_max_points "
            f"{self.window_max_points}, or the window empties during a long anomaly",
        )
        need(self.recurring == 0 or self.recurring >= 2, f"recurring: 0 (off) or >= 2, got {self.recurring!r}")
        need(self.recur_points >= 1, f"recur_points: must be at least 1, got {self.recur_points!r}")
        need(self.season in ("none", "day", "week"), f"season: expected 'none', 'day' or 'week', got {self.season!r}")
        need(1 <= self.season_bins <= 1440, f"season_bins: must be in [1, 1440] per day, got {self.season_bins!r}")
        need(self.gap_factor > 1.0, f"gap_factor: must be > 1, got {self.gap_factor!r}")
        need(self.gap_ms >= 0, f"gap: must be >= 0, got {self.gap_ms!r}")
        need(
            self.after_gap in ("reanchor", "score"),
            f"after_gap: expected 'reanchor' or 'score', got {self.after_gap!r}",
        )
        need(
            self.stuck_points == 0 or self.stuck_points >= 3,
            f"stuck_points: 0 (off) or >= 3, got {self.stuck_points!r}",
        )


@dataclass(frozen=True, slots=True)
class CompoundSpec:
    span_ms: int = 300_000
    min_metrics: int = 2


@dataclass(frozen=True, slots=True)
class GroupSpec:
    name: str
    devices: tuple[str, ...]
    min_devices: int = 2


@dataclass(frozen=True, slots=True)
class AnomalySpec:
    """The whole ``[anomaly]`` section. ``enabled`` is false when the section is absent."""

    enabled: bool = False
    metrics: tuple[str, ...] = ()
    """Metrics scored; empty: every numeric (int or float, not bool) metric."""
    detector: DetectorSpec = field(default_factory=DetectorSpec)
    overrides: Mapping[str, DetectorSpec] = field(default_factory=dict)
    compound: CompoundSpec = field(default_factory=CompoundSpec)
    groups: tuple[GroupSpec, ...] = ()
    write: Literal["all", "flagged"] = "all"
    gap_alerts: bool = False
    max_series: int = 100_000
    multivariate: bool = True
    """Per device, a Mahalanobis (Hotelling T^2) score over its scored metrics (``gateway/anomaly/multivariate.py``)."""
    multivariate_memory: int = 200
    """The memory, in readings, of the multivariate score's mean and covariance after its warm-up."""
    on: Literal["arrival", "event_time", "both"] = field(default="arrival", repr=False)
    """``arrival`` (the default, what detection has always done): each message's new readings at once, in
    event-time order within the message, a reading older than its series' last scored one skipped;
    ``event_time``: held until the device's watermark passes them, then scored in event-time order; ``both``:
    the two, the event-time path giving each arrival alert its verdict (``gateway/anomaly/paths.py``). Left out
    of the repr (the checkpoint fingerprint's): ``gateway.app`` adds it when it is not the default."""

    def detector_for(self, metric: str) -> DetectorSpec:
        return self.overrides.get(metric, self.detector)


_COMPOUND: Final = CompoundSpec()

# --- parsing -------------------------------------------------------------------------------------

_DURATIONS: Final = {"window": "window_ms", "rebaseline_after": "rebaseline_after_ms", "gap": "gap_ms"}
_DETECTOR_KEYS: Final = {f.name for f in fields(DetectorSpec)} - set(_DURATIONS.values()) | set(_DURATIONS)
_TOP_KEYS: Final = {
    "enabled", "on", "metrics", "write", "gap_alerts", "max_series", "multivariate", "multivariate_memory", "compound",
    "groups", "overrides",
}  # fmt: skip


def _number(value: object, where: str, kind: type) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if kind is int:
        if not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    return float(value)


def _detector(raw: Mapping[str, Any], where: str, base: DetectorSpec) -> DetectorSpec:
    unknown = set(raw) - _DETECTOR_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    kinds = {f.name: f.type for f in fields(DetectorSpec)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key in _DURATIONS:
            values[_DURATIONS[key]] = parse_duration(value, f"{where}.{key}")
        elif kinds[key] in ("int", int):
            values[key] = _number(value, f"{where}.{key}", int)
        elif kinds[key] in ("float", float):
            values[key] = _number(value, f"{where}.{key}", float)
        else:
            if not isinstance(value, str):
                raise ConfigError(f"{where}.{key}: expected a string, got {value!r}")
            values[key] = value
    try:
        return replace(base, **values)
    except ConfigError as exc:
        raise ConfigError(f"{where}.{exc}") from None


def parse_anomaly(doc: Mapping[str, Any]) -> AnomalySpec:
    """The ``[anomaly]`` table of the parsed TOML document (absent: detection off)."""
    if "anomaly" not in doc:
        return AnomalySpec()
    raw = doc["anomaly"]
    if not isinstance(raw, Mapping):
        raise ConfigError(f"[anomaly] must be a table, got {raw!r}")
    unknown = set(raw) - _TOP_KEYS - _DETECTOR_KEYS
    if unknown:
        known = ", ".join(sorted(_TOP_KEYS | _DETECTOR_KEYS))
        raise ConfigError(f"[anomaly]: unknown key(s) {', '.join(sorted(unknown))}; known: {known}")
    detector = _detector({k: v for k, v in raw.items() if k in _DETECTOR_KEYS}, "anomaly", DetectorSpec())

    metrics = raw.get("metrics", [])
    if not isinstance(metrics, list) or not all(isinstance(m, str) and _METRIC_RE.fullmatch(m) for m in metrics):
        raise ConfigError(f"anomaly.metrics: expected a list of metric names ([a-z][a-z0-9_]{{0,31}}), got {metrics!r}")
    if len(set(metrics)) != len(metrics):
        raise ConfigError(f"anomaly.metrics: duplicate names in {metrics!r}")

    overrides_raw = raw.get("overrides", {})
    if not isinstance(overrides_raw, Mapping):
        raise ConfigError(f"anomaly.overrides: expected a table of metric tables, got {overrides_raw!r}")
    overrides: dict[str, DetectorSpec] = {}
    for metric, sub in overrides_raw.items():
        if not _METRIC_RE.fullmatch(metric):
            raise ConfigError(f"anomaly.overrides: {metric!r} is not a metric name")
        if metrics and metric not in metrics:
            raise ConfigError(f"anomaly.overrides.{metric}: not among anomaly.metrics {metrics!r}")
        if not isinstance(sub, Mapping):
            raise ConfigError(f"anomaly.overrides.{metric}: expected a table, got {sub!r}")
        overrides[metric] = _detector(sub, f"anomaly.overrides.{metric}", detector)

    comp_raw = raw.get("compound", {})
    if not isinstance(comp_raw, Mapping) or set(comp_raw) - {"span", "min_metrics"}:
        raise ConfigError(f"anomaly.compound: expected a table with span, min_metrics, got {comp_raw!r}")
    span = parse_duration(comp_raw.get("span", _COMPOUND.span_ms), "anomaly.compound.span")
    if span <= 0:
        raise ConfigError(f"anomaly.compound.span: must be positive, got {comp_raw.get('span')!r}")
    min_metrics = _number(comp_raw.get("min_metrics", _COMPOUND.min_metrics), "anomaly.compound.min_metrics", int)
    if min_metrics < 2:
        raise ConfigError(f"anomaly.compound.min_metrics: must be at least 2, got {min_metrics!r}")

    groups_raw = raw.get("groups", [])
    if not isinstance(groups_raw, list):
        raise ConfigError(f"anomaly.groups: expected a list of [[anomaly.groups]] tables, got {groups_raw!r}")
    groups: list[GroupSpec] = []
    for i, g in enumerate(groups_raw):
        w = f"anomaly.groups[{i}]"
        if not isinstance(g, Mapping) or set(g) - {"name", "devices", "min_devices"}:
            raise ConfigError(f"{w}: expected a table with name, devices, min_devices, got {g!r}")
        name = g.get("name")
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            raise ConfigError(f"{w}.name: expected 1-64 of [A-Za-z0-9_.-], got {name!r}")
        if any(x.name == name for x in groups):
            raise ConfigError(f"{w}.name: group {name!r} declared twice")
        devices = g.get("devices")
        if not isinstance(devices, list) or not devices or not all(isinstance(d, str) and d for d in devices):
            raise ConfigError(f"{w}.devices: expected a non-empty list of glob patterns, got {devices!r}")
        min_devices = _number(g.get("min_devices", 2), f"{w}.min_devices", int)
        if min_devices < 2:
            raise ConfigError(f"{w}.min_devices: must be at least 2, got {min_devices!r}")
        groups.append(GroupSpec(name, tuple(devices), min_devices))

    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError(f"anomaly.enabled: expected true or false, got {enabled!r}")
    write = raw.get("write", "all")
    if write not in ("all", "flagged"):
        raise ConfigError(f"anomaly.write: expected 'all' or 'flagged', got {write!r}")
    gap_alerts = raw.get("gap_alerts", False)
    if not isinstance(gap_alerts, bool):
        raise ConfigError(f"anomaly.gap_alerts: expected true or false, got {gap_alerts!r}")
    multivariate = raw.get("multivariate", True)
    if not isinstance(multivariate, bool):
        raise ConfigError(f"anomaly.multivariate: expected true or false, got {multivariate!r}")
    memory = _number(raw.get("multivariate_memory", 200), "anomaly.multivariate_memory", int)
    if memory < 2:
        raise ConfigError(f"anomaly.multivariate_memory: must be at least 2 readings, got {memory!r}")
    max_series = _number(raw.get("max_series", 100_000), "anomaly.max_series", int)
    if max_series < 1:
        raise ConfigError(f"anomaly.max_series: must be at least 1, got {max_series!r}")
    on = raw.get("on", "arrival")
    if on not in ("arrival", "event_time", "both"):
        raise ConfigError(f"anomaly.on: expected 'arrival', 'event_time' or 'both', got {on!r}")
    return AnomalySpec(
        enabled=enabled,
        metrics=tuple(metrics),
        detector=detector,
        overrides=overrides,
        compound=CompoundSpec(span, min_metrics),
        groups=tuple(groups),
        write=write,
        gap_alerts=gap_alerts,
        max_series=max_series,
        multivariate=multivariate,
        multivariate_memory=memory,
        on=on,
    )
