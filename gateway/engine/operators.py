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
from typing import Any, Final, Protocol, cast, final
from zlib import crc32

from mypy_extensions import i32, i64, mypyc_attr

try:
    from librt.vecs import vec

    _PACKED: Final = True
except ImportError:  # no librt for the platform (32-bit ARM): the pure engine keeps its columns in lists
    from ._vecs import vec  # type: ignore[assignment]

    _PACKED: Final = False  # type: ignore[misc]

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
_NO_I64: Final = vec[i64]()
_NO_F64: Final = vec[float]()
_NO_I32: Final = vec[i32]()
"""The empty column every key's unused columns of its type share (a column is only read and written by index, and
made anew to change its length: an empty one is never written). Each key's own was a buffer of 32 bytes, two or three
a key."""
NO_WM: Final = -(1 << 62)
"""No watermark yet (far below any event time a reading can have), where an unboxed int stands for one."""

NO_HI: Final = NO_WM
"""A sliding key's ``hi`` while its stacks are empty (no window fired through them since they were last thrown away)."""
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
class KeyCell(WmCell):
    """A key's record in an operator: its watermark cell and its window state in one object (each operator's
    subclass adds its state), so that a key costs one map entry and one object, not an entry in each of three maps
    (watermarks, sites, states) and a cell beside its state (about 68 bytes a key, 6 December 2026). It lives as long
    as the cell did (never dropped: only a restore replaces them all), but in shared mode, where a key's own watermark
    is not used, it goes with the key's state (``WindowOperator._drop_key``); ``site`` is the site of the key's state,
    "" while it has none (a site is never ""): a key whose windows are all gone keeps its record, its state emptied."""

    __slots__ = ("site",)

    def __init__(self, v: int) -> None:
        super().__init__(v)
        self.site = ""


class One:
    """A pane of one reading on its way into or out of a snapshot (:class:`Panes` keeps it in its columns): a row of
    the snapshot, or an accumulator that is exactly one reading's. As a source it is the accumulator one ``add`` of
    its reading makes (:meth:`fill`)."""

    __slots__ = ("b", "s", "start", "t", "values")

    def __init__(self, start: int, values: Values, t: int, b: int, s: int) -> None:
        self.start = start
        self.values = values  # a value or None per metric
        self.t = t
        self.b = b
        self.s = s

    def fill(self, acc: Acc) -> Acc:
        """``acc`` (of the reading's metrics) becomes the accumulator of this one reading; returns it."""
        acc.clear()
        acc.add(self.values, self.t, self.b, self.s)
        return acc

    def row(self) -> list[Any]:
        """As a snapshot's row: ``[start, t, boot, seq, a value or None per metric]``."""
        out: list[Any] = [self.start, self.t, self.b, self.s]
        out.extend(self.values)
        return out


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
        # key ("" in shared mode) -> its record (KeyCell: the watermark the operator last acted on, NO_WM: none yet,
        # and the key's state, its site "" while it has none). A key's record is never replaced or dropped (only
        # restore() replaces them all), so a caller may keep it (see key_cell()); but in shared mode, where a key's own
        # watermark is not moved and readings are judged against the shared cell (""), a key's record goes with its
        # state (_drop_key).
        self.wm: dict[str, KeyCell] = {}
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
        self._emit(out, key, self.site_of(key), start, end, acc, 0, "early")

    def key_cell(self, key: str) -> KeyCell:
        """The watermark cell a reading of ``key`` is judged against (the shared one in shared mode); outside shared
        mode the key's record."""
        return self.cell("" if self.shared else key)

    def cell(self, hk: str) -> KeyCell:
        """The record of key ``hk`` ("" for the shared watermark), made if it has none."""
        c = self.wm.get(hk)
        if c is None:
            c = self.wm[hk] = self._new_cell(NO_WM)
        return c

    def _new_cell(self, v: int) -> KeyCell:
        """A new record, with watermark ``v`` and no state."""
        raise NotImplementedError

    def site_of(self, key: str) -> str:
        """The site of ``key``'s state ("" if it has none)."""
        c = self.wm.get(key)
        return "" if c is None else c.site

    def live(self, keys: Set[str] | None = None) -> list[str]:
        """The keys with state (of ``keys``, None: all): in shared mode in the order their state was made (the order
        an advance visits them in), else in their records' order."""
        if keys is None:
            found = [k for k, c in self.wm.items() if c.site]
        else:
            found = [k for k in keys if self.state_of(k) is not None]
        if self.shared and len(found) > 1:
            found.sort(key=self.korder.__getitem__)
        return found

    def state_of(self, key: str) -> KeyCell | None:
        """``key``'s record if it has state (tests and benchmarks look at it)."""
        c = self.wm.get(key)
        return c if c is not None and c.site else None

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

    def _due_keys(self, wm: int) -> list[str]:
        """Shared mode: the keys with state whose due time ``wm`` reached, in the order their state was made."""
        q = self.due_q
        touched = self.touched
        if self.scan_all:
            every = self.live()
            self.visits += len(every)
            if touched is not None:
                touched.update(every)
            return every
        if not q or q[0].t > wm:
            return []
        queued = self.queued
        keys: dict[str, None] = {}
        while q and q[0].t <= wm:
            d = _due_pop(q)
            t, k = d.t, d.key
            if queued.get(k) == t:
                del queued[k]
            if self.state_of(k) is not None:
                keys[k] = None
        found = list(keys)
        if len(found) > 1:
            found.sort(key=self.korder.__getitem__)
        self.visits += len(found)
        if touched is not None:
            touched.update(found)
        return found

    def _drop_key(self, key: str) -> None:
        """Shared mode: ``key``'s state is gone, and so is its record unless its own watermark was moved (only
        ``advance_into`` with the key does that in shared mode): readings are judged against the shared cell, so a
        record without state holds nothing (a fleet whose devices come and go must not keep one a device)."""
        self.korder.pop(key, None)
        self.queued.pop(key, None)
        c = self.wm.get(key)
        if c is not None and not c.site and c.v == NO_WM:
            del self.wm[key]

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

    def _emit(
        self, out: list[Output], key: str, site: str, start: int, end: int, acc: Acc, rev: int, fired: Fired
    ) -> None:
        """One result per metric with values, each a copy of the metric's aggregates in ``acc``."""
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

    def _base_snapshot(self, live: list[str], keys: Set[str] | None, order: bool) -> dict[str, Any]:
        """The state shared by the three operators; ``keys`` and ``order`` as in :meth:`Engine.snapshot`, ``live``
        the keys with state taken (:meth:`live` of ``keys``: the caller's too)."""
        if order:
            return {
                "wm": {k: None for k, c in self.wm.items() if c.v != NO_WM},
                "sites": dict.fromkeys(live),
                "late_count": self.late_count,
            }
        wm: dict[str, int] = {}
        for k in key_list(self.wm, keys):
            v = self.wm[k].v
            if v != NO_WM:
                wm[k] = v
        cells = self.wm
        return {
            "wm": wm,
            "sites": {k: cells[k].site for k in live},
            "late_count": self.late_count,
        }

    def _base_restore(self, snap: dict[str, Any]) -> dict[str, str]:
        """The records of the snapshot's watermarks (the keys' states are the caller's); returns its sites (each
        site's name once for all its keys, as when running: a snapshot's JSON gives a string for each key)."""
        self.wm = {k: self._new_cell(v) for k, v in snap["wm"].items()}
        names: dict[str, str] = {}
        self.late_count = snap["late_count"]
        return {k: names.setdefault(v, v) for k, v in snap["sites"].items()}

    def _restored(self, key: str, sites: dict[str, str]) -> KeyCell:
        """On restore: the record of ``key``, which has state in the snapshot, with its site (made if the snapshot has
        no watermark for it, as a key in shared mode)."""
        site = sites.get(key)
        if not site:
            raise ValueError(f"window {self.name}: the state of key {key!r} has no site")
        c = self.cell(key)
        c.site = site
        return c


@mypyc_attr(acyclic=True)  # compiled: no cycle can go through it (gateway.memsize walks its attributes)
class _TWin:
    """One tumbling window of a key: its start, its revision (0: not emitted yet) and its accumulator. Its one timer
    (the watermark it waits for) is its end while it has not fired (phase 0), its end plus the allowed lateness once
    it has (phase 1: to be dropped then); which phase it is in is where it is in its key's windows (:class:`_TKey`).
    (Until 6 December 2026 it kept the timer and the phase too: 64 bytes, 48 now.)"""

    __slots__ = ("acc", "rev", "start")

    def __init__(self, start: int, acc: Acc) -> None:
        self.start = start
        self.rev = 0
        self.acc = acc


@mypyc_attr(acyclic=True)  # compiled: no cycle can go through it (gateway.memsize walks its attributes)
class _TKey(KeyCell):
    """A key's record (:class:`KeyCell`) and its tumbling windows, in order of their start; the first ``fired`` are in
    phase 1 (the watermark has passed their end: every window it passed is fired, or was made after it passed; their
    timer is their end plus the allowed lateness), the others in phase 0 (their timer is their end). Each phase's
    timers grow with the start, so the smallest timer (:meth:`due`) is the first window's or the first of phase 0's,
    and an advance takes the due ones from the front of each phase: it costs what it fires and drops, not the windows
    kept (a long allowed lateness keeps many). The windows are a tuple, made anew when one is added or dropped (about
    once a window; a reading of a window the key has changes none): 48 bytes for one window, a list was 112 with its
    table."""

    __slots__ = ("fired", "wins")

    def __init__(self, v: int) -> None:
        super().__init__(v)
        self.wins: tuple[_TWin, ...] = ()
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

    def due(self, size: int, drop: int) -> int:
        """The smallest of the windows' timers (``NO_WM`` without windows), for windows of ``size`` dropped ``drop``
        after their start (the size plus the allowed lateness)."""
        wins, f = self.wins, self.fired
        due = wins[0].start + drop if f else NO_WM
        if f < len(wins):
            t = wins[f].start + size
            if due == NO_WM or t < due:
                due = t
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
        self.drop = spec.size_ms + spec.allowed_lateness_ms  # a fired window is dropped this long after its start
        self.dirty: dict[str, set[int]] = {}

    def _new_cell(self, v: int) -> _TKey:
        return _TKey(v)

    def states(self) -> dict[str, _TKey]:
        """The records of the keys with state (tests and benchmarks look at them)."""
        return {k: cast(_TKey, self.wm[k]) for k in self.live()}

    def add_at(
        self, wmc: WmCell, key: str, site: str, device: str, t: int, b: int, s: int, values: Values
    ) -> tuple[Output, ...]:
        size = self.size
        start = t - (t - self.offset) % size
        end = start + size
        wm = wmc.v
        if end + self.lateness <= wm:
            return self._late(site, device, t, b, s, values, wm)
        tk = cast(_TKey, self.cell(key) if self.shared else wmc)  # outside shared mode the key's cell is its record
        if not tk.site:
            tk.site = site
            if self.shared:
                self._new_key(key)
        wins = tk.wins
        i = tk.find(start)
        w = wins[i - 1] if i else None
        if w is None or w.start != start:
            if end <= wm:  # a window the watermark passed while it was empty
                assert i <= tk.fired, f"{self.name}/{key}: a passed window after one not fired"
                tk.fired += 1
                w = _TWin(start, acc_empty(self.nm))
                self.dirty.setdefault(key, set()).add(start)
                if self.shared:
                    self._due(key, NO_WM)
            else:
                assert i >= tk.fired, f"{self.name}/{key}: a window not fired before a passed one"
                w = _TWin(start, acc_empty(self.nm))
                if self.shared:
                    self._due(key, end)
            tk.wins = (*wins, w) if i == len(wins) else (*wins[:i], w, *wins[i:])
        elif w.rev:
            self.dirty.setdefault(key, set()).add(start)
            if self.shared:
                self._due(key, NO_WM)
        self._add_values(w.acc, values, t, b, s)
        return _NONE

    def advance_at(self, wmc: WmCell, key: str | None, wm: int, out: list[Output]) -> None:
        self._move(wmc, key, wm)
        if key is not None:
            tk = cast(_TKey, wmc)  # the key's record
            if not tk.site or (tk.due(self.size, self.drop) > wm and (not self.dirty or key not in self.dirty)):
                return  # nothing due: the common case, checked without touching the windows
            keys = [key]
        else:
            keys = self._due_keys(wm)
            if not keys:
                return
        size, drop = self.size, self.drop
        cells = self.wm
        for k in keys:
            tk = cast(_TKey, cells[k])
            site = tk.site
            wins = tk.wins
            dirty = self.dirty.pop(k, None)
            if dirty:
                for start in sorted(dirty):
                    w = tk.get(start)
                    assert w is not None, f"{self.name}/{k}: no window at {start} to fire again"
                    w.rev += 1
                    self._emit(out, k, site, start, start + size, w.acc, w.rev, "late")
            if tk.due(size, drop) <= wm:
                # the timers due, as a heap of (time, start, phase) would give them: the fires in order of their
                # end (their start); a drop emits nothing, so where it comes between them changes nothing
                f, n = tk.fired, len(wins)
                d = 0  # the fired windows past their lateness: the first of phase 1
                while d < f and wins[d].start + drop <= wm:
                    d += 1
                j = f  # the windows whose end the watermark passed: the first of phase 0 (to phase 1)
                while j < n and wins[j].start + size <= wm:
                    w = wins[j]
                    w.rev = 1
                    self._emit(out, k, site, w.start, w.start + size, w.acc, 1, "watermark")
                    j += 1
                if d == f:  # the ones just fired past their lateness as well (their timers come after those)
                    while d < j and wins[d].start + drop <= wm:
                        d += 1
                if d:
                    tk.wins = wins = wins[d:]
                tk.fired = j - d
            if not wins:
                tk.site = ""  # no state (its record stays: its watermark)
                tk.fired = 0
                if self.shared:
                    self._drop_key(k)
            elif key is None:
                self._due(k, tk.due(size, drop))

    def snapshot(self, keys: Set[str] | None = None, order: bool = False) -> dict[str, Any]:
        live = self.live(keys)
        snap = self._base_snapshot(live, keys, order)
        if order:
            snap["wins"] = dict.fromkeys(live)
            snap["timers"] = dict.fromkeys(live)
            snap["dirty"] = dict.fromkeys(self.dirty)
            return snap
        wins: dict[str, Any] = {}
        timers: dict[str, Any] = {}
        i = 0
        cells = self.wm
        for k in live:
            tk = cast(_TKey, cells[k])
            ws, f = tk.wins, tk.fired
            wins[k] = [[w.start, w.rev, w.acc.to_json()] for w in ws]
            # a heap's list, as it always was (sorted: one of the lists heapq keeps): [timer, start, phase]
            timers[k] = sorted(
                [w.start + self.drop, w.start, 1] if q < f else [w.start + self.size, w.start, 0]
                for q, w in enumerate(ws)
            )
            self._every_few(i)
            i += 1
        snap["wins"] = wins
        snap["timers"] = timers
        snap["dirty"] = {k: sorted(self.dirty[k]) for k in key_list(self.dirty, keys)}
        return snap

    def restore(self, snap: dict[str, Any]) -> None:
        sites = self._base_restore(snap)
        timers = snap["timers"]
        for k, v in snap["wins"].items():
            if not v:
                continue  # no window: no state (never written so)
            # each window's phase (its timer follows from it: a snapshot is restored with the windows that wrote it)
            phases = {x[1]: x[2] for x in timers.get(k, ())}
            tk = cast(_TKey, self._restored(k, sites))
            ws: list[_TWin] = []
            for s, r, a in sorted(v, key=_first):
                if phases.get(s, 1) == 1:
                    if tk.fired < len(ws):
                        raise ValueError(f"window {self.name} of {k!r}: the window at {s} has fired, one before not")
                    tk.fired += 1
                w = _TWin(s, acc_from_json(a))
                w.rev = r
                ws.append(w)
            tk.wins = tuple(ws)
        self.dirty = {k: set(v) for k, v in snap["dirty"].items()}
        self._requeue_all([k for k, v in snap["wins"].items() if v])

    def early_acc(self, key: str, start: int) -> tuple[int, int, Acc] | None:
        tk = cast(_TKey | None, self.state_of(key))
        w = None if tk is None else tk.get(start)
        end = start + self.size
        wm = self.watermark(key)
        if w is None or w.rev or (wm is not None and end <= wm):
            return None
        return start, end, w.acc


def _first(x: list[Any]) -> int:
    first: int = x[0]
    return first


_T_COLUMN: Final = 1 << 58
"""A wide key's pane keeps its reading's time shifted left by five in a 64-bit int: it must be within this of 1970
(ms)."""
_ACC: Final = 16
"""The flag of a pane that is an accumulator (kept in ``big``), beside the bits of the metrics a reading has: the
five bits below a pane's time in ``tm``."""
_T_SPAN: Final = 1 << 27
"""A narrow key's times are within this of its ``base`` (ms, 37 hours): ``t - base`` takes 27 bits of ``tm``."""
_T_BACK: Final = 1 << 23
"""How far below its oldest time a narrow key's ``base`` is put (ms, 2.3 hours): room for older readings (a reading
older than a key's oldest pane is mostly too late for its windows)."""
_T_FIT: Final = _T_SPAN - _T_BACK - (_T_SPAN >> 2)
"""The widest span of times a narrow key keeps (ms, 25.6 hours): with its base :data:`_T_BACK` below the oldest, a
quarter of :data:`_T_SPAN` is left above the newest, so the base moves at most once in that much time (a key whose
times span more is wide: moved at each new pane, it would cost O(n) a pane)."""
_SH_WIDE: Final = 5
"""``Panes.sh`` of a wide key: ``tm`` is ``t << 5 | flags``, and ``bs`` ``boot << 31 | seq``."""
_SH_NARROW: Final = 36
"""``Panes.sh`` of a narrow key: ``tm`` is ``((t - base) << 5 | flags) << 31 | seq``, and the boot the key's own."""
_NO_BOOT: Final = -1
"""A narrow key's ``boot`` before it has a pane of one reading."""
_DEC_MAX: Final = 1 << 27
"""A decimal value's digits ``m`` (``m / 10**e``) in a narrow column are under this (8 digits; ``m << 4 | e`` fits an
i32)."""
_NO_DEC: Final = 1 << 40
""":func:`_decimal` of a value a narrow column cannot keep."""
_TRIM_FIRST: Final = 1 << 40
"""``Panes.dropped`` of a key with no drop yet: its first drop tries to trim its columns (and to narrow them)."""


_ROUND: Final = 6755399441055744.0
"""1.5 * 2**52: ``x + _ROUND - _ROUND`` is ``x`` rounded to an integer (ties to even) for ``|x| < 2**51``, in floats
alone."""


def _dec(x: i32) -> float:
    """The double a narrow column's value is (``m << 4 | e``: ``m / 10**e``, a division correctly rounded)."""
    e = x & 15
    if e < 3:
        p = 1.0 if e == 0 else 10.0 if e == 1 else 100.0
    else:  # 10**e exactly (every power of ten to 10**22 is a double, and so is each product on the way)
        p = 1000.0
        while e > 3:
            p *= 10.0
            e -= 1
    return float(x >> 4) / p


def _decimal(v: float) -> i64:
    """``v`` as a narrow column keeps it: ``m << 4 | e`` with the fewest decimals ``e`` for which ``m / 10**e`` (a
    division, correctly rounded) is ``v`` to the bit, ``|m| < 2**27``; :data:`_NO_DEC` when there is none (-0.0, NaN,
    infinities, 1e8 or more, and values that are no short decimal, such as a double computed on the host). A board's
    reading is one: the firmware sends fixed-point values (an int and its decimals), and the JSON decoder makes the
    double nearest to that decimal, which is what the division gives."""
    if not -1e8 < v < 1e8:
        return _NO_DEC
    if v == 0.0:
        return 0 if copysign(1.0, v) > 0.0 else _NO_DEC
    p = 1.0
    for e in range(16):
        if e:
            p *= 10.0
        x = v * p
        r = x + _ROUND - _ROUND  # the nearest integer (as a float: no int made for the values that fail)
        if not -_DEC_MAX < r < _DEC_MAX:  # rounded: x just under 2**27 may round to it (0.00134217728 at e = 11)
            return _NO_DEC
        if r / p == v:
            m: i64 = int(r)
            return m << 4 | e
    return _NO_DEC


@mypyc_attr(acyclic=True)  # compiled: no cycle can go through it (its columns and accumulators refer to nothing of it)
@final
class Panes:
    """A sliding window key's panes, in order of their start, as columns (compiled: ``librt.vecs``, native buffers of
    unboxed ints and floats; no object and list slot a pane).

    A pane of one reading - the common case, a board that reads once per pane - is that reading: its time, the bits
    of the metrics it has, its boot and seq, and ``w`` values (0 where it has none). Any other pane is an accumulator,
    in ``big``, a list beside the columns while the key has any. As a source (merged, copied, its first and last
    readings, in a snapshot) a pane of one reading is exactly the accumulator one ``add`` of it makes
    (``Acc.merge_reading``; :class:`One` for a snapshot).

    A pane's time and five flags are in ``tm``: the bits of the metrics a reading has, and :data:`_ACC` for an
    accumulator (its time is its start). While the key is narrow (``sh`` :data:`_SH_NARROW`), every pane of one reading
    has the key's ``boot``, every time is within :data:`_T_SPAN` (37 hours) above the key's ``base``, and the seq is
    in ``tm`` too: ``((t - base) << 5 | flags) << 31 | seq``. That is a board's case: a boot lasts from one power-on to
    the next, through deep sleep. A reading of another boot, or a time the span cannot reach even with the base moved
    (:meth:`_rebase`: the key's times then span more than :data:`_T_FIT`, 25.6 hours), makes the key wide (``sh``
    :data:`_SH_WIDE`): ``tm`` is ``t << 5 | flags`` and ``bs`` ``boot << 31 | seq``, 8 bytes more a pane. Either way a
    pane's time is ``(tm >> sh) + base`` (``base`` is 0 while wide) and its flags ``tm >> (sh - 5) & 31``.

    The values are the doubles themselves in ``vs``, or, while every value the key's panes keep is a short decimal, in
    ``vn`` (i32: ``m << 4 | e`` for ``m / 10**e``, :func:`_decimal`: a board's fixed-point readings), 4 bytes a value,
    not 8. The first value that is not one widens the values.

    A wide key is narrowed again, time and values each, when its panes allow: when it has none left (a new pane is
    the first), and else every time as many panes have been dropped as it holds (:meth:`_renarrow`: amortized O(1) a
    pane). So a reboot, or a -0.0, costs a key the wide columns for about a window, not for good.

    A pane's start is that of the pane its time falls in (``t - (t - off) % pane``: the window's panes). So a pane
    starts at or after a pane boundary ``x`` exactly when its time is at or after ``x``: the searches and the window's
    loops, whose bounds are all pane boundaries (window starts and ends, panes' starts), compare times and never
    compute a start.

    The columns are a ring: the ``n`` live panes are at ``head``, ``head + 1``, ... wrapping at ``cap`` (the columns'
    length). Dropping the oldest moves ``head``; a new pane goes after the newest, or is inserted with the newer ones
    moved up one; the columns are made anew, longer, only when every place is taken, and shorter when the live panes
    fall below a quarter of them, or (about once a window, :meth:`drop`) to two places more than the panes when more
    than four are free. Indexes given and taken by the methods count from the oldest live pane (0)."""

    __slots__ = (
        "base",
        "big",
        "boot",
        "bs",
        "cap",
        "dropped",
        "head",
        "n",
        "nar",
        "nbig",
        "off",
        "pane",
        "sh",
        "tm",
        "vn",
        "vs",
        "w",
    )

    def __init__(self, w: i64, pane: i64, off: i64) -> None:
        self.tm: vec[i64] = _NO_I64
        self.bs: vec[i64] = _NO_I64  # boot and seq of a wide key (empty while narrow)
        self.vs: vec[float] = _NO_F64  # the values as doubles (empty while narrow)
        self.vn: vec[i32] = _NO_I32  # the values as decimals (narrow; empty once wide)
        self.nar: bool = _PACKED  # values in vn (a list of ints would take more than one of floats)
        self.sh: i64 = _SH_NARROW  # time, bits and seq in tm (_SH_WIDE: boot and seq in bs)
        self.base: i64 = 0  # narrow: the time tm's times count from (0 while wide)
        self.boot: i64 = _NO_BOOT  # narrow: the boot of every pane of one reading
        # panes dropped since it last tried to trim its columns (and, wide, to narrow); a new key tries at its first
        # drop, when its first window has filled its columns
        self.dropped: i64 = _TRIM_FIRST
        self.cap: i64 = 0
        self.head: i64 = 0
        self.n: i64 = 0  # how many panes
        # values a pane of one reading keeps (the window's metrics; 0: none is kept as one, over 4 metrics)
        self.w: i64 = w
        self.pane: i64 = pane
        self.off: i64 = off
        self.big: list[Acc | None] | None = None  # the accumulator panes, at their columns' index (None: none)
        self.nbig: i64 = 0  # how many

    def _j(self, i: i64) -> i64:
        """The column index of pane ``i``."""
        j = self.head + i
        return j - self.cap if j >= self.cap else j

    def _time(self, j: i64) -> i64:
        """The time of the pane at column ``j`` (its reading's, or its start for an accumulator)."""
        return (self.tm[j] >> self.sh) + self.base

    def start(self, i: i64) -> i64:
        """Pane ``i``'s start."""
        t = self._time(self._j(i))
        return t - (t - self.off) % self.pane

    def t_at(self, i: i64) -> i64:
        """A time in pane ``i`` (its reading's, or its start for an accumulator): at or after a pane boundary exactly
        when the pane's start is."""
        j = self.head + i  # _j, inlined: once or twice a reading
        return (self.tm[j - self.cap if j >= self.cap else j] >> self.sh) + self.base

    def acc(self, i: i64) -> Acc | None:
        """Pane ``i``'s accumulator; None for a pane of one reading."""
        j = self.head + i  # _j, inlined: once a reading in a pane that has one
        if j >= self.cap:
            j -= self.cap
        return self._big_at(j) if self._flags(self.tm[j]) & _ACC else None

    def _big_at(self, j: i64) -> Acc:
        """The accumulator of the pane at column ``j`` (one that is an accumulator)."""
        big = self.big
        assert big is not None
        pa = big[j]
        assert pa is not None
        return pa

    def _reading(self, j: i64) -> tuple[i64, i64, i64]:
        """The time, boot and seq of the one reading of the pane at column ``j``."""
        x = self.tm[j]
        if self.sh == _SH_NARROW:
            return (x >> _SH_NARROW) + self.base, self.boot, x & _ID_MAX
        y = self.bs[j]
        return x >> _SH_WIDE, y >> 31, y & _ID_MAX

    def _flags(self, x: i64) -> i64:
        """A pane's flags, from its ``tm``: :data:`_ACC`, or the bits of the metrics its one reading has."""
        return (x >> (self.sh - 5)) & 31

    def find_front(self, x: i64) -> i64:
        """The first pane whose start is at least ``x`` (a pane boundary), quick when few are below ``x`` (the oldest
        panes)."""
        tm, head, cap, n, sh = self.tm, self.head, self.cap, self.n, self.sh
        xb = x - self.base
        i: i64 = 0
        while i < n and i < 4:
            j = head + i
            if tm[j - cap if j >= cap else j] >> sh >= xb:
                return i
            i += 1
        return i if i == n else self._bisect(x, 4, n)

    def find_back(self, x: i64, hint: i64 = -1) -> i64:
        """As :meth:`find_front`, quick when ``hint`` is the answer or few panes start at or after ``x``."""
        tm, head, cap, n, sh = self.tm, self.head, self.cap, self.n, self.sh
        xb = x - self.base
        if 0 <= hint <= n:
            j = head + hint - 1
            if hint == 0 or tm[j - cap if j >= cap else j] >> sh < xb:
                j += 1
                if hint == n or tm[j - cap if j >= cap else j] >> sh >= xb:
                    return hint
        i = n
        lo = n - 4 if n > 4 else 0
        while i > lo:
            j = head + i - 1
            if tm[j - cap if j >= cap else j] >> sh < xb:
                return i
            i -= 1
        return self._bisect(x, 0, i) if i else 0

    def _bisect(self, x: i64, lo: i64, hi: i64) -> i64:
        tm, head, cap, sh = self.tm, self.head, self.cap, self.sh
        xb = x - self.base
        while lo < hi:
            mid = (lo + hi) // 2
            j = head + mid
            if tm[j - cap if j >= cap else j] >> sh < xb:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def _resize(self, cap: i64) -> None:
        """The live panes, in order from column 0, in new columns of ``cap`` panes."""
        n, w, nar = self.n, self.w, self.nar
        wide = self.sh == _SH_WIDE
        tm: vec[i64] = vec[i64]([0] * cap)
        bs: vec[i64] = vec[i64]([0] * cap) if wide else _NO_I64
        vs: vec[float] = _NO_F64 if nar else vec[float]([0.0] * (cap * w))
        vn: vec[i32] = vec[i32]([0] * (cap * w)) if nar else _NO_I32
        otm, obs, ovs, ovn, obig = self.tm, self.bs, self.vs, self.vn, self.big
        big: list[Acc | None] | None = None if obig is None else [None] * cap
        j = self.head
        ocap = self.cap
        for q in range(n):
            tm[q] = otm[j]
            if wide:
                bs[q] = obs[j]
            if nar:
                for m in range(w):
                    vn[q * w + m] = ovn[j * w + m]
            else:
                for m in range(w):
                    vs[q * w + m] = ovs[j * w + m]
            if big is not None and obig is not None:
                big[q] = obig[j]
            j += 1
            if j == ocap:
                j = 0
        self.tm, self.bs, self.vs, self.vn, self.big = tm, bs, vs, vn, big
        self.cap = cap
        self.head = 0

    def _widen(self) -> None:
        """The values as doubles from now on (a value that is no short decimal came): each the double its decimal
        is."""
        w = self.w
        vn = self.vn
        vs: vec[float] = vec[float]([0.0] * (self.cap * w))
        for k in range(self.cap * w):
            vs[k] = _dec(vn[k])
        self.vs = vs
        self.vn = _NO_I32
        self.nar = False
        if self.dropped != _TRIM_FIRST:  # a window before it tries to narrow (a key not yet dropping tries at once)
            self.dropped = 0

    def _widen_t(self) -> None:
        """Boot and seq in ``bs`` from now on, and times from 1970 (a reading of another boot came, or a time the
        narrow ``tm`` cannot reach)."""
        tm, base, boot = self.tm, self.base, self.boot
        bs: vec[i64] = vec[i64]([0] * self.cap)
        for q in range(self.n):
            j = self._j(q)
            x = tm[j]
            tm[j] = ((x >> _SH_NARROW) + base) << 5 | (x >> 31) & 31
            bs[j] = boot << 31 | x & _ID_MAX
        self.bs = bs
        self.sh = _SH_WIDE
        self.base = 0
        self.boot = _NO_BOOT
        if self.dropped != _TRIM_FIRST:
            self.dropped = 0

    def _rebase(self, t: i64) -> bool:
        """A narrow key's ``base`` moved :data:`_T_BACK` below the oldest of its times and ``t``, if they span no more
        than :data:`_T_FIT` (returns whether they do). It has panes."""
        n = self.n
        lo = self._time(self._j(0))
        hi = self._time(self._j(n - 1))  # the times grow with the panes' starts
        if t < lo:
            lo = t
        if t > hi:
            hi = t
        if hi - lo > _T_FIT:
            return False
        nb = lo - _T_BACK
        d = (self.base - nb) << _SH_NARROW
        tm = self.tm
        for q in range(n):
            j = self._j(q)
            tm[j] = tm[j] + d
        self.base = nb
        return True

    def _holds(self, t: i64, b: i64, reading: bool) -> bool:
        """Whether the narrow ``tm`` can keep a pane at ``t`` (``reading``: of one reading, of boot ``b``; else an
        accumulator's start), with ``base`` moved if that is what it takes."""
        if reading and b != self.boot and (self.boot != _NO_BOOT or b < 0):
            return False
        d = t - self.base
        if not (0 <= d < _T_SPAN or self._rebase(t)):
            return False
        if reading:
            self.boot = b
        return True

    def _fresh(self, t: i64) -> None:
        """The key has no pane and one at ``t`` is coming: narrow (time and values) from here."""
        if self.sh != _SH_NARROW:
            self.sh = _SH_NARROW
            self.bs = _NO_I64
        if _PACKED and not self.nar:
            self.nar = True
            self.vs = _NO_F64
            self.vn = vec[i32]([0] * (self.cap * self.w))
        self.base = t - _T_BACK
        self.boot = _NO_BOOT
        self.dropped = _TRIM_FIRST

    def _renarrow(self) -> None:
        """A wide key (time or values) narrowed again where every live pane allows it."""
        n, w = self.n, self.w
        if self.sh == _SH_WIDE:
            lo = self._time(self._j(0))
            hi = self._time(self._j(n - 1))
            bs = self.bs
            boot: i64 = _NO_BOOT
            ok = hi - lo <= _T_FIT
            q: i64 = 0
            while ok and q < n:
                j = self._j(q)
                if not self.tm[j] & _ACC:
                    b = bs[j] >> 31
                    if boot == _NO_BOOT:
                        boot = b
                    elif b != boot:
                        ok = False
                q += 1
            if ok:
                nb = lo - _T_BACK
                tm = self.tm
                for q in range(n):
                    j = self._j(q)
                    x = tm[j]
                    tm[j] = (((x >> _SH_WIDE) - nb) << 5 | x & 31) << 31 | (0 if x & _ACC else bs[j] & _ID_MAX)
                self.bs = _NO_I64
                self.sh = _SH_NARROW
                self.base = nb
                self.boot = boot
        if _PACKED and not self.nar:
            vs, tm = self.vs, self.tm
            vn: vec[i32] = vec[i32]([0] * (self.cap * w))
            for q in range(n):
                j = self._j(q)
                mask = self._flags(tm[j])
                if not mask & _ACC:
                    for m in range(w):
                        if mask & 1 << m:
                            d = _decimal(vs[j * w + m])
                            if d == _NO_DEC:
                                return
                            vn[j * w + m] = i32(d)
            self.vn = vn
            self.vs = _NO_F64
            self.nar = True

    def _open(self, i: i64) -> i64:
        """Make a place for a new pane at ``i`` (the panes from ``i`` on move up one); its column index."""
        n = self.n
        if n == self.cap:
            # 8 places more under 64 panes, a sixteenth above (O(1) a pane, amortized; :meth:`drop` trims them)
            self._resize(n + (n >> 4) + 2 if n >= 64 else n + 8)
        tm, bs, vs, vn, w, cap, big = self.tm, self.bs, self.vs, self.vn, self.w, self.cap, self.big
        nar = self.nar
        wide = self.sh == _SH_WIDE
        head = self.head
        dst = head + n
        if dst >= cap:
            dst -= cap
        q = n
        while q > i:  # the panes from i on, newest first, up one
            src = dst - 1 if dst else cap - 1
            tm[dst] = tm[src]
            if wide:
                bs[dst] = bs[src]
            if nar:
                for m in range(w):
                    vn[dst * w + m] = vn[src * w + m]
            else:
                for m in range(w):
                    vs[dst * w + m] = vs[src * w + m]
            if big is not None:
                big[dst] = big[src]
            dst = src
            q -= 1
        if big is not None:
            big[dst] = None
        self.n = n + 1
        return dst

    def insert_reading(self, i: i64, values: Values, t: i64, b: i64, s: i64) -> None:
        """A new pane at ``i`` of the one reading ``values`` (``None``: none for that metric; up to ``w``) read at
        ``(t, b, s)``. A time the column cannot hold shifted (2**58 ms or more from 1970; the engine refuses any beyond
        2**53) is a ``ValueError``, before any place is made."""
        if not (-_T_COLUMN <= t - (t - self.off) % self.pane and t < _T_COLUMN):  # its start too (make_acc)
            raise ValueError(f"a pane's reading time {t} is beyond what its column holds (±2**58 ms)")
        if not self.n:
            self._fresh(t)
        if self.sh == _SH_NARROW and not self._holds(t, b, True):
            self._widen_t()
        w = self.w
        mask: i64 = 0
        d0: i64 = 0
        d1: i64 = 0
        d2: i64 = 0
        d3: i64 = 0
        if self.nar:
            for m in range(w):
                v = values[m]
                if v is not None:
                    d = _decimal(v)
                    if d == _NO_DEC:
                        self._widen()
                        break
                    if m == 0:
                        d0 = d
                    elif m == 1:
                        d1 = d
                    elif m == 2:
                        d2 = d
                    else:
                        d3 = d
                    mask |= 1 << m
        if self.nar:
            j = self._open(i)
            vn = self.vn
            k = j * w
            vn[k] = i32(d0)
            if w > 1:
                vn[k + 1] = i32(d1)
                if w > 2:
                    vn[k + 2] = i32(d2)
                    if w > 3:
                        vn[k + 3] = i32(d3)
        else:
            mask = 0
            j = self._open(i)
            vs = self.vs
            k = j * w
            for m in range(w):
                v = values[m]
                if v is None:
                    vs[k + m] = 0.0
                else:
                    vs[k + m] = v
                    mask |= 1 << m
        if self.sh == _SH_NARROW:
            self.tm[j] = ((t - self.base) << 5 | mask) << 31 | s
        else:
            self.tm[j] = t << 5 | mask
            self.bs[j] = b << 31 | s

    def insert_acc(self, i: i64, acc: Acc) -> None:
        """A new pane at ``i``: the accumulator ``acc`` (its ``start`` the pane's)."""
        if not -_T_COLUMN <= acc.start < _T_COLUMN:
            raise ValueError(f"a pane's start {acc.start} is beyond what its column holds (±2**58 ms)")
        if not self.n:
            self._fresh(acc.start)
        if self.sh == _SH_NARROW and not self._holds(acc.start, 0, False):
            self._widen_t()
        self._set_acc(self._open(i), acc)

    def _set_acc(self, j: i64, acc: Acc) -> None:
        """The pane at column ``j`` becomes ``acc`` (whose start a narrow ``tm`` holds)."""
        if self.sh == _SH_NARROW:
            self.tm[j] = ((acc.start - self.base) << 5 | _ACC) << 31
        else:
            self.tm[j] = acc.start << 5 | _ACC
            self.bs[j] = 0
        big = self.big
        if big is None:
            big = self.big = [None] * self.cap
        big[j] = acc
        self.nbig += 1

    def make_acc(self, i: i64, acc: Acc, var: bool) -> None:
        """Pane ``i`` (of one reading) becomes ``acc`` (cleared, its ``start`` the pane's), with that reading added
        (``Acc.add_var`` with ``var``, else ``Acc.add``)."""
        j = self._j(i)
        t, b, s = self._reading(j)
        values = self.values(i)
        if var:
            acc.add_var(values, t, b, s)
        else:
            acc.add(values, t, b, s)
        if self.sh == _SH_NARROW and not self._holds(acc.start, 0, False):  # a start below base: moved, else wide
            self._widen_t()
        self._set_acc(j, acc)

    def values(self, i: i64) -> Values:
        """The values of pane ``i``'s one reading (``None``: none for that metric)."""
        j = self._j(i)
        mask = self._flags(self.tm[j])
        w = self.w
        k = j * w
        out: Values = []
        for m in range(w):
            out.append(self._value(k + m) if mask & 1 << m else None)
        return out

    def _value(self, k: i64) -> float:
        """The value at ``k`` in the values' column (the double a decimal is, in a narrow one)."""
        return _dec(self.vn[k]) if self.nar else self.vs[k]

    def merge_into(self, i: i64, acc: Acc) -> None:
        """Merge pane ``i`` into ``acc`` (one reading as the accumulator of it, without making it)."""
        j = self._j(i)
        x = self.tm[j]
        sh = self.sh
        if (x >> (sh - 5)) & _ACC:
            acc.merge_from(self._big_at(j))
            return
        w = self.w
        k = j * w
        if self.nar:
            vn = self.vn
            v0 = _dec(vn[k])
            v1 = _dec(vn[k + 1]) if w > 1 else 0.0
            v2 = _dec(vn[k + 2]) if w > 2 else 0.0
            v3 = _dec(vn[k + 3]) if w > 3 else 0.0
        else:
            vs = self.vs
            v0 = vs[k]
            v1 = vs[k + 1] if w > 1 else 0.0
            v2 = vs[k + 2] if w > 2 else 0.0
            v3 = vs[k + 3] if w > 3 else 0.0
        if sh == _SH_NARROW:
            acc.merge_reading((x >> 31) & 15, v0, v1, v2, v3, (x >> _SH_NARROW) + self.base, self.boot, x & _ID_MAX)
        else:
            y = self.bs[j]
            acc.merge_reading(x & 15, v0, v1, v2, v3, x >> _SH_WIDE, y >> 31, y & _ID_MAX)

    def part_merge(self, i: i64, p: Part) -> None:
        """:meth:`merge_into` for a front stack entry: what it keeps of the same merge (the same operations)."""
        j = self._j(i)
        mask = (self.tm[j] >> (self.sh - 5)) & 31
        if mask & _ACC:
            p.merge_acc(self._big_at(j))
            return
        w = self.w
        k = j * w
        if self.nar:
            vn = self.vn
            v0 = _dec(vn[k])
            v1 = _dec(vn[k + 1]) if w > 1 else 0.0
            v2 = _dec(vn[k + 2]) if w > 2 else 0.0
            v3 = _dec(vn[k + 3]) if w > 3 else 0.0
        else:
            vs = self.vs
            v0 = vs[k]
            v1 = vs[k + 1] if w > 1 else 0.0
            v2 = vs[k + 2] if w > 2 else 0.0
            v3 = vs[k + 3] if w > 3 else 0.0
        p.merge_reading(mask, v0, v1, v2, v3)

    def part_set(self, i: i64, p: Part) -> None:
        """``p`` becomes what a front stack entry keeps of pane ``i`` (as :meth:`set_into`)."""
        j = self._j(i)
        if (self.tm[j] >> (self.sh - 5)) & _ACC:
            p.take(self._big_at(j))
        else:
            p.clear()
            self.part_merge(i, p)

    def part_span(self, j: i64, e: i64, p: Part) -> None:
        """``p`` becomes what a back keeps of panes ``j .. e - 1`` (``j < e``), merged in their order (as the windows
        push them)."""
        self.part_set(j, p)
        for q in range(j + 1, e):
            self.part_merge(q, p)

    def set_into(self, i: i64, acc: Acc) -> None:
        """``acc`` becomes a copy of pane ``i`` (as :meth:`merge_into`)."""
        j = self._j(i)
        if (self.tm[j] >> (self.sh - 5)) & _ACC:
            acc.set(self._big_at(j))
        else:
            acc.clear()
            self.merge_into(i, acc)

    def reading_into(self, i: i64, m: i64, r: Stat, last: bool) -> bool:
        """``r``'s first reading of metric ``m`` (``last``: its last) becomes pane ``i``'s, if it has a value of it
        (returns whether it has)."""
        j = self._j(i)
        x = self.tm[j]
        sh = self.sh
        flags = (x >> (sh - 5)) & 31  # _flags and _reading inlined: a few times for each window fired
        if flags & _ACC:
            pa = self._big_at(j)
            if not pa.count(m):
                return False
            if last:
                pa.put_last(m, r)
            else:
                pa.put_first(m, r)
            return True
        if not flags & 1 << m:
            return False
        k = j * self.w + m
        v = _dec(self.vn[k]) if self.nar else self.vs[k]
        if sh == _SH_NARROW:
            t = (x >> _SH_NARROW) + self.base
            b = self.boot
            s = x & _ID_MAX
        else:
            y = self.bs[j]
            t = x >> _SH_WIDE
            b = y >> 31
            s = y & _ID_MAX
        if last:
            r.lt, r.lb, r.ls, r.lv = t, b, s, v
        else:
            r.ft, r.fb, r.fs, r.fv = t, b, s, v
        return True

    def first_into(self, i: i64, m: i64, r: Stat) -> None:
        """``r``'s first reading of metric ``m`` becomes that of the oldest pane from ``i`` on with a value of it
        (there must be one): panes hold disjoint times, so it is the first of the panes together."""
        while not self.reading_into(i, m, r, False):
            i += 1

    def last_into(self, i: i64, m: i64, r: Stat) -> None:
        """``r``'s last reading of metric ``m`` becomes that of the newest pane from ``i`` back with a value of it
        (there must be one)."""
        while not self.reading_into(i, m, r, True):
            i -= 1

    def drop(self, k: i64) -> list[Acc] | None:
        """Drop the ``k`` oldest panes; their accumulators (None: none was one)."""
        out: list[Acc] | None = None
        big = self.big
        if big is not None:
            for i in range(k):
                j = self._j(i)
                pa = big[j]
                if pa is not None:
                    if out is None:
                        out = []
                    out.append(pa)
                    big[j] = None
                    self.nbig -= 1
            if not self.nbig:
                self.big = None
        n = self.n - k
        self.n = n
        self.head = self._j(k) if n else 0
        cap = self.cap
        if cap > 16 and n < cap >> 2:
            self._resize(n + (n >> 2) + 4)
        if n:
            self.dropped += k
            if self.dropped >= n + 16:  # as many as it holds (and a few): amortized O(1) a pane
                self.dropped = 0
                # the columns trimmed about once a window: a 60 s/1 s key ends at 67 places for its 65-66 panes, not
                # the 70 its growth reached (96 bytes a key of three doubles); one that grows again is trimmed again
                self.fit()
                if self.sh == _SH_WIDE or (_PACKED and not self.nar):
                    self._renarrow()
        return out

    def fit(self) -> None:
        """The columns trimmed to two places more than the panes, if more than four are free (at a key's first drop,
        then about once a window, and after a restore)."""
        n = self.n
        if self.cap > n + 4:
            self._resize(n + 2)

    def row(self, i: i64, nm: int) -> list[Any]:
        """Pane ``i`` in a snapshot: one of one reading as ``[start, t, boot, seq, a value or None per metric]``, any
        other as :func:`_pane_json_row` gives it."""
        a = self.acc(i)
        if a is not None:
            return _pane_json_row(a, nm)
        t, b, s = self._reading(self._j(i))
        out: list[Any] = [self.start(i), t, b, s]
        out.extend(self.values(i))
        return out

    def append_pane(self, a: Acc | One) -> None:
        """A new newest pane: a reading (into the columns), or an accumulator."""
        if isinstance(a, One):
            self.insert_reading(self.n, a.values, a.t, a.b, a.s)
        else:
            self.insert_acc(self.n, a)


@mypyc_attr(acyclic=True)  # compiled: no cycle can go through it (gateway.memsize walks its attributes)
class _SlideKey(KeyCell):
    """One key's record (:class:`KeyCell`) and its sliding-window state: panes, fired revisions, cleanup timers and
    the two stacks. Without state its panes are the operator's empty ``no_panes`` (never changed)."""

    __slots__ = (
        "back",
        "back_from",
        "ck_lo",
        "cleanup",
        "dirty",
        "front_a",
        "hi",
        "hint",
        "panes",
        "revs",
    )

    def __init__(self, v: int, panes: Panes) -> None:
        super().__init__(v)
        self.panes = panes  # sorted by their start
        # window start -> revision, for fired windows not yet dropped (lateness > 0), and their drop times as a
        # heap of (end + lateness, window start); None while there are none (an empty dict and list are 120 bytes)
        self.revs: dict[int, int] | None = None
        self.cleanup: list[tuple[int, int]] | None = None
        # panes changed after a window containing them fired (None: none; an empty set is 216 bytes a key)
        self.dirty: set[int] | None = None
        # Two-stack sliding aggregation over the panes of the last window fired. Front: panes, oldest last, each with
        # the aggregate of it and every newer front pane; back: the panes in [back_from, hi), pushed since the last
        # transfer, with their aggregate (a Part too: its first and last readings of a metric are those of its oldest
        # and newest panes with a value of it). Of the front's entries only every ``stride``-th from the newest is kept
        # (about twice the square root of a window's panes); a window whose first pane's entry is not kept makes it from
        # the lowest kept one and the panes below it, in the same order as the transfer (so to the bit), and keeps some
        # of those between when they are many (``SlidingOperator._front_from``). About sqrt(n) / 2 entries of n (sqrt(n)
        # until 6 December 2026, and 2 sqrt(n) when every entry below the lowest kept one was made again and kept at
        # each pop, until 5 December). A front entry keeps no first or last reading (a Part): an entry's first reading
        # of a metric is that of its oldest pane with a value of it (panes hold disjoint times), and its last that of
        # the newest front pane with one (that of ``front_a[0]`` or older), the same for every entry. A pane changed
        # after the front was built is dirty, and the next advance throws the stacks away before reading them; a front
        # entry whose pane was dropped is dropped with it (no window still to fire contains it). A transfer ends the
        # front at the key's phase (``SlidingOperator._transfer_end``): the panes from there on are the back again.
        # the entries in a tuple, made anew when one is pushed or dropped (at a transfer, and about once every
        # ``stride`` windows): 64 bytes for two entries, a list was 112 or more with its table
        self.front_a: tuple[Part, ...] = ()
        self.back_from = 0
        self.back: Part | None = None
        # panes below this have been pushed; NO_HI: stacks empty/invalid (an unboxed int: ``int | None`` is an object
        # of 32 bytes a key for a time)
        self.hi: i64 = NO_HI
        self.hint = 0  # where the first pane at or after ``hi`` was last seen in ``panes`` (checked before use)
        # the start of the oldest pane a reading was added to (or made for) since the key's last checkpoint snapshot
        # (``SlidingOperator.snapshot_rows``): its chunks from there on are what the next checkpoint writes
        self.ck_lo = CK_ALL

    def clear(self, panes: Panes) -> None:
        """No state: as :meth:`__init__` made it, with ``panes`` (the stacks' entries are the caller's to give back
        first)."""
        self.site = ""
        self.panes = panes
        self.revs = None
        self.cleanup = None
        self.dirty = None
        self.front_a = ()
        self.back_from = 0
        self.back = None
        self.hi = NO_HI
        self.hint = 0
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
        as a transfer makes them (to the bit). The back is the start of its first pane: its aggregate is made again
        from its panes on restore too, as the windows pushed them (until snapshot version 4 it was also written, as an
        accumulator; :meth:`from_json` reads and ignores it).

        (Until snapshot version 3 every pane was an accumulator and the front was every entry as one, with its
        first and last readings: about 59,000 bytes of JSON a key of a 60 s/1 s window of three metrics read every
        second, against 5,000 now. :meth:`from_json` takes both.)"""
        panes = self.panes
        d: dict[str, Any] = {"panes": [panes.row(i, nm) for i in range(panes.n)]}
        d.update(self.to_json_head(nm))
        return d

    def to_json_head(self, nm: int) -> dict[str, Any]:
        """:meth:`to_json` but its panes."""
        hi = self.hi
        back: int | None = None
        panes = self.panes
        if hi != NO_HI and self.back is not None:
            j = panes.find_front(self.back_from)
            if j < panes.n and panes.start(j) < hi:
                back = panes.start(j)
        return {
            "revs": [] if self.revs is None else [[s, r] for s, r in self.revs.items()],
            "cleanup": [] if self.cleanup is None else [list(x) for x in self.cleanup],
            "dirty": [] if self.dirty is None else sorted(self.dirty),
            "top": self.front_a[0].start if self.front_a else None,
            "back_from": back,
            "hi": None if hi == NO_HI else hi,
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
        panes = self.panes
        n = panes.n
        for i in range(n):
            c = (panes.start(i) - off) // chunk
            if not chunks or chunks[-1] != c:
                chunks.append(c)
                if c >= first:
                    rows = new[str(c)] = []
            if c >= first:
                rows.append(panes.row(i, nm))
        out: dict[str, Any] = {
            "pane_chunks": chunks,
            "pane_from": panes.start(0) if n else None,
            "pane_new": new,
        }
        out.update(d)
        return out

    def load(self, d: dict[str, Any], singles: bool, nm: int, pane: int, off: int) -> int | None:
        """The key's state from its snapshot (either format: see :meth:`to_json`), into this record without state;
        returns the start of its front stack's newest pane (None: no front), whose entries the caller makes
        (``SlidingOperator._restore_front``). ``singles``: a
        pane that is exactly the accumulator of one reading is that reading (in the columns). ``nm``, ``pane``
        and ``off``: the window's metrics, pane size and offset, which each pane must fit (a ``ValueError`` says which
        does not: never a pane taken as something the engine did not write).

        A snapshot before version 3 holds every front entry; they are the aggregates of the same panes, so they are
        made again from the panes as for version 3 (their values are the same bits; a dirty key's stacks are thrown
        away by the next advance before anything reads them). Entries of panes already dropped (in checkpoints
        written before they were dropped with their panes) are never read again: the next window to fire starts
        after them."""
        ks = self
        panes = ks.panes = Panes(nm if singles else 0, pane, off)
        last = 0
        for x in d["panes"]:
            a = _pane_from_row(x, singles, nm, pane, off)
            if panes.n and last >= a.start:
                raise ValueError(f"sliding window snapshot: panes not in order of their start at {a.start}")
            last = a.start
            panes.append_pane(a)
        panes.fit()
        ks.revs = {s: r for s, r in d["revs"]} or None
        ks.cleanup = [(x[0], x[1]) for x in d["cleanup"]] or None
        ks.dirty = set(d["dirty"]) if d["dirty"] else None
        hi_: int | None = d["hi"]
        if hi_ is not None and not -_T_COLUMN < hi_ < _T_COLUMN:
            raise ValueError(f"sliding window snapshot: hi {hi_} is beyond the engine's times")
        ks.hi = NO_HI if hi_ is None else hi_
        if "front" in d:  # before version 3
            front = d["front"]
            top = front[0][0] if front and panes.n and front[0][0] >= panes.start(0) else None
            back = d["back"]
            b = back[0] if back else None
        else:
            top = d["top"]
            b = d["back_from"]
            if b is not None:
                j = panes.find_front(b)
                if ks.hi == NO_HI or b >= ks.hi or j == panes.n or panes.start(j) != b:
                    raise ValueError(f"sliding window snapshot: the back starts at {b}, not a pane's start below {hi_}")
        ks.back_from = b if b is not None else ks.hi if ks.hi != NO_HI else 0
        if b is not None and ks.hi != NO_HI:  # the back's aggregate: its panes merged as the windows pushed them
            j = panes.find_front(b)
            e = panes.find_back(ks.hi)
            if j < e:
                back = ks.back = part_empty(nm)
                panes.part_span(j, e, back)
        return top


class SlidingOperator(WindowOperator):
    """Sliding windows ``[s, s + size)``, ``s = offset + k*slide``, over panes of ``gcd(size, slide)``.

    A reading updates one pane (O(1) whatever size/slide). Windows fire in order of their end through a
    two-stack queue of panes whose front keeps about sqrt(n) / 2 of its n entries (up to about 2 sqrt(n) merges per
    window, sqrt(n) on average). A late reading within the allowed
    lateness marks its pane dirty; the next ``advance`` re-fires every fired window still kept that
    contains it, merging its panes afresh, and rebuilds the stacks.
    """

    def __init__(self, spec: WindowSpec, shared: bool) -> None:
        super().__init__(spec, shared)
        self.size = spec.size_ms
        self.slide = spec.slide_ms
        self.offset = spec.offset_ms
        self.pane = pane_size(spec.size_ms, spec.slide_ms)
        self.no_panes = Panes(0, self.pane, self.offset)  # the panes of every key without state: none, never changed
        # Accumulators of dropped panes and popped stack entries, for reuse by the next pane or stack entry of
        # any key (not in snapshots). The last one given back is taken first: it is likely still in the CPU's
        # cache. At most ``spare_max``, a few windows' worth of panes: a burst (a board flushing half an hour of
        # readings) must not stay allocated for good.
        self.spare: list[Acc] = []
        self.spare_parts: list[Part] = []  # the same for front stack entries
        # scratch: the aggregate a front's entries are made from (_build_front), and a window's entry not kept
        # (_front_from), read before the next window
        self.run = part_empty(self.nm)
        self.spare_max = 4 * (spec.size_ms // self.pane) + 64
        self.singles = self.nm <= 4  # panes of one reading kept as that reading (tests turn it off to compare)
        self.sparse = True  # keep about sqrt(n) / 2 of a front's n entries (tests turn it off to compare)
        self.stagger = True  # each key transfers in a phase of its own (_transfer_end; tests turn it off to compare)
        # every how many-th of a front's entries is kept, from its newest: about twice the square root of a window's
        # panes (_front_stride), the same at every transfer and restore (so a restored front keeps the same entries at
        # its stride; those a window kept between, in windows of more than 64 panes, the next window that needs them
        # makes again)
        self.stride = _front_stride(spec.size_ms // self.pane)
        # a checkpoint's chunk of panes (ms; 0: a key's panes in its own row): windows of more than CHUNK_PANES panes
        self.chunk = self.pane * CHUNK_PANES if spec.size_ms // self.pane > CHUNK_PANES else 0

    def _new_cell(self, v: int) -> _SlideKey:
        return _SlideKey(v, self.no_panes)

    def states(self) -> dict[str, _SlideKey]:
        """The records of the keys with state (tests and benchmarks look at them)."""
        return {k: cast(_SlideKey, self.wm[k]) for k in self.live()}

    def _give_back(self, acc: Acc) -> None:
        """Keep an accumulator no longer used, for a next pane or stack entry (up to ``spare_max``)."""
        if len(self.spare) < self.spare_max:
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
        n = len(fr)
        while n and (below is None or fr[n - 1].start < below):
            n -= 1
            self._give_part(fr[n])
        if n < len(fr):
            ks.front_a = fr[:n]

    def _front_from(self, ks: _SlideKey, j: int) -> Part | None:
        """The aggregate of the front's panes from pane ``j`` (the first of the window to fire) to its newest: its
        lowest kept entry if that is ``j``'s, else made from that entry and the panes below it down to ``j``, in the
        order the transfer merged them (so to the bit), in a scratch entry that the caller reads before the next
        window (None: the front is empty). Entries are kept only at the stride (see _SlideKey); when ``j`` is
        :data:`_GAP` panes or more below the lowest, the entries between are kept at the stride of that gap (about
        its square root) for the next windows, which then merge fewer panes each."""
        front_a = ks.front_a
        if not front_a:
            return None
        top = front_a[-1]
        panes = ks.panes
        jt = panes.find_front(top.start)
        if j >= jt:
            return top
        run = self.run
        run.copy(top)
        gap = jt - j
        k = _stride(gap) if gap >= _GAP else gap + 1
        for q in range(jt - 1, j - 1, -1):
            panes.part_merge(q, run)
            if (jt - q) % k == 0 and q > j:
                self._keep_entry(ks, run, q)
        run.start = panes.start(j)
        return run

    def _transfer_end(self, key: str, lo: int, hi: int) -> int:
        """Where a transfer at ``lo`` (the back's panes below ``hi`` to become the front) ends the front: at the first
        window start after ``lo`` in the key's phase, ``h`` windows after a multiple of the cycle of ``m`` windows
        (``h`` from the key's name, ``zlib.crc32``: the same in every process), if below ``hi``; the panes from there
        on are the back again. A front is emptied by the window that starts where it ends. A whole transfer at a
        window's start takes the panes up to the end of the window before (``hi``), so it is emptied ``m =
        ceil(size / slide) - 1`` windows later: in its phase again, and from the next transfer on a key transfers in
        its phase, a whole window at a time. Keys that start together (a fleet when the gateway starts) then build
        their fronts at different windows, and the entries they hold together stay near their mean over the cycle
        instead of all peaking at once (as the work of their transfers)."""
        slide, off = self.slide, self.offset
        m = (self.size + slide - 1) // slide - 1
        if m < 2:
            return hi
        h = crc32(key.encode("utf-8", "surrogatepass")) % m  # any str: a lone surrogate is no UTF-8
        m0 = (lo - off) // slide + 1  # the first window start after lo
        e = off + slide * (m0 + (h - m0) % m)
        return e if e < hi else hi

    def _keep_entry(self, ks: _SlideKey, run: Part, q: int) -> None:
        """Push a front entry for pane ``q``: a copy of ``run``, the aggregate of the front's panes from ``q`` on."""
        f = self._take_part()
        f.copy(run)
        f.start = ks.panes.start(q)
        ks.front_a = (*ks.front_a, f)

    def _build_front(self, ks: _SlideKey, i: int, j: int) -> None:
        """The front stack of the panes ``j..i`` (it is empty): the aggregate of the panes so far, newest first;
        entries q = 0, k, 2k, ... (from the newest) keep a Part of it. A window whose first pane is between two kept
        entries makes its own from the older of the two and the panes (``_front_from``)."""
        panes = ks.panes
        stride = self.stride if self.sparse else 1
        top = i - (i - j) // stride * stride  # the oldest kept entry
        run = self.run
        panes.part_set(i, run)
        q = i
        while True:
            if (i - q) % stride == 0:
                self._keep_entry(ks, run, q)
            q -= 1
            if q < top:
                break
            panes.part_merge(q, run)

    def _restore_front(self, ks: _SlideKey, top: int) -> None:
        """A snapshot's front stack: its entries from the pane starting at ``top`` down to the first
        pane of the last window fired, made as the transfer made them (the aggregates of the same panes, merged in
        the same order: the same bits), those at its stride only: the next window makes the ones it reads below
        them again, as after a pop. If a pane changed since (it is dirty), the next advance throws the stacks away
        before reading them, as it would have."""
        panes = ks.panes
        hi = ks.hi
        i = panes.find_front(top)
        if hi == NO_HI or i == panes.n or panes.start(i) != top or top >= hi:
            raise ValueError(f"sliding window snapshot: the front starts at {top}, not a pane's start below {hi}")
        j = panes.find_front(hi - self.size)
        if j <= i:
            self._build_front(ks, i, j)

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
        ks = cast(_SlideKey, self.cell(key) if self.shared else wmc)  # outside shared mode the key's cell is its record
        if not ks.site:
            ks.site = site
            ks.panes = Panes(self.nm if self.singles else 0, self.pane, off)
            if self.shared:
                self._new_key(key)
        p = t - (t - off) % self.pane
        if p < ks.ck_lo:
            ks.ck_lo = p
        panes = ks.panes
        n = panes.n
        i = n - 1
        new = False  # a pane was made for this reading
        pane = self.pane
        newest = panes.t_at(i) if n else 0  # a time in the newest pane
        if not n or p > newest:  # p is a pane boundary: compare with a time in the pane
            i = n
            new = True
        elif newest >= p + pane:  # the newest pane starts after p's
            i = panes.find_back(p)
            new = panes.t_at(i) >= p + pane
        if new:
            if self.singles:
                panes.insert_reading(i, values, t, b, s)
            else:
                acc = self._new_acc(p)
                self._add_values(acc, values, t, b, s)
                panes.insert_acc(i, acc)
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
        if not new:
            pa = panes.acc(i)
            if pa is None:  # its second reading: an accumulator of the two, added in their order
                pa = self._new_acc(p)
                panes.make_acc(i, pa, self.var)
            self._add_values(pa, values, t, b, s)
        return _NONE

    def _window(self, ks: _SlideKey, start: int, end: int) -> Acc:
        """Merge the panes of ``[start, end)`` directly (for re-fires), into a new accumulator."""
        panes = ks.panes
        acc = acc_empty(self.nm)
        i = panes.find_front(start)
        n = panes.n
        while i < n and panes.t_at(i) < end:
            panes.merge_into(i, acc)
            i += 1
        return acc

    def _fire(self, out: list[Output], k: str, ks: _SlideKey, start: int, end: int) -> None:
        """Emit the window ``[start, end)`` through the two stacks; windows must come in increasing order.

        Stack entries and the back's aggregate come from (and go back to) the operator's spare
        accumulators; each result is a fresh :class:`Stat` of its own, never changed afterwards."""
        hi = ks.hi
        back = ks.back
        if hi == NO_HI:
            self._release_stacks(ks)
            back = None
            ks.back_from = hi = start
        front_a = ks.front_a  # a tuple: read again after each change below
        if front_a and front_a[-1].start < start:  # evict panes older than start
            self._drop_front(ks, start)
            front_a = ks.front_a
        panes = ks.panes
        if not front_a and back is not None:  # transfer: the back's panes (from start on) become the front
            lo = ks.back_from if ks.back_from > start else start
            i = panes.find_back(hi, ks.hint) - 1
            j = panes.find_front(lo)
            self._give_part(back)
            back = None
            ks.back_from = hi
            # up to the key's phase (_transfer_end): the panes from there on make the back again
            e = self._transfer_end(k, lo, hi) if self.stagger else hi
            ie = panes.find_front(e) if e < hi else i + 1
            if ie == j:  # no pane before it: all (a transfer at each window would merge the back's panes again)
                ie = i + 1
            if ie > j:
                self._build_front(ks, ie - 1, j)
            if ie <= i:
                back = self._take_part()
                panes.part_span(ie, i + 1, back)
                ks.back_from = panes.start(ie)
        i = panes.find_back(hi if hi > start else start, ks.hint)
        n = panes.n
        while i < n:
            if panes.t_at(i) >= end:
                break
            if back is None:
                back = self._take_part()
                panes.part_set(i, back)
            else:
                panes.part_merge(i, back)  # in place: back itself is never handed out
            i += 1
        ks.back = back
        ks.hi = end
        ks.hint = i
        site = ks.site
        name, kind, aggs = self.name, self.kind, self.aggs
        j = panes.find_front(start)
        fa = self._front_from(ks, j)
        jn = 0
        jb = -1  # the oldest back pane (the newest: i - 1), found when a metric has no value in the front
        if fa is not None:
            jn = panes.find_back(ks.front_a[0].start)  # the newest front pane
        for m, metric in self.bases:  # each result: the front's top, then the back merged in (either may be empty)
            nf = 0 if fa is None else fa.count(m)
            nb = 0 if back is None else back.count(m)
            if nf or nb:
                r = WindowResult(name, kind, k, site, start, end, metric, nf + nb, None, 1, "watermark", aggs)
                if fa is not None:
                    fa.put(m, r)
                    if nf:
                        panes.first_into(j, m, r)
                        panes.last_into(jn, m, r)
                if back is not None and nb:  # its first and last readings from its panes, as the front's
                    back.merge_put(m, r)
                    if not nf:
                        if jb < 0:
                            b0 = ks.back_from
                            jb = panes.find_front(b0 if b0 > start else start)
                        panes.first_into(jb, m, r)
                    panes.last_into(i - 1, m, r)
                out.append(r)

    def _release_stacks(self, ks: _SlideKey) -> None:
        """Empty the two stacks, their accumulators back to the spares."""
        self._drop_front(ks, None)
        if ks.back is not None:
            self._give_part(ks.back)
        ks.back = None
        ks.hi = NO_HI

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
            self._emit(out, k, ks.site, s, s + size, self._window(ks, s, s + size), rev, "late")

    def advance_at(self, wmc: WmCell, key: str | None, wm: int, out: list[Output]) -> None:
        old = self._move(wmc, key, wm)
        if key is None:
            cells = self.wm
            for k in self._due_keys(wm):
                kst = cast(_SlideKey, cells[k])
                self._advance_key(out, k, kst, old, wm)
                if kst.site:
                    self._due(k, self._next_due(kst, wm))
                else:
                    self._drop_key(k)
        else:
            ks = cast(_SlideKey, wmc)  # the key's record
            if ks.site:
                self._advance_key(out, key, ks, old, wm)

    def _next_due(self, ks: _SlideKey, wm: int) -> int:
        """After an advance to ``wm``: at or before the first watermark at which ``ks`` fires or drops anything."""
        size, slide, off = self.size, self.slide, self.offset
        panes = ks.panes
        due = NO_WM
        if panes.n:
            p = panes.start(0)
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
        panes = ks.panes
        if not panes.n:
            e = wm + 1
        elif old == NO_WM:
            e = first_window_end_after(panes.start(0), size, slide, off)
        else:
            e = first_window_end_after(old, size, slide, off)
        while e <= wm:
            s = e - size
            i = panes.find_front(s)
            if i == panes.n:
                break
            q = panes.t_at(i)  # a time in the next pane: the first window containing it is that of its start
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
        np = panes.n
        while n < np:  # drop the panes whose every window is past its allowed lateness
            p = panes.t_at(n)  # a time in the pane: slides are whole panes, so its slide's start is the pane's
            if p - (p - off) % slide + size + lateness > wm:
                break
            n += 1
        if n:
            dropped = panes.drop(n)
            if dropped is not None:
                for acc in dropped:
                    self._give_back(acc)
            ks.hint -= n
            if ks.front_a:  # entries of dropped panes: the next window to fire starts after them
                self._drop_front(ks, panes.start(0) if panes.n else None)
        if not panes.n and not ks.revs:  # no state: its record stays (its watermark)
            ks.clear(self.no_panes)

    def snapshot(self, keys: Set[str] | None = None, order: bool = False) -> dict[str, Any]:
        if order:
            live = self.live(keys)
            snap = self._base_snapshot(live, keys, order)
            snap["keys"] = dict.fromkeys(live)
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
        live = self.live(keys)
        snap = self._base_snapshot(live, keys, False)
        out: dict[str, Any] = {}
        chunk, off, nm = self.chunk if rows else 0, self.offset, self.nm
        i = 0
        cells = self.wm
        for k in live:
            ks = cast(_SlideKey, cells[k])
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
        for k in self.live(keys):
            cast(_SlideKey, self.wm[k]).ck_lo = CK_ALL

    def mark_stored(self, keys: Set[str]) -> None:
        """The panes of ``keys`` are as the stored checkpoint's chunk rows hold them (right after restoring it; a key
        whose row holds its panes, as before chunk rows, keeps every pane counted as changed)."""
        for k in self.live(keys):
            cast(_SlideKey, self.wm[k]).ck_lo = CK_NONE

    def restore(self, snap: dict[str, Any]) -> None:
        sites = self._base_restore(snap)
        for k, d in snap["keys"].items():
            ks = cast(_SlideKey, self._restored(k, sites))
            top = ks.load(d, self.singles, self.nm, self.pane, self.offset)
            if top is not None:
                self._restore_front(ks, top)
        self._requeue_all(list(snap["keys"]))

    def early_acc(self, key: str, start: int) -> tuple[int, int, Acc] | None:
        ks = cast(_SlideKey | None, self.state_of(key))
        end = start + self.size
        wm = self.watermark(key)
        if ks is None or (wm is not None and end <= wm):  # windows fire in order of their end: this one has not
            return None
        return start, end, self._window(ks, start, end)


@mypyc_attr(acyclic=True)  # compiled: no cycle can go through it (gateway.memsize walks its attributes)
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


@mypyc_attr(acyclic=True)  # compiled: no cycle can go through it (gateway.memsize walks its attributes)
class _SesKey(KeyCell):
    """A key's record (:class:`KeyCell`) and its sessions, in a tuple made anew when one is added, merged or dropped
    (a new session comes once a gap; a reading inside the newest changes no tuple): 48 bytes for one session, a list
    was 112 with its table."""

    __slots__ = ("sessions",)

    def __init__(self, v: int) -> None:
        super().__init__(v)
        self.sessions: tuple[_Session, ...] = ()


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
        self.tombs: dict[str, list[list[int]]] = {}

    def _new_cell(self, v: int) -> _SesKey:
        return _SesKey(v)

    def states(self) -> dict[str, _SesKey]:
        """The records of the keys with state (tests and benchmarks look at them)."""
        return {k: cast(_SesKey, self.wm[k]) for k in self.live()}

    def add_at(
        self, wmc: WmCell, key: str, site: str, device: str, t: int, b: int, s: int, values: Values
    ) -> tuple[Output, ...]:
        wm = wmc.v
        lo, hi = t, t + self.gap
        rec = cast(_SesKey, self.cell(key) if self.shared else wmc)  # outside shared mode the key's cell is its record
        sessions = rec.sessions
        if not rec.site:
            rec.site = site
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
                rec.site = ""
                if self.shared:
                    self._drop_key(key)
            return self._late(site, device, t, b, s, values, wm)
        if self.shared:  # a new or changed session: due at its end, or at once if the watermark passed it
            self._due(key, hi if hi > wm and not hits else NO_WM)
        if not hits:
            acc = acc_empty(self.nm)
            self._add_values(acc, values, t, b, s)
            behind = hi <= wm
            x = _Session(lo, hi, 0, acc, True, behind)
            if not sessions or lo > sessions[-1].start:
                rec.sessions = (*sessions, x)
            else:
                more = list(sessions)
                insort(more, x, key=_session_start)
                rec.sessions = tuple(more)
            return _NONE
        base = hits[0]
        start = min(lo, base.start)
        end = max(hi, max(x.end for x in hits))
        merged: Acc = base.acc
        late = any(x.rev > 0 for x in hits) or end <= wm
        for x in hits[1:]:
            merged.merge_from(x.acc)
            if x.rev > 0:
                self.tombs.setdefault(key, []).append([x.start, x.end, x.rev + 1])
        if len(hits) > 1:
            gone = hits[1:]
            rec.sessions = tuple([x for x in sessions if x not in gone])
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
            cells = self.wm
            for k in self._due_keys(wm):
                rec = cast(_SesKey, cells[k])
                self._advance_key(out, k, rec, wm)
                sessions = rec.sessions
                if not rec.site:
                    self._drop_key(k)
                else:
                    due = sessions[0].end if sessions[0].end > wm else sessions[0].end + self.lateness
                    for x in sessions:
                        d = x.end if x.end > wm else x.end + self.lateness
                        if d < due:
                            due = d
                    self._due(k, due if due > wm else wm + 1)
        else:
            rec = cast(_SesKey, wmc)  # the key's record
            if rec.site:
                self._advance_key(out, key, rec, wm)

    def _advance_key(self, out: list[Output], k: str, rec: _SesKey, wm: int) -> None:
        lateness = self.lateness
        sessions = rec.sessions
        site = rec.site
        if self.tombs:
            for start, end, rev in self.tombs.pop(k, ()):
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
                    self._emit(out, k, site, x.start, end, x.acc, x.rev, "late" if x.late else "watermark")
                    x.pending = False
                    x.late = False
                if end + lateness <= wm:
                    drop = True
        if drop:
            keep = tuple([x for x in sessions if x.end + lateness > wm])
            rec.sessions = keep
            if not keep:
                rec.site = ""  # no state: its record stays (its watermark)

    def snapshot(self, keys: Set[str] | None = None, order: bool = False) -> dict[str, Any]:
        live = self.live(keys)
        snap = self._base_snapshot(live, keys, order)
        if order:
            snap["sessions"] = dict.fromkeys(live)
            snap["tombs"] = dict.fromkeys(self.tombs)
            return snap
        sessions: dict[str, Any] = {}
        i = 0
        cells = self.wm
        for k in live:
            sessions[k] = [x.to_json() for x in cast(_SesKey, cells[k]).sessions]
            self._every_few(i)
            i += 1
        snap["sessions"] = sessions
        snap["tombs"] = {k: [list(x) for x in self.tombs[k]] for k in key_list(self.tombs, keys)}
        return snap

    def restore(self, snap: dict[str, Any]) -> None:
        sites = self._base_restore(snap)
        live: list[str] = []
        for k, v in snap["sessions"].items():
            if v:  # no session: no state (never written so)
                cast(_SesKey, self._restored(k, sites)).sessions = tuple([_Session.from_json(x) for x in v])
                live.append(k)
        self.tombs = {k: [list(x) for x in v] for k, v in snap["tombs"].items()}
        self._requeue_all(live)

    def early_acc(self, key: str, start: int) -> tuple[int, int, Acc] | None:
        wm = self.watermark(key)
        rec = cast(_SesKey | None, self.state_of(key))
        for x in () if rec is None else rec.sessions:
            if x.start <= start < x.end:
                if x.rev or (wm is not None and x.end <= wm):
                    return None
                return x.start, x.end, x.acc
        return None


_GAP: Final = 16
"""From how many panes below a front's lowest kept entry a window keeps entries between (``_front_from``): in a
60 s/1 s window's front (its newest entry and every 16th below, of 60 panes) never; in a 600 s/1 s one's (every 50th
of 600) about 7 per 49 panes."""


def _stride(n: int) -> int:
    """About sqrt(n): the smallest ``k`` with ``k * k >= n``."""
    k = 1
    while k * k < n:
        k += 1
    return k


def _front_stride(n: int) -> int:
    """Of a front of ``n`` entries, every how many-th is kept: about 2 sqrt(n), so that about sqrt(n) / 2 are kept,
    for up to 2 sqrt(n) merges a window and about sqrt(n) on average (``_front_from``). Each entry a key keeps is an
    aggregate of every metric (176 bytes for three, compiled): sqrt(n) of them, the stride until 6 December 2026, came
    to 4.1 entries a key on average for 60 s/1 s, 2.3 now, for about 4 merges of a pane more a window."""
    return 2 * _stride(n)


def _acc_at(p: int, flat: list[Any]) -> Acc:
    """A pane's (or front stack entry's) accumulator from its snapshot, starting at ``p``."""
    acc = acc_from_json(flat)
    acc.start = p
    return acc


def _pane_at(p: int, flat: list[Any]) -> Acc | One:
    """A pane from its accumulator's snapshot, starting at ``p``: its reading (:class:`One`) if it is exactly the
    accumulator of one reading (what a snapshot of a pane of one reading was before version 3), else the
    accumulator."""
    acc = _acc_at(p, flat)
    one = _one_reading(acc, flat)
    return acc if one is None else one


def _one_reading(acc: Acc, flat: list[Any]) -> One | None:
    """``acc``'s reading (starting where ``acc`` does) if ``acc`` (``flat``: its snapshot) is
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
    one = One(acc.start, values, t, b, s)
    ref = one.fill(
        acc_empty(nm)
    ).to_json()  # what a snapshot of the reading holds: the same values to the bit, or not one
    if ref != flat:
        return None
    for i in range(len(ref)):  # == does not tell -0.0 from 0.0, nor 1 from 1.0
        x = ref[i]
        y = flat[i]
        if type(x) is not type(y) or (isinstance(x, float) and x == 0.0 and copysign(1.0, x) != copysign(1.0, y)):
            return None
    return one


def _pane_json_row(a: Acc, nm: int) -> list[Any]:
    """An accumulator pane in a snapshot (version 3 on): one that is exactly one reading's as a pane of one reading
    (``[start, t, boot, seq, a value or None per metric]``, :meth:`Panes.row`), any other as ``[start,
    accumulator]``."""
    flat = a.to_json()
    one = _one_reading(a, flat)
    return [a.start, flat] if one is None else one.row()


def _pane_from_row(x: list[Any], singles: bool, nm: int, pane: int, off: int) -> Acc | One:
    """A pane from its row in a snapshot (:func:`_pane_json_row`, or ``[start, accumulator]`` before version 3): the
    reading of a pane of one reading (:class:`One`) when ``singles``, else an accumulator. A row that does not fit the
    window (``nm`` metrics, panes of ``pane`` ms from ``off``) is a ``ValueError``."""
    p = x[0]
    if not isinstance(p, int) or (p - off) % pane:
        raise ValueError(f"sliding window snapshot: a pane starting at {p!r}, off the window's panes")
    if len(x) == 2:
        if len(x[1]) != FIELDS * nm:
            raise ValueError(f"sliding window snapshot: the pane at {p} has {len(x[1])} values, not {FIELDS * nm}")
        if not singles:
            return _acc_at(p, x[1])
        a = _pane_at(p, x[1])
        if isinstance(a, One) and not p <= a.t < p + pane:
            raise ValueError(f"sliding window snapshot: a reading at {a.t!r} in the pane at {p}")
        return a
    values: Values = [None if v is None else float(v) for v in x[4:]]
    t, b, s = x[1], x[2], x[3]
    if len(values) != nm or nm > 4 or all(v is None for v in values):
        raise ValueError(f"sliding window snapshot: the reading of the pane at {p} has values {values} ({nm} metrics)")
    if not (isinstance(t, int) and p <= t < p + pane):
        raise ValueError(f"sliding window snapshot: a reading at {t!r} in the pane at {p}")
    if not (isinstance(b, int) and isinstance(s, int) and 0 <= b <= _ID_MAX and 0 <= s <= _ID_MAX):
        raise ValueError(f"sliding window snapshot: a reading of boot {b!r} and seq {s!r} in the pane at {p}")
    one = One(p, values, t, b, s)
    if singles:
        return one
    acc = one.fill(acc_empty(nm))
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
