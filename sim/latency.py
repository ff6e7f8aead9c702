"""Latency against accuracy, measured: a scenario's run through the gateway's pipeline in simulated gateway time.

:func:`measure` feeds a :class:`~sim.world.Run` (its deliveries at the arrival times the simulator's network,
sleep and flush model gave them: deterministic, no wall clock) to a fresh :class:`~gateway.pipeline.Pipeline`,
ticking once a virtual second as the gateway's tick loop does, and records every window result the engine
emits with the gateway time it was emitted at. Each result is matched with the readings it holds (the readings
of its key, with its metric, inside its range, handled before it and not routed late for its window), so that
for every result kind (``provisional`` before the watermark, ``final`` on the watermark, ``update`` within the
allowed lateness):

- **latency** from the event time of the newest reading it holds (``since_event_ms``: how old the newest
  measurement is when its aggregate appears) and from the arrival of the last of its readings to arrive
  (``since_arrival_ms``: how long the gateway sat on data it had);
- **error** of a provisional result against the window's final one (absolute and relative error of the
  window's main aggregate, count error) and of the final and the last result against the *truth*: the
  aggregate of every reading of the window the gateway accepted during the run, late ones included;
- the share of readings **too late for any result** (routed to the late output by every window containing
  them) and those still **pending** when the run ended (their window never closed);
- **state**: the engine's snapshot as JSON (what a checkpoint stores), sampled every minute of gateway time.

:func:`sweep` repeats it over settings (watermark bound, allowed lateness, early trigger interval) applied to
every window of the configuration: the trade-off table of ``edgekit-gateway plan --scenario``.
"""

from __future__ import annotations

import bisect
import json
import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from gateway.alerts import Alert
from gateway.engine import LateReading, WindowResult
from gateway.engine.config import WindowSpec
from gateway.pipeline import Pipeline

from .errors import SpecError
from .inprocess import TICK_MS, gateway_config
from .world import Run

__all__ = [
    "KINDS",
    "AlertRecord",
    "ErrorStats",
    "Measurement",
    "ResultRecord",
    "RuleStats",
    "Setting",
    "SweepRow",
    "WindowCounts",
    "eventful_instance",
    "grid",
    "latency_doc",
    "main_aggregate",
    "measure",
    "render_table",
    "row_of",
    "sweep",
]

KINDS: Final = ("provisional", "final", "update")
"""Result kinds, in the order a window emits them."""
STATE_EVERY_MS: Final = 60_000
"""How often (gateway time) the engine's state is sized."""
_SAME: Final = 1e-9
"""Relative difference below which a value counts as exact (incremental mean against a plain one)."""
_MAIN_ORDER: Final = ("mean", "sum", "max", "min", "last", "first", "stddev")


def main_aggregate(spec: WindowSpec) -> str:
    """The aggregate a window's error is measured on: ``mean`` if it has one, else the first it has (``count``
    alone: the count)."""
    for name in _MAIN_ORDER:
        if name in spec.aggregates:
            return name
    return "count"


def _agg(name: str, vals: Sequence[tuple[int, int, int, float, str]]) -> float | None:
    """``name`` over ``vals`` ((t, boot, seq, value, device), any order), computed plainly; None when undefined."""
    if not vals:
        return None
    xs = [v[3] for v in vals]
    if name == "count":
        return float(len(xs))
    if name == "mean":
        return statistics.fmean(xs)
    if name == "sum":
        return math.fsum(xs)
    if name == "min":
        return min(xs)
    if name == "max":
        return max(xs)
    if name == "stddev":
        return statistics.stdev(xs) if len(xs) >= 2 else None
    ordered = sorted(vals)
    return ordered[0][3] if name == "first" else ordered[-1][3]


def _kind(o: WindowResult) -> str:
    """The result kind: the engine's own (``result``) where it says one, else by the revision (0 provisional,
    1 final, more an update)."""
    kind = getattr(o, "result", None)
    if isinstance(kind, str) and kind in KINDS:
        return kind
    return "provisional" if o.revision == 0 else "final" if o.revision == 1 else "update"


@dataclass(frozen=True, slots=True)
class ResultRecord:
    """One window result as the gateway emitted it, with the readings behind it."""

    at_ms: int
    """Gateway time of the emission (the arrival that caused it, or the tick)."""
    window: str
    key: str
    start_ms: int
    end_ms: int
    metric: str
    kind: str
    revision: int
    count: int
    value: float | None
    """The window's main aggregate (:func:`main_aggregate`)."""
    since_event_ms: int
    """``at_ms`` - the event time of the newest reading it holds."""
    since_arrival_ms: int
    """``at_ms`` - the arrival of the last of its readings to arrive."""
    held: int
    """Readings the harness finds in it: equals ``count`` unless the harness and the engine disagree."""

    @property
    def instance(self) -> tuple[str, str, int, str]:
        return (self.window, self.key, self.start_ms, self.metric)

    def to_json(self) -> list[object]:
        return [self.at_ms, self.window, self.key, self.start_ms, self.end_ms, self.metric, self.kind, self.revision,
                self.count, self.value, self.since_event_ms, self.since_arrival_ms]  # fmt: skip


def _pct(xs: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) of ``xs`` by the nearest rank; None when empty."""
    if not xs:
        return None
    s = sorted(xs)
    return float(s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))])


@dataclass(frozen=True, slots=True)
class ErrorStats:
    """Errors of some results against reference values of the same windows."""

    n: int = 0
    """Results compared."""
    exact: int = 0
    """Of which equal to the reference (value and count)."""
    mae: float | None = None
    """Mean absolute error of the main aggregate."""
    mre: float | None = None
    """Mean relative error (|error| / |reference|, over references other than 0)."""
    count_error: float | None = None
    """Mean of reference count - result count (readings the result was missing)."""

    def as_dict(self) -> dict[str, object]:
        return {"n": self.n, "exact": self.exact, "mae": self.mae, "mre": self.mre, "count_error": self.count_error}


def _errors(pairs: Iterable[tuple[float | None, int, float | None, int]]) -> ErrorStats:
    """Over (value, count, reference value, reference count)."""
    n = exact = 0
    abs_errs: list[float] = []
    rel_errs: list[float] = []
    count_errs: list[int] = []
    for v, c, ref, rc in pairs:
        n += 1
        count_errs.append(rc - c)
        if v is not None and ref is not None:
            e = abs(v - ref)
            abs_errs.append(e)
            if ref != 0:
                rel_errs.append(e / abs(ref))
            if e <= _SAME * max(1.0, abs(ref)) and rc == c:  # the engine's incremental sums round differently
                exact += 1
        elif v is None and ref is None and rc == c:
            exact += 1
    return ErrorStats(
        n,
        exact,
        statistics.fmean(abs_errs) if abs_errs else None,
        statistics.fmean(rel_errs) if rel_errs else None,
        statistics.fmean(count_errs) if count_errs else None,
    )


@dataclass(frozen=True, slots=True)
class AlertRecord:
    """One alert record as the gateway published it."""

    at_ms: int
    source: str
    name: str
    key: str
    path: str
    """``arrival`` (the fast path) or ``event_time`` (after the watermark; every alert of a rule with one path)."""
    verdict: str
    """``confirmed`` / ``missed_fast`` on an event-time alert, ``retracted`` on a record withdrawing an arrival
    alert, empty otherwise."""
    id: str
    refers: str
    since_event_ms: int
    """``at_ms`` - the event time of the last reading it is about."""
    since_arrival_ms: int
    """``at_ms`` - the arrival of the last of its readings to arrive."""

    def to_json(self) -> list[object]:
        return [self.at_ms, self.source, self.name, self.key, self.path, self.verdict, self.id, self.refers,
                self.since_event_ms, self.since_arrival_ms]  # fmt: skip


@dataclass(frozen=True, slots=True)
class RuleStats:
    """Per rule: the fast path against the exact one."""

    fast: int
    """Alerts raised on arrival."""
    exact: int
    """Alerts raised in event time (retraction records not counted)."""
    confirmed: int
    """Event-time alerts confirming a fast one."""
    false: int
    """Fast alerts retracted: the exact path did not find them."""
    missed: int
    """Event-time alerts the fast path had not raised (``missed_fast``)."""
    fast_p50_ms: float | None
    """Median latency of the fast alerts from the arrival of their last reading."""
    exact_p50_ms: float | None
    """Median latency of the event-time alerts from the arrival of their last reading."""
    head_start_p50_ms: float | None
    """Median, over confirmed alerts, of how much earlier the fast alert came."""

    def as_dict(self) -> dict[str, object]:
        return {"fast": self.fast, "exact": self.exact, "confirmed": self.confirmed, "false": self.false,
                "missed": self.missed, "fast_p50_ms": self.fast_p50_ms, "exact_p50_ms": self.exact_p50_ms,
                "head_start_p50_ms": self.head_start_p50_ms}  # fmt: skip


@dataclass(slots=True)
class WindowCounts:
    """Per window: what became of the readings it should hold."""

    readings: int = 0
    """Readings with one of its metrics that reached the engine (not refused)."""
    in_result: int = 0
    """Of which held by at least one of its results."""
    late: int = 0
    """Routed to the late output and held by none of its results: too late for any result."""
    pending: int = 0
    """Neither: their window had not closed when the run ended."""
    instances: int = 0
    """Windows (key, start, metric) that have readings."""
    missed: int = 0
    """Of which never emitted at all though some of their readings came: every one of them too late."""

    @property
    def late_share(self) -> float:
        return self.late / self.readings if self.readings else 0.0


@dataclass(slots=True)
class Measurement:
    """What :func:`measure` found: every result, the readings' fate per window, the state's size."""

    results: list[ResultRecord] = field(default_factory=list)
    alerts: list[AlertRecord] = field(default_factory=list)
    windows: dict[str, WindowCounts] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)
    """Window name -> kind and size as configured (``tumbling 10m``)."""
    truth: dict[tuple[str, str, int, str], tuple[float | None, int]] = field(default_factory=dict)
    """Per window instance: the main aggregate and count over every accepted reading of it (late ones too)."""
    state_max_bytes: int = 0
    state_end_bytes: int = 0
    mismatches: int = 0
    """Results whose count differs from the readings the harness finds in them (0 unless a bug)."""
    end_ms: int = 0
    """Gateway time of the last delivery."""

    # --- latency ---------------------------------------------------------------------------------------
    def latencies(self, kind: str, since: str = "event", window: str | None = None) -> list[int]:
        """Latencies (ms) of every result of ``kind``: ``since`` "event" or "arrival"."""
        return [
            r.since_event_ms if since == "event" else r.since_arrival_ms
            for r in self.results
            if r.kind == kind and (window is None or r.window == window)
        ]

    def latency_table(self) -> list[dict[str, object]]:
        """Per window and result kind: the number of results and the median, 95th percentile and maximum of
        both latencies (ms)."""
        rows: list[dict[str, object]] = []
        for w in sorted(self.windows):
            for kind in KINDS:
                ev = self.latencies(kind, "event", w)
                if not ev:
                    continue
                ar = self.latencies(kind, "arrival", w)
                rows.append({
                    "window": w, "kind": kind, "results": len(ev),
                    "event_p50": _pct(ev, 0.5), "event_p95": _pct(ev, 0.95), "event_max": max(ev),
                    "arrival_p50": _pct(ar, 0.5), "arrival_p95": _pct(ar, 0.95), "arrival_max": max(ar),
                })  # fmt: skip
        return rows

    # --- error -----------------------------------------------------------------------------------------
    def _by_instance(self) -> dict[tuple[str, str, int, str], list[ResultRecord]]:
        out: dict[tuple[str, str, int, str], list[ResultRecord]] = defaultdict(list)
        for r in self.results:
            out[r.instance].append(r)
        return out

    def provisional_error(self, window: str | None = None) -> ErrorStats:
        """Every provisional result against its window's final result."""
        pairs: list[tuple[float | None, int, float | None, int]] = []
        for inst, rs in self._by_instance().items():
            if window is not None and inst[0] != window:
                continue
            final = next((r for r in rs if r.kind == "final"), None)
            if final is None:
                continue
            pairs += [(r.value, r.count, final.value, final.count) for r in rs if r.kind == "provisional"]
        return _errors(pairs)

    def truth_error(self, which: str = "final", window: str | None = None) -> ErrorStats:
        """The ``final`` result (or the ``last`` one, after the updates) of every window against the truth."""
        pairs: list[tuple[float | None, int, float | None, int]] = []
        for inst, rs in self._by_instance().items():
            if window is not None and inst[0] != window:
                continue
            done = [r for r in rs if r.kind != "provisional"]
            if not done or inst not in self.truth:
                continue
            r = next((x for x in done if x.kind == "final"), done[0]) if which == "final" else done[-1]
            ref, rc = self.truth[inst]
            pairs.append((r.value, r.count, ref, rc))
        return _errors(pairs)

    # --- alerts ----------------------------------------------------------------------------------------
    def rules(self) -> dict[str, RuleStats]:
        """Per rule (``source/name``): fast and exact alerts, the fast path's false and missed alerts, latencies."""
        out: dict[str, RuleStats] = {}
        for rule in sorted({f"{a.source}/{a.name}" for a in self.alerts}):
            mine = [a for a in self.alerts if f"{a.source}/{a.name}" == rule]
            fast = [a for a in mine if a.path == "arrival" and a.verdict != "retracted"]
            exact = [a for a in mine if a.path == "event_time"]
            when = {a.id: a.at_ms for a in fast}
            heads = [a.at_ms - when[a.refers] for a in exact if a.verdict == "confirmed" and a.refers in when]
            out[rule] = RuleStats(
                len(fast), len(exact), sum(1 for a in exact if a.verdict == "confirmed"),
                sum(1 for a in mine if a.verdict == "retracted"), sum(1 for a in exact if a.verdict == "missed_fast"),
                _pct([a.since_arrival_ms for a in fast], 0.5), _pct([a.since_arrival_ms for a in exact], 0.5),
                _pct(heads, 0.5),
            )  # fmt: skip
        return out

    # --- totals ----------------------------------------------------------------------------------------
    @property
    def readings(self) -> int:
        return sum(c.readings for c in self.windows.values())

    @property
    def late_share(self) -> float:
        n = self.readings
        return sum(c.late for c in self.windows.values()) / n if n else 0.0

    def value_history(self, instance: tuple[str, str, int, str]) -> list[ResultRecord]:
        """Every result of one window instance, in the order they were emitted."""
        return [r for r in self.results if r.instance == instance]

    def as_dict(self) -> dict[str, Any]:
        return {
            "windows": {
                w: {
                    "kind": self.kinds.get(w, ""),
                    "readings": c.readings,
                    "in_result": c.in_result,
                    "late": c.late,
                    "pending": c.pending,
                    "late_share": c.late_share,
                    "instances": c.instances,
                    "missed": c.missed,
                    "provisional_error": self.provisional_error(w).as_dict(),
                    "final_error": self.truth_error("final", w).as_dict(),
                    "last_error": self.truth_error("last", w).as_dict(),
                }
                for w, c in sorted(self.windows.items())
            },
            "latency": self.latency_table(),
            "late_share": self.late_share,
            "state_max_bytes": self.state_max_bytes,
            "state_end_bytes": self.state_end_bytes,
            "mismatches": self.mismatches,
            "results": [r.to_json() for r in self.results],
            "rules": {k: v.as_dict() for k, v in self.rules().items()},
            "alerts": [a.to_json() for a in self.alerts],
        }


# --- the harness -------------------------------------------------------------------------------------------

_Held = tuple[int, int, int, str, int, dict[str, float]]  # t, boot, seq, device, arrival, numeric values


def _numeric(metrics: Mapping[str, object]) -> dict[str, float]:
    return {m: float(v) for m, v in metrics.items() if isinstance(v, (int, float))}  # bool is an int: 1.0 / 0.0


class _Tracker:
    """Per window and key, the readings the engine took, sorted by (t, boot, seq), for matching results."""

    def __init__(self, specs: Sequence[WindowSpec]) -> None:
        self.specs = {s.name: s for s in specs}
        self.main = {s.name: main_aggregate(s) for s in specs}
        self.held: dict[tuple[str, str], list[_Held]] = defaultdict(list)
        self.late: set[tuple[str, str, str, int, int, int]] = set()  # window, device, metric, t, boot, seq
        self.used: dict[str, set[tuple[str, int, int]]] = defaultdict(set)  # window -> (device, boot, seq)

    def add(self, site: str, device: str, t: int, boot: int, seq: int, arrival: int, values: dict[str, float]) -> None:
        for s in self.specs.values():
            if any(m in values for m in s.metrics):
                key = site if s.key == "site" else device
                bisect.insort(self.held[(s.name, key)], (t, boot, seq, device, arrival, values))

    def members(self, o: WindowResult, at_ms: int) -> list[_Held]:
        rows = self.held.get((o.window, o.key), [])
        lo = bisect.bisect_left(rows, (o.start_ms,))
        hi = bisect.bisect_left(rows, (o.end_ms,))
        out = []
        for h in rows[lo:hi]:
            if o.metric not in h[5] or h[4] > at_ms:
                continue
            if (o.window, h[3], o.metric, h[0], h[1], h[2]) in self.late:
                continue
            out.append(h)
        return out


def measure(
    run: Run,
    gateway: Mapping[str, Any],
    *,
    prefix: str | None = None,
    tick_ms: int = TICK_MS,
    on_tick: Callable[[Pipeline, int], None] | None = None,
) -> Measurement:
    """Feed ``run`` through a pipeline configured by ``gateway`` (a gateway TOML's tables) in gateway time."""
    config = gateway_config(gateway, prefix or run.scenario.prefix)
    specs = config.engine.windows
    if not specs and not config.patterns and not config.anomaly.enabled:
        raise SpecError("the gateway configuration has no windows, patterns or anomaly detection: nothing to measure")
    pipe = Pipeline(config)
    tr = _Tracker(specs)
    m = Measurement()
    m.kinds = {s.name: _describe(s) for s in specs}
    for s in specs:
        m.windows[s.name] = WindowCounts()
    next_state = 0

    def take(outputs: Sequence[object], at_ms: int) -> None:
        for o in outputs:
            if isinstance(o, WindowResult):
                if o.count == 0:  # a superseded session: no value
                    continue
                held = tr.members(o, at_ms)
                if len(held) != o.count:
                    m.mismatches += 1
                for h in held:
                    tr.used[o.window].add((h[3], h[1], h[2]))
                main = tr.main[o.window]
                value = float(o.count) if main == "count" else o.aggregates.get(main)
                m.results.append(
                    ResultRecord(
                        at_ms, o.window, o.key, o.start_ms, o.end_ms, o.metric, _kind(o), o.revision, o.count,
                        None if value is None else float(value),
                        at_ms - max((h[0] for h in held), default=at_ms),
                        at_ms - max((h[4] for h in held), default=at_ms),
                        len(held),
                    )
                )  # fmt: skip

    arrived: dict[tuple[str, int, int], int] = {}  # reading id -> when the gateway accepted it

    def take_alerts(alerts: Sequence[Alert], at_ms: int) -> None:
        for a in alerts:
            path = str(getattr(a, "path", "")) or "event_time"  # a rule with one path: today's, in event time
            got = [arrived[k] for k in a.readings if k in arrived]
            m.alerts.append(
                AlertRecord(
                    at_ms, a.source, a.name, a.key, path, str(getattr(a, "verdict", "")), a.id,
                    str(getattr(a, "refers", "")), at_ms - a.last_ms, at_ms - max(got, default=at_ms),
                )
            )  # fmt: skip

    def size_state(now: int) -> None:
        nonlocal next_state
        if now >= next_state:
            size = len(json.dumps(pipe.engine.snapshot(), separators=(",", ":")))
            m.state_max_bytes = max(m.state_max_bytes, size)
            next_state = now + STATE_EVERY_MS

    next_tick = run.deliveries[0].arrival_ms + tick_ms if run.deliveries else 0
    for d in run.deliveries:
        while next_tick <= d.arrival_ms:
            if on_tick is not None:
                on_tick(pipe, next_tick)
            ticked = pipe.tick(next_tick)
            take(ticked.outputs, next_tick)
            take_alerts(ticked.alerts, next_tick)
            size_state(next_tick)
            next_tick += tick_ms
        out = pipe.handle(d.topic, d.payload, d.arrival_ms)
        refused = set()
        for o in out.outputs:
            if isinstance(o, LateReading):
                if o.window:
                    tr.late.add((o.window, o.device, o.metric, o.t_ms, o.boot, o.seq))
                else:
                    refused.add((o.device, o.boot, o.seq))
        for r in out.readings:
            arrived.setdefault((r.device, r.boot, r.seq), d.arrival_ms)
            if (r.device, r.boot, r.seq) not in refused:
                tr.add(r.site, r.device, r.t_ms, r.boot, r.seq, d.arrival_ms, _numeric(r.metrics))
        take(out.outputs, d.arrival_ms)
        take_alerts(out.alerts, d.arrival_ms)
        m.end_ms = d.arrival_ms
    m.state_end_bytes = len(json.dumps(pipe.engine.snapshot(), separators=(",", ":")))
    m.state_max_bytes = max(m.state_max_bytes, m.state_end_bytes)
    _account(m, tr)
    return m


def _account(m: Measurement, tr: _Tracker) -> None:
    """Readings' fate per window, and the truth of every window instance."""
    emitted = {r.instance for r in m.results}
    for (window, key), rows in tr.held.items():
        spec = tr.specs[window]
        c = m.windows[window]
        main = tr.main[window]
        for t, boot, seq, dev, _arrival, values in rows:
            if not any(mt in values for mt in spec.metrics):
                continue
            c.readings += 1
            if (dev, boot, seq) in tr.used[window]:
                c.in_result += 1
            elif any((window, dev, mt, t, boot, seq) in tr.late for mt in spec.metrics if mt in values):
                c.late += 1
            else:
                c.pending += 1
        if spec.kind == "session":
            continue  # a session's extent depends on what arrived in time: no truth independent of the setting
        by_inst: dict[tuple[str, str, int, str], list[tuple[int, int, int, float, str]]] = defaultdict(list)
        for t, boot, seq, dev, _arrival, values in rows:
            last = t - (t - spec.offset_ms) % spec.slide_ms
            for metric, v in values.items():
                if metric not in spec.metrics:
                    continue
                start = last
                while start > t - spec.size_ms:
                    by_inst[(window, key, start, metric)].append((t, boot, seq, v, dev))
                    start -= spec.slide_ms
        for inst, vals in by_inst.items():
            m.truth[inst] = (float(len(vals)) if main == "count" else _agg(main, vals), len(vals))
            c.instances += 1
            if inst not in emitted and any((window, dev, inst[3], t, b, q) in tr.late for t, b, q, _v, dev in vals):
                c.missed += 1


def _describe(s: WindowSpec) -> str:
    def span(ms: int) -> str:
        for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000)):
            if ms >= size and ms % size == 0:
                return f"{ms // size}{unit}"
        return f"{ms}ms"

    if s.kind == "session":
        return f"session, gap {span(s.gap_ms)}"
    if s.kind == "sliding":
        return f"sliding {span(s.size_ms)} every {span(s.slide_ms)}"
    return f"tumbling {span(s.size_ms)}"


# --- settings and the sweep --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Setting:
    """Settings applied to every window of a configuration; None leaves the configured value."""

    bound_ms: int | None = None
    """The watermark's out-of-orderness bound (each window's ``out_of_orderness``, and the engine's default,
    which the patterns' event-time path uses)."""
    lateness_ms: int | None = None
    """``allowed_lateness``."""
    trigger_ms: int | None = None
    """The early trigger's interval of gateway time (``early_every``); 0: no early results."""

    def apply(self, gateway: Mapping[str, Any]) -> dict[str, Any]:
        doc = dict(gateway)
        windows = []
        for w in doc.get("windows", []):
            w = dict(w)
            if self.bound_ms is not None:
                w["out_of_orderness"] = self.bound_ms
            if self.lateness_ms is not None:
                w["allowed_lateness"] = self.lateness_ms
            if self.trigger_ms is not None:
                if self.trigger_ms > 0:
                    w["early_every"] = self.trigger_ms
                else:
                    w.pop("early_every", None)
            windows.append(w)
        doc["windows"] = windows
        if self.bound_ms is not None:  # the patterns' watermark: the engine's default bound
            engine = dict(doc.get("engine", {}))
            engine["watermark"] = {**engine.get("watermark", {}), "out_of_orderness": self.bound_ms}
            doc["engine"] = engine
        return doc

    def label(self) -> str:
        def span(ms: int | None) -> str:
            if ms is None:
                return "as set"
            if ms == 0:
                return "0"
            for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000)):
                if ms % size == 0:
                    return f"{ms // size}{unit}"
            return f"{ms}ms"

        trig = "off" if self.trigger_ms == 0 else span(self.trigger_ms)
        return f"bound {span(self.bound_ms)}, lateness {span(self.lateness_ms)}, trigger {trig}"


@dataclass(frozen=True, slots=True)
class SweepRow:
    """One setting's costs: the numbers of the trade-off table."""

    setting: Setting
    final_event_p50: float | None
    final_event_p95: float | None
    final_arrival_p50: float | None
    first_event_p50: float | None
    """Median, over windows, of the latency of their first result of any kind (since its newest reading)."""
    provisional: ErrorStats
    final_error: ErrorStats
    last_error: ErrorStats
    late_share: float
    late: int
    readings: int
    missed: int
    state_max_bytes: int
    results: int
    """Window instances with a result."""
    alerts: tuple[int, int, int, int] = (0, 0, 0, 0)
    """Over every rule: fast alerts, event-time alerts, the fast path's false ones and its missed ones."""

    def as_dict(self) -> dict[str, object]:
        s = self.setting
        return {
            "bound_ms": s.bound_ms, "lateness_ms": s.lateness_ms, "trigger_ms": s.trigger_ms,
            "final_event_p50_ms": self.final_event_p50, "final_event_p95_ms": self.final_event_p95,
            "final_arrival_p50_ms": self.final_arrival_p50, "first_event_p50_ms": self.first_event_p50,
            "provisional_error": self.provisional.as_dict(), "final_error": self.final_error.as_dict(),
            "last_error": self.last_error.as_dict(), "late_share": self.late_share, "late": self.late,
            "readings": self.readings, "missed_windows": self.missed, "state_max_bytes": self.state_max_bytes,
            "results": self.results,
            "alerts": dict(zip(("fast", "exact", "false", "missed"), self.alerts, strict=True)),
        }  # fmt: skip


def row_of(setting: Setting, m: Measurement, window: str | None = None) -> SweepRow:
    """One setting's costs, over every window or one (the state is the whole engine's either way)."""
    fin_ev = m.latencies("final", window=window)
    first: dict[tuple[str, str, int, str], ResultRecord] = {}
    for r in m.results:
        if window is None or r.window == window:
            first.setdefault(r.instance, r)
    rules = m.rules()
    counts = [c for w, c in m.windows.items() if window is None or w == window]
    readings = sum(c.readings for c in counts)
    late = sum(c.late for c in counts)
    return SweepRow(
        setting,
        _pct(fin_ev, 0.5),
        _pct(fin_ev, 0.95),
        _pct(m.latencies("final", "arrival", window), 0.5),
        _pct([r.since_event_ms for r in first.values()], 0.5),
        m.provisional_error(window),
        m.truth_error("final", window),
        m.truth_error("last", window),
        late / readings if readings else 0.0,
        late,
        readings,
        sum(c.missed for c in counts),
        m.state_max_bytes,
        len(first),
        (
            sum(r.fast for r in rules.values()),
            sum(r.exact for r in rules.values()),
            sum(r.false for r in rules.values()),
            sum(r.missed for r in rules.values()),
        ),
    )


def sweep(
    run: Run,
    gateway: Mapping[str, Any],
    settings: Iterable[Setting],
    *,
    progress: Callable[[int, int], None] | None = None,
) -> list[SweepRow]:
    """:func:`measure` for each setting (applied to every window of ``gateway``), in order."""
    todo = list(settings)
    rows = []
    for i, s in enumerate(todo):
        rows.append(row_of(s, measure(run, s.apply(gateway))))
        if progress is not None:
            progress(i + 1, len(todo))
    return rows


def grid(
    bounds: Sequence[int | None], latenesses: Sequence[int | None], triggers: Sequence[int | None]
) -> list[Setting]:
    """Every combination, bound slowest."""
    return [Setting(b, la, tg) for b in bounds for la in latenesses for tg in triggers]


def _ms(v: float | None) -> str:
    if v is None:
        return "-"
    if abs(v) >= 60_000:
        return f"{v / 60_000:.1f} min"
    return f"{v / 1000:.1f} s"


def _err(e: ErrorStats) -> str:
    """``mean relative error, readings missing on average``."""
    if e.n == 0:
        return "-"
    rel = "-" if e.mre is None else f"{100 * e.mre:.2f} %"
    cnt = "-" if e.count_error is None else f"{e.count_error:.2f}"
    return f"{rel}, {cnt} missing"


def _off(e: ErrorStats) -> str:
    """``windows off/compared (mean relative error, readings missing)``."""
    if e.n == 0:
        return "-"
    return f"{e.n - e.exact}/{e.n} ({_err(e)})"


def render_table(rows: Sequence[SweepRow]) -> str:
    """The trade-off table as text: a row per setting."""
    head: tuple[str, ...] = ("setting", "final p50/p95", "from arrival", "first value", "provisional err",
                             "finals off (err)", "after updates off (err)", "late share", "state max")  # fmt: skip
    body: list[tuple[str, ...]] = []
    for r in rows:
        body.append((
            r.setting.label(), f"{_ms(r.final_event_p50)} / {_ms(r.final_event_p95)}", _ms(r.final_arrival_p50),
            _ms(r.first_event_p50), _err(r.provisional),
            _off(r.final_error) + (f" +{r.missed} none" if r.missed else ""), _off(r.last_error),
            f"{100 * r.late_share:.2f} % ({r.late}/{r.readings})", f"{r.state_max_bytes / 1024:.1f} KiB",
        ))  # fmt: skip
    if any(r.alerts[0] for r in rows):  # a rule with a fast path
        head = (*head, "fast alerts: false / missed")
        body = [
            (*b, f"{r.alerts[0]}: {r.alerts[2]} / {r.alerts[3]} of {r.alerts[1]}")
            for b, r in zip(body, rows, strict=True)
        ]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths, strict=True)) for b in body]
    return "\n".join(lines)


def eventful_instance(results: Sequence[Sequence[Any]]) -> tuple[str, str, int, str] | None:
    """Of results as :meth:`ResultRecord.to_json` gives them: the window instance with the most kinds of result,
    then the most results, then the earliest."""
    seen: dict[tuple[str, str, int, str], list[Sequence[Any]]] = defaultdict(list)
    for r in results:
        seen[(r[1], r[2], r[3], r[5])].append(r)
    if not seen:
        return None
    return min(seen, key=lambda k: (-len({r[6] for r in seen[k]}), -len(seen[k]), k[2], k))


def latency_doc(
    run: Run,
    gateway: Mapping[str, Any],
    settings: Sequence[Setting] = (),
    *,
    prefix: str | None = None,
    window: str | None = None,
) -> dict[str, Any]:
    """The measurement of ``gateway`` as configured, and of each setting of ``settings`` (the trade-off table, per
    window), as JSON values: what a truth file keeps under ``latency`` and ``edgekit-sim report`` draws. The
    window instance whose values are drawn over time is ``window``'s most eventful (default: any window's but a
    session's)."""
    m = measure(run, gateway, prefix=prefix)
    doc = m.as_dict()
    spec = gateway_config(gateway, prefix or run.scenario.prefix).engine.windows
    sessions = {s.name for s in spec if s.kind == "session"}  # no truth to draw beside a session's values
    rows: list[dict[str, Any]] = []
    runs: list[tuple[str, Measurement]] = [("as configured", m)]
    for setting in settings:
        mt = measure(run, setting.apply(gateway), prefix=prefix)
        runs.append((setting.label(), mt))
        rows += [{**row_of(setting, mt, w.name).as_dict(), "label": setting.label(), "window": w.name} for w in spec]
    # the window drawn over time: the most eventful one of the run (as configured, or at a trigger) that has
    # the most kinds of result
    history: dict[str, Any] = {}
    best: tuple[int, int] = (0, 0)
    for label, mm in runs:
        recs = [r.to_json() for r in mm.results]
        mine = [r for r in recs if (r[1] == window if window else r[1] not in sessions)] or recs
        pick = eventful_instance(mine)
        if pick is None:
            continue
        held = [r for r in mine if (r[1], r[2], r[3], r[5]) == pick]
        score = (len({r[6] for r in held}), len(held))
        if score > best:
            best = score
            truth = mm.truth.get(pick)
            history = {"setting": label, "instance": list(pick), "results": held,
                       "truth": None if truth is None else list(truth)}  # fmt: skip
    return {
        "setting": "as configured",
        "measurement": doc,
        "aggregates": {s.name: main_aggregate(s) for s in spec},
        "history": history,
        "sweep": rows,
    }
