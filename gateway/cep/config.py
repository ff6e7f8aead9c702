"""``[[patterns]]`` in the gateway's TOML file, parsed into validated :class:`PatternSpec` values at start.

```toml
[[patterns]]
name = "overheat_pressure_drop"
key = "device"                 # or "site": one match state per site, over all its devices' readings;
                               # or "group:NAME": one for that declared group ([groups]), over its members'
                               # readings; or "group": one per declared group
within = "30s"                 # first to last reading of a match, event time (optional)
severity = "critical"          # info | warning | critical
skip = "skip_past_last_event"  # or "no_skip"
devices = ["boiler-*"]         # optional glob patterns on the device id
message = "temperature above 80 then a pressure drop"   # optional
on = "event_time"              # or "arrival" (fast, may be wrong under disorder) or "both" (fast + verdicts)

[[patterns.steps]]
name = "hot"
where = "temp_c > 80"

[[patterns.steps]]
name = "drop"
follow = "followed_by"         # next (strict) | followed_by (relaxed, default) | not_followed_by
where = "pressure_hpa < 0.9 * hot.pressure_hpa"
# times = 3 | at_least = 3 | one_or_more = true     (quantifiers; default exactly once)
# within = "5m"                                     (only on a final not_followed_by)
```
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from ..engine.config import parse_duration, parse_named_tables
from ..errors import ConfigError
from .expr import ExprError, parse_condition
from .pattern import Follow, PatternError, PatternSpec, StepSpec, validate

__all__ = ["parse_pattern", "parse_patterns"]

_PATTERN_KEYS: Final = {"name", "key", "within", "severity", "skip", "devices", "message", "on", "steps"}
_STEP_KEYS: Final = {"name", "where", "follow", "times", "at_least", "one_or_more", "within"}


def _count(raw: Mapping[str, Any], at: str, key: str) -> int:
    v = raw[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise PatternError(f"{at}.{key}: expected a positive integer, got {v!r}")
    return v


def _step(raw: object, where: str, index: int) -> StepSpec:
    if not isinstance(raw, Mapping):
        raise PatternError(f"{where}.steps[{index}]: expected a table, got {raw!r}")
    name = raw.get("name")
    if not isinstance(name, str):
        raise PatternError(f"{where}.steps[{index}].name: expected a string, got {name!r}")
    at = f"{where}.steps[{name}]"
    unknown = sorted(set(raw) - _STEP_KEYS)
    if unknown:
        raise PatternError(f"{at}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(_STEP_KEYS))}")
    if "where" not in raw:
        raise PatternError(f"{at}.where: required (a condition such as 'temp_c > 80')")
    try:
        preds = parse_condition(raw["where"])
    except ExprError as exc:
        raise PatternError(f"{at}.where: {exc}") from exc
    if index == 0:
        if "follow" in raw:
            raise PatternError(f"{at}.follow: the first step follows nothing; remove 'follow'")
        follow: Follow = "begin"
    else:
        follow = raw.get("follow", "followed_by")
        if follow not in ("next", "followed_by", "not_followed_by"):
            raise PatternError(f"{at}.follow: expected next, followed_by or not_followed_by, got {follow!r}")
    quantifiers = [k for k in ("times", "at_least", "one_or_more") if k in raw]
    if len(quantifiers) > 1:
        raise PatternError(f"{at}: choose one quantifier, got {' and '.join(quantifiers)}")
    lo: int = 1
    hi: int | None = 1
    if "times" in raw:
        lo = hi = _count(raw, at, "times")
    elif "at_least" in raw:
        lo, hi = _count(raw, at, "at_least"), None
    elif "one_or_more" in raw:
        if raw["one_or_more"] is not True:
            raise PatternError(f"{at}.one_or_more: expected true, got {raw['one_or_more']!r}")
        lo, hi = 1, None
    try:
        span = None if "within" not in raw else parse_duration(raw["within"], f"{at}.within")
    except ConfigError as exc:
        raise PatternError(str(exc)) from exc
    return StepSpec(name, preds, follow, lo, hi, span, raw["where"])


def parse_pattern(raw: object, index: int = 0) -> PatternSpec:
    """One ``[[patterns]]`` table; raises :class:`PatternError` naming the pattern, the step and the problem."""
    if not isinstance(raw, Mapping):
        raise PatternError(f"patterns[{index}]: expected a table, got {raw!r}")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise PatternError(f"patterns[{index}].name: expected a string, got {name!r}")
    where = f"patterns[{name}]"
    unknown = sorted(set(raw) - _PATTERN_KEYS)
    if unknown:
        raise PatternError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(_PATTERN_KEYS))}")
    steps_raw = raw.get("steps")
    if not isinstance(steps_raw, list) or not steps_raw:
        raise PatternError(f"{where}.steps: expected one or more [[patterns.steps]] tables, got {steps_raw!r}")
    steps = tuple(_step(s, where, i) for i, s in enumerate(steps_raw))
    devices = raw.get("devices", [])
    if not isinstance(devices, list) or not all(isinstance(d, str) and d for d in devices):
        raise PatternError(f"{where}.devices: expected a list of glob patterns, got {devices!r}")
    message = raw.get("message", "")
    if not isinstance(message, str):
        raise PatternError(f"{where}.message: expected a string, got {message!r}")
    try:
        within = None if "within" not in raw else parse_duration(raw["within"], f"{where}.within")
    except ConfigError as exc:
        raise PatternError(str(exc)) from exc
    spec = PatternSpec(
        name=name,
        steps=steps,
        key=raw.get("key", "device"),
        within_ms=within,
        severity=raw.get("severity", "warning"),
        skip=raw.get("skip", "skip_past_last_event"),
        devices=tuple(devices),
        message=message,
        on=raw.get("on", "event_time"),
    )
    return validate(spec)


def parse_patterns(section: object) -> tuple[PatternSpec, ...]:
    """The ``[[patterns]]`` list (``None`` or absent: no patterns); names must be unique."""
    return parse_named_tables(section, "patterns", parse_pattern, PatternError)
