"""``edgekit-gateway plan``: what a configuration will do for a fleet of a given size, measured, not guessed.

A synthetic fleet (``devices`` boards, each sending ``metrics`` every ``interval_ms`` in batches of
``batch`` readings, on time) goes through the real pipeline (decode, dedup, the event-time engine) for a
warm-up (the longest window plus its lateness, so every window is open and closing) and then ``hours``
of event time. The points of the measured part are counted by measurement, and the state the engine and
the deduplicator hold at the end is sized as JSON (what a checkpoint would store).

The synthetic boards are always admitted (their ids are made up, and the plan sizes the fleet as given);
:attr:`PlanResult.devices_note` says what the configuration's ``[devices]`` section would do to such a fleet.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from .anomaly.engine import ANOMALY_MEASUREMENT
from .ckpt_rows import encode_row, key_names, split_order, split_rows
from .config import Config, DevicesConfig
from .live import DEVICE_INTERVAL_MS, DEVICE_WATERMARK, GATEWAY_HEALTH, HEALTH_INTERVAL_MS
from .memsize import block_size
from .pipeline import Pipeline
from .state import compress_row

__all__ = ["PlanResult", "run_plan"]

HOUR_MS = 3_600_000
START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z: any synced time works; fixed so plans are repeatable


@dataclass
class PlanResult:
    devices: int
    metrics: tuple[str, ...]
    interval_ms: int
    batch: int
    hours: float
    warmup_ms: int
    messages: int = 0
    points: Counter[str] = field(default_factory=Counter)
    """Points per hour, by measurement (health points included, at their fixed intervals)."""
    engine_state_bytes: int = 0
    dedup_state_bytes: int = 0
    devices_note: str | None = None
    """Set when the configuration would not give every board of the fleet state (``[devices]``)."""
    pipeline_cpu_s: float = 0.0
    """CPU time of this process in the pipeline (``handle`` and ``tick``) over the measured part."""
    readings_measured: int = 0
    memory_bytes: int = 0
    """The pipeline's state in memory at the end (engine, deduplication, patterns, detectors, devices), as the
    allocator hands it out (``memsize.block_size``)."""
    checkpoint_cpu_s: float = 0.0
    """CPU time of one checkpoint of every key (snapshot, JSON, compression), as at a high rate every key changes
    between two checkpoints."""
    checkpoint_bytes: int = 0
    anomaly_points_measured: int = 0
    anomaly_warming: int = 0
    """Of the measured part's ``anomaly`` points, those of a detector still in its warm-up (learning, not scoring:
    cheaper); ``plan``'s warm-up covers the detectors', so 0 unless ``max_series`` or a gap restarts one."""

    @property
    def pipeline_us(self) -> float:
        """The configuration's pipeline per reading on this machine."""
        return self.pipeline_cpu_s * 1e6 / max(1, self.readings_measured)

    @property
    def total_per_hour(self) -> int:
        return sum(self.points.values())

    def as_dict(self) -> dict[str, object]:
        return {
            "devices": self.devices,
            "metrics": list(self.metrics),
            "interval_ms": self.interval_ms,
            "batch": self.batch,
            "hours": self.hours,
            "warmup_ms": self.warmup_ms,
            "messages": self.messages,
            "points_per_hour": dict(sorted(self.points.items())),
            "total_points_per_hour": self.total_per_hour,
            "engine_state_bytes": self.engine_state_bytes,
            "dedup_state_bytes": self.dedup_state_bytes,
            "devices_note": self.devices_note,
            "pipeline_us_per_reading": round(self.pipeline_us, 2),
            "anomaly_points_measured": self.anomaly_points_measured,
            "anomaly_warming": self.anomaly_warming,
            "memory_bytes": self.memory_bytes,
            "checkpoint_cpu_s": round(self.checkpoint_cpu_s, 4),
            "checkpoint_bytes": self.checkpoint_bytes,
        }


def _warmup_ms(cfg: Config) -> int:
    longest = 0
    for w in cfg.engine.windows:
        span = max(w.size_ms, w.gap_ms) + w.allowed_lateness_ms + (w.out_of_orderness_ms or 0)
        longest = max(longest, span)
    return longest + cfg.engine.watermark.out_of_orderness_ms


def _warmup_readings(cfg: Config, metrics: tuple[str, ...]) -> int:
    """Readings a board sends before every anomaly detector of the plan's metrics scores (they learn until then,
    which costs less than scoring); 0 without ``[anomaly]``."""
    an = cfg.anomaly
    if not an.enabled:
        return 0
    scored = [m for m in metrics if not an.metrics or m in an.metrics]
    need = max((an.detector_for(m).warmup for m in scored), default=0)
    if an.multivariate and len(scored) >= 2:  # MultiDetector.warmup
        need = max(need, an.detector.warmup, 10 * len(scored))
    return need


def devices_note(dc: DevicesConfig, devices: int) -> str | None:
    """What ``[devices]`` would do to a fleet of ``devices`` boards, or None when it admits them all."""
    if not dc.allow_unknown:
        return (
            f"devices.allow_unknown = false: only the {len(dc.known)} ids in devices.known get state, the rest are "
            f"dead letters (unknown_device); this plan admits all {devices} boards"
        )
    if devices > dc.max_devices:
        more = devices - dc.max_devices
        return (
            f"devices.max_devices = {dc.max_devices}: {more} board{'s' if more != 1 else ''} beyond it would be dead "
            f"letters (too_many_devices); this plan admits all {devices}: raise devices.max_devices to run them"
        )
    return None


def run_plan(
    cfg: Config,
    *,
    devices: int,
    metrics: tuple[str, ...],
    interval_ms: int,
    batch: int,
    hours: float,
    progress: Callable[[int, int], None] | None = None,
) -> PlanResult:
    """Feed the synthetic fleet through a fresh pipeline; count what the measured ``hours`` produce."""
    step = interval_ms * batch  # event time one message of a board covers
    # the windows' longest span, and the anomaly detectors' warm-up (a detector that learns is cheaper than one
    # that scores: a short plan would measure the wrong one)
    warm_batches = max(-(-_warmup_ms(cfg) // step), -(-_warmup_readings(cfg, metrics) // batch))
    measured_batches = max(1, round(hours * HOUR_MS / step))
    hours = measured_batches * step / HOUR_MS  # whole messages: what is measured is exactly this
    res = PlanResult(devices, metrics, interval_ms, batch, hours, warm_batches * step)
    res.devices_note = devices_note(cfg.devices, devices)
    pipe = Pipeline(replace(cfg, devices=DevicesConfig(max_devices=max(devices, cfg.devices.max_devices))))
    prefix = cfg.mqtt.prefix
    batches = warm_batches + measured_batches
    per_device = batches * batch
    total = batches * devices
    counts: Counter[str] = Counter()
    last_tick = START_MS // 1000
    for b in range(batches):
        for d in range(devices):
            # boards are spread over the interval, so the fleet does not send in lock-step
            offset = d * interval_ms // max(devices, 1)
            seqs = range(b * batch, min((b + 1) * batch, per_device))
            times = [START_MS + s * interval_ms + offset for s in seqs]
            readings = [
                {"b": 1, "s": s, "t": t, "q": "s",
                 "m": {m: round(20 + (d % 7) + 0.01 * s + i, 2) for i, m in enumerate(metrics)}}
                for s, t in zip(seqs, times, strict=True)
            ]  # fmt: skip
            received = times[-1] + 1000
            device = f"dev-{d:05d}"
            payload = json.dumps({"v": 1, "dev": device, "r": readings}, separators=(",", ":")).encode()
            topic = f"{prefix}/site-{d % 4}/{device}/readings"
            t = time.process_time()
            if received // 1000 != last_tick:
                last_tick = received // 1000
                lines = pipe.tick(received).lines
            else:
                lines = []
            lines += pipe.handle(topic, payload, received).lines
            spent = time.process_time() - t
            res.messages += 1
            if b >= warm_batches:
                res.pipeline_cpu_s += spent
                res.readings_measured += len(readings)
                for text in lines:
                    measurement = text.split(" ", 1)[0].split(",", 1)[0]
                    counts[measurement] += 1
                    if measurement == ANOMALY_MEASUREMENT:
                        res.anomaly_points_measured += 1
                        res.anomaly_warming += 'phase="warmup"' in text
        if progress is not None:
            progress((b + 1) * devices, total)
    per_hour = 1 / hours
    res.points = Counter({k: round(v * per_hour) for k, v in counts.items()})
    res.points[GATEWAY_HEALTH] = HOUR_MS // HEALTH_INTERVAL_MS
    res.points[DEVICE_WATERMARK] = devices * (HOUR_MS // DEVICE_INTERVAL_MS)
    res.engine_state_bytes = len(json.dumps(pipe.engine.snapshot(), separators=(",", ":")))
    res.dedup_state_bytes = len(json.dumps(pipe.dedup.state, separators=(",", ":")))
    res.memory_bytes = block_size(pipe)  # as the allocator hands it out: what the process holds for it
    t = time.process_time()
    _, order = split_order({"pipeline": pipe.snapshot(order=True)})
    rows = split_rows({"pipeline": pipe.snapshot(key_names(order))})
    res.checkpoint_bytes = sum(len(compress_row(encode_row(v))) for v in rows.values())
    res.checkpoint_cpu_s = time.process_time() - t
    return res
