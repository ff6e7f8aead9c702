"""Shared helpers for the engine tests: readings, batches, normalised outputs."""

from __future__ import annotations

import math
from typing import Any

from gateway.engine import LateReading, Output, WindowResult
from gateway.model import Batch, Quality, Reading

SITE = "a"

Event = tuple[str, int, int, dict[str, float | int], int]
"""A reading as the snapshot compatibility tests write their streams: device, time, seq, values, time received."""


def feed_events(engine: Any, evs: list[Event]) -> list[Output]:
    """Each event as a batch of its one reading (site "a", boot 1), processed 50 ms after it was received."""
    out: list[Output] = []
    for dev, t, i, vals, now in evs:
        r = Reading("a", dev, 1, i, t, "s", vals)
        out += engine.process_batch(Batch("a", dev, "", now, (r,), ()), now + 50)
    return out


def batch(
    device: str,
    readings: list[tuple[int, int, int, dict[str, float]]],
    *,
    flushed: int | None = None,
    site: str = SITE,
    quality: Quality = "s",
    received_ms: int = 0,
) -> Batch:
    rs = tuple(Reading(site, device, b, s, t, quality, dict(v)) for t, b, s, v in readings)
    return Batch(site, device, f"edgekit/{site}/{device}/readings", received_ms, rs, (), flushed)


def window_rows(outs: list[Output]) -> list[tuple[Any, ...]]:
    """Window results as comparable tuples (superseded sessions carry ``end=None``)."""
    rows = []
    for o in outs:
        if isinstance(o, WindowResult):
            end = None if o.fired == "superseded" else o.end_ms
            rows.append((o.window, o.key, o.start_ms, end, o.metric, o.count, dict(o.aggregates), o.revision))
    return sorted(rows, key=lambda r: r[:5])


def late_rows(outs: list[Output]) -> list[tuple[Any, ...]]:
    return sorted((o.window, o.device, o.metric, o.t_ms, o.boot, o.seq) for o in outs if isinstance(o, LateReading))


def rows_close(a: list[tuple[Any, ...]], b: list[tuple[Any, ...]]) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if x[:6] != y[:6] or x[7] != y[7] or set(x[6]) != set(y[6]):
            return False
        for k in x[6]:
            if not math.isclose(x[6][k], y[6][k], rel_tol=1e-9, abs_tol=1e-9):
                return False
    return True


def whole_transfers(engine: Any) -> Any:
    """``engine`` with every sliding window's keys transferring a whole window at a time, as every engine did before
    6 December 2026 (``SlidingOperator.stagger`` off): a snapshot written then restores and continues exactly as an
    engine that never stopped only when that engine transferred as the writer did (each key in a phase of its own
    changes how a window's panes are grouped, and so the rounding of its sums)."""
    for w in engine.windows:
        if hasattr(w.op, "stagger"):
            w.op.stagger = False
    return engine
