"""When a fleet has outgrown one gateway, and what a Flink set-up needs instead (``edgekit-gateway plan``).

From measured numbers only. docs/performance.md measured the whole gateway (a real Mosquitto, the durable log,
InfluxDB 1.6) on one core of the benchmark machine: :data:`GATEWAY_READINGS_PER_CPU_S` readings per CPU-second
with the default configuration, of which the pipeline (``Pipeline.handle``) took :data:`PIPELINE_US` per reading;
the rest (MQTT receive, log, acknowledgements, the sink) is :data:`REST_US` per reading there. ``plan`` then
measures, on the machine it runs on (run it on the target: a Raspberry Pi), the same default pipeline
(:func:`calibrate`: how fast this machine is against the benchmark's) and the configuration's own pipeline on the
planned fleet. The gateway's CPU per reading on the target is the configuration's pipeline plus the rest scaled by
that speed; its state is the pipeline's in-memory size at the end of the plan, as the allocator hands it out
(``gateway.memsize.block_size``).

The rules (:func:`size_fleet`): a gateway has outgrown one machine when, at the fleet's steady rate, it would use
more than ``max_cpu`` of one core (the rest is the room it needs to catch up after an outage: a backlog drains at
capacity minus rate), or when its state would take more than ``memory`` bytes.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Final

from .bridge import bridge_pipeline_config, message_records, watermark_top
from .config import Config
from .pipeline import Pipeline

__all__ = [
    "GATEWAY_READINGS_PER_CPU_S",
    "PIPELINE_US",
    "REST_US",
    "Calibration",
    "FlinkSetup",
    "Sizing",
    "bridge_pipeline_us",
    "calibrate",
    "size_fleet",
]

GATEWAY_READINGS_PER_CPU_S: Final = 21_000
"""The whole gateway, default configuration, readings per CPU-second of its own: the median of ``bench_e2e.py
capacity`` in docs/performance.md (21,000, range 17,700-22,200; 27,300 when it keeps up: the lower is taken)."""
PIPELINE_US: Final = 16.0
"""``Pipeline.handle`` on the benchmark's messages (10 readings of four float metrics), default configuration:
about 160 us per message on the benchmark machine (docs/performance.md, "Where the time goes")."""
REST_US: Final = 1e6 / GATEWAY_READINGS_PER_CPU_S - PIPELINE_US
"""What the gateway spends per reading outside the pipeline on the benchmark machine (about 31.6 us)."""
FLINK_SLOT_RATE: Final = 26_000
"""Readings per second one Flink slot took for the compiled job of workload (a) (a 10 s tumbling mean per device,
global watermark, 100 devices): ``bench/bench_flink.py``'s parallelism-1 wall-clock figure on the 2-core test
machine, the median over rounds, the lower of its two message sizes (1 and 10 readings a message; they did not
differ beyond the rounds' spread). ``plan``'s default for ``--flink-slot-rate`` (docs/scale-out.md, "Throughput,
measured")."""

CAL_DEVICES: Final = 100
CAL_MESSAGES: Final = 300
"""Messages of the calibration, after one message per device to warm up."""


@dataclass(frozen=True, slots=True)
class Calibration:
    """The default pipeline on this machine (us per reading), and the bridge's encoding of a reading."""

    pipeline_us: float
    encode_us: float
    rounds: tuple[float, ...] = ()

    @property
    def speed(self) -> float:
        """This machine's core against the benchmark machine's (2.0: twice as fast; 0.25: a quarter)."""
        return PIPELINE_US / self.pipeline_us


BENCH_METRICS: Final = ("temp_c", "rh", "pressure_hpa", "vib")
"""The benchmark's messages: 10 readings of these four float metrics and a flushed marker."""


def _message(device: int, n: int, metrics: tuple[str, ...], batch: int) -> tuple[str, bytes, int]:
    t0 = 1_767_225_600_000 + n * batch * 1000
    readings = [
        {"b": 1, "s": n * batch + i, "t": t0 + i * 1000, "q": "s",
         "m": {m: round(21.5 + i * 0.01 + k + device * 1e-4, 4) for k, m in enumerate(metrics)}}
        for i in range(batch)
    ]  # fmt: skip
    name = f"cal-{device:04d}"
    doc = {"v": 1, "dev": name, "r": readings, "flushed": t0 + (batch - 1) * 1000}
    payload = json.dumps(doc, separators=(",", ":")).encode()
    return f"edgekit/site-{device % 4}/{name}/readings", payload, t0 + batch * 1000


def _run(config: Config, metrics: tuple[str, ...], batch: int, encode: bool) -> tuple[float, float]:
    """One round: us per reading of ``config``'s pipeline on :data:`CAL_MESSAGES` messages of this shape (after
    one message per device to admit them), and of the bridge's encoding of what it accepted."""
    pipe = Pipeline(config)
    per = CAL_MESSAGES // CAL_DEVICES + 1
    msgs = [_message(d, n, metrics, batch) for n in range(per) for d in range(CAL_DEVICES)]
    for topic, payload, now in msgs[:CAL_DEVICES]:
        pipe.handle(topic, payload, now)
    outs = []
    t = time.process_time()
    for topic, payload, now in msgs[CAL_DEVICES:]:
        outs.append(pipe.handle(topic, payload, now))
    spent = time.process_time() - t
    readings = max(1, sum(len(o.readings) for o in outs))
    enc = 0.0
    if encode:
        t = time.process_time()
        top: int | None = None  # as the bridge does (FileForwarder.top): wm0_ms on every line
        for pos, o in enumerate(outs, 1):
            message_records(o.readings, pos, 0, min_time_ms=0, max_future_ms=1 << 62, wm0_ms=top)
            mt = watermark_top(o.readings, 0, min_time_ms=0, max_future_ms=1 << 62)
            top = mt if top is None or (mt is not None and mt > top) else top
        enc = (time.process_time() - t) * 1e6 / readings
    return spent * 1e6 / readings, enc


def calibrate(rounds: int = 3) -> Calibration:
    """The default configuration's pipeline on the benchmark's messages, on this machine: the median over ``rounds``
    (CPU time of this process); and the bridge's encoding of the accepted readings."""
    runs = [_run(Config(), BENCH_METRICS, 10, True) for _ in range(rounds)]
    per_reading = [r[0] for r in runs]
    return Calibration(statistics.median(per_reading), statistics.median(r[1] for r in runs), tuple(per_reading))


def bridge_pipeline_us(config: Config, metrics: tuple[str, ...], batch: int, rounds: int = 3) -> float:
    """A bridge's pipeline (``config`` without windows, patterns and detectors) on messages of the fleet's shape, on
    this machine: the median over ``rounds``."""
    return statistics.median(_run(bridge_pipeline_config(config), metrics, batch, False)[0] for _ in range(rounds))


@dataclass(frozen=True, slots=True)
class FlinkSetup:
    """What the fleet needs on Flink instead (docs/scale-out.md)."""

    bridges: int
    """Bridge gateways (each at most ``max_cpu`` of one core of this machine kind), by site."""
    bridge_readings_per_cpu_s: float
    parallelism: int | None
    """Job parallelism: the fleet's rate over what one slot takes (``--flink-slot-rate``); None when not given."""
    task_managers: int | None
    kafka_partitions: int | None
    state_per_slot_bytes: int | None
    state_backend: str
    slot_rate: float | None = None
    """The readings per second a slot takes that ``parallelism`` is computed with."""


@dataclass(frozen=True, slots=True)
class Sizing:
    readings_per_s: float
    messages_per_s: float
    pipeline_us: float
    """This configuration's pipeline per reading, measured on this machine."""
    calibration_us: float
    speed: float
    gateway_us: float
    """The whole gateway per reading on this machine: the pipeline plus :data:`REST_US` / speed."""
    capacity: float
    """Readings per second one core takes, what the checkpoints leave of it."""
    checkpoint_share: float
    """The share of one core the checkpoints take: every ``state.checkpoint_interval_s``, the keys of the devices
    that sent since the one before."""
    cpu_share: float
    """The share of one core the fleet's rate and the checkpoints take."""
    max_cpu: float
    state_bytes: int
    memory: int
    catch_up_s: float | None
    """How long a backlog of one hour (an outage) takes to drain, None if it never does."""
    outgrown: bool
    reasons: tuple[str, ...]
    flink: FlinkSetup
    notes: tuple[str, ...] = field(default=())

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _at_least(ratio: float) -> int:
    """The whole number of machines or slots a ``ratio`` of load needs (at least 1); a ratio a rounding error over a
    whole number (3.0000000000000004) is that number."""
    return max(1, math.ceil(ratio * (1 - 1e-12)))


def size_fleet(
    *,
    readings_per_s: float,
    messages_per_s: float,
    pipeline_us: float,
    calibration: Calibration,
    state_bytes: int,
    checkpoint_cpu_s: float = 0.0,
    devices: int = 1,
    checkpoint_interval_s: float = 2.0,
    max_cpu: float = 0.5,
    memory: int = 512 * 2**20,
    flink_slot_rate: float | None = None,
    slots_per_tm: int = 2,
    bridge_us: float | None = None,
) -> Sizing:
    """The rules of this module over measured numbers (pure: ``plan`` measures, this decides)."""
    speed = calibration.speed
    rest = REST_US / speed
    gateway_us = pipeline_us + rest
    # a checkpoint snapshots the keys changed since the one before: each device sending in between (its own keys,
    # its site's); ``checkpoint_cpu_s`` is one checkpoint of every key
    changed_per_s = min(devices / checkpoint_interval_s, messages_per_s)
    checkpoints = checkpoint_cpu_s / max(1, devices) * changed_per_s
    capacity = (1 - checkpoints) * 1e6 / gateway_us if checkpoints < 1 else 0.0
    share = readings_per_s * gateway_us / 1e6 + checkpoints
    reasons = []
    if share > max_cpu:
        reasons.append(
            f"CPU: {readings_per_s:,.0f} readings/s take {share:.0%} of a core of this machine (capacity about "
            f"{capacity:,.0f}/s), over the {max_cpu:.0%} a gateway may use and still catch up after an outage"
        )
    if state_bytes > memory:
        reasons.append(f"state: {state_bytes / 2**20:,.0f} MiB in memory, over the {memory / 2**20:,.0f} MiB allowed")
    spare = capacity - readings_per_s
    catch_up = readings_per_s * 3600 / spare if spare > 0 else None
    # a bridge: its pipeline (measured on the fleet's messages; without, the default one), the encoding, the rest
    bridge_us = (calibration.pipeline_us if bridge_us is None else bridge_us) + calibration.encode_us + rest
    bridge_capacity = 1e6 / bridge_us
    bridges = _at_least(readings_per_s / (bridge_capacity * max_cpu))
    parallelism = task_managers = partitions = per_slot = None
    if flink_slot_rate is not None:
        parallelism = _at_least(readings_per_s / (flink_slot_rate * max_cpu))
        task_managers = math.ceil(parallelism / slots_per_tm)
        partitions = parallelism
        per_slot = state_bytes // parallelism
    per_tm = state_bytes / (task_managers or 1)
    backend = "hashmap (state on the heap)" if per_tm <= 1 << 30 else "rocksdb (state on local disk; heap too small)"
    flink = FlinkSetup(
        bridges, bridge_capacity, parallelism, task_managers, partitions, per_slot, backend, flink_slot_rate
    )
    return Sizing(
        readings_per_s, messages_per_s, pipeline_us, calibration.pipeline_us, speed, gateway_us, capacity, checkpoints,
        share,
        max_cpu, state_bytes, memory, catch_up, bool(reasons), tuple(reasons), flink,
    )  # fmt: skip
