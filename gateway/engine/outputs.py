"""What the engine emits: window results and late (or impossible) readings, with their line protocol.

Measurements (documented in ``docs/semantics.md``):

- ``window``: one point per window, key and metric, timestamped at the window *start*; a re-fire after a
  late reading writes the same series and timestamp again with ``revision`` + 1, so it overwrites, and so
  does the final result a provisional one (``revision`` 0, ``result = "provisional"``).
- ``window_provisional``: the provisional results of windows with ``provisional = "audit"`` once more, each
  at its own timestamp (the window start + its number in nanoseconds), so that nothing overwrites them.
- ``late_reading``: one point per reading and metric that could not go into a window, timestamped at the
  reading's event time (plus the reading's sub-millisecond offset, ``lineproto.reading_time_ns``), with
  ``late_by_ms`` and a ``reason`` tag.

Every field has one type: the aggregates and a late reading's ``value`` are floats whatever the metric's
type (a boolean counts as 1.0 or 0.0), counts, times and revisions integers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

from mypy_extensions import mypyc_attr

from ..lineproto import NS_PER_MS, line, reading_time_ns
from ..model import MetricValue
from ..schema import FieldType, declare
from .aggregates import AGGREGATES, Stat

__all__ = [
    "LATE_MEASUREMENT",
    "LATE_REASONS",
    "PROVISIONAL_MEASUREMENT",
    "RESULT_KINDS",
    "WINDOW_MEASUREMENT",
    "Fired",
    "LateReading",
    "Output",
    "ResultKind",
    "WindowResult",
]

_WINDOW_FIELDS: Final[dict[str, FieldType]] = {"count": "integer"}
_WINDOW_FIELDS.update({a: "float" for a in AGGREGATES if a != "count"})
_WINDOW_FIELDS.update(
    {
        "revision": "integer",
        "end_ms": "integer",
        "fired": "string",
        "result": "string",
        "emitted_ms": "integer",
    }
)
WINDOW_MEASUREMENT: Final = declare(
    "window",
    tags=("window", "site", "device", "metric"),  # device only for device-keyed windows
    fields=_WINDOW_FIELDS,
    time="the window's start",
    module=__name__,
)
PROVISIONAL_MEASUREMENT: Final = declare(
    "window_provisional",
    tags=("window", "site", "device", "metric"),
    fields=_WINDOW_FIELDS,
    time="the window's start + the provisional result's number (1, 2, ...) in nanoseconds",
    module=__name__,
)
LATE_MEASUREMENT: Final = declare(
    "late_reading",
    tags=("window", "site", "device", "metric", "reason"),
    fields={"late_by_ms": "integer", "boot": "integer", "seq": "integer", "watermark_ms": "integer", "value": "float"},
    time="the reading's event time (+ a sub-millisecond offset from its boot and sequence number)",
    module=__name__,
)

Fired = Literal["watermark", "late", "superseded", "early"]
ResultKind = Literal["provisional", "final", "update"]
RESULT_KINDS: Final[tuple[ResultKind, ...]] = ("provisional", "final", "update")
"""A window's results come in this order: provisional (revision 0), final (revision 1), updates (revision > 1)."""

LATE_REASONS: Final[dict[str, str]] = {
    "too_late": "behind the watermark by more than the window's allowed lateness",
    "time_in_future": "event time ahead of the gateway's clock by more than the tolerance",
    "time_too_old": "event time earlier than any synced clock could give",
    "unsynced": "the board's clock was not synced (quality 'u') and the policy is to reject",
    "bad_id": "boot or seq outside 0 .. 2**31 - 1 (the protocol's range; the gateway's decoder refuses it first)",
}
"""Every reason a :class:`LateReading` can carry."""


_RESULT_FIELDS: Final = (
    "window",
    "key_kind",
    "key",
    "site",
    "start_ms",
    "end_ms",
    "metric",
    "count",
    "aggregates",
    "revision",
    "fired",
)


@mypyc_attr(acyclic=True)  # compiled: strings and numbers - no cycle can go through it
class WindowResult(Stat):
    """The aggregates of one metric in one window of one key (a device, or a site).

    ``revision`` counts emissions of this window: 0 for a provisional (early) result, 1 on the first firing,
    + 1 for every re-fire caused by a late reading within the allowed lateness; ``result`` names them:
    ``provisional``, ``final``, ``update``. ``fired`` says why it was emitted: ``early`` (an early trigger),
    ``watermark`` (the watermark passed the end), ``late`` (a late reading changed it), ``superseded`` (a
    session that was merged into another one starting earlier: ``count`` is 0 and the point marks the old one
    dead). ``emitted_ms`` is the gateway time the engine emitted it at (-1: not emitted by an engine), and
    ``provisional_n`` a provisional result's number among its window's (1, 2, ...; 0 for the others).

    A plain slotted value (treat it as immutable): the engine emits one per window, key and metric, so it
    is built cheaply - it *is* the metric's :class:`Stat` over the window (the operators fill it in once,
    when they emit it) and ``aggregates`` is computed from that on first access; ``to_line()`` renders the
    point. Built with an ``aggregates`` mapping instead (tests, superseded sessions), its Stat stays empty.
    """

    __slots__ = (
        "_aggs",
        "_names",
        "count",
        "emitted_ms",
        "end_ms",
        "fired",
        "key",
        "key_kind",
        "metric",
        "provisional_n",
        "revision",
        "site",
        "start_ms",
        "window",
    )

    def __init__(
        self,
        window: str,
        key_kind: Literal["device", "site"],
        key: str,
        site: str,
        start_ms: int,
        end_ms: int,
        metric: str,
        count: int,
        aggregates: Mapping[str, float] | None,
        revision: int,
        fired: Fired,
        _names: tuple[str, ...] = (),
    ) -> None:
        super().__init__()
        self.window = window
        self.key_kind = key_kind
        self.key = key
        self.site = site
        self.start_ms = start_ms
        self.end_ms = end_ms
        self.metric = metric
        self.count = count
        self._aggs = aggregates
        self.revision = revision
        self.fired = fired
        self._names = _names
        self.emitted_ms = -1
        self.provisional_n = 0

    @property
    def result(self) -> ResultKind:
        """``provisional`` (revision 0), ``final`` (revision 1: the first result after the watermark, or a
        superseded provisional session's end), or ``update`` (a re-fire within the allowed lateness)."""
        rev = self.revision
        return "provisional" if rev == 0 else "final" if rev == 1 else "update"

    @property
    def aggregates(self) -> Mapping[str, float]:
        aggs = self._aggs
        if aggs is None:
            aggs = self._aggs = self.aggregate(self._names) if self.n else {}
        return aggs

    def _fields(self) -> tuple[object, ...]:
        return (
            self.window,
            self.key_kind,
            self.key,
            self.site,
            self.start_ms,
            self.end_ms,
            self.metric,
            self.count,
            dict(self.aggregates),
            self.revision,
            self.fired,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, WindowResult):
            return NotImplemented
        return self._fields() == other._fields()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        body = ", ".join(f"{n}={v!r}" for n, v in zip(_RESULT_FIELDS, self._fields(), strict=True))
        return f"WindowResult({body})"

    def to_line(self) -> str:
        tags, fields = self._point()
        return line(WINDOW_MEASUREMENT, tags, fields, self.start_ms * NS_PER_MS)

    def to_audit_line(self) -> str:
        """A provisional result's point in ``window_provisional``: its own timestamp, never overwritten."""
        tags, fields = self._point()
        return line(PROVISIONAL_MEASUREMENT, tags, fields, self.start_ms * NS_PER_MS + self.provisional_n)

    def _point(self) -> tuple[dict[str, str], dict[str, MetricValue]]:
        """The point's tags and fields (the same in ``window`` and ``window_provisional``)."""
        tags = {"window": self.window, "site": self.site, "metric": self.metric}
        if self.key_kind == "device":
            tags["device"] = self.key
        fields: dict[str, MetricValue] = {"count": self.count}
        for name, v in self.aggregates.items():
            fields[name] = float(v)
        fields["revision"] = self.revision
        fields["end_ms"] = self.end_ms
        fields["fired"] = self.fired
        fields["result"] = self.result
        if self.emitted_ms >= 0:
            fields["emitted_ms"] = self.emitted_ms
        return tags, fields

    def to_payload(self) -> bytes:
        """The result as a JSON object (the window's MQTT output, ``publish = true``)."""
        doc: dict[str, object] = {
            "v": 1,
            "window": self.window,
            "site": self.site,
            self.key_kind: self.key,
            "metric": self.metric,
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
            "result": self.result,
            "revision": self.revision,
            "fired": self.fired,
            "count": self.count,
            "aggregates": {k: float(v) if math.isfinite(v) else None for k, v in self.aggregates.items()},
        }
        if self.emitted_ms >= 0:
            doc["emitted_ms"] = self.emitted_ms
        return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()


@dataclass(frozen=True, slots=True)
class LateReading:
    """A reading (one metric of it) routed to the late side output instead of a window.

    ``window`` is empty when the reading was refused before any window saw it (impossible or unsynced
    time); then ``metric`` is empty too and the reading is reported once. ``late_by_ms`` is how far the
    event time was behind the watermark (0 for refused readings); ``watermark_ms`` the watermark then
    (``None`` if there was none).
    """

    window: str
    site: str
    device: str
    metric: str
    t_ms: int
    boot: int
    seq: int
    late_by_ms: int
    watermark_ms: int | None
    reason: str
    value: float | None = None

    def to_line(self) -> str:
        tags = {
            "window": self.window,
            "site": self.site,
            "device": self.device,
            "metric": self.metric,
            "reason": self.reason,
        }
        fields: dict[str, MetricValue] = {"late_by_ms": self.late_by_ms, "boot": self.boot, "seq": self.seq}
        if self.watermark_ms is not None:
            fields["watermark_ms"] = self.watermark_ms
        if self.value is not None:
            fields["value"] = float(self.value)
        return line(LATE_MEASUREMENT, tags, fields, reading_time_ns(self.t_ms, self.boot, self.seq))


Output = WindowResult | LateReading
"""Anything the engine emits."""
