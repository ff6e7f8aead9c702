"""A brute-force model of the engine's semantics, for property tests.

It keeps every accepted reading in explicit per-window lists and recomputes every aggregate from them
with plain Python (``statistics``): no panes, stacks, heaps or incremental updates. Same rules as the
engine: a batch's readings meet the watermark as it was before the batch; then the watermark advances;
then windows whose end it reached and that changed are emitted; windows past end + lateness are dropped.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from gateway.engine.config import WindowSpec
from gateway.engine.windows import window_ranges

Event = tuple[int, int, int, dict[str, float]]  # t, boot, seq, values


def aggregates(events: list[Event], metric: str) -> tuple[int, dict[str, float]] | None:
    vals = [(t, b, s, v[metric]) for t, b, s, v in events if metric in v]
    if not vals:
        return None
    xs = [x[3] for x in vals]
    out = {
        "sum": float(sum(xs)),
        "mean": statistics.fmean(xs),
        "min": min(xs),
        "max": max(xs),
        "first": min(vals)[3],
        "last": max(vals)[3],
    }
    if len(xs) >= 2:
        out["stddev"] = statistics.stdev(xs)
    return len(xs), out


@dataclass
class Reference:
    spec: WindowSpec
    mode: str  # "device" | "global"
    bound: int
    wm: dict[str, int] = field(default_factory=dict)  # per key ("" in global mode)
    max_t: dict[str, int] = field(default_factory=dict)
    flushed: dict[str, int] = field(default_factory=dict)
    sites: dict[str, list[str]] = field(default_factory=dict)
    windows: dict[tuple[str, int], list[Event]] = field(default_factory=dict)  # tumbling/sliding
    changed: set[tuple[str, int]] = field(default_factory=set)
    revs: dict[tuple[str, int], int] = field(default_factory=dict)
    events: dict[str, list[Event]] = field(default_factory=dict)  # sessions: live events per key
    emitted: dict[tuple[str, int], tuple[int, frozenset[tuple[int, int, int]]]] = field(default_factory=dict)

    def _wm(self, key: str) -> int | None:
        return self.wm.get("" if self.mode == "global" else key)

    def batch(
        self, site: str, device: str, readings: list[Event], flushed: int | None
    ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """Returns (window emissions, late records) for this batch."""
        spec = self.spec
        key = site if spec.key == "site" else device
        late: list[tuple[Any, ...]] = []
        self.sites.setdefault(site, [])
        if device not in self.sites[site]:
            self.sites[site].append(device)
        for t, b, s, vals in readings:
            vals = {m: v for m, v in vals.items() if m in spec.metrics}
            if not vals:
                continue
            wm = self._wm(key)
            if spec.kind == "session":
                if not self._session_accepts(key, t, wm):
                    late += [(spec.name, device, m, t, b, s) for m in vals]
                    continue
                self.events.setdefault(key, []).append((t, b, s, vals))
                continue
            live = [
                (st, en)
                for st, en in window_ranges(t, spec.size_ms, spec.slide_ms, spec.offset_ms)
                if wm is None or en + spec.allowed_lateness_ms > wm
            ]
            if not live:
                late += [(spec.name, device, m, t, b, s) for m in vals]
                continue
            for st, _ in live:
                self.windows.setdefault((key, st), []).append((t, b, s, vals))
                self.changed.add((key, st))
        # advance watermarks
        ts = [r[0] for r in readings]
        if ts:
            self.max_t[device] = max(self.max_t.get(device, ts[0]), max(ts))
        if flushed is not None:
            self.flushed[device] = max(self.flushed.get(device, flushed), flushed)
        if self.mode == "global":
            if ts:
                cand = max(ts) - self.bound
                self.wm[""] = max(self.wm.get("", cand), cand)
        elif spec.key == "device":
            w = self._device_wm(device)
            if w is not None:
                self.wm[device] = w
        else:
            dwms = [w for d in self.sites[site] if (w := self._device_wm(d)) is not None]
            if dwms:
                self.wm[site] = max(self.wm.get(site, min(dwms)), min(dwms))
        return self._fire(), late

    def _device_wm(self, device: str) -> int | None:
        cands = []
        if device in self.max_t:
            cands.append(self.max_t[device] - self.bound)
        if device in self.flushed:
            cands.append(self.flushed[device] + 1)
        return max(cands) if cands else None

    def _fire(self) -> list[tuple[Any, ...]]:
        spec = self.spec
        out: list[tuple[Any, ...]] = []
        if spec.kind == "session":
            return self._fire_sessions()
        for (key, st), evs in sorted(self.windows.items()):
            wm = self._wm(key)
            if wm is None:
                continue
            en = st + spec.size_ms
            if en <= wm and (key, st) in self.changed:
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

    def _results(self, key: str, st: int, en: int, evs: list[Event], rev: int) -> list[tuple[Any, ...]]:
        out = []
        for m in self.spec.metrics:
            agg = aggregates(evs, m)
            if agg is not None:
                out.append((self.spec.name, key, st, en, m, agg[0], agg[1], rev))
        return out

    # -- sessions ---------------------------------------------------------------------------------

    def _sessions(self, key: str) -> list[tuple[int, int, list[Event]]]:
        evs = sorted(self.events.get(key, []), key=lambda e: e[:3])
        out: list[tuple[int, int, list[Event]]] = []
        for e in evs:
            if out and e[0] < out[-1][1]:
                st, _, group = out[-1]
                group.append(e)
                out[-1] = (st, max(out[-1][1], e[0] + self.spec.gap_ms), group)
            else:
                out.append((e[0], e[0] + self.spec.gap_ms, [e]))
        return out

    def _session_accepts(self, key: str, t: int, wm: int | None) -> bool:
        gap = self.spec.gap_ms
        if wm is None or t + gap + self.spec.allowed_lateness_ms > wm:
            return True
        return any(st <= t < en for st, en, _ in self._sessions(key))  # inside a live session

    def _fire_sessions(self) -> list[tuple[Any, ...]]:
        out: list[tuple[Any, ...]] = []
        for key in sorted(self.events):
            wm = self._wm(key)
            sessions = self._sessions(key)
            starts = {st for st, _, _ in sessions}
            for k, st in sorted(self.emitted):
                if k == key and st not in starts:
                    rev, _ = self.emitted.pop((k, st))
                    for m in self.spec.metrics:
                        out.append((self.spec.name, key, st, None, m, 0, {}, rev + 1))
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
