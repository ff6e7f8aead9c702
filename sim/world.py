"""The fleet model in virtual time: boards with sleep cycles, buffers and imperfect clocks, a network that
delays, reorders, loses and duplicates, and the ground truth of everything that happened.

``simulate(scenario)`` is pure and deterministic for a scenario (its seed and start): it returns a
:class:`Run`, the deliveries the gateway receives in arrival order (each at a virtual ``arrival_ms``), and
per reading what the board stamped and what the network did to it.

Boards
    Each board samples every ``interval`` (``factor`` times faster during a storm), stamps the reading
    with its own clock and appends it to its buffer; every ``publish_every`` samples it connects and
    sends the buffer in batches at QoS 1, one at a time, each re-sent until acknowledged (the firmware's
    client waits for the PUBACK). A sleepy board ends each connection's last batch with a ``flushed`` marker
    and announces ``sleep_s`` in its status. During an outage of its site the connection fails and the
    buffer grows: a burst follows. At the end of the run every board flushes what it still holds.
Clocks
    After a sync the board's clock is off by its skew plus its drift (ppm) since the last sync; every
    connection syncs. Before the first sync (``unsynced_for``) readings are marked ``u`` and stamped
    with an unsynced clock (``unsynced_offset`` off, or 2000-01-01 + uptime when ``rtc_unset``); the
    ones still in the buffer at the sync are re-timed and marked ``c``; ``u`` readings already sent
    stay as they were (the gateway removes re-sent identities as duplicates, so a correction could not
    replace them). ``future_readings`` are stamped a day ahead by a glitching RTC.
Network
    Each attempt takes a delay drawn from the distribution; it may be lost (``loss``) or its PUBACK
    lost (``ack_loss``: the gateway gets it twice), it may be held back (``reorder``), the broker may
    deliver it twice (``duplicate``), and nothing gets through an outage.
"""

from __future__ import annotations

import bisect
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Final

from .devices import METRIC_GENERATORS, Device
from .errors import SpecError
from .faults import AnomalyState, Correlation, InjectedAnomaly, ScriptedSequence, apply_anomaly
from .scenario import DelaySpec, GroupSpec, Scenario
from .wire import MIN_TIME_MS, UNSET_RTC_MS, MetricValue, WireReading, encode_batch, encode_status

__all__ = [
    "FUTURE_GLITCH_MS",
    "MAX_FUTURE_MS",
    "BoardInfo",
    "Delivery",
    "Run",
    "SentReading",
    "simulate",
]

FUTURE_GLITCH_MS: Final = 86_400_000
"""How far ahead a glitching RTC stamps a reading (far beyond the gateway's tolerance)."""
MAX_FUTURE_MS: Final = 300_000
"""The gateway's default tolerance for event times ahead of its clock (docs/protocol.md)."""
MAX_PAYLOAD: Final = 4096
"""Batches are kept at or under what the firmware sends."""
MAX_ATTEMPTS: Final = 8
"""A board keeps unacknowledged readings and tries again; the model lets the 8th attempt through, so
every reading is eventually delivered (a firmware buffer overflow is not modelled here)."""
TAIL_MS: Final = 15 * 60_000
"""Default start: the run's event time ends this long before now, so that late deliveries are still in
the past when they are replayed in real time."""


@dataclass(frozen=True, slots=True)
class BoardInfo:
    device: str
    site: str
    group: str
    boot: int
    drift_ppm: float
    skew_ms: int
    sleep_s: int | None


@dataclass(slots=True)
class SentReading:
    """One reading a board took, what it stamped, and what became of it on the way."""

    site: str
    device: str
    boot: int
    seq: int
    true_ms: int
    t_ms: int
    quality: str
    metrics: dict[str, MetricValue]
    sent_ms: int = -1
    """When the message carrying it was first attempted (-1: never sent)."""
    arrival_ms: int = -1
    """When the gateway first received it."""
    deliveries: int = 0
    """How many times the gateway received it (duplicates and re-sends included)."""
    attempts: int = 0
    reason: str | None = None
    """The dead-letter reason the gateway must give it (``time_in_future``, ``time_too_old``), or None."""

    def to_json(self) -> list[object]:
        return [
            self.site, self.device, self.boot, self.seq, self.true_ms, self.t_ms, self.quality, self.metrics,
            self.sent_ms, self.arrival_ms, self.deliveries, self.attempts, self.reason,
        ]  # fmt: skip


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message as the gateway receives it, at virtual time ``arrival_ms``.

    ``kind``: ``status``, ``batch`` (the first delivery of a message), ``resent`` (the board re-sent it
    because the PUBACK was lost), ``duplicate`` (the broker delivered it again). ``readings`` indexes
    :attr:`Run.readings`.
    """

    arrival_ms: int
    order: int
    topic: str
    payload: bytes
    kind: str
    device: str
    sent_ms: int
    attempt: int
    readings: tuple[int, ...] = ()
    flushed: int | None = None

    @property
    def retain(self) -> bool:
        return self.kind == "status"


@dataclass(slots=True)
class Run:
    """A simulated run: what the gateway receives, in arrival order, and the ground truth of it."""

    scenario: Scenario
    start_ms: int
    end_ms: int
    boards: list[BoardInfo]
    readings: list[SentReading]
    deliveries: list[Delivery]
    anomalies: list[tuple[InjectedAnomaly, list[int]]]
    """Each injected anomaly (event times) with the event times of the readings it changed."""
    sequences: list[ScriptedSequence]
    """The scripted sequences, ``at_ms`` as event time."""
    correlations: list[Correlation] = field(default_factory=list)
    """The correlated events (``[[correlations]]``), ``at_ms`` as event time."""
    network: dict[str, int] = field(default_factory=dict)
    """What the network did: attempts lost, acks lost, broker duplicates, held back, outage failures."""
    elapsed_s: float = 0.0

    def counts(self) -> dict[str, int]:
        kinds: dict[str, int] = {}
        for d in self.deliveries:
            kinds[d.kind] = kinds.get(d.kind, 0) + 1
        return {
            "devices": len(self.boards),
            "readings": len(self.readings),
            "deliveries": len(self.deliveries),
            **{f"deliveries_{k}": v for k, v in sorted(kinds.items())},
            **self.network,
        }


# --- helpers -------------------------------------------------------------------------------------------


def _delay(spec: DelaySpec, rng: random.Random) -> int:
    if spec.dist == "fixed":
        return spec.value_ms
    if spec.dist == "uniform":
        return rng.randint(spec.low_ms, spec.high_ms)
    if spec.dist == "exponential":
        return int(rng.expovariate(1.0 / spec.mean_ms)) if spec.mean_ms > 0 else 0
    return int(spec.median_ms * math.exp(rng.gauss(0.0, spec.sigma)))


def _sample_times(start: int, end: int, interval: int, storms: list[tuple[int, int, int]]) -> list[int]:
    """Sampling instants on ``[start, end)``: every ``interval``, ``factor`` times as often in a storm."""
    out: list[int] = []
    t = start
    while t < end:
        out.append(t)
        step = interval
        for s0, s1, factor in storms:
            if s0 <= t < s1:
                step = max(1, interval // factor)
        nxt = t + step
        for s0, _s1, factor in storms:
            if t < s0 < nxt:  # a storm starts before the next sample: it starts sampling fast at once
                nxt = s0 + (t - s0) % max(1, interval // factor)
        t = nxt
    return out


class _Board:
    """One board's state while the run is generated."""

    def __init__(self, info: BoardInfo, dev: Device, group: GroupSpec, sync_at: int, unset_base: int) -> None:
        self.info = info
        self.dev = dev
        self.group = group
        self.sync_at = sync_at
        self.synced = sync_at <= 0
        self.last_sync = 0
        self.unset_base = unset_base
        self.buffer: list[int] = []  # indexes into the run's readings
        self.seq = dev.first_seq


@dataclass(slots=True)
class _Net:
    spec: Scenario
    rng: random.Random
    outages: list[tuple[int, int, tuple[str, ...]]]
    stats: dict[str, int]

    def down(self, site: str, at: int) -> bool:
        return any(a <= at < b and (not sites or site in sites) for a, b, sites in self.outages)

    def outage_end(self, site: str, at: int) -> int:
        for a, b, sites in self.outages:
            if a <= at < b and (not sites or site in sites):
                return b
        return at


def simulate(scenario: Scenario, now_ms: Callable[[], int] | None = None) -> Run:
    """Run the scenario's fleet in virtual time. Deterministic for a scenario with ``start_ms`` set;
    otherwise the run is placed to end :data:`TAIL_MS` before ``now_ms()`` (default: the wall clock)."""
    started = time.perf_counter()
    if scenario.start_ms is not None:
        start = scenario.start_ms
    else:
        now = now_ms() if now_ms is not None else time.time_ns() // 1_000_000
        start = (now - scenario.duration_ms - TAIL_MS) // 60_000 * 60_000
    if start < MIN_TIME_MS:
        raise SpecError(f"the run would start at {start}, before 2020-01-01")
    end = start + scenario.duration_ms
    for o in scenario.network.outages:
        if o.end_ms > scenario.duration_ms:
            raise SpecError(f"an outage ends at {o.end_ms} ms, after the scenario's {scenario.duration_ms} ms")

    def stream(name: str) -> random.Random:
        return random.Random(f"edgekit-sim:{scenario.seed}:{name}")

    setup = stream("boards")
    storms = [(start + s.start_ms, start + s.start_ms + s.duration_ms, s.factor) for s in scenario.storms]
    anomalies = [a.absolute(start) for a in scenario.anomalies]
    anomaly_states = [AnomalyState() for _ in anomalies]
    by_device: dict[str, list[int]] = {}
    for i, a in enumerate(anomalies):
        by_device.setdefault(a.device, []).append(i)
    sequences = [replace(s, at_ms=start + s.at_ms) for s in scenario.sequences]
    correlations = [replace(c, at_ms=start + c.at_ms) for c in scenario.correlations]
    extra: dict[str, list[tuple[int, dict[str, MetricValue]]]] = {}
    for c in correlations:
        for device, t, metrics in c.events():
            extra.setdefault(device, []).append((t, dict(metrics)))
    net = _Net(
        scenario,
        stream("network"),
        [(start + o.start_ms, start + o.end_ms, o.sites) for o in scenario.network.outages],
        {"attempts": 0, "lost": 0, "ack_lost": 0, "broker_duplicates": 0, "held_back": 0, "outage_failures": 0},
    )

    readings: list[SentReading] = []
    deliveries: list[Delivery] = []
    boards: list[BoardInfo] = []
    index = 0
    for group in scenario.groups:
        future_left = group.future_readings
        for k in range(group.devices):
            name = f"dev-{index + 1:04d}"
            site = group.sites[k % len(group.sites)]
            dev = Device(
                index=index,
                site=site,
                device=name,
                boot=setup.randint(1, 40),
                first_seq=setup.randrange(0, 5000),
                phase_ms=setup.randrange(group.interval_ms),
                temp_base=setup.uniform(17.0, 25.0),
                rh_base=setup.uniform(35.0, 55.0),
                battery_mv=setup.randint(3600, 4150),
            )
            drift = setup.uniform(*group.drift_ppm)
            skew = setup.randint(*group.skew_ms)
            sleep_s = group.publish_every * group.interval_ms // 1000 if group.sleep else None
            info = BoardInfo(name, site, group.name, dev.boot, drift, skew, sleep_s)
            boards.append(info)
            futures = future_left // (group.devices - k) if future_left else 0
            future_left -= futures
            board = _Board(info, dev, group, start + group.unsynced_for_ms if group.unsynced_for_ms else 0, 0)
            board.last_sync = start
            _run_board(
                board, scenario, start, end, storms, anomalies, anomaly_states, by_device.get(name, []),
                [s for s in sequences if name in (s.device, s.partner)], futures, stream(f"values:{name}"), net,
                readings, deliveries, extra.get(name, []),
            )  # fmt: skip
            index += 1

    deliveries.sort(key=lambda d: (d.arrival_ms, d.order))
    run = Run(
        scenario=scenario,
        start_ms=start,
        end_ms=end,
        boards=boards,
        readings=readings,
        deliveries=deliveries,
        anomalies=[(a, st.labelled) for a, st in zip(anomalies, anomaly_states, strict=True)],
        sequences=sequences,
        correlations=correlations,
        network=net.stats,
    )
    run.elapsed_s = time.perf_counter() - started
    return run


def _run_board(
    board: _Board,
    sc: Scenario,
    start: int,
    end: int,
    storms: list[tuple[int, int, int]],
    anomalies: list[InjectedAnomaly],
    states: list[AnomalyState],
    mine: list[int],
    sequences: list[ScriptedSequence],
    futures: int,
    rng: random.Random,
    net: _Net,
    readings: list[SentReading],
    deliveries: list[Delivery],
    extra: Sequence[tuple[int, dict[str, MetricValue]]] = (),
) -> None:
    info, dev, group = board.info, board.dev, board.group
    topic = f"{sc.prefix}/{info.site}/{info.device}/readings"
    status: dict[str, MetricValue] = {"boot": dev.boot, "clock": "s" if board.synced else "u"}
    if info.sleep_s is not None:
        status["sleep_s"] = info.sleep_s
    status.update({"battery_mv": dev.battery_mv, "buf_cap": 256, "fw": "sim-0.2.0"})
    first = start + dev.phase_ms
    deliveries.append(
        Delivery(
            first - 1, len(deliveries), f"{sc.prefix}/{info.site}/{info.device}/status",
            encode_status(info.device, "online", status), "status", info.device, first - 1, 1,
        )
    )  # fmt: skip
    samples: list[tuple[int, dict[str, MetricValue] | None]] = [
        (t, None) for t in _sample_times(first, end, group.interval_ms, storms)
    ]
    for s in sequences:
        for e in s.events_of(info.device):
            if s.at_ms + e.offset_ms < end:
                event: dict[str, MetricValue] = {e.metric: e.value}
                bisect.insort(samples, (s.at_ms + e.offset_ms, event), key=lambda x: x[0])
    for t_extra, metrics_extra in extra:  # a correlated event's reading (``[[correlations]]``)
        if t_extra < end:
            bisect.insort(samples, (t_extra, metrics_extra), key=lambda x: x[0])
    future_slots = set(rng.sample(range(len(samples)), min(futures, len(samples)))) if futures else set()
    taken = 0
    for n, (true_t, scripted) in enumerate(samples):
        if scripted is not None:
            metrics: dict[str, MetricValue] = dict(scripted)
        else:
            metrics = {}
            for name in group.metrics:
                value: float | None = METRIC_GENERATORS[name](rng, dev, true_t)
                for i in mine:
                    if anomalies[i].covers(info.device, name, true_t) and value is not None:
                        value = apply_anomaly(anomalies[i], states[i], value, true_t, rng)
                if value is not None:
                    metrics[name] = round(value, 2)
            if not metrics:
                continue  # every metric dropped out: the board records nothing
        if board.synced:
            t = true_t + info.skew_ms + int(info.drift_ppm * (true_t - board.last_sync) / 1e6)
            quality = "s"
        elif group.rtc_unset:
            t = UNSET_RTC_MS + (true_t - start)
            quality = "u"
        else:
            t = true_t + group.unsynced_offset_ms
            quality = "u"
        reason: str | None = None
        if n in future_slots and board.synced:
            t = true_t + FUTURE_GLITCH_MS
            reason = "time_in_future"
        elif t < MIN_TIME_MS:
            reason = "time_too_old"
        r = SentReading(info.site, info.device, dev.boot, board.seq, true_t, t, quality, metrics, reason=reason)
        board.seq += 1
        board.buffer.append(len(readings))
        readings.append(r)
        if scripted is None:
            taken += 1
        if taken and taken % group.publish_every == 0 and scripted is None:
            _connect(board, sc, true_t, readings, deliveries, topic, net, final=False)
    if board.buffer:
        _connect(board, sc, end, readings, deliveries, topic, net, final=True)


def _connect(
    board: _Board,
    sc: Scenario,
    at: int,
    readings: list[SentReading],
    deliveries: list[Delivery],
    topic: str,
    net: _Net,
    *,
    final: bool,
) -> None:
    """The board wakes and connects at ``at``: sync its clock, then send its buffer batch by batch."""
    info, group = board.info, board.group
    if net.down(info.site, at):
        net.stats["outage_failures"] += 1
        if not final:
            return
        at = net.outage_end(info.site, at)
    if not board.synced and at >= board.sync_at:
        board.synced = True
        for i in board.buffer:  # re-time what was taken before the sync and is still unsent
            r = readings[i]
            if r.quality == "u":
                r.t_ms = r.true_ms + info.skew_ms
                r.quality = "c"
                r.reason = None if r.t_ms >= MIN_TIME_MS else "time_too_old"
    if board.synced:
        board.last_sync = at
    batches: list[list[int]] = []
    for i in board.buffer:
        if not batches or len(batches[-1]) >= group.batch_size:
            batches.append([])
        batches[-1].append(i)
    board.buffer = []
    clock = at
    netspec = sc.network
    for k, batch in enumerate(batches):
        wire = [WireReading(r.boot, r.seq, r.t_ms, r.quality, r.metrics) for r in (readings[i] for i in batch)]
        flushed: int | None = None
        if group.sleep and k == len(batches) - 1 and board.synced:
            good = [readings[i].t_ms for i in batch if readings[i].reason is None and readings[i].quality != "u"]
            flushed = max(good) if good else None
        payload = encode_batch(info.device, wire, flushed)
        if len(payload) > MAX_PAYLOAD:
            raise SpecError(f"{info.device}: a batch of {len(batch)} readings is {len(payload)} bytes; lower it")
        attempt = 0
        first_sent = clock
        while True:
            attempt += 1
            net.stats["attempts"] += 1
            last = attempt >= MAX_ATTEMPTS
            if net.down(info.site, clock) and not last:
                net.stats["outage_failures"] += 1
                clock = max(clock + netspec.retry_ms, net.outage_end(info.site, clock))
                continue
            if not last and netspec.loss and net.rng.random() < netspec.loss:
                net.stats["lost"] += 1
                clock += netspec.retry_ms
                continue
            arrival = clock + _delay(netspec.delay, net.rng)
            if netspec.reorder and net.rng.random() < netspec.reorder:
                net.stats["held_back"] += 1
                arrival += netspec.reorder_delay_ms
            kind = "batch" if not any(readings[i].deliveries for i in batch) else "resent"
            _deliver(deliveries, readings, batch, arrival, topic, payload, kind, info.device, first_sent, attempt,
                     flushed)  # fmt: skip
            if netspec.duplicate and net.rng.random() < netspec.duplicate:
                net.stats["broker_duplicates"] += 1
                again = arrival + 1 + _delay(netspec.delay, net.rng)
                _deliver(deliveries, readings, batch, again, topic, payload, "duplicate", info.device, first_sent,
                         attempt, flushed)  # fmt: skip
            if not last and netspec.ack_loss and net.rng.random() < netspec.ack_loss:
                net.stats["ack_lost"] += 1
                clock += netspec.retry_ms
                continue
            clock = arrival + _delay(netspec.delay, net.rng)  # the PUBACK comes back; the next batch goes
            break
        for i in batch:
            r = readings[i]
            r.sent_ms = first_sent
            r.attempts = attempt


def _deliver(
    deliveries: list[Delivery],
    readings: list[SentReading],
    batch: list[int],
    arrival: int,
    topic: str,
    payload: bytes,
    kind: str,
    device: str,
    sent: int,
    attempt: int,
    flushed: int | None,
) -> None:
    deliveries.append(
        Delivery(arrival, len(deliveries), topic, payload, kind, device, sent, attempt, tuple(batch), flushed)
    )
    for i in batch:
        r = readings[i]
        r.deliveries += 1
        if r.arrival_ms < 0 or arrival < r.arrival_ms:
            r.arrival_ms = arrival
