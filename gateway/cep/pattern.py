"""Pattern specs (frozen values), the Python builder, and the checks that make a malformed pattern fail early.

>>> from gateway.cep import Pattern
>>> spec = (
...     Pattern.begin("hot").where("temp_c > 80")
...     .followed_by("drop").where("pressure_hpa < 0.9 * hot.pressure_hpa")
...     .within("30s")
...     .build("overheat_pressure_drop", severity="critical")
... )
>>> [s.name for s in spec.steps], spec.within_ms
(['hot', 'drop'], 30000)

Every error names the pattern and the step: ``patterns[overheat].steps[drop].where: ...``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Final, Literal

from ..engine.config import parse_duration
from ..errors import ConfigError
from .expr import PREV, Comparison, ExprError, Ref, parse_condition

__all__ = [
    "ALERT_PATHS",
    "GROUP_PREFIX",
    "SKIP_STRATEGIES",
    "AlertPath",
    "Follow",
    "KeyKind",
    "Pattern",
    "PatternError",
    "PatternSpec",
    "SkipStrategy",
    "StepSpec",
    "validate",
]

Follow = Literal["begin", "next", "followed_by", "not_followed_by"]
KeyKind = str
"""``device``, ``site``, ``group`` (each declared group) or ``group:<name>`` (one group of ``[groups]``, docs/cep.md
"Groups")."""
GROUP_PREFIX: Final = "group:"
_GROUP_NAME_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,32}")
SkipStrategy = Literal["skip_past_last_event", "no_skip"]
SKIP_STRATEGIES: Final = ("skip_past_last_event", "no_skip")
SEVERITIES: Final = ("info", "warning", "critical")
AlertPath = Literal["event_time", "arrival", "both"]
ALERT_PATHS: Final = ("event_time", "arrival", "both")
"""``on``: after the watermark, in event-time order (exact; the default); on arrival, reading by reading in
processing order (fast, may be wrong under disorder); or both, the event-time path giving each fast alert its
verdict (docs/cep.md, "Fast alerts")."""
UNBOUNDED: Final = None
_STEP_RE: Final = re.compile(r"[a-z][a-z0-9_]{0,31}")
_PATTERN_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class PatternError(ConfigError):
    """A pattern is malformed; the message names the pattern, the step and the problem."""


@dataclass(frozen=True, slots=True)
class StepSpec:
    """One named step.

    ``follow`` says how its first reading relates to the previous step's last one: ``next`` (strict: the
    very next reading of the key), ``followed_by`` (relaxed: readings that match nothing are skipped), or
    ``not_followed_by`` (a negation: no reading satisfying ``where`` may come before the next step, or,
    at the end of a pattern, within ``within_ms`` of the previous step). A quantified step's own readings
    follow each other with the same contiguity. ``max_count`` ``None`` means unbounded.
    """

    name: str
    where: tuple[Comparison, ...]
    follow: Follow = "followed_by"
    min_count: int = 1
    max_count: int | None = 1
    within_ms: int | None = None
    source: str = ""

    @property
    def negated(self) -> bool:
        return self.follow == "not_followed_by"

    @property
    def strict(self) -> bool:
        return self.follow == "next"

    def metrics(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c.metric for c in self.where))


@dataclass(frozen=True, slots=True)
class PatternSpec:
    """A declared pattern: steps in order, a key, an optional bound on the whole match, what to raise.

    ``devices`` (glob patterns) limits the pattern to some devices (empty: all). ``within_ms`` bounds the
    event time from the first to the last positive reading of a match. ``skip`` is the after-match skip
    strategy (see ``docs/cep.md``). ``on`` chooses the path(s) that raise its alerts (:data:`ALERT_PATHS`); it
    is left out of the repr, which the checkpoint's configuration fingerprint reads: the event-time state does
    not depend on it (``gateway.app`` adds it to the fingerprint when it is not the default).
    """

    name: str
    steps: tuple[StepSpec, ...]
    key: KeyKind = "device"
    within_ms: int | None = None
    severity: Literal["info", "warning", "critical"] = "warning"
    skip: SkipStrategy = "skip_past_last_event"
    devices: tuple[str, ...] = ()
    message: str = ""
    on: AlertPath = field(default="event_time", repr=False)

    def metrics(self) -> frozenset[str]:
        """The metrics the conditions name: the pattern sees only readings that carry one of them."""
        return frozenset(m for s in self.steps for m in s.metrics())


def _refs(step: StepSpec) -> list[Ref]:
    return [c.value for c in step.where if isinstance(c.value, Ref)]


def validate(spec: PatternSpec) -> PatternSpec:
    """Check a pattern; returns it unchanged or raises :class:`PatternError` naming the step and the problem."""
    where = f"patterns[{spec.name}]"
    if not isinstance(spec.name, str) or not _PATTERN_RE.fullmatch(spec.name):
        raise PatternError(f"patterns[{spec.name!r}].name: expected 1-64 of [A-Za-z0-9_.-]")
    if spec.key not in ("device", "site", "group") and not (
        isinstance(spec.key, str)
        and spec.key.startswith(GROUP_PREFIX)
        and _GROUP_NAME_RE.fullmatch(spec.key[len(GROUP_PREFIX) :])
    ):
        raise PatternError(f"{where}.key: expected 'device', 'site', 'group' or 'group:<name>', got {spec.key!r}")
    if spec.severity not in SEVERITIES:
        raise PatternError(f"{where}.severity: expected one of {', '.join(SEVERITIES)}, got {spec.severity!r}")
    if spec.skip not in SKIP_STRATEGIES:
        raise PatternError(f"{where}.skip: expected one of {', '.join(SKIP_STRATEGIES)}, got {spec.skip!r}")
    if spec.on not in ALERT_PATHS:
        raise PatternError(f"{where}.on: expected one of {', '.join(ALERT_PATHS)}, got {spec.on!r}")
    if spec.within_ms is not None and spec.within_ms <= 0:
        raise PatternError(f"{where}.within: must be positive, got {spec.within_ms}")
    if not spec.steps:
        raise PatternError(f"{where}.steps: a pattern needs at least one step")
    seen: dict[str, StepSpec] = {}
    for i, step in enumerate(spec.steps):
        at = f"{where}.steps[{step.name}]"
        if not _STEP_RE.fullmatch(step.name) or step.name in (PREV, "and", "in", "true", "false"):
            raise PatternError(f"{where}.steps[{i}].name: {step.name!r} is not a step name ([a-z][a-z0-9_]{{0,31}})")
        if step.name in seen:
            raise PatternError(f"{at}.name: two steps are named {step.name!r}")
        if not step.where:
            raise PatternError(f"{at}.where: a step needs a condition")
        if i == 0:
            if step.follow != "begin":
                raise PatternError(f"{at}: the first step cannot be {step.follow!r} (nothing comes before it)")
        elif step.follow not in ("next", "followed_by", "not_followed_by"):
            raise PatternError(f"{at}.follow: expected next, followed_by or not_followed_by, got {step.follow!r}")
        if step.min_count < 1:
            raise PatternError(f"{at}: a step needs at least 1 reading, got {step.min_count}")
        if step.max_count is not None and step.max_count < step.min_count:
            raise PatternError(f"{at}: at most {step.max_count} is below at least {step.min_count}")
        if step.negated:
            prev_step = spec.steps[i - 1]
            if (step.min_count, step.max_count) != (1, 1):
                raise PatternError(f"{at}: a negation (not_followed_by) takes no quantifier")
            if prev_step.negated:
                raise PatternError(f"{at}: two negations in a row; merge their conditions into one step")
            if prev_step.min_count != prev_step.max_count:
                raise PatternError(
                    f"{at}: a negation must follow a step with a fixed count (times), "
                    f"but {prev_step.name!r} takes at least {prev_step.min_count}"
                )
            last = i == len(spec.steps) - 1
            if last and step.within_ms is None:
                raise PatternError(f"{at}.within: a negation at the end of a pattern needs a 'within' span")
            if not last and step.within_ms is not None:
                raise PatternError(f"{at}.within: only a negation at the end of a pattern takes a span")
            if step.within_ms is not None and step.within_ms <= 0:
                raise PatternError(f"{at}.within: must be positive, got {step.within_ms}")
        elif step.within_ms is not None:
            raise PatternError(f"{at}.within: only a not_followed_by step takes a span; use the pattern's within")
        for ref in _refs(step):
            if ref.step == PREV:
                if i == 0:
                    raise PatternError(f"{at}.where: 'prev.{ref.metric}': the first step has no earlier reading")
                continue
            if ref.step == step.name:
                raise PatternError(f"{at}.where: '{ref}' refers to the step itself; use prev.{ref.metric}")
            target = seen.get(ref.step)
            if target is None:
                later = any(s.name == ref.step for s in spec.steps)
                raise PatternError(
                    f"{at}.where: '{ref}' refers to "
                    + ("a later step" if later else f"an unknown step {ref.step!r}")
                    + f"; earlier steps: {', '.join(seen) or 'none'}"
                )
            if target.negated:
                raise PatternError(f"{at}.where: '{ref}' refers to a negation, which takes no reading")
        seen[step.name] = step
    if all(s.negated for s in spec.steps):
        raise PatternError(f"{where}.steps: a pattern needs a step that is not a negation")
    return spec


# --- the builder -----------------------------------------------------------------------------------


def _duration(value: int | str, where: str) -> int:
    try:
        return parse_duration(value, where)
    except ConfigError as exc:
        raise PatternError(str(exc)) from exc


@dataclass(frozen=True, slots=True)
class Pattern:
    """An immutable builder, in the style of Flink's ``Pattern`` API; every call returns a new builder.

    ``where`` takes a condition string (see :mod:`gateway.cep.expr`) or parsed comparisons; quantifiers
    (``times``, ``at_least``, ``one_or_more``) apply to the last step; ``within`` bounds the whole match.
    """

    steps: tuple[StepSpec, ...] = ()
    within_ms: int | None = None

    @staticmethod
    def begin(name: str) -> Pattern:
        return Pattern((StepSpec(name, (), "begin"),))

    def _add(self, name: str, follow: Follow, within: int | str | None = None) -> Pattern:
        span = None if within is None else _duration(within, f"steps[{name}].within")
        return replace(self, steps=(*self.steps, StepSpec(name, (), follow, within_ms=span)))

    def next(self, name: str) -> Pattern:
        return self._add(name, "next")

    def followed_by(self, name: str) -> Pattern:
        return self._add(name, "followed_by")

    def not_followed_by(self, name: str, within: int | str | None = None) -> Pattern:
        return self._add(name, "not_followed_by", within)

    def _last(self, **changes: object) -> Pattern:
        if not self.steps:
            raise PatternError("a pattern starts with Pattern.begin(name)")
        return replace(self, steps=(*self.steps[:-1], replace(self.steps[-1], **changes)))  # type: ignore[arg-type]

    def where(self, condition: str | Sequence[Comparison]) -> Pattern:
        step = self.steps[-1]
        if isinstance(condition, str):
            try:
                preds = parse_condition(condition)
            except ExprError as exc:
                raise PatternError(f"steps[{step.name}].where: {exc}") from exc
            return self._last(where=step.where + preds, source=" and ".join(filter(None, (step.source, condition))))
        preds = tuple(condition)
        return self._last(where=step.where + preds, source=" and ".join(str(c) for c in step.where + preds))

    def times(self, n: int) -> Pattern:
        return self._last(min_count=n, max_count=n)

    def at_least(self, n: int) -> Pattern:
        return self._last(min_count=n, max_count=None)

    def one_or_more(self) -> Pattern:
        return self.at_least(1)

    def within(self, span: int | str) -> Pattern:
        return replace(self, within_ms=_duration(span, "within"))

    def build(
        self,
        name: str,
        *,
        key: KeyKind = "device",
        severity: Literal["info", "warning", "critical"] = "warning",
        skip: SkipStrategy = "skip_past_last_event",
        devices: Sequence[str] = (),
        message: str = "",
        on: AlertPath = "event_time",
    ) -> PatternSpec:
        """The validated :class:`PatternSpec`; raises :class:`PatternError` if it is malformed."""
        return validate(PatternSpec(name, self.steps, key, self.within_ms, severity, skip, tuple(devices), message, on))
