"""What the engine emits: window results and late (or impossible) readings, with their line protocol.

Measurements (documented in ``docs/semantics.md``):

- ``window``: one point per window, key and metric, timestamped at the window *start*; a re-fire after a
  late reading writes the same series and timestamp again with ``revision`` + 1, so it overwrites.
- ``late_reading``: one point per reading and metric that could not go into a window, timestamped at the
  reading's event time (plus the reading's sub-millisecond offset, ``lineproto.reading_time_ns``), with
  ``late_by_ms`` and a ``reason`` tag.

Every field has one type: the aggregates and a late reading's ``value`` are floats whatever the metric's
type (a boolean counts as 1.0 or 0.0), counts, times and revisions integers.
"""

from __future__ import annotations

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
    "WINDOW_MEASUREMENT",
    "Fired",
    "LateReading",
    "Output",
    "WindowResult",
]

_WINDOW_FIELDS: Final[dict[str, FieldType]] = {"count": "integer"}
_WINDOW_FIELDS.update({a: "float" for a in AGGREGATES if a != "count"})
_WINDOW_FIELDS.update({"revision": "integer", "end_ms": "integer", "fired": "string"})
WINDOW_MEASUREMENT: Final = declare(
    "window",
    tags=("window", "site", "device", "metric"),  # device only for device-keyed windows
    fields=_WINDOW_FIELDS,
    time="the window's start",
    module=__name__,
)
LATE_MEASUREMENT: Final = declare(
    "late_reading",
    tags=("window", "site", "device", "metric", "reason"),
    fields={"late_by_ms": "integer", "boot": "integer", "seq": "integer", "watermark_ms": "integer", "value": "float"},
    time="the reading's event time (+ a sub-millisecond offset from its boot and sequence number)",
    module=__name__,
)

Fired = Literal["watermark", "late", "superseded"]

LATE_REASONS: Final[dict[str, str]] = {
    "too_late": "behind the watermark by more than the window's allowed lateness",
    "time_in_future": "event time ahead of the gateway's clock by more than the tolerance",
    "time_too_old": "event time earlier than any synced clock could give",
    "unsynced": "the board's clock was not synced (quality 'u') and the policy is to reject",
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

    ``revision`` counts emissions of this window: 1 on the first firing, + 1 for every re-fire caused by
    a late reading within the allowed lateness. ``fired`` says why it was emitted: ``watermark`` (the
    watermark passed the end), ``late`` (a late reading changed it), ``superseded`` (a session that was
    merged into another one starting earlier: ``count`` is 0 and the point marks the old one dead).

    A plain slotted value (treat it as immutable): the engine emits one per window, key and metric, so it
    is built cheaply - it *is* the metric's :class:`Stat` over the window (the operators fill it in once,
    when they emit it) and ``aggregates`` is computed from that on first access; ``to_line()`` renders the
    point. Built with an ``aggregates`` mapping instead (tests, superseded sessions), its Stat stays empty.
    """

    __slots__ = (
        "_aggs",
        "_names",
        "count",
        "end_ms",
        "fired",
        "key",
        "key_kind",
        "metric",
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

    @property
    def aggregates(self) -> Mapping[str, float]:
        aggs = self._aggs
        if aggs is None:
            aggs = self._aggs = self.result(self._names) if self.n else {}
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
        tags = {"window": self.window, "site": self.site, "metric": self.metric}
        if self.key_kind == "device":
            tags["device"] = self.key
        fields: dict[str, MetricValue] = {"count": self.count}
        for name, v in self.aggregates.items():
            fields[name] = float(v)
        fields["revision"] = self.revision
        fields["end_ms"] = self.end_ms
        fields["fired"] = self.fired
        return line(WINDOW_MEASUREMENT, tags, fields, self.start_ms * NS_PER_MS)


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
