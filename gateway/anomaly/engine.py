"""The fleet's anomaly detection: a :class:`~gateway.anomaly.detector.Detector` per device and metric, the
``anomaly`` measurement, and alerts (single-metric, stuck sensor, re-baselined, compound).

Pure and synchronous; the only clock is the ``now_ms`` its caller passes. ``process(readings, now_ms)``
takes newly accepted readings (duplicates already removed), sorts each device's readings by event time,
and scores every numeric metric. A reading older than the last one its series has scored is not scored
(counted as ``out_of_order``): a detector learns in event-time order or not at all.

Compound anomalies: anomalies (z-score or stuck) that open on ``compound.min_metrics`` metrics of one
device within ``compound.span`` of event time raise one ``critical`` alert; so do anomalies on
``min_devices`` devices of a declared group. Their parts are then used up: the next compound alert needs
fresh anomalies.
"""

from __future__ import annotations

import fnmatch
import logging
import math
from collections.abc import Iterable, Sequence, Set
from dataclasses import dataclass
from typing import Any, Final

from ..alerts import Alert, Severity
from ..lineproto import line, reading_time_ns
from ..model import MetricValue, Reading, ReadingKey
from ..schema import declare
from .config import AnomalySpec, GroupSpec
from .detector import Detector, Event, Result
from .multivariate import MultiDetector, MultiResult

__all__ = [
    "ANOMALY_MEASUREMENT",
    "MAX_ABS_VALUE",
    "SNAPSHOT_VERSION",
    "AnomalyEngine",
    "AnomalyOutput",
    "ReadingResult",
]

ANOMALY_MEASUREMENT: Final = declare(
    "anomaly",
    tags=("site", "device", "metric"),
    fields={
        "value": "float",
        "score": "float",
        "anomalous": "boolean",
        "phase": "string",
        "mean": "float",
        "std": "float",
        "z": "float",
    },
    time="the reading's event time (+ a sub-millisecond offset from its boot and sequence number)",
    module=__name__,
)
SNAPSHOT_VERSION: Final = 3
"""3: each detector's state a list of its fields (``Detector.snapshot``); 2: a dict of them; 1: no multivariate
state. :meth:`AnomalyEngine.restore` reads each (a gateway of before 3 refuses a snapshot of 3 by its version)."""
MULTIVARIATE: Final = "_multivariate"
"""The ``metric`` tag of the multivariate score's points in the ``anomaly`` measurement."""
MAX_ABS_VALUE: Final = 1e15
"""Values beyond this (in absolute value) are not scored: their squares would overflow the variance."""

_Opening = tuple[int, ReadingKey]
log = logging.getLogger(__name__)


@dataclass(slots=True, init=False)  # its own __init__: compiled (the dataclasses module's stays interpreted Python)
class AnomalyOutput:
    lines: list[str]
    alerts: list[Alert]

    def __init__(self, lines: list[str] | None = None, alerts: list[Alert] | None = None) -> None:
        self.lines = [] if lines is None else lines
        self.alerts = [] if alerts is None else alerts


@dataclass(slots=True, init=False)  # its own __init__, as AnomalyOutput
class ReadingResult:
    """What one reading did: each scored metric's result, and the reading as a whole."""

    results: dict[str, Result]
    multi: MultiResult | None

    def __init__(self, results: dict[str, Result] | None = None, multi: MultiResult | None = None) -> None:
        self.results = {} if results is None else results
        self.multi = multi

    @property
    def anomalous(self) -> bool:
        """The device's verdict on the reading: once the device's multivariate detector has warmed up, its own
        (it weighs every metric at once, at one false-alarm rate for the device) or a stuck sensor; before
        that, and for a device without one, whether any metric is inside an open anomaly."""
        if self.multi is not None and self.multi.phase == "scored":
            return self.multi.anomalous or any(r.stuck for r in self.results.values())
        return self.any_metric

    @property
    def any_metric(self) -> bool:
        """Some metric of the reading inside an open anomaly (z-score or stuck)."""
        return any(r.anomalous for r in self.results.values())

    @property
    def shifted(self) -> bool:
        """Some metric moved to a new level on this reading (its change-point rule raised a ``shifted`` event)."""
        return any(e.kind == "shifted" for r in self.results.values() for e in r.events)

    @property
    def score(self) -> float:
        """The highest score of the reading's metrics and of the multivariate score (0 when none was scored)."""
        best = max((r.scored.score for r in self.results.values()), default=0.0)
        return max(best, self.multi.score) if self.multi is not None else best


def anomaly_line(site: str, device: str, metric: str, r: Result, boot: int = 0, seq: int = 0) -> str:
    """One point of the ``anomaly`` measurement, at the event time of the reading ``(boot, seq)``."""
    s = r.scored
    fields: dict[str, MetricValue] = {
        "value": float(s.value), "score": float(s.score), "anomalous": bool(r.anomalous), "phase": s.phase
    }  # fmt: skip
    for name, v in (("mean", s.mean), ("std", s.std), ("z", s.z)):
        if v is not None and math.isfinite(v):
            fields[name] = float(v)
    if not math.isfinite(s.value):  # never reached: the engine refuses such values; the sink must never see one
        fields["value"] = 0.0
    tags = {"site": site, "device": device, "metric": metric}
    return line(ANOMALY_MEASUREMENT, tags, fields, reading_time_ns(s.t_ms, boot, seq))


def anomaly_fields(r: Result) -> str:
    """The field set of :func:`anomaly_line`, written directly (the engine's path: one point per value)."""
    # repr() rather than !r: compiled (mypyc), an f-string of str values is one join, one with a conversion
    # goes through str.format's machinery (about 6 % more instructions per value with write = "all")
    s = r.scored
    value = s.value if math.isfinite(s.value) else 0.0
    flag = "true" if r.anomalous else "false"
    out = f'value={repr(value)},score={repr(s.score)},anomalous={flag},phase="{s.phase}"'  # noqa: RUF010
    if s.mean is not None and math.isfinite(s.mean):
        out += f",mean={repr(s.mean)}"  # noqa: RUF010
    if s.std is not None and math.isfinite(s.std):
        out += f",std={repr(s.std)}"  # noqa: RUF010
    if s.z is not None and math.isfinite(s.z):
        out += f",z={repr(s.z)}"  # noqa: RUF010
    return out


def _in_order(rs: list[Reading]) -> bool:
    """Whether ``rs`` is already in ``(t_ms, boot, seq)`` order (equal keys included: a stable sort keeps them).
    Each reading's time is read once (compiled, an attribute of a ``Reading`` is a look-up by name)."""
    if not rs:
        return True
    prev = rs[0].t_ms
    for i in range(1, len(rs)):
        t = rs[i].t_ms
        if prev > t:
            return False
        if prev == t:
            a, b = rs[i - 1], rs[i]
            if (a.boot, a.seq) > (b.boot, b.seq):
                return False
        prev = t
    return True


def _fmt(x: float | None) -> str:
    return "?" if x is None else f"{x:.4g}"


class AnomalyEngine:
    """Detectors for every (device, metric), and the compound rules over them."""

    def __init__(self, spec: AnomalySpec, *, max_future_ms: int = 300_000, min_time_ms: int = 0) -> None:
        self.spec = spec
        self.max_future_ms = max_future_ms
        self.min_time_ms = min_time_ms
        # the spec's fields read at every reading, as attributes of this class (compiled: loads, not look-ups)
        self._wanted: frozenset[str] = frozenset(spec.metrics)
        self._write_all = spec.write == "all"
        self._multi_on = spec.multivariate
        self.detectors: dict[tuple[str, str], Detector] = {}
        self.multi: dict[str, MultiDetector] = {}
        """device -> its multivariate (T^2) detector."""
        self.recent: dict[str, dict[str, _Opening]] = {}
        """device -> metric -> the latest anomaly opening not yet used by a compound alert."""
        self.group_recent: dict[str, dict[str, _Opening]] = {}
        """group -> device -> the latest anomaly opening not yet used by a group alert."""
        self.sites: dict[str, str] = {}
        self._groups_of: dict[str, tuple[GroupSpec, ...]] = {}
        self._heads: dict[tuple[str, str, str], str] = {}  # the anomaly points' escaped measurement and tags
        self._dets: dict[str, dict[str, Detector]] = {}
        """device -> metric -> its detector: ``detectors`` by device (derived from it, kept with it by ``_own``), so
        found without a tuple made and hashed for each metric of each reading, and a device's series counted."""
        self._by_count: dict[int, set[str]] = {}  # series count -> the devices with that many
        self.touched: set[str] | None = None
        """If set, a device whose state changed without a reading of its own (a series taken from it by
        ``max_series``) is added: the gateway's checkpoint snapshots the devices that changed."""
        self.stats: dict[str, int] = {
            "scored": 0,
            "anomalous": 0,
            "out_of_order": 0,
            "unsynced": 0,
            "time_refused": 0,
            "out_of_range": 0,
            "series_refused": 0,
            "series_evicted": 0,
            "alerts": 0,
            "compound_alerts": 0,
            "rebaselined": 0,
            "multivariate_alerts": 0,
            "stalled": 0,
        }

    def __reduce__(self) -> tuple[type[AnomalyEngine], tuple[AnomalySpec], dict[str, Any]]:
        """For copy and pickle, compiled or not (a compiled class is not made without its arguments)."""
        return AnomalyEngine, (self.spec,), {
            "max_future_ms": self.max_future_ms, "min_time_ms": self.min_time_ms, "detectors": self.detectors,
            "multi": self.multi, "recent": self.recent, "group_recent": self.group_recent, "sites": self.sites,
            "groups_of": self._groups_of, "heads": self._heads, "dets": self._dets, "by_count": self._by_count,
            "touched": self.touched, "stats": self.stats,
        }  # fmt: skip

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.max_future_ms, self.min_time_ms = state["max_future_ms"], state["min_time_ms"]
        self.detectors, self.multi = state["detectors"], state["multi"]
        self.recent, self.group_recent, self.sites = state["recent"], state["group_recent"], state["sites"]
        self._groups_of, self._heads = state["groups_of"], state["heads"]
        self._dets, self._by_count = state["dets"], state["by_count"]
        self.touched, self.stats = state["touched"], state["stats"]

    # -- input --------------------------------------------------------------------------------------

    def process(self, readings: Iterable[Reading], now_ms: int) -> AnomalyOutput:
        """Score the readings' numeric metrics; returns the ``anomaly`` lines and the alerts."""
        out = AnomalyOutput()
        by_device: dict[str, list[Reading]] = {}
        newest, oldest = now_ms + self.max_future_ms, self.min_time_ms
        for r in readings:
            t = r.t_ms
            if r.quality == "u":  # its time is unknown: it has no place in an event-time series
                self.stats["unsynced"] += 1
            elif t > newest or t < oldest:
                self.stats["time_refused"] += 1
            else:
                by_device.setdefault(r.device, []).append(r)
        for rs in by_device.values():
            if not _in_order(rs):  # a device's readings mostly come in order: then sorting them changes nothing
                rs.sort(key=lambda r: (r.t_ms, r.boot, r.seq))
            for r in rs:
                self._reading(r, out)
        return out

    def _detector(self, device: str, metric: str) -> Detector | None:
        mine = self._dets.get(device)
        if mine is not None:
            det = mine.get(metric)
            if det is not None:
                return det
        if len(self.detectors) >= self.spec.max_series and not self._make_room(device):
            self.stats["series_refused"] += 1
            return None
        det = self.detectors[(device, metric)] = Detector(self.spec.detector_for(metric))
        self._own(device, metric, det)
        return det

    def _make_room(self, device: str) -> bool:
        """``max_series`` is shared fairly (max-min): a device below the largest holder, by two series or more,
        takes a series from it (the one that has gone longest without a reading); a device at or near the top
        gets no more. So each device can have ``max_series // devices`` series, whatever the others send."""
        top = max(c for c, ds in self._by_count.items() if ds)
        if top < len(self._dets.get(device, ())) + 2:
            return False
        victim = min(self._by_count[top])
        last = {m: det.state.last_t for m, det in self._dets[victim].items()}
        metric = min(last, key=lambda m: (-math.inf if last[m] is None else last[m], m))
        del self.detectors[(victim, metric)]
        if self.touched is not None:
            self.touched.add(victim)
        self.recent.get(victim, {}).pop(metric, None)
        self._own(victim, metric, None)
        self.stats["series_evicted"] += 1
        return True

    def _own(self, device: str, metric: str, det: Detector | None) -> None:
        """``detectors`` got ``det`` as the device's series of ``metric`` (None: lost it): ``_dets`` and ``_by_count``
        follow."""
        mine = self._dets.get(device)
        if mine is None:
            mine = self._dets[device] = {}
        old = len(mine)
        if det is not None:
            mine[metric] = det
        else:
            mine.pop(metric, None)
        if old:
            self._by_count[old].discard(device)
        if mine:
            self._by_count.setdefault(len(mine), set()).add(device)
        else:
            del self._dets[device]

    def score_reading(self, r: Reading, out: AnomalyOutput | None = None) -> ReadingResult:
        """Score one reading (the next of its device in event time; ``process`` sorts them) and say what it
        did; its lines and alerts go to ``out`` when given."""
        return self._reading(r, AnomalyOutput() if out is None else out)

    def _reading(self, r: Reading, out: AnomalyOutput) -> ReadingResult:
        done = ReadingResult()
        device, t = r.device, r.t_ms  # read once: compiled, an attribute of a Reading is a look-up by name
        self.sites[device] = r.site
        gap_seen = False
        scored = 0
        wanted = self._wanted
        # the reading's metrics to score, as floats, each as it comes (no list of them made: compiled, each of its
        # floats was boxed again)
        for metric, v in r.metrics.items():
            if wanted and metric not in wanted:
                continue
            if type(v) is float:  # the common case
                x: float = v
            elif isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            else:
                try:
                    x = float(v)
                except OverflowError:
                    x = math.inf
            if not -MAX_ABS_VALUE <= x <= MAX_ABS_VALUE:  # a NaN too
                self.stats["out_of_range"] += 1
                continue
            det = self._detector(device, metric)
            if det is None:
                continue
            last = det.state.last_t
            if last is not None and t < last:
                self.stats["out_of_order"] += 1
                continue
            res = det.process(t, x)
            done.results[metric] = res
            scored += 1
            if res.anomalous:
                self.stats["anomalous"] += 1
            if res.anomalous or self._write_all:
                head = self._heads.get((r.site, r.device, metric))
                if head is None:
                    head = line(ANOMALY_MEASUREMENT, {"site": r.site, "device": r.device, "metric": metric}, {"x": 0},
                                0).rsplit(" ", 2)[0]  # fmt: skip
                    if len(self._heads) < self.spec.max_series:
                        self._heads[(r.site, r.device, metric)] = head
                out.lines.append(f"{head} {anomaly_fields(res)} {reading_time_ns(r.t_ms, r.boot, r.seq)}")
            for ev in res.events:
                if ev.kind == "stalled":
                    self.stats["stalled"] += 1
                    log.warning(
                        "anomaly: %s of %s never leaves its warm-up: its window holds fewer than %d readings "
                        "(window %d ms); widen window or lower warmup",
                        metric, r.device, det.spec.warmup, det.spec.window_ms,
                    )  # fmt: skip
                elif ev.kind == "gap":
                    if self.spec.gap_alerts and not gap_seen:
                        gap_seen = True
                        self._emit(out, self._gap_alert(r, ev))
                elif ev.kind in ("opened", "stuck", "rebaselined"):
                    self._emit(out, self._alert(r, metric, res, ev))
                    if ev.kind != "rebaselined":
                        self._compound(r, metric, ev, out)
        if scored:
            self.stats["scored"] += scored
        if self._multi_on and len(done.results) >= 2:
            self._multivariate(r, device, t, done, out)
        return done

    def _multivariate(self, r: Reading, device: str, t: int, done: ReadingResult, out: AnomalyOutput) -> None:
        md = self.multi.get(device)
        if md is None:
            if len(self.multi) >= self.spec.max_series:
                return
            md = self.multi[device] = MultiDetector(self.spec.detector, self.spec.multivariate_memory)
        values = {m: res.scored.value for m, res in done.results.items()}
        mres = md.process(t, values)
        if mres is None:
            return
        done.multi = mres
        if mres.anomalous or self._write_all:
            fields: dict[str, MetricValue] = {
                "value": float(mres.t2), "score": float(mres.score), "anomalous": mres.anomalous, "phase": mres.phase
            }  # fmt: skip
            if mres.z is not None:
                fields["z"] = float(mres.z)
            tags = {"site": r.site, "device": r.device, "metric": MULTIVARIATE}
            out.lines.append(line(ANOMALY_MEASUREMENT, tags, fields, reading_time_ns(r.t_ms, r.boot, r.seq)))
        for ev in mres.events:
            if ev.kind == "opened":
                self.stats["multivariate_alerts"] += 1
                names = ", ".join(md.state.names)
                own = [
                    f"{m} {_fmt(z)}"
                    for m in mres.ranked[:3]
                    if (z := done.results[m].scored.ref_z if m in done.results else None) is not None
                ]
                message = (
                    f"the metrics of {r.device} ({names}) left their usual relation: T^2 = {_fmt(mres.t2)} "
                    f"(as a z-score {_fmt(mres.z)}), most of it from {mres.top}; each against its own baseline "
                    f"(z): {', '.join(own)}"
                )
                details: dict[str, MetricValue] = {
                    "t2": float(mres.t2), "z": float(mres.z or 0.0), "score": float(mres.score),
                    "metrics": ",".join(md.state.names), "top": mres.top, "share": float(mres.share),
                }  # fmt: skip
                self._emit(
                    out, Alert("anomaly", "multivariate", r.site, r.device, "warning", ev.since_ms, r.t_ms, (r.key,),
                               message, details),
                )  # fmt: skip
            elif ev.kind == "rebaselined":
                self.stats["rebaselined"] += 1

    # -- alerts -------------------------------------------------------------------------------------

    def _emit(self, out: AnomalyOutput, alert: Alert) -> None:
        self.stats["alerts"] += 1
        out.alerts.append(alert)

    def _alert(self, r: Reading, metric: str, res: Result, ev: Event) -> Alert:
        s = res.scored
        details: dict[str, MetricValue] = {"metric": metric, "value": float(s.value), "score": float(s.score)}
        for name, v in (("mean", s.mean), ("std", s.std), ("z", s.z), ("dist", s.dist)):
            if v is not None and math.isfinite(v):
                details[name] = float(v)
        severity: Severity = "warning"
        if ev.kind == "opened":
            name = f"zscore.{metric}"
            where = "above" if (s.z or 0.0) > 0 else "below"
            message = (
                f"{metric} = {_fmt(s.value)} on {r.device} is {_fmt(abs(s.dist or 0.0))} deviations {where} its "
                f"baseline {_fmt(s.mean)} ± {_fmt(s.std)} (z {_fmt(abs(s.z or 0.0))})"
            )
        elif ev.kind == "stuck":
            name = f"stuck.{metric}"
            repeats = self.detectors[(r.device, metric)].state.repeats
            message = f"{metric} on {r.device} has read {_fmt(s.value)} {repeats} times in a row"
        else:
            self.stats["rebaselined"] += 1
            name, severity = f"rebaseline.{metric}", "info"
            minutes = ev.after_ms / 60_000
            message = (
                f"{metric} on {r.device} has been anomalous for {minutes:.0f} min: taken as its new normal, "
                f"baseline mean {_fmt(ev.old_mean)} -> {_fmt(ev.new_mean)}"
            )
            if ev.old_mean is not None and ev.new_mean is not None:
                details.update(old_mean=float(ev.old_mean), new_mean=float(ev.new_mean))
            details["after_ms"] = int(ev.after_ms)
        return Alert("anomaly", name, r.site, r.device, severity, ev.since_ms, r.t_ms, (r.key,), message, details)

    def _gap_alert(self, r: Reading, ev: Event) -> Alert:
        minutes = ev.after_ms / 60_000
        message = f"{r.device} sent nothing for {minutes:.1f} min of event time before this reading"
        details: dict[str, MetricValue] = {"gap_ms": int(ev.after_ms)}
        return Alert("anomaly", "gap", r.site, r.device, "info", ev.since_ms, r.t_ms, (r.key,), message, details)

    def groups_of(self, device: str) -> tuple[GroupSpec, ...]:
        groups = self._groups_of.get(device)
        if groups is None:
            groups = tuple(g for g in self.spec.groups if any(fnmatch.fnmatchcase(device, p) for p in g.devices))
            if len(self._groups_of) < self.spec.max_series:
                self._groups_of[device] = groups
        return groups

    def _compound(self, r: Reading, metric: str, ev: Event, out: AnomalyOutput) -> None:
        span = self.spec.compound.span_ms
        t = r.t_ms
        mine = self.recent.setdefault(r.device, {})
        mine[metric] = (t, r.key)
        for m in [m for m, (tm, _) in mine.items() if abs(tm - t) > span]:
            del mine[m]
        if len(mine) >= self.spec.compound.min_metrics:
            metrics = sorted(mine)
            times = [tm for tm, _ in mine.values()]
            keys = tuple(sorted({k for _, k in mine.values()}))
            message = (
                f"{len(metrics)} metrics of {r.device} anomalous within {span / 60_000:g} min: {', '.join(metrics)}"
            )
            details: dict[str, MetricValue] = {"metrics": ",".join(metrics), "count": len(metrics)}
            self._compound_alert(out, "compound.device", r.site, r.device, times, keys, message, details)
            mine.clear()
        for g in self.groups_of(r.device):
            members = self.group_recent.setdefault(g.name, {})
            members[r.device] = (t, r.key)
            for d in [d for d, (td, _) in members.items() if abs(td - t) > span]:
                del members[d]
            if len(members) >= g.min_devices:
                devices = sorted(members)
                times = [td for td, _ in members.values()]
                keys = tuple(sorted(k for _, k in members.values()))
                sites = {self.sites.get(d, r.site) for d in devices}
                site = r.site if len(sites) == 1 else "multi-site"
                message = (
                    f"{len(devices)} devices of group {g.name} anomalous within {span / 60_000:g} min: "
                    f"{', '.join(devices)}"
                )
                details = {"devices": ",".join(devices), "count": len(devices), "group": g.name}
                self._compound_alert(out, "compound.group", site, g.name, times, keys, message, details)
                members.clear()

    def _compound_alert(
        self,
        out: AnomalyOutput,
        name: str,
        site: str,
        key: str,
        times: list[int],
        keys: tuple[ReadingKey, ...],
        message: str,
        details: dict[str, MetricValue],
    ) -> None:
        """A critical alert for anomalies that came together (several metrics, or several devices)."""
        alert = Alert("anomaly", name, site, key, "critical", min(times), max(times), keys, message, details)
        self.stats["compound_alerts"] += 1
        self._emit(out, alert)

    # -- state --------------------------------------------------------------------------------------

    def snapshot(self, keys: Set[str] | None = None, order: bool = False) -> dict[str, Any]:
        """All state as plain JSON-able values. ``keys`` and ``order`` select the devices' entries as in
        ``Engine.snapshot``: those of ``detectors`` (a list of ``[device, metric, state]``), ``multi``, ``recent``
        and ``sites``; with ``order`` a detector's state is None."""
        if order:
            return {
                "version": SNAPSHOT_VERSION,
                "detectors": [[d, m, None] for d, m in self.detectors],
                "multi": dict.fromkeys(self.multi),
                "recent": dict.fromkeys(self.recent),
                "group_recent": self._group_recent(),
                "sites": dict.fromkeys(self.sites),
                "stats": dict(self.stats),
            }
        if keys is None:
            return {
                "version": SNAPSHOT_VERSION,
                "detectors": [[d, m, det.snapshot()] for (d, m), det in self.detectors.items()],
                "multi": {d: md.snapshot() for d, md in self.multi.items()},
                "recent": {d: {m: [t, list(k)] for m, (t, k) in ms.items()} for d, ms in self.recent.items()},
                "group_recent": self._group_recent(),
                "sites": dict(self.sites),
                "stats": dict(self.stats),
            }
        return {
            "version": SNAPSHOT_VERSION,
            "detectors": [[d, m, det.snapshot()] for d in keys for m, det in self._dets.get(d, {}).items()],
            "multi": {d: self.multi[d].snapshot() for d in keys if d in self.multi},
            "recent": {d: {m: [t, list(k)] for m, (t, k) in self.recent[d].items()} for d in keys if d in self.recent},
            "group_recent": self._group_recent(),
            "sites": {d: self.sites[d] for d in keys if d in self.sites},
            "stats": dict(self.stats),
        }

    def _group_recent(self) -> dict[str, Any]:
        return {g: {d: [t, list(k)] for d, (t, k) in ds.items()} for g, ds in self.group_recent.items()}

    def restore(self, snap: dict[str, Any]) -> None:
        """Take back a :meth:`snapshot` (from an engine with the same configuration)."""
        if snap.get("version") not in (1, 2, SNAPSHOT_VERSION):
            raise ValueError(f"anomaly snapshot version {snap.get('version')!r}, expected 1 to {SNAPSHOT_VERSION}")
        self.detectors, self._dets, self._by_count = {}, {}, {}
        for device, metric, state in snap["detectors"]:
            det = Detector(self.spec.detector_for(metric))
            det.restore(state)
            self.detectors[(device, metric)] = det
            self._own(device, metric, det)  # with the table as it is made: a restore that fails leaves them alike
        self.multi = {}
        for device, state in snap.get("multi", {}).items():  # version 1 had none: they start afresh
            md = self.multi[device] = MultiDetector(self.spec.detector, self.spec.multivariate_memory)
            md.restore(state)

        def openings(raw: dict[str, dict[str, Any]]) -> dict[str, dict[str, _Opening]]:
            return {
                a: {b: (int(t), (str(k[0]), int(k[1]), int(k[2]))) for b, (t, k) in bs.items()} for a, bs in raw.items()
            }

        self.recent = openings(snap["recent"])
        self.group_recent = openings(snap["group_recent"])
        self.sites = dict(snap["sites"])
        self.stats = {**dict.fromkeys(self.stats, 0), **snap["stats"]}  # counters added since start at 0

    def series(self) -> Sequence[tuple[str, str]]:
        return list(self.detectors)
