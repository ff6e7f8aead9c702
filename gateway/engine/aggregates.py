"""Incremental, mergeable aggregates: count, sum, mean, min, max, stddev, first, last.

Each aggregate is an object with ``initial()``, ``add(acc, value, order)``, ``merge(a, b)`` and
``result(acc)`` over a small tuple, so windows can add one value at a time and sliding or session windows
can merge partial results. ``order`` is the reading's ``(event time, boot, seq)``: ``first`` and ``last``
are by event time, ties broken by the reading's identity, so they do not depend on arrival order.

The window operators use :class:`Stat`, which fuses all eight into one object per window (or pane, or
session) and metric: one call per value instead of eight (their accumulators, ``accs.Acc``, hold the fields
of a Stat for each metric of a window in one object). The per-aggregate objects define the semantics
and are tested against it. Variance is Welford's update with Chan's parallel merge, which stays accurate where
the naive sum of squares cancels catastrophically. ``stddev`` is the *sample* standard deviation
(``n - 1``, as InfluxDB's ``stddev()``) and has no value for fewer than two readings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final

from mypy_extensions import mypyc_attr

__all__ = [
    "AGGREGATES",
    "FIELDS",
    "Aggregator",
    "Order",
    "Stat",
    "order_key",
    "order_parts",
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
# The accumulators the operators keep.

_LOW31: Final = (1 << 31) - 1


@mypyc_attr(acyclic=True)  # compiled: holds no references, so the cyclic garbage collector never scans it
class Stat:
    """Every aggregate of one metric over one window, pane or session; ``n == 0``: no value yet.

    ``mean``/``m2`` are Welford's running mean and sum of squared deviations (kept only by
    :meth:`add_var`, merged by Chan's formula); ``ft, fb, fs, fv`` and ``lt, lb, ls, lv`` are the first
    and last readings by ``(t, boot, seq)`` and their values. Compiled (mypyc) this is a native class
    whose ``float`` and small ``int`` attributes are unboxed C fields: adding a value allocates nothing.
    """

    __slots__ = ("fb", "fs", "ft", "fv", "hi", "lb", "lo", "ls", "lt", "lv", "m2", "mean", "n", "total")

    n: int
    total: float
    lo: float
    hi: float
    mean: float
    m2: float
    ft: int
    fb: int
    fs: int
    fv: float
    lt: int
    lb: int
    ls: int
    lv: float

    def __init__(self) -> None:
        self.n = 0
        self.total = self.lo = self.hi = self.mean = self.m2 = self.fv = self.lv = 0.0
        self.ft = self.fb = self.fs = self.lt = self.lb = self.ls = 0

    def _one(self, v: float, t: int, b: int, s: int) -> None:
        self.n = 1
        self.total = self.lo = self.hi = self.mean = self.fv = self.lv = v
        self.m2 = 0.0
        self.ft = self.lt = t
        self.fb = self.lb = b
        self.fs = self.ls = s

    def add(self, v: float, t: int, b: int, s: int) -> None:
        """Add one value read at ``(t, b, s)``; no variance (see :meth:`add_var`)."""
        n = self.n
        if not n:
            self._one(v, t, b, s)
            return
        self.n = n + 1
        self.total += v
        if v < self.lo:
            self.lo = v
        elif v > self.hi:
            self.hi = v
        self._order(v, t, b, s)

    def add_var(self, v: float, t: int, b: int, s: int) -> None:
        """As :meth:`add`, also updating Welford's running mean and M2 (for ``stddev``)."""
        n = self.n
        if not n:
            self._one(v, t, b, s)
            return
        n += 1
        self.n = n
        self.total += v
        if v < self.lo:
            self.lo = v
        elif v > self.hi:
            self.hi = v
        mean = self.mean
        d = v - mean
        mean += d / n
        self.mean = mean
        self.m2 += d * (v - mean)
        self._order(v, t, b, s)

    def _order(self, v: float, t: int, b: int, s: int) -> None:
        ft = self.ft
        if t < ft or (t == ft and (b < self.fb or (b == self.fb and s < self.fs))):
            self.ft = t
            self.fb = b
            self.fs = s
            self.fv = v
            return
        lt = self.lt
        if t > lt or (t == lt and (b > self.lb or (b == self.lb and s > self.ls))):
            self.lt = t
            self.lb = b
            self.ls = s
            self.lv = v

    def merge_from(self, o: Stat) -> None:
        """Merge ``o`` into this one (Chan's parallel variance); ``o`` is not changed."""
        self.merge_fields(o.n, o.total, o.lo, o.hi, o.mean, o.m2, o.ft, o.fb, o.fs, o.fv, o.lt, o.lb, o.ls, o.lv)

    def merge_fields(
        self,
        nb: int,
        total: float,
        lo: float,
        hi: float,
        mean: float,
        m2: float,
        ft: int,
        fb: int,
        fs: int,
        fv: float,
        lt: int,
        lb: int,
        ls: int,
        lv: float,
    ) -> None:
        """Merge in the Stat whose fields these are (as :meth:`merge_from`; the accumulators of ``accs`` hold
        the same fields per metric)."""
        if not nb:
            return
        if not self.n:
            self.set_fields(nb, total, lo, hi, mean, m2, ft, fb, fs, fv, lt, lb, ls, lv)
            return
        self.merge_kept(nb, total, lo, hi, mean, m2)
        f = self.ft
        if ft < f or (ft == f and (fb < self.fb or (fb == self.fb and fs < self.fs))):
            self.ft = ft
            self.fb = fb
            self.fs = fs
            self.fv = fv
        la = self.lt
        if lt > la or (lt == la and (lb > self.lb or (lb == self.lb and ls > self.ls))):
            self.lt = lt
            self.lb = lb
            self.ls = ls
            self.lv = lv

    def merge_kept(self, nb: int, total: float, lo: float, hi: float, mean: float, m2: float) -> None:
        """:meth:`merge_fields` but the first and last readings, which stay as they are (a sliding window's stack
        entries keep none: the window reads them from its panes)."""
        if not nb:
            return
        na = self.n
        if not na:
            self.n = nb
            self.total = total
            self.lo = lo
            self.hi = hi
            self.mean = mean
            self.m2 = m2
            return
        n = na + nb
        self.n = n
        self.total += total
        if lo < self.lo:
            self.lo = lo
        if hi > self.hi:
            self.hi = hi
        d = mean - self.mean
        self.mean += d * nb / n
        self.m2 += m2 + d * d * na * nb / n

    def set(self, o: Stat) -> None:
        """Become a copy of ``o``."""
        self.set_fields(o.n, o.total, o.lo, o.hi, o.mean, o.m2, o.ft, o.fb, o.fs, o.fv, o.lt, o.lb, o.ls, o.lv)

    def set_fields(
        self,
        n: int,
        total: float,
        lo: float,
        hi: float,
        mean: float,
        m2: float,
        ft: int,
        fb: int,
        fs: int,
        fv: float,
        lt: int,
        lb: int,
        ls: int,
        lv: float,
    ) -> None:
        """Become the Stat whose fields these are (as :meth:`set`)."""
        self.n = n
        self.total = total
        self.lo = lo
        self.hi = hi
        self.mean = mean
        self.m2 = m2
        self.ft = ft
        self.fb = fb
        self.fs = fs
        self.fv = fv
        self.lt = lt
        self.lb = lb
        self.ls = ls
        self.lv = lv

    def clear(self) -> None:
        """Back to no value (as new). Written out rather than called from ``__init__``: compiled, the fields
        assigned in ``__init__`` itself are known to be always set, and read without a check."""
        self.n = 0
        self.total = self.lo = self.hi = self.mean = self.m2 = self.fv = self.lv = 0.0
        self.ft = self.fb = self.fs = self.lt = self.lb = self.ls = 0

    def copy(self) -> Stat:
        c = Stat()
        c.set(self)
        return c

    def aggregate(self, names: tuple[str, ...]) -> dict[str, float]:
        """The requested aggregates (other than ``count``) in ``names`` order.

        ``mean`` is ``sum / n``; ``stddev`` (sample, n - 1) comes from Welford's M2 and is absent below n = 2.
        """
        out: dict[str, float] = {}
        n = self.n
        for name in names:
            if name == "mean":
                out["mean"] = self.total / n
            elif name == "sum":
                out["sum"] = self.total
            elif name == "min":
                out["min"] = self.lo
            elif name == "max":
                out["max"] = self.hi
            elif name == "stddev":
                if n >= 2:
                    out["stddev"] = math.sqrt(max(self.m2, 0.0) / (n - 1))
            elif name == "first":
                out["first"] = self.fv
            elif name == "last":
                out["last"] = self.lv
        return out

    def to_json(self) -> list[Any]:
        """``[n, sum, min, max, mean, m2, first order, first value, last order, last value]``."""
        return [
            self.n,
            self.total,
            self.lo,
            self.hi,
            self.mean,
            self.m2,
            order_key(self.ft, self.fb, self.fs),
            self.fv,
            order_key(self.lt, self.lb, self.ls),
            self.lv,
        ]

    @staticmethod
    def from_json(x: list[Any], i: int = 0) -> Stat:
        """The inverse of :meth:`to_json`, reading ``x[i : i + FIELDS]``."""
        st = Stat()
        st.n = int(x[i])
        st.total = float(x[i + 1])
        st.lo = float(x[i + 2])
        st.hi = float(x[i + 3])
        st.mean = float(x[i + 4])
        st.m2 = float(x[i + 5])
        st.ft, st.fb, st.fs = order_parts(int(x[i + 6]))
        st.fv = float(x[i + 7])
        st.lt, st.lb, st.ls = order_parts(int(x[i + 8]))
        st.lv = float(x[i + 9])
        return st


# In snapshots a Stat is ``FIELDS`` values (:meth:`Stat.to_json`); an accumulator of several metrics
# (``accs.Acc``) is their concatenation.

FIELDS: Final = 10

_BOOT_SHIFT: Final = 1 << 31  # boot and seq are 0..2^31-1 (docs/protocol.md)
_T_SHIFT: Final = 1 << 62


def order_key(t: int, b: int, s: int) -> int:
    """One integer ordered exactly as ``(t, b, s)`` for ``0 <= b, s < 2**31``."""
    return t * _T_SHIFT + b * _BOOT_SHIFT + s


def order_parts(o: int) -> tuple[int, int, int]:
    """The inverse of :func:`order_key`."""
    return o >> 62, (o >> 31) & _LOW31, o & _LOW31
