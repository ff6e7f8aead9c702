"""What the gateway writes to InfluxDB: one function per measurement, documented in docs/measurements.md.

All timestamps are in nanoseconds (the sinks write with ``precision=ns``). Readings and status points
are deterministic (same reading, same series and timestamp), so a rewrite after a retry or a replay
overwrites instead of duplicating.
"""

from __future__ import annotations

from typing import Final

from .lineproto import NS_PER_MS, line
from .model import DeadLetter, MetricValue, Reading, StatusUpdate

__all__ = ["DEAD_LETTER", "READING", "STATUS", "dead_letter_line", "reading_line", "status_line"]

READING: Final = "reading"
DEAD_LETTER: Final = "dead_letter"
STATUS: Final = "device_status"


def reading_line(r: Reading) -> str:
    fields: dict[str, MetricValue] = dict(r.metrics)
    fields["boot"] = r.boot
    fields["seq"] = r.seq
    fields["q"] = r.quality
    return line(READING, {"site": r.site, "device": r.device}, fields, r.t_ms * NS_PER_MS)


def dead_letter_line(d: DeadLetter, unique: int) -> str:
    """``unique`` (0..999999) keeps two dead letters of the same millisecond apart."""
    fields: dict[str, MetricValue] = {
        "topic": d.topic,
        "detail": d.detail,
        "payload": d.excerpt,
        "size": d.size,
        "index": -1 if d.index is None else d.index,
    }
    tags = {"reason": d.reason, "site": d.site or "", "device": d.device or ""}
    return line(DEAD_LETTER, tags, fields, d.received_ms * NS_PER_MS + unique % NS_PER_MS)


def status_line(s: StatusUpdate) -> str:
    fields: dict[str, MetricValue] = {"state": s.state}
    fields.update(s.fields)
    return line(STATUS, {"site": s.site, "device": s.device}, fields, s.received_ms * NS_PER_MS)
