"""The wire contract, version 1 (``docs/protocol.md``): topic parsing and message decoding.

Pure and synchronous: ``decode(topic, payload, received_ms)`` returns a :class:`Batch` or a
:class:`StatusUpdate`, or raises :class:`DecodeError` with a stable reason code when the whole message
must be rejected. A bad reading inside an otherwise good batch does not sink its neighbours: it is
returned in ``Batch.rejected`` with its own reason.

``decode_reference`` is the decoder in plain Python (``json`` and checks field by field), and the
definition of what a message decodes to. ``decode`` gives the same result: a readings message whose every
reading is accepted is parsed and its fields' types and ranges checked in one pass by msgspec's JSON
decoder against the contract's shape (``_WireBatch``), its metrics checked as the reference
does. Anything else is decoded by ``decode_reference``, whose result or error is the answer: a message msgspec
refuses (it is stricter: no NaN token, no lone surrogate, a float where an integer is wanted), one it would
read where ``json`` does not (an integer of more digits than Python's ``int`` converts, in a field msgspec
skips), a reading the reference would reject, a status. ``EDGEKIT_ENGINE=pure`` makes ``decode`` the
reference alone. ``tests/gateway/test_decode_fast.py`` compares the two over every JSON value.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Final, Generic, TypeAlias, TypeVar

import msgspec

from .errors import DecodeError
from .model import QUALITIES, Batch, DeadLetter, MetricValue, Quality, Reading, StatusUpdate
from .schema import NO_TYPES, FieldType, MetricTypes, type_of_value

__all__ = [
    "PROTOCOL_VERSION",
    "REASONS",
    "RESERVED_METRICS",
    "RESERVED_STATUS_FIELDS",
    "STATUS_FIELDS",
    "Limits",
    "TopicInfo",
    "check_string",
    "dead_letter_for",
    "decode",
    "decode_reference",
    "excerpt",
    "metric_hint",
    "parse_topic",
    "typed_value",
]

PROTOCOL_VERSION: Final = 1

NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}")
METRIC_RE: Final = re.compile(r"[a-z][a-z0-9_]{0,31}")
RESERVED_METRICS: Final = frozenset({"boot", "seq", "q", "rev", "time", "site", "device"})
"""Names a metric may not have: the ``reading`` measurement's own fields and tags, and ``time`` (InfluxDB
drops a field so named without an error; a field named like a tag hides the tag in every query)."""
RESERVED_STATUS_FIELDS: Final = frozenset({"time", "site", "device"})
"""Names a status field may not have, for the same reasons (``device_status`` is tagged by site and device)."""
STATUS_FIELDS: Final[dict[str, FieldType]] = {
    "state": "string",
    "boot": "integer",
    "t": "integer",
    "clock": "string",
    "sleep_s": "integer",
    "battery_mv": "integer",
    "buf": "integer",
    "buf_cap": "integer",
    "dropped": "integer",
    "fw": "string",
    "drift_ppm": "float",
    "untimed": "integer",
    "brownouts": "integer",
    "cfg": "string",
    "ota": "string",
    "ack": "string",
    "ack_err": "string",
}
"""The status fields docs/protocol.md documents, with their types; any other takes its type from the
``[metric_types]`` declarations (a float unless declared otherwise)."""
STATES: Final = ("online", "sleeping", "offline")
INT64_MAX: Final = 2**63 - 1
ID_MAX: Final = 2**31 - 1
MAX_SLEEP_S: Final = 31 * 86_400
"""The longest sleep interval a status may announce (31 days)."""

REASONS: Final[dict[str, str]] = {
    "oversize": "payload larger than the maximum message size",
    "bad_utf8": "payload is not valid UTF-8",
    "bad_json": "payload is not JSON (or is nested too deeply)",
    "bad_topic": "topic does not match <prefix>/<site>/<device>/<kind>",
    "version": "unsupported protocol version",
    "schema": "a field is missing, of the wrong type or out of its range",
    "device_mismatch": "the payload's device differs from the topic's",
    "unknown_device": "the device is not in the gateway's device list",
    "too_many_devices": "a new device, and the gateway already keeps state for devices.max_devices devices",
    "site_mismatch": "the device is bound to another site (where it was first admitted, or devices.sites)",
    "too_many_readings": "more readings in one message than allowed",
    "non_finite": "a metric value is NaN or infinite",
    "bad_string": "a string holds a control character or a lone surrogate (not UTF-8)",
    "type_mismatch": "a value of another kind than its metric's (or status field's) declared type",
    "time_too_old": "event time earlier than any synced clock could give",
    "time_in_future": "event time ahead of the gateway's clock by more than the tolerance",
    "too_many_metrics": "the reading's new metric names would take its device past devices.max_metric_names",
    "stale_boot": "a reading of a boot the gateway no longer tracks, at or before the latest time of a forgotten boot",
    "stale_seq": "a sequence number below the ranges the gateway still tracks for its boot",
    "internal": "the gateway failed on this message (a bug: the log line has the traceback)",
    "influx_refused": "InfluxDB refused the point (its message is the detail; the payload is the line)",
    "unwritable": "the InfluxDB writer could not send the point (the error is the detail; the payload is the line)",
    "bad_result": "sink-only mode: a line of a Flink job's result file that is not a record of the documented schema",
}
"""Every reason code a dead letter can carry, with its meaning."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds of the contract; the defaults are the ones ``docs/protocol.md`` states."""

    max_bytes: int = 8192
    max_readings: int = 64
    max_metrics: int = 16
    max_string: int = 64
    min_time_ms: int = 1_577_836_800_000  # 2020-01-01T00:00:00Z
    max_future_ms: int = 300_000


@dataclass(frozen=True, slots=True)
class TopicInfo:
    prefix: str
    site: str
    device: str
    kind: str


class _NonFinite(float):
    """Marks a value that was written as NaN/Infinity, so it is rejected per reading, not per message."""


def _parse_constant(token: str) -> float:
    return _NonFinite(math.nan)


_JSON: Final = json.JSONDecoder(parse_constant=_parse_constant)
"""``json.loads(text, parse_constant=...)`` without a new decoder for every message."""


def parse_topic(topic: str, prefix: str = "edgekit") -> TopicInfo:
    parts = topic.split("/")
    if len(parts) != 4 or parts[0] != prefix:
        raise DecodeError("bad_topic", f"expected {prefix}/<site>/<device>/<kind>, got {topic!r}")
    _, site, device, kind = parts
    for label, value in (("site", site), ("device", device)):
        if not NAME_RE.fullmatch(value):
            raise DecodeError("bad_topic", f"{label} {value!r} is not 1-32 of [A-Za-z0-9_-]")
    if kind not in ("readings", "status"):
        raise DecodeError("bad_topic", f"kind {kind!r} is neither 'readings' nor 'status'")
    return TopicInfo(prefix, site, device, kind)


def excerpt(payload: bytes, limit: int = 200) -> str:
    """The head of a payload as printable text, for a dead-letter record."""
    text = payload[:limit].decode("utf-8", errors="backslashreplace")
    return text + ("…" if len(payload) > limit else "")


def dead_letter_for(
    err: DecodeError,
    topic: str,
    payload: bytes,
    received_ms: int,
    prefix: str = "edgekit",
) -> DeadLetter:
    """The dead-letter record of a message rejected whole."""
    site = device = None
    parts = topic.split("/")
    if len(parts) == 4 and parts[0] == prefix and NAME_RE.fullmatch(parts[1]) and NAME_RE.fullmatch(parts[2]):
        site, device = parts[1], parts[2]
    return DeadLetter(
        reason=err.reason,
        detail=err.detail,
        topic=topic,
        received_ms=received_ms,
        size=len(payload),
        excerpt=excerpt(payload),
        site=site,
        device=device,
    )


def decode(
    topic: str,
    payload: bytes,
    received_ms: int,
    *,
    limits: Limits = Limits(),
    prefix: str = "edgekit",
    types: MetricTypes = NO_TYPES,
) -> Batch | StatusUpdate:
    """Decode one MQTT message; raises :class:`DecodeError` when it must be rejected whole.

    ``types`` are the metrics' declared types (``[metric_types]``): a metric's value comes out of the
    decoder with its declared type (a float unless declared otherwise), or the reading is refused.
    The same result as :func:`decode_reference`, faster for the common message (the module's docstring).
    """
    if FAST_DECODER:
        batch = _decode_fast(topic, payload, received_ms, limits, prefix, types)
        if batch is not None:
            return batch
    return decode_reference(topic, payload, received_ms, limits=limits, prefix=prefix, types=types)


FAST_DECODER: bool = os.environ.get("EDGEKIT_ENGINE", "") != "pure"
"""Whether :func:`decode` tries msgspec's one-pass decoder first (not with ``EDGEKIT_ENGINE=pure``)."""

_ID: TypeAlias = Annotated[int, msgspec.Meta(ge=0, le=ID_MAX)]
_TIME: TypeAlias = Annotated[int, msgspec.Meta(ge=-INT64_MAX, le=INT64_MAX)]
_MARK: TypeAlias = Annotated[int, msgspec.Meta(ge=-INT64_MAX - 1, le=INT64_MAX)]
_EXACT: TypeAlias = Annotated[float, msgspec.Meta(gt=-(2.0**53), lt=2.0**53)]
"""A JSON number whose float is the reference's: a float, or an integer msgspec turns into one, below 2**53 in
size, where every integer has an exact float (the reference refuses an integer that has none)."""
_V = TypeVar("_V")


class _WireReading(msgspec.Struct, Generic[_V]):
    """A reading as the contract has it, its metric values of kind ``_V``; what msgspec refuses goes to the
    reference decoder."""

    b: _ID
    s: _ID
    t: _TIME
    q: Quality
    m: dict[str, _V]


class _WireBatch(msgspec.Struct, Generic[_V]):
    """A readings message as the contract has it (other fields are skipped, as the reference ignores them)."""

    v: int
    dev: str
    r: list[_WireReading[_V]]
    flushed: _MARK | msgspec.UnsetType = msgspec.UNSET


_WIRE_FLOATS: Final = msgspec.json.Decoder(_WireBatch[_EXACT])
"""Tried first: every metric value a number with an exact float. A declared metric's value is then checked from
its float, which gives what the reference gives from the number as written (an integer metric: the same
integer; another kind: an error, and the reference decodes the message)."""
_WIRE: Final = msgspec.json.Decoder(_WireBatch[int | float | str | bool])
"""Then the values of every kind a metric may have."""
_MAX_NESTING: Final = 300
"""Brackets a payload may hold for the fast path: more than a message of 64 readings has (two a reading, one
the list of them, one the message), far fewer than the depth at which the reference refuses one as nested too
deeply (``bad_json``, at Python's recursion limit) and msgspec too, at a depth of its own."""


@functools.cache
def _digit_run(digits: int) -> re.Pattern[bytes]:
    """Finds more than ``digits`` digits in a row: an integer Python's ``int`` (so ``json``) will not convert."""
    return re.compile(b"[0-9]{%d}" % (digits + 1))


def _decode_fast(
    topic: str, payload: bytes, received_ms: int, limits: Limits, prefix: str, types: MetricTypes
) -> Batch | None:
    """The :class:`Batch` of a readings message that ``decode_reference`` would accept whole, every reading
    in it; ``None`` for any other message (the reference then decodes it, or says why not)."""
    if len(payload) > limits.max_bytes or not topic.endswith("/readings"):
        return None
    try:
        info = parse_topic(topic, prefix)
        payload.decode("utf-8")  # the reference's bad_utf8 comes before anything msgspec would say
    except (DecodeError, UnicodeDecodeError):
        return None
    if payload.count(b"[") + payload.count(b"{") > _MAX_NESTING:
        return None
    digits = sys.get_int_max_str_digits()  # json refuses a longer integer anywhere; msgspec skips unread fields
    if digits and len(payload) > digits and _digit_run(digits).search(payload):
        return None
    doc: _WireBatch[float] | _WireBatch[int | float | str | bool]
    try:
        doc = _WIRE_FLOATS.decode(payload)
        floats = True
    except msgspec.ValidationError:  # another kind of value (or a number beyond 2**53): the general shape
        try:
            doc = _WIRE.decode(payload)
        except (msgspec.DecodeError, RecursionError):
            return None
        floats = False
    except (msgspec.DecodeError, RecursionError):  # not JSON as msgspec reads it, or the stack ran out
        return None
    if doc.v != PROTOCOL_VERSION or doc.dev != info.device:
        return None
    flushed = None if isinstance(doc.flushed, msgspec.UnsetType) else doc.flushed
    raw: Sequence[_WireReading[float] | _WireReading[int | float | str | bool]] = doc.r
    if (not raw and flushed is None) or len(raw) > limits.max_readings:
        return None
    declared = (
        (types.integer | types.boolean | types.string) if types.integer or types.boolean or types.string else None
    )
    site, device = info.site, info.device
    oldest, newest, max_metrics = limits.min_time_ms, received_ms + limits.max_future_ms, limits.max_metrics
    readings: list[Reading] = []
    for index, item in enumerate(raw):
        t_ms = item.t
        m: dict[str, Any] = item.m
        if not oldest <= t_ms <= newest or not m or len(m) > max_metrics:
            return None
        if floats and m.keys() <= _GOOD_NAMES and (declared is None or m.keys().isdisjoint(declared)):
            # every value a float the reference would give, of a float metric with a good name: its dict
            readings.append(Reading(site, device, item.b, item.s, t_ms, item.q, m))
            continue
        try:  # other names or kinds of value: checked as the reference checks them (any error: the reference)
            metrics = _decode_metrics(m, f"r[{index}].", limits, types)
        except DecodeError:
            return None
        readings.append(Reading(site, device, item.b, item.s, t_ms, item.q, metrics))
    return Batch(site, device, topic, received_ms, tuple(readings), (), flushed)


def decode_reference(
    topic: str,
    payload: bytes,
    received_ms: int,
    *,
    limits: Limits = Limits(),
    prefix: str = "edgekit",
    types: MetricTypes = NO_TYPES,
) -> Batch | StatusUpdate:
    """:func:`decode` in plain Python: the definition of what a message decodes to, and its errors."""
    info = parse_topic(topic, prefix)
    if len(payload) > limits.max_bytes:
        raise DecodeError("oversize", f"{len(payload)} bytes > {limits.max_bytes}")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError("bad_utf8", f"invalid byte at offset {exc.start}") from exc
    try:
        doc = _JSON.decode(text)
    except RecursionError as exc:
        raise DecodeError("bad_json", "nested too deeply") from exc
    except ValueError as exc:
        raise DecodeError("bad_json", str(exc)) from exc
    if not isinstance(doc, dict):
        raise DecodeError("schema", f"top level must be an object, got {type(doc).__name__}")
    v = doc.get("v")
    if v != PROTOCOL_VERSION or isinstance(v, bool):
        raise DecodeError("version", f"v={_short(v)}, this gateway speaks v={PROTOCOL_VERSION}")
    dev = doc.get("dev")
    if dev != info.device:
        raise DecodeError("device_mismatch", f"payload dev={_short(dev)}, topic device={info.device!r}")
    if info.kind == "status":
        return _decode_status(doc, info, topic, received_ms, limits, types)
    return _decode_batch(doc, info, topic, payload, received_ms, limits, types)


def _int_field(obj: dict[str, Any], key: str, lo: int, hi: int, where: str) -> int:
    value = obj.get(key)
    if type(value) is int and lo <= value <= hi:  # the common case, first (bool is not of type int)
        return value
    if not isinstance(value, int) or isinstance(value, bool):
        raise DecodeError("schema", f"{where}{key} must be an integer, got {_short(value)}")
    if not lo <= value <= hi:
        raise DecodeError("schema", f"{where}{key}={value} outside [{lo}, {hi}]")
    return value


def _decode_batch(
    doc: dict[str, Any],
    info: TopicInfo,
    topic: str,
    payload: bytes,
    received_ms: int,
    limits: Limits,
    types: MetricTypes,
) -> Batch:
    flushed: int | None = None
    if "flushed" in doc:
        # any 64-bit integer is a marker; one before limits.min_time_ms (negative too) or in the future is
        # ignored by the engine (docs/semantics.md), and costs the readings beside it nothing
        flushed = _int_field(doc, "flushed", -INT64_MAX - 1, INT64_MAX, "")
    raw = doc.get("r")
    if not isinstance(raw, list):
        raise DecodeError("schema", f"r must be a list of readings, got {type(raw).__name__}")
    if not raw and flushed is None:
        raise DecodeError("schema", "r is empty and there is no flushed marker")
    if len(raw) > limits.max_readings:
        raise DecodeError("too_many_readings", f"{len(raw)} readings > {limits.max_readings}")
    readings: list[Reading] = []
    rejected: list[DeadLetter] = []
    for index, item in enumerate(raw):
        try:
            readings.append(_decode_reading(item, index, info, received_ms, limits, types))
        except DecodeError as err:
            rejected.append(
                DeadLetter(
                    reason=err.reason,
                    detail=err.detail,
                    topic=topic,
                    received_ms=received_ms,
                    size=len(payload),
                    excerpt=_reading_excerpt(item),
                    site=info.site,
                    device=info.device,
                    index=index,
                )
            )
    return Batch(
        site=info.site,
        device=info.device,
        topic=topic,
        received_ms=received_ms,
        readings=tuple(readings),
        rejected=tuple(rejected),
        flushed_ms=flushed,
    )


def _reading_excerpt(item: object) -> str:
    try:
        text = json.dumps(item, separators=(",", ":"), allow_nan=True)
    except (TypeError, ValueError):  # pragma: no cover - decoded JSON always re-encodes
        text = repr(item)
    return text[:200]


def _decode_reading(
    item: object, index: int, info: TopicInfo, received_ms: int, limits: Limits, types: MetricTypes
) -> Reading:
    where = f"r[{index}]."
    if not isinstance(item, dict):
        raise DecodeError("schema", f"r[{index}] must be an object, got {type(item).__name__}")
    boot = _int_field(item, "b", 0, ID_MAX, where)
    seq = _int_field(item, "s", 0, ID_MAX, where)
    t_ms = _int_field(item, "t", -INT64_MAX, INT64_MAX, where)
    q = item.get("q")
    if q not in QUALITIES:
        raise DecodeError("schema", f"{where}q must be one of {'/'.join(QUALITIES)}, got {_short(q)}")
    quality: Quality = q
    metrics = _decode_metrics(item.get("m"), where, limits, types)
    if t_ms < limits.min_time_ms:
        raise DecodeError("time_too_old", f"{where}t={t_ms} is before {limits.min_time_ms}")
    if t_ms > received_ms + limits.max_future_ms:
        raise DecodeError(
            "time_in_future",
            f"{where}t={t_ms} is {t_ms - received_ms} ms ahead of the gateway (tolerance {limits.max_future_ms})",
        )
    return Reading(info.site, info.device, boot, seq, t_ms, quality, metrics)


def _decode_metrics(raw: object, where: str, limits: Limits, types: MetricTypes) -> dict[str, MetricValue]:
    if not isinstance(raw, dict) or not raw:
        raise DecodeError("schema", f"{where}m must be a non-empty object of metrics, got {_short(raw)}")
    if len(raw) > limits.max_metrics:
        raise DecodeError("schema", f"{where}m has {len(raw)} metrics > {limits.max_metrics}")
    metrics: dict[str, MetricValue] = {}
    for name, value in raw.items():
        if name not in _GOOD_NAMES:
            if not METRIC_RE.fullmatch(name):
                raise DecodeError("schema", f"{where}m: bad metric name {_short(name)}")
            if name in RESERVED_METRICS:
                raise DecodeError(
                    "schema",
                    f"{where}m: the metric name {name!r} is reserved ({', '.join(sorted(RESERVED_METRICS))})",
                )
            if len(_GOOD_NAMES) < _GOOD_NAMES_MAX:
                _GOOD_NAMES.add(name)
        want = types.of(name)
        if type(value) is float and want == "float" and -_INF < value < _INF:  # the common case: what typed_value gives
            metrics[name] = value
        else:
            metrics[name] = typed_value(value, want, f"{where}m.{name}", limits.max_string, name)
    return metrics


_GOOD_NAMES: Final[set[str]] = set()
"""Metric names already found valid and not reserved (a fleet has few), up to _GOOD_NAMES_MAX."""
_GOOD_NAMES_MAX: Final = 10_000
_INF: Final = math.inf


_BAD_CHAR: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def check_string(value: str, where: str) -> None:
    """Raise ``bad_string`` if ``value`` holds a character no stored string may hold: a lone surrogate (it
    has no UTF-8 form) or a control character (Unicode category Cc: U+0000-U+001F, U+007F-U+009F)."""
    if value.isprintable():  # fast: holds neither
        return
    bad = _BAD_CHAR.search(value)
    if bad is None:
        return
    c = bad.group()
    what = "a lone surrogate (not UTF-8)" if "\ud800" <= c <= "\udfff" else "a control character"
    raise DecodeError("bad_string", f"{where}: {_short(value)} holds {what}, U+{ord(c):04X} at index {bad.start()}")


def metric_hint(name: str, want: FieldType, kind: FieldType) -> str:
    """How to make a metric (or an undocumented status field) of type ``want`` take a value of type ``kind``:
    the end of a ``type_mismatch`` detail."""
    if kind == "float":
        return f"{name} is declared {want} in [metric_types]; a metric declared nowhere there is a float"
    default = " (a metric declared nowhere there is a float)" if want == "float" else ""
    return f'to store it, declare {name} in [metric_types]: {kind} = ["{name}"]{default}'


def typed_value(
    value: object, want: FieldType, where: str, max_string: int, name: str, documented: bool = False
) -> MetricValue:
    """``value`` (decoded JSON) as a field ``name`` of type ``want``, or :class:`DecodeError`.

    ``non_finite`` for NaN and infinities; ``schema`` for what is no number, boolean or string, an integer
    beyond 64 bits, a string longer than ``max_string``; ``bad_string`` for a string no field may hold;
    ``type_mismatch`` for a value of another kind than ``want``. A whole float is taken for an integer
    field (21.0 -> 21, but not 21.5), and an integer for a float field if the float is exact (21 -> 21.0,
    but not 2**53 + 1, which has no float). The detail says how to make the field take the refused kind
    (``documented``: a status field docs/protocol.md gives a type, which no declaration changes).
    """
    if isinstance(value, float):  # a plain float, or the decoder's mark for NaN and Infinity
        if not math.isfinite(value):
            raise DecodeError("non_finite", f"{where} is {value!r}")
        if want == "float":  # the common case, first
            return value
    elif not isinstance(value, (bool, int, str)):
        raise DecodeError("schema", f"{where} must be a number, boolean or string, got {_short(value)}")
    elif isinstance(value, int) and not isinstance(value, bool) and not -INT64_MAX - 1 <= value <= INT64_MAX:
        raise DecodeError("schema", f"{where}={value} does not fit in 64 bits")
    elif isinstance(value, str):
        check_string(value, where)
    why = ""
    if want == "float":
        if isinstance(value, int) and not isinstance(value, bool):
            x = float(value)
            if int(x) == value:
                return x
            why = f"an integer with no exact float (the nearest is {x!r})"
    elif want == "integer":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            if not -(2.0**63) <= value < 2.0**63:
                raise DecodeError("schema", f"{where}={value!r} does not fit in 64 bits")
            return int(value)
    elif want == "boolean":
        if isinstance(value, bool):
            return value
    elif isinstance(value, str):
        if len(value) > max_string:
            raise DecodeError("schema", f"{where} is a string of {len(value)} > {max_string}")
        return value
    kind = type_of_value(value)
    said = why or {"boolean": "a boolean", "integer": "an integer", "float": "a float", "string": "a string"}[kind]
    article = "an" if want == "integer" else "a"
    if documented:
        how = f"{name} is a documented status field, {article} {want} (docs/protocol.md)"
    else:
        how = metric_hint(name, want, kind)
    raise DecodeError("type_mismatch", f"{where}={_short(value)} is {said}, not {article} {want}; {how}")


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _decode_status(
    doc: dict[str, Any], info: TopicInfo, topic: str, received_ms: int, limits: Limits, types: MetricTypes
) -> StatusUpdate:
    state = doc.get("state")
    if state not in STATES:
        raise DecodeError("schema", f"state must be one of {'/'.join(STATES)}, got {_short(state)}")
    fields: dict[str, MetricValue] = {}
    for key, value in doc.items():
        if key in ("v", "dev", "state"):
            continue
        if not METRIC_RE.fullmatch(key):
            raise DecodeError("schema", f"status: bad field name {_short(key)}")
        if key in RESERVED_STATUS_FIELDS:
            raise DecodeError(
                "schema",
                f"status: the field name {key!r} is reserved ({', '.join(sorted(RESERVED_STATUS_FIELDS))}: "
                "InfluxDB drops a field named time, and site and device are the point's tags)",
            )
        documented = STATUS_FIELDS.get(key)
        want = documented or types.of(key)
        typed = typed_value(value, want, f"status: {key}", limits.max_string, key, documented is not None)
        if key == "sleep_s" and not (isinstance(typed, int) and 0 < typed <= MAX_SLEEP_S):
            raise DecodeError("schema", f"status: sleep_s must be seconds in (0, {MAX_SLEEP_S}], got {value!r}")
        fields[key] = typed
    return StatusUpdate(info.site, info.device, topic, received_ms, state, fields)
