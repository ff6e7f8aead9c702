"""``[[joins]]`` in the gateway's TOML file: interval joins of two streams, parsed into :class:`JoinSpec` values.

```toml
[[joins]]
name = "door_then_cold"
key = "site"                  # or "property:<name>" ([devices.properties]) or "group:<name>" ([groups])
between = "b.t BETWEEN a.t AND a.t + 2m"   # the event-time interval, as Flink SQL writes it
allowed_lateness = "0s"       # optional: readings up to this much behind the key's watermark still join
max_events = 10000            # optional: events one key may hold (waiting + kept); the oldest beyond it is shed
alert = "warning"             # optional: every joined record also an alert of this severity
message = "door opened, then the temperature fell"   # optional: the alert's text

[joins.a]
devices = ["door-*"]          # optional glob patterns on the device id (default: every device)
metrics = ["door"]            # the values a joined record carries; a reading takes part if it has one of them
where = "door == 1"           # optional: a condition in the patterns' expression language

[joins.b]
devices = ["th-*"]
metrics = ["temp_c"]
where = "temp_c < a.temp_ref - 3"   # ``a.<metric>``: the other side's value (``b.<metric>`` from side a)
```

The interval bounds are offsets of ``b.t`` from ``a.t``, each ``a.t``, ``a.t + <duration>`` or ``a.t - <duration>``;
both ends are inclusive (Flink's ``between(lower, upper)``). ``docs/correlation.md`` says what the join emits
and when.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from ..cep.expr import PREV, Comparison, ExprError, Ref, parse_condition
from ..engine.config import parse_duration, parse_named_tables
from ..errors import ConfigError

__all__ = ["JoinError", "JoinSide", "JoinSpec", "check_joins", "parse_between", "parse_join", "parse_joins"]

_JOIN_KEYS: Final = {"name", "key", "between", "allowed_lateness", "max_events", "alert", "message", "a", "b"}
_SIDE_KEYS: Final = {"devices", "metrics", "where"}
_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_METRIC_RE: Final = re.compile(r"[a-z][a-z0-9_]{0,31}")
_PROPERTY_RE: Final = re.compile(r"[a-z][a-z0-9_]{0,31}")
_END: Final = r"\s*a\.t\s*(?:(?P<{0}sign>[+-])\s*(?P<{0}dur>[0-9.]+\s*[a-z]+))?\s*"
_BETWEEN_RE: Final = re.compile(
    r"\s*b\.t\s+between" + _END.format("lo") + r"and" + _END.format("hi") + r"$", re.IGNORECASE
)
SEVERITIES: Final = ("info", "warning", "critical")


class JoinError(ConfigError):
    """A ``[[joins]]`` table is not valid; the message names the join, the key and the problem."""


@dataclass(frozen=True, slots=True)
class JoinSide:
    """One input of a join: the readings of ``devices`` (globs; empty: all) carrying one of ``metrics`` and
    satisfying the literal comparisons of ``where`` (``filters``); ``refs`` compare with the other side's values
    and are checked on each pair."""

    metrics: tuple[str, ...]
    devices: tuple[str, ...] = ()
    where: str = ""
    filters: tuple[Comparison, ...] = ()
    refs: tuple[Comparison, ...] = ()


@dataclass(frozen=True, slots=True)
class JoinSpec:
    """``a`` joins ``b`` when both have the same key and ``a.t + lower_ms <= b.t <= a.t + upper_ms``."""

    name: str
    a: JoinSide
    b: JoinSide
    lower_ms: int
    upper_ms: int
    key: str = "site"
    """``site``, ``property:<name>`` or ``group:<name>``."""
    allowed_lateness_ms: int = 0
    max_events: int = 10_000
    alert: Literal["", "info", "warning", "critical"] = ""
    message: str = ""

    @property
    def key_kind(self) -> str:
        return self.key.split(":", 1)[0]

    @property
    def key_arg(self) -> str:
        return self.key.split(":", 1)[1] if ":" in self.key else ""

    @property
    def between(self) -> str:
        return f"b.t BETWEEN {_end(self.lower_ms)} AND {_end(self.upper_ms)}"


def _end(ms: int) -> str:
    if ms == 0:
        return "a.t"
    n = abs(ms)
    units = ((3_600_000, "h"), (60_000, "m"), (1000, "s"))
    text = next((f"{n // u}{name}" for u, name in units if n % u == 0), f"{n}ms")
    return f"a.t {'+' if ms > 0 else '-'} {text}"


def parse_between(text: object, where: str) -> tuple[int, int]:
    """``(lower_ms, upper_ms)`` of ``b.t BETWEEN a.t - 2m AND a.t + 30s``."""
    if not isinstance(text, str):
        raise JoinError(f"{where}: expected a string like 'b.t BETWEEN a.t - 2m AND a.t + 30s', got {text!r}")
    m = _BETWEEN_RE.fullmatch(text)
    if m is None:
        raise JoinError(f"{where}: expected 'b.t BETWEEN a.t [+|- <duration>] AND a.t [+|- <duration>]', got {text!r}")
    ends = []
    for part in ("lo", "hi"):
        dur = m.group(part + "dur")
        ms = 0 if dur is None else parse_duration(dur.replace(" ", ""), where)
        ends.append(-ms if m.group(part + "sign") == "-" else ms)
    lower, upper = ends
    if lower > upper:
        raise JoinError(f"{where}: the lower end {_end(lower)} is after the upper end {_end(upper)}")
    return lower, upper


def _strings(raw: Mapping[str, Any], key: str, at: str, pattern: re.Pattern[str] | None, what: str) -> tuple[str, ...]:
    v = raw.get(key, [])
    if not isinstance(v, list) or not all(isinstance(s, str) and s for s in v):
        raise JoinError(f"{at}.{key}: expected a list of {what}, got {v!r}")
    if pattern is not None:
        bad = [s for s in v if not pattern.fullmatch(s)]
        if bad:
            raise JoinError(f"{at}.{key}: not {what}: {bad!r}")
    return tuple(v)


def _side(raw: object, at: str, other: str) -> JoinSide:
    if not isinstance(raw, Mapping):
        raise JoinError(f"{at}: expected a table with metrics (and optionally devices, where), got {raw!r}")
    unknown = sorted(set(raw) - _SIDE_KEYS)
    if unknown:
        raise JoinError(f"{at}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(_SIDE_KEYS))}")
    metrics = _strings(raw, "metrics", at, _METRIC_RE, "metric names")
    if not metrics:
        raise JoinError(f"{at}.metrics: required, one or more metric names (the values a joined record carries)")
    devices = _strings(raw, "devices", at, None, "glob patterns")
    where = raw.get("where", "")
    filters: list[Comparison] = []
    refs: list[Comparison] = []
    if where != "":
        try:
            preds = parse_condition(where)
        except ExprError as exc:
            raise JoinError(f"{at}.where: {exc}") from exc
        for c in preds:
            if isinstance(c.value, Ref):
                if c.value.step != other:
                    name = "prev" if c.value.step == PREV else c.value.step
                    raise JoinError(
                        f"{at}.where: {c}: a join condition may refer to the other side only ({other}.<metric>), "
                        f"not {name!r}"
                    )
                refs.append(c)
            else:
                filters.append(c)
    return JoinSide(metrics=metrics, devices=devices, where=str(where), filters=tuple(filters), refs=tuple(refs))


def parse_join(raw: object, index: int = 0) -> JoinSpec:
    """One ``[[joins]]`` table; raises :class:`JoinError` naming the join and the key."""
    if not isinstance(raw, Mapping):
        raise JoinError(f"joins[{index}]: expected a table, got {raw!r}")
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise JoinError(f"joins[{index}].name: expected 1-64 of [A-Za-z0-9_.-], got {name!r}")
    at = f"joins[{name}]"
    unknown = sorted(set(raw) - _JOIN_KEYS)
    if unknown:
        raise JoinError(f"{at}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(_JOIN_KEYS))}")
    for side in ("a", "b"):
        if side not in raw:
            raise JoinError(f"{at}.{side}: required, a [joins.{side}] table with the {side} side's metrics")
    if "between" not in raw:
        raise JoinError(f"{at}.between: required, e.g. 'b.t BETWEEN a.t - 2m AND a.t + 30s'")
    lower, upper = parse_between(raw["between"], f"{at}.between")
    key = raw.get("key", "site")
    expected = "'site', 'property:<name>' ([devices.properties]) or 'group:<name>' ([groups])"
    if not isinstance(key, str):
        raise JoinError(f"{at}.key: expected {expected}, got {key!r}")
    if key != "site":
        kind, _, arg = key.partition(":")
        if not (kind == "property" and _PROPERTY_RE.fullmatch(arg)) and not (
            kind == "group" and _NAME_RE.fullmatch(arg)
        ):
            raise JoinError(f"{at}.key: expected {expected}, got {key!r}")
    try:
        lateness = parse_duration(raw.get("allowed_lateness", 0), f"{at}.allowed_lateness")
    except JoinError:
        raise
    except ConfigError as exc:
        raise JoinError(str(exc)) from exc
    max_events = raw.get("max_events", 10_000)
    if isinstance(max_events, bool) or not isinstance(max_events, int) or max_events < 2:
        raise JoinError(f"{at}.max_events: expected an integer of at least 2, got {max_events!r}")
    alert = raw.get("alert", "")
    if alert != "" and alert not in SEVERITIES:
        raise JoinError(f"{at}.alert: expected one of {', '.join(SEVERITIES)} (or leave it out), got {alert!r}")
    message = raw.get("message", "")
    if not isinstance(message, str):
        raise JoinError(f"{at}.message: expected a string, got {message!r}")
    return JoinSpec(
        name=name,
        a=_side(raw["a"], f"{at}.a", "b"),
        b=_side(raw["b"], f"{at}.b", "a"),
        lower_ms=lower,
        upper_ms=upper,
        key=key,
        allowed_lateness_ms=lateness,
        max_events=max_events,
        alert=alert,
        message=message,
    )


def parse_joins(section: object) -> tuple[JoinSpec, ...]:
    """The ``[[joins]]`` list (``None`` or absent: no joins); names must be unique."""
    return parse_named_tables(section, "joins", parse_join, JoinError)


def check_joins(
    joins: tuple[JoinSpec, ...], properties: Mapping[str, Mapping[str, str]], groups: Sequence[str] = ()
) -> None:
    """A join keyed by a property needs that property declared for at least one device; one keyed by a group, the
    group declared."""
    for j in joins:
        if j.key_kind == "group" and j.key_arg not in groups:
            raise JoinError(
                f"joins[{j.name}].key: no group {j.key_arg!r} in [groups] (declared: {', '.join(groups) or 'none'})"
            )
        if j.key_kind == "property" and not any(j.key_arg in p for p in properties.values()):
            raise JoinError(
                f"joins[{j.name}].key: no device declares property {j.key_arg!r} "
                f'(add it under [devices.properties], e.g. pump-1 = {{ {j.key_arg} = "a" }})'
            )
