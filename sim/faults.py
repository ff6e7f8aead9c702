"""Faults injected into a simulated fleet: sensor anomalies with labelled spans, and scripted event
sequences for pattern (CEP) alerts, each with the ground truth of what was injected.

An :class:`InjectedAnomaly` is the small interface the fleet model needs: *kind, device, metric, start,
end, parameters*. :func:`apply_anomaly` changes one value (or drops it, ``None``) at an event time inside
the span. The injections here are the few the scenarios use; a fuller library of pure injection
functions can stand behind the same interface.

Times in the specs are offsets from the run's start; :meth:`InjectedAnomaly.absolute` gives event times.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Final

__all__ = [
    "ANOMALY_KINDS",
    "COLD_C",
    "CORRELATION_KINDS",
    "PAIRED_KINDS",
    "SEQUENCE_KINDS",
    "AnomalyState",
    "Correlation",
    "InjectedAnomaly",
    "ScriptedSequence",
    "SequenceEvent",
    "apply_anomaly",
    "sequence_events",
    "sequence_metric_types",
]

ANOMALY_KINDS: Final = ("spike", "level_shift", "drift", "stuck", "dropout", "noise_burst")
SEQUENCE_KINDS: Final = (
    "door_left_open", "door_closed", "three_failures", "two_failures", "pump_fault", "pump_fault_apart",
)  # fmt: skip
PAIRED_KINDS: Final = ("pump_fault", "pump_fault_apart")
"""Correlated sequences seen by two boards: ``device`` reads the pump's overcurrent, ``partner`` the flow falling;
the alert is the group's (``key = "group"`` pattern ``pump_fault``), keyed by ``group``."""
PUMP_FAULT_WITHIN_MS: Final = 60_000
"""The pump_fault pattern's span: the flow must fall within a minute of the overcurrent."""
CORRELATION_KINDS: Final = ("door_then_cold",)
COLD_C: Final = 5.0
"""The temperature a ``door_then_cold`` correlation's thermometer reads (far below the simulated 17-25 degrees)."""

DOOR_OPEN_LIMIT_MS: Final = 300_000
"""A door open for longer than this (5 minutes) with no "closed" is a door left open."""
FAILURE_WINDOW_MS: Final = 300_000
"""Three FAILED statuses within this span (5 minutes) raise an alert."""


@dataclass(frozen=True, slots=True)
class InjectedAnomaly:
    """One injected sensor fault on ``[start_ms, end_ms)`` of one device's metric.

    ``params``: ``magnitude`` (spike: added once at the first reading of the span; level_shift: added
    throughout; drift: added per hour since the start; noise_burst: the standard deviation of the noise
    added). ``stuck`` repeats the first value of the span; ``dropout`` drops the metric from every reading.
    """

    kind: str
    device: str
    metric: str
    start_ms: int
    end_ms: int
    params: Mapping[str, float] = field(default_factory=dict)

    def absolute(self, start_ms: int) -> InjectedAnomaly:
        """With the span moved from run offsets to event times."""
        return replace(self, start_ms=start_ms + self.start_ms, end_ms=start_ms + self.end_ms)

    def covers(self, device: str, metric: str, t_ms: int) -> bool:
        return device == self.device and metric == self.metric and self.start_ms <= t_ms < self.end_ms

    def to_json(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "device": self.device,
            "metric": self.metric,
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
            "params": dict(self.params),
        }


@dataclass(slots=True)
class AnomalyState:
    """What an injection remembers while it runs (the stuck value, whether the spike was placed)."""

    stuck: float | None = None
    spiked: bool = False
    labelled: list[int] = field(default_factory=list)
    """Event times of the readings it changed: the labelled points."""


def apply_anomaly(a: InjectedAnomaly, state: AnomalyState, value: float, t_ms: int, rng: random.Random) -> float | None:
    """The value at ``t_ms`` with the anomaly applied; ``None`` drops the metric. Call in event-time order."""
    mag = a.params.get("magnitude", 10.0)
    out: float | None
    if a.kind == "spike":
        if state.spiked:
            return value
        state.spiked = True
        out = value + mag
    elif a.kind == "level_shift":
        out = value + mag
    elif a.kind == "drift":
        out = value + mag * (t_ms - a.start_ms) / 3_600_000
    elif a.kind == "stuck":
        if state.stuck is None:
            state.stuck = value
        out = state.stuck
    elif a.kind == "dropout":
        out = None
    elif a.kind == "noise_burst":
        out = value + rng.gauss(0.0, mag)
    else:  # pragma: no cover - kinds are checked when the scenario is parsed
        raise ValueError(f"unknown anomaly kind {a.kind!r}")
    if out is not None and not math.isfinite(out):  # pragma: no cover - defensive
        out = value
    state.labelled.append(t_ms)
    return out


@dataclass(frozen=True, slots=True)
class SequenceEvent:
    """One reading a scripted sequence adds: at ``offset_ms`` after its start, ``metric`` = ``value``."""

    offset_ms: int
    metric: str
    value: str
    partner: bool = False
    """Read by the sequence's partner board, not its device (a correlated sequence)."""


@dataclass(frozen=True, slots=True)
class ScriptedSequence:
    """A scripted event sequence on one device at ``at_ms`` (a run offset, then an event time)."""

    kind: str
    device: str
    at_ms: int
    partner: str = ""
    """A correlated sequence's second board (:data:`PAIRED_KINDS`)."""
    group: str = ""
    """A correlated sequence's group: the key of the alert it must (or must not) raise."""

    @property
    def expect_alert(self) -> bool:
        """Whether the sequence should raise a pattern alert (the others are near misses)."""
        return self.kind in ("door_left_open", "three_failures", "pump_fault")

    @property
    def pattern(self) -> str:
        """The pattern this sequence exercises (``gateway/examples/gateway.toml``'s, or the group pattern
        ``pump_fault`` of the ``pump-group`` scenario)."""
        if self.kind.startswith("pump"):
            return "pump_fault"
        return "door_left_open" if self.kind.startswith("door") else "failed_3x_5m"

    def events(self) -> tuple[SequenceEvent, ...]:
        return sequence_events(self.kind)

    def events_of(self, device: str) -> tuple[SequenceEvent, ...]:
        """The readings ``device`` takes for this sequence (its device's, or its partner's)."""
        return tuple(e for e in self.events() if (e.partner and device == self.partner) or
                     (not e.partner and device == self.device))  # fmt: skip

    def to_json(self) -> dict[str, object]:
        doc: dict[str, object] = {
            "kind": self.kind,
            "pattern": self.pattern,
            "device": self.device,
            "at_ms": self.at_ms,
            "expect_alert": self.expect_alert,
            "events": [[self.at_ms + e.offset_ms, e.metric, e.value] for e in self.events()],
        }
        if self.partner:  # a correlated sequence: its alert is its group's
            doc["partner"] = self.partner
            doc["key"] = self.group
            doc["devices"] = [self.partner if e.partner else self.device for e in self.events()]
        return doc


@dataclass(frozen=True, slots=True)
class Correlation:
    """Correlated events on two devices: ``door_then_cold`` opens a door on ``device`` at ``at_ms`` (a run offset,
    then an event time) and, ``after_ms`` later, the thermometer ``other`` reads :data:`COLD_C`. Each is an extra
    reading carrying only that metric. Whether a join pairs them is for the gateway's ``[[joins]]`` to say (the
    ground truth is the brute-force join of the readings, ``sim/joinref.py``)."""

    kind: str
    device: str
    other: str
    at_ms: int
    after_ms: int

    def events(self) -> tuple[tuple[str, int, dict[str, str | float]], ...]:
        """``(device, event time, metrics)`` of each reading it adds."""
        return (
            (self.device, self.at_ms, {"door": "open"}),
            (self.other, self.at_ms + self.after_ms, {"temp_c": COLD_C}),
        )

    def to_json(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "device": self.device,
            "other": self.other,
            "at_ms": self.at_ms,
            "after_ms": self.after_ms,
            "events": [[d, t, m] for d, t, m in self.events()],
        }


def sequence_metric_types(sequences: Iterable[ScriptedSequence]) -> dict[str, list[str]]:
    """The ``[metric_types]`` table a gateway needs to accept these sequences' readings: their metrics
    (``door``, ``status``) are strings, and a gateway takes an undeclared metric for a float."""
    used = sorted({e.metric for q in sequences for e in q.events()})
    return {"string": used} if used else {}


def sequence_events(kind: str) -> tuple[SequenceEvent, ...]:
    """The readings of each sequence kind, relative to its start."""
    if kind == "door_left_open":  # open, and closed only after 8 minutes (> 5)
        return (SequenceEvent(0, "door", "open"), SequenceEvent(480_000, "door", "closed"))
    if kind == "door_closed":  # open for 2 minutes: no alert
        return (SequenceEvent(0, "door", "open"), SequenceEvent(120_000, "door", "closed"))
    if kind == "three_failures":  # three FAILED within 2.5 minutes, with an OK in between
        return (
            SequenceEvent(0, "status", "FAILED"),
            SequenceEvent(45_000, "status", "OK"),
            SequenceEvent(60_000, "status", "FAILED"),
            SequenceEvent(150_000, "status", "FAILED"),
        )
    if kind == "two_failures":  # the third one comes after 7 minutes: no alert
        return (
            SequenceEvent(0, "status", "FAILED"),
            SequenceEvent(60_000, "status", "FAILED"),
            SequenceEvent(420_000, "status", "FAILED"),
        )
    if kind == "pump_fault":  # overcurrent on one board, the flow falls 20 s later on the other: an alert
        return (SequenceEvent(0, "pump", "overcurrent"), SequenceEvent(20_000, "flow", "low", partner=True))
    if kind == "pump_fault_apart":  # the flow falls 3 minutes later, past the pattern's minute: no alert
        return (SequenceEvent(0, "pump", "overcurrent"), SequenceEvent(180_000, "flow", "low", partner=True))
    raise ValueError(f"unknown sequence kind {kind!r}")
