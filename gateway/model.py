"""Values that flow through the gateway: readings, batches, status updates and dead letters.

All of them are immutable. Times are integer milliseconds since the Unix epoch, UTC.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, Final, Literal

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


@dataclass(frozen=True, slots=True, init=False)  # its own __init__, the dataclass's in half the time
class Reading:
    """One sensor reading, timestamped on the board (event time)."""

    site: str
    device: str
    boot: int
    seq: int
    t_ms: int
    quality: Quality
    metrics: Mapping[str, MetricValue]

    def __init__(
        self,
        site: str,
        device: str,
        boot: int,
        seq: int,
        t_ms: int,
        quality: Quality,
        metrics: Mapping[str, MetricValue],
    ) -> None:
        # what the frozen dataclass's __init__ does (object.__setattr__ per field), through each slot's descriptor:
        # about 400 instead of 800 ns, a reading (tests/gateway/test_model_init.py holds it to the dataclass's)
        _R[0](self, site)
        _R[1](self, device)
        _R[2](self, boot)
        _R[3](self, seq)
        _R[4](self, t_ms)
        _R[5](self, quality)
        _R[6](self, metrics)

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


@dataclass(frozen=True, slots=True, init=False)  # its own __init__, as Reading's
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

    def __init__(
        self,
        site: str,
        device: str,
        topic: str,
        received_ms: int,
        readings: tuple[Reading, ...],
        rejected: tuple[DeadLetter, ...],
        flushed_ms: int | None = None,
    ) -> None:
        _B[0](self, site)
        _B[1](self, device)
        _B[2](self, topic)
        _B[3](self, received_ms)
        _B[4](self, readings)
        _B[5](self, rejected)
        _B[6](self, flushed_ms)


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    """A device's retained status (online, sleeping or offline, with health figures)."""

    site: str
    device: str
    topic: str
    received_ms: int
    state: Literal["online", "sleeping", "offline"]
    fields: Mapping[str, MetricValue]


def _setters(cls: type) -> tuple[Callable[[Any, Any], None], ...]:
    """The ``__set__`` of each field's slot of ``cls``, in the order of its fields (what ``object.__setattr__``
    calls)."""
    return tuple(cls.__dict__[f.name].__set__ for f in fields(cls))


_R: Final = _setters(Reading)
_B: Final = _setters(Batch)
