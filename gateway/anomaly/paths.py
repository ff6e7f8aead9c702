"""Anomaly detection on arrival, in event time, or both (``[anomaly] on``; docs/anomaly.md, "Fast or exact").

- ``arrival`` (the default, and what detection always did): each message's new readings are scored at once, in
  event-time order within the message; a reading older than the last one its series scored is skipped
  (``out_of_order``), since a detector learns forward in time only. Under disorder the baseline misses readings.
- ``event_time``: each device's readings wait in a buffer until the device's watermark (the engine's: latest
  event time minus the device's out-of-orderness bound, or a flushed marker + 1) passes them, then are scored
  in event-time order ``(t, boot, seq)``: disorder inside the bound changes nothing; a reading older than the
  watermark when it arrives is ``late``, counted and not scored.
- ``both``: two engines, one per path, and verdicts. An arrival alert *A* spans ``[lo, hi]`` (its first and
  last event time); ``tolerance`` is ``compound.span`` (anomalies within it of each other are one event, as for
  compound alerts). An event-time alert *E* confirms the first alert still waiting with the same name and key
  whose span, widened by the tolerance, meets *E*'s (``lo_A - tol <= hi_E`` and ``lo_E <= hi_A + tol``);
  without one it says ``missed_fast``. Once the event-time watermarks of every device *A* names have passed
  ``hi + tol`` and nothing confirmed it, *A* is retracted by a record of its own.

Pure and synchronous, like the engine it wraps. With ``both``, the ``anomaly`` points are the event-time
path's (one per reading and metric, as with one path); the arrival path gives alerts only.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Set
from dataclasses import dataclass, replace
from typing import Any, Final

from ..alerts import Alert, alert_id
from ..engine.watermark import WatermarkSpec
from ..model import Reading
from .config import AnomalySpec
from .engine import AnomalyEngine, AnomalyOutput

__all__ = ["MAX_BUFFERED", "PATHS_VERSION", "AnomalyPaths"]

PATHS_VERSION: Final = 1
MAX_BUFFERED: Final = 10_000
"""Readings waiting per device at most (as CEP's ``max_buffered``): beyond it the earliest is scored at once
(counted as ``forced``), so a device cannot grow the buffer without bound inside its out-of-orderness bound."""

_Held = tuple[int, int, int, int, Reading]
"""``(t, boot, seq, arrival, reading)``: the event-time path's buffer, in the order it scores."""


@dataclass(slots=True)
class _Open:
    alert: Alert
    id: str
    due: int


def _alert_doc(a: Alert) -> list[Any]:
    return [a.name, a.site, a.key, a.severity, a.first_ms, a.last_ms, [list(r) for r in a.readings], a.message,
            dict(a.details)]  # fmt: skip


def _alert_of(doc: list[Any]) -> Alert:
    name, site, key, severity, first, last, readings, message, details = doc
    keys = tuple((str(d), int(b), int(s)) for d, b, s in readings)
    return Alert("anomaly", name, site, key, severity, int(first), int(last), keys, message, details, path="arrival")


class AnomalyPaths:
    """The anomaly engine(s) of ``[anomaly] on``; with ``on = "arrival"`` a thin wrapper of one engine, whose
    snapshot is that engine's (unchanged)."""

    def __init__(
        self, spec: AnomalySpec, watermark: WatermarkSpec, *, max_future_ms: int = 300_000, min_time_ms: int = 0
    ) -> None:
        self.spec = spec
        self.watermark = watermark
        self.max_future_ms = max_future_ms
        self.min_time_ms = min_time_ms

        def engine() -> AnomalyEngine:
            return AnomalyEngine(spec, max_future_ms=max_future_ms, min_time_ms=min_time_ms)

        self.fast = engine() if spec.on in ("arrival", "both") else None
        self.exact = engine() if spec.on in ("event_time", "both") else None
        self.tolerance = spec.compound.span_ms
        self.buf: dict[str, list[_Held]] = {}
        self.marks: dict[str, list[int | None]] = {}
        """device -> [latest synced event time, latest flushed marker]: its event-time watermark."""
        self.open: list[_Open] = []
        """Arrival alerts waiting for their verdict (``both``), in the order they were raised."""
        self._arrival = 0
        self._bounds: dict[str, int] = {}
        self.stats: dict[str, int] = dict.fromkeys(
            ("late", "forced", "fast_alerts", "confirmed", "retracted", "missed_fast"), 0
        )

    @property
    def engine(self) -> AnomalyEngine:
        """The engine whose alerts are exact when there is one, else the arrival one."""
        e = self.exact or self.fast
        assert e is not None
        return e

    # -- input --------------------------------------------------------------------------------------

    def wm(self, device: str) -> int | None:
        """The device's event-time watermark: every reading below it has been scored (or was late)."""
        marks = self.marks.get(device)
        if marks is None:
            return None
        max_t, flushed = marks
        bound = self._bounds.get(device)
        if bound is None:
            bound = self._bounds[device] = self.watermark.bound_for(device)
        cands = [m for m in (None if max_t is None else max_t - bound, None if flushed is None else flushed + 1)
                 if m is not None]  # fmt: skip
        return max(cands) if cands else None

    def process(
        self, readings: Iterable[Reading], now_ms: int, *, device: str | None = None, flushed_ms: int | None = None
    ) -> AnomalyOutput:
        """Score ``readings`` (one message's new readings; ``device`` and its ``flushed_ms`` marker, if any)."""
        readings = list(readings)
        if self.exact is None:
            assert self.fast is not None
            return self.fast.process(readings, now_ms)
        out = AnomalyOutput()
        if self.fast is not None:  # the arrival path first: its alerts come before any verdict on them
            for a in self.fast.process(readings, now_ms).alerts:
                self.stats["fast_alerts"] += 1
                a = replace(a, path="arrival")
                out.alerts.append(a)
                self.open.append(_Open(a, a.id, a.last_ms + self.tolerance))
            # the arrival path's anomaly points are not written: the event-time path's own come with the
            # watermark (one point per reading and metric, as with a single path)
        passed: list[Reading] = []
        touched: set[str] = set()
        for r in readings:
            if r.quality == "u" or r.t_ms > now_ms + self.max_future_ms or r.t_ms < self.min_time_ms:
                passed.append(r)  # the engine counts and skips it: it has no place in event time
                continue
            wm = self.wm(r.device)
            if wm is not None and r.t_ms < wm:
                self.stats["late"] += 1
                continue
            marks = self.marks.setdefault(r.device, [None, None])
            if marks[0] is None or r.t_ms > marks[0]:
                marks[0] = r.t_ms
            self._arrival += 1
            buf = self.buf.setdefault(r.device, [])
            heapq.heappush(buf, (r.t_ms, r.boot, r.seq, self._arrival, r))
            if len(buf) > MAX_BUFFERED:
                self.stats["forced"] += 1
                passed.append(heapq.heappop(buf)[4])
            touched.add(r.device)
        if (
            device is not None
            and flushed_ms is not None
            and self.min_time_ms <= flushed_ms <= now_ms + self.max_future_ms
        ):
            marks = self.marks.setdefault(device, [None, None])
            if marks[1] is None or flushed_ms > marks[1]:
                marks[1] = flushed_ms
            touched.add(device)
        for d in sorted(touched):
            wm = self.wm(d)
            held = self.buf.get(d)
            while held and wm is not None and held[0][0] < wm:
                passed.append(heapq.heappop(held)[4])
            if held == []:
                del self.buf[d]
        if passed:
            found = self.exact.process(passed, now_ms)
            out.lines.extend(found.lines)
            for a in found.alerts:
                out.alerts.append(self._verdict(a) if self.fast is not None else a)
        if self.open and touched:
            self._retract(out)
        return out

    def _verdict(self, a: Alert) -> Alert:
        tol = self.tolerance
        for j, o in enumerate(self.open):
            b = o.alert
            if b.name == a.name and b.key == a.key and b.first_ms - tol <= a.last_ms and a.first_ms <= b.last_ms + tol:
                del self.open[j]
                self.stats["confirmed"] += 1
                return replace(a, path="event_time", verdict="confirmed", refers=o.id)
        self.stats["missed_fast"] += 1
        return replace(a, path="event_time", verdict="missed_fast")

    def _retract(self, out: AnomalyOutput) -> None:
        keep: list[_Open] = []
        for o in self.open:
            wms = [self.wm(d) for d in {r[0] for r in o.alert.readings}]
            if all(w is not None and w > o.due for w in wms):
                self.stats["retracted"] += 1
                out.alerts.append(replace(o.alert, verdict="retracted", refers=o.id))
            else:
                keep.append(o)
        self.open = keep

    # -- state --------------------------------------------------------------------------------------

    def buffered(self) -> int:
        return sum(len(b) for b in self.buf.values())

    @property
    def engines(self) -> list[AnomalyEngine]:
        return [e for e in (self.fast, self.exact) if e is not None]

    def snapshot(self, keys: Set[str] | None = None, order: bool = False) -> dict[str, Any]:
        """All state as plain JSON-able values. With ``on = "arrival"`` the engine's snapshot, with ``keys`` and
        ``order`` as in ``AnomalyEngine.snapshot``; otherwise the whole state (``order``, or no ``keys``: a
        checkpoint keeps it in its global part) or, with ``keys``, nothing per key (a stub)."""
        if self.exact is None:
            return self.engine.snapshot(keys, order)  # on = "arrival": the engine's snapshot, as it always was
        if keys is not None and not order:
            return {"paths": PATHS_VERSION}
        return {
            "paths": PATHS_VERSION,
            "fast": None if self.fast is None else self.fast.snapshot(),
            "exact": self.exact.snapshot(),
            "buf": {
                d: [[h[0], h[4].site, h[1], h[2], h[4].quality, dict(h[4].metrics)] for h in sorted(b)]
                for d, b in self.buf.items()
            },
            "marks": {d: list(m) for d, m in self.marks.items()},
            "open": [[_alert_doc(o.alert), o.due] for o in self.open],
            "stats": dict(self.stats),
        }

    def restore(self, snap: dict[str, Any]) -> None:
        if "paths" not in snap:  # an engine's own snapshot (on = "arrival", or from before this setting)
            (self.fast or self.engine).restore(snap)
            return
        if snap["paths"] != PATHS_VERSION:
            raise ValueError(f"anomaly paths snapshot version {snap['paths']!r}, expected {PATHS_VERSION}")
        if self.fast is not None and snap["fast"] is not None:
            self.fast.restore(snap["fast"])
        if self.exact is not None:
            self.exact.restore(snap["exact"])
        self.buf, self._arrival = {}, 0
        for d, held in snap["buf"].items():
            for t, site, boot, seq, q, metrics in held:
                self._arrival += 1
                self.buf.setdefault(d, []).append(
                    (t, boot, seq, self._arrival, Reading(site, d, boot, seq, t, q, metrics))
                )
            heapq.heapify(self.buf[d])
        self.marks = {d: [m[0], m[1]] for d, m in snap["marks"].items()}
        self.open = []
        for doc, due in snap["open"]:
            a = _alert_of(doc)
            self.open.append(_Open(a, alert_id(a.source, a.name, a.key, a.readings, "arrival"), int(due)))
        self.stats = {**dict.fromkeys(self.stats, 0), **snap["stats"]}
