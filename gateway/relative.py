"""Group-relative values: per window, each device's value against the other members of its group.

A window with ``[windows.relative]`` (tumbling or sliding, keyed by device) gets, besides its own results, one
``window_relative`` point per window, group, member and metric:

    deviation = value(device) - baseline(values of the group's other members in the same window)

``value`` is one of the window's aggregates (its ``mean`` by default), ``baseline`` the median or the mean of the
others' values (leave-one-out: the device is not compared with itself). A member without readings in the window
has no value and is neither compared nor part of the others' baselines; a member with fewer than ``min_others``
other values gets no point (counted as ``alone``).

Event time: the group's value of a window is computed once, when every member's window is final, i.e. when the
group's watermark passes the window's end. In ``device`` mode that is the fleet rule over the group's members
(docs/semantics.md): the minimum watermark of its active members (the largest when all are idle; a member heard
from but without readings yet holds the group), with each member's bound for this window, so a member asleep holds the
group only until it turns idle. In ``global`` mode it is the window's global watermark. The members' results
are the engine's final ones (``result = "final"``); a member's final result that comes after the group's window
closed (an idle member back with old readings, a window opened by a late reading within the allowed lateness) is
counted as ``late``, and a member's update (a late reading re-firing its window) as ``updates``: neither changes
a group value already written.

Pure and synchronous; state (the open windows' member values, watermarks, the tracker) is plain JSON.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from .alerts import Alert
from .engine.config import EngineSpec, RelativeSpec, WindowSpec
from .engine.fleet import MemberFleets
from .engine.outputs import WindowResult
from .engine.watermark import DeviceTracker
from .groups import GroupIndex, GroupsSpec
from .lineproto import NS_PER_MS, line
from .model import Batch, StatusUpdate
from .schema import declare

__all__ = ["RELATIVE_MEASUREMENT", "GroupRelative", "RelativeResult", "baseline"]

RELATIVE_MEASUREMENT: Final = declare(
    "window_relative",
    tags=("window", "group", "site", "device", "metric"),
    fields={"value": "float", "baseline": "float", "deviation": "float", "others": "integer", "end_ms": "integer"},
    time="the window's start",
    module=__name__,
)

SNAPSHOT_VERSION: Final = 1


def baseline(values: Sequence[float], how: str) -> float:
    """The median (the mean of the middle two for an even count) or the mean of ``values``."""
    return float(statistics.median(values)) if how == "median" else math.fsum(values) / len(values)


@dataclass(frozen=True, slots=True)
class RelativeResult:
    """One member's value in one window against its group's other members."""

    window: str
    group: str
    site: str
    device: str
    metric: str
    start_ms: int
    end_ms: int
    value: float
    baseline: float
    deviation: float
    others: int
    """How many other members' values the baseline is of."""

    def to_line(self) -> str:
        tags = {"window": self.window, "group": self.group, "site": self.site, "device": self.device,
                "metric": self.metric}  # fmt: skip
        fields: dict[str, Any] = {
            "value": self.value,
            "baseline": self.baseline,
            "deviation": self.deviation,
            "others": self.others,
            "end_ms": self.end_ms,
        }
        return line(RELATIVE_MEASUREMENT, tags, fields, self.start_ms * NS_PER_MS)

    def to_alert(self, spec: RelativeSpec) -> Alert:
        sign = "above" if self.deviation > 0 else "below"
        return Alert(
            source="relative",
            name=self.window,
            site=self.site,
            key=self.device,
            severity=spec.severity,
            first_ms=self.start_ms,
            last_ms=self.end_ms - 1,
            readings=(),
            message=f"{self.device}: {self.metric} {abs(self.deviation):g} {sign} the {spec.baseline} of the other "
            f"{self.others} in {self.group} ({self.window})",
            details={
                "metric": self.metric,
                "group": self.group,
                "value": self.value,
                "baseline": self.baseline,
                "deviation": self.deviation,
                "count": self.others,
            },
        )


class GroupRelative:
    """Every window with ``[windows.relative]``; fed each batch with the engine's outputs for it (see the module
    docstring)."""

    def __init__(self, engine: EngineSpec, groups: GroupsSpec) -> None:
        self.spec = engine
        self.windows: dict[str, WindowSpec] = {w.name: w for w in engine.windows if w.relative is not None}
        self.global_mode = engine.watermark.mode == "global"
        self.tracker = DeviceTracker(engine.watermark)
        self.fleets: dict[str, MemberFleets] = {name: self._fleets(w) for name, w in self.windows.items()}
        """Per window, each group's fleet watermark from a heap of its members (``walk`` on each: the tracker's
        walk, for tests)."""
        self.index: GroupIndex = groups.index()
        self.members: dict[str, list[str]] = {}
        """Per group, the devices seen in it (in the order first seen)."""
        self._of: dict[tuple[str, str, str], tuple[str, ...]] = {}
        self.open: dict[str, dict[str, dict[int, dict[str, tuple[str, dict[str, float]]]]]] = {
            w: {} for w in self.windows
        }
        """window -> group -> window start -> device -> (site, metric -> value): the members' final values."""
        self.wm: dict[str, dict[str, int]] = {w: {} for w in self.windows}
        """window -> group -> the group watermark last acted on (never goes back)."""
        self.global_wm: dict[str, int] = {}
        self.stats: dict[str, int] = {"values": 0, "results": 0, "alerts": 0, "late": 0, "updates": 0, "alone": 0}

    def __bool__(self) -> bool:
        return bool(self.windows)

    # -- membership -----------------------------------------------------------------------------

    def groups_of(self, window: str, device: str, site: str) -> tuple[str, ...]:
        """The groups ``device`` is compared within for ``window`` (notes it as their member)."""
        ck = (window, device, site)
        found = self._of.get(ck)
        if found is None:
            rel = self.windows[window].relative
            assert rel is not None
            found = tuple(g for g in self.index.groups_of(device, site) if not rel.groups or g in rel.groups)
            for g in found:
                members = self.members.setdefault(g, [])
                if device not in members:
                    members.append(device)
            if len(self._of) > 100_000:
                self._of.clear()
            self._of[ck] = found
        return found

    def _bound(self, w: WindowSpec, device: str) -> int:
        return w.out_of_orderness_ms if w.out_of_orderness_ms is not None else self.spec.watermark.bound_for(device)

    def _fleets(self, w: WindowSpec) -> MemberFleets:
        return MemberFleets(self.tracker, lambda device: self._bound(w, device), hold_unread=True)

    def group_wm(self, window: str, group: str, now_ms: int) -> int | None:
        """The group's watermark for ``window``: the global one, or the fleet rule over its members."""
        if self.global_mode:
            return self.global_wm.get(window)
        members = self.members.get(group)
        if members is None:
            return None  # no member seen yet (the fleet rule over none)
        return self.fleets[window].fleet_wm(group, members, now_ms)

    def _heard(self, device: str) -> None:
        for f in self.fleets.values():
            if f.heaps:
                f.heard(device)

    # -- input ----------------------------------------------------------------------------------

    def process_batch(self, batch: Batch, outputs: Iterable[object], now_ms: int) -> list[RelativeResult]:
        """The batch (after the engine took it) and the engine's outputs for it: the group values now final."""
        e = self.spec
        max_t: int | None = None
        for r in batch.readings:
            if r.quality == "u" or r.t_ms > now_ms + e.max_future_ms or r.t_ms < e.min_time_ms:
                continue
            if max_t is None or r.t_ms > max_t:
                max_t = r.t_ms
        flushed = batch.flushed_ms
        if flushed is not None and (flushed > now_ms + e.max_future_ms or flushed < e.min_time_ms):
            flushed = None
        self.tracker.seen(batch.site, batch.device, now_ms, max_t, flushed)
        self._heard(batch.device)
        for name in self.windows:
            self.groups_of(name, batch.device, batch.site)
        self._take(outputs)
        out: list[RelativeResult] = []
        if self.global_mode:
            if max_t is not None:
                for name, w in self.windows.items():
                    cand = max_t - self._bound(w, batch.device)
                    old = self.global_wm.get(name)
                    if old is None or cand > old:
                        self.global_wm[name] = cand
                        for g in sorted(self.open[name]):
                            self._close(name, g, cand, out)
            return out
        for name in self.windows:
            for g in self.groups_of(name, batch.device, batch.site):
                self._advance(name, g, now_ms, out)
        return out

    def process_status(self, status: StatusUpdate, outputs: Iterable[object] = ()) -> list[RelativeResult]:
        """A status (sleep interval, offline) may release the device's groups."""
        sleep = status.fields.get("sleep_s")
        sleep_s = float(sleep) if isinstance(sleep, (int, float)) and not isinstance(sleep, bool) else None
        self.tracker.status(status.site, status.device, status.received_ms, status.state, sleep_s)
        self._heard(status.device)
        self._take(outputs)
        out: list[RelativeResult] = []
        if not self.global_mode:
            for name in self.windows:
                for g in self.groups_of(name, status.device, status.site):
                    self._advance(name, g, status.received_ms, out)
        return out

    def advance(self, now_ms: int, outputs: Iterable[object] = ()) -> list[RelativeResult]:
        """Time alone: members that fell silent turn idle and stop holding their groups."""
        self._take(outputs)
        out: list[RelativeResult] = []
        if not self.global_mode:
            for name in self.windows:
                for g in sorted(self.members):
                    self._advance(name, g, now_ms, out)
        return out

    def move_device(self, device: str, site: str) -> None:
        self.tracker.move(device, site)
        for name in self.windows:
            self.groups_of(name, device, site)

    def _take(self, outputs: Iterable[object]) -> None:
        for r in outputs:
            if not isinstance(r, WindowResult) or r.key_kind != "device":
                continue
            w = self.windows.get(r.window)
            if w is None or r.revision == 0:
                continue
            if r.revision > 1:
                self.stats["updates"] += 1
                continue
            rel = w.relative
            assert rel is not None
            v = r.aggregates.get(rel.value)
            if v is None or not math.isfinite(v):
                continue
            for g in self.groups_of(r.window, r.key, r.site):
                done = self.wm[r.window].get(g)
                if done is not None and r.end_ms <= done:
                    self.stats["late"] += 1
                    continue
                at = self.open[r.window].setdefault(g, {}).setdefault(r.start_ms, {})
                values = at.setdefault(r.key, (r.site, {}))[1]
                values[r.metric] = float(v)
                self.stats["values"] += 1

    def _advance(self, window: str, group: str, now_ms: int, out: list[RelativeResult]) -> None:
        wm = self.group_wm(window, group, now_ms)
        if wm is not None:
            self._close(window, group, wm, out)

    def _close(self, window: str, group: str, wm: int, out: list[RelativeResult]) -> None:
        done = self.wm[window]
        old = done.get(group)
        if old is not None and wm <= old:
            return
        done[group] = wm
        w = self.windows[window]
        rel = w.relative
        assert rel is not None
        size = w.size_ms
        starts = self.open[window].get(group)
        if not starts:
            return
        for start in sorted(s for s in starts if s + size <= wm):
            members = starts.pop(start)
            for metric in w.metrics:
                vals = {d: vs[metric] for d, (_, vs) in members.items() if metric in vs}
                for device in sorted(vals):
                    others = [vals[d] for d in sorted(vals) if d != device]
                    if len(others) < rel.min_others:
                        self.stats["alone"] += 1
                        continue
                    base = baseline(others, rel.baseline)
                    value = vals[device]
                    out.append(RelativeResult(window, group, members[device][0], device, metric, start, start + size,
                                              value, base, value - base, len(others)))  # fmt: skip
                    self.stats["results"] += 1
        if not starts:
            del self.open[window][group]

    def alerts(self, results: Iterable[RelativeResult]) -> list[Alert]:
        """The alerts of results whose deviation is beyond their window's ``alert_above``."""
        found = []
        for r in results:
            rel = self.windows[r.window].relative
            assert rel is not None
            if rel.alert_above is not None and abs(r.deviation) > rel.alert_above:
                found.append(r.to_alert(rel))
        self.stats["alerts"] += len(found)
        return found

    # -- state ----------------------------------------------------------------------------------

    def open_values(self) -> int:
        """Member values waiting for their group's window to close (a gauge of the state's size)."""
        return sum(
            len(vs) for groups in self.open.values() for starts in groups.values() for m in starts.values()
            for _, vs in m.values()
        )  # fmt: skip

    def snapshot(self) -> dict[str, Any]:
        return {
            "version": SNAPSHOT_VERSION,
            "tracker": self.tracker.snapshot(),
            "open": {
                w: {
                    g: {str(s): {d: [site, dict(vs)] for d, (site, vs) in m.items()} for s, m in starts.items()}
                    for g, starts in groups.items()
                }
                for w, groups in self.open.items()
            },
            "wm": {w: dict(gs) for w, gs in self.wm.items()},
            "global_wm": dict(self.global_wm),
            "stats": dict(self.stats),
            "members": {g: list(devices) for g, devices in self.members.items()},  # a moved device stays in them
        }

    def restore(self, snap: dict[str, Any]) -> None:
        if snap.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"snapshot version {snap.get('version')!r}, expected {SNAPSHOT_VERSION}")
        self.tracker.restore(snap["tracker"])
        for f in self.fleets.values():
            f.clear()
        # the groups' members as they were (a snapshot before them: made again from each device's site), for the
        # groups some window compares within
        names = self.index.spec.names
        kept = {g for w in self.windows.values() if w.relative is not None for g in w.relative.groups or names}
        self.members = {str(g): [str(d) for d in ds] for g, ds in snap.get("members", {}).items() if g in kept}
        self._of = {}
        for device, entry in self.tracker.state.items():
            for name in self.windows:
                self.groups_of(name, device, str(entry[0]))
        self.open = {w: {} for w in self.windows}
        for w, groups in snap["open"].items():
            if w in self.open:
                self.open[w] = {
                    g: {int(s): {d: (str(site), dict(vs)) for d, (site, vs) in m.items()} for s, m in starts.items()}
                    for g, starts in groups.items()
                }
        self.wm = {w: {str(g): int(v) for g, v in snap["wm"].get(w, {}).items()} for w in self.windows}
        self.global_wm = {w: int(v) for w, v in snap["global_wm"].items() if w in self.windows}
        self.stats = {**dict.fromkeys(self.stats, 0), **snap["stats"]}
