"""Values that flow through the gateway: readings, batches, status updates and dead letters.

All of them are immutable. Times are integer milliseconds since the Unix epoch, UTC.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "QUALITIES",
    "Batch",
    "DeadLetter",
    "MetricValue",
    "Quality",
    "Reading",
    "ReadingKey",
    "StatusUpdate",
]

MetricValue = float | int | bool | str
Quality = Literal["s", "c", "u"]
QUALITIES: tuple[Quality, ...] = ("s", "c", "u")
"""Clock-quality marks: synced, corrected after a later sync, unsynced."""

ReadingKey = tuple[str, int, int]
"""A reading's identity across sleep, reboot and retransmission: (device, boot, seq)."""


@dataclass(frozen=True, slots=True)
class Reading:
    """One sensor reading, timestamped on the board (event time)."""

    site: str
    device: str
    boot: int
    seq: int
    t_ms: int
    quality: Quality
    metrics: Mapping[str, MetricValue]

    @property
    def key(self) -> ReadingKey:
        return (self.device, self.boot, self.seq)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Something the gateway could not accept, with the reason, kept so that nothing is lost unseen.

    ``index`` is the reading's position in its batch for a rejected reading, ``None`` when the whole
    message was rejected. ``site`` and ``device`` are ``None`` when the topic did not name them validly.
    """

    reason: str
    detail: str
    topic: str
    received_ms: int
    size: int
    excerpt: str
    site: str | None = None
    device: str | None = None
    index: int | None = None


@dataclass(frozen=True, slots=True)
class Batch:
    """A decoded readings message: the readings that passed validation and those that did not.

    ``flushed_ms``, when present, is the board's promise that every reading it took with an event
    time at or before it has now been sent.
    """

    site: str
    device: str
    topic: str
    received_ms: int
    readings: tuple[Reading, ...]
    rejected: tuple[DeadLetter, ...]
    flushed_ms: int | None = None


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    """A device's retained status (online, sleeping or offline, with health figures)."""

    site: str
    device: str
    topic: str
    received_ms: int
    state: Literal["online", "sleeping", "offline"]
    fields: Mapping[str, MetricValue]
