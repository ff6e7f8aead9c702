"""The gateway process, wired in one place: MQTT ingest -> pipeline -> batching InfluxDB sink."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from .config import Config
from .ingest import IngestStats, Outbox, run_ingest
from .live import LiveView
from .pipeline import Handled, Pipeline
from .record import Recorder
from .sinks import BatchingSink, make_writer

__all__ = ["Gateway", "wall_clock_ms"]

log = logging.getLogger("gateway")


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class Gateway:
    """One running gateway. ``await gw.run(stop)`` until ``stop`` is set; ``snapshot_stats()`` any time."""

    def __init__(
        self,
        config: Config,
        *,
        now_ms: Callable[[], int] = wall_clock_ms,
        stats_file: Path | None = None,
        stats_interval_s: float = 1.0,
        record: Path | None = None,
    ) -> None:
        self.config = config
        self.now_ms = now_ms
        self.pipeline = Pipeline(config)
        self.sink = BatchingSink(make_writer(config.influx), config.influx)
        self.ingest_stats = IngestStats()
        self.outbox = Outbox()
        self.stats_file = stats_file
        self.stats_interval_s = stats_interval_s
        self.started = asyncio.Event()
        # deploy: the live view (stats file for `top`, health points) and `run --record FILE`
        self.live = LiveView(self.pipeline.engine, config.mqtt.client_id, now_ms())
        self.recorder = Recorder(record) if record is not None else None

    async def _handle(self, topic: str, payload: bytes) -> None:
        now = self.now_ms()
        if self.recorder is not None:  # deploy
            self.recorder.write(topic, payload, now)
        await self._emit(self.pipeline.handle(topic, payload, now))

    async def _emit(self, out: Handled) -> None:
        for topic, payload in out.publish:
            self.outbox.put(topic, payload)
        self.live.observe(out.readings, out.outputs, out.alerts)  # deploy
        await self.sink.add(out.lines)

    def snapshot_stats(self) -> dict[str, object]:
        return {
            "pipeline": self.pipeline.stats.as_dict(),
            "sink": {**self.sink.stats.as_dict(), "pending": self.sink.pending},
            "mqtt": {
                **self.ingest_stats.as_dict(),
                "published": self.outbox.sent,
                "outbox": len(self.outbox.queue),
                "outbox_shed": self.outbox.shed,
            },
            "live": self.live.as_dict(self.now_ms()),  # deploy
        }

    def _write_stats(self) -> None:
        if self.stats_file is None:
            return
        tmp = self.stats_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.snapshot_stats(), indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, self.stats_file)

    async def _tick_loop(self, stop: asyncio.Event) -> None:
        """Once a second: let time move the engine (idle devices) and write the stats file."""
        while not stop.is_set():
            await self._emit(self.pipeline.tick(self.now_ms()))
            await self.sink.add(self.live.health_lines(self.now_ms(), self.snapshot_stats()))  # deploy
            self._write_stats()
            try:
                await asyncio.wait_for(stop.wait(), self.stats_interval_s)
            except TimeoutError:
                pass

    async def run(self, stop: asyncio.Event) -> None:
        cfg = self.config
        log.info(
            "gateway starting",
            extra={"event": "start", "influx": cfg.influx.target, "influx_url": cfg.influx.url,
                   "broker": f"{cfg.mqtt.host}:{cfg.mqtt.port}"},
        )  # fmt: skip
        await self.sink.start()
        self.started.set()
        tick_task = asyncio.create_task(self._tick_loop(stop), name="tick")
        try:
            await run_ingest(cfg.mqtt, self._handle, self.ingest_stats, stop, self.outbox)
        finally:
            stop.set()
            await tick_task
            await self.sink.close()
            if self.recorder is not None:  # deploy
                self.recorder.close()
            self._write_stats()
            log.info("gateway stopped", extra={"event": "stop", **self.snapshot_stats()})
