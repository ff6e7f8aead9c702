"""Window and engine settings from the gateway's TOML file, parsed into frozen specs.

```toml
[engine]
unsynced = "reject"          # or "window": see docs/semantics.md
max_future = "5m"            # readings further ahead of the gateway clock are refused
min_time_ms = 1577836800000  # readings before this are refused (2020-01-01)

[engine.watermark]
mode = "device"              # or "global"
out_of_orderness = "5s"
idle_timeout = "10m"         # a device without announced sleep_s is idle after this
idle_factor = 2.0            # ... with sleep_s: idle after idle_factor * sleep_s + idle_grace
idle_grace = "30s"

[[engine.watermark.classes]]
name = "sleepy"
devices = ["gh-*"]           # glob patterns on the device id
out_of_orderness = "30s"

[[windows]]
name = "temp_1m"
kind = "tumbling"            # tumbling | sliding | session
size = "60s"                 # tumbling, sliding; offset = "0s" optional
slide = "10s"                # sliding only
gap = "30s"                  # session only
metrics = ["temp_c", "rh"]
aggregates = ["count", "mean", "min", "max"]   # default: all eight
allowed_lateness = "2m"      # default 0
out_of_orderness = "5s"      # optional: overrides the device-class bound for this window
key = "device"               # or "site"
early_every = "10s"          # optional: provisional results every 10 s of gateway time (docs/semantics.md)
early_count = 100            # optional: a provisional result after every 100 readings into a window
provisional = "overwrite"    # or "audit": provisional points also kept in `window_provisional`
publish = false              # true: every result also as JSON on <prefix>/_gateway/windows/<site>/<window>

[windows.relative]           # optional (tumbling, sliding; key = "device"): each device against its group
baseline = "median"          # or "mean": of the other members' values in the same window (leave-one-out)
value = "mean"               # which of the window's aggregates is compared (default mean)
groups = ["greenhouse"]      # default: every declared group the device is in
min_others = 1               # a device's deviation needs at least this many other members with a value
alert_above = 3.0            # optional: an alert when |deviation| > 3.0 (severity = "warning" by default)
```

Durations are integers (ms) or strings ``<number><unit>``, unit ``ms``, ``s``, ``m``, ``h`` or ``d``, a whole number
of milliseconds up to 2**53 (about 285,000 years).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Final, Literal, Protocol, TypeVar

from ..errors import ConfigError
from .aggregates import AGGREGATES
from .watermark import DeviceClass, WatermarkSpec

__all__ = [
    "AGGREGATE_NAMES",
    "Baseline",
    "EngineSpec",
    "Provisional",
    "RelativeSpec",
    "WindowKind",
    "WindowSpec",
    "parse_duration",
    "parse_engine",
    "parse_windows",
]

WindowKind = Literal["tumbling", "sliding", "session"]
Baseline = Literal["median", "mean"]
Provisional = Literal["overwrite", "audit"]
AGGREGATE_NAMES: Final = tuple(AGGREGATES)
_METRIC_RE: Final = re.compile(r"[a-z][a-z0-9_]{0,31}")
_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_DURATION_RE: Final = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*")
_UNITS: Final = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
TIME_LIMIT_MS: Final = 2**53
"""The largest duration, and the largest ``min_time_ms`` either way: with every event time the engine takes and
every bound within it, a watermark is never below -2**54, far above the operators' ``NO_WM`` sentinel (-2**62),
which would be taken for "no watermark" where a walk over the devices would count it."""


@dataclass(frozen=True, slots=True)
class RelativeSpec:
    """``[windows.relative]``: per window, each device's value against its group's (docs/cep.md, "Group-relative
    values"). The engine does not read it; ``gateway.relative`` does, from the window's final results."""

    baseline: Baseline = "median"
    value: str = "mean"
    groups: tuple[str, ...] = ()
    """The groups compared within (empty: every declared group the device is in)."""
    min_others: int = 1
    alert_above: float | None = None
    severity: Literal["info", "warning", "critical"] = "warning"


@dataclass(frozen=True, slots=True)
class WindowSpec:
    """One declared window. Sizes are milliseconds; ``slide == size`` for tumbling, 0 for session."""

    name: str
    kind: WindowKind
    metrics: tuple[str, ...]
    size_ms: int = 0
    slide_ms: int = 0
    offset_ms: int = 0
    gap_ms: int = 0
    aggregates: tuple[str, ...] = AGGREGATE_NAMES
    allowed_lateness_ms: int = 0
    out_of_orderness_ms: int | None = None
    key: Literal["device", "site"] = "device"
    # Left out of the repr, which the state file's fingerprint hashes: they decide when results are emitted, not
    # what the window holds, so a checkpoint stays usable when they change (the trigger state is then started anew).
    early_every_ms: int = field(default=0, repr=False)
    """Early (provisional) results every this much gateway time (``Engine.on_processing_time``); 0: none."""
    early_count: int = field(default=0, repr=False)
    """An early result of a window after every this many readings into it; 0: none."""
    provisional: Provisional = field(default="overwrite", repr=False)
    """``audit``: provisional points are also written to ``window_provisional``, where nothing overwrites them."""
    publish: bool = field(default=False, repr=False)
    """Every result of this window also on MQTT (``<prefix>/_gateway/windows/<site>/<window>``)."""
    relative: RelativeSpec | None = field(default=None, repr=False)
    """Group-relative values of this window (``[windows.relative]``); the fingerprint adds it when set."""

    @property
    def early(self) -> bool:
        """Whether the window has an early trigger (provisional results before the final one)."""
        return self.early_every_ms > 0 or self.early_count > 0


@dataclass(frozen=True, slots=True)
class EngineSpec:
    windows: tuple[WindowSpec, ...] = ()
    watermark: WatermarkSpec = field(default_factory=WatermarkSpec)
    unsynced: Literal["reject", "window"] = "reject"
    max_future_ms: int = 300_000
    min_time_ms: int = 1_577_836_800_000


def parse_duration(value: object, where: str) -> int:
    """Milliseconds from an int (ms) or a string like ``"250ms"``, ``"60s"``, ``"5m"``, ``"1.5h"``."""
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a duration, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"{where}: duration must not be negative, got {_shown(value)}")
        return _at_most(value, value, where)
    if isinstance(value, str):
        m = _DURATION_RE.fullmatch(value)
        if m:
            ms = _exact(m.group(1), _UNITS[m.group(2)])
            if ms is None:
                raise ConfigError(f"{where}: {value[:40]!r}... has too many digits (at most {TIME_LIMIT_MS} ms)")
            if ms.denominator != 1:
                raise ConfigError(f"{where}: {value!r} is not a whole number of milliseconds")
            return _at_most(ms.numerator, value, where)
    raise ConfigError(f"{where}: expected milliseconds or a string like '60s', '5m', got {_shown(value)}")


def _exact(number: str, unit_ms: int) -> Fraction | None:
    """``number`` (decimal digits, maybe a point and more; any script's digits, as ``\\d`` matches) units of
    ``unit_ms``, exactly: 1.001 s is 1001 ms, where as floats 1.001 * 1000 is 1000.9999999999999. None if it has
    more than 40 digits besides leading and trailing zeros: more than a duration up to the limit needs."""
    if not number.isascii():
        number = "".join(c if c == "." else str(int(c)) for c in number)
    whole, _, frac = number.partition(".")
    whole, frac = whole.lstrip("0"), frac.rstrip("0")
    if len(whole) + len(frac) > 40:
        return None
    scale = 10 ** len(frac)
    return Fraction(int(whole or "0") * scale + int(frac or "0"), scale) * unit_ms


def _shown(value: object) -> str:
    """``repr(value)``, or what it is when that is too long to print (an int of more than 4,300 digits)."""
    if isinstance(value, int) and value.bit_length() > 1000:
        return f"an integer of {value.bit_length()} bits"
    return repr(value)[:80]


def _at_most(ms: int, value: object, where: str) -> int:
    if ms > TIME_LIMIT_MS:
        raise ConfigError(f"{where}: {_shown(value)} is longer than {TIME_LIMIT_MS} ms (about 285,000 years)")
    return ms


def _names(value: object, where: str, allowed: Sequence[str] | None = None) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: expected a non-empty list of strings, got {value!r}")
    if len(set(value)) != len(value):
        raise ConfigError(f"{where}: duplicate names in {value!r}")
    for v in value:
        if allowed is not None and v not in allowed:
            raise ConfigError(f"{where}: unknown {v!r}, expected some of {', '.join(allowed)}")
        if allowed is None and not _METRIC_RE.fullmatch(v):
            raise ConfigError(f"{where}: {v!r} is not a metric name ([a-z][a-z0-9_]{{0,31}})")
    return tuple(value)


_WINDOW_KEYS: Final = {
    "tumbling": {"size", "offset"},
    "sliding": {"size", "slide", "offset"},
    "session": {"gap"},
}
_COMMON_KEYS: Final = {
    "name",
    "kind",
    "metrics",
    "aggregates",
    "allowed_lateness",
    "out_of_orderness",
    "key",
    "early_every",
    "early_count",
    "provisional",
    "publish",
    "relative",
}
_RELATIVE_KEYS: Final = {"baseline", "value", "groups", "min_others", "alert_above", "severity"}


def _parse_relative(raw: object, where: str, kind: str, key: str, aggregates: tuple[str, ...]) -> RelativeSpec:
    at = f"{where}.relative"
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{at}: expected a table ([windows.relative]), got {raw!r}")
    unknown = sorted(set(raw) - _RELATIVE_KEYS)
    if unknown:
        raise ConfigError(f"{at}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(_RELATIVE_KEYS))}")
    if kind == "session" or key != "device":
        raise ConfigError(f"{at}: needs a tumbling or sliding window keyed by device (the members' windows must "
                          f"be the same), this one is a {kind} window keyed by {key}")  # fmt: skip
    baseline = raw.get("baseline", "median")
    if baseline not in ("median", "mean"):
        raise ConfigError(f"{at}.baseline: expected 'median' or 'mean', got {baseline!r}")
    value = raw.get("value", "mean")
    if value not in aggregates:
        raise ConfigError(f"{at}.value: {value!r} is not one of the window's aggregates ({', '.join(aggregates)})")
    groups = raw.get("groups", [])
    if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
        raise ConfigError(f"{at}.groups: expected a list of group names, got {groups!r}")
    others = raw.get("min_others", 1)
    if isinstance(others, bool) or not isinstance(others, int) or others < 1:
        raise ConfigError(f"{at}.min_others: expected a positive integer, got {others!r}")
    above = raw.get("alert_above")
    if above is not None and (isinstance(above, bool) or not isinstance(above, (int, float)) or not above >= 0):
        raise ConfigError(f"{at}.alert_above: expected a number >= 0, got {above!r}")
    severity = raw.get("severity", "warning")
    if severity not in ("info", "warning", "critical"):
        raise ConfigError(f"{at}.severity: expected info, warning or critical, got {severity!r}")
    return RelativeSpec(
        baseline=baseline,
        value=value,
        groups=tuple(groups),
        min_others=others,
        alert_above=None if above is None else float(above),
        severity=severity,
    )


def _parse_window(raw: object, index: int) -> WindowSpec:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"windows[{index}]: expected a table, got {raw!r}")
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ConfigError(f"windows[{index}].name: expected 1-64 of [A-Za-z0-9_.-], got {name!r}")
    where = f"windows[{name}]"
    kind = raw.get("kind")
    if kind not in _WINDOW_KEYS:
        raise ConfigError(f"{where}.kind: expected tumbling, sliding or session, got {kind!r}")
    unknown = set(raw) - _COMMON_KEYS - _WINDOW_KEYS[kind]
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} for a {kind} window")
    metrics = _names(raw.get("metrics"), f"{where}.metrics")
    aggregates = (
        _names(raw["aggregates"], f"{where}.aggregates", AGGREGATE_NAMES) if "aggregates" in raw else AGGREGATE_NAMES
    )
    key = raw.get("key", "device")
    if key not in ("device", "site"):
        raise ConfigError(f"{where}.key: expected 'device' or 'site', got {key!r}")
    lateness = parse_duration(raw.get("allowed_lateness", 0), f"{where}.allowed_lateness")
    ooo = raw.get("out_of_orderness")
    bound = None if ooo is None else parse_duration(ooo, f"{where}.out_of_orderness")

    every = parse_duration(raw.get("early_every", 0), f"{where}.early_every")
    count = raw.get("early_count", 0)
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ConfigError(f"{where}.early_count: expected a whole number of readings (0: none), got {count!r}")
    provisional = raw.get("provisional", "overwrite")
    if provisional not in ("overwrite", "audit"):
        raise ConfigError(f"{where}.provisional: expected 'overwrite' or 'audit', got {provisional!r}")
    if provisional == "audit" and not every and not count:
        raise ConfigError(
            f"{where}.provisional: 'audit' keeps provisional results, but early_every and early_count "
            "are not set: the window makes none"
        )
    publish = raw.get("publish", False)
    if not isinstance(publish, bool):
        raise ConfigError(f"{where}.publish: expected true or false, got {publish!r}")
    relative = None if "relative" not in raw else _parse_relative(raw["relative"], where, kind, key, aggregates)

    def positive(k: str) -> int:
        if k not in raw:
            raise ConfigError(f"{where}.{k}: required for a {kind} window")
        ms = parse_duration(raw[k], f"{where}.{k}")
        if ms <= 0:
            raise ConfigError(f"{where}.{k}: must be positive, got {raw[k]!r}")
        return ms

    size = slide = offset = gap = 0
    if kind == "session":
        gap = positive("gap")
    else:
        size = positive("size")
        slide = positive("slide") if kind == "sliding" else size
        if slide > size:
            raise ConfigError(f"{where}.slide: {raw['slide']!r} is larger than size {raw['size']!r}")
        offset = parse_duration(raw.get("offset", 0), f"{where}.offset")
        if offset >= slide:
            raise ConfigError(f"{where}.offset: {raw['offset']!r} must be smaller than the slide")
    return WindowSpec(
        name=name,
        kind=kind,
        metrics=metrics,
        size_ms=size,
        slide_ms=slide,
        offset_ms=offset,
        gap_ms=gap,
        aggregates=aggregates,
        allowed_lateness_ms=lateness,
        out_of_orderness_ms=bound,
        key=key,
        early_every_ms=every,
        early_count=count,
        provisional=provisional,
        publish=publish,
        relative=relative,
    )


class _Named(Protocol):
    @property
    def name(self) -> str: ...


N = TypeVar("N", bound=_Named)


def parse_named_tables(
    section: object,
    label: str,
    parse_one: Callable[[object, int], N],
    error: type[ConfigError] = ConfigError,
) -> tuple[N, ...]:
    """A TOML array of tables (``[[label]]``; ``None`` or absent: none), each parsed by ``parse_one(raw,
    index)``, their names unique."""
    if section is None:
        return ()
    if not isinstance(section, list):
        raise error(f"{label}: expected a list of [[{label}]] tables, got {section!r}")
    specs = tuple(parse_one(raw, i) for i, raw in enumerate(section))
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise error(f"{label}[{spec.name}].name: declared twice")
        seen.add(spec.name)
    return specs


def parse_windows(section: object) -> tuple[WindowSpec, ...]:
    """The ``[[windows]]`` list of the TOML file (``None`` or absent means no windows)."""
    return parse_named_tables(section, "windows", _parse_window)


ENGINE_KEYS: Final = frozenset({"unsynced", "max_future", "min_time_ms", "watermark"})
"""The keys of ``[engine]`` (``gateway.config`` derives the environment variables from them)."""
WATERMARK_KEYS: Final = frozenset({"mode", "out_of_orderness", "idle_timeout", "idle_factor", "idle_grace", "classes"})
"""The keys of ``[engine.watermark]``."""


def _parse_watermark(raw: object) -> WatermarkSpec:
    if raw is None:
        return WatermarkSpec()
    if not isinstance(raw, Mapping):
        raise ConfigError(f"engine.watermark: expected a table, got {raw!r}")
    unknown = set(raw) - WATERMARK_KEYS
    if unknown:
        raise ConfigError(f"engine.watermark: unknown key(s) {', '.join(sorted(unknown))}")
    mode = raw.get("mode", "device")
    if mode not in ("device", "global"):
        raise ConfigError(f"engine.watermark.mode: expected 'device' or 'global', got {mode!r}")
    factor = raw.get("idle_factor", 2.0)
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or factor <= 0:
        raise ConfigError(f"engine.watermark.idle_factor: expected a positive number, got {factor!r}")
    classes: list[DeviceClass] = []
    raw_classes = raw.get("classes", [])
    if not isinstance(raw_classes, list):
        raise ConfigError(
            f"engine.watermark.classes: expected a list of tables ([[engine.watermark.classes]]), got {raw_classes!r}"
        )
    for i, c in enumerate(raw_classes):
        w = f"engine.watermark.classes[{i}]"
        if not isinstance(c, Mapping) or set(c) - {"name", "devices", "out_of_orderness"}:
            raise ConfigError(f"{w}: expected a table with name, devices, out_of_orderness, got {c!r}")
        cname = c.get("name")
        if not isinstance(cname, str) or not cname:
            raise ConfigError(f"{w}.name: expected a string, got {cname!r}")
        devices = c.get("devices")
        if not isinstance(devices, list) or not devices or not all(isinstance(d, str) for d in devices):
            raise ConfigError(f"{w}.devices: expected a non-empty list of glob patterns, got {devices!r}")
        if "out_of_orderness" not in c:
            raise ConfigError(f"{w}.out_of_orderness: required")
        classes.append(
            DeviceClass(cname, tuple(devices), parse_duration(c["out_of_orderness"], f"{w}.out_of_orderness"))
        )
    d = WatermarkSpec()
    return WatermarkSpec(
        mode=mode,
        out_of_orderness_ms=parse_duration(
            raw.get("out_of_orderness", d.out_of_orderness_ms), "engine.watermark.out_of_orderness"
        ),
        classes=tuple(classes),
        idle_timeout_ms=parse_duration(raw.get("idle_timeout", d.idle_timeout_ms), "engine.watermark.idle_timeout"),
        idle_factor=float(factor),
        idle_grace_ms=parse_duration(raw.get("idle_grace", d.idle_grace_ms), "engine.watermark.idle_grace"),
    )


def parse_engine(doc: Mapping[str, Any]) -> EngineSpec:
    """The engine's configuration from the parsed TOML document: its ``engine`` table and ``windows`` list."""
    raw = doc.get("engine", {})
    if not isinstance(raw, Mapping):
        raise ConfigError(f"engine: expected a table, got {raw!r}")
    unknown = set(raw) - ENGINE_KEYS
    if unknown:
        raise ConfigError(f"engine: unknown key(s) {', '.join(sorted(unknown))}")
    unsynced = raw.get("unsynced", "reject")
    if unsynced not in ("reject", "window"):
        raise ConfigError(f"engine.unsynced: expected 'reject' or 'window', got {unsynced!r}")
    d = EngineSpec()
    min_time = raw.get("min_time_ms", d.min_time_ms)
    if isinstance(min_time, bool) or not isinstance(min_time, int):
        raise ConfigError(f"engine.min_time_ms: expected an integer (ms since the epoch), got {min_time!r}")
    if not -TIME_LIMIT_MS <= min_time <= TIME_LIMIT_MS:
        raise ConfigError(f"engine.min_time_ms: {_shown(min_time)} is beyond ±{TIME_LIMIT_MS} ms (about 285,000 years)")
    return EngineSpec(
        windows=parse_windows(doc.get("windows")),
        watermark=_parse_watermark(raw.get("watermark")),
        unsynced=unsynced,
        max_future_ms=parse_duration(raw.get("max_future", d.max_future_ms), "engine.max_future"),
        min_time_ms=min_time,
    )
