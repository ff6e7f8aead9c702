"""Messages that break the wire contract, each with the reason code the gateway must reject it with.

``Malformer.build(number, at_ms)`` cycles through :data:`MALFORMED_KINDS` (and, on later rounds,
through the variants of a kind). Readings inside use sequence numbers past the device's valid range, so
that a gateway accepting one by mistake shows an extra reading instead of a hidden duplicate.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Final

from .devices import METRIC_GENERATORS, Device
from .wire import MAX_BYTES, MAX_READINGS, Outgoing, WireReading, dumps

__all__ = ["MALFORMED_KINDS", "ExpectedMalformed", "Malformer"]

MALFORMED_KINDS: Final[tuple[str, ...]] = (
    "bad_json",
    "bad_utf8",
    "oversize",
    "version",
    "device_mismatch",
    "schema",
    "bad_topic",
    "too_many_readings",
)
"""The kinds, in the order they are cycled through; each name is also the expected reason code."""


@dataclass(frozen=True, slots=True)
class ExpectedMalformed:
    """A message the gateway must reject whole. ``device`` is the board that sent it; ``defect`` names
    the variant (``truncated_json``, ``version_missing``, ``extra_level``...)."""

    topic: str
    device: str
    defect: str
    reason: str
    size: int

    def to_json(self) -> dict[str, object]:
        return asdict(self)


class Malformer:
    """Builds malformed messages for a fleet, drawing from its own random stream."""

    def __init__(
        self,
        prefix: str,
        devices: Sequence[Device],
        metric: str,
        readings_per_device: int,
        rng: random.Random,
    ) -> None:
        self.prefix = prefix
        self.devices = devices
        self.metric = metric
        self.rng = rng
        self.next_seq = {d.device: d.first_seq + readings_per_device for d in devices}

    def _readings(self, dev: Device, count: int, t: int) -> list[dict[str, object]]:
        out: list[dict[str, object]] = []
        for _ in range(count):
            seq = self.next_seq[dev.device]
            self.next_seq[dev.device] = seq + 1
            value = round(METRIC_GENERATORS[self.metric](self.rng, dev, t), 2)
            out.append(WireReading(dev.boot, seq, t, "s", {self.metric: value}).as_dict())
        return out

    def build(self, number: int, at_ms: int) -> tuple[Outgoing, ExpectedMalformed]:
        """The ``number``-th malformed message, sent (and stamped) at ``at_ms`` by a random device."""
        kind = MALFORMED_KINDS[number % len(MALFORMED_KINDS)]
        variant = number // len(MALFORMED_KINDS)
        dev = self.rng.choice(self.devices)
        t, d, p, s = at_ms, dev.device, self.prefix, dev.site
        topic = f"{p}/{s}/{d}/readings"
        defect = kind
        payload: bytes
        if kind == "bad_json":
            whole = dumps({"v": 1, "dev": d, "r": self._readings(dev, 1, t)})
            payload = whole[: len(whole) // 2]
            defect = "truncated_json"
        elif kind == "bad_utf8":
            payload = b'{"v":1,"dev":"%s","r":[],"flushed":%d,"note":"\xff\xfe"}' % (d.encode(), t)
        elif kind == "oversize":
            payload = dumps({"v": 1, "dev": d, "r": self._readings(dev, 1, t), "pad": "p" * MAX_BYTES})
        elif kind == "version":
            readings = self._readings(dev, 1, t)
            defect, doc = [
                ("version_2", {"v": 2, "dev": d, "r": readings}),
                ("version_missing", {"dev": d, "r": readings}),
                ("version_string", {"v": "1", "dev": d, "r": readings}),
            ][variant % 3]
            payload = dumps(doc)
        elif kind == "device_mismatch":
            others = [o.device for o in self.devices if o.device != d]
            claimed = self.rng.choice(others) if others else f"{d}-x"
            payload = dumps({"v": 1, "dev": claimed, "r": self._readings(dev, 1, t)})
        elif kind == "schema":
            defect, body = [
                ("r_not_a_list", {"v": 1, "dev": d, "r": self._readings(dev, 1, t)[0]}),
                ("empty_without_flushed", {"v": 1, "dev": d, "r": []}),
                ("flushed_not_an_integer", {"v": 1, "dev": d, "r": self._readings(dev, 1, t), "flushed": "soon"}),
                ("top_level_list", [1, d, t]),
            ][variant % 4]
            payload = dumps(body)
        elif kind == "bad_topic":
            defect, topic, named = [
                ("unknown_kind", f"{p}/{s}/{d}/telemetry", d),
                ("extra_level", f"{p}/{s}/{d}/readings/extra", d),
                ("bad_device_name", f"{p}/{s}/-{d}/readings", f"-{d}"),
            ][variant % 3]
            payload = dumps({"v": 1, "dev": named, "r": self._readings(dev, 1, t)})
        else:  # too_many_readings, kept under the size limit so that the count is what is wrong
            payload = dumps({"v": 1, "dev": d, "r": self._readings(dev, MAX_READINGS + 1, t)})
        assert kind == "oversize" or len(payload) <= MAX_BYTES, (kind, len(payload))
        out = Outgoing(topic, payload, "malformed", kind, d, at_ms)
        return out, ExpectedMalformed(topic, d, defect, kind, len(payload))
