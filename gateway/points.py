"""What the gateway writes to InfluxDB: one function per measurement, documented in docs/measurements.md.

All timestamps are in nanoseconds (the sinks write with ``precision=ns``). Readings and status points
are deterministic (same reading, same series and timestamp), so a rewrite after a retry or a replay
overwrites instead of duplicating.
"""

from __future__ import annotations

from typing import Final

from .lineproto import NS_PER_MS, line
from .model import DeadLetter, MetricValue, Reading, StatusUpdate
from .schema import METRIC_PATTERN, declare

__all__ = ["DEAD_LETTER", "READING", "STATUS", "dead_letter_line", "reading_line", "status_line"]

READING: Final = declare(
    "reading",
    tags=("site", "device"),
    fields=("boot", "seq", "q"),
    open_fields=METRIC_PATTERN,  # each metric the board sent
    time="the reading's event time",
    module=__name__,
)
DEAD_LETTER: Final = declare(
    "dead_letter",
    tags=("reason", "site", "device"),
    fields=("topic", "detail", "payload", "size", "index"),
    time="when the gateway received the message (+ a sub-millisecond counter)",
    module=__name__,
)
STATUS: Final = declare(
    "device_status",
    tags=("site", "device"),
    # state, then what docs/protocol.md documents; a board may send more (open_fields)
    fields=("state", "boot", "t", "clock", "sleep_s", "battery_mv", "buf", "buf_cap", "dropped", "fw"),
    open_fields=METRIC_PATTERN,
    time="when the gateway received the status",
    module=__name__,
)


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
