"""The CEP operator: readings in, pattern matches out, per key, in event time.

Pure and synchronous; the only clock is the ``now_ms`` the caller passes (it is used, as the engine
uses it, to refuse readings with impossible times and to tell idle devices for site keys).

Per key (a device, a site for ``key = "site"`` patterns, a declared group for ``key = "group:<name>"``):

1. readings go into a buffer (a heap on ``(t, device, boot, seq)``), unless they are older than the
   key's watermark: those are *late* and counted, never matched out of order;
2. the key's watermark advances: for a device, ``max event time - out_of_orderness`` (the bound of its
   device class, as in the engine) or ``flushed + 1`` after a flushed marker; for a site, the minimum
   over its active devices (``DeviceTracker.fleet_wm``); for a group, the same rule over its members
   (:meth:`Cep.group_wm`); in ``global`` mode, for every key, the one global watermark. Buffered readings
   below the watermark are released in order and fed to every pattern of the key, so disorder within the
   bound is undone;
3. the watermark then completes the runs waiting out a final negation (``deadline < watermark``) and
   drops the runs that can no longer finish within ``within`` (counted as ``timeouts``).

Bounds: at most ``max_runs`` partial matches per pattern and key (the oldest is evicted and counted; in a
site key, the oldest of the device that started the most, so no device takes another's share),
at most ``max_run_readings`` readings in one run (longer runs are dropped and counted), at most
``max_buffered`` readings waiting per key (beyond it the earliest is released at once and counted as
``forced``; readings older than it then count as late).
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Set
from dataclasses import dataclass, field, replace
from typing import Any, Final

from ..alerts import Alert, Path, Verdict, alert_id
from ..engine.config import EngineSpec
from ..engine.fleet import MemberFleets, SiteFleets
from ..engine.watermark import DeviceTracker
from ..groups import GroupIndex, GroupsSpec
from ..model import Batch, ReadingKey, StatusUpdate
from .automaton import DEAD, DONE, Automaton, Event, Run, compile_pattern
from .expr import Values
from .pattern import PatternSpec

__all__ = ["SNAPSHOT_VERSION", "Cep", "CepSpec", "Match"]

SNAPSHOT_VERSION: Final = 1
FAST_STATS: Final = ("fast_alerts", "confirmed", "retracted", "missed_fast")
"""Counters of an operator with fast patterns: arrival matches, and the verdicts (docs/cep.md, "Fast alerts")."""


@dataclass(frozen=True, slots=True)
class CepSpec:
    patterns: tuple[PatternSpec, ...] = ()
    engine: EngineSpec = field(default_factory=EngineSpec)
    """Watermark bounds and the refusal rules (``max_future``, ``min_time_ms``, ``unsynced``) are the engine's."""
    max_runs: int = 1_000
    max_run_readings: int = 1_000
    max_buffered: int = 10_000
    groups: GroupsSpec = field(default_factory=GroupsSpec)
    """The declared groups (``[groups]``) that ``key = "group:<name>"`` patterns key on."""


@dataclass(frozen=True, slots=True)
class Match:
    """A completed pattern: the readings it took, in order, with the step each one matched."""

    pattern: PatternSpec
    site: str
    key: str
    steps: tuple[str, ...]
    readings: tuple[ReadingKey, ...]
    times: tuple[int, ...]
    details: dict[str, Any]
    path: Path = ""
    """``arrival`` for the fast path's matches, ``event_time`` for the exact path's of an ``on = "both"``
    pattern, empty for a pattern with one path (``event_time``: today's matches)."""
    verdict: Verdict = ""
    refers: str = ""
    """The id of the arrival alert this one confirms (``confirmed``) or retracts (``retracted``)."""

    @property
    def span(self) -> tuple[int, int]:
        """The earliest and latest event time of the matched readings (the fast path takes them in arrival
        order, so its first reading need not be the earliest)."""
        return min(self.times), max(self.times)

    def to_alert(self) -> Alert:
        p = self.pattern
        message = p.message or f"{p.name}: " + " -> ".join(dict.fromkeys(self.steps)) + f" on {self.key}"
        first, last = self.span
        return Alert(
            source="pattern",
            name=p.name,
            site=self.site,
            key=self.key,
            severity=p.severity,
            first_ms=first,
            last_ms=last,
            readings=self.readings,
            message=message,
            details=self.details,
            path=self.path,
            verdict=self.verdict,
            refers=self.refers,
        )

    def alert_id(self) -> str:
        return alert_id("pattern", self.pattern.name, self.key, self.readings, self.path, self.verdict)


@dataclass(slots=True)
class _Open:
    """An arrival match of an ``on = "both"`` pattern waiting for its verdict."""

    match: Match
    lo: int
    hi: int
    due: int
    """Once the key's watermark passes it, the event-time path has emitted every match that can overlap."""
    id: str


def _kind(name: str) -> str:
    """The pattern key kind of a key name: ``d:<device>``, ``s:<site>``, ``g:<group>``."""
    c = name[0]
    return "device" if c == "d" else "site" if c == "s" else "group:" + name[2:]


class _Key:
    __slots__ = ("buf", "clock", "due", "fast", "kind", "name", "open", "order", "runs", "site", "wm")

    def __init__(self, name: str, site: str, n_patterns: int, fast: bool) -> None:
        self.name = name
        self.kind = _kind(name)
        self.site = site
        self.buf: list[Event] = []
        self.wm: int | None = None
        self.order = 0
        """The key's place in creation order (global mode visits the keys due in this order)."""
        self.due: int | None = None
        """Global mode: the smallest watermark at which an advance changes the key (None: none would)."""
        self.runs: list[list[Run]] = [[] for _ in range(n_patterns)]
        self.clock: int | None = None
        """The fast path's clock: the latest event time (or flushed marker + 1) that arrived for the key."""
        self.fast: list[list[Run]] = [[] for _ in range(n_patterns)] if fast else []
        """The fast path's partial matches (patterns with ``on`` = ``arrival`` or ``both``)."""
        self.open: list[list[_Open]] = [[] for _ in range(n_patterns)] if fast else []
        """Arrival matches of ``on = "both"`` patterns waiting for their verdict, in emission order."""


class Cep:
    """Every declared pattern over every key; see the module docstring and ``docs/cep.md``."""

    def __init__(self, spec: CepSpec) -> None:
        self.spec = spec
        # the settings read at every reading, as attributes of this class (compiled: loads, not generic look-ups)
        self._max_future_ms: int = spec.engine.max_future_ms
        self._min_time_ms: int = spec.engine.min_time_ms
        self._reject_unsynced: bool = spec.engine.unsynced == "reject"
        self._max_buffered: int = spec.max_buffered
        self.automata = tuple(compile_pattern(p) for p in spec.patterns)
        # a key = "group" pattern runs in every declared group, a key = "group:<name>" one in that group
        every = any(a.spec.key == "group" for a in self.automata)
        named = [a.spec.key for a in self.automata if a.spec.key.startswith("group:")]
        kinds = ("device", "site", *dict.fromkeys([*named, *(f"group:{g}" for g in spec.groups.names if every)]))

        def runs_in(a: Automaton, kind: str) -> bool:
            return a.spec.key == kind or (a.spec.key == "group" and kind.startswith("group:"))

        self.by_kind = {  # the event-time path's patterns
            kind: tuple(i for i, a in enumerate(self.automata) if runs_in(a, kind) and a.spec.on != "arrival")
            for kind in kinds
        }
        self.fast_by_kind = {  # the arrival path's
            kind: tuple(i for i, a in enumerate(self.automata) if runs_in(a, kind) and a.spec.on != "event_time")
            for kind in kinds
        }
        self.keyed = {kind: bool(self.by_kind[kind] or self.fast_by_kind[kind]) for kind in kinds}
        self.group_names = tuple(k[6:] for k in kinds[2:])
        """The groups some pattern is keyed by (``key = "group:<name>"``)."""
        self.index: GroupIndex = spec.groups.index()
        self.members: dict[str, list[str]] = {g: [] for g in self.group_names}
        """Per keyed group, the devices seen in it (in the order first seen): whose watermarks the key waits for."""
        self._in_groups: dict[tuple[str, str], tuple[str, ...]] = {}
        self.has_fast = any(self.fast_by_kind.values())
        self.both = tuple(i for i, a in enumerate(self.automata) if a.spec.on == "both")
        self.tracker = DeviceTracker(spec.engine.watermark)
        self.fleets = SiteFleets(self.tracker, self._bound)
        """The site keys' fleet watermarks, from a heap per site (``fleets.walk``: the tracker's walk, for tests)."""
        self.group_fleets = MemberFleets(self.tracker, self._bound, hold_unread=True)
        """The group keys' watermarks (:meth:`group_wm`), from a heap per group (``walk`` as for ``fleets``)."""
        self.global_mode = spec.engine.watermark.mode == "global"
        self.global_wm: int | None = None
        """In ``global`` mode, the one watermark of every key: max over devices of (max t - bound)."""
        self.keys: dict[str, _Key] = {}
        self._due: list[tuple[int, int, str]] = []
        """Global mode: a heap of ``(due, order, key)``, an entry for each key's current ``due`` (and stale ones)."""
        self.scan_all = False
        """Global mode: visit every key on each advance instead of the keys due (tests compare the two)."""
        self.touched: set[str] = set()
        """Names of the keys whose state changed (the owner empties it; the pipeline shares its ``dirty``)."""
        self._arrival = 0
        self._bounds: dict[str, int] = {}
        self._routes: dict[tuple[str, str, tuple[str, ...]], tuple[int, ...]] = {}
        self._fast_routes: dict[tuple[str, str, tuple[str, ...]], tuple[int, ...]] = {}
        self._last_route: dict[str, dict[str, tuple[tuple[str, ...], tuple[int, ...]]]] = {}
        """Per key kind and device, the names of its last reading routed and their patterns (``_routed``)."""
        self._last_fast_route: dict[str, dict[str, tuple[tuple[str, ...], tuple[int, ...]]]] = {}
        self.stats: dict[str, int] = {
            "readings": 0,
            "refused": 0,
            "late": 0,
            "matches": 0,
            "evicted": 0,
            "timeouts": 0,
            "overflow": 0,
            "forced": 0,
        }
        if self.has_fast:
            self.stats.update(dict.fromkeys(FAST_STATS, 0))

    # -- input ------------------------------------------------------------------------------------

    def _bound(self, device: str) -> int:
        b = self._bounds.get(device)
        if b is None:
            b = self._bounds[device] = self.spec.engine.watermark.bound_for(device)
        return b

    def _refused(self, t_ms: int, quality: str, now_ms: int) -> bool:
        return (
            t_ms > now_ms + self._max_future_ms
            or t_ms < self._min_time_ms
            or (quality == "u" and self._reject_unsynced)
        )

    def _key(self, name: str, site: str) -> _Key:
        k = self.keys.get(name)
        if k is None:
            k = self.keys[name] = _Key(name, site, len(self.automata), self.has_fast)
            k.order = len(self.keys)
            if self.global_mode:
                k.wm = self.global_wm  # older readings are late for a new key too
        return k

    def _route(self, kind: str, device: str, metrics: Values) -> tuple[int, ...]:
        return self._routed(self._routes, self._last_route, self.by_kind[kind], kind, device, metrics)

    def _fast_route(self, kind: str, device: str, metrics: Values) -> tuple[int, ...]:
        return self._routed(self._fast_routes, self._last_fast_route, self.fast_by_kind[kind], kind, device, metrics)

    def _routed(
        self,
        cache: dict[tuple[str, str, tuple[str, ...]], tuple[int, ...]],
        last: dict[str, dict[str, tuple[tuple[str, ...], tuple[int, ...]]]],
        patterns: tuple[int, ...],
        kind: str,
        device: str,
        metrics: Values,
    ) -> tuple[int, ...]:
        """Which of ``patterns`` look at a reading of ``device`` with these metrics (``Automaton.accepts``). The
        device's last answer when the reading has the same names, found by looking each of them up (the common
        case: no tuple or set is made, and nothing hashed but the names); otherwise from ``cache``, by the names in
        their order."""
        mine = last.get(kind)
        if mine is None:
            mine = last[kind] = {}
        seen = mine.get(device)
        if seen is not None and len(seen[0]) == len(metrics):
            same = True
            for name in seen[0]:
                if name not in metrics:
                    same = False
                    break
            if same:
                return seen[1]
        names = tuple(metrics)
        cache_key = (kind, device, names)
        route = cache.get(cache_key)
        if route is None:
            wanted = frozenset(names)
            route = tuple(i for i in patterns if self.automata[i].accepts(device, wanted))
            if len(cache) > 100_000:
                cache.clear()
            cache[cache_key] = route
        if len(mine) > 100_000:
            mine.clear()
        mine[device] = (names, route)
        return route

    def groups_of(self, device: str, site: str) -> tuple[str, ...]:
        """The keyed groups ``device`` (bound to ``site``) is in; a first look notes it as their member."""
        ck = (device, site)
        found = self._in_groups.get(ck)
        if found is None:
            found = tuple(g for g in self.index.groups_of(device, site) if g in self.members)
            for g in found:
                if device not in self.members[g]:
                    self.members[g].append(device)
            if len(self._in_groups) > 100_000:
                self._in_groups.clear()
            self._in_groups[ck] = found
        return found

    def process_batch(self, batch: Batch, now_ms: int) -> list[Match]:
        """Buffer the batch's readings, advance the device's (and its site's and groups') watermark, return the
        matches."""
        if not self.automata:
            return []
        out: list[Match] = []
        site, device = batch.site, batch.device
        max_t: int | None = None
        keys: list[_Key] = []
        if self.keyed["device"]:
            keys.append(self._key(f"d:{device}", site))
        if self.keyed["site"]:
            keys.append(self._key(f"s:{site}", site))
        groups = self.groups_of(device, site) if self.members else ()
        if groups:
            self.tracker.entry(site, device)  # its site names the group matches it starts
        for g in groups:
            keys.append(self._key(f"g:{g}", ""))
        fast = self.has_fast
        by_kind, fast_by_kind = self.by_kind, self.fast_by_kind
        for r in batch.readings:
            t_ms, quality = r.t_ms, r.quality  # each read once (compiled, a generic look-up)
            if self._refused(t_ms, quality, now_ms):
                self.stats["refused"] += 1
                continue
            self.stats["readings"] += 1
            synced = quality != "u"
            if synced and (max_t is None or t_ms > max_t):
                max_t = t_ms
            self._arrival += 1
            e: Event = (t_ms, device, r.boot, r.seq, self._arrival, r.metrics)
            if fast:  # the arrival path first: its alerts come before any event-time alert they may get
                for key in keys:
                    if fast_by_kind[key.kind]:
                        self._feed_fast(key, key.kind, e, synced, out)
            for key in keys:
                if by_kind[key.kind]:
                    self._buffer(key, e, out)
        flushed = batch.flushed_ms
        if flushed is not None and (flushed > now_ms + self._max_future_ms or flushed < self._min_time_ms):
            flushed = None
        if fast and flushed is not None:
            for key in keys:
                if fast_by_kind[key.kind]:
                    self._tick_fast(key, flushed + 1, out)
        self.tracker.seen(site, device, now_ms, max_t, flushed)
        self.fleets.heard(device)
        self.group_fleets.heard(device)
        if self.global_mode:  # one watermark, moved by any device's time; flushed markers carry nothing
            for k in keys:  # before the advance: this batch's readings and arrival alerts may be due at once
                self._schedule(k)
            if max_t is not None:
                cand = max_t - self._bound(device)
                if self.global_wm is None or cand > self.global_wm:
                    self.global_wm = cand
                    self._advance_global(cand, out)
            return out
        if self.keyed["device"]:
            wm = self.tracker.device_wm(device, self._bound(device))
            if wm is not None:
                self._advance(keys[0], wm, out)
        if self.keyed["site"]:
            self._advance_site(site, now_ms, out)
        for g in groups:
            self._advance_group(g, now_ms, out)
        return out

    def process_status(self, status: StatusUpdate) -> list[Match]:
        """A device's status (sleep interval, offline) can release its site's key."""
        sleep = status.fields.get("sleep_s")
        sleep_s = float(sleep) if isinstance(sleep, (int, float)) and not isinstance(sleep, bool) else None
        self.tracker.status(status.site, status.device, status.received_ms, status.state, sleep_s)
        self.fleets.heard(status.device)
        groups = self.groups_of(status.device, status.site) if self.members and not self.global_mode else ()
        self.group_fleets.heard(status.device)
        out: list[Match] = []
        if not self.global_mode:
            if self.by_kind["site"]:
                self._advance_site(status.site, status.received_ms, out)
            for g in groups:
                self._advance_group(g, status.received_ms, out)
        return out

    def move_device(self, device: str, site: str) -> None:
        """The device belongs to ``site`` from now on: its key's matches carry it; readings already buffered
        in its old site's key stay there, released on the device's event time as before."""
        self.tracker.move(device, site)
        self.fleets.moved(device, site)
        k = self.keys.get(f"d:{device}")
        if k is not None:
            k.site = site
        if self.members:
            self.groups_of(device, site)  # a site: member may take it into more groups (it stays in the old ones)

    def advance(self, now_ms: int) -> list[Match]:
        """Time-driven progress: silent devices turn idle and stop holding their site's key back."""
        out: list[Match] = []
        if self.global_mode:
            return out
        if self.by_kind["site"]:
            for site in sorted(self.tracker.sites):
                self._advance_site(site, now_ms, out)
        for g in self.group_names:
            self._advance_group(g, now_ms, out)
        return out

    def flush_key(self, key: str, watermark: int) -> list[Match]:
        """Advance one key (``d:<device>`` or ``s:<site>``) to ``watermark`` by hand (tests, shutdown)."""
        out: list[Match] = []
        k = self.keys.get(key)
        if k is not None:
            self._advance(k, watermark, out)
            if self.global_mode:
                self._schedule(k)
        return out

    # -- the work ---------------------------------------------------------------------------------

    def _buffer(self, k: _Key, e: Event, out: list[Match]) -> None:
        wm = self.global_wm if self.global_mode and self.global_wm is not None else k.wm
        if wm is not None and e[0] < wm:
            self.stats["late"] += 1
            return
        self.touched.add(k.name)
        heapq.heappush(k.buf, e)
        if len(k.buf) > self._max_buffered:
            first = heapq.heappop(k.buf)
            self.stats["forced"] += 1
            self._feed(k, first, out)
            k.wm = first[0] if k.wm is None else max(k.wm, first[0])

    def _advance_site(self, site: str, now_ms: int, out: list[Match]) -> None:
        wm = self.fleets.fleet_wm(site, now_ms)
        k = self.keys.get(f"s:{site}")
        if wm is not None and k is not None:
            self._advance(k, wm, out)

    def _due_of(self, k: _Key) -> int | None:
        """The smallest watermark at which :meth:`_advance` changes ``k``: it releases a buffered reading
        (``t < wm``), completes a quiet period (``deadline < wm``), drops a run out of ``within``
        (``start + within < wm``) or retracts an arrival alert (``due < wm``)."""
        due: int | None = k.buf[0][0] + 1 if k.buf else None
        for i, runs in enumerate(k.runs):
            if not runs:
                continue
            a = self.automata[i]
            for r in runs:
                if r.deadline is not None:
                    d = r.deadline + 1 if a.final_guard is not None else None
                elif a.within_ms is not None:
                    d = r.start[0] + a.within_ms + 1
                else:
                    continue
                if d is not None and (due is None or d < due):
                    due = d
        if self.both:
            for i in self.both:
                for o in k.open[i]:
                    if due is None or o.due + 1 < due:
                        due = o.due + 1
        return due

    def _schedule(self, k: _Key) -> None:
        """Global mode: note ``k``'s due watermark (an entry in the heap when it changed)."""
        due = self._due_of(k)
        if due != k.due:
            k.due = due
            if due is not None:
                heapq.heappush(self._due, (due, k.order, k.name))

    def _advance_global(self, wm: int, out: list[Match]) -> None:
        """The global watermark moved to ``wm``: advance the keys it reaches, in creation order (the order a
        walk over every key visits them in, so the output is the same; a key not due has nothing to release)."""
        if self.scan_all:
            due_keys = list(self.keys.values())
        else:
            heap, found = self._due, {}
            while heap and heap[0][0] <= wm:
                d, order, name = heapq.heappop(heap)
                k = self.keys.get(name)
                if k is not None and k.due == d:
                    found[order] = k
            due_keys = [found[o] for o in sorted(found)]
        for k in due_keys:
            self._advance(k, wm, out)
            self._schedule(k)

    def group_wm(self, group: str, now_ms: int) -> int | None:
        """The fleet rule over the group's members: the minimum device watermark of its active members (the
        largest if every member is idle). A member that said it is online (a status) but sent no reading yet holds
        the group (``None``) until its first reading or until it is idle: a sleepy board's first flush is not late
        for its group."""
        return self.group_fleets.fleet_wm(group, self.members[group], now_ms)

    def _advance_group(self, group: str, now_ms: int, out: list[Match]) -> None:
        k = self.keys.get(f"g:{group}")
        if k is not None:
            wm = self.group_wm(group, now_ms)
            if wm is not None:
                self._advance(k, wm, out)

    def _advance(self, k: _Key, wm: int, out: list[Match]) -> None:
        if k.wm is not None and wm <= k.wm:
            return
        self.touched.add(k.name)
        buf = k.buf
        while buf and buf[0][0] < wm:
            self._feed(k, heapq.heappop(buf), out)
        k.wm = wm
        for i, runs in enumerate(k.runs):
            if runs:
                a = self.automata[i]
                if a.final_guard is not None:
                    k.runs[i] = self._complete_pending(i, k, k.runs[i], wm, out)
                if a.within_ms is not None:
                    limit = wm - a.within_ms
                    kept = [r for r in k.runs[i] if r.deadline is not None or r.start[0] >= limit]
                    self.stats["timeouts"] += len(k.runs[i]) - len(kept)
                    k.runs[i] = kept
        if self.both:
            self._retract(k, wm, out)

    def _retract(self, k: _Key, wm: int, out: list[Match]) -> None:
        """Retract the arrival matches whose verdict is due (``due < wm``) and that nothing confirmed."""
        for i in self.both:
            opens = k.open[i]
            if opens and any(o.due < wm for o in opens):
                for o in opens:
                    if o.due < wm:
                        self.stats["retracted"] += 1
                        out.append(replace(o.match, verdict="retracted", refers=o.id))
                k.open[i] = [o for o in opens if o.due >= wm]

    def _complete_pending(
        self, i: int, k: _Key, runs: list[Run], before: int, out: list[Match], fast: bool = False
    ) -> list[Run]:
        """Emit, in start order, the runs whose quiet period ended before ``before``; apply the skip strategy;
        return the runs left."""
        a = self.automata[i]
        remaining: list[Run] = []
        cut: tuple[int, str, int, int] | None = None
        for run in runs:
            if cut is not None and run.start <= cut:
                continue
            if run.deadline is not None and run.deadline < before:
                self._emit(i, k, run, out, fast)
                if a.skip_past:
                    # skip past the last event: runs that started at or before it are discarded
                    cut = run.last_key
                    remaining = [r for r in remaining if r.start > cut]
                continue
            remaining.append(run)
        return remaining

    def _feed(self, k: _Key, e: Event, out: list[Match]) -> None:
        """One reading, in event-time order, through every pattern of the key that looks at it."""
        runs = k.runs
        for i in self._route(k.kind, e[1], e[5]):
            runs[i] = self._take(i, k, runs[i], e, out, False)

    def _feed_fast(self, k: _Key, kind: str, e: Event, clocked: bool, out: list[Match]) -> None:
        """One reading, as it arrives, through every fast pattern of the key that looks at it; a synced
        reading's event time moves the key's fast clock first."""
        if clocked and (k.clock is None or e[0] > k.clock):
            self._tick_fast(k, e[0], out)
        self.touched.add(k.name)
        fast = k.fast
        for i in self._fast_route(kind, e[1], e[5]):
            fast[i] = self._take(i, k, fast[i], e, out, True)

    def _tick_fast(self, k: _Key, clock: int, out: list[Match]) -> None:
        """The fast path's time: quiet periods that ended before ``clock`` complete, runs that can no longer
        finish within ``within`` are dropped (as the watermark does on the event-time path)."""
        if k.clock is not None and clock <= k.clock:
            return
        self.touched.add(k.name)
        k.clock = clock
        for i, runs in enumerate(k.fast):
            if runs:
                a = self.automata[i]
                if a.final_guard is not None:
                    runs = k.fast[i] = self._complete_pending(i, k, runs, clock, out, True)
                if a.within_ms is not None:
                    limit = clock - a.within_ms
                    if any(r.start[0] < limit and r.deadline is None for r in runs):
                        k.fast[i] = [r for r in runs if r.deadline is not None or r.start[0] >= limit]

    def _take(self, i: int, k: _Key, runs: list[Run], e: Event, out: list[Match], fast: bool) -> list[Run]:
        """Let pattern ``i``'s runs of key ``k`` read ``e``, start a run at ``e``; return the runs left."""
        a = self.automata[i]
        if runs and a.final_guard is not None:
            runs = self._complete_pending(i, k, runs, e[0], out, fast)
        kept: list[Run] = []
        for run in runs:
            status = a.feed(run, e)
            if status == DEAD:
                continue
            if status == DONE:
                self._emit(i, k, run, out, fast)
                if a.skip_past:
                    # skip past the last event: every run started at or before ``e`` is discarded, and ``e``
                    # starts nothing
                    return []
                continue
            if len(run.taken) > self.spec.max_run_readings:
                if not fast:
                    self.stats["overflow"] += 1
                continue
            kept.append(run)
        new = a.start(e)
        if new is not None:
            if new.status == DONE:
                self._emit(i, k, new, out, fast)
                if a.skip_past:
                    kept = []
            else:
                if len(kept) >= self.spec.max_runs:
                    self._evict(k, kept, e[1], fast)
                kept.append(new)
        return kept

    def _emit(self, i: int, k: _Key, run: Run, out: list[Match], fast: bool) -> None:
        a = self.automata[i]
        if fast:
            self.stats["fast_alerts"] += 1
            m = self._match(a, k, run, "arrival")
            if a.spec.on == "both":
                lo, hi = m.span
                due = hi + (a.within_ms or 0) + a.final_span_ms
                k.open[i].append(_Open(m, lo, hi, due, m.alert_id()))
        else:
            self.stats["matches"] += 1
            m = self._match(a, k, run, "")
            if a.spec.on == "both":
                m = self._verdict(i, k, m)
        out.append(m)

    def _verdict(self, i: int, k: _Key, m: Match) -> Match:
        """An event-time match of an ``on = "both"`` pattern confirms the first open arrival match of its key
        on the same readings, or else the first whose span overlaps its own; or it says ``missed_fast``."""
        opens = k.open[i]
        readings = m.readings
        pick = next((j for j, o in enumerate(opens) if o.match.readings == readings), None)
        if pick is None:
            same = set(readings)  # the arrival path may have taken them in another order
            pick = next((j for j, o in enumerate(opens) if set(o.match.readings) == same), None)
        if pick is None:
            lo, hi = m.span
            pick = next((j for j, o in enumerate(opens) if o.lo <= hi and lo <= o.hi), None)
        if pick is None:
            self.stats["missed_fast"] += 1
            return replace(m, path="event_time", verdict="missed_fast")
        self.stats["confirmed"] += 1
        return replace(m, path="event_time", verdict="confirmed", refers=opens.pop(pick).id)

    def _evict(self, k: _Key, runs: list[Run], device: str, fast: bool = False) -> None:
        """Make room for a run ``device`` starts. A device key's oldest run goes; in a site key, shared by its
        devices, ``max_runs`` is shared fairly (max-min): the oldest run of the device that started the most
        goes, and a device that has started the most (or as many) loses its own oldest, never another's."""
        i = 0
        if k.name[0] != "d":
            counts = Counter(r.start[1] for r in runs)
            top = max(counts.values())
            if counts[device] < top:
                i = next(j for j, r in enumerate(runs) if counts[r.start[1]] == top)
            else:
                i = next(j for j, r in enumerate(runs) if r.start[1] == device)
        del runs[i]
        if not fast:
            self.stats["evicted"] += 1

    def _site_for(self, k: _Key, device: str) -> str:
        """A match's site: its key's; a group key spans sites, so there the site of the match's first device."""
        if k.name[0] != "g":
            return k.site
        e = self.tracker.state.get(device)
        return "" if e is None else str(e[0])

    def _match(self, a: Automaton, k: _Key, run: Run, path: Path) -> Match:
        names = [a.states[j].name for j, _ in run.taken]
        return Match(
            pattern=a.spec,
            site=self._site_for(k, run.taken[0][1][1]),
            key=k.name[2:],
            steps=tuple(names),
            readings=tuple((e[1], e[2], e[3]) for _, e in run.taken),
            times=tuple(e[0] for _, e in run.taken),
            details=a.details(run),
            path=path,
        )

    # -- state ------------------------------------------------------------------------------------

    def partial_matches(self) -> int:
        """Runs alive over every key and pattern, of both paths (a gauge)."""
        return sum(len(r) for k in self.keys.values() for r in (*k.runs, *k.fast))

    def buffered(self) -> int:
        return sum(len(k.buf) for k in self.keys.values())

    def _key_doc(self, k: _Key, names: list[str]) -> dict[str, Any]:
        """One key's state in a snapshot."""
        doc: dict[str, Any] = {
            "site": k.site,
            "wm": k.wm,
            "buf": [[e[0], e[1], e[2], e[3], dict(e[5])] for e in sorted(k.buf)],
            "runs": {names[i]: [r.to_json() for r in runs] for i, runs in enumerate(k.runs) if runs},
        }
        if self.has_fast:  # the arrival path's state (absent without fast patterns: the snapshot is unchanged)
            doc["clock"] = k.clock
            doc["fast"] = {names[i]: [r.to_json() for r in runs] for i, runs in enumerate(k.fast) if runs}
            doc["open"] = {
                names[i]: [
                    [list(o.match.steps), [list(r) for r in o.match.readings], list(o.match.times),
                     o.match.details, o.due]
                    for o in opens
                ]
                for i, opens in enumerate(k.open)
                if opens
            }  # fmt: skip
        return doc

    def snapshot(self, keys: Set[str] | None = None, order: bool = False) -> dict[str, Any]:
        """All state as plain JSON-able values; ``keys`` and ``order`` select the keys' entries (and the
        tracker's) as in ``Engine.snapshot``."""
        names = [a.name for a in self.automata]
        live = self.keys
        if order:
            per_key: dict[str, Any] = dict.fromkeys(live)
        else:
            per_key = {
                name: self._key_doc(k, names)
                for name, k in (live.items() if keys is None else ((n, live[n]) for n in keys if n in live))
            }
        snap = {
            "version": SNAPSHOT_VERSION,
            "patterns": names,
            "tracker": self.tracker.snapshot(keys, order),
            "stats": dict(self.stats),
            "keys": per_key,
        }
        if self.members:  # who is in each keyed group: a device that moved stays in its old site's groups
            snap["members"] = {g: list(devices) for g, devices in self.members.items()}
        if self.global_mode:
            snap["global_wm"] = self.global_wm
        return snap

    def restore(self, snap: dict[str, Any]) -> None:
        """Take back a :meth:`snapshot` from an operator with the same patterns."""
        if snap.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"snapshot version {snap.get('version')!r}, expected {SNAPSHOT_VERSION}")
        names = [a.name for a in self.automata]
        if list(snap["patterns"]) != names:
            raise ValueError(f"snapshot has patterns {snap['patterns']}, operator has {names}")
        self.tracker.restore(snap["tracker"])
        self.fleets.clear()
        self.group_fleets.clear()
        self.members = {g: [] for g in self.group_names}
        for g, devices in snap.get("members", {}).items():  # as they were (a snapshot before them: made again)
            if g in self.members:
                self.members[g] = [str(d) for d in devices]
        self._in_groups = {}
        for device, entry in self.tracker.state.items():  # and the groups of each device's current site
            self.groups_of(device, str(entry[0]))
        self.global_wm = snap.get("global_wm") if self.global_mode else None
        # counters the snapshot lacks (fast patterns added since) start at zero
        self.stats = {**dict.fromkeys(self.stats, 0), **snap["stats"]}
        self.keys = {}
        arrival = 0
        for name, doc in snap["keys"].items():
            k = self._key(name, doc["site"])
            k.wm = doc["wm"]
            for t, d, b, s, m in doc["buf"]:
                arrival += 1
                k.buf.append((t, d, b, s, arrival, m))
            heapq.heapify(k.buf)
            for pname, runs in doc["runs"].items():
                i = names.index(pname)
                k.runs[i] = [Run.from_json(r, len(self.automata[i].states)) for r in runs]
            if not self.has_fast:
                continue
            # a snapshot from before a pattern got a fast path has no arrival state: the path starts afresh
            k.clock = doc.get("clock")
            for pname, runs in doc.get("fast", {}).items():
                i = names.index(pname)
                if self.automata[i].spec.on != "event_time":
                    k.fast[i] = [Run.from_json(r, len(self.automata[i].states)) for r in runs]
            for pname, opens in doc.get("open", {}).items():
                i = names.index(pname)
                if self.automata[i].spec.on != "both":
                    continue
                for steps, readings, times, details, due in opens:
                    m = Match(
                        pattern=self.automata[i].spec,
                        site=self._site_for(k, str(readings[0][0])),
                        key=name[2:],
                        steps=tuple(steps),
                        readings=tuple((str(d), int(b), int(q)) for d, b, q in readings),
                        times=tuple(times),
                        details=dict(details),
                        path="arrival",
                    )
                    lo, hi = m.span
                    k.open[i].append(_Open(m, lo, hi, int(due), m.alert_id()))
        self._arrival = arrival
        self._due = []
        if self.global_mode:
            for k in self.keys.values():
                k.due = None
                self._schedule(k)
