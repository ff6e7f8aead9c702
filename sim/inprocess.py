"""Drive the gateway's pipeline in-process, in virtual time: no broker, no database, no wall clock.

Every delivery of a :class:`~sim.world.Run` goes to ``Pipeline.handle(topic, payload, arrival_ms)`` in
arrival order, and ``Pipeline.tick`` runs once a virtual second between them, as the gateway's tick
loop does. The lines the pipeline would write can be kept in a :class:`~sim.verify.LineStore` and
checked against the ground truth with :func:`sim.verify.compare`; the alerts it would publish are kept.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.config import Config, parse_config
from gateway.errors import ConfigError
from gateway.pipeline import Pipeline

from .errors import SpecError
from .verify import LineStore
from .world import Run

__all__ = ["InProcessResult", "gateway_config", "run_in_process"]

TICK_MS = 1_000


@dataclass(slots=True)
class InProcessResult:
    stats: dict[str, object]
    lines: int
    elapsed_s: float
    store: LineStore | None
    alerts: list[dict[str, Any]] = field(default_factory=list)
    watermarks: list[tuple[int, str, int]] = field(default_factory=list)
    """(arrival, device, the first window's watermark for it) as the engine reports it."""


def gateway_config(gateway: Mapping[str, Any], prefix: str, extra: Mapping[str, Any] | None = None) -> Config:
    """A gateway configuration with the scenario's ``engine`` and ``windows`` and the run's topic prefix."""
    doc: dict[str, Any] = {**gateway, "mqtt": {"prefix": prefix}}
    for section, values in (extra or {}).items():
        doc[section] = {**doc.get(section, {}), **values}
    try:
        return parse_config(doc, env={})
    except ConfigError as exc:
        raise SpecError(f"gateway configuration: {exc}") from exc


def run_in_process(run: Run, config: Config, *, keep_lines: bool = True) -> InProcessResult:
    """Feed the run to a fresh pipeline in virtual time; returns its counters (and its lines if kept)."""
    started = time.perf_counter()
    pipeline = Pipeline(config)
    store = LineStore() if keep_lines else None
    alerts: list[dict[str, Any]] = []
    watermarks: list[tuple[int, str, int]] = []
    track = bool(config.engine.windows)
    lines = 0
    next_tick = run.deliveries[0].arrival_ms + TICK_MS if run.deliveries else 0
    for d in run.deliveries:
        while next_tick <= d.arrival_ms:
            out = pipeline.tick(next_tick)
            lines += len(out.lines)
            if store is not None:
                store.write(out.lines)
            next_tick += TICK_MS
        out = pipeline.handle(d.topic, d.payload, d.arrival_ms)
        lines += len(out.lines)
        if store is not None:
            store.write(out.lines)
        for _topic, payload in out.publish:
            alerts.append(json.loads(payload))
        if track and d.kind != "status":
            wm = pipeline.engine.device_watermark(d.device)
            if wm is not None:
                watermarks.append((d.arrival_ms, d.device, wm))
    return InProcessResult(
        stats=pipeline.stats.as_dict(),
        lines=lines,
        elapsed_s=time.perf_counter() - started,
        store=store,
        alerts=alerts,
        watermarks=watermarks,
    )
