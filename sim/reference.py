"""What the gateway must write for a run: a brute-force reference of its decode, dedup and window rules.

It replays a :class:`~sim.world.Run`'s deliveries in arrival order the simple way - every accepted
reading kept in plain per-window lists, every aggregate recomputed from them with :mod:`statistics`, no
panes, stacks, heaps or incremental updates - and follows the rules of ``docs/protocol.md`` (dead
letters, duplicates) and ``docs/semantics.md`` (refused readings, per-device or global watermarks,
flushed markers, firing, allowed lateness, re-fires, sessions and their superseded points).

Only the window *specs* come from the gateway's configuration parser; the semantics are written again
here, so that the gateway and this reference can disagree. Site-keyed windows (on the fleet watermark,
whose idleness depends on the gateway's wall clock) are not modelled: asking for them raises
:class:`~sim.errors.SpecError`.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.engine.config import EngineSpec, WindowSpec, parse_engine
from gateway.errors import ConfigError

from .errors import SpecError
from .world import Run, SentReading

__all__ = [
    "Expected",
    "Firing",
    "LateKey",
    "WindowKey",
    "WindowRef",
    "WindowValue",
    "device_watermark",
    "engine_spec",
    "expect",
]

Event = tuple[int, int, int, dict[str, float]]  # t, boot, seq, values
WindowKey = tuple[str, str, int, str]
"""(window, device, start, metric): one series and timestamp of the ``window`` measurement."""
WindowValue = tuple[int, dict[str, float], int]
"""(count, aggregates, revision) of a window point's last write."""
LateKey = tuple[str, str, str, int, int, int, str]
"""(window, device, metric, t, boot, seq, reason): one ``late_reading`` record ('' window for refusals)."""


@dataclass(frozen=True, slots=True)
class Firing:
    """A window point written at ``at_ms`` (the arrival that caused it)."""

    at_ms: int
    window: str
    device: str
    start_ms: int
    end_ms: int | None
    metric: str
    count: int
    revision: int


@dataclass(slots=True)
class Expected:
    """Everything the gateway should write for a run."""

    readings: list[int] = field(default_factory=list)
    """Indexes into ``run.readings`` of the readings that land in ``reading``, in acceptance order."""
    dead_letters: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(reason, device) -> records."""
    duplicates: int = 0
    windows: dict[WindowKey, WindowValue] = field(default_factory=dict)
    late: dict[LateKey, int] = field(default_factory=dict)
    """Each late record, with the arrival time that routed it."""
    firings: list[Firing] = field(default_factory=list)
    watermarks: list[tuple[int, str, int]] = field(default_factory=list)
    """(arrival, device, device watermark after the batch), with the engine's default bound."""


def engine_spec(gateway: Mapping[str, Any]) -> EngineSpec:
    """The engine spec from a gateway configuration's ``engine`` and ``windows`` tables."""
    try:
        spec = parse_engine(gateway)
    except ConfigError as exc:
        raise SpecError(f"gateway configuration: {exc}") from exc
    for w in spec.windows:
        if w.key == "site":
            raise SpecError(f"windows[{w.name}]: site-keyed windows are not modelled by the simulator's reference")
    return spec


def _ranges(t: int, size: int, slide: int, offset: int) -> list[tuple[int, int]]:
    """Every window [start, start + size) on the grid offset + k * slide that contains t (brute force)."""
    k = (t - offset - size) // slide
    out = []
    while offset + k * slide <= t:
        s = offset + k * slide
        if s <= t < s + size:
            out.append((s, s + size))
        k += 1
    return out


def _aggregates(events: list[Event], metric: str, names: tuple[str, ...]) -> tuple[int, dict[str, float]] | None:
    vals = sorted((t, b, s, v[metric]) for t, b, s, v in events if metric in v)
    if not vals:
        return None
    xs = [x[3] for x in vals]
    full = {
        "sum": float(sum(xs)),
        "mean": statistics.fmean(xs),
        "min": min(xs),
        "max": max(xs),
        "first": vals[0][3],
        "last": vals[-1][3],
    }
    if len(xs) >= 2:
        full["stddev"] = statistics.stdev(xs)
    return len(xs), {k: v for k, v in full.items() if k in names}


class WindowRef:
    """One window spec over every key (a device, or a site), brute force.

    ``add(key, device, events)`` takes a batch's events against the key's watermark as it was before the
    batch; ``advance(key, wm)`` then moves the watermark (``key`` is ignored in global mode: one watermark)
    and returns every window whose end it reached and that changed, and drops those past end + lateness.
    The engine's own tests use it too (tests/gateway/engine/engine_reference.py adds site-keyed watermarks).
    """

    def __init__(self, spec: WindowSpec, engine: EngineSpec) -> None:
        self.spec = spec
        self.engine = engine
        self.shared = engine.watermark.mode == "global"
        self.wm: dict[str, int] = {}
        self.windows: dict[tuple[str, int], list[Event]] = {}
        self.changed: set[tuple[str, int]] = set()
        self.revs: dict[tuple[str, int], int] = {}
        self.events: dict[str, list[Event]] = {}
        self.emitted: dict[tuple[str, int], tuple[int, frozenset[tuple[int, int, int]]]] = {}

    def bound(self, device: str) -> int:
        b = self.spec.out_of_orderness_ms
        return self.engine.watermark.bound_for(device) if b is None else b

    def _wm(self, key: str) -> int | None:
        return self.wm.get("" if self.shared else key)

    def add(self, key: str, device: str, events: list[Event]) -> list[LateKey]:
        spec = self.spec
        late: list[LateKey] = []
        for t, b, s, allvals in events:
            vals = {m: v for m, v in allvals.items() if m in spec.metrics}
            if not vals:
                continue
            wm = self._wm(key)
            if spec.kind == "session":
                if self._session_accepts(key, t, wm):
                    self.events.setdefault(key, []).append((t, b, s, vals))
                    continue
            else:
                live = [
                    st
                    for st, en in _ranges(t, spec.size_ms, spec.slide_ms, spec.offset_ms)
                    if wm is None or en + spec.allowed_lateness_ms > wm
                ]
                if live:
                    for st in live:
                        self.windows.setdefault((key, st), []).append((t, b, s, vals))
                        self.changed.add((key, st))
                    continue
            late += [(spec.name, device, m, t, b, s, "too_late") for m in vals]
        return late

    def advance(self, key: str, wm: int) -> list[tuple[str, int, int | None, str, int, dict[str, float], int]]:
        old = self.wm.get(key)
        assert old is None or wm >= old
        self.wm[key] = wm
        if self.spec.kind == "session":
            return self._fire_sessions()
        return self._fire()

    def unfired(self) -> list[tuple[str, int, str]]:
        """(key, start, metric) of each window, tumbling or sliding, holding readings of the metric and whose
        end its key's watermark has not reached: what the gateway still holds, unfired."""
        out: list[tuple[str, int, str]] = []
        for (key, st), evs in sorted(self.windows.items()):
            wm = self._wm(key)
            if wm is None or st + self.spec.size_ms > wm:
                out += [(key, st, m) for m in self.spec.metrics if any(m in e[3] for e in evs)]
        return out

    def _fire(self) -> list[tuple[str, int, int | None, str, int, dict[str, float], int]]:
        spec = self.spec
        out: list[tuple[str, int, int | None, str, int, dict[str, float], int]] = []
        for (key, st), evs in sorted(self.windows.items()):
            wm = self._wm(key)
            en = st + spec.size_ms
            if wm is not None and en <= wm and (key, st) in self.changed:
                rev = self.revs.get((key, st), 0) + 1
                self.revs[(key, st)] = rev
                self.changed.discard((key, st))
                out += self._results(key, st, en, evs, rev)
        for key, st in list(self.windows):
            wm = self._wm(key)
            if wm is not None and st + spec.size_ms + spec.allowed_lateness_ms <= wm:
                del self.windows[(key, st)]
                self.revs.pop((key, st), None)
                self.changed.discard((key, st))
        return out

    def _results(
        self, key: str, st: int, en: int, evs: list[Event], rev: int
    ) -> list[tuple[str, int, int | None, str, int, dict[str, float], int]]:
        out: list[tuple[str, int, int | None, str, int, dict[str, float], int]] = []
        names = tuple(a for a in self.spec.aggregates if a != "count")
        for m in self.spec.metrics:
            agg = _aggregates(evs, m, names)
            if agg is not None:
                out.append((key, st, en, m, agg[0], agg[1], rev))
        return out

    def _sessions(self, key: str) -> list[tuple[int, int, list[Event]]]:
        out: list[tuple[int, int, list[Event]]] = []
        for e in sorted(self.events.get(key, []), key=lambda e: e[:3]):
            if out and e[0] < out[-1][1]:
                st, en, group = out[-1]
                group.append(e)
                out[-1] = (st, max(en, e[0] + self.spec.gap_ms), group)
            else:
                out.append((e[0], e[0] + self.spec.gap_ms, [e]))
        return out

    def _session_accepts(self, key: str, t: int, wm: int | None) -> bool:
        if wm is None or t + self.spec.gap_ms + self.spec.allowed_lateness_ms > wm:
            return True
        return any(st <= t < en for st, en, _ in self._sessions(key))

    def _fire_sessions(self) -> list[tuple[str, int, int | None, str, int, dict[str, float], int]]:
        out: list[tuple[str, int, int | None, str, int, dict[str, float], int]] = []
        for key in sorted(self.events):
            wm = self._wm(key)
            sessions = self._sessions(key)
            starts = {st for st, _, _ in sessions}
            for k, st in sorted(self.emitted):
                if k == key and st not in starts:
                    rev, _ = self.emitted.pop((k, st))
                    out += [(key, st, None, m, 0, {}, rev + 1) for m in self.spec.metrics]
            if wm is None:
                continue
            keep: list[Event] = []
            for st, en, evs in sessions:
                ids = frozenset((t, b, s) for t, b, s, _ in evs)
                prev = self.emitted.get((key, st))
                if en <= wm and (prev is None or prev[1] != ids):
                    rev = 1 if prev is None else prev[0] + 1
                    self.emitted[(key, st)] = (rev, ids)
                    out += self._results(key, st, en, evs, rev)
                if en + self.spec.allowed_lateness_ms <= wm:
                    self.emitted.pop((key, st), None)
                else:
                    keep += evs
            self.events[key] = keep
        return out


def _values(r: SentReading) -> dict[str, float]:
    return {m: float(v) for m, v in r.metrics.items() if not isinstance(v, str)}


def device_watermark(device: str, bound: int, max_t: dict[str, int], flushed: dict[str, int]) -> int | None:
    """``max(max t - bound, flushed + 1)``, or None before the device said anything."""
    cands = []
    if device in max_t:
        cands.append(max_t[device] - bound)
    if device in flushed:
        cands.append(flushed[device] + 1)
    return max(cands) if cands else None


def expect(run: Run, engine: EngineSpec | None = None) -> Expected:
    """What the gateway must write for ``run`` (window outputs only when ``engine`` is given)."""
    engine = engine or EngineSpec()
    out = Expected()
    refs = [WindowRef(w, engine) for w in engine.windows]
    seen: set[tuple[str, int, int]] = set()
    max_t: dict[str, int] = {}
    flushed_at: dict[str, int] = {}
    default_bound = engine.watermark
    global_wm: dict[str, int] = {}
    for d in run.deliveries:
        if d.kind == "status":
            continue
        accepted: list[SentReading] = []
        for i in d.readings:
            r = run.readings[i]
            if r.reason is not None:
                out.dead_letters[(r.reason, r.device)] += 1
                continue
            ident = (r.device, r.boot, r.seq)
            if ident in seen:
                out.duplicates += 1
                continue
            seen.add(ident)
            out.readings.append(i)
            accepted.append(r)
        if not accepted and d.flushed is None:
            continue
        events: list[Event] = []
        batch_max: int | None = None
        for r in accepted:
            if r.t_ms > d.arrival_ms + engine.max_future_ms:
                reason = "time_in_future"
            elif r.t_ms < engine.min_time_ms:
                reason = "time_too_old"
            elif r.quality == "u" and engine.unsynced == "reject":
                reason = "unsynced"
            else:
                events.append((r.t_ms, r.boot, r.seq, _values(r)))
                if r.quality != "u" and (batch_max is None or r.t_ms > batch_max):
                    batch_max = r.t_ms
                continue
            out.late.setdefault(("", r.device, "", r.t_ms, r.boot, r.seq, reason), d.arrival_ms)
        flushed = d.flushed
        if flushed is not None and (flushed > d.arrival_ms + engine.max_future_ms or flushed < engine.min_time_ms):
            flushed = None
        for ref in refs:
            for late_key in ref.add(d.device, d.device, events):
                out.late.setdefault(late_key, d.arrival_ms)
        if batch_max is not None:
            max_t[d.device] = max(max_t.get(d.device, batch_max), batch_max)
        if flushed is not None:
            flushed_at[d.device] = max(flushed_at.get(d.device, flushed), flushed)

        wm0 = device_watermark(d.device, default_bound.bound_for(d.device), max_t, flushed_at)
        if wm0 is not None:
            out.watermarks.append((d.arrival_ms, d.device, wm0))
        for ref in refs:
            if ref.shared:
                old = global_wm.get(ref.spec.name)
                wm = old
                if batch_max is not None:
                    cand = batch_max - ref.bound(d.device)
                    wm = cand if old is None or cand > old else old
                key = ""
            else:
                wm = device_watermark(d.device, ref.bound(d.device), max_t, flushed_at)
                key = d.device
            if wm is None:
                continue
            global_wm[ref.spec.name] = wm
            for dev, st, en, metric, count, aggs, rev in ref.advance(key, wm):
                out.windows[(ref.spec.name, dev, st, metric)] = (count, aggs, rev)
                out.firings.append(Firing(d.arrival_ms, ref.spec.name, dev, st, en, metric, count, rev))
    return out
