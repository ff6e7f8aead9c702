"""The interval join operator: readings of two sides in, joined records out, per join key, in event time.

Pure and synchronous; the only clock is the ``now_ms`` the caller passes (to refuse readings with impossible
times, as the engine does, and to tell idle devices).

Per join and key (the devices' site, a declared device property, or a declared group; ``docs/correlation.md``):

1. a reading of a side (its device matches the side's globs, it carries one of the side's metrics and meets
   the side's literal conditions) becomes an *event* of that side. An event at or after the key's watermark
   waits in a heap on ``(t, side, device, boot, seq)``;
2. the key's watermark advances: in ``device`` mode the fleet rule over the devices the key's sides take
   (the minimum over the active ones, the largest when all are idle, never backwards), in ``global`` mode the
   one global watermark. Waiting events below it are released in that order; each released event is joined
   with the *kept* events of the other side in its interval and then kept itself. So every pair is emitted
   once, when the later of its two events is released: the output does not depend on arrival order;
3. a kept ``a`` event can join no future ``b`` once ``a.t + upper < W - allowed_lateness``, a kept ``b`` none
   once ``b.t - lower < W - allowed_lateness``: they are dropped then;
4. an event behind the watermark by at most ``allowed_lateness`` joins the kept events at once and is kept;
   one further behind is *late*: counted, never joined;
5. a key holds at most ``max_events`` events (waiting + kept): beyond it the oldest kept event is dropped
   (``shed``), or, with none kept, the earliest waiting one is released at once (``forced``), as the pattern
   operator does.
"""

from __future__ import annotations

import bisect
import heapq
import logging
from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Final

from ..alerts import Alert, alert_id
from ..cep.expr import Condition, compile_condition
from ..engine.config import EngineSpec
from ..engine.fleet import MemberFleets
from ..engine.watermark import DeviceTracker
from ..groups import GroupsSpec
from ..lineproto import NS_PER_MS, line
from ..model import Batch, MetricValue, Reading, ReadingKey, StatusUpdate
from ..schema import METRIC, METRIC_PATTERN, declare
from .config import JoinSide, JoinSpec

__all__ = ["JOIN_MEASUREMENT", "SNAPSHOT_VERSION", "Joined", "Joins", "JoinsSpec"]

log = logging.getLogger("gateway.joins")

SNAPSHOT_VERSION: Final = 1
JOIN_MEASUREMENT: Final = declare(
    "join",
    tags=("name", "key", "site"),
    fields={
        "id": "string",
        "a_device": "string",
        "b_device": "string",
        "a_reading": "string",
        "b_reading": "string",
        "a_ms": "integer",
        "b_ms": "integer",
        "offset_ms": "integer",
    },
    open_fields=rf"[ab]\.{METRIC_PATTERN}",
    open_type=METRIC,
    time="the a side's event time (+ a sub-millisecond offset from the pair's id)",
    module=__name__,
)

Event = tuple[int, int, str, int, int, Mapping[str, MetricValue], str]
"""``(t, side, device, boot, seq, metrics, site)``; side 0 is ``a``, 1 is ``b``. Its first five order events."""


@dataclass(frozen=True, slots=True)
class JoinsSpec:
    joins: tuple[JoinSpec, ...] = ()
    engine: EngineSpec = field(default_factory=EngineSpec)
    """Watermark mode and bounds, and the refusal rules (``max_future``, ``min_time_ms``, ``unsynced``)."""
    properties: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    """``[devices.properties]``: device -> property -> value, for joins keyed by a property."""
    groups: GroupsSpec = field(default_factory=GroupsSpec)
    """``[groups]``, for joins keyed by a group."""


@dataclass(frozen=True, slots=True)
class Joined:
    """One joined record: an ``a`` reading and a ``b`` reading of the same key within the interval."""

    join: JoinSpec
    key: str
    a: Event
    b: Event

    @property
    def readings(self) -> tuple[ReadingKey, ReadingKey]:
        return (self.a[2], self.a[3], self.a[4]), (self.b[2], self.b[3], self.b[4])

    @property
    def id(self) -> str:
        return alert_id("join", self.join.name, self.key, self.readings)

    def values(self) -> dict[str, MetricValue]:
        """``a.<metric>`` and ``b.<metric>``: each side's declared metrics its reading carries."""
        out: dict[str, MetricValue] = {}
        for prefix, side, e in (("a.", self.join.a, self.a), ("b.", self.join.b, self.b)):
            for m in side.metrics:
                v = e[5].get(m)
                if v is not None:
                    out[prefix + m] = v
        return out

    def to_line(self) -> str:
        a, b = self.a, self.b
        ident = self.id
        fields: dict[str, MetricValue] = self.values()
        fields.update({
            "id": ident,
            "a_device": a[2],
            "b_device": b[2],
            "a_reading": f"{a[2]}/{a[3]}/{a[4]}",
            "b_reading": f"{b[2]}/{b[3]}/{b[4]}",
            "a_ms": a[0],
            "b_ms": b[0],
            "offset_ms": b[0] - a[0],
        })  # fmt: skip
        offset = int(ident[:8], 16) % NS_PER_MS
        tags = {"name": self.join.name, "key": self.key, "site": a[6]}
        return line(JOIN_MEASUREMENT, tags, fields, a[0] * NS_PER_MS + offset)

    def to_alert(self) -> Alert:
        j = self.join
        a, b = self.a, self.b
        return Alert(
            source="join",
            name=j.name,
            site=a[6],
            key=self.key,
            severity=j.alert or "warning",
            first_ms=min(a[0], b[0]),
            last_ms=max(a[0], b[0]),
            readings=self.readings,
            message=j.message or f"{j.name}: {a[2]} then {b[2]} ({b[0] - a[0]:+d} ms) on {self.key}",
            details=self.values(),
        )


class _Side:
    __slots__ = ("devices", "filt", "metrics", "pair", "spec")

    def __init__(self, spec: JoinSide, other: str) -> None:
        self.spec = spec
        self.devices = spec.devices
        self.metrics = frozenset(spec.metrics)
        self.filt: Condition | None = compile_condition(spec.filters, {}) if spec.filters else None
        self.pair: Condition | None = compile_condition(spec.refs, {other: 0}) if spec.refs else None

    def feeds(self, device: str) -> bool:
        return not self.devices or any(fnmatchcase(device, g) for g in self.devices)

    def takes(self, device: str, metrics: Mapping[str, MetricValue]) -> bool:
        if not self.feeds(device):
            return False
        if self.metrics.isdisjoint(metrics):
            return False
        return self.filt is None or self.filt(metrics, (), None)


class _Key:
    __slots__ = ("buf", "j", "kept", "members", "n", "name", "value", "wm")

    def __init__(self, name: str, j: int, value: str, n: int) -> None:
        self.n = n
        """Its place in the order keys were made (the order of ``Joins.keys``, kept through a restore)."""
        self.name = name
        self.j = j
        self.value = value
        self.buf: list[Event] = []
        self.kept: tuple[list[Event], list[Event]] = ([], [])
        """The released events of each side still able to join, in event order."""
        self.wm: int | None = None
        self.members: list[str] = []
        """The devices that sent this key events: its watermark is theirs (fleet rule)."""

    def size(self) -> int:
        return len(self.buf) + len(self.kept[0]) + len(self.kept[1])


STATS: Final = ("events", "refused", "joined", "late", "shed", "forced", "unkeyed")


class Joins:
    """Every declared interval join over every key; see the module docstring and ``docs/correlation.md``."""

    def __init__(self, spec: JoinsSpec) -> None:
        self.spec = spec
        self.joins = spec.joins
        self.sides = tuple((_Side(j.a, "b"), _Side(j.b, "a")) for j in spec.joins)
        self.global_mode = spec.engine.watermark.mode == "global"
        self.tracker = DeviceTracker(spec.engine.watermark)
        self.fleets = MemberFleets(self.tracker, self._bound, hold_unread=False)
        """Each key's fleet watermark over its members, from a heap per key (``fleets.walk``: the tracker's walk)."""
        self.keys: dict[str, _Key] = {}
        self.stats: dict[str, int] = dict.fromkeys(STATS, 0)
        self.touched: set[str] = set()
        """Names of the keys whose state changed (the gateway's incremental checkpoint empties it)."""
        self._bounds: dict[str, int] = {}
        self._gwm: int | None = None
        self._warned: set[str] = set()
        self._groups = spec.groups.index()
        self.member_of: dict[str, list[_Key]] = {}
        """Per device, the keys it is a member of (whose watermark waits for it), in the order of :attr:`keys`."""

    # -- keys ------------------------------------------------------------------------------------

    def key_value(self, j: int, device: str, site: str) -> str | None:
        """The key ``device`` (bound to ``site``) has in join ``j``, or None (no such property)."""
        spec = self.joins[j]
        kind = spec.key_kind
        if kind == "site":
            return site
        if kind == "group":
            return spec.key_arg if spec.key_arg in self._groups.groups_of(device, site) else None
        return self.spec.properties.get(device, {}).get(spec.key_arg)

    def key_names(self, device: str, site: str) -> list[str]:
        """The names of the keys a message of ``device`` may change (``j:<join>:<key>``)."""
        out = []
        for j, spec in enumerate(self.joins):
            v = self.key_value(j, device, site)
            if v is not None:
                out.append(f"j:{spec.name}:{v}")
        return out

    def _key(self, j: int, value: str) -> _Key:
        name = f"j:{self.joins[j].name}:{value}"
        k = self.keys.get(name)
        if k is None:
            k = self.keys[name] = _Key(name, j, value, len(self.keys))
            if self.global_mode:
                k.wm = self._gwm  # one watermark for every key: a new key starts where it is
        return k

    def _bound(self, device: str) -> int:
        b = self._bounds.get(device)
        if b is None:
            b = self._bounds[device] = self.spec.engine.watermark.bound_for(device)
        return b

    def _refused(self, r: Reading, now_ms: int) -> bool:
        e = self.spec.engine
        return (
            r.t_ms > now_ms + e.max_future_ms or r.t_ms < e.min_time_ms or (r.quality == "u" and e.unsynced == "reject")
        )

    # -- input -----------------------------------------------------------------------------------

    def process_batch(self, batch: Batch, now_ms: int) -> list[Joined]:
        """Take the batch's events, advance the watermarks of the keys it touched, return the joined records."""
        if not self.joins:
            return []
        out: list[Joined] = []
        site, device = batch.site, batch.device
        max_t: int | None = None
        touched: list[_Key] = []
        for j, (sa, sb) in enumerate(self.sides):
            if not (sa.feeds(device) or sb.feeds(device)):
                continue
            value = self.key_value(j, device, site)
            if value is None:
                self.stats["unkeyed"] += len(batch.readings)
                continue
            # a device its sides' globs take is a member of its key from its first message: the key's watermark
            # waits for it, whether or not its readings pass the conditions
            k = self._key(j, value)
            mine = self.member_of.get(device)
            if mine is None or k not in mine:  # the keys it is a member of (a few), not the key's members (a fleet)
                k.members.append(device)
                bisect.insort(self.member_of.setdefault(device, []), k, key=lambda x: x.n)
            touched.append(k)
            self.touched.add(k.name)
            for r in batch.readings:
                for side, s in ((0, sa), (1, sb)):
                    if not s.takes(device, r.metrics):
                        continue
                    if self._refused(r, now_ms):
                        self.stats["refused"] += 1
                        continue
                    self.stats["events"] += 1
                    self._take(k, (r.t_ms, side, device, r.boot, r.seq, r.metrics, site), out)
        for r in batch.readings:
            if r.quality != "u" and not self._refused(r, now_ms) and (max_t is None or r.t_ms > max_t):
                max_t = r.t_ms
        flushed = batch.flushed_ms
        e_spec = self.spec.engine
        if flushed is not None and (flushed > now_ms + e_spec.max_future_ms or flushed < e_spec.min_time_ms):
            flushed = None
        self.tracker.seen(site, device, now_ms, max_t, flushed)
        self.fleets.heard(device)
        if self.global_mode:
            if max_t is not None:
                wm = max_t - self._bound(device)
                if self._gwm is None or wm > self._gwm:
                    self._gwm = wm
                    for k in self.keys.values():
                        self._advance(k, wm, out)
            return out
        for k in touched:
            self._advance_fleet(k, now_ms, out)
        # the device's watermark moved: every key it is a member of may move (those of its site before a move too)
        for k2 in self.member_of.get(device, ()):
            if k2 not in touched:
                self._advance_fleet(k2, now_ms, out)
        return out

    def process_status(self, status: StatusUpdate) -> list[Joined]:
        """A device's status (sleep interval, offline) can release the keys it feeds."""
        if not self.joins:
            return []
        sleep = status.fields.get("sleep_s")
        sleep_s = float(sleep) if isinstance(sleep, (int, float)) and not isinstance(sleep, bool) else None
        self.tracker.status(status.site, status.device, status.received_ms, status.state, sleep_s)
        self.fleets.heard(status.device)
        out: list[Joined] = []
        if not self.global_mode:
            for k in self.member_of.get(status.device, ()):
                self._advance_fleet(k, status.received_ms, out)
        return out

    def advance(self, now_ms: int) -> list[Joined]:
        """Time-driven progress: silent devices turn idle and stop holding their keys back."""
        out: list[Joined] = []
        if not self.global_mode:
            for k in list(self.keys.values()):
                self._advance_fleet(k, now_ms, out)
        return out

    def due(self, now_ms: int) -> list[str]:
        """The names of the keys :meth:`advance` at ``now_ms`` would move (their watermark went up: a device idle)."""
        if self.global_mode:
            return []
        out = []
        for name, k in self.keys.items():
            wm = self._fleet_wm(k, now_ms)
            if wm is not None and (k.wm is None or wm > k.wm):
                out.append(name)
        return out

    def flush(self, watermark: int) -> list[Joined]:
        """Advance every key to ``watermark`` by hand (tests, shutdown)."""
        out: list[Joined] = []
        for k in list(self.keys.values()):
            self._advance(k, watermark, out)
        return out

    def move_device(self, device: str, site: str) -> None:
        """The device now belongs to ``site``: its next events go to its new site's keys; it still counts for the
        keys it fed before, as for the site windows."""
        self.tracker.move(device, site)

    # -- the work --------------------------------------------------------------------------------

    def _fleet_wm(self, k: _Key, now_ms: int) -> int | None:
        return self.fleets.fleet_wm(k.name, k.members, now_ms)

    def _advance_fleet(self, k: _Key, now_ms: int, out: list[Joined]) -> None:
        wm = self._fleet_wm(k, now_ms)
        if wm is not None:
            self._advance(k, wm, out)

    def _take(self, k: _Key, e: Event, out: list[Joined]) -> None:
        spec = self.joins[k.j]
        if k.wm is not None and e[0] < k.wm:
            if e[0] < k.wm - spec.allowed_lateness_ms:
                self.stats["late"] += 1
                return
            self._release(k, e, out)  # late within the allowed lateness: joins what is kept, at once
        else:
            heapq.heappush(k.buf, e)
        while k.size() > spec.max_events:
            self._shed(k, out)

    def _shed(self, k: _Key, out: list[Joined]) -> None:
        a, b = k.kept
        if a or b:
            side = a if not b or (a and a[0] < b[0]) else b
            side.pop(0)
            self.stats["shed"] += 1
        else:
            first = heapq.heappop(k.buf)
            self.stats["forced"] += 1
            self._release(k, first, out)
            k.wm = first[0] if k.wm is None else max(k.wm, first[0])
        name = self.joins[k.j].name
        if name not in self._warned:
            self._warned.add(name)
            log.warning(
                "join %s: key %s holds more than max_events = %d events; the oldest are dropped",
                name,
                k.value,
                self.joins[k.j].max_events,
                extra={"event": "join_shed", "join": name, "key": k.value},
            )

    def _advance(self, k: _Key, wm: int, out: list[Joined]) -> None:
        if k.wm is not None and wm <= k.wm:
            return
        self.touched.add(k.name)
        buf = k.buf
        while buf and buf[0][0] < wm:
            self._release(k, heapq.heappop(buf), out)
        k.wm = wm
        spec = self.joins[k.j]
        edge = wm - spec.allowed_lateness_ms
        a, b = k.kept
        n = 0
        while n < len(a) and a[n][0] + spec.upper_ms < edge:
            n += 1
        if n:
            del a[:n]
        n = 0
        while n < len(b) and b[n][0] - spec.lower_ms < edge:
            n += 1
        if n:
            del b[:n]

    def _release(self, k: _Key, e: Event, out: list[Joined]) -> None:
        """Join ``e`` with the other side's kept events in its interval, then keep it."""
        spec = self.joins[k.j]
        side = e[1]
        other = k.kept[1 - side]
        if side == 0:
            lo, hi = e[0] + spec.lower_ms, e[0] + spec.upper_ms
        else:
            lo, hi = e[0] - spec.upper_ms, e[0] - spec.lower_ms
        i = bisect.bisect_left(other, (lo,))
        sa, sb = self.sides[k.j]
        while i < len(other) and other[i][0] <= hi:
            p = other[i]
            i += 1
            a, b = (e, p) if side == 0 else (p, e)
            if sa.pair is not None and not sa.pair(a[5], (b[5],), None):
                continue
            if sb.pair is not None and not sb.pair(b[5], (a[5],), None):
                continue
            self.stats["joined"] += 1
            out.append(Joined(spec, k.value, a, b))
        mine = k.kept[side]
        if not mine or mine[-1] < e:
            mine.append(e)
        else:
            bisect.insort(mine, e)

    # -- state -----------------------------------------------------------------------------------

    def events(self) -> int:
        """Events held over every key (waiting and kept): a gauge."""
        return sum(k.size() for k in self.keys.values())

    def snapshot(self, keys: Set[str] | None = None, order: bool = False) -> dict[str, Any]:
        """All state as plain JSON-able values; ``keys`` and ``order`` select the keys' entries (and the tracker's)
        as in ``Engine.snapshot``."""
        live = self.keys
        if order:
            per_key: dict[str, Any] = dict.fromkeys(live)
        else:
            per_key = {
                name: _key_doc(k)
                for name, k in (live.items() if keys is None else ((n, live[n]) for n in keys if n in live))
            }
        return {
            "version": SNAPSHOT_VERSION,
            "joins": [j.name for j in self.joins],
            "tracker": self.tracker.snapshot(keys, order),
            "gwm": self._gwm,
            "stats": dict(self.stats),
            "keys": per_key,
        }

    def restore(self, snap: dict[str, Any]) -> None:
        """Take back a :meth:`snapshot` of an operator with the same joins (a join added since starts empty)."""
        if snap.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"join snapshot version {snap.get('version')!r}, expected {SNAPSHOT_VERSION}")
        names = [j.name for j in self.joins]
        self.tracker.restore(snap["tracker"])
        self.fleets.clear()
        self._gwm = snap.get("gwm")
        self.stats = {**dict.fromkeys(STATS, 0), **{k: int(v) for k, v in snap["stats"].items()}}
        self.keys = {}
        self.member_of = {}
        for name, doc in snap["keys"].items():
            jname = name.split(":", 2)[1]
            if jname not in names:
                continue  # a join removed from the configuration: its state goes
            j = names.index(jname)
            k = self._key(j, str(doc["value"]))
            k.wm = doc["wm"]
            k.members = [str(d) for d in doc["members"]]
            for d in k.members:
                self.member_of.setdefault(d, []).append(k)
            k.buf = [_event(e) for e in doc["buf"]]
            heapq.heapify(k.buf)
            k.kept = ([_event(e) for e in doc["a"]], [_event(e) for e in doc["b"]])


def _event_doc(e: Event) -> list[Any]:
    return [e[0], e[1], e[2], e[3], e[4], dict(e[5]), e[6]]


def _event(doc: Iterable[Any]) -> Event:
    t, side, device, boot, seq, metrics, site = doc
    return (int(t), int(side), str(device), int(boot), int(seq), dict(metrics), str(site))


def _key_doc(k: _Key) -> dict[str, Any]:
    return {
        "value": k.value,
        "wm": k.wm,
        "members": list(k.members),
        "buf": [_event_doc(e) for e in sorted(k.buf, key=lambda e: e[:5])],
        "a": [_event_doc(e) for e in k.kept[0]],
        "b": [_event_doc(e) for e in k.kept[1]],
    }
