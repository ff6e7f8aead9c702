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

import msgspec

from .lineproto import NS_PER_MS, field, line, reading_time_ns, series
from .model import QUALITIES, DeadLetter, MetricValue, Reading, StatusUpdate
from .protocol import STATUS_FIELDS
from .schema import METRIC, METRIC_PATTERN, declare

__all__ = [
    "DEAD_LETTER",
    "READING",
    "STATUS",
    "dead_letter_line",
    "reading_line",
    "reading_line_reference",
    "status_line",
]

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


_SERIES: dict[str, tuple[str, str]] = {}
"""Device -> its site and the measurement and tags of its ``reading`` points, rendered once (up to _SERIES_MAX
devices)."""
_SERIES_MAX: Final = 100_000
_OWN: Final = frozenset({"boot", "seq", "q"})
_NAMES: dict[str, str] = {}
"""``<escaped metric name>=``, per metric name (up to _SERIES_MAX)."""
_PLAIN: set[str] = set()
"""The names of ``_NAMES`` written as themselves in a line and in JSON (:func:`_plain`)."""
_JSON_TO_FIELDS: Final = bytes.maketrans(b":", b"=")
"""With ``"`` deleted, a plain dict's JSON ``"name":value,...`` made ``name=value,...``."""
_PLAIN_CHARS: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.")
_HUGE: Final = float("inf")
_TINY: Final = 1e-4
_BIG: Final = 1e16
"""A finite float ``x`` with ``x == 0`` or ``_TINY <= abs(x) < _BIG``: msgspec's JSON encoder writes it as ``repr`` does
(outside, ``repr`` writes an exponent as ``1e+16``, msgspec as ``1e16``; tests/gateway/test_points_fast.py holds it)."""
_ENCODE: Final = msgspec.json.Encoder().encode
_ID_MAX: Final = 2**31 - 1
_Q: Final = {q: field("q", q) for q in QUALITIES}


def reading_line(r: Reading) -> str:
    """The ``reading`` point of ``r``: the same text as :func:`reading_line_reference` (a test compares them),
    from the device's series rendered once and each field as :func:`~gateway.lineproto.line` writes it."""
    metrics = r.metrics
    if type(metrics) is dict and metrics:
        for k, v in metrics.items():
            if type(k) is not str or k not in _PLAIN or type(v) is not float:  # a str subclass may compare as any
                break
            a: float = v
            if a < 0.0:
                a = -a
            if not (_TINY <= a < _BIG or a == 0.0):  # a NaN or an infinity too
                break
        else:  # the common reading: its names plain, its values floats msgspec writes as repr does, in one call
            text = _ENCODE(metrics)  # {"name":value,...}: neither a name nor a value holds '"' or ':'
            return _tail(r, _head(r), text[1:-1].translate(_JSON_TO_FIELDS, b'"').decode())
    if not metrics or not _OWN.isdisjoint(metrics):  # never from the decoder (reserved names): the reference's order
        return reading_line_reference(r)
    head = _head(r)
    parts: list[str] = []
    plain: list[float] | None = []  # the values, while each is a float msgspec writes as repr does
    for k, v in metrics.items():
        if type(v) is float and -_HUGE < v < _HUGE:  # finite: the common case, written as line() writes it
            name = _NAMES.get(k)
            if name is None:
                name = field(k, 0.0)[:-3]  # "<escaped name>=" + "0.0"
                if len(_NAMES) < _SERIES_MAX:
                    _NAMES[k] = name
                    if _plain(k, name):
                        _PLAIN.add(k)
            parts.append(name)
            a = v if v >= 0.0 else -v
            if plain is not None and (_TINY <= a < _BIG or a == 0.0):
                plain.append(v)
            else:
                plain = None
        else:
            parts.append(field(k, v))
            plain = None
    if plain is not None:  # every value such a float: all of them written in one call (about 40 ns a value, repr 170)
        texts = _ENCODE(plain).decode()[1:-1].split(",")
        for i in range(len(parts)):
            parts[i] += texts[i]
    else:
        j = 0
        for v in metrics.values():  # the names are in place: each finite float's text after its name
            if type(v) is float and -_HUGE < v < _HUGE:
                parts[j] += repr(v)
            j += 1
    return _tail(r, head, ",".join(parts))


def _head(r: Reading) -> str:
    """The measurement and tags of ``r``'s device's points, rendered once (again when the device moves site)."""
    site, device = r.site, r.device
    if type(site) is not str or type(device) is not str:  # a str subclass may hash and compare as any other
        return series(READING, {"site": site, "device": device})
    known = _SERIES.get(device)
    if known is not None and known[0] == site:
        return known[1]
    head = series(READING, {"site": site, "device": device})
    if known is not None or len(_SERIES) < _SERIES_MAX:
        _SERIES[device] = (site, head)
    return head


def _tail(r: Reading, head: str, fields: str) -> str:
    """The line of ``r`` from its series and its metrics' fields: its own fields and its time after them."""
    boot, seq, q = r.boot, r.seq, r.quality
    if type(boot) is int and type(seq) is int and 0 <= boot <= _ID_MAX and 0 <= seq <= _ID_MAX and q in _Q:
        return f"{head} {fields},boot={boot}i,seq={seq}i,{_Q[q]} {reading_time_ns(r.t_ms, boot, seq)}"
    own = f"{field('boot', boot)},{field('seq', seq)},{field('q', q)}"
    return f"{head} {fields},{own} {reading_time_ns(r.t_ms, boot, seq)}"


def _plain(k: str, name: str) -> bool:
    """Whether the metric name ``k`` (written ``name`` in a line, with its ``=``) is written as itself both in a line
    and in JSON, and holds neither ``"`` nor ``:`` (a reading's own fields never get here: see reading_line)."""
    return type(k) is str and name == k + "=" and all(c in _PLAIN_CHARS for c in k)


def reading_line_reference(r: Reading) -> str:
    """The ``reading`` point of ``r`` through the generic :func:`~gateway.lineproto.line` (the reference)."""
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
