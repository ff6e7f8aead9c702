"""Alerts: what pattern matches (CEP) and anomalies become, on InfluxDB and on MQTT.

An alert's id is deterministic (a hash of its source, name, key and the identities of the readings it
is about), so a replay of the same readings produces the same id: the InfluxDB point overwrites itself
and an MQTT consumer can drop an id it has already seen. Alerts go to
``<prefix>/_gateway/alerts/<site>/<source>`` at QoS 1 (the gateway never ingests ``_gateway`` topics).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from .lineproto import NS_PER_MS, line
from .model import MetricValue, ReadingKey
from .schema import METRIC, METRIC_PATTERN, FieldType, declare

__all__ = [
    "ALERT_FIELDS",
    "ALERT_MEASUREMENT",
    "ANOMALY_DETAILS",
    "PATTERN_DETAIL",
    "VERDICTS",
    "Alert",
    "Path",
    "Verdict",
    "alert_id",
    "alert_topic",
]

ALERT_FIELDS: Final[dict[str, FieldType]] = {
    "id": "string",
    "message": "string",
    "first_ms": "integer",
    "last_ms": "integer",
    "readings": "integer",
    "reading_ids": "string",
    "verdict": "string",
    "refers": "string",
}
"""The fields of every alert (``verdict`` and ``refers`` only on a rule with ``on = "both"``)."""
ANOMALY_DETAILS: Final[dict[str, FieldType]] = {
    "metric": "string",
    "value": "float",
    "score": "float",
    "mean": "float",
    "std": "float",
    "z": "float",
    "old_mean": "float",
    "new_mean": "float",
    "after_ms": "integer",
    "gap_ms": "integer",
    "metrics": "string",
    "devices": "string",
    "count": "integer",
    "group": "string",
    "baseline": "float",
    "deviation": "float",
}
"""The details anomaly alerts (docs/anomaly.md) and group-relative alerts (docs/cep.md: ``metric``, ``group``,
``value``, ``baseline``, ``deviation``, ``count``) may carry, each with its one type."""
PATTERN_DETAIL: Final = rf"(?P<step>{METRIC_PATTERN})\.(?P<metric>{METRIC_PATTERN})"
"""A pattern alert's details: ``<step>.<metric>``, the value of a metric its conditions looked at (of the
metric's declared type). The dot keeps them apart from every other field and from each other."""

ALERT_MEASUREMENT: Final = declare(
    "alert",
    tags=("source", "name", "site", "key", "severity", "path"),
    fields={**ALERT_FIELDS, **ANOMALY_DETAILS},
    open_fields=PATTERN_DETAIL,
    open_type=METRIC,
    time="the last reading's event time (+ a sub-millisecond offset from the id)",
    module=__name__,
)
Severity = Literal["info", "warning", "critical"]
Path = Literal["", "arrival", "event_time"]
"""Which path raised an alert: ``arrival`` (fast: processing order), ``event_time`` (after the watermark) on a
rule with ``on = "both"``; empty on a rule with one path, ``event_time`` (today's alerts, unchanged)."""
Verdict = Literal["", "confirmed", "retracted", "missed_fast"]
VERDICTS: Final[tuple[Verdict, ...]] = ("confirmed", "retracted", "missed_fast")
"""On a rule with ``on = "both"``: an event-time alert ``confirmed`` an earlier arrival alert, or says it was
``missed_fast`` (no arrival alert to confirm); a ``retracted`` record (``path = arrival``) withdraws an arrival
alert that the event-time path did not confirm once its watermark passed (docs/cep.md, "Fast alerts")."""


def alert_id(
    source: str,
    name: str,
    key: str,
    readings: Sequence[ReadingKey],
    path: Path = "",
    verdict: Verdict = "",
    about: str = "",
) -> str:
    """16 hex digits that depend only on what the alert is about, never on when it was raised.

    An arrival alert (and its retraction) gets its own id; an event-time alert keeps the id it has without the
    fast path, so turning ``on = "both"`` on changes no event-time alert."""
    h = hashlib.blake2b(digest_size=8)
    h.update(f"{source}\0{name}\0{key}\0".encode())
    if path == "arrival":
        h.update(b"arrival\0retracted\0" if verdict == "retracted" else b"arrival\0")
    for device, boot, seq in sorted(readings):
        h.update(f"{device}/{boot}/{seq};".encode())
    if about:  # what an alert without readings is about (a group-relative alert: its window and group)
        h.update(f"@{about}".encode())
    return h.hexdigest()


def alert_topic(prefix: str, site: str, source: str) -> str:
    return f"{prefix}/_gateway/alerts/{site}/{source}"


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert. ``key`` is what it is keyed by (a device, or a group such as a site; a join's key).

    ``readings`` are the identities (device, boot, seq) of the readings that caused it; ``first_ms``
    and ``last_ms`` their first and last event times. ``details`` carries source-specific values: for
    anomalies some of :data:`ANOMALY_DETAILS` (a z-score, a baseline), for patterns ``<step>.<metric>``, the
    matched steps' values. A detail never replaces one of the alert's own fields.
    """

    source: Literal["pattern", "anomaly", "join", "relative"]
    name: str
    site: str
    key: str
    severity: Severity
    first_ms: int
    last_ms: int
    readings: tuple[ReadingKey, ...]
    message: str = ""
    details: Mapping[str, MetricValue] = field(default_factory=dict)
    path: Path = ""
    verdict: Verdict = ""
    refers: str = ""
    """The id of the arrival alert a ``confirmed`` alert confirms or a ``retracted`` record retracts."""

    @property
    def id(self) -> str:
        # a group-relative alert is about a window, not about readings: its window and group say which
        about = f"{self.first_ms}/{self.details.get('group', '')}" if self.source == "relative" else ""
        return alert_id(self.source, self.name, self.key, self.readings, self.path, self.verdict, about)

    def to_line(self) -> str:
        fields: dict[str, MetricValue] = dict(self.details)
        fields.update({
            "id": self.id,
            "message": self.message,
            "first_ms": self.first_ms,
            "last_ms": self.last_ms,
            "readings": len(self.readings),
            "reading_ids": ",".join(f"{d}/{b}/{s}" for d, b, s in self.readings)[:1000],
        })  # fmt: skip
        if self.verdict:
            fields["verdict"] = self.verdict
        if self.refers:
            fields["refers"] = self.refers
        tags = {"source": self.source, "name": self.name, "site": self.site, "key": self.key,
                "severity": self.severity}  # fmt: skip
        if self.path:
            tags["path"] = self.path
        # at the last reading's event time, plus a sub-millisecond offset taken from the id: two alerts of
        # one series in the same millisecond stay apart, and a replayed alert lands on itself
        offset = int(self.id[:8], 16) % NS_PER_MS
        return line(ALERT_MEASUREMENT, tags, fields, self.last_ms * NS_PER_MS + offset)

    def to_json(self) -> bytes:
        doc = {
            "v": 1,
            "id": self.id,
            "source": self.source,
            "name": self.name,
            "site": self.site,
            "key": self.key,
            "severity": self.severity,
            "first_ms": self.first_ms,
            "last_ms": self.last_ms,
            "readings": [list(r) for r in self.readings],
            "message": self.message,
            "details": dict(self.details),
        }
        if self.path:
            doc["path"] = self.path
        if self.verdict:
            doc["verdict"] = self.verdict
        if self.refers:
            doc["refers"] = self.refers
        return json.dumps(doc, separators=(",", ":")).encode()
