"""The engine façade: batches and status in, window results and late readings out.

Pure and synchronous; the only clock is the ``now_ms`` the caller passes. Per batch:

1. readings with impossible times (ahead of ``now_ms`` by more than ``max_future_ms``, before
   ``min_time_ms``) and, by default, unsynced readings (quality ``u``) become :class:`LateReading`;
2. every window operator takes the remaining readings against the watermark it last acted on (so the
   order of readings inside a batch does not matter);
3. the device's watermark advances (max event time - bound, flushed marker), and the operators fire,
   re-fire and clean up.

``advance(now_ms)`` lets time alone move the fleet watermarks of site windows (devices turning idle);
``on_processing_time(now_ms)`` fires the ``early_every`` triggers (provisional results, ``early.py``). Every
window result carries the ``now_ms`` it was emitted at (``emitted_ms``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Set
from typing import Any, Final

from ..model import Batch, MetricValue, Reading, StatusUpdate
from .config import TIME_LIMIT_MS, EngineSpec, WindowSpec
from .early import Early
from .fleet import SiteFleets
from .operators import _ID_MAX, NO_WM, SlidingOperator, Values, WindowOperator, WmCell, build_operator
from .outputs import LateReading, Output, WindowResult
from .watermark import DeviceTracker

__all__ = ["SNAPSHOT_VERSION", "Engine"]

_UNUSED: Final = WmCell(NO_WM)  # a site window's place in a device's cells (Engine._devs)


def _new_stats() -> dict[str, int]:
    """The engine's rarer counts, each 0: refused readings by reason, non-numeric values, flushed markers ignored."""
    return {
        "time_in_future": 0,
        "time_too_old": 0,
        "unsynced": 0,
        "bad_id": 0,
        "non_numeric": 0,
        "flushed_ignored": 0,
    }


SNAPSHOT_VERSION: Final = 4
"""2: flat accumulators (one list per window, metrics side by side: Stat.to_json); 3: a sliding window's panes of
one reading as the reading and its front stack as its newest pane (operators._SlideKey.to_json); 4: without a
sliding window's back accumulator, made again from its panes on restore as the front is. All three restore."""


class _Window:
    """A window spec with its operator and the watermark bound it uses for each device."""

    __slots__ = ("_wm_spec", "bounds", "early", "fleets", "group", "key_site", "metrics", "op", "spec", "uniform")

    def __init__(self, spec: WindowSpec, engine: EngineSpec, tracker: DeviceTracker) -> None:
        self.spec = spec
        self.op: WindowOperator = build_operator(spec, shared=engine.watermark.mode == "global")
        self.key_site = spec.key == "site"
        self.metrics = spec.metrics
        self.bounds: dict[str, int] = {}  # per device, when devices' bounds differ (watermark classes)
        self._wm_spec = engine.watermark
        # every device's bound, when they are all the same (no device is looked up: -1 when they differ)
        own = spec.out_of_orderness_ms
        self.uniform: int = (
            own if own is not None else -1 if engine.watermark.classes else engine.watermark.out_of_orderness_ms
        )
        self.group = 0  # windows with the same metrics have the same group (the engine numbers them)
        self.fleets = SiteFleets(tracker, self.bound)  # a site window's fleet heaps (made when first needed)
        self.early: Early | None = Early(spec, self.op) if spec.early else None  # its early triggers

    def bound(self, device: str) -> int:
        if self.uniform >= 0:
            return self.uniform
        b = self.bounds.get(device)
        if b is None:
            b = self.spec.out_of_orderness_ms
            if b is None:
                b = self._wm_spec.bound_for(device)
            self.bounds[device] = b
        return b


class Engine:
    """Event-time windows over the readings of a fleet (see ``docs/semantics.md``)."""

    def __init__(self, spec: EngineSpec) -> None:
        self.spec = spec
        self.global_mode = spec.watermark.mode == "global"
        self.tracker = DeviceTracker(spec.watermark)
        self.windows = [_Window(w, spec, self.tracker) for w in spec.windows]
        metrics: list[tuple[str, ...]] = []
        for w in self.windows:
            if w.metrics not in metrics:
                metrics.append(w.metrics)
            w.group = metrics.index(w.metrics)
        self._groups = len(metrics)
        # per device, for the hot path: its watermark cell (its record) in each window (for a window keyed by site, a
        # cell never used: the site comes with each message), in a tuple (64 bytes for three windows). Until 6
        # December 2026 an object held it with the device's tracker entry and bounds (48 bytes a device more): the
        # entry is looked up in the tracker's map (_tstate), the bounds are the same list for every device unless
        # watermark classes make them differ (_dev_bounds)
        self._devs: dict[str, tuple[WmCell, ...]] = {}  # (cleared on restore)
        self._tstate = self.tracker.state  # the tracker's entries (a restore replaces the map: taken again then)
        # every device's bounds, one list shared by all, when no window's bound depends on the device (never
        # changed: a device's own list when they differ, in _dev_bounds)
        self._uniform_bounds: list[int] | None = (
            [w.uniform for w in self.windows] if all(w.uniform >= 0 for w in self.windows) else None
        )
        self._dev_bounds: dict[str, list[int]] = {}
        self._site_windows = [w for w in self.windows if w.key_site]
        self._early = [w for w in self.windows if w.early is not None]  # windows with early triggers
        self._early_by_name = {w.spec.name: w.early for w in self._early if w.early is not None}
        self.snapshot_pause: Callable[[], None] | None = None  # see snapshot()
        self.touched: set[str] = set()
        """Keys whose state an advance in global mode changed without its caller naming them (the keys due in a
        shared watermark's advance), since the owner last emptied it; the gateway's checkpoint snapshots the keys
        that changed, and the keys a message or tick names are the caller's to note."""
        for w in self.windows:
            w.op.touched = self.touched
        self.fleet_walk = False  # walk every device of a site for its fleet watermark, as before the heaps (tests)
        self._max_future = spec.max_future_ms
        self._min_time = spec.min_time_ms
        self._reject_unsynced = spec.unsynced == "reject"
        self._readings = 0  # readings windowed (a field: counted per message, a dict entry would box the int)
        self._stats: dict[str, int] = _new_stats()  # the rarer counts

    @property
    def stats(self) -> dict[str, int]:
        """Counts: readings windowed, refused (by reason), non-numeric values, flushed markers ignored."""
        return {"readings": self._readings, **self._stats}

    # -- input ------------------------------------------------------------------------------------

    def process_batch(self, batch: Batch, now_ms: int) -> list[Output]:
        """Window the batch's readings; returns late readings and every window fired or re-fired."""
        out: list[Output] = []
        self._process(batch, now_ms, out)
        if self._early:
            self._early_after(out, 0, batch.site, batch.device)
        if out:  # most messages emit nothing: no call then
            self._stamp(out, 0, now_ms)
        return out

    def process_batches(self, batches: Iterable[tuple[Batch, int]]) -> list[Output]:
        """``(batch, now_ms)`` pairs in arrival order: exactly ``process_batch`` on each in turn, outputs
        concatenated - for a gateway that drains several messages before calling the engine."""
        out: list[Output] = []
        process = self._process
        early = bool(self._early)
        for batch, now_ms in batches:
            n0 = len(out)
            process(batch, now_ms, out)
            if early:
                self._early_after(out, n0, batch.site, batch.device)
            if len(out) > n0:
                self._stamp(out, n0, now_ms)
        return out

    def early_keys(self) -> list[str]:
        """The keys whose early-trigger state :meth:`on_processing_time` may change."""
        keys: list[str] = []
        for w in self._early:
            if w.early is not None:
                keys += w.early.keys()
        return keys

    def on_processing_time(self, now_ms: int) -> list[Output]:
        """Gateway time ``now_ms`` (the caller's timer): the ``early_every`` triggers whose period ended emit a
        provisional result of every open window that took readings since its last result."""
        out: list[Output] = []
        for w in self._early:
            if w.early is not None:
                w.early.tick(now_ms, out)
        self._stamp(out, 0, now_ms)
        return out

    def _stamp(self, out: list[Output], n0: int, now_ms: int) -> None:
        """The window results from ``out[n0]`` on were emitted at ``now_ms``."""
        for i in range(n0, len(out)):
            o = out[i]
            if isinstance(o, WindowResult):
                o.emitted_ms = now_ms

    def _finished(self, out: list[Output], n0: int) -> None:
        """Final results and updates from ``out[n0]`` on end their windows' provisional runs."""
        by_name = self._early_by_name
        for i in range(n0, len(out)):
            o = out[i]
            if isinstance(o, WindowResult) and o.revision:
                e = by_name.get(o.window)
                if e is not None:
                    e.finished(o)

    def _note_early(self, site: str, device: str, rows: list[Reading]) -> None:
        """The readings the windows with early triggers took (before the watermark moves)."""
        for w in self._early:
            e = w.early
            if e is None:
                continue
            key = site if w.key_site else device
            times = []
            for r in rows:
                m = r.metrics
                for name in w.metrics:
                    v = m.get(name)
                    if v is not None and not isinstance(v, str):
                        times.append(r.t_ms)
                        break
            if times:
                e.note(key, times, w.op.watermark(key))

    def _early_after(self, out: list[Output], n0: int, site: str, device: str) -> None:
        """After a message: end provisional runs, then the ``early_count`` triggers of the message's keys."""
        self._finished(out, n0)
        for w in self._early:
            if w.early is not None:
                w.early.check(site if w.key_site else device, out)

    def _future(self, now_ms: int) -> int:
        """The latest event time taken at ``now_ms``: ``max_future_ms`` ahead of it, and never beyond
        ``TIME_LIMIT_MS`` (2**53 ms, about 285,000 years), whatever clock the caller has (a sliding window keeps a
        reading's time in a 64-bit column)."""
        fut = now_ms + self._max_future
        return fut if fut < TIME_LIMIT_MS else TIME_LIMIT_MS

    def _process(self, batch: Batch, now_ms: int, out: list[Output]) -> None:
        fut = self._future(now_ms)
        too_old = self._min_time
        reject_u = self._reject_unsynced
        rows: list[Reading] = []
        has_max = False
        max_t = 0
        row_t = 0  # the event time of the last reading kept
        for r in batch.readings:
            t = r.t_ms
            q = r.quality
            if (
                t > fut
                or t < too_old
                or (reject_u and q == "u")
                or not (0 <= r.boot <= _ID_MAX and 0 <= r.seq <= _ID_MAX)
            ):
                out.append(self._refuse(r, now_ms))  # a boot or seq beyond 31 bits would misorder first and last
                continue
            rows.append(r)
            row_t = t
            if q != "u" and (not has_max or t > max_t):
                max_t = t
                has_max = True
        flushed = batch.flushed_ms
        if flushed is not None and (flushed > fut or flushed < too_old):
            self._stats["flushed_ignored"] += 1
            flushed = None
        site, device = batch.site, batch.device
        windows = self.windows
        cells = self._devs.get(device)
        if cells is None:
            cells = self._dev(site, device)
        if rows:
            self._readings += len(rows)
            if len(rows) == 1 and self._groups == 1:  # the common message: one reading, windows of one metric set
                r = rows[0]
                values = self._values(r, windows[0].metrics)
                if values is not None:
                    b, sq = r.boot, r.seq
                    for i in range(len(windows)):
                        w = windows[i]
                        if w.key_site:
                            late = w.op.add(site, site, device, row_t, b, sq, values)
                        else:
                            late = w.op.add_at(cells[i], device, site, device, row_t, b, sq, values)
                        if late:
                            out.extend(late)
            else:  # windows with the same metrics share each reading's values
                shared: list[list[Values | None] | None] = [None] * self._groups
                for i in range(len(windows)):
                    w = windows[i]
                    vals = shared[w.group]
                    if vals is None:
                        vals = shared[w.group] = [self._values(r, w.metrics) for r in rows]
                    key = site if w.key_site else device
                    op = w.op
                    wmc = op.key_cell(site) if w.key_site else cells[i]
                    for j in range(len(rows)):
                        values = vals[j]
                        if values is not None:
                            r = rows[j]
                            late = op.add_at(wmc, key, site, device, r.t_ms, r.boot, r.seq, values)
                            if late:
                                out.extend(late)
            if self._early:
                self._note_early(site, device, rows)
        # the device tracker (DeviceTracker.seen, inlined): entry = [site, max_t, flushed, last_seen, ...]
        e = self._tstate.get(device)
        if e is None:  # (made by _dev with its cells: only if the map was changed from outside)
            e = self.tracker.entry(site, device)
        last: int | None = e[3]
        if last is None or now_ms > last:
            e[3] = now_ms
        e[5] = False
        top: int | None = e[1]
        if has_max and (top is None or max_t > top):
            e[1] = top = max_t
        fl: int | None = e[2]
        if flushed is not None and (fl is None or flushed > fl):
            e[2] = fl = flushed
        if self._site_windows and not self.global_mode:
            self._heard(device)
        bounds = self._uniform_bounds
        if bounds is None:
            bounds = self._bounds_of(device)
        if self.global_mode:  # each window's shared watermark: the largest max_t - bound of any device so far
            for i in range(len(windows)):
                op = windows[i].op
                cell = op.key_cell("")
                wm = cell.v
                if has_max and max_t - bounds[i] > wm:
                    wm = max_t - bounds[i]
                if wm != NO_WM:
                    op.advance_at(cell, None, wm, out)
            return
        for i in range(len(windows)):
            w = windows[i]
            if w.key_site:
                self._advance_site_into(w, site, now_ms, out)
                continue
            # the device's watermark (DeviceTracker.device_wm, inlined)
            if top is not None:
                wm = top - bounds[i]
                if fl is not None and fl + 1 > wm:
                    wm = fl + 1
            elif fl is not None:
                wm = fl + 1
            else:
                continue
            w.op.advance_at(cells[i], device, wm, out)

    def _dev(self, site: str, device: str) -> tuple[WmCell, ...]:
        """The device's cells, made at its first message (with its tracker entry)."""
        self.tracker.entry(site, device)
        cells = self._devs[device] = tuple([_UNUSED if w.key_site else w.op.key_cell(device) for w in self.windows])
        return cells

    def _bounds_of(self, device: str) -> list[int]:
        """The device's bound in each window, when they differ by device (watermark classes)."""
        b = self._dev_bounds.get(device)
        if b is None:
            b = self._dev_bounds[device] = [w.bound(device) for w in self.windows]
        return b

    def _refuse(self, r: Reading, now_ms: int) -> LateReading:
        if not (0 <= r.boot <= _ID_MAX and 0 <= r.seq <= _ID_MAX):
            reason = "bad_id"
        elif r.t_ms > self._future(now_ms):
            reason = "time_in_future"
        elif r.t_ms < self._min_time:
            reason = "time_too_old"
        else:
            reason = "unsynced"
        self._stats[reason] += 1
        return LateReading("", r.site, r.device, "", r.t_ms, r.boot, r.seq, 0, None, reason)

    def _values(self, r: Reading, metrics: tuple[str, ...]) -> Values | None:
        """The reading's value of each metric (``None`` where it has none); ``None`` if it has none at all."""
        values: Values = []
        mm = r.metrics
        # decoded readings carry a dict: compiled, its get is a direct call (on a Mapping it is a method call)
        m: dict[str, MetricValue] = mm if type(mm) is dict else dict(mm)
        some = False
        for name in metrics:
            v = m.get(name)
            if v is None:
                values.append(None)
            elif type(v) is float:
                values.append(v)
                some = True
            elif isinstance(v, str):
                self._stats["non_numeric"] += 1
                values.append(None)
            else:
                values.append(float(v))
                some = True
        return values if some else None

    def _heard(self, device: str) -> None:
        """A message or status of the device: into each site window's fleet heaps of its sites where it is not
        (see :class:`~gateway.engine.fleet.FleetHeap`)."""
        for w in self._site_windows:
            w.fleets.heard(device)

    def _advance_site(self, w: _Window, site: str, now_ms: int) -> list[Output]:
        out: list[Output] = []
        self._advance_site_into(w, site, now_ms, out)
        return out

    def _advance_site_into(self, w: _Window, site: str, now_ms: int, out: list[Output]) -> None:
        op = w.op
        if self.fleet_walk:
            walk = self.tracker.fleet_wm(site, w.bound, now_ms)
            if walk is None:
                return
            fleet = walk
            cell: WmCell = op.key_cell(site)
        else:
            fleets = w.fleets
            f = fleets.heap(site, now_ms)
            fleet = fleets.fleet_wm_at(site, f, now_ms)
            if fleet == NO_WM:
                return  # no watermark yet: the site's cell is not made (nor is it in a snapshot's order)
            c = f.cell
            if c is None:
                c = f.cell = op.key_cell(site)
            cell = c
        old = cell.v
        op.advance_at(cell, site, fleet if fleet > old else old, out)

    def process_status(self, status: StatusUpdate) -> list[Output]:
        """Note the device's state and announced ``sleep_s``; may release site windows (device offline)."""
        sleep = status.fields.get("sleep_s")
        sleep_s = float(sleep) if isinstance(sleep, (int, float)) and not isinstance(sleep, bool) else None
        self.tracker.status(status.site, status.device, status.received_ms, status.state, sleep_s)
        self._heard(status.device)  # it may be active again, or idle now
        out: list[Output] = []
        if not self.global_mode:
            for w in self.windows:
                if w.key_site:
                    out.extend(self._advance_site(w, status.site, status.received_ms))
        if out:
            self._finished(out, 0)
            self._stamp(out, 0, status.received_ms)
        return out

    def move_device(self, device: str, site: str) -> None:
        """The device belongs to ``site`` from now on: its device windows carry the new site from their next
        reading, its readings go to the new site's windows, and its event time still closes the old site's."""
        self.tracker.move(device, site)
        for w in self._site_windows:
            w.fleets.moved(device, site)  # the site's heap made again with the device when next needed

    def advance(self, now_ms: int) -> list[Output]:
        """Time-driven progress: devices that fell silent turn idle and stop holding site windows back."""
        out: list[Output] = []
        if self.global_mode:
            return out
        for w in self.windows:
            if w.key_site:
                for site in sorted(self.tracker.sites):
                    out.extend(self._advance_site(w, site, now_ms))
        if out:
            self._finished(out, 0)
            self._stamp(out, 0, now_ms)
        return out

    # -- introspection and state ------------------------------------------------------------------

    def device_watermark(self, device: str, window: str | None = None) -> int | None:
        """The watermark a window (default: the first) uses for a device key."""
        w = self._window(window)
        return w.op.watermark("" if self.global_mode else device)

    def late_count(self, window: str | None = None) -> int:
        """Values routed late (beyond allowed lateness) by one window, or by all."""
        if window is not None:
            return self._window(window).op.late_count
        return sum(w.op.late_count for w in self.windows)

    def _window(self, name: str | None) -> _Window:
        for w in self.windows:
            if name is None or w.spec.name == name:
                return w
        raise KeyError(name)

    def snapshot(self, keys: Set[str] | None = None, order: bool = False, rows: int = 0) -> dict[str, Any]:
        """All state as plain JSON-able values (dict keys are strings), in fresh containers.

        The per-key maps (the tracker's, each window's) hold every key's entry; with ``keys``, only those keys'
        entries; with ``order``, every key with the value None (the keys in their order, which is state: the
        operators visit keys in it). The rest (counters) is whole in each. ``gateway.ckpt_rows`` files the entries
        under their keys.

        ``snapshot_pause``, if set, is called every few keys: a gateway that takes the snapshot in a worker
        thread sets it to something that lets the event loop have the GIL (compiled, the operators' loops would
        otherwise hold it for the whole snapshot).

        ``rows`` (a checkpoint's, not with ``order``): 1, a sliding window's keys with their panes in chunks, only
        those from the oldest pane changed since the key's last checkpoint snapshot written out
        (``SlidingOperator.snapshot_rows``); 2, every chunk written out. Either way the keys taken count as
        unchanged from then on (:meth:`mark_changed` undoes it)."""
        ops = []
        for w in self.windows:
            op = w.op
            op.pause = self.snapshot_pause
            try:
                if rows and not order and isinstance(op, SlidingOperator):
                    ops.append(op.snapshot_rows(keys, rows == 2))
                else:
                    ops.append(op.snapshot(keys, order))
            finally:
                op.pause = None
        snap: dict[str, Any] = {
            "version": SNAPSHOT_VERSION,
            "tracker": self.tracker.snapshot(keys, order),
            "stats": self.stats,
            "windows": {w.spec.name: op for w, op in zip(self.windows, ops, strict=True)},
        }
        if self._early:  # only then: a checkpoint of windows without early triggers is as it was
            snap["early"] = {name: e.snapshot(keys, order) for name, e in self._early_by_name.items()}
        return snap

    def mark_changed(self, keys: Set[str] | None) -> None:
        """Every pane of the sliding windows' ``keys`` (None: all) counts as changed since the last checkpoint (its
        snapshot was taken, but the checkpoint failed)."""
        for w in self.windows:
            if isinstance(w.op, SlidingOperator):
                w.op.mark_changed(keys)

    def mark_stored(self, keys: Set[str]) -> None:
        """The sliding windows' panes of ``keys`` are as the stored checkpoint's chunk rows hold them (right after
        restoring it)."""
        for w in self.windows:
            if isinstance(w.op, SlidingOperator):
                w.op.mark_stored(keys)

    def restore(self, snap: dict[str, Any]) -> None:
        """Take back a :meth:`snapshot` (from an engine with the same windows)."""
        if snap.get("version") not in (2, 3, SNAPSHOT_VERSION):
            raise ValueError(f"snapshot version {snap.get('version')!r}, expected 2, 3 or {SNAPSHOT_VERSION}")
        names = {w.spec.name for w in self.windows}
        if set(snap["windows"]) != names:
            raise ValueError(f"snapshot has windows {sorted(snap['windows'])}, engine has {sorted(names)}")
        self.tracker.restore(snap["tracker"])
        self._tstate = self.tracker.state
        self._devs.clear()
        for w in self._site_windows:
            w.fleets.clear()
        stats = _new_stats()  # a count a snapshot of an older build does not have starts at 0
        stats.update(snap["stats"])
        self._readings = stats.pop("readings")
        self._stats = stats
        for w in self.windows:
            w.op.restore(snap["windows"][w.spec.name])
        early = snap.get("early", {})
        for name, e in self._early_by_name.items():
            e.restore(early.get(name))  # a checkpoint from before the window had early triggers: none pending
