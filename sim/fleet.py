"""A simulated fleet's MQTT traffic as pure data, with the ground truth of what the gateway must make of it.

``generate(spec)`` is deterministic for a given :class:`FleetSpec` (its ``seed``) and start time: it
returns a :class:`Plan`, the ordered messages to publish (retained statuses, batches of readings,
re-sent duplicates, malformed messages) and the expected outcome: every valid reading, every reading
the gateway must dead-letter alone, and every message it must reject whole, each with its reason code
from ``docs/protocol.md``. Injected sensor anomalies and scripted event sequences (:mod:`sim.faults`, as
in the scenarios) are placed in the readings and kept in the plan as ground truth for the gateway's
anomaly and pattern alerts. Nothing here does I/O; the only clock is the injected ``now_ms``, read once
when ``spec.start_ms`` is not given.

The pieces live in small modules: :mod:`sim.wire` (encoding, :class:`Outgoing`), :mod:`sim.devices`
(boards and sensors), :mod:`sim.malformed` (contract breakers); the names are re-exported here.
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Final

from .devices import METRIC_GENERATORS, Device, MetricGenerator, make_devices
from .errors import SpecError
from .faults import (
    ANOMALY_KINDS,
    SEQUENCE_KINDS,
    AnomalyState,
    InjectedAnomaly,
    ScriptedSequence,
    apply_anomaly,
    sequence_metric_types,
)
from .malformed import MALFORMED_KINDS, ExpectedMalformed, Malformer
from .wire import (
    MAX_BYTES,
    MAX_METRICS,
    MAX_READINGS,
    MIN_TIME_MS,
    NAME_RE,
    UNSET_RTC_MS,
    Kind,
    MetricValue,
    Outgoing,
    WireReading,
    encode_batch,
    encode_status,
)

__all__ = [
    "MALFORMED_KINDS",
    "MAX_BYTES",
    "METRIC_GENERATORS",
    "MIN_TIME_MS",
    "Device",
    "ExpectedMalformed",
    "ExpectedReading",
    "ExpectedReject",
    "FleetSpec",
    "Kind",
    "MetricGenerator",
    "MetricValue",
    "Outgoing",
    "Plan",
    "PlanCounts",
    "WireReading",
    "encode_batch",
    "encode_status",
    "generate",
    "make_devices",
    "wall_clock_ms",
]

FIRMWARE: Final = "sim-0.1.0"


def wall_clock_ms() -> int:
    """The default ``now_ms``: Unix time in integer milliseconds."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class FleetSpec:
    """What to simulate. Validated on construction; a bad value raises :class:`SpecError`."""

    devices: int = 10
    sites: tuple[str, ...] = ("site-a",)
    """Devices are spread over the sites round-robin."""
    readings_per_device: int = 50
    batch_size: int = 10
    interval_ms: int = 60_000
    """Event-time spacing of one device's readings."""
    start_ms: int | None = None
    """Event time of the fleet's start; ``None``: ``now - readings_per_device * interval_ms``, so that
    every reading lies in the past."""
    metrics: tuple[str, ...] = ("temp_c", "rh")
    duplicate_rate: float = 0.0
    """Fraction of batches published a second time (a board that missed the PUBACK)."""
    malformed: int = 0
    """Malformed messages mixed in, cycling through :data:`MALFORMED_KINDS`."""
    nan_readings: int = 0
    """Readings with a NaN metric (rejected alone as ``non_finite``)."""
    old_readings: int = 0
    """Readings stamped by an unset RTC, in the year 2000 (rejected alone as ``time_too_old``)."""
    flush_last: bool = True
    """Mark each device's last batch with ``flushed`` (its last reading's event time)."""
    seed: int = 0
    prefix: str = "edgekit"
    id_prefix: str = "dev"
    """Device ids are ``<id_prefix>-0001``...; ``edgekit-sim run`` uses ``run``, so that its boards are not
    the scenarios' ``dev-0001``... (a gateway binds an id to its first site and keeps its watermark)."""
    anomalies: tuple[InjectedAnomaly, ...] = ()
    """Sensor faults (:mod:`sim.faults`) on devices' metrics; ``start_ms``/``end_ms`` are offsets from the
    fleet's start."""
    sequences: tuple[ScriptedSequence, ...] = ()
    """Scripted event sequences (:mod:`sim.faults`), ``at_ms`` an offset from the fleet's start: extra
    readings of the device carrying only the sequence's metric (``door``, ``status``), numbered in event-time
    order among its others. Events after the fleet's span are left out."""

    def __post_init__(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise SpecError(what)

        need(self.devices >= 1, f"devices must be at least 1, got {self.devices}")
        need(len(self.sites) >= 1, "at least one site is needed")
        for site in self.sites:
            need(bool(NAME_RE.fullmatch(site)), f"site {site!r} is not 1-32 of [A-Za-z0-9_-] starting alnum")
        need(self.readings_per_device >= 1, f"readings_per_device must be at least 1, got {self.readings_per_device}")
        need(
            1 <= self.batch_size <= MAX_READINGS,
            f"batch_size must be 1..{MAX_READINGS}, got {self.batch_size}",
        )
        need(self.interval_ms >= 1, f"interval_ms must be at least 1, got {self.interval_ms}")
        need(
            self.start_ms is None or self.start_ms >= MIN_TIME_MS,
            f"start_ms={self.start_ms} is before 2020-01-01 ({MIN_TIME_MS}); the gateway would reject it",
        )
        need(1 <= len(self.metrics) <= MAX_METRICS, f"1..{MAX_METRICS} metrics needed, got {len(self.metrics)}")
        for name in self.metrics:
            need(name in METRIC_GENERATORS, f"unknown metric {name!r}; known: {', '.join(METRIC_GENERATORS)}")
        need(len(set(self.metrics)) == len(self.metrics), f"metrics repeat a name: {self.metrics}")
        need(
            0.0 <= self.duplicate_rate <= 1.0,
            f"duplicate_rate must be within 0..1, got {self.duplicate_rate}",
        )
        for label in ("malformed", "nan_readings", "old_readings"):
            value = getattr(self, label)
            need(value >= 0, f"{label} must not be negative, got {value}")
        total = self.devices * self.readings_per_device
        need(
            self.nan_readings + self.old_readings <= total,
            f"nan_readings + old_readings = {self.nan_readings + self.old_readings} > {total} readings in all",
        )
        need(
            bool(self.prefix) and not any(c in self.prefix for c in "/+#\0"),
            f"prefix {self.prefix!r} must be one non-empty topic level without / + #",
        )
        need(
            bool(NAME_RE.fullmatch(f"{self.id_prefix}-0001")) and len(self.id_prefix) <= 27,
            f"id_prefix {self.id_prefix!r} must be 1-27 of [A-Za-z0-9_-] starting alnum",
        )
        first, last = f"{self.id_prefix}-0001", f"{self.id_prefix}-{self.devices:04d}"
        for i, a in enumerate(self.anomalies):
            where = f"anomalies[{i}]"
            need(a.kind in ANOMALY_KINDS, f"{where}.kind: expected one of {', '.join(ANOMALY_KINDS)}, got {a.kind!r}")
            need(
                _is_device(a.device, self.devices, self.id_prefix),
                f"{where}.device: {a.device!r} is not one of {first}..{last}",
            )
            need(a.metric in self.metrics, f"{where}.metric: {a.metric!r} is not one of the fleet's {self.metrics}")
            need(
                0 <= a.start_ms < a.end_ms <= self.span_ms,
                f"{where}: needs 0 <= start < end <= {self.span_ms} ms, got [{a.start_ms}, {a.end_ms})",
            )
        for i, q in enumerate(self.sequences):
            where = f"sequences[{i}]"
            need(q.kind in SEQUENCE_KINDS, f"{where}.kind: expected one of {', '.join(SEQUENCE_KINDS)}, got {q.kind!r}")
            need(
                _is_device(q.device, self.devices, self.id_prefix),
                f"{where}.device: {q.device!r} is not one of {first}..{last}",
            )
            need(0 <= q.at_ms < self.span_ms, f"{where}.at_ms: must be within 0..{self.span_ms}, got {q.at_ms}")
            need(
                not q.partner or _is_device(q.partner, self.devices, self.id_prefix),
                f"{where}.partner: {q.partner!r} is not one of {first}..{last}",
            )

    @property
    def span_ms(self) -> int:
        """Event time covered by one device's readings."""
        return self.readings_per_device * self.interval_ms


def _is_device(name: str, devices: int, id_prefix: str = "dev") -> bool:
    """Whether ``name`` is one of the ids :func:`make_devices` gives ``devices`` boards."""
    head, _, number = name.rpartition("-")
    return head == id_prefix and number.isdigit() and len(number) == 4 and 1 <= int(number) <= devices


@dataclass(frozen=True, slots=True)
class ExpectedReading:
    """A reading the gateway must accept (field names as in ``gateway.model.Reading``)."""

    site: str
    device: str
    boot: int
    seq: int
    t_ms: int
    quality: str
    metrics: Mapping[str, MetricValue]

    def to_json(self) -> dict[str, object]:
        """In the form of the test vectors' ``expect.readings``."""
        return {
            "site": self.site,
            "device": self.device,
            "boot": self.boot,
            "seq": self.seq,
            "t": self.t_ms,
            "q": self.quality,
            "m": dict(self.metrics),
        }


@dataclass(frozen=True, slots=True)
class ExpectedReject:
    """A reading the gateway must dead-letter alone; ``index`` is its position in its message."""

    site: str
    device: str
    boot: int
    seq: int
    t_ms: int
    topic: str
    index: int
    reason: str

    def to_json(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class PlanCounts:
    """How many of each message a plan holds, and what the gateway should make of them.

    ``readings`` are the distinct valid readings, ``duplicate_readings`` those carried again by
    duplicates. ``dead_letters`` counts the records the gateway should write: one per malformed message
    and one per bad reading in each publication of a batch (a duplicated batch brings its bad readings
    twice), while ``rejected_readings`` counts distinct bad readings.
    """

    devices: int
    messages: int
    statuses: int
    batches: int
    duplicates: int
    malformed: int
    readings: int
    duplicate_readings: int
    rejected_readings: int
    dead_letters: int
    dead_letters_by_reason: dict[str, int]


@dataclass(frozen=True, slots=True)
class Plan:
    """The messages in publishing order, and the ground truth of what the gateway must make of them."""

    spec: FleetSpec
    start_ms: int
    devices: tuple[Device, ...]
    messages: tuple[Outgoing, ...]
    readings: tuple[ExpectedReading, ...]
    rejected: tuple[ExpectedReject, ...]
    """Readings to be dead-lettered alone, once each (a duplicated batch brings them twice)."""
    malformed: tuple[ExpectedMalformed, ...]
    flushed: Mapping[str, int] = field(default_factory=dict)
    """Per device, the ``flushed`` marker of its last batch."""
    anomalies: tuple[tuple[InjectedAnomaly, tuple[int, ...]], ...] = ()
    """Each injected anomaly in event time, with the event times of the readings it changed."""
    sequences: tuple[ScriptedSequence, ...] = ()
    """The scripted sequences, ``at_ms`` in event time."""

    def metric_types(self) -> dict[str, list[str]]:
        """The ``[metric_types]`` table the gateway needs for this plan (its scripted sequences' string
        metrics); every other metric the fleet sends is a float."""
        return sequence_metric_types(self.sequences)

    def counts(self) -> PlanCounts:
        """Message and reading counts, and the dead-letter records the gateway should write."""
        kinds = Counter(m.kind for m in self.messages)
        by_reason: Counter[str] = Counter(m.reason for m in self.malformed)
        # every publication of a batch is decoded, so a duplicated batch dead-letters its bad readings again
        by_reason.update(reason for m in self.messages for reason in m.rejects)
        return PlanCounts(
            devices=len(self.devices),
            messages=len(self.messages),
            statuses=kinds["status"],
            batches=kinds["batch"],
            duplicates=kinds["duplicate"],
            malformed=kinds["malformed"],
            readings=len(self.readings),
            duplicate_readings=sum(m.readings for m in self.messages if m.kind == "duplicate"),
            rejected_readings=len(self.rejected),
            dead_letters=sum(by_reason.values()),
            dead_letters_by_reason=dict(sorted(by_reason.items())),
        )

    def truth(self) -> dict[str, object]:
        """The ground truth as JSON-ready data."""
        spec = asdict(self.spec)
        spec["sites"] = list(self.spec.sites)
        spec["metrics"] = list(self.spec.metrics)
        return {
            "contract": 1,
            "spec": spec,
            "start_ms": self.start_ms,
            "counts": asdict(self.counts()),
            "readings": [r.to_json() for r in self.readings],
            "rejected": [r.to_json() for r in self.rejected],
            "malformed": [m.to_json() for m in self.malformed],
            "flushed": dict(self.flushed),
            "anomalies": [{**a.to_json(), "labelled": list(labelled)} for a, labelled in self.anomalies],
            "sequences": [q.to_json() for q in self.sequences],
        }


@dataclass(slots=True)
class _Draft:
    """A message before ordering, with the truth that goes with it."""

    at_ms: int
    rank: int  # statuses first, duplicates after the original at the same instant
    out: Outgoing
    readings: list[ExpectedReading] = field(default_factory=list)
    rejected: list[ExpectedReject] = field(default_factory=list)
    malformed: ExpectedMalformed | None = None


def _topic(spec: FleetSpec, dev: Device, kind: str = "readings") -> str:
    return f"{spec.prefix}/{dev.site}/{dev.device}/{kind}"


def _status_draft(spec: FleetSpec, dev: Device, start_ms: int) -> _Draft:
    fields: dict[str, MetricValue] = {
        "boot": dev.boot,
        "t": start_ms + dev.phase_ms,
        "clock": "s",
        "sleep_s": max(1, spec.interval_ms // 1000),
        "battery_mv": dev.battery_mv,
        "buf": 0,
        "buf_cap": 256,
        "dropped": 0,
        "fw": FIRMWARE,
    }
    payload = encode_status(dev.device, "online", fields)
    out = Outgoing(_topic(spec, dev, "status"), payload, "status", device=dev.device, at_ms=start_ms)
    return _Draft(start_ms, 0, out)


def _device_batches(
    spec: FleetSpec,
    dev: Device,
    start_ms: int,
    values: random.Random,
    dups: random.Random,
    nan_slots: set[int],
    old_slots: set[int],
    faults: _Faults,
) -> Iterator[_Draft]:
    """One device's batches, oldest first, each followed by its duplicate when it gets one."""
    n = spec.readings_per_device
    topic = _topic(spec, dev)
    # (event time, regular reading's index or -1, a scripted reading's metrics): in event-time order, a
    # scripted reading after a regular one of the same instant
    samples: list[tuple[int, int, dict[str, MetricValue]]] = [
        (start_ms + dev.phase_ms + i * spec.interval_ms, i, {}) for i in range(n)
    ]
    for q in faults.sequences.get(dev.device, ()):
        for e in q.events_of(dev.device):
            if q.at_ms + e.offset_ms < start_ms + spec.span_ms:
                samples.append((q.at_ms + e.offset_ms, -1, {e.metric: e.value}))
    samples.sort(key=lambda x: (x[0], x[1] < 0))
    taken: list[tuple[WireReading, ExpectedReading | None, str | None, int]] = []  # + the sampling time
    seq = dev.first_seq
    for at, i, scripted in samples:
        t = at
        reason: str | None = None
        quality = "s"
        if i < 0:
            metrics = dict(scripted)
        else:
            slot = dev.index * n + i
            metrics = {}
            for name in spec.metrics:
                value: float | None = METRIC_GENERATORS[name](values, dev, t)
                for a, state in faults.anomalies.get(dev.device, ()):
                    if value is not None and a.covers(dev.device, name, t):
                        value = apply_anomaly(a, state, value, t, faults.rng)
                if value is not None:
                    metrics[name] = round(value, 2)
            if not metrics:
                continue  # every metric dropped out: the board records nothing
            if slot in nan_slots:
                metrics[spec.metrics[slot % len(spec.metrics)]] = math.nan
                reason = "non_finite"
            elif slot in old_slots:
                t = UNSET_RTC_MS + i * spec.interval_ms
                quality = "u"
                reason = "time_too_old"
        good = ExpectedReading(dev.site, dev.device, dev.boot, seq, t, quality, metrics) if reason is None else None
        taken.append((WireReading(dev.boot, seq, t, quality, metrics), good, reason, at))
        seq += 1
    for first in range(0, len(taken), spec.batch_size):
        chunk = taken[first : first + spec.batch_size]
        wire = [w for w, _, _, _ in chunk]
        good_readings = [g for _, g, _, _ in chunk if g is not None]
        bad = [
            ExpectedReject(dev.site, dev.device, w.b, w.s, w.t, topic, k, reason)
            for k, (w, _, reason, _) in enumerate(chunk)
            if reason is not None
        ]
        last_t = chunk[-1][3]
        is_last = first + spec.batch_size >= len(taken)
        payload = encode_batch(dev.device, wire, last_t if is_last and spec.flush_last else None)
        if len(payload) > MAX_BYTES:
            raise SpecError(
                f"a batch of {len(wire)} readings with {len(spec.metrics)} metrics encodes to {len(payload)} "
                f"bytes > {MAX_BYTES}; lower batch_size"
            )
        rejects = tuple(r.reason for r in bad)
        out = Outgoing(topic, payload, "batch", None, dev.device, last_t, len(good_readings), rejects)
        yield _Draft(last_t, 1, out, good_readings, bad)
        if spec.duplicate_rate > 0 and dups.random() < spec.duplicate_rate:
            # the board re-sends after its PUBACK timeout: a little later, possibly after newer traffic
            again = last_t + dups.randrange(1, spec.interval_ms * spec.batch_size + 1)
            dup = Outgoing(topic, payload, "duplicate", None, dev.device, again, len(good_readings), rejects)
            yield _Draft(again, 2, dup)


@dataclass(slots=True)
class _Faults:
    """The injections in event time, by device, with their running state."""

    anomalies: dict[str, list[tuple[InjectedAnomaly, AnomalyState]]]
    sequences: dict[str, list[ScriptedSequence]]
    rng: random.Random


def generate(spec: FleetSpec, now_ms: Callable[[], int] = wall_clock_ms) -> Plan:
    """The fleet's traffic and its ground truth. Deterministic for a given spec and start time.

    Independent random streams (values, duplicates, defects, malformed messages) are derived from
    ``spec.seed``, so that asking for duplicates does not change the readings' values.
    """
    start_ms = spec.start_ms if spec.start_ms is not None else now_ms() - spec.span_ms
    if start_ms < MIN_TIME_MS:
        raise SpecError(f"the fleet would start at {start_ms}, before 2020-01-01; shorten the span or the interval")

    def stream(name: str) -> random.Random:
        return random.Random(f"edgekit-sim:{spec.seed}:{name}")

    devices = make_devices(spec.devices, spec.sites, spec.interval_ms, stream("devices"), spec.id_prefix)
    values, dups, defects = stream("values"), stream("duplicates"), stream("defects")
    total = spec.devices * spec.readings_per_device
    chosen = defects.sample(range(total), spec.nan_readings + spec.old_readings)
    nan_slots, old_slots = set(chosen[: spec.nan_readings]), set(chosen[spec.nan_readings :])

    faults = _Faults({}, {}, stream("anomalies"))
    injected = [(a.absolute(start_ms), AnomalyState()) for a in spec.anomalies]
    for a, state in injected:
        faults.anomalies.setdefault(a.device, []).append((a, state))
    sequences = [replace(q, at_ms=start_ms + q.at_ms) for q in spec.sequences]
    for q in sequences:
        for d in dict.fromkeys(x for x in (q.device, q.partner) if x):
            faults.sequences.setdefault(d, []).append(q)

    drafts: list[_Draft] = [_status_draft(spec, dev, start_ms) for dev in devices]
    flushed: dict[str, int] = {}
    for dev in devices:
        for draft in _device_batches(spec, dev, start_ms, values, dups, nan_slots, old_slots, faults):
            drafts.append(draft)
            if spec.flush_last and draft.out.kind == "batch":
                flushed[dev.device] = draft.at_ms
    bad = stream("malformed")
    malformer = Malformer(spec.prefix, devices, spec.metrics[0], spec.readings_per_device, bad)
    for number in range(spec.malformed):
        at = start_ms + bad.randrange(spec.span_ms)
        out, expected = malformer.build(number, at)
        drafts.append(_Draft(at, 1, out, malformed=expected))

    order = sorted(range(len(drafts)), key=lambda k: (drafts[k].at_ms, drafts[k].rank, k))
    ordered = [drafts[k] for k in order]
    return Plan(
        spec=spec,
        start_ms=start_ms,
        devices=tuple(devices),
        messages=tuple(d.out for d in ordered),
        readings=tuple(r for d in ordered for r in d.readings),
        rejected=tuple(r for d in ordered for r in d.rejected),
        malformed=tuple(d.malformed for d in ordered if d.malformed is not None),
        flushed=flushed,
        anomalies=tuple((a, tuple(state.labelled)) for a, state in injected),
        sequences=tuple(sequences),
    )
