"""What the gateway writes to InfluxDB: one function per measurement, documented in docs/measurements.md.

All timestamps are in nanoseconds (the sinks write with ``precision=ns``). Reading points are
deterministic (same reading, same series and timestamp: its event time plus a sub-millisecond offset from
its identity), so a rewrite after a retry or a replay overwrites instead of duplicating, and two readings of
one device in one millisecond stay two points. Every field has one type (``gateway/schema.py``): a metric
the one its ``[metric_types]`` declaration gives (a float unless declared otherwise), a documented status
field the one ``protocol.STATUS_FIELDS`` gives.
"""

from __future__ import annotations

from typing import Final

from .lineproto import NS_PER_MS, line, reading_time_ns
from .model import DeadLetter, MetricValue, Reading, StatusUpdate
from .protocol import STATUS_FIELDS
from .schema import METRIC, METRIC_PATTERN, declare

__all__ = ["DEAD_LETTER", "READING", "STATUS", "dead_letter_line", "reading_line", "status_line"]

READING: Final = declare(
    "reading",
    tags=("site", "device"),
    fields={"boot": "integer", "seq": "integer", "q": "string"},
    open_fields=METRIC_PATTERN,  # each metric the board sent, of its declared type
    open_type=METRIC,
    time="the reading's event time (+ a sub-millisecond offset from its boot and sequence number)",
    module=__name__,
)
DEAD_LETTER: Final = declare(
    "dead_letter",
    tags=("reason", "site", "device"),
    fields={"topic": "string", "detail": "string", "payload": "string", "size": "integer", "index": "integer"},
    time="when the gateway received the message (+ a sub-millisecond counter)",
    module=__name__,
)
STATUS: Final = declare(
    "device_status",
    tags=("site", "device"),
    # state, then what docs/protocol.md documents; a board may send more (open_fields, typed like metrics)
    fields=STATUS_FIELDS,
    open_fields=METRIC_PATTERN,
    open_type=METRIC,
    time="when the gateway received the status (+ a sub-millisecond counter)",
    module=__name__,
)


def reading_line(r: Reading) -> str:
    fields: dict[str, MetricValue] = dict(r.metrics)
    fields["boot"] = r.boot
    fields["seq"] = r.seq
    fields["q"] = r.quality
    return line(READING, {"site": r.site, "device": r.device}, fields, reading_time_ns(r.t_ms, r.boot, r.seq))


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


def status_line(s: StatusUpdate, unique: int = 0) -> str:
    """``unique`` (0..999999) keeps two statuses of one device received in the same millisecond apart."""
    fields: dict[str, MetricValue] = {"state": s.state}
    fields.update(s.fields)
    return line(STATUS, {"site": s.site, "device": s.device}, fields, s.received_ms * NS_PER_MS + unique % NS_PER_MS)
