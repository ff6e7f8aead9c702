"""Step conditions: a small expression language, parsed once into predicates, evaluated without ``eval``.

A condition is one or more comparisons joined by ``and``::

    temp_c > 80
    status == "FAILED"
    door != "closed" and battery_mv >= 3300
    rh in [20, 60]                        # an inclusive range
    pressure_hpa < 0.9 * hot.pressure_hpa # relative to the last reading taken by the earlier step ``hot``
    vib > prev.vib                        # relative to the reading taken just before this one
    temp_c >= first.temp_c + 5            # ``<factor> * <step>.<metric> <+|-> <offset>``, both optional

Strings compare only with ``==`` and ``!=``. A reading that lacks the metric, or carries a value of
another type (a string where a number is expected), does not satisfy the comparison; nothing raises at
run time. Errors in the text raise :class:`ExprError` with the column.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from ..errors import ConfigError
from ..model import MetricValue

__all__ = ["PREV", "Comparison", "ExprError", "Op", "Ref", "Values", "compile_condition", "parse_condition"]

Op = Literal["==", "!=", "<", "<=", ">", ">=", "in"]
PREV: Final = "prev"
Values = Mapping[str, MetricValue]
"""A reading's metrics."""

_TOKEN: Final = re.compile(
    r"\s*(?:(?P<num>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)|(?P<str>\"[^\"]*\"|'[^']*')"
    r"|(?P<op>==|!=|<=|>=|<|>|\*|\+|-|\[|\]|,|\.)|(?P<name>[A-Za-z_][A-Za-z0-9_]*))"
)


class ExprError(ConfigError):
    """A condition's text is not valid; the message names the column and what was expected."""


@dataclass(frozen=True, slots=True)
class Ref:
    """``factor * <step>.<metric> + offset``: a value taken from an earlier reading of the same match."""

    step: str
    metric: str
    factor: float = 1.0
    offset: float = 0.0

    def __str__(self) -> str:
        text = f"{self.step}.{self.metric}"
        if self.factor != 1.0:
            text = f"{self.factor:g} * {text}"
        if self.offset:
            text += f" {'+' if self.offset > 0 else '-'} {abs(self.offset):g}"
        return text


@dataclass(frozen=True, slots=True)
class Comparison:
    """``metric op value``; ``value`` is a literal, a :class:`Ref`, or ``(low, high)`` for ``in``."""

    metric: str
    op: Op
    value: float | str | bool | Ref | tuple[float, float]

    def __str__(self) -> str:
        v = self.value
        if isinstance(v, tuple):
            return f"{self.metric} in [{v[0]:g}, {v[1]:g}]"
        if isinstance(v, str):
            return f'{self.metric} {self.op} "{v}"'
        if isinstance(v, bool):
            return f"{self.metric} {self.op} {'true' if v else 'false'}"
        return f"{self.metric} {self.op} {v if isinstance(v, Ref) else format(v, 'g')}"


def _tokens(text: str) -> list[tuple[str, str, int]]:
    out: list[tuple[str, str, int]] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            col = pos + len(text[pos:]) - len(text[pos:].lstrip()) + 1
            raise ExprError(f"unexpected {text[col - 1]!r} at column {col} in {text!r}")
        kind = m.lastgroup or ""
        out.append((kind, m.group(kind), m.start(kind) + 1))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = _tokens(text)
        self.i = 0

    def fail(self, expected: str) -> ExprError:
        if self.i < len(self.toks):
            _, val, col = self.toks[self.i]
            return ExprError(f"expected {expected} at column {col} ({val!r}) in {self.text!r}")
        return ExprError(f"expected {expected} at the end of {self.text!r}")

    def peek(self, value: str | None = None, kind: str | None = None) -> bool:
        if self.i >= len(self.toks):
            return False
        k, v, _ = self.toks[self.i]
        return (value is None or v == value) and (kind is None or k == kind)

    def take(self, expected: str, value: str | None = None, kind: str | None = None) -> str:
        if not self.peek(value, kind):
            raise self.fail(expected)
        v = self.toks[self.i][1]
        self.i += 1
        return v

    def number(self) -> float:
        v = float(self.take("a number", kind="num"))
        if not math.isfinite(v):
            raise self.fail("a finite number")
        return v

    def parse(self) -> tuple[Comparison, ...]:
        if not self.toks:
            raise ExprError("empty condition: expected a comparison such as 'temp_c > 80'")
        preds = [self.comparison()]
        while self.peek("and", "name"):
            self.i += 1
            preds.append(self.comparison())
        if self.i < len(self.toks):
            raise self.fail("'and' or the end of the condition")
        return tuple(preds)

    def comparison(self) -> Comparison:
        metric = self.take("a metric name", kind="name")
        if metric in ("and", "in", "true", "false"):
            self.i -= 1
            raise self.fail("a metric name")
        if self.peek("in", "name"):
            self.i += 1
            self.take("'['", "[")
            low = self.number()
            self.take("','", ",")
            high = self.number()
            self.take("']'", "]")
            if low > high:
                raise ExprError(f"empty range [{low:g}, {high:g}] for {metric!r} in {self.text!r}")
            return Comparison(metric, "in", (low, high))
        if not self.peek(kind="op") or self.toks[self.i][1] not in ("==", "!=", "<", "<=", ">", ">="):
            raise self.fail("a comparison operator (==, !=, <, <=, >, >= or in)")
        op: Op = self.toks[self.i][1]  # type: ignore[assignment]
        self.i += 1
        value = self.operand()
        if isinstance(value, str) and op not in ("==", "!="):
            raise ExprError(f"strings compare only with == and !=, got {metric} {op} {value!r} in {self.text!r}")
        if isinstance(value, bool) and op not in ("==", "!="):
            raise ExprError(f"booleans compare only with == and !=, got {metric} {op} in {self.text!r}")
        return Comparison(metric, op, value)

    def operand(self) -> float | str | bool | Ref:
        if self.peek(kind="str"):
            return self.take("a string", kind="str")[1:-1]
        if self.peek("true", "name") or self.peek("false", "name"):
            return self.take("a boolean", kind="name") == "true"
        factor = 1.0
        if self.peek(kind="num"):
            num = self.number()
            if not self.peek("*"):
                return num
            self.i += 1
            factor = num
        step = self.take("a number, a string, true, false or <step>.<metric>", kind="name")
        self.take(f"'.' after {step!r} (a reference is <step>.<metric>)", ".")
        metric = self.take("a metric name after '.'", kind="name")
        offset = 0.0
        if self.peek("+") or self.peek("-"):
            sign = 1.0 if self.take("'+' or '-'", kind="op") == "+" else -1.0
            offset = sign * self.number()
        elif self.peek(kind="num") and self.toks[self.i][1][0] in "+-":
            offset = self.number()  # "x.y -5" tokenises as a signed number
        return Ref(step, metric, factor, offset)


def parse_condition(text: str) -> tuple[Comparison, ...]:
    """The comparisons of ``text`` (joined by ``and``); raises :class:`ExprError` naming the column."""
    if not isinstance(text, str):
        raise ExprError(f"expected a condition string, got {text!r}")
    return _Parser(text).parse()


# --- evaluation ------------------------------------------------------------------------------------

Context = Sequence[Values | None]
"""The last reading taken by each step of the match so far (by step index), ``None`` where none yet."""


class Condition:
    """A compiled condition: ``cond(metrics, last_by_step, previous_reading)``. The pattern matcher calls
    :meth:`test`, a method of a class of this module: compiled, a native call (a function made per comparison was a
    generic call, its arguments parsed from a tuple, about a third of a pattern's first-step work)."""

    def test(self, m: Values, last: Context, prev: Values | None) -> bool:
        raise NotImplementedError

    def __call__(self, m: Values, last: Context, prev: Values | None) -> bool:
        return self.test(m, last, prev)


def _get(m: Values, name: str) -> MetricValue | None:
    if isinstance(m, dict):  # a reading's own metrics: compiled, the dict's look-up instead of a method call
        return m.get(name)
    return m.get(name)


def _num(v: object) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


_LT: Final = 0
_LE: Final = 1
_GT: Final = 2
_GE: Final = 3
_EQ: Final = 4
_NE: Final = 5
_OPS: Final = {"<": _LT, "<=": _LE, ">": _GT, ">=": _GE, "==": _EQ, "!=": _NE}


def _compare(op: int, a: float, b: float) -> bool:
    if op == _LT:
        return a < b
    if op == _LE:
        return a <= b
    if op == _GT:
        return a > b
    if op == _GE:
        return a >= b
    if op == _EQ:
        return a == b
    return a != b


class _InRange(Condition):
    def __init__(self, metric: str, low: float, high: float) -> None:
        self.metric, self.low, self.high = metric, low, high

    def test(self, m: Values, last: Context, prev: Values | None) -> bool:
        x = _num(_get(m, self.metric))
        return x is not None and self.low <= x <= self.high


class _Relative(Condition):
    def __init__(self, metric: str, op: int, idx: int, ref: Ref) -> None:
        self.metric, self.op, self.idx = metric, op, idx
        self.ref_metric, self.factor, self.offset = ref.metric, ref.factor, ref.offset

    def test(self, m: Values, last: Context, prev: Values | None) -> bool:
        x = _num(_get(m, self.metric))
        if x is None:
            return False
        other = prev if self.idx < 0 else last[self.idx]
        if other is None:
            return False
        y = _num(_get(other, self.ref_metric))
        return y is not None and _compare(self.op, x, self.factor * y + self.offset)


class _Equals(Condition):
    def __init__(self, metric: str, literal: str | bool, want: bool) -> None:
        self.metric, self.literal, self.want = metric, literal, want

    def test(self, m: Values, last: Context, prev: Values | None) -> bool:
        v = _get(m, self.metric)
        if v is None or type(v) is not type(self.literal):
            return False
        return (v == self.literal) is self.want


class _LiteralCmp(Condition):
    def __init__(self, metric: str, op: int, bound: float) -> None:
        self.metric, self.op, self.bound = metric, op, bound

    def test(self, m: Values, last: Context, prev: Values | None) -> bool:
        x = _num(_get(m, self.metric))
        return x is not None and _compare(self.op, x, self.bound)


class _AllOf(Condition):
    def __init__(self, parts: tuple[Condition, ...]) -> None:
        self.parts = parts

    def test(self, m: Values, last: Context, prev: Values | None) -> bool:
        for p in self.parts:
            if not p.test(m, last, prev):
                return False
        return True


def _compile_one(c: Comparison, step_index: Mapping[str, int]) -> Condition:
    metric, op, value = c.metric, c.op, c.value
    if isinstance(value, tuple):
        low, high = value
        return _InRange(metric, low, high)
    if isinstance(value, Ref):
        return _Relative(metric, _OPS[op], -1 if value.step == PREV else step_index[value.step], value)
    if isinstance(value, (str, bool)):
        return _Equals(metric, value, op == "==")
    return _LiteralCmp(metric, _OPS[op], float(value))


def compile_condition(preds: Sequence[Comparison], step_index: Mapping[str, int]) -> Condition:
    """One condition for a conjunction; ``step_index`` maps step names to their index (refs are resolved)."""
    parts = tuple(_compile_one(c, step_index) for c in preds)
    if len(parts) == 1:
        return parts[0]
    return _AllOf(parts)
