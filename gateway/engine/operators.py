"""Window operators: tumbling, sliding (shared panes, two-stack aggregation) and session (merging).

Each operator is built from a :class:`~gateway.engine.config.WindowSpec` and keeps all its mutable data
per key (a device or a site). The engine drives it with two calls:

- ``add(key, site, device, t, boot, seq, values)`` puts one reading's values (one per metric, or None) in
  its window(s) against the watermark the operator last acted on; a reading whose every window is past
  ``end + allowed_lateness`` comes back at once as :class:`LateReading` outputs instead.
- ``advance(key, wm)`` (or ``advance_into(key, wm, out)``) moves the key's watermark (``key=None`` in
  shared mode: one watermark for every key), re-fires windows that late readings changed (``revision + 1``),
  fires windows whose end the watermark reached, and drops state past ``end + allowed_lateness``.

In shared mode (the global watermark) an advance visits only the keys that have something to do: each key
has a time in a queue of due times (a heap), at or before the first watermark at which it fires, re-fires or
drops anything (``NO_WM``: at the next advance, for a late change), and the keys whose time the watermark
reached are visited in the order their state was made, as a walk over every key would visit them.

Each key's watermark lives in a :class:`WmCell`. ``add_at`` and ``advance_at`` are the same two calls
with the key's cell passed in (``key_cell(key)`` for ``add``, ``cell(key)`` for ``advance``): the engine
keeps each device's cells, so that a reading does not look its key up twice in every operator.

``snapshot()`` returns the whole state as plain JSON-able values; ``restore()`` takes it back.
"""

from __future__ import annotations

from bisect import insort
from collections.abc import Callable, Set
from heapq import heappop, heappush
from math import copysign
from typing import Any, Final, Protocol

from mypy_extensions import mypyc_attr

from .accs import Acc, Part, Values, acc_empty, acc_from_json, part_empty
from .aggregates import FIELDS, Stat
from .config import WindowSpec
from .outputs import Fired, LateReading, Output, WindowResult
from .windows import first_window_end_after, pane_size

__all__ = [
    "Operator",
    "SessionOperator",
    "SlidingOperator",
    "TumblingOperator",
    "Values",
    "WindowOperator",
    "build_operator",
]

_NONE: Final[tuple[Output, ...]] = ()
_ID_MAX: Final = 0x7FFFFFFF
"""The largest boot and seq (docs/protocol.md)."""
NO_WM: Final = -(1 << 62)
"""No watermark yet (far below any event time a reading can have), where an unboxed int stands for one."""

CK_ALL: Final = NO_WM
"""A sliding key's ``ck_lo`` when every pane counts as changed since the last checkpoint (a new or restored key)."""
CK_NONE: Final = (1 << 62) - 1
"""A sliding key's ``ck_lo`` when no pane changed since the last checkpoint."""
CHUNK_PANES: Final = 16
"""A checkpoint writes a sliding window's panes in chunks of this many panes' span (each a row of its own,
``gateway.ckpt_rows``) when its windows span more panes than this; the chunks from the oldest pane changed since the
last checkpoint are written, the others stay as stored."""


def key_list(m: dict[str, Any], keys: Set[str] | None) -> list[str]:
    """The keys of ``m`` a snapshot takes: every one in ``m``'s order (``keys`` None), or those of ``keys`` in ``m``."""
    if keys is None:
        return list(m)
    return [k for k in keys if k in m]


@mypyc_attr(acyclic=True)
class WmCell:
    """A key's watermark, updated in place (compiled: an unboxed int, no int object made per update; it refers to
    nothing, so the collector need not track it: 32 bytes, not 48)."""

    __slots__ = ("v",)

    def __init__(self, v: int) -> None:
        self.v = v


@mypyc_attr(acyclic=True)
class Single(Acc):
    """A sliding window's pane that holds one reading (of up to four metrics): the reading itself, a fifth of an
    accumulator or less. A pane of a board that reads once per pane - the common case of a 60 s/1 s window - stays
    one of these; a second reading turns it into an accumulator. As a source (merged, copied, in a snapshot) it is
    exactly the accumulator one ``add`` of its reading makes (``Acc.merge_reading``; :meth:`fill` for a snapshot).

    Made by :func:`_single`, as one of three classes: :class:`SinglePacked` (64 bytes compiled, the common case:
    the reading's boot below 1,024 and its time within 131 s of the pane's start), :class:`SingleWide` (72 bytes,
    any other reading) and :class:`Single4` (four metrics, 80). CPython's allocator hands out blocks of multiples of
    16 bytes, so 64 bytes is a block of 64 and 72 one of 80 (``gateway.memsize.block``)."""

    __slots__ = ("v0", "v1", "v2")

    v0: float
    v1: float
    v2: float

    def __init__(self, start: int, values: Values, t: int, b: int, s: int) -> None:
        self.start = start
        self.v0 = self.v1 = self.v2 = 0.0
        mask = 0
        n = len(values)
        for i in range(n if n < 3 else 3):
            v = values[i]
            if v is not None:
                mask |= 1 << i
                if i == 0:
                    self.v0 = v
                elif i == 1:
                    self.v1 = v
                else:
                    self.v2 = v
        self.stamp(t, b, s, mask)

    def stamp(self, t: int, b: int, s: int, mask: int) -> None:
        """Keep the reading's time, boot, seq and the bits of the first three metrics it has (each kind its way)."""
        raise NotImplementedError

    def time(self) -> int:
        """The reading's time."""
        raise NotImplementedError

    def boot(self) -> int:
        """The reading's boot."""
        raise NotImplementedError

    def seq(self) -> int:
        """The reading's sequence number."""
        raise NotImplementedError

    def mask(self) -> int:
        """Bit i set: the reading has a value of metric i."""
        raise NotImplementedError

    def v3(self) -> float:
        """Metric 3's value (none below four metrics)."""
        return 0.0

    def merge_into(self, acc: Acc) -> None:
        """Merge the accumulator of this one reading into ``acc`` (``Acc.merge_reading``). The sliding window merges a
        :class:`SinglePacked` itself (``_merge_pane``); the other kinds come here."""
        acc.merge_reading(self.mask(), self.v0, self.v1, self.v2, self.v3(), self.time(), self.boot(), self.seq())

    def reading_into(self, m: int, r: Stat, last: bool) -> bool:
        """``r``'s first reading (``last``: its last) becomes this one if it has a value of metric ``m`` (returns
        whether it has). The sliding window reads a :class:`SinglePacked`'s fields itself (``_packed_into``); the
        other kinds come here."""
        if not self.mask() & 1 << m:
            return False
        if last:
            r.lt, r.lb, r.ls, r.lv = self.time(), self.boot(), self.seq(), self.value(m)
        else:
            r.ft, r.fb, r.fs, r.fv = self.time(), self.boot(), self.seq(), self.value(m)
        return True

    def values(self, nm: int) -> Values:
        """The reading's values, ``nm`` metrics (``None``: none for that metric)."""
        return self.put_values([], nm)

    def put_values(self, out: list[Any], nm: int) -> list[Any]:
        """Append the reading's values (as :meth:`values`) to ``out``; returns it. Unrolled: no call a value (a
        snapshot writes one such row a pane)."""
        m = self.mask()
        out.append(self.v0 if m & 1 else None)
        if nm > 1:
            out.append(self.v1 if m & 2 else None)
            if nm > 2:
                out.append(self.v2 if m & 4 else None)
                if nm > 3:
                    out.append(self.v3() if m & 8 else None)
        return out

    def value(self, i: int) -> float:
        """Metric ``i``'s value (one the reading has: see ``mask``)."""
        if i == 0:
            return self.v0
        if i == 1:
            return self.v1
        if i == 2:
            return self.v2
        return self.v3()

    def fill(self, acc: Acc, nm: int) -> Acc:
        """``acc`` (of ``nm`` metrics) becomes the accumulator of this one reading; returns it."""
        acc.clear()
        acc.add(self.values(nm), self.time(), self.boot(), self.seq())
        return acc


_P_SEQ: Final = 31
""":class:`SinglePacked`'s ``p``: the seq in its low 31 bits, then the bits of the metrics (4), the time from the
pane's start (17), the boot (10): 62 bits, an int compiled code keeps unboxed."""
_P_DT: Final = _P_SEQ + 4
_P_BOOT: Final = _P_DT + 17
_P_DT_MAX: Final = (1 << 17) - 1
_P_BOOT_MAX: Final = (1 << 10) - 1


@mypyc_attr(acyclic=True)
class SinglePacked(Single):
    """:class:`Single` of up to three metrics whose boot is below 1,024 and whose time is within 131,071 ms of its
    pane's start: boot, seq, the time from the start and the bits of its metrics in one int (``p``), 64 bytes
    compiled (an 80-byte block with one more field)."""

    __slots__ = ("p",)

    def stamp(self, t: int, b: int, s: int, mask: int) -> None:
        self.p = (b << _P_BOOT) | ((t - self.start) << _P_DT) | (mask << _P_SEQ) | s

    def time(self) -> int:
        return self.start + (self.p >> _P_DT & _P_DT_MAX)

    def boot(self) -> int:
        return self.p >> _P_BOOT

    def seq(self) -> int:
        return self.p & _ID_MAX

    def mask(self) -> int:
        return self.p >> _P_SEQ & 15


@mypyc_attr(acyclic=True)
class SingleWide(Single):
    """:class:`Single` of any reading: boot and seq (each below 2**31) share one int (``bs``), the time and the bits
    of its metrics another (``tm``: time << 4 | bits); 72 bytes compiled."""

    __slots__ = ("bs", "tm")

    def stamp(self, t: int, b: int, s: int, mask: int) -> None:
        self.bs = b << 31 | s
        self.tm = t << 4 | mask

    def time(self) -> int:
        return self.tm >> 4

    def boot(self) -> int:
        return self.bs >> 31

    def seq(self) -> int:
        return self.bs & _ID_MAX

    def mask(self) -> int:
        return self.tm & 15


@mypyc_attr(acyclic=True)
class Single4(SingleWide):
    """:class:`Single` of four metrics."""

    __slots__ = ("w3",)

    def __init__(self, start: int, values: Values, t: int, b: int, s: int) -> None:
        v = values[3]
        # set before Single.__init__, which calls a method on self: a float field set after such a call gets a flag
        # word from mypyc (88 bytes, not 80)
        self.w3 = 0.0 if v is None else v
        super().__init__(start, values, t, b, s)
        if v is not None:
            self.tm |= 8

    def v3(self) -> float:
        return self.w3


def _single(start: int, values: Values, t: int, b: int, s: int) -> Single:
    """The pane of one reading (``start``: its pane's start, at or before ``t``)."""
    if len(values) == 4:
        return Single4(start, values, t, b, s)
    if 0 <= b <= _P_BOOT_MAX and 0 <= t - start <= _P_DT_MAX and 0 <= s <= _ID_MAX:
        return SinglePacked(start, values, t, b, s)
    return SingleWide(start, values, t, b, s)


class Operator(Protocol):
    spec: WindowSpec
    late_count: int

    def add(self, key: str, site: str, device: str, t: int, b: int, s: int, values: Values) -> tuple[Output, ...]: ...

    def advance(self, key: str | None, wm: int) -> list[Output]: ...

    def advance_into(self, key: str | None, wm: int, out: list[Output]) -> None: ...

    def watermark(self, key: str) -> int | None: ...

    def snapshot(self, keys: Set[str] | None = None, order: bool = False) -> dict[str, Any]: ...

    def restore(self, snap: dict[str, Any]) -> None: ...


class _Due:
    """Shared mode: an entry of an operator's queue of due keys (``WindowOperator.due_q``, a binary heap by ``t``;
    entries of one ``t`` in any order: an advance takes every entry due, and visits its keys in the order their
    state was made)."""

    __slots__ = ("key", "t")

    def __init__(self, t: int, key: str) -> None:
        self.t = t
        self.key = key


def _due_push(q: list[_Due], d: _Due) -> None:
    """``heappush`` by ``t`` (compiled: native int compares, where tuples compared their ints and then their keys
    through the C API)."""
    t = d.t
    i = len(q)
    q.append(d)
    while i > 0:
        p = (i - 1) >> 1
        up = q[p]
        if up.t <= t:
            break
        q[i] = up
        i = p
    q[i] = d


def _due_pop(q: list[_Due]) -> _Due:
    """``heappop`` by ``t``."""
    top = q[0]
    last = q.pop()
    n = len(q)
    if n:
        t = last.t
        i = 0
        while True:
            c = 2 * i + 1
            if c >= n:
                break
            child = q[c]
            if c + 1 < n:
                right = q[c + 1]
                if right.t < child.t:
                    c += 1
                    child = right
            if t <= child.t:
                break
            q[i] = child
            i = c
        q[i] = last
    return top


class WindowOperator:
    """What the three operators share; the engine calls them through it."""

    def __init__(self, spec: WindowSpec, shared: bool) -> None:
        self.spec = spec
        self.name = spec.name
        self.kind = spec.key
        self.shared = shared
        self.lateness = spec.allowed_lateness_ms
        self.aggs = tuple(a for a in spec.aggregates if a != "count")
        self.nm = len(spec.metrics)
        self.bases = tuple(enumerate(spec.metrics))
        self.var = "stddev" in self.aggs  # keep Welford's M2 only when stddev is asked for
        # key ("" in shared mode) -> the watermark the operator last acted on (NO_WM: none yet). A key's cell is
        # never replaced or dropped (only restore() replaces them all), so a caller may keep it (see key_cell()).
        self.wm: dict[str, WmCell] = {}
        self.sites: dict[str, str] = {}
        self.late_count = 0
        # shared mode only: a heap of due entries (_Due: due watermark and key), the smallest due time queued per key,
        # and each key's place in the order its state was made (the order a walk over every key would visit them in)
        self.due_q: list[_Due] = []
        self.queued: dict[str, int] = {}
        self.korder: dict[str, int] = {}
        self.kseq = 0
        # called every few keys while a snapshot is taken (Engine.snapshot's ``pause``): compiled code never lets
        # another thread have the GIL on its own, so a snapshot in a worker thread would stall the event loop
        self.pause: Callable[[], None] | None = None
        self.visits = 0  # keys visited by advances in shared mode (to show that an advance does not walk every key)
        # the engine's set of keys whose state changed since the last checkpoint (Engine.touched): an advance in
        # shared mode visits keys its caller does not name, and notes them here
        self.touched: set[str] | None = None
        self.scan_all = False  # shared mode: visit every key at each advance, as before the queue (tests compare)

    def add(self, key: str, site: str, device: str, t: int, b: int, s: int, values: Values) -> tuple[Output, ...]:
        return self.add_at(self.key_cell(key), key, site, device, t, b, s, values)

    def add_at(
        self, wmc: WmCell, key: str, site: str, device: str, t: int, b: int, s: int, values: Values
    ) -> tuple[Output, ...]:
        """:meth:`add`, with ``wmc`` the watermark cell the reading is judged against (``key_cell(key)``)."""
        raise NotImplementedError

    def advance(self, key: str | None, wm: int) -> list[Output]:
        out: list[Output] = []
        self.advance_into(key, wm, out)
        return out

    def advance_into(self, key: str | None, wm: int, out: list[Output]) -> None:
        """As :meth:`advance`, appending to ``out``."""
        self.advance_at(self.cell("" if key is None else key), key, wm, out)

    def advance_at(self, wmc: WmCell, key: str | None, wm: int, out: list[Output]) -> None:
        """:meth:`advance_into`, with ``wmc`` the key's watermark cell (``cell()`` of the key, "" for None)."""
        raise NotImplementedError

    def early_acc(self, key: str, start: int) -> tuple[int, int, Acc] | None:
        """For early (provisional) results: the window of ``key`` that starts at ``start`` (a session: the one
        containing ``start``), if it holds readings and has not fired yet - its start, end and accumulator
        (read it, never change it) - else ``None``."""
        raise NotImplementedError

    def emit_early(self, out: list[Output], key: str, start: int, end: int, acc: Acc) -> None:
        """A provisional result (revision 0, ``fired = "early"``) of every metric with values in ``acc``."""
        self._emit(out, key, start, end, acc, 0, "early")

    def key_cell(self, key: str) -> WmCell:
        """The watermark cell a reading of ``key`` is judged against (the shared one in shared mode)."""
        return self.cell("" if self.shared else key)

    def cell(self, hk: str) -> WmCell:
        """The watermark cell of key ``hk`` ("" for the shared watermark), made if it has none."""
        c = self.wm.get(hk)
        if c is None:
            c = self.wm[hk] = WmCell(NO_WM)
        return c

    def snapshot(self, keys: Set[str] | None = None, order: bool = False) -> dict[str, Any]:
        """All state as plain JSON-able values (fresh containers); ``keys`` and ``order`` select the per-key
        entries as in :meth:`Engine.snapshot`."""
        raise NotImplementedError

    def restore(self, snap: dict[str, Any]) -> None:
        raise NotImplementedError

    def _new_key(self, key: str) -> None:
        """Shared mode: ``key``'s state was just made (it comes last in the visiting order)."""
        self.korder[key] = self.kseq
        self.kseq += 1

    def _due(self, key: str, t: int) -> None:
        """Shared mode: ``key`` has something to do once the watermark reaches ``t`` (``NO_WM``: at once)."""
        q = self.queued.get(key)
        if q is None or t < q:
            self.queued[key] = t
            _due_push(self.due_q, _Due(t, key))

    def _due_keys(self, wm: int, live: dict[str, Any]) -> list[str]:
        """Shared mode: the keys of ``live`` whose due time ``wm`` reached, in the order their state was made."""
        q = self.due_q
        touched = self.touched
        if self.scan_all:
            self.visits += len(live)
            if touched is not None:
                touched.update(live)
            return list(live)
        if not q or q[0].t > wm:
            return []
        queued = self.queued
        keys: dict[str, None] = {}
        while q and q[0].t <= wm:
            d = _due_pop(q)
            t, k = d.t, d.key
            if queued.get(k) == t:
                del queued[k]
            if k in live:
                keys[k] = None
        found = list(keys)
        if len(found) > 1:
            found.sort(key=self.korder.__getitem__)
        self.visits += len(found)
        if touched is not None:
            touched.update(found)
        return found

    def _drop_key(self, key: str) -> None:
        """Shared mode: ``key``'s state is gone."""
        self.korder.pop(key, None)
        self.queued.pop(key, None)

    def _requeue_all(self, keys: list[str]) -> None:
        """After a restore in shared mode: every key is visited at the next advance (its state says what is due)."""
        self.due_q = []
        self.queued = {}
        self.korder = {}
        self.kseq = 0
        if self.shared:
            for k in keys:
                self._new_key(k)
                self._due(k, NO_WM)

    def _add_values(self, acc: Acc, values: Values, t: int, b: int, s: int) -> None:
        if self.var:
            acc.add_var(values, t, b, s)
        else:
            acc.add(values, t, b, s)

    def watermark(self, key: str) -> int | None:
        c = self.wm.get("" if self.shared else key)
        return None if c is None or c.v == NO_WM else c.v

    def _move(self, wmc: WmCell, key: str | None, wm: int) -> int:
        """Move a key's watermark (its cell ``wmc``) to ``wm``; returns the one before (maybe NO_WM)."""
        old = wmc.v
        assert wm >= old, f"watermark of {self.spec.name}/{key} went back: {old} -> {wm}"
        wmc.v = wm
        return old

    def _late(self, site: str, device: str, t: int, b: int, s: int, values: Values, wm: int) -> tuple[Output, ...]:
        name = self.spec.name
        late = tuple(
            LateReading(name, site, device, m, t, b, s, wm - t, wm, "too_late", v)
            for m, v in zip(self.spec.metrics, values, strict=True)
            if v is not None
        )
        self.late_count += len(late)
        return late

    def _emit(self, out: list[Output], key: str, start: int, end: int, acc: Acc, rev: int, fired: Fired) -> None:
        """One result per metric with values, each a copy of the metric's aggregates in ``acc``."""
        site = self.sites[key]
        name, kind, aggs = self.name, self.kind, self.aggs
        for i, metric in self.bases:
            n = acc.count(i)
            if n:
                r = WindowResult(name, kind, key, site, start, end, metric, n, None, rev, fired, aggs)
                acc.put(i, r)
                out.append(r)

    def _every_few(self, i: int) -> None:
        """Called for the ``i``-th key of a snapshot: ``pause`` every 4 keys."""
        pause = self.pause
        if pause is not None and i & 3 == 3:
            pause()

    def _base_snapshot(self, keys: Set[str] | None, order: bool) -> dict[str, Any]:
        """The state shared by the three operators; ``keys`` and ``order`` as in :meth:`Engine.snapshot`."""
        if order:
            return {
                "wm": {k: None for k, c in self.wm.items() if c.v != NO_WM},
                "sites": dict.fromkeys(self.sites),
                "late_count": self.late_count,
            }
        wm: dict[str, int] = {}
        for k in key_list(self.wm, keys):
            v = self.wm[k].v
            if v != NO_WM:
                wm[k] = v
        return {
            "wm": wm,
            "sites": {k: self.sites[k] for k in key_list(self.sites, keys)},
            "late_count": self.late_count,
        }

    def _base_restore(self, snap: dict[str, Any]) -> None:
        self.wm = {k: WmCell(v) for k, v in snap["wm"].items()}
        self.sites = dict(snap["sites"])
        self.late_count = snap["late_count"]


class _TWin:
    """One tumbling window of a key: its start, its revision (0: not emitted yet), its accumulator and its one timer
    (``tt``: the watermark it waits for; ``phase`` 0: to fire at its end, 1: to be dropped at its end plus the
    allowed lateness)."""

    __slots__ = ("acc", "phase", "rev", "start", "tt")

    def __init__(self, start: int, acc: Acc, tt: int, phase: int) -> None:
        self.start = start
        self.rev = 0
        self.acc = acc
        self.tt = tt
        self.phase = phase


class _TKey:
    """A key's tumbling windows, in order of their start; the first ``fired`` are in phase 1 (the watermark has
    passed their end: every window it passed is fired, or was made after it passed), the others in phase 0. Each
    phase's timers grow with the start, so the smallest timer (:meth:`due`) is the first window's or the first of
    phase 0's, and an advance takes the due ones from the front of each phase: it costs what it fires and drops,
    not the windows kept (a long allowed lateness keeps many)."""

    __slots__ = ("fired", "wins")

    def __init__(self) -> None:
        self.wins: list[_TWin] = []
        self.fired = 0

    def find(self, start: int) -> int:
        """How many windows start at or before ``start``: where the window starting at ``start`` is (before the
        index returned) or would go. The newest is looked at first (the common case: a reading of the newest
        window, or of a newer one), then a binary search: a late reading of a key that keeps many windows (a long
        allowed lateness, a board flushing hours) must not walk them all."""
        wins = self.wins
        hi = len(wins)
        if not hi or wins[hi - 1].start <= start:
            return hi
        lo = 0
        while lo < hi:
            mid = (lo + hi) // 2
            if wins[mid].start > start:
                hi = mid
            else:
                lo = mid + 1
        return lo

    def get(self, start: int) -> _TWin | None:
        """The window starting at ``start``, if the key has it."""
        i = self.find(start)
        w = self.wins[i - 1] if i else None
        return w if w is not None and w.start == start else None

    def due(self) -> int:
        """The smallest of the windows' timers (``NO_WM`` without windows)."""
        wins, f = self.wins, self.fired
        due = wins[0].tt if f else NO_WM
        if f < len(wins) and (due == NO_WM or wins[f].tt < due):
            due = wins[f].tt
        return due


class TumblingOperator(WindowOperator):
    """Tumbling windows ``[offset + k*size, offset + (k+1)*size)`` per key.

    State per key (:class:`_TKey`): its windows in order of their start (:class:`_TWin`: revision, accumulator and
    one timer: phase 0 = fire at ``end``, 1 = drop at ``end + allowed_lateness``); ``dirty``
    = fired windows that a late reading changed since. A window whose end the watermark has passed is in phase 1,
    the others in phase 0, so the fired ones come first. (It was a dict of windows and a heap of timer tuples per
    key: bench_state.py's tumbling window took 1,043 bytes a device with its accumulator of 368, 703 now.)
    """

    def __init__(self, spec: WindowSpec, shared: bool) -> None:
        super().__init__(spec, shared)
        self.size = spec.size_ms
        self.offset = spec.offset_ms
        self.wins: dict[str, _TKey] = {}
        self.dirty: dict[str, set[int]] = {}

    def add_at(
        self, wmc: WmCell, key: str, site: str, device: str, t: int, b: int, s: int, values: Values
    ) -> tuple[Output, ...]:
        size = self.size
        start = t - (t - self.offset) % size
        end = start + size
        wm = wmc.v
        if end + self.lateness <= wm:
            return self._late(site, device, t, b, s, values, wm)
        tk = self.wins.get(key)
        if tk is None:
            tk = self.wins[key] = _TKey()
            self.sites[key] = site
            if self.shared:
                self._new_key(key)
        wins = tk.wins
        i = tk.find(start)
        w = wins[i - 1] if i else None
        if w is None or w.start != start:
            if end <= wm:  # a window the watermark passed while it was empty
                assert i <= tk.fired, f"{self.name}/{key}: a passed window after one not fired"
                tk.fired += 1
                w = _TWin(start, acc_empty(self.nm), end + self.lateness, 1)
                self.dirty.setdefault(key, set()).add(start)
                if self.shared:
                    self._due(key, NO_WM)
            else:
                assert i >= tk.fired, f"{self.name}/{key}: a window not fired before a passed one"
                w = _TWin(start, acc_empty(self.nm), end, 0)
                if self.shared:
                    self._due(key, end)
            wins.insert(i, w)
        elif w.rev:
            self.dirty.setdefault(key, set()).add(start)
            if self.shared:
                self._due(key, NO_WM)
        self._add_values(w.acc, values, t, b, s)
        return _NONE

    def advance_at(self, wmc: WmCell, key: str | None, wm: int, out: list[Output]) -> None:
        self._move(wmc, key, wm)
        if key is not None:
            tk = self.wins.get(key)
            if tk is None or (tk.due() > wm and (not self.dirty or key not in self.dirty)):
                return  # nothing due: the common case, checked without touching the windows
            keys = [key]
        else:
            keys = self._due_keys(wm, self.wins)
            if not keys:
                return
        size, lateness = self.size, self.lateness
        for k in keys:
            tk = self.wins[k]
            wins = tk.wins
            dirty = self.dirty.pop(k, None)
            if dirty:
                for start in sorted(dirty):
                    w = tk.get(start)
                    assert w is not None, f"{self.name}/{k}: no window at {start} to fire again"
                    w.rev += 1
                    self._emit(out, k, start, start + size, w.acc, w.rev, "late")
            if tk.due() <= wm:
                # the timers due, as a heap of (time, start, phase) would give them: the fires in order of their
                # end (their start); a drop emits nothing, so where it comes between them changes nothing
                f, n = tk.fired, len(wins)
                d = 0  # the fired windows past their lateness: the first of phase 1
                while d < f and wins[d].tt <= wm:
                    d += 1
                j = f  # the windows whose end the watermark passed: the first of phase 0
                while j < n and wins[j].tt <= wm:
                    w = wins[j]
                    w.rev = 1
                    self._emit(out, k, w.start, w.start + size, w.acc, 1, "watermark")
                    w.phase = 1
                    w.tt = w.start + size + lateness
                    j += 1
                if d == f:  # the ones just fired past their lateness as well (their timers come after those)
                    while d < j and wins[d].tt <= wm:
                        d += 1
                if d:
                    del wins[:d]
                tk.fired = j - d
            if not wins:
                del self.wins[k], self.sites[k]
                if self.shared:
                    self._drop_key(k)
            elif key is None:
                self._due(k, tk.due())

    def snapshot(self, keys: Set[str] | None = None, order: bool = False) -> dict[str, Any]:
        snap = self._base_snapshot(keys, order)
        if order:
            snap["wins"] = dict.fromkeys(self.wins)
            snap["timers"] = dict.fromkeys(self.wins)
            snap["dirty"] = dict.fromkeys(self.dirty)
            return snap
        wins: dict[str, Any] = {}
        timers: dict[str, Any] = {}
        i = 0
        for k in key_list(self.wins, keys):
            ws = self.wins[k].wins
            wins[k] = [[w.start, w.rev, w.acc.to_json()] for w in ws]
            # a heap's list, as it always was (sorted: one of the lists heapq keeps)
            timers[k] = sorted([w.tt, w.start, w.phase] for w in ws)
            self._every_few(i)
            i += 1
        snap["wins"] = wins
        snap["timers"] = timers
        snap["dirty"] = {k: sorted(self.dirty[k]) for k in key_list(self.dirty, keys)}
        return snap

    def restore(self, snap: dict[str, Any]) -> None:
        self._base_restore(snap)
        self.wins = {}
        timers = snap["timers"]
        for k, v in snap["wins"].items():
            timer = {x[1]: (x[0], x[2]) for x in timers.get(k, ())}
            tk = _TKey()
            for s, r, a in sorted(v, key=_first):
                tt, phase = timer.get(s, (s + self.size + self.lateness, 1))
                if phase == 1:
                    if tk.fired < len(tk.wins):
                        raise ValueError(f"window {self.name} of {k!r}: the window at {s} has fired, one before not")
                    tk.fired += 1
                w = _TWin(s, acc_from_json(a), tt, phase)
                w.rev = r
                tk.wins.append(w)
            self.wins[k] = tk
        self.dirty = {k: set(v) for k, v in snap["dirty"].items()}
        self._requeue_all(list(self.wins))

    def early_acc(self, key: str, start: int) -> tuple[int, int, Acc] | None:
        tk = self.wins.get(key)
        w = None if tk is None else tk.get(start)
        end = start + self.size
        wm = self.watermark(key)
        if w is None or w.rev or (wm is not None and end <= wm):
            return None
        return start, end, w.acc


def _first(x: list[Any]) -> int:
    first: int = x[0]
    return first


class _SlideKey:
    """One key's sliding-window state: panes, fired revisions, cleanup timers and the two stacks."""

    __slots__ = (
        "accs",
        "back_acc",
        "back_from",
        "ck_lo",
        "cleanup",
        "dirty",
        "front_a",
        "hi",
        "hint",
        "newest",
        "revs",
    )

    def __init__(self) -> None:
        self.accs: list[Acc] = []  # the panes' accumulators, sorted by their ``start`` (the pane's start)
        # window start -> revision, for fired windows not yet dropped (lateness > 0), and their drop times as a
        # heap of (end + lateness, window start); None while there are none (an empty dict and list are 120 bytes)
        self.revs: dict[int, int] | None = None
        self.cleanup: list[tuple[int, int]] | None = None
        # panes changed after a window containing them fired (None: none; an empty set is 216 bytes a key)
        self.dirty: set[int] | None = None
        # Two-stack sliding aggregation over the panes of the last window fired. Front: panes, oldest last, each
        # with the aggregate of it and every newer front pane; back: the panes in [back_from, hi), pushed since
        # the last transfer, with their aggregate. Of the front's entries only every ``stride``-th from the
        # newest is kept, and those above the highest of them; when the top is popped, the entries between the
        # next kept one and the first pane of the next window are made again from it and the panes, in the same
        # order as the first time (so to the bit). A front entry keeps no first or last reading (a Part): an
        # entry's first reading of a metric is that of its oldest pane with a value of it (panes hold disjoint
        # times), and its last that of the newest front pane with one (that of ``front_a[0]`` or older), the same
        # for every entry. A pane changed after the front was built is dirty, and the next advance throws the
        # stacks away before reading them; a front entry whose pane was dropped is dropped with it (no window
        # still to fire contains it).
        self.front_a: list[Part] = []
        self.newest: Acc | None = None  # the newest front pane (that of front_a[0]) while there is a front
        self.back_from = 0
        self.back_acc: Acc | None = None
        self.hi: int | None = None  # panes below this have been pushed; None: stacks empty/invalid
        self.hint = 0  # where the first pane at or after ``hi`` was last seen in ``accs`` (checked before use)
        # the start of the oldest pane a reading was added to (or made for) since the key's last checkpoint snapshot
        # (``SlidingOperator.snapshot_rows``): its chunks from there on are what the next checkpoint writes
        self.ck_lo = CK_ALL

    def fired(self, s: int, rev: int, drop: int) -> None:
        """The window starting at ``s`` was emitted (revision ``rev``): kept until the watermark reaches ``drop``
        (noted the first time)."""
        revs = self.revs
        if revs is None:
            revs = self.revs = {}
        if rev == 1:
            cleanup = self.cleanup
            if cleanup is None:
                cleanup = self.cleanup = []
            heappush(cleanup, (drop, s))
        revs[s] = rev

    def to_json(self, nm: int) -> dict[str, Any]:
        """The key as plain values. A pane of one reading is that reading (``[start, t, boot, seq, a value or None
        per metric]``; an accumulator that is exactly one reading's too), any other its accumulator (``[start,
        flat list]``). The front stack is the start of its newest pane (``top``): its entries are the aggregates of
        the panes from there down to the first pane of the last window fired, made again from the panes on restore
        as a transfer makes them (to the bit). The back is the start of its first pane and its aggregate.

        (Until snapshot version 3 every pane was an accumulator and the front was every entry as one, with its
        first and last readings: about 59,000 bytes of JSON a key of a 60 s/1 s window of three metrics read every
        second, against 5,000 now. :meth:`from_json` takes both.)"""
        d: dict[str, Any] = {"panes": [_pane_json_row(a, nm) for a in self.accs]}
        d.update(self.to_json_head(nm))
        return d

    def to_json_head(self, nm: int) -> dict[str, Any]:
        """:meth:`to_json` but its panes."""
        hi = self.hi
        back: int | None = None
        if hi is not None and self.back_acc is not None:
            j = _left_from_front(self.accs, self.back_from)
            if j < len(self.accs) and self.accs[j].start < hi:
                back = self.accs[j].start
        return {
            "revs": [] if self.revs is None else [[s, r] for s, r in self.revs.items()],
            "cleanup": [] if self.cleanup is None else [list(x) for x in self.cleanup],
            "dirty": [] if self.dirty is None else sorted(self.dirty),
            "top": self.front_a[0].start if self.front_a else None,
            "back_from": back,
            "back_acc": None if self.back_acc is None else self.back_acc.to_json(),
            "hi": hi,
        }

    def to_rows(self, nm: int, chunk: int, off: int, since: int) -> dict[str, Any]:
        """:meth:`to_json` for a checkpoint that stores the panes in chunks of ``chunk`` ms (from ``off``): instead of
        ``"panes"``, ``"pane_chunks"`` (the chunks that hold panes, by number, in order), ``"pane_from"`` (the first
        pane's start: a chunk stored before its oldest panes were dropped still holds them) and ``"pane_new"`` (the
        panes of each chunk from that of ``since`` on, by the chunk's number as a string: ``gateway.ckpt_rows``
        makes each a row). Put back together (the chunks' panes in order, from ``pane_from``), it is :meth:`to_json`."""
        d = self.to_json_head(nm)
        chunks: list[int] = []
        new: dict[str, Any] = {}
        first = (since - off) // chunk
        rows: list[Any] = []
        for a in self.accs:
            c = (a.start - off) // chunk
            if not chunks or chunks[-1] != c:
                chunks.append(c)
                if c >= first:
                    rows = new[str(c)] = []
            if c >= first:
                rows.append(_pane_json_row(a, nm))
        out: dict[str, Any] = {
            "pane_chunks": chunks,
            "pane_from": self.accs[0].start if self.accs else None,
            "pane_new": new,
        }
        out.update(d)
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any], singles: bool, nm: int, pane: int, off: int) -> tuple[_SlideKey, int | None]:
        """The key from its snapshot (either format: see :meth:`to_json`), and the start of its front stack's newest
        pane (None: no front), whose entries the caller makes (``SlidingOperator._restore_front``). ``singles``: a
        pane that is exactly the accumulator of one reading is that reading (a :class:`Single`). ``nm``, ``pane``
        and ``off``: the window's metrics, pane size and offset, which each pane must fit (a ``ValueError`` says which
        does not: never a pane taken as something the engine did not write).

        A snapshot before version 3 holds every front entry; they are the aggregates of the same panes, so they are
        made again from the panes as for version 3 (their values are the same bits; a dirty key's stacks are thrown
        away by the next advance before anything reads them). Entries of panes already dropped (in checkpoints
        written before they were dropped with their panes) are never read again: the next window to fire starts
        after them."""
        ks = cls()
        ks.accs = [_pane_from_row(x, singles, nm, pane, off) for x in d["panes"]]
        for q in range(1, len(ks.accs)):
            if ks.accs[q - 1].start >= ks.accs[q].start:
                raise ValueError(f"sliding window snapshot: panes not in order of their start at {ks.accs[q].start}")
        ks.revs = {s: r for s, r in d["revs"]} or None
        ks.cleanup = [(x[0], x[1]) for x in d["cleanup"]] or None
        ks.dirty = set(d["dirty"]) if d["dirty"] else None
        ks.back_acc = None if d["back_acc"] is None else acc_from_json(d["back_acc"])
        ks.hi = d["hi"]
        if "front" in d:  # before version 3
            front = d["front"]
            top = front[0][0] if front and ks.accs and front[0][0] >= ks.accs[0].start else None
            back = d["back"]
            b = back[0] if back else None
        else:
            top = d["top"]
            b = d["back_from"]
            if b is not None:
                j = _left_from_front(ks.accs, b)
                if ks.hi is None or b >= ks.hi or j == len(ks.accs) or ks.accs[j].start != b:
                    raise ValueError(
                        f"sliding window snapshot: the back starts at {b}, not a pane's start below {ks.hi}"
                    )
        ks.back_from = b if b is not None else ks.hi if ks.hi is not None else 0
        return ks, top


class SlidingOperator(WindowOperator):
    """Sliding windows ``[s, s + size)``, ``s = offset + k*slide``, over panes of ``gcd(size, slide)``.

    A reading updates one pane (O(1) whatever size/slide). Windows fire in order of their end through a
    two-stack queue of panes (amortised O(1) merges per window). A late reading within the allowed
    lateness marks its pane dirty; the next ``advance`` re-fires every fired window still kept that
    contains it, merging its panes afresh, and rebuilds the stacks.
    """

    def __init__(self, spec: WindowSpec, shared: bool) -> None:
        super().__init__(spec, shared)
        self.size = spec.size_ms
        self.slide = spec.slide_ms
        self.offset = spec.offset_ms
        self.pane = pane_size(spec.size_ms, spec.slide_ms)
        self.keys: dict[str, _SlideKey] = {}
        # Accumulators of dropped panes and popped stack entries, for reuse by the next pane or stack entry of
        # any key (not in snapshots). The last one given back is taken first: it is likely still in the CPU's
        # cache. At most ``spare_max``, a few windows' worth of panes: a burst (a board flushing half an hour of
        # readings) must not stay allocated for good.
        self.spare: list[Acc] = []
        self.spare_parts: list[Part] = []  # the same for front stack entries
        self.spare_max = 4 * (spec.size_ms // self.pane) + 64
        self.singles = self.nm <= 4  # panes of one reading kept as a Single (tests turn it off to compare)
        self.sparse = True  # keep about 2 sqrt(n) of a front's n entries (tests turn it off to compare)
        # a checkpoint's chunk of panes (ms; 0: a key's panes in its own row): windows of more than CHUNK_PANES panes
        self.chunk = self.pane * CHUNK_PANES if spec.size_ms // self.pane > CHUNK_PANES else 0

    def _give_back(self, acc: Acc) -> None:
        """Keep an accumulator no longer used, for a next pane or stack entry (up to ``spare_max``)."""
        if len(self.spare) < self.spare_max and not isinstance(acc, Single):
            self.spare.append(acc)

    def _give_part(self, f: Part) -> None:
        if len(self.spare_parts) < self.spare_max:
            self.spare_parts.append(f)

    def _take_part(self) -> Part:
        spare = self.spare_parts
        return spare.pop() if spare else part_empty(self.nm)

    def _drop_front(self, ks: _SlideKey, below: int | None) -> None:
        """Drop the front entries whose pane starts before ``below`` (None: all)."""
        fr = ks.front_a
        while fr and (below is None or fr[-1].start < below):
            self._give_part(fr.pop())
        if not fr:
            ks.newest = None

    def _refill(self, ks: _SlideKey, start: int) -> None:
        """Make again the front entries of the panes from ``start`` up to the top entry (not kept: see _SlideKey),
        from the top entry and the panes, as the transfer made them."""
        front_a, accs = ks.front_a, ks.accs
        top = front_a[-1]
        jt = _left_from_front(accs, top.start)
        js = _left_from_front(accs, start)
        if js >= jt:
            return
        run = self._take()
        run.clear()
        top.put_acc(run)
        for q in range(jt - 1, js - 1, -1):
            self._merge_pane(run, accs[q])
            f = self._take_part()
            f.take(run)
            f.start = accs[q].start
            front_a.append(f)
        self._give_back(run)

    def _build_front(self, ks: _SlideKey, i: int, j: int, tail: bool = True) -> None:
        """The front stack of the panes ``accs[j..i]`` (it is empty): the aggregate of the panes so far, newest
        first; entries q = 0, k, 2k, ... (from the newest) keep a Part of it, and (``tail``) every entry from the
        highest of those on, which the next windows read first. Without them, the next window makes the ones it
        reads again from the lowest kept entry and the panes, as after any pop (``_refill``)."""
        accs, front_a = ks.accs, ks.front_a
        stride = _stride(i - j + 1) if self.sparse else 1
        top = i - (i - j) // stride * stride  # the oldest kept entry below the top segment
        run = self._take()
        self._set_pane(run, accs[i])
        q = i
        while True:
            if (tail and q <= top) or (i - q) % stride == 0:
                f = self._take_part()
                f.take(run)
                f.start = accs[q].start
                front_a.append(f)
            q -= 1
            if q < (j if tail else top):
                break
            self._merge_pane(run, accs[q])
        self._give_back(run)
        ks.newest = accs[i]

    def _restore_front(self, ks: _SlideKey, top: int) -> None:
        """A snapshot's front stack: its entries from the pane starting at ``top`` down to the first
        pane of the last window fired, made as the transfer made them (the aggregates of the same panes, merged in
        the same order: the same bits), those at its stride only: the next window makes the ones it reads below
        them again, as after a pop. If a pane changed since (it is dirty), the next advance throws the stacks away
        before reading them, as it would have."""
        accs = ks.accs
        hi = ks.hi
        i = _left_from_front(accs, top)
        if hi is None or i == len(accs) or accs[i].start != top or top >= hi:
            raise ValueError(f"sliding window snapshot: the front starts at {top}, not a pane's start below {hi}")
        j = _left_from_front(accs, hi - self.size)
        if j <= i:
            self._build_front(ks, i, j, False)

    def _merge_pane(self, acc: Acc, pane: Acc) -> None:
        """Merge the pane ``pane`` into ``acc`` (a Single as the accumulator of its reading, without making it)."""
        if type(pane) is SinglePacked:  # the common pane of one reading, read here (compiled: a pointer compared)
            p = pane.p
            acc.merge_reading(
                p >> _P_SEQ & 15, pane.v0, pane.v1, pane.v2, 0.0, pane.start + (p >> _P_DT & _P_DT_MAX), p >> _P_BOOT,
                p & _ID_MAX,
            )  # fmt: skip
        elif isinstance(pane, Single):
            pane.merge_into(acc)
        else:
            acc.merge_from(pane)

    def _set_pane(self, acc: Acc, pane: Acc) -> None:
        """``acc`` becomes a copy of the pane ``pane`` (as :meth:`_merge_pane`)."""
        if isinstance(pane, Single):
            acc.clear()
            self._merge_pane(acc, pane)
        else:
            acc.set(pane)

    def _take(self) -> Acc:
        """A spare accumulator (holding old values) or a new one, for a pane or stack entry."""
        spare = self.spare
        return spare.pop() if spare else acc_empty(self.nm)

    def _new_acc(self, p: int) -> Acc:
        """An empty accumulator for the pane starting at ``p``."""
        acc = self._take()
        acc.clear()
        acc.start = p
        return acc

    def add_at(
        self, wmc: WmCell, key: str, site: str, device: str, t: int, b: int, s: int, values: Values
    ) -> tuple[Output, ...]:
        wm = wmc.v
        size = self.size
        slide = self.slide
        off = self.offset
        if t - (t - off) % slide + size + self.lateness <= wm:
            return self._late(site, device, t, b, s, values, wm)
        ks = self.keys.get(key)
        if ks is None:
            ks = self.keys[key] = _SlideKey()
            self.sites[key] = site
            if self.shared:
                self._new_key(key)
        p = t - (t - off) % self.pane
        if p < ks.ck_lo:
            ks.ck_lo = p
        accs = ks.accs
        n = len(accs)
        acc = accs[n - 1] if n else None
        i = n - 1
        new: Acc | None = None  # the pane made for this reading, if it had none
        if acc is None or p > acc.start:
            new = _single(p, values, t, b, s) if self.singles else self._new_acc(p)
            accs.append(new)
        elif p != acc.start:
            i = _left_from_back(accs, p)
            acc = accs[i]
            if acc.start != p:
                new = _single(p, values, t, b, s) if self.singles else self._new_acc(p)
                accs.insert(i, new)
        # some window containing this pane has already been fired (or passed empty): first_window_end_after, inlined
        e = p + 1 + (off + size - p - 1) % slide
        if e <= wm:
            if ks.dirty is None:
                ks.dirty = {p}
            else:
                ks.dirty.add(p)
            if self.shared:
                self._due(key, NO_WM)
        elif self.shared:
            self._due(key, e)
        if new is None and acc is not None:
            if isinstance(acc, Single):  # its second reading: an accumulator of the two, added in their order
                one = acc
                acc = self._new_acc(p)
                self._add_values(acc, one.values(self.nm), one.time(), one.boot(), one.seq())
                accs[i] = acc
            self._add_values(acc, values, t, b, s)
        elif new is not None and not self.singles:
            self._add_values(new, values, t, b, s)
        return _NONE

    def _window(self, ks: _SlideKey, start: int, end: int) -> Acc:
        """Merge the panes of ``[start, end)`` directly (for re-fires), into a new accumulator."""
        accs = ks.accs
        acc = acc_empty(self.nm)
        i = _left_from_front(accs, start)
        while i < len(accs) and accs[i].start < end:
            self._merge_pane(acc, accs[i])
            i += 1
        return acc

    def _fire(self, out: list[Output], k: str, ks: _SlideKey, start: int, end: int) -> None:
        """Emit the window ``[start, end)`` through the two stacks; windows must come in increasing order.

        Stack entries and the back's aggregate come from (and go back to) the operator's spare
        accumulators; each result is a fresh :class:`Stat` of its own, never changed afterwards."""
        front_a = ks.front_a
        hi = ks.hi
        back_acc = ks.back_acc
        if hi is None:
            self._release_stacks(ks)
            back_acc = None
            ks.back_from = hi = start
        if front_a and front_a[-1].start < start:  # evict panes older than start
            self._drop_front(ks, start)
        accs = ks.accs
        if not front_a and back_acc is not None:  # transfer: the back's panes (from start on) become the front
            lo = ks.back_from if ks.back_from > start else start
            i = _left_from_back(accs, hi, ks.hint) - 1
            j = _left_from_front(accs, lo)
            if i >= j:
                self._build_front(ks, i, j)
            self._give_back(back_acc)
            back_acc = None
            ks.back_from = hi
        elif front_a:  # entries popped (or dropped with their panes) since the last window
            self._refill(ks, start)
        i = _left_from_back(accs, hi if hi > start else start, ks.hint)
        n = len(accs)
        while i < n:
            pa = accs[i]
            if pa.start >= end:
                break
            if back_acc is None:
                back_acc = self._take()
                self._set_pane(back_acc, pa)
            else:
                self._merge_pane(back_acc, pa)  # in place: back_acc itself is never handed out
            i += 1
        ks.back_acc = back_acc
        ks.hi = end
        ks.hint = i
        site = self.sites[k]
        name, kind, aggs = self.name, self.kind, self.aggs
        fa = front_a[-1] if front_a else None
        j = 0 if fa is None else _left_from_front(accs, fa.start)
        newest = ks.newest
        for m, metric in self.bases:  # each result: the front's top, then the back merged in (either may be empty)
            nf = 0 if fa is None else fa.count(m)
            n = nf + (0 if back_acc is None else back_acc.count(m))
            if n:
                r = WindowResult(name, kind, k, site, start, end, metric, n, None, 1, "watermark", aggs)
                if fa is not None:
                    fa.put(m, r)
                    if nf:
                        _put_first(accs, j, m, r)
                        if newest is None or not _last_of(newest, m, r):  # not in the newest pane: search
                            _put_last(accs, _left_from_back(accs, front_a[0].start), m, r)
                if back_acc is not None:
                    back_acc.merge_put(m, r)
                out.append(r)

    def _release_stacks(self, ks: _SlideKey) -> None:
        """Empty the two stacks, their accumulators back to the spares."""
        self._drop_front(ks, None)
        if ks.back_acc is not None:
            self._give_back(ks.back_acc)
        ks.back_acc = None
        ks.hi = None

    def _refire(self, out: list[Output], k: str, ks: _SlideKey, old: int) -> None:
        size, slide, off = self.size, self.slide, self.offset
        starts: set[int] = set()
        for p in ks.dirty or ():
            last = p - (p - off) % slide
            lo = p - size + 1
            for s in range(lo + (off - lo) % slide, last + 1, slide):
                if s + size <= old < s + size + self.lateness:
                    starts.add(s)
        ks.dirty = None
        self._release_stacks(ks)  # the stacks may hold stale aggregates
        for s in sorted(starts):
            rev = 1 if ks.revs is None else ks.revs.get(s, 0) + 1
            ks.fired(s, rev, s + size + self.lateness)
            self._emit(out, k, s, s + size, self._window(ks, s, s + size), rev, "late")

    def advance_at(self, wmc: WmCell, key: str | None, wm: int, out: list[Output]) -> None:
        old = self._move(wmc, key, wm)
        if key is None:
            keys = self.keys
            for k in self._due_keys(wm, keys):
                kst = keys[k]
                self._advance_key(out, k, kst, old, wm)
                if k in keys:
                    self._due(k, self._next_due(kst, wm))
                else:
                    self._drop_key(k)
        else:
            ks = self.keys.get(key)
            if ks is not None:
                self._advance_key(out, key, ks, old, wm)

    def _next_due(self, ks: _SlideKey, wm: int) -> int:
        """After an advance to ``wm``: at or before the first watermark at which ``ks`` fires or drops anything."""
        size, slide, off = self.size, self.slide, self.offset
        accs = ks.accs
        due = NO_WM
        if accs:
            p = accs[0].start
            # the next window end (a window with a pane ends there or later), and when the oldest pane goes
            due = first_window_end_after(wm if wm > p else p, size, slide, off)
            drop = p - (p - off) % slide + size + self.lateness
            if drop < due:
                due = drop
        if ks.cleanup and (due == NO_WM or ks.cleanup[0][0] < due):
            due = ks.cleanup[0][0]
        return due if due > wm else wm + 1

    def _advance_key(self, out: list[Output], k: str, ks: _SlideKey, old: int, wm: int) -> None:
        size, slide, off, lateness = self.size, self.slide, self.offset, self.lateness
        if ks.dirty and old != NO_WM:
            self._refire(out, k, ks, old)
        accs = ks.accs
        if not accs:
            e = wm + 1
        elif old == NO_WM:
            e = first_window_end_after(accs[0].start, size, slide, off)
        else:
            e = first_window_end_after(old, size, slide, off)
        while e <= wm:
            s = e - size
            i = _left_from_front(accs, s)
            if i == len(accs):
                break
            q = accs[i].start
            if q >= e:  # empty window: jump to the first window containing the next pane
                e = first_window_end_after(q, size, slide, off)
                continue
            if lateness:  # a fired window is kept (for re-fires) until end + lateness; without lateness, never
                ks.fired(s, 1, e + lateness)
            self._fire(out, k, ks, s, e)
            e += slide
        heap = ks.cleanup
        if heap is not None and heap[0][0] <= wm:
            revs = ks.revs
            assert revs is not None
            while heap and heap[0][0] <= wm:
                revs.pop(heappop(heap)[1], None)
            if not heap:
                ks.cleanup = None
            if not revs:
                ks.revs = None
        n = 0
        while n < len(accs):  # drop the panes whose every window is past its allowed lateness
            p = accs[n].start
            if p - (p - off) % slide + size + lateness > wm:
                break
            n += 1
        if n:
            for j in range(n):
                self._give_back(accs[j])
            ks.hint -= n
            del accs[:n]
            if ks.front_a:  # entries of dropped panes: the next window to fire starts after them
                self._drop_front(ks, accs[0].start if accs else None)
        if not accs and not ks.revs:
            del self.keys[k], self.sites[k]

    def snapshot(self, keys: Set[str] | None = None, order: bool = False) -> dict[str, Any]:
        if order:
            snap = self._base_snapshot(keys, order)
            snap["keys"] = dict.fromkeys(self.keys)
            return snap
        return self._snapshot_keys(keys, 0)

    def snapshot_rows(self, keys: Set[str] | None, every: bool) -> dict[str, Any]:
        """:meth:`snapshot` for a checkpoint: a key's panes as :meth:`_SlideKey.to_rows` gives them (windows of more
        than ``CHUNK_PANES`` panes), its chunks from the oldest pane changed since its last checkpoint snapshot on
        (all with ``every``); the keys taken count as unchanged from then on (:meth:`mark_changed` undoes it for a
        checkpoint that failed)."""
        return self._snapshot_keys(keys, 2 if every else 1)

    def _snapshot_keys(self, keys: Set[str] | None, rows: int) -> dict[str, Any]:
        """The snapshot of ``keys`` (None: all): ``rows`` 0 as :meth:`snapshot`, 1 and 2 as :meth:`snapshot_rows`
        (``Engine.snapshot``'s)."""
        snap = self._base_snapshot(keys, False)
        out: dict[str, Any] = {}
        chunk, off, nm = self.chunk if rows else 0, self.offset, self.nm
        i = 0
        for k in key_list(self.keys, keys):
            ks = self.keys[k]
            if chunk:
                out[k] = ks.to_rows(nm, chunk, off, CK_ALL if rows == 2 else ks.ck_lo)
            else:
                out[k] = ks.to_json(nm)
            if rows:
                ks.ck_lo = CK_NONE
            self._every_few(i)
            i += 1
        snap["keys"] = out
        return snap

    def mark_changed(self, keys: Set[str] | None) -> None:
        """Every pane of ``keys`` (None: every key) counts as changed since the last checkpoint: the next writes them
        all (after a checkpoint that failed, or a restore from rows that do not hold them as chunks)."""
        for k in key_list(self.keys, keys):
            self.keys[k].ck_lo = CK_ALL

    def mark_stored(self, keys: Set[str]) -> None:
        """The panes of ``keys`` are as the stored checkpoint's chunk rows hold them (right after restoring it; a key
        whose row holds its panes, as before chunk rows, keeps every pane counted as changed)."""
        for k in key_list(self.keys, keys):
            self.keys[k].ck_lo = CK_NONE

    def restore(self, snap: dict[str, Any]) -> None:
        self._base_restore(snap)
        self.keys = {}
        for k, d in snap["keys"].items():
            ks, top = _SlideKey.from_json(d, self.singles, self.nm, self.pane, self.offset)
            self.keys[k] = ks
            if top is not None:
                self._restore_front(ks, top)
        self._requeue_all(list(self.keys))

    def early_acc(self, key: str, start: int) -> tuple[int, int, Acc] | None:
        ks = self.keys.get(key)
        end = start + self.size
        wm = self.watermark(key)
        if ks is None or (wm is not None and end <= wm):  # windows fire in order of their end: this one has not
            return None
        return start, end, self._window(ks, start, end)


class _Session:
    """One session of one key (in snapshots: ``[start, end, revision, acc, pending, late]``)."""

    __slots__ = ("acc", "end", "late", "pending", "rev", "start")

    def __init__(self, start: int, end: int, rev: int, acc: Acc, pending: bool, late: bool) -> None:
        self.start = start
        self.end = end  # the last event time + gap
        self.rev = rev  # emissions so far
        self.acc = acc
        self.pending = pending  # changed since last emitted
        self.late = late  # changed after its end was passed (its next emission is a re-fire)

    def to_json(self) -> list[Any]:
        return [self.start, self.end, self.rev, self.acc.to_json(), self.pending, self.late]

    @staticmethod
    def from_json(x: list[Any]) -> _Session:
        return _Session(x[0], x[1], x[2], acc_from_json(x[3]), x[4], x[5])


class SessionOperator(WindowOperator):
    """Session windows per key: a reading opens ``[t, t + gap)``; overlapping sessions merge.

    State per key: sessions (:class:`_Session`) sorted by start, disjoint. A session is emitted
    (timestamped at its start) when the watermark reaches its end. When a late reading merges sessions
    or moves a fired session's start earlier, the old point is superseded: a ``fired="superseded"``
    result with count 0 is emitted for the old start so the stale point can be recognised.
    """

    def __init__(self, spec: WindowSpec, shared: bool) -> None:
        super().__init__(spec, shared)
        self.gap = spec.gap_ms
        self.sessions: dict[str, list[_Session]] = {}
        self.tombs: dict[str, list[list[int]]] = {}

    def add_at(
        self, wmc: WmCell, key: str, site: str, device: str, t: int, b: int, s: int, values: Values
    ) -> tuple[Output, ...]:
        wm = wmc.v
        lo, hi = t, t + self.gap
        sessions = self.sessions.get(key)
        if sessions is None:
            sessions = self.sessions[key] = []
            self.sites[key] = site
            if self.shared:
                self._new_key(key)
        elif sessions:
            # The common case: the reading falls inside the newest session. Sessions are disjoint and sorted,
            # so that one is the only session it touches, and the general path below would only extend it.
            x = sessions[-1]
            if x.start <= lo < x.end:
                if hi > x.end:
                    x.end = hi
                x.pending = True
                if not x.late and (x.rev > 0 or x.end <= wm):
                    x.late = True
                if self.shared:
                    self._due(key, x.end if x.end > wm else NO_WM)
                self._add_values(x.acc, values, t, b, s)
                return _NONE
        hits = [x for x in sessions if x.start < hi and x.end > lo]
        # Too late: the session this reading would open - or the part it would prepend to the sessions
        # it touches - ended more than the allowed lateness ago. (Prepending is refused too, so that a
        # session can never grow back over one already dropped and reuse its start, its point's time.)
        if hi + self.lateness <= wm and (not hits or lo < hits[0].start):
            if not sessions:
                del self.sessions[key], self.sites[key]
                if self.shared:
                    self._drop_key(key)
            return self._late(site, device, t, b, s, values, wm)
        if self.shared:  # a new or changed session: due at its end, or at once if the watermark passed it
            self._due(key, hi if hi > wm and not hits else NO_WM)
        if not hits:
            acc = acc_empty(self.nm)
            self._add_values(acc, values, t, b, s)
            behind = hi <= wm
            if not sessions or lo > sessions[-1].start:
                sessions.append(_Session(lo, hi, 0, acc, True, behind))
            else:
                insort(sessions, _Session(lo, hi, 0, acc, True, behind), key=_session_start)
            return _NONE
        base = hits[0]
        start = min(lo, base.start)
        end = max(hi, max(x.end for x in hits))
        merged: Acc = base.acc
        late = any(x.rev > 0 for x in hits) or end <= wm
        for x in hits[1:]:
            merged.merge_from(x.acc)
            sessions.remove(x)
            if x.rev > 0:
                self.tombs.setdefault(key, []).append([x.start, x.end, x.rev + 1])
        if start != base.start:
            if base.rev > 0:
                self.tombs.setdefault(key, []).append([base.start, base.end, base.rev + 1])
            base.rev = 0
        base.start = start
        base.end = end
        base.pending = True
        base.late = base.late or late
        self._add_values(merged, values, t, b, s)
        return _NONE

    def advance_at(self, wmc: WmCell, key: str | None, wm: int, out: list[Output]) -> None:
        self._move(wmc, key, wm)
        if key is None:
            live = self.sessions
            for k in self._due_keys(wm, live):
                self._advance_key(out, k, live[k], wm)
                sessions = live.get(k)
                if sessions is None:
                    self._drop_key(k)
                else:
                    due = sessions[0].end if sessions[0].end > wm else sessions[0].end + self.lateness
                    for x in sessions:
                        d = x.end if x.end > wm else x.end + self.lateness
                        if d < due:
                            due = d
                    self._due(k, due if due > wm else wm + 1)
        else:
            sessions = self.sessions.get(key)
            if sessions is not None:
                self._advance_key(out, key, sessions, wm)

    def _advance_key(self, out: list[Output], k: str, sessions: list[_Session], wm: int) -> None:
        lateness = self.lateness
        if self.tombs:
            for start, end, rev in self.tombs.pop(k, ()):
                site = self.sites[k]
                for metric in self.spec.metrics:
                    out.append(
                        WindowResult(
                            self.spec.name,
                            self.spec.key,
                            k,
                            site,
                            start,
                            end,
                            metric,
                            0,
                            {},
                            rev,
                            "superseded",
                        )
                    )
        drop = not sessions
        for x in sessions:
            end = x.end
            if end <= wm:  # the common case - every session still open - touches nothing else
                if x.pending:
                    x.rev += 1
                    self._emit(out, k, x.start, end, x.acc, x.rev, "late" if x.late else "watermark")
                    x.pending = False
                    x.late = False
                if end + lateness <= wm:
                    drop = True
        if drop:
            keep = [x for x in sessions if x.end + lateness > wm]
            if keep:
                self.sessions[k] = keep
            else:
                del self.sessions[k], self.sites[k]

    def snapshot(self, keys: Set[str] | None = None, order: bool = False) -> dict[str, Any]:
        snap = self._base_snapshot(keys, order)
        if order:
            snap["sessions"] = dict.fromkeys(self.sessions)
            snap["tombs"] = dict.fromkeys(self.tombs)
            return snap
        sessions: dict[str, Any] = {}
        i = 0
        for k in key_list(self.sessions, keys):
            sessions[k] = [x.to_json() for x in self.sessions[k]]
            self._every_few(i)
            i += 1
        snap["sessions"] = sessions
        snap["tombs"] = {k: [list(x) for x in self.tombs[k]] for k in key_list(self.tombs, keys)}
        return snap

    def restore(self, snap: dict[str, Any]) -> None:
        self._base_restore(snap)
        self.sessions = {k: [_Session.from_json(x) for x in v] for k, v in snap["sessions"].items()}
        self.tombs = {k: [list(x) for x in v] for k, v in snap["tombs"].items()}
        self._requeue_all(list(self.sessions))

    def early_acc(self, key: str, start: int) -> tuple[int, int, Acc] | None:
        wm = self.watermark(key)
        for x in self.sessions.get(key, ()):
            if x.start <= start < x.end:
                if x.rev or (wm is not None and x.end <= wm):
                    return None
                return x.start, x.end, x.acc
        return None


def _left_from_front(a: list[Acc], x: int) -> int:
    """The first index whose ``start`` is at least ``x`` (``a`` sorted by start), quick when few are below ``x``
    (the oldest panes of a key)."""
    n = len(a)
    i = 0
    while i < n and i < 4:
        if a[i].start >= x:
            return i
        i += 1
    return i if i == n else _bisect(a, x, 4, n)


def _left_from_back(a: list[Acc], x: int, hint: int = -1) -> int:
    """As :func:`_left_from_front`, quick when ``hint`` is the answer or few items are at or above ``x``."""
    i = len(a)
    if 0 <= hint <= i and (hint == 0 or a[hint - 1].start < x) and (hint == i or a[hint].start >= x):
        return hint
    lo = i - 4 if i > 4 else 0
    while i > lo:
        if a[i - 1].start < x:
            return i
        i -= 1
    return _bisect(a, x, 0, i) if i else 0


def _bisect(a: list[Acc], x: int, lo: int, hi: int) -> int:
    """``bisect_left`` by ``start`` over ``a[lo:hi]``."""
    while lo < hi:
        mid = (lo + hi) // 2
        if a[mid].start < x:
            lo = mid + 1
        else:
            hi = mid
    return lo


def _put_first(accs: list[Acc], j: int, m: int, r: Stat) -> None:
    """``r``'s first reading of metric ``m`` becomes that of the oldest pane from ``accs[j]`` on with a value of it
    (there must be one): panes hold disjoint times, so it is the first of the panes together."""
    while True:
        pa = accs[j]
        if type(pa) is SinglePacked:  # the common pane of one reading (compiled: a pointer compared)
            if _packed_into(pa, m, r, False):
                return
        elif isinstance(pa, Single):
            if pa.reading_into(m, r, False):
                return
        elif pa.count(m):
            pa.put_first(m, r)
            return
        j += 1


def _packed_into(pa: SinglePacked, m: int, r: Stat, last: bool) -> bool:
    """``Single.reading_into`` of a packed pane, its fields read here: a direct call, not one through the class's
    table and then one per field."""
    p = pa.p
    if not p >> _P_SEQ & 1 << m:
        return False
    t, b, s = pa.start + (p >> _P_DT & _P_DT_MAX), p >> _P_BOOT, p & _ID_MAX
    v = pa.v0 if m == 0 else pa.v1 if m == 1 else pa.v2
    if last:
        r.lt, r.lb, r.ls, r.lv = t, b, s, v
    else:
        r.ft, r.fb, r.fs, r.fv = t, b, s, v
    return True


def _last_of(pa: Acc, m: int, r: Stat) -> bool:
    """``r``'s last reading of metric ``m`` becomes the pane ``pa``'s, if it has a value of it."""
    if type(pa) is SinglePacked:  # the common pane of one reading (compiled: a pointer compared)
        return _packed_into(pa, m, r, True)
    if isinstance(pa, Single):
        return pa.reading_into(m, r, True)
    if pa.count(m):
        pa.put_last(m, r)
        return True
    return False


def _put_last(accs: list[Acc], j: int, m: int, r: Stat) -> None:
    """``r``'s last reading of metric ``m`` becomes that of the newest pane from ``accs[j]`` back with a value of it
    (there must be one): panes hold disjoint times, so it is the last of the panes together."""
    while not _last_of(accs[j], m, r):
        j -= 1


def _stride(n: int) -> int:
    """Of a front of ``n`` entries, every how many-th is kept: about sqrt(n), so that about 2 sqrt(n) are kept at
    a time, for one more merge per pane."""
    k = 1
    while k * k < n:
        k += 1
    return k


def _pane_json(a: Acc, nm: int) -> list[Any]:
    """A pane's snapshot: a Single's is that of the accumulator of its one reading (as it always was)."""
    if isinstance(a, Single):
        return a.fill(acc_empty(nm), nm).to_json()
    return a.to_json()


def _acc_at(p: int, flat: list[Any]) -> Acc:
    """A pane's (or front stack entry's) accumulator from its snapshot, starting at ``p``."""
    acc = acc_from_json(flat)
    acc.start = p
    return acc


def _pane_at(p: int, flat: list[Any]) -> Acc:
    """A pane from its accumulator's snapshot, starting at ``p``: the :class:`Single` of its reading if it is exactly
    the accumulator of one reading (what a snapshot of a Single was before version 3), else the accumulator."""
    acc = _acc_at(p, flat)
    one = _one_reading(acc, flat)
    return acc if one is None else one


def _one_reading(acc: Acc, flat: list[Any]) -> Single | None:
    """The :class:`Single` of ``acc``'s reading (starting where ``acc`` does) if ``acc`` (``flat``: its snapshot) is
    exactly the accumulator of one reading, to the bit; else (and beyond four metrics) None."""
    nm = len(flat) // FIELDS
    if nm > 4:
        return None
    values: Values = []
    t = b = s = 0
    seen = False
    st = Stat()
    for m in range(nm):
        c = acc.count(m)
        if c == 0:
            values.append(None)
            continue
        acc.put_first(m, st)
        if c > 1 or (seen and (st.ft != t or st.fb != b or st.fs != s)):
            return None
        seen = True
        t, b, s = st.ft, st.fb, st.fs
        values.append(st.fv)
    if not seen:
        return None
    one = _single(acc.start, values, t, b, s)
    ref = _pane_json(one, nm)  # what a snapshot of the Single holds: the same values to the bit, or not one
    if ref != flat:
        return None
    for i in range(len(ref)):  # == does not tell -0.0 from 0.0, nor 1 from 1.0
        x = ref[i]
        y = flat[i]
        if type(x) is not type(y) or (isinstance(x, float) and x == 0.0 and copysign(1.0, x) != copysign(1.0, y)):
            return None
    return one


def _pane_json_row(a: Acc, nm: int) -> list[Any]:
    """A pane in a snapshot (version 3 on): one of one reading (a Single, or an accumulator that is exactly one
    reading's) as ``[start, t, boot, seq, a value or None per metric]``, any other as ``[start, accumulator]``."""
    one: Single | None
    if isinstance(a, Single):
        one = a
    else:
        flat = a.to_json()
        one = _one_reading(a, flat)
        if one is None:
            return [a.start, flat]
    return one.put_values([a.start, one.time(), one.boot(), one.seq()], nm)


def _pane_from_row(x: list[Any], singles: bool, nm: int, pane: int, off: int) -> Acc:
    """A pane from its row in a snapshot (:func:`_pane_json_row`, or ``[start, accumulator]`` before version 3): a
    :class:`Single` of a pane of one reading when ``singles``, else an accumulator. A row that does not fit the window
    (``nm`` metrics, panes of ``pane`` ms from ``off``) is a ``ValueError``."""
    p = x[0]
    if not isinstance(p, int) or (p - off) % pane:
        raise ValueError(f"sliding window snapshot: a pane starting at {p!r}, off the window's panes")
    if len(x) == 2:
        if len(x[1]) != FIELDS * nm:
            raise ValueError(f"sliding window snapshot: the pane at {p} has {len(x[1])} values, not {FIELDS * nm}")
        return _pane_at(p, x[1]) if singles else _acc_at(p, x[1])
    values: Values = [None if v is None else float(v) for v in x[4:]]
    t, b, s = x[1], x[2], x[3]
    if len(values) != nm or nm > 4 or all(v is None for v in values):
        raise ValueError(f"sliding window snapshot: the reading of the pane at {p} has values {values} ({nm} metrics)")
    if not (isinstance(t, int) and p <= t < p + pane):
        raise ValueError(f"sliding window snapshot: a reading at {t!r} in the pane at {p}")
    if not (isinstance(b, int) and isinstance(s, int) and 0 <= b <= _ID_MAX and 0 <= s <= _ID_MAX):
        raise ValueError(f"sliding window snapshot: a reading of boot {b!r} and seq {s!r} in the pane at {p}")
    one = _single(p, values, t, b, s)
    if singles:
        return one
    acc = one.fill(acc_empty(nm), nm)
    acc.start = p
    return acc


def _session_start(x: _Session) -> int:
    return x.start


def build_operator(spec: WindowSpec, shared: bool = False) -> TumblingOperator | SlidingOperator | SessionOperator:
    """The running operator for a window spec; ``shared``: one watermark for all keys (global mode)."""
    if spec.kind == "tumbling":
        return TumblingOperator(spec, shared)
    if spec.kind == "sliding":
        return SlidingOperator(spec, shared)
    return SessionOperator(spec, shared)
