"""What a simulated board puts on the wire (``docs/protocol.md``, contract v1): canonical encoders and
the :class:`Outgoing` message.

Payloads are in the canonical form the firmware produces: compact separators, keys ``v, dev, r,
flushed`` and ``b, s, t, q, m``. The contract's bounds are copied here on purpose rather than imported
from the gateway, so that a change on one side shows up as a failing cross-check instead of silently
moving both.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal, NamedTuple

__all__ = [
    "MAX_BYTES",
    "MAX_METRICS",
    "MAX_READINGS",
    "MIN_TIME_MS",
    "NAME_RE",
    "UNSET_RTC_MS",
    "Kind",
    "MetricValue",
    "Outgoing",
    "WireReading",
    "dumps",
    "encode_batch",
    "encode_status",
]

MAX_BYTES: Final = 8192
MAX_READINGS: Final = 64
MAX_METRICS: Final = 16
MIN_TIME_MS: Final = 1_577_836_800_000  # 2020-01-01T00:00:00Z
UNSET_RTC_MS: Final = 946_684_800_000  # 2000-01-01T00:00:00Z, an ESP32 RTC that was never set
NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}")
"""Site and device names."""

Kind = Literal["batch", "duplicate", "malformed", "status"]
MetricValue = float | int | bool | str


class WireReading(NamedTuple):
    """One reading as a board puts it on the wire (boot, sequence, event time, clock quality, metrics)."""

    b: int
    s: int
    t: int
    q: str
    m: dict[str, MetricValue]

    def as_dict(self) -> dict[str, object]:
        """In the canonical key order ``b, s, t, q, m``."""
        return {"b": self.b, "s": self.s, "t": self.t, "q": self.q, "m": self.m}


def dumps(doc: object) -> bytes:
    """Compact JSON; NaN and Infinity are written bare, as MicroPython's json does."""
    return json.dumps(doc, separators=(",", ":"), allow_nan=True).encode("utf-8")


def encode_batch(device: str, readings: Sequence[WireReading], flushed: int | None = None) -> bytes:
    """A readings message in canonical form."""
    doc: dict[str, object] = {"v": 1, "dev": device, "r": [r.as_dict() for r in readings]}
    if flushed is not None:
        doc["flushed"] = flushed
    return dumps(doc)


def encode_status(device: str, state: str, fields: Mapping[str, MetricValue]) -> bytes:
    """A status message: ``v, dev, state`` then the fields in the order given."""
    return dumps({"v": 1, "dev": device, "state": state, **fields})


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One MQTT message to publish.

    ``expect_reason`` is the code the gateway must reject the whole message with (``None`` when it is
    accepted). ``at_ms`` is the event time at which a board would send it, which orders a plan;
    ``readings`` counts the valid readings inside, ``rejects`` gives the reason of each reading inside
    that the gateway must dead-letter alone.
    """

    topic: str
    payload: bytes
    kind: Kind
    expect_reason: str | None = None
    device: str = ""
    at_ms: int = 0
    readings: int = 0
    rejects: tuple[str, ...] = ()

    @property
    def retain(self) -> bool:
        """Statuses are retained; everything else is not."""
        return self.kind == "status"
