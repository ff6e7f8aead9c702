"""``edgekit-gateway replay FILE``: recorded MQTT messages through the pipeline into InfluxDB.

Each record is handled at its recorded ``received_ms`` (the pipeline's only clock), with the engine's
one-second tick in between as the running gateway has it, so a replay of a recording makes the same
points as the run that recorded it. The points are deterministic (same series and timestamp), so
replaying twice, or over data the live gateway already wrote, overwrites instead of adding.
Health points (processing time) are not written by a replay.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .config import Config
from .pipeline import Pipeline
from .record import read_records
from .sinks import BatchingSink, make_writer

__all__ = ["ReplayResult", "replay"]


@dataclass
class ReplayResult:
    records: int = 0
    pipeline: dict[str, object] = field(default_factory=dict)
    sink: dict[str, object] = field(default_factory=dict)

    @property
    def refused(self) -> int:
        """Lines that were not written: refused by InfluxDB or unwritable (each a dead letter)."""
        total = 0
        for key in ("points_refused", "points_unwritable"):
            value = self.sink.get(key, 0)
            total += value if isinstance(value, int) else 0
        return total


async def replay(
    cfg: Config, path: Path, *, dry_run: bool = False, progress: Callable[[int], None] | None = None
) -> ReplayResult:
    pipe = Pipeline(cfg)
    sink = None if dry_run else BatchingSink(make_writer(cfg.influx), cfg.influx)
    res = ReplayResult()
    if sink is not None:
        await sink.start()
    try:
        last_tick: int | None = None
        for rec in read_records(path):
            now = rec.received_ms
            lines: list[str] = []
            if last_tick is not None and now // 1000 > last_tick:
                lines += pipe.tick(now).lines
            last_tick = now // 1000
            lines += pipe.handle(rec.topic, rec.payload, now).lines
            if sink is not None:
                await sink.add(lines)
            res.records += 1
            if progress is not None:
                progress(res.records)
    finally:
        if sink is not None:
            await sink.close()
            res.sink = sink.stats.as_dict()
    res.pipeline = pipe.stats.as_dict()
    return res
