"""Incremental, mergeable aggregates: count, sum, mean, min, max, stddev, first, last.

Each aggregate is an object with ``initial()``, ``add(acc, value, order)``, ``merge(a, b)`` and
``result(acc)`` over a small tuple, so windows can add one value at a time and sliding or session windows
can merge partial results. ``order`` is the reading's ``(event time, boot, seq)``: ``first`` and ``last``
are by event time, ties broken by the reading's identity, so they do not depend on arrival order.

The window operators use :class:`Summary`, which fuses all eight into one flat list per window and
metric (one call per value instead of eight); the per-aggregate objects define the semantics and are
tested against it. Variance is Welford's update with Chan's parallel merge, which stays accurate where
the naive sum of squares cancels catastrophically. ``stddev`` is the *sample* standard deviation
(``n - 1``, as InfluxDB's ``stddev()``) and has no value for fewer than two readings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "AGGREGATES",
    "Aggregator",
    "Order",
    "Summary",
    "summary_add",
    "summary_merge",
    "summary_new",
    "summary_result",
]

Order = tuple[int, int, int]
"""A reading's position for first/last: (event time ms, boot, seq)."""


@dataclass(frozen=True)  # neither slots=True nor Generic: mypyc compiles neither into a native class
class Aggregator:
    """One aggregate as four pure functions over an immutable accumulator."""

    name: str
    initial: Any  # () -> A
    add: Any  # (A, float, Order) -> A
    merge: Any  # (A, A) -> A
    result: Any  # (A) -> float | int | None


def _var_add(acc: tuple[int, float, float], v: float, _o: Order) -> tuple[int, float, float]:
    n, mean, m2 = acc
    n += 1
    d = v - mean
    mean += d / n
    return n, mean, m2 + d * (v - mean)


def _var_merge(a: tuple[int, float, float], b: tuple[int, float, float]) -> tuple[int, float, float]:
    na, ma, qa = a
    nb, mb, qb = b
    if na == 0:
        return b
    if nb == 0:
        return a
    n = na + nb
    d = mb - ma
    return n, ma + d * nb / n, qa + qb + d * d * na * nb / n


def _stddev(acc: tuple[int, float, float]) -> float | None:
    n, _, m2 = acc
    return math.sqrt(max(m2, 0.0) / (n - 1)) if n >= 2 else None


_NONE_PICK: Final = (None, 0.0)


def _pick(better: Any) -> tuple[Any, Any]:
    def add(acc: tuple[Order | None, float], v: float, o: Order) -> tuple[Order | None, float]:
        return (o, v) if acc[0] is None or better(o, acc[0]) else acc

    def merge(a: tuple[Order | None, float], b: tuple[Order | None, float]) -> tuple[Order | None, float]:
        if a[0] is None:
            return b
        if b[0] is None:
            return a
        return b if better(b[0], a[0]) else a

    return add, merge


_first_add, _first_merge = _pick(lambda o, cur: o < cur)
_last_add, _last_merge = _pick(lambda o, cur: o > cur)


def _minmax(fn: Any) -> tuple[Any, Any]:
    def add(acc: float | None, v: float, _o: Order) -> float:
        return v if acc is None else fn(acc, v)

    def merge(a: float | None, b: float | None) -> float | None:
        return b if a is None else a if b is None else fn(a, b)

    return add, merge


_min_add, _min_merge = _minmax(min)
_max_add, _max_merge = _minmax(max)

AGGREGATES: Final[dict[str, Aggregator]] = {
    "count": Aggregator("count", lambda: 0, lambda a, v, o: a + 1, lambda a, b: a + b, lambda a: a),
    "sum": Aggregator("sum", lambda: 0.0, lambda a, v, o: a + v, lambda a, b: a + b, lambda a: a),
    "mean": Aggregator(
        "mean",
        lambda: (0, 0.0, 0.0),
        _var_add,
        _var_merge,
        lambda a: a[1] if a[0] else None,
    ),
    "min": Aggregator("min", lambda: None, _min_add, _min_merge, lambda a: a),
    "max": Aggregator("max", lambda: None, _max_add, _max_merge, lambda a: a),
    "stddev": Aggregator("stddev", lambda: (0, 0.0, 0.0), _var_add, _var_merge, _stddev),
    "first": Aggregator("first", lambda: _NONE_PICK, _first_add, _first_merge, lambda a: a[1] if a[0] else None),
    "last": Aggregator("last", lambda: _NONE_PICK, _last_add, _last_merge, lambda a: a[1] if a[0] else None),
}
"""The aggregates a window may ask for, by name."""

# ---------------------------------------------------------------------------------------------------
# The fused accumulator the operators keep: one flat list (JSON-able as it is).
# [n, mean, m2, sum, min, max, first_t, first_b, first_s, first_v, last_t, last_b, last_s, last_v]

Summary = list[Any]
"""All eight aggregates of one metric in one window (or pane, or session), as a flat list."""


def summary_new(v: float, t: int, b: int, s: int) -> Summary:
    """The summary of a single value."""
    return [1, v, 0.0, v, v, v, t, b, s, v, t, b, s, v]


def summary_add(a: Summary, v: float, t: int, b: int, s: int) -> None:
    """Add one value in place (Welford)."""
    n = a[0] + 1
    a[0] = n
    d = v - a[1]
    mean = a[1] + d / n
    a[1] = mean
    a[2] += d * (v - mean)
    a[3] += v
    if v < a[4]:
        a[4] = v
    if v > a[5]:
        a[5] = v
    if t < a[6] or (t == a[6] and (b < a[7] or (b == a[7] and s < a[8]))):
        a[6] = t
        a[7] = b
        a[8] = s
        a[9] = v
    if t > a[10] or (t == a[10] and (b > a[11] or (b == a[11] and s > a[12]))):
        a[10] = t
        a[11] = b
        a[12] = s
        a[13] = v


def summary_merge(a: Summary, b: Summary) -> Summary:
    """A new summary of both inputs (Chan's parallel variance); neither input is changed."""
    na = a[0]
    nb = b[0]
    n = na + nb
    d = b[1] - a[1]
    first = a[6:10] if (a[6], a[7], a[8]) <= (b[6], b[7], b[8]) else b[6:10]
    last = a[10:14] if (a[10], a[11], a[12]) >= (b[10], b[11], b[12]) else b[10:14]
    return [
        n,
        a[1] + d * nb / n,
        a[2] + b[2] + d * d * na * nb / n,
        a[3] + b[3],
        a[4] if a[4] <= b[4] else b[4],
        a[5] if a[5] >= b[5] else b[5],
        *first,
        *last,
    ]


def summary_result(a: Summary, names: tuple[str, ...]) -> dict[str, float]:
    """The requested aggregates (other than ``count``) as floats; ``stddev`` is absent below n = 2."""
    out: dict[str, float] = {}
    for name in names:
        if name == "sum":
            out["sum"] = float(a[3])
        elif name == "mean":
            out["mean"] = float(a[1])
        elif name == "min":
            out["min"] = float(a[4])
        elif name == "max":
            out["max"] = float(a[5])
        elif name == "stddev":
            if a[0] >= 2:
                out["stddev"] = math.sqrt(max(a[2], 0.0) / (a[0] - 1))
        elif name == "first":
            out["first"] = float(a[9])
        elif name == "last":
            out["last"] = float(a[13])
    return out


# ---------------------------------------------------------------------------------------------------
# Flat accumulators for the operators: the metrics of one window (or pane, or session) side by side in
# one list, ``FIELDS`` slots per metric at ``base = metric index * FIELDS``:
# [n, sum, min, max, welford_mean, m2, first_order, first_v, last_order, last_v]
# ``n == 0`` means the metric has no value there (the other slots are then meaningless). ``order`` is one
# integer that sorts like ``(t, boot, seq)`` (see :func:`order_key`), so first/last cost one comparison.
# Values are floats, typed ``Any`` so that compiled code (mypyc) passes the float object on and stores it,
# where a ``float`` would be unboxed and boxed into a new object at every store.

FIELDS: Final = 10
Acc = list[Any]
"""The flat accumulator of one window's metrics (JSON-able as it is)."""

_BOOT_SHIFT: Final = 1 << 31  # boot and seq are 0..2^31-1 (docs/protocol.md)
_T_SHIFT: Final = 1 << 62


def order_key(t: int, b: int, s: int) -> int:
    """One integer ordered exactly as ``(t, b, s)`` for ``0 <= b, s < 2**31``."""
    return t * _T_SHIFT + b * _BOOT_SHIFT + s


def acc_empty(metrics: int) -> Acc:
    return [0, 0.0, 0.0, 0.0, 0.0, 0.0, 0, 0.0, 0, 0.0] * metrics


def acc_add(a: Acc, i: int, v: Any, o: int) -> None:
    """Add value ``v`` with order ``o`` to the metric at ``base = i``; no variance (see :func:`acc_add_var`)."""
    n = a[i]
    if n:
        a[i] = n + 1
        a[i + 1] += v
        if v < a[i + 2]:
            a[i + 2] = v
        elif v > a[i + 3]:
            a[i + 3] = v
        if o < a[i + 6]:
            a[i + 6] = o
            a[i + 7] = v
        elif o > a[i + 8]:
            a[i + 8] = o
            a[i + 9] = v
    else:
        a[i : i + FIELDS] = (1, v, v, v, v, 0.0, o, v, o, v)


def acc_add_var(a: Acc, i: int, v: Any, o: int) -> None:
    """As :func:`acc_add`, also updating Welford's running mean and M2 (for ``stddev``)."""
    n = a[i]
    if n:
        n += 1
        a[i] = n
        a[i + 1] += v
        if v < a[i + 2]:
            a[i + 2] = v
        elif v > a[i + 3]:
            a[i + 3] = v
        mean = a[i + 4]
        d = v - mean
        mean += d / n
        a[i + 4] = mean
        a[i + 5] += d * (v - mean)
        if o < a[i + 6]:
            a[i + 6] = o
            a[i + 7] = v
        elif o > a[i + 8]:
            a[i + 8] = o
            a[i + 9] = v
    else:
        a[i : i + FIELDS] = (1, v, v, v, v, 0.0, o, v, o, v)


def acc_merge(a: Acc, b: Acc) -> Acc:
    """A new accumulator of both (Chan's parallel variance, metric by metric); neither input is changed."""
    out = list(a)
    acc_merge_into(out, b)
    return out


def acc_merge_into(out: Acc, b: Acc) -> None:
    """Merge ``b`` into ``out`` in place."""
    for i in range(0, len(b), FIELDS):
        nb = b[i]
        if not nb:
            continue
        na = out[i]
        if not na:
            out[i : i + FIELDS] = b[i : i + FIELDS]
            continue
        n = na + nb
        out[i] = n
        out[i + 1] += b[i + 1]
        if b[i + 2] < out[i + 2]:
            out[i + 2] = b[i + 2]
        if b[i + 3] > out[i + 3]:
            out[i + 3] = b[i + 3]
        d = b[i + 4] - out[i + 4]
        out[i + 4] += d * nb / n
        out[i + 5] += b[i + 5] + d * d * na * nb / n
        if b[i + 6] < out[i + 6]:
            out[i + 6] = b[i + 6]
            out[i + 7] = b[i + 7]
        if b[i + 8] > out[i + 8]:
            out[i + 8] = b[i + 8]
            out[i + 9] = b[i + 9]


def acc_result(a: Acc, i: int, names: tuple[str, ...]) -> dict[str, float]:
    """The requested aggregates (other than ``count``) of the metric at ``base = i``, in ``names`` order.

    ``mean`` is ``sum / n``; ``stddev`` (sample, n - 1) comes from Welford's M2 and is absent below n = 2.
    """
    out: dict[str, float] = {}
    n = a[i]
    for name in names:
        if name == "mean":
            out["mean"] = float(a[i + 1] / n)
        elif name == "sum":
            out["sum"] = float(a[i + 1])
        elif name == "min":
            out["min"] = float(a[i + 2])
        elif name == "max":
            out["max"] = float(a[i + 3])
        elif name == "stddev":
            if n >= 2:
                out["stddev"] = math.sqrt(max(a[i + 5], 0.0) / (n - 1))
        elif name == "first":
            out["first"] = float(a[i + 7])
        elif name == "last":
            out["last"] = float(a[i + 9])
    return out
