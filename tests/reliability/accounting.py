"""The accounting of a run, checked against the documented contract (not against the gateway's code).

What the kit promises (docs/protocol.md, docs/measurements.md, docs/reliability.md): every reading sent is
exactly one of

(a) accepted: a point of the ``reading`` measurement, once, at its event time plus its sub-millisecond
    offset, with its values in their metric's one type (a float unless ``[metric_types]`` declares it an
    integer, a boolean or a string);
(b) a duplicate of a reading of the device accepted before: counted, written nowhere;
(c) a dead letter with a documented reason, alone or with the whole message it came in (the reasons that
    depend on what came before, ``site_mismatch``, ``too_many_metrics``, ``stale_boot``, ``stale_seq``,
    only where their documented rule gives them);

every other message is a dead letter with its reason, or ignored as documented (an empty retained status);
nothing is neither or both; and the gateway's counters agree with both. A line InfluxDB refuses is
dead-lettered by the sink (``influx_refused``, the payload is the line), which is legitimate accounting.

This module has three parts, all free of services so that they can be tested on their own:

- a JSON value tree (:class:`JStr`, :class:`JRaw`, :class:`JObj`, ...) that renders any payload the
  strategies make, including duplicate keys, lone surrogates written as ``\\ud800`` escapes, raw number
  texts (``1e400``, ``-0.0``, 30-digit integers, ``NaN``) and event times relative to the moment of sending;
- :func:`judge`: what the contract says of one message, written from docs/protocol.md: which reasons may
  reject it whole, which may reject each reading, what must be accepted, what is ambiguous;
- :func:`check`: the ledger of one run (what was sent, the gateway's final stats, what InfluxDB holds)
  turned into a list of violations, each naming the message it is about; it follows the run in order with
  the devices' site bindings, their metric names and :class:`DedupModel`, the dedup's documented bounds.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.lineproto import reading_time_ns

# ----------------------------------------------------------------------------------------- the contract

MAX_BYTES = 8192
MAX_READINGS = 64
MAX_METRICS = 16
MAX_STRING = 64
MIN_TIME_MS = 1_577_836_800_000
MAX_FUTURE_MS = 300_000
# a reading's time is judged against the gateway's clock when the message arrives, which is a little after
# the moment the payload was made: times within this margin of the bound are ambiguous, never generated
FUTURE_MARGIN_MS = 3_600_000
MAX_SLEEP_S = 2_678_400
# the dedup's bounds (docs/reliability.md: 8 boots a device, 256 ranges of sequence numbers a boot) and the
# per-device cap of metric names (docs/protocol.md: `devices.max_metric_names`, 32 by default)
MAX_BOOTS = 8
MAX_RANGES = 256
MAX_METRIC_NAMES = 32

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}")
METRIC_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")
RESERVED = frozenset({"boot", "seq", "q", "rev", "time", "site", "device"})
RESERVED_STATUS = frozenset({"time", "site", "device"})
STATES = frozenset({"online", "sleeping", "offline"})
QUALITIES = frozenset({"s", "c", "u"})
INT64 = (-(2**63), 2**63 - 1)

Kind = Literal["float", "integer", "boolean", "string"]
# docs/protocol.md, "Status message": the documented fields and their one type each
STATUS_TYPES: dict[str, Kind] = {
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
}

# docs/protocol.md's reason codes
DOCUMENTED = frozenset(
    {
        "bad_topic",
        "oversize",
        "bad_utf8",
        "bad_json",
        "schema",
        "version",
        "device_mismatch",
        "unknown_device",
        "too_many_devices",
        "too_many_readings",
        "non_finite",
        "time_too_old",
        "time_in_future",
        "internal",
        "bad_string",
        "type_mismatch",
        "site_mismatch",
        "too_many_metrics",
        "stale_boot",
        "stale_seq",
        "influx_refused",
        "unwritable",
    }
)
# reasons that depend on what the gateway saw before: the ledger allows each only where the documented rule
# gives it (the device bound to another site; the device's metric names; the dedup's bounds)
STATE_READING = frozenset({"too_many_metrics", "stale_boot", "stale_seq"})
STATE_MESSAGE = frozenset({"site_mismatch"})
STALE = frozenset({"stale_boot", "stale_seq"})  # a reading the dedup state can no longer judge
SINK_REASONS = frozenset({"influx_refused", "unwritable"})  # added by the sink: the payload is the line
NEVER_OK = frozenset({"internal"})  # documented, but it says the gateway's own code failed


def has_surrogate(s: str) -> bool:
    return any("\ud800" <= c <= "\udfff" for c in s)


def has_bad_char(s: str) -> bool:
    """A lone surrogate or a control character (Unicode category Cc): a string no field may hold."""
    return any(c <= "\x1f" or "\x7f" <= c <= "\x9f" or "\ud800" <= c <= "\udfff" for c in s)


def visible(s: str) -> str:
    """Text the gateway composes (a dead letter's excerpt) with control characters and lone surrogates as
    visible escapes (docs/protocol.md, "Strings")."""
    named = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
    out = []
    for c in s:
        if c in named:
            out.append(named[c])
        elif c <= "\x1f" or "\x7f" <= c <= "\x9f":
            out.append(f"\\x{ord(c):02x}")
        elif "\ud800" <= c <= "\udfff":
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return "".join(out)


def point_time_ns(t_ms: int, boot: int, seq: int) -> int:
    """Where a reading's point is: its event time plus the sub-millisecond offset docs/measurements.md
    describes and names (``lineproto.reading_time_ns``, 0 to 999,999 ns from the reading's identity)."""
    return reading_time_ns(t_ms, boot, seq)


# ------------------------------------------------------------------------------------- JSON value tree


@dataclass(frozen=True, slots=True)
class JRaw:
    """Raw JSON text: a number exactly as written (``-0.0``, ``1e400``, ``NaN``), ``true``, ``null``."""

    text: str


@dataclass(frozen=True, slots=True)
class JStr:
    """A string; ``ascii`` writes every non-ASCII character as an escape (forced for lone surrogates)."""

    s: str
    ascii: bool = True


@dataclass(frozen=True, slots=True)
class JArr:
    items: tuple[J, ...]


@dataclass(frozen=True, slots=True)
class JObj:
    """An object; keys may repeat (the last one wins in every parser that keeps one)."""

    pairs: tuple[tuple[str, J], ...]


@dataclass(frozen=True, slots=True)
class JTime:
    """An event time ``offset_ms`` from the moment the payload is made (rendered as an integer)."""

    offset_ms: int


J = JRaw | JStr | JArr | JObj | JTime


def render_str(s: str, ascii_only: bool = True) -> str:
    return json.dumps(s, ensure_ascii=ascii_only or has_surrogate(s))


def render(j: J, now_ms: int) -> str:
    if isinstance(j, JRaw):
        return j.text
    if isinstance(j, JStr):
        return render_str(j.s, j.ascii)
    if isinstance(j, JTime):
        return str(now_ms + j.offset_ms)
    if isinstance(j, JArr):
        return "[" + ",".join(render(x, now_ms) for x in j.items) + "]"
    return "{" + ",".join(f"{render_str(k)}:{render(v, now_ms)}" for k, v in j.pairs) + "}"


def num(v: int | float) -> JRaw:
    return JRaw(repr(v) if isinstance(v, float) else str(v))


def obj(**kv: J) -> JObj:
    return JObj(tuple(kv.items()))


# ------------------------------------------------------------------------------------------ messages


Role = Literal["honest", "honest_status", "mixed", "hostile", "garbage", "collider", "bad_topic"]


@dataclass(frozen=True, slots=True)
class Planned:
    """A message before it is sent: a topic relative to the prefix and a body (a value tree or raw bytes).

    ``role`` says what the strategies meant: ``honest`` and ``honest_status`` are a well-behaved board's
    traffic (everything in them must be accepted); ``mixed`` is a valid envelope whose readings at
    ``honest_idx`` must be accepted and whose others are arbitrary; ``garbage`` is a whole-message breach
    on an honest board's topic; ``collider`` reuses an honest board's id under another site; ``hostile`` and
    ``bad_topic`` are anything at all. ``pad_to`` pads the rendered payload with spaces to that many bytes.
    """

    topic: str  # "{p}" stands for the prefix
    body: J | bytes
    role: Role
    honest_idx: frozenset[int] = frozenset()
    retain: bool = False
    pad_to: int | None = None


@dataclass(frozen=True, slots=True)
class Sent:
    """A message as published (in this order), with what the strategies meant by it."""

    n: int
    topic: str
    payload: bytes
    role: Role
    honest_idx: frozenset[int]
    retain: bool

    def describe(self, limit: int = 400) -> str:
        try:
            text = repr(self.payload.decode("utf-8"))
        except UnicodeDecodeError:
            text = repr(self.payload)
        if len(text) > limit:
            text = text[:limit] + f"... ({len(self.payload)} bytes)"
        return f"message #{self.n} [{self.role}] topic={self.topic!r} payload={text}"


def materialize(plan: Sequence[Planned], prefix: str, now_ms: int) -> list[Sent]:
    """Render every planned message for this prefix and clock; byte-identical repeats are dropped (a board's
    exact re-send may be skipped as a broker redelivery after a crash, which the accounting cannot tell)."""
    out: list[Sent] = []
    seen: set[tuple[str, bytes]] = set()
    for p in plan:
        topic = p.topic.replace("{p}", prefix)
        payload = p.body if isinstance(p.body, bytes) else render(p.body, now_ms).encode("utf-8")
        if p.pad_to is not None and len(payload) < p.pad_to and payload.endswith(b"}"):
            payload = payload[:-1] + b" " * (p.pad_to - len(payload)) + b"}"
        if (topic, payload) in seen:
            continue
        seen.add((topic, payload))
        out.append(Sent(len(out), topic, payload, p.role, p.honest_idx, p.retain))
    return out


# ------------------------------------------------------------------------------------ the oracle (judge)


class Obj(dict[str, Any]):
    """A parsed JSON object: the last of repeated keys wins (as in Python, JavaScript and Go); ``all`` keeps
    every value given for a key, ``pairs`` how many pairs there were."""

    all: dict[str, list[Any]]
    pairs: int


def _pairs_hook(pairs: list[tuple[str, Any]]) -> Obj:
    o = Obj()
    o.all = {}
    o.pairs = len(pairs)
    for k, v in pairs:
        o[k] = v
        o.all.setdefault(k, []).append(v)
    return o


def parse_json(text: str) -> Any:
    """JSON as the contract reads it: RFC 8259 plus ``NaN``/``Infinity`` (MicroPython writes them; they
    cost only their reading, docs/protocol.md)."""
    return json.loads(text, object_pairs_hook=_pairs_hook)


Accept = Literal["must", "may", "never"]
Typed = tuple[str, Any]
"""A value as stored: its kind (``float``, ``integer``, ``boolean``, ``string``) and the value."""


@dataclass(slots=True)
class ReadingVerdict:
    index: int
    accept: Accept
    """``must``: honest, valid, has to be accepted (or be a duplicate, or refused by a documented rule that
    depends on what came before); ``may``: valid or ambiguous; ``never``: the contract rejects it."""
    reasons: frozenset[str]
    """Reasons a dead letter for this reading alone may carry (besides those of STATE_READING, which the
    ledger allows where their rule gives them)."""
    identity: tuple[int, int] | None = None
    t: int | None = None
    q: str | None = None
    metrics: dict[str, list[Typed]] = field(default_factory=dict)
    """Each metric name's value as stored (more than one only for a repeated key: any may be kept)."""
    honest: bool = False
    why: str = ""
    raw: Any = None
    """The reading as the gateway parses it (the last of repeated keys), for its dead letter's excerpt."""


@dataclass(slots=True)
class Verdict:
    """What the contract says of one message."""

    sent: Sent
    kind: Literal["readings", "status", "none"]
    site: str | None
    device: str | None
    accept: Accept
    reasons: frozenset[str]
    """Reasons a dead letter for the whole message may carry (besides ``site_mismatch``, which the ledger
    allows where the device is bound to another site)."""
    ignored: bool = False
    readings: list[ReadingVerdict] = field(default_factory=list)
    status: dict[str, list[Typed]] = field(default_factory=dict)
    """An accepted status's fields as stored (``state`` included, ``v`` and ``dev`` not)."""
    flushed: bool = False
    """The message carries a ``flushed`` marker (it admits its device even with no reading)."""
    why: str = ""


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass(slots=True)
class _Breaches:
    definite: set[str] = field(default_factory=set)
    maybe: set[str] = field(default_factory=set)
    why: list[str] = field(default_factory=list)

    def must(self, *reasons: str, why: str) -> None:
        self.definite.update(reasons)
        self.why.append(why)

    def may(self, *reasons: str, why: str) -> None:
        self.maybe.update(reasons)
        self.why.append("ambiguous: " + why)


def _judge_int_field(b: _Breaches, v: Any, name: str, lo: int, hi: int) -> int | None:
    if _is_int(v):
        if lo <= v <= hi:
            return int(v)
        b.must("schema", why=f"{name}={v!r} out of range")
        return None
    b.must("schema", why=f"{name}={v!r:.60} is not an integer")  # 1.0 too: tests/vectors/reading_bad_types
    return None


def _judge_value(b: _Breaches, v: Any, want: Kind, what: str) -> Typed | None:
    """A metric (or status field) value against its type, docs/protocol.md "Metric types": the value as
    stored, or None when the contract refuses it (the reasons are in ``b``). Where the contract names two
    reasons for one value (a string with a control character for a float metric: `bad_string` or
    `type_mismatch`), either is allowed: the order of the checks is not documented."""
    other = want != "string"  # a string is of another kind
    if isinstance(v, bool):
        if want == "boolean":
            return ("boolean", v)
        b.must("type_mismatch", why=f"{what}={v} is a boolean, not a {want}")
        return None
    if isinstance(v, str):
        flaws = set()
        if has_bad_char(v):
            flaws.add("bad_string")
        cps, u16 = len(v), len(v.encode("utf-16-le", "surrogatepass")) // 2
        if cps > MAX_STRING:
            flaws.add("schema")
        if other:
            b.must("type_mismatch", *flaws, why=f"{what}={v!r:.40} is a string, not a {want}")
            return None
        if flaws:
            b.must(*flaws, why=f"{what}={v!r:.60}: {sorted(flaws)}")
            return None
        if u16 > MAX_STRING:
            b.may("schema", why=f"{what} is {cps} characters but {u16} UTF-16 units")
        return ("string", v)
    if _is_int(v):
        if not INT64[0] <= v <= INT64[1]:  # docs/protocol.md: integers must fit in 64 bits (schema)
            b.must("schema", *(["type_mismatch"] if want in ("boolean", "string") else []), why=f"{what}={v} > 64 bits")
            return None
        if want == "integer":
            return ("integer", v)
        if want == "float":
            if int(float(v)) == v:
                return ("float", float(v))
            b.must("type_mismatch", why=f"{what}={v} has no exact float")
            return None
        b.must("type_mismatch", why=f"{what}={v} is a number, not a {want}")
        return None
    if isinstance(v, float):
        if not math.isfinite(v):
            b.must("non_finite", *(["type_mismatch"] if want != "float" else []), why=f"{what}={v}")
            return None
        if want == "float":
            return ("float", v)
        if want == "integer":
            if not v.is_integer():
                b.must("type_mismatch", why=f"{what}={v!r} is not whole")
                return None
            if not -(2.0**63) <= v < 2.0**63:
                b.must("schema", why=f"{what}={v!r} is whole but beyond 64 bits")
                return None
            return ("integer", int(v))
        b.must("type_mismatch", why=f"{what}={v!r} is a number, not a {want}")
        return None
    b.must("schema", why=f"{what} is {type(v).__name__}")
    return None


def _judge_metrics(b: _Breaches, m: Any, types: Mapping[str, Kind]) -> dict[str, list[Typed]]:
    if not isinstance(m, Obj):
        b.must("schema", why=f"m is {type(m).__name__}")
        return {}
    n = len(m)
    if n == 0:
        b.must("schema", why="m is empty")
    elif n > MAX_METRICS:
        b.must("schema", why=f"{n} metrics")
    elif m.pairs > MAX_METRICS:
        b.may("schema", why=f"{m.pairs} pairs for {n} metric names")
    out: dict[str, list[Typed]] = {}
    for name, values in m.all.items():
        if not METRIC_RE.fullmatch(name) or name in RESERVED:
            b.must("schema", *(["bad_string"] if has_bad_char(name) else []), why=f"metric name {name!r:.50}")
        inner = [_Breaches() for _ in values]
        typed = [
            _judge_value(sub, v, types.get(name, "float"), f"metric {name!r:.40}")
            for sub, v in zip(inner, values, strict=True)
        ]
        last = inner[-1]
        b.definite |= last.definite
        b.maybe |= last.maybe
        b.why += last.why
        for sub in inner[:-1]:  # a repeated key: the gateway may keep any of its values (not documented)
            b.maybe |= sub.definite | sub.maybe
        out[name] = [x for x in typed if x is not None]
    return out


def judge_reading(
    i: int,
    r: Any,
    now_ms: int,
    honest: bool,
    margin_ms: int = FUTURE_MARGIN_MS,
    types: Mapping[str, Kind] | None = None,
) -> ReadingVerdict:
    b = _Breaches()
    if not isinstance(r, Obj):
        return ReadingVerdict(i, "never", frozenset({"schema"}), why=f"reading is {type(r).__name__}", raw=r)
    for key in ("b", "s", "t", "q", "m"):
        if key not in r:
            b.must("schema", why=f"no {key!r}")
    extra = set(r) - {"b", "s", "t", "q", "m"}
    if extra:
        b.may("schema", why=f"unknown keys {sorted(extra)!r:.80}")
    boot = _judge_int_field(b, r.get("b"), "b", 0, 2**31 - 1) if "b" in r else None
    seq = _judge_int_field(b, r.get("s"), "s", 0, 2**31 - 1) if "s" in r else None
    t: int | None = None
    if "t" in r:
        tv = r["t"]
        ti = tv if _is_int(tv) else None
        if ti is None:
            b.must("schema", why=f"t={tv!r:.60} is not an integer")
        else:
            if not INT64[0] <= ti <= INT64[1]:
                b.must("schema", "time_in_future" if ti > 0 else "time_too_old", why=f"t={ti} beyond 64 bits")
            elif ti < MIN_TIME_MS:
                b.must("time_too_old", *(["schema"] if ti < 0 else []), why=f"t={ti} before 2020")
            elif ti > now_ms + MAX_FUTURE_MS + margin_ms:
                b.must("time_in_future", why=f"t={ti} in the future")
            elif ti > now_ms + (MAX_FUTURE_MS if margin_ms == 0 else 0):
                b.may("time_in_future", why=f"t={ti} near the future bound")
            t = ti
    q = r.get("q")
    if "q" in r and not (isinstance(q, str) and q in QUALITIES):
        b.must("schema", *(["bad_string"] if isinstance(q, str) and has_bad_char(q) else []), why=f"q={q!r:.40}")
    metrics = _judge_metrics(b, r["m"], types or {}) if "m" in r else {}
    ident = (boot, seq) if boot is not None and seq is not None else None
    if b.definite:
        reasons = frozenset(b.definite | b.maybe)
        return ReadingVerdict(i, "never", reasons, ident, t, None, metrics, honest, "; ".join(b.why), r)
    if honest:
        assert not b.maybe, f"the strategies made an honest reading the contract finds ambiguous: {b.why}"
        return ReadingVerdict(i, "must", frozenset(), ident, t, q, metrics, True, raw=r)
    qq = q if isinstance(q, str) else None
    return ReadingVerdict(i, "may", frozenset(b.maybe), ident, t, qq, metrics, False, "; ".join(b.why), r)


def parse_topic(topic: str, prefix: str) -> tuple[str, str, str] | None:
    parts = topic.split("/")
    if len(parts) != 4 or parts[0] != prefix or parts[3] not in ("readings", "status"):
        return None
    if not (NAME_RE.fullmatch(parts[1]) and NAME_RE.fullmatch(parts[2])):
        return None
    return parts[1], parts[2], parts[3]


def judge(
    sent: Sent, prefix: str, now_ms: int, *, exact: bool = False, types: Mapping[str, Kind] | None = None
) -> Verdict:
    """What docs/protocol.md says of one message, with ``types`` the gateway's ``[metric_types]`` (name ->
    kind; a metric not in it is a float). ``now_ms`` is when its payload was made; the gateway's clock
    reads a little later when it arrives, so times within an hour past the future bound are ambiguous, unless
    ``exact`` (``now_ms`` is the arrival time, as in the shared vectors)."""
    types = types or {}
    honest = sent.role in ("honest", "honest_status")
    parsed = parse_topic(sent.topic, prefix)

    def whole(reasons: Iterable[str], why: str) -> Verdict:
        return Verdict(sent, kind, site, device, "never", frozenset(reasons), why=why)

    kind: Literal["readings", "status", "none"] = "none"
    site = device = None
    if parsed is None:
        return whole({"bad_topic"}, "bad topic")
    site, device, suffix = parsed
    kind = "readings" if suffix == "readings" else "status"
    payload = sent.payload
    if kind == "status" and payload == b"":
        return Verdict(sent, kind, site, device, "must", frozenset(), ignored=True, why="cleared retained status")
    if len(payload) > MAX_BYTES:
        return whole({"oversize"}, f"{len(payload)} bytes")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return whole({"bad_utf8"}, "not UTF-8")
    try:
        doc = parse_json(text)
    except RecursionError:
        return whole({"bad_json", "schema"}, "nested too deeply")
    except ValueError as exc:
        return whole({"bad_json"}, f"not JSON: {exc}")
    if not isinstance(doc, Obj):
        return whole({"schema"}, f"top level is {type(doc).__name__}")
    b = _Breaches()
    v = doc.get("v")
    if "v" not in doc:
        b.must("version", "schema", why="no v")
    elif _is_int(v):
        if v != 1:
            b.must("version", why=f"v={v}")
    else:
        b.must("version", "schema", why=f"v={v!r:.40}")
    if len(doc.all.get("v", [])) > 1 and any(x != 1 or not _is_int(x) for x in doc.all["v"]):
        b.may("version", "schema", why="repeated v")
    dev = doc.get("dev")
    if "dev" not in doc:
        b.must("schema", "device_mismatch", why="no dev")
    elif not isinstance(dev, str):
        b.must("schema", "device_mismatch", why=f"dev is {type(dev).__name__}")
    elif dev != device:
        b.must("device_mismatch", *(["bad_string", "schema"] if has_bad_char(dev) else []), why=f"dev={dev!r:.40}")
    if len(doc.all.get("dev", [])) > 1 and any(x != device for x in doc.all["dev"]):
        b.may("device_mismatch", "schema", why="repeated dev")
    if kind == "status":
        return _judge_status(sent, doc, b, site, device, honest, types)
    extra = set(doc) - {"v", "dev", "r", "flushed"}
    if extra:
        b.may("schema", why=f"unknown keys {sorted(extra)!r:.80}")
    for key in ("r", "flushed"):
        if len(doc.all.get(key, [])) > 1:
            b.may("schema", "too_many_readings", why=f"repeated {key}")
    r = doc.get("r")
    if "flushed" in doc:
        fl = doc["flushed"]
        if not _is_int(fl):
            b.must("schema", why=f"flushed={fl!r:.40}")
        elif not INT64[0] <= fl <= INT64[1]:
            b.must("schema", why=f"flushed={fl!r:.40} beyond 64 bits")
        # any other integer is a marker; one before 2020 or in the future is ignored (docs/semantics.md)
    if not isinstance(r, list):
        b.must("schema", why=f"r is {type(r).__name__}")
    elif len(r) > MAX_READINGS:
        b.must("too_many_readings", why=f"{len(r)} readings")
    elif not r and "flushed" not in doc:
        b.must("schema", why="r is empty and there is no flushed")
    readings = []
    if isinstance(r, list) and len(r) <= MAX_READINGS:
        margin = 0 if exact else FUTURE_MARGIN_MS
        readings = [judge_reading(i, x, now_ms, i in sent.honest_idx, margin, types) for i, x in enumerate(r)]
    flushed = "flushed" in doc
    if sent.honest_idx or honest:
        assert not b.definite and not b.maybe, f"a message with honest readings has a bad envelope: {b.why}"
        return Verdict(sent, kind, site, device, "must", frozenset(), readings=readings, flushed=flushed)
    if b.definite:
        reasons = frozenset(b.definite | b.maybe)
        return Verdict(sent, kind, site, device, "never", reasons, readings=readings, why="; ".join(b.why))
    reasons = frozenset(b.maybe)
    return Verdict(sent, kind, site, device, "may", reasons, readings=readings, flushed=flushed, why="; ".join(b.why))


def _judge_status(
    sent: Sent, doc: Obj, b: _Breaches, site: str, device: str, honest: bool, types: Mapping[str, Kind]
) -> Verdict:
    if "state" not in doc:
        b.must("schema", why="no state")
    fields: dict[str, list[Typed]] = {}
    for key, values in doc.all.items():
        if key in ("v", "dev"):
            continue
        if not METRIC_RE.fullmatch(key) or key in RESERVED_STATUS:
            b.must("schema", *(["bad_string"] if has_bad_char(key) else []), why=f"status key {key!r:.50}")
        elif key in RESERVED - {"boot"}:  # the documented status has `boot`, which metric names may not be
            b.may("schema", why=f"status key {key!r} is a reserved metric name")
        want = STATUS_TYPES.get(key) or types.get(key, "float")
        kept: list[Typed] = []
        for i, v in enumerate(values):
            sub = _Breaches()
            typed = _judge_value(sub, v, want, f"status {key!r:.40}")
            if typed is not None:
                if key == "state" and typed[1] not in STATES:
                    sub.must("schema", why=f"state={typed[1]!r:.40}")
                elif key == "sleep_s" and not 0 < typed[1] <= MAX_SLEEP_S:
                    sub.must("schema", why=f"sleep_s={v!r:.40}")
                elif key == "clock" and typed[1] not in ("s", "u"):
                    sub.may("schema", why=f"clock={v!r:.40} (documented: s or u)")
            elif key in ("state", "sleep_s"):  # docs: "anything else is schema"; of another kind: type_mismatch
                sub.definite.add("schema")
            if typed is not None and not sub.definite:
                kept.append(typed)
            if i == len(values) - 1:
                b.definite |= sub.definite
                b.maybe |= sub.maybe
                b.why += sub.why
            else:
                b.maybe |= sub.definite | sub.maybe
        fields[key] = kept
    if len(fields) > 1 + MAX_METRICS:
        b.may("schema", why=f"{len(fields)} status keys")
    if honest:
        assert not b.definite and not b.maybe, f"the strategies made an honest status the contract rejects: {b.why}"
        return Verdict(sent, "status", site, device, "must", frozenset(), status=fields)
    if b.definite:
        reasons = frozenset(b.definite | b.maybe)
        return Verdict(sent, "status", site, device, "never", reasons, status=fields, why="; ".join(b.why))
    reasons = frozenset(b.maybe)
    return Verdict(sent, "status", site, device, "may", reasons, status=fields, why="; ".join(b.why))


# ------------------------------------------------------------------------------------ line protocol


def parse_line(line: str) -> tuple[str, dict[str, str], dict[str, Any], int | None]:
    """InfluxDB line protocol, leniently: what can be read of a (possibly cut) line.

    Returns measurement, tags, the fields read completely, and the timestamp (None when cut)."""
    i, n = 0, len(line)

    def token(stops: str) -> str:
        nonlocal i
        out = []
        while i < n and line[i] not in stops:
            if line[i] == "\\" and i + 1 < n:
                out.append(line[i + 1])
                i += 2
            else:
                out.append(line[i])
                i += 1
        return "".join(out)

    measurement = token(", ")
    tags: dict[str, str] = {}
    while i < n and line[i] == ",":
        i += 1
        k = token("=, ")
        if i < n and line[i] == "=":
            i += 1
            tags[k] = token(", ")
    fields: dict[str, Any] = {}
    if i < n and line[i] == " ":
        i += 1
    while i < n and line[i] != " ":
        k = token("= ")
        if i >= n or line[i] != "=":
            return measurement, tags, fields, None
        i += 1
        if i < n and line[i] == '"':
            i += 1
            out = []
            closed = False
            while i < n:
                c = line[i]
                if c == "\\" and i + 1 < n and line[i + 1] in '"\\':
                    out.append(line[i + 1])
                    i += 2
                elif c == '"':
                    i += 1
                    closed = True
                    break
                else:
                    out.append(c)
                    i += 1
            if not closed:
                return measurement, tags, fields, None
            fields[k] = "".join(out)
        else:
            raw = token(", ")
            if i >= n:  # cut inside the last field or no timestamp: keep only what is surely whole
                return measurement, tags, fields, None
            fields[k] = _field_value(raw)
        if i < n and line[i] == ",":
            i += 1
    ts = line[i + 1 :].strip() if i < n else ""
    return measurement, tags, fields, int(ts) if ts.lstrip("-").isdigit() else None


def _field_value(raw: str) -> Any:
    if raw in ("t", "T", "true", "True", "TRUE"):
        return True
    if raw in ("f", "F", "false", "False", "FALSE"):
        return False
    if raw.endswith(("i", "u")):
        try:
            return int(raw[:-1])
        except ValueError:
            return raw
    try:
        return float(raw)
    except ValueError:
        return raw


# ------------------------------------------------------------------------------------------ the ledger


@dataclass(slots=True)
class Row:
    """One point read back from InfluxDB: its tags and its non-null fields."""

    measurement: str
    tags: dict[str, str]
    time_ns: int
    fields: dict[str, Any]


@dataclass(slots=True)
class Observed:
    """What a run left behind: the gateway's final stats file and everything InfluxDB holds."""

    stats: Mapping[str, Any]
    rows: dict[str, list[Row]]
    """Every point of every measurement."""
    field_types: dict[str, dict[str, set[str]]]
    """``SHOW FIELD KEYS``: measurement -> field -> its types (more than one means a conflict across shards)."""
    sink_exact: bool = True
    """The sink's counters cover the whole run (one gateway process): False after a SIGKILL."""
    per_device: dict[str, int] | None = None
    """Readings accepted per device since the gateway started (the stats file's live view, the ``readings``
    of ``device_watermark``): exact for a run in one process, None after a SIGKILL."""


def same_value(sent: Typed, stored: Any) -> bool:
    """A stored field (as InfluxDB's JSON answers: a whole float may come back without its point) equals a
    value as the contract stores it: a float compares as a float, an integer exactly, a boolean as a
    boolean, a string exactly."""
    kind, value = sent
    if kind == "boolean" or isinstance(stored, bool):
        return kind == "boolean" and isinstance(stored, bool) and stored == value
    if kind == "string" or isinstance(stored, str):
        return kind == "string" and isinstance(stored, str) and stored == value
    if kind == "integer":
        return _is_int(stored) and stored == value
    return _is_num(stored) and float(stored) == float(value)


@dataclass(slots=True)
class _Boot:
    seqs: set[int]
    latest: int
    since: int | None = None
    """The device's horizon when the boot was tracked: its readings at or before it may be forgotten ones."""
    floor: int = 0


@dataclass(slots=True)
class _Device:
    boots: dict[int, _Boot] = field(default_factory=dict)
    horizon: int | None = None

    def forget(self, boot: int) -> None:
        gone = self.boots.pop(boot)
        self.horizon = gone.latest if self.horizon is None else max(self.horizon, gone.latest)


class DedupModel:
    """The dedup's documented rules (docs/reliability.md, "What the dedup state cannot judge any more" and "A
    board whose boot counter starts again"; docs/protocol.md, "Identity"), for one run:

    - a device keeps ``max_boots`` boots; beyond, the boot whose latest reading is the oldest is forgotten
      and the device's horizon rises to that reading's time; a reading of a boot not tracked is `stale_boot`
      at or before the horizon, else the start of a new boot;
    - a boot keeps ``max_ranges`` ranges of sequence numbers; beyond, the lowest is forgotten and the
      boot's floor rises to its end; an untracked sequence number below the floor is `stale_seq`;
    - a taken identity (or one below the floor) is a duplicate (`stale_seq`), unless its time is after the
      latest its boot has accepted: a board whose counter started again, so the old boot is forgotten and the
      reading starts a new one;
    - a boot tracked while the horizon was H (a new one, or one tracked again) takes none of its readings at
      or before H: `stale_boot`, like a reading of a boot not tracked.
    """

    def __init__(self, max_boots: int = MAX_BOOTS, max_ranges: int = MAX_RANGES) -> None:
        self.max_boots = max_boots
        self.max_ranges = max_ranges
        self.devices: dict[str, _Device] = {}

    def check(self, device: str, boot: int, seq: int, t: int) -> str:
        """``new``, ``duplicate``, ``stale_boot`` or ``stale_seq``; a new reading is remembered."""
        d = self.devices.setdefault(device, _Device())
        b = d.boots.get(boot)
        if b is not None:
            taken = seq in b.seqs
            if taken or seq < b.floor:
                if b.since is not None and t <= b.since:
                    return "stale_boot"  # from before the boot was tracked (again)
                if t <= b.latest:
                    return "duplicate" if taken else "stale_seq"
                d.forget(boot)  # a counter that started again: the old boot's readings are all at or before t
                b = None
            elif b.since is not None and t <= b.since:
                return "stale_boot"
        if b is None:
            if d.horizon is not None and t <= d.horizon:
                return "stale_boot"
            d.boots[boot] = _Boot({seq}, t, since=d.horizon)
            if len(d.boots) > self.max_boots:  # the oldest latest reading goes; among equals the lowest boot
                d.forget(min(d.boots, key=lambda x: (d.boots[x].latest, x)))
            return "new"
        b.seqs.add(seq)
        b.latest = max(b.latest, t)
        self._trim(b)
        return "new"

    def _trim(self, b: _Boot) -> None:
        ranges = _ranges(b.seqs)
        while len(ranges) > self.max_ranges:
            lo, hi = ranges.pop(0)
            b.seqs -= set(range(lo, hi + 1))
            b.floor = hi + 1


def _ranges(seqs: set[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s in sorted(seqs):
        if out and out[-1][1] == s - 1:
            out[-1] = (out[-1][0], s)
        else:
            out.append((s, s))
    return out


def _match(edges: dict[int, list[int]]) -> dict[int, int]:
    """Maximum bipartite matching (dead letter -> slot), by augmenting paths; small graphs only."""
    owner: dict[int, int] = {}

    def augment(dl: int, seen: set[int]) -> bool:
        for slot in edges.get(dl, ()):
            if slot in seen:
                continue
            seen.add(slot)
            if slot not in owner or augment(owner[slot], seen):
                owner[slot] = dl
                return True
        return False

    for dl in edges:
        augment(dl, set())
    return {dl: slot for slot, dl in owner.items()}


@dataclass(slots=True)
class _Expected:
    """A point the ledger expects in ``reading``: an accepted reading."""

    verdict: Verdict
    rv: ReadingVerdict
    time_ns: int


def check(verdicts: Sequence[Verdict], obs: Observed, types: Mapping[str, Kind] | None = None) -> list[str]:
    """Every violation of the accounting in this run, each ``[category] what, and the message it is about``;
    empty when the run kept every promise. ``types`` is the gateway's ``[metric_types]``."""
    types = types or {}
    v: list[str] = []

    def add(category: str, text: str) -> None:
        v.append(f"[{category}] {text}")

    rows = obs.rows
    dead_rows = rows.get("dead_letter", [])
    pipeline = obs.stats.get("pipeline", {})
    sink = obs.stats.get("sink", {})

    # --- dead letters: each one is attributed to exactly one message or reading, by topic, level and reason
    sink_dead: list[Row] = []
    by_topic: dict[str, list[int]] = defaultdict(list)
    for k, row in enumerate(dead_rows):
        reason = row.tags.get("reason", "")
        if reason in NEVER_OK:
            add("internal", f"dead letter `{reason}` (the gateway's own code failed): {_dl(row)}")
        elif reason not in DOCUMENTED:
            add("undocumented-reason", f"dead letter with an undocumented reason {reason!r}: {_dl(row)}")
        if reason in SINK_REASONS:
            sink_dead.append(row)
        else:
            by_topic[str(row.fields.get("topic", ""))].append(k)
    msgs_by_topic: dict[str, list[Verdict]] = defaultdict(list)
    for vd in verdicts:
        msgs_by_topic[vd.sent.topic].append(vd)

    msg_dead: dict[int, str] = {}  # message n -> reason
    read_dead: dict[tuple[int, int], str] = {}  # (message n, index) -> reason
    for topic, dls in by_topic.items():
        candidates = msgs_by_topic.get(topic, [])
        slots: list[tuple[Verdict, int]] = []  # (message, -1 or reading index)
        for vd in candidates:
            slots.append((vd, -1))
            slots.extend((vd, rv.index) for rv in vd.readings)

        def edges_for(k: int, strict: bool, taken: set[int], slots: list[tuple[Verdict, int]] = slots) -> list[int]:
            row = dead_rows[k]
            reason = row.tags.get("reason", "")
            index = _int(row.fields.get("index"))
            ok = []
            for s, (vd, i) in enumerate(slots):
                if i != index or s in taken or vd.ignored:
                    continue
                if i == -1:
                    accept = vd.accept
                    allowed = vd.reasons | (STATE_MESSAGE if vd.kind != "none" else frozenset())
                    fits = _excerpt_fits(vd.sent, row) and row.fields.get("size") == len(vd.sent.payload)
                else:
                    rv = vd.readings[i]
                    accept = rv.accept
                    allowed = rv.reasons | STATE_READING
                    fits = _reading_excerpt_fits(rv, row) and row.fields.get("size") == len(vd.sent.payload)
                if accept == "must":  # honest: matched whatever the reason, and judged below
                    allowed = DOCUMENTED
                if reason in allowed and (not strict or fits):
                    ok.append(s)
            return ok

        # the excerpt and the size name a message (or a reading) among others on its topic; a message's dead
        # letter whose excerpt or size is wrong is still attributed (second pass) and reported
        matched = _match({k: edges_for(k, True, set()) for k in dls})
        loose = _match({k: edges_for(k, False, set(matched.values())) for k in dls if k not in matched})
        for k in dls:
            row = dead_rows[k]
            if k not in matched and k not in loose:
                add(
                    "unexplained-dead-letter",
                    f"dead letter that no message sent explains (or the contract does not allow): {_dl(row)}"
                    + "".join(
                        f"\n      candidate: {c.sent.describe(300)} (allowed {sorted(c.reasons)}; {c.why or 'valid'})"
                        for c in candidates[:3]
                    ),
                )
                continue
            vd, i = slots[matched[k] if k in matched else loose[k]]
            if k in loose and i == -1:
                add(
                    "dead-letter-excerpt",
                    f"dead letter's payload or size is not its message's: {_dl(row)}; {vd.sent.describe()}",
                )
            reason = row.tags["reason"]
            if i == -1:
                msg_dead[vd.sent.n] = reason
            else:
                read_dead[(vd.sent.n, i)] = reason
            v.extend(f"[dead-letter-fields] {x}" for x in _check_dead_letter_fields(vd, i, row))

    # --- in the order the gateway saw them: site bindings, metric names per device, the dedup's verdicts
    bound: dict[str, str] = {}  # device -> the site it was first admitted under
    names: dict[str, set[str]] = defaultdict(set)  # device -> the metric names of its accepted readings
    dedup = DedupModel()
    expected: dict[tuple[str, str, int], list[_Expected]] = defaultdict(list)
    statuses: list[Verdict] = []
    readings_in = accepted = duplicates = reading_dead = 0
    by_device: Counter[str] = Counter()
    for vd in verdicts:
        n = vd.sent.n
        if vd.ignored:
            continue
        dev, site = vd.device or "", vd.site or ""
        elsewhere = dev in bound and bound[dev] != site
        if n in msg_dead:
            reason = msg_dead[n]
            if any((n, rv.index) in read_dead for rv in vd.readings):
                add("both", f"rejected whole ({reason}) and reading by reading too: {vd.sent.describe()}")
            if reason == "site_mismatch" and not elsewhere:
                add(
                    "unjustified-dead-letter",
                    f"`site_mismatch`, but device {dev!r} is bound to {bound.get(dev)!r}: {vd.sent.describe()}",
                )
            elif vd.accept == "must" and reason != "site_mismatch":
                add("honest-rejected", f"must be accepted, was dead-lettered `{reason}`: {vd.sent.describe()}")
            continue
        if vd.accept == "never":
            add(
                "no-dead-letter",
                f"the contract rejects this message ({sorted(vd.reasons)}: {vd.why}), the gateway took it "
                f"without a dead letter: {vd.sent.describe()}",
            )
            continue
        if elsewhere:
            add(
                "no-dead-letter",
                f"device {dev!r} is bound to site {bound[dev]!r}; a message under {site!r} was taken, not "
                f"dead-lettered `site_mismatch`: {vd.sent.describe()}",
            )
        if vd.kind == "status":
            statuses.append(vd)
            bound.setdefault(dev, site)
            continue
        readings_in += len(vd.readings)
        keeps = vd.flushed
        for rv in vd.readings:
            dead = read_dead.get((n, rv.index))
            if dead is not None:
                reading_dead += 1
            if dead is not None and dead not in STATE_READING:
                if rv.accept == "must":
                    add("honest-rejected", f"honest reading {rv.index} dead-lettered `{dead}`: {vd.sent.describe()}")
                continue
            if dead is None and rv.accept == "never":
                add(
                    "no-dead-letter",
                    f"reading {rv.index} breaks the contract ({sorted(rv.reasons)}: {rv.why}) but no dead "
                    f"letter names it: {vd.sent.describe()}",
                )
                continue
            keeps = True  # a reading the decoder takes admits its device
            if rv.identity is None or rv.t is None:
                add("lost", f"reading {rv.index} has no identity but was not dead-lettered: {vd.sent.describe()}")
                continue
            fresh = set(rv.metrics) - names[dev]
            over = bool(fresh) and len(names[dev]) + len(fresh) > MAX_METRIC_NAMES
            if dead == "too_many_metrics":
                if not over:
                    add(
                        "unjustified-dead-letter",
                        f"reading {rv.index} dead-lettered `too_many_metrics`, but its device has "
                        f"{len(names[dev])} names and it adds {sorted(fresh)}: {vd.sent.describe()}",
                    )
                continue
            outcome = dedup.check(dev, *rv.identity, rv.t)
            if dead is not None:  # stale_boot or stale_seq
                if outcome != dead:
                    add(
                        "unjustified-dead-letter",
                        f"reading {rv.index} {rv.identity} t={rv.t} dead-lettered `{dead}`, the documented dedup "
                        f"says {outcome}: {vd.sent.describe()}",
                    )
                continue
            if outcome in STALE:
                add(
                    "no-dead-letter",
                    f"reading {rv.index} {rv.identity} t={rv.t} is `{outcome}` by the documented dedup bounds, "
                    f"but was taken without a dead letter: {vd.sent.describe()}",
                )
                continue
            if over and outcome == "new":
                add(
                    "no-dead-letter",
                    f"reading {rv.index} gives device {dev!r} {len(names[dev]) + len(fresh)} metric names "
                    f"(> {MAX_METRIC_NAMES}), no `too_many_metrics`: {vd.sent.describe()}",
                )
            if outcome == "duplicate":
                duplicates += 1
                continue
            accepted += 1
            by_device[dev] += 1
            names[dev] |= fresh
            ns = point_time_ns(rv.t, *rv.identity)
            expected[(site, dev, ns)].append(_Expected(vd, rv, ns))
        if keeps:
            bound.setdefault(dev, site)

    # --- lines the sink dead-lettered, by what they were
    refused_points: Counter[tuple[str, str, int]] = Counter()
    refused_devices: Counter[tuple[str, str]] = Counter()
    refused_status: Counter[tuple[str, str]] = Counter()
    seen_lines: Counter[str] = Counter()
    for row in sink_dead:
        line = str(row.fields.get("payload", ""))
        seen_lines[line] += 1
        meas, tags, _, ts = parse_line(line)
        key = (tags.get("site", ""), tags.get("device", ""))
        if (row.tags.get("site", ""), row.tags.get("device", "")) != key:
            add("dead-letter-fields", f"sink dead letter tagged {row.tags}, its line's tags are {tags}: {_dl(row)}")
        if meas == "reading":
            if ts is not None:
                refused_points[(*key, ts)] += 1
            else:
                refused_devices[key] += 1
        elif meas == "device_status":
            refused_status[key] += 1
    for line, count in seen_lines.items():
        if count > 1:
            add("refused-twice", f"the same refused line is dead-lettered {count} times: {line[:300]!r}")

    # --- readings: each accepted one is one point at its event time plus its offset, with its values
    reading_rows: dict[tuple[str, str, int], list[Row]] = defaultdict(list)
    for row in rows.get("reading", []):
        reading_rows[(row.tags.get("site", ""), row.tags.get("device", ""), row.time_ns)].append(row)
    for key, group in expected.items():
        first = group[0]
        if len(group) > 1:
            add(
                "same-point",
                f"{len(group)} accepted readings of {key[1]!r} share the time {key[2]} ns "
                f"({[e.rv.identity for e in group]}): one point for several readings: {first.verdict.sent.describe()}",
            )
        found = reading_rows.pop(key, [])
        honest = any(e.rv.accept == "must" for e in group)
        if not found and refused_points.get(key):
            refused_points[key] -= 1
            if honest:
                add("honest-refused", f"honest reading {key} refused by InfluxDB: {first.verdict.sent.describe()}")
            continue
        if not found and refused_devices.get(key[:2]):
            refused_devices[key[:2]] -= 1  # a refused line cut before its timestamp
            if honest:
                add("honest-refused", f"honest reading {key} refused by InfluxDB: {first.verdict.sent.describe()}")
            continue
        if not found:
            add(
                "lost",
                f"reading {first.rv.identity} t={first.rv.t} (index {first.rv.index}) was accepted but is not at "
                f"{key[2]} ns in InfluxDB, nor dead-lettered: {first.verdict.sent.describe()}",
            )
            continue
        if refused_points.get(key):
            add("both", f"reading {key} both written and dead-lettered as refused")
        row = found[0]
        problems = [_compare_reading(e.rv, row, obs.field_types.get("reading", {}), types) for e in group]
        if all(problems):
            add("stored-wrongly", f"reading at {key} stored wrongly: {problems[0]}: {first.verdict.sent.describe()}")
    for key, found in reading_rows.items():
        add(
            "unexplained-point",
            f"reading point {key} that no accepted reading explains: {found[0].fields}",
        )
    for key, count in (+refused_points).items():
        add("unexplained-refusal", f"{count} refused line(s) for a reading at {key}, which was not accepted")
    for key, count in (+refused_devices).items():
        add("unexplained-refusal", f"{count} refused reading line(s) of device {key} that no accepted reading explains")

    # --- one documented type per field (docs/measurements.md)
    fixed_reading: dict[str, str] = {"boot": "integer", "seq": "integer", "q": "string"}
    for name, kinds in obs.field_types.get("reading", {}).items():
        want = fixed_reading.get(name) or types.get(name, "float")
        if kinds != {want}:
            add("field-type", f"field {name!r} of `reading` has types {sorted(kinds)}, documented {want}")
    for name, kinds in obs.field_types.get("device_status", {}).items():
        want = STATUS_TYPES.get(name) or types.get(name, "float")
        if kinds != {want}:
            add("field-type", f"field {name!r} of `device_status` has types {sorted(kinds)}, documented {want}")
    dl_types = {"detail": "string", "topic": "string", "payload": "string", "size": "integer", "index": "integer"}
    for name, kinds in obs.field_types.get("dead_letter", {}).items():
        if kinds != {dl_types.get(name, "?")}:
            add("field-type", f"field {name!r} of `dead_letter` has types {sorted(kinds)}")

    # --- statuses: each accepted one is a device_status point with its fields
    status_rows: dict[tuple[str, str], list[Row]] = defaultdict(list)
    for row in rows.get("device_status", []):
        status_rows[(row.tags.get("site", ""), row.tags.get("device", ""))].append(row)
    status_by_device: dict[tuple[str, str], list[Verdict]] = defaultdict(list)
    for vd in statuses:
        status_by_device[(vd.site or "", vd.device or "")].append(vd)
    for key, vds in status_by_device.items():
        unmatched = status_rows.pop(key, [])
        refused = refused_status.pop(key, 0)
        missing = []
        for vd in vds:
            hit = next((r for r in unmatched if not _compare_status(vd.status, r)), None)
            if hit is None:
                missing.append(vd)
            else:
                unmatched.remove(hit)
        if refused and any(vd.accept == "must" for vd in missing):
            add("honest-refused", f"honest status of {key} refused by InfluxDB")
        for vd in missing[refused:]:
            why = _compare_status(vd.status, unmatched[0]) if unmatched else "no device_status point"
            add("status-not-stored", f"accepted status not stored as sent ({why}): {vd.sent.describe()}")
        for r in unmatched:
            add("unexplained-point", f"device_status point {key} {r.fields} that no accepted status explains")
        if refused > len(missing):
            add(
                "unexplained-refusal",
                f"{refused - len(missing)} refused device_status line(s) of {key} beyond its accepted statuses",
            )
    for key, found in status_rows.items():
        add("unexplained-point", f"{len(found)} device_status point(s) of {key} that no accepted status explains")
    for key, count in refused_status.items():
        add("unexplained-refusal", f"{count} refused device_status line(s) of {key} that no accepted status explains")

    # --- the counters agree with both
    total_dead = Counter(row.tags.get("reason", "") for row in dead_rows)
    pipe_dead = Counter({str(k): int(n) for k, n in pipeline.get("dead_by_reason", {}).items()})
    sink_written = sum(total_dead.pop(reason, 0) for reason in SINK_REASONS)
    for reason in SINK_REASONS:
        pipe_dead.pop(reason, None)
    ignored = sum(1 for vd in verdicts if vd.ignored)
    want_counts = {
        "messages": len(verdicts) - ignored,  # docs/reliability.md: `ignored` messages are not in `messages`
        "ignored": ignored,
        "readings_in": readings_in,
        "readings_accepted": accepted,
        "duplicates": duplicates,
        "status_updates": len(statuses),
        "dead_letters": sum(int(n) for n in pipeline.get("dead_by_reason", {}).values()),
    }
    for name, want in want_counts.items():
        if pipeline.get(name) != want:
            add("counters", f"stats pipeline.{name} = {pipeline.get(name)}, the ledger says {want}")
    if pipe_dead != total_dead:
        add(
            "counters",
            f"stats dead_by_reason {dict(sorted(pipe_dead.items()))} != dead letters in InfluxDB "
            f"{dict(sorted(total_dead.items()))}",
        )
    if pipeline.get("readings_in") != pipeline.get("readings_accepted", 0) + pipeline.get("duplicates", 0) + (
        reading_dead
    ):
        add(
            "counters",
            f"readings_in {pipeline.get('readings_in')} != accepted {pipeline.get('readings_accepted')} + "
            f"duplicates {pipeline.get('duplicates')} + dead readings {reading_dead}",
        )
    if obs.per_device is not None:  # the totals can hide two faults that cancel (one duplicate too many, one too few)
        for device in sorted(set(by_device) | {d for d, n in obs.per_device.items() if n}):
            if obs.per_device.get(device, 0) != by_device[device]:
                add(
                    "counters",
                    f"device {device!r}: the gateway accepted {obs.per_device.get(device, 0)} readings, "
                    f"the ledger says {by_device[device]}",
                )
    if obs.sink_exact:  # docs/reliability.md, "The counters are exact"
        points = sum(len(rs) for rs in rows.values()) - sink_written
        if sink.get("points_written") != points:
            per = {m: len(rs) for m, rs in sorted(rows.items())}
            add(
                "counters",
                f"stats sink.points_written = {sink.get('points_written')}, InfluxDB holds {points} points "
                f"besides the sink's {sink_written} dead letters {per}",
            )
        for name, reason in (("points_refused", "influx_refused"), ("points_unwritable", "unwritable")):
            n_dead = sum(1 for r in sink_dead if r.tags.get("reason") == reason)
            if sink.get(name, 0) != n_dead:
                add("counters", f"stats sink.{name} = {sink.get(name)}, the sink dead-lettered {n_dead} `{reason}`")
        if sink.get("dead_letters_written", 0) != sink_written or sink.get("dead_letters_lost", 0):
            add(
                "counters",
                f"stats sink.dead_letters_written = {sink.get('dead_letters_written')}, lost = "
                f"{sink.get('dead_letters_lost')}; InfluxDB holds {sink_written} sink dead letters",
            )
    return v


def _int(x: Any) -> int | None:
    if isinstance(x, bool):
        return None
    if isinstance(x, int):
        return x
    if isinstance(x, float) and x == int(x):
        return int(x)
    return None


def _dl(row: Row) -> str:
    f = row.fields
    return (
        f"reason={row.tags.get('reason')!r} topic={f.get('topic')!r} index={f.get('index')} "
        f"detail={str(f.get('detail'))[:200]!r} payload={str(f.get('payload'))[:200]!r}"
    )


EXCERPT = 200


def _excerpt_fits(sent: Sent, row: Row) -> bool:
    """A whole-message dead letter's excerpt names its message among others on the same topic: the first
    200 bytes of the payload, a character cut at the 200th byte and every byte that is not UTF-8 as
    ``\\xNN``, control characters as visible escapes, and ``…`` when the payload is longer
    (docs/measurements.md)."""
    head = sent.payload[:EXCERPT].decode("utf-8", errors="backslashreplace")
    want = visible(head) + ("…" if len(sent.payload) > EXCERPT else "")
    return str(row.fields.get("payload", "")) == want


def _reading_excerpt_fits(rv: ReadingVerdict, row: Row) -> bool:
    """A reading's dead letter names it: its first 200 characters as JSON (as sent, or as decoded)."""
    excerpt = str(row.fields.get("payload", ""))
    forms = [json.dumps(rv.raw, separators=(",", ":"), allow_nan=True)[:EXCERPT]]
    if rv.identity is not None and rv.t is not None and rv.q is not None:
        m = {k: vs[-1][1] for k, vs in rv.metrics.items() if vs}
        doc = {"b": rv.identity[0], "s": rv.identity[1], "t": rv.t, "q": rv.q, "m": m}
        forms.append(json.dumps(doc, separators=(",", ":"))[:EXCERPT])
    return excerpt in forms


def _check_dead_letter_fields(vd: Verdict, i: int, row: Row) -> list[str]:
    out = []
    f = row.fields
    if f.get("size") != len(vd.sent.payload):
        out.append(f"dead letter size {f.get('size')} for a {len(vd.sent.payload)}-byte payload: {_dl(row)}")
    if vd.site is not None and (row.tags.get("site"), row.tags.get("device")) != (vd.site, vd.device):
        out.append(f"dead letter tags {row.tags} for topic {vd.sent.topic!r}")
    return out


def _compare_reading(
    rv: ReadingVerdict, row: Row, stored_types: Mapping[str, set[str]], types: Mapping[str, Kind]
) -> str:
    """Empty when ``row`` holds reading ``rv`` as documented, else what differs."""
    if rv.identity is None or (row.fields.get("boot"), row.fields.get("seq")) != rv.identity:
        return f"boot/seq {row.fields.get('boot')}/{row.fields.get('seq')}, sent {rv.identity}"
    if rv.q is not None and row.fields.get("q") != rv.q:
        return f"q={row.fields.get('q')!r}, sent {rv.q!r}"
    names = set(row.fields) - {"boot", "seq", "q"}
    if names != set(rv.metrics):
        return f"fields {sorted(names)}, sent metrics {sorted(rv.metrics)}"
    for name, values in rv.metrics.items():
        stored = row.fields[name]
        if not any(same_value(x, stored) for x in values):
            return f"{name}={stored!r} ({sorted(stored_types.get(name, ()))}), sent {values[-1][1]!r} ({values[-1][0]})"
    return ""


def _compare_status(status: Mapping[str, list[Typed]], row: Row) -> str:
    if set(row.fields) != set(status):
        return f"fields {sorted(row.fields)}, sent {sorted(status)}"
    for name, values in status.items():
        if not any(same_value(x, row.fields[name]) for x in values):
            return f"{name}={row.fields[name]!r}, sent {values[-1][1] if values else '?'!r}"
    return ""
