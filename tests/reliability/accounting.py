"""The accounting of a run, checked against the documented contract (not against the gateway's code).

What the kit promises (docs/protocol.md, docs/measurements.md, docs/reliability.md): every reading sent is
exactly one of

(a) accepted: a point of the ``reading`` measurement, once, at its event time, with its values in their
    documented type (a number is a float);
(b) a duplicate of an identity (site, device, boot, seq) accepted before: counted, written nowhere;
(c) a dead letter with a documented reason, alone or with the whole message it came in;

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
  turned into a list of violations, each naming the message it is about.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

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

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}")
METRIC_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")
RESERVED = frozenset({"boot", "seq", "q", "rev", "time"})
STATES = frozenset({"online", "sleeping", "offline"})
QUALITIES = frozenset({"s", "c", "u"})
INT64 = (-(2**63), 2**63 - 1)

# docs/protocol.md's reason codes, and the ones the fixes of issue 16 add (bad_string, type_mismatch, ...)
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
# reasons that depend on what the gateway saw before (other devices, earlier boots, its device table):
# a reading or message that is valid on its own may still get one of these, unless it is honest traffic
STATE_READING = frozenset({"type_mismatch", "too_many_metrics", "stale_boot", "stale_seq", "site_mismatch"})
STATE_MESSAGE = frozenset({"site_mismatch", "too_many_devices", "too_many_metrics", "type_mismatch"})
STALE = frozenset({"stale_boot", "stale_seq"})  # a re-send the dedup state can no longer judge
SINK_REASONS = frozenset({"influx_refused", "unwritable"})  # added by the sink: the payload is the line
NEVER_OK = frozenset({"internal"})  # documented, but it says the gateway's own code failed


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


def has_surrogate(s: str) -> bool:
    return any("\ud800" <= c <= "\udfff" for c in s)


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


@dataclass(slots=True)
class ReadingVerdict:
    index: int
    accept: Accept
    """``must``: honest, valid, has to be accepted (or be a duplicate); ``may``: valid or ambiguous; ``never``:
    the contract rejects it."""
    reasons: frozenset[str]
    """Reasons a dead letter for this reading alone may carry."""
    identity: tuple[int, int] | None = None
    t: int | None = None
    q: str | None = None
    metrics: dict[str, list[Any]] = field(default_factory=dict)
    """Every value given for each metric name (more than one only for a repeated key)."""
    honest: bool = False
    why: str = ""


@dataclass(slots=True)
class Verdict:
    """What the contract says of one message."""

    sent: Sent
    kind: Literal["readings", "status", "none"]
    site: str | None
    device: str | None
    accept: Accept
    reasons: frozenset[str]
    """Reasons a dead letter for the whole message may carry."""
    ignored: bool = False
    readings: list[ReadingVerdict] = field(default_factory=list)
    status: dict[str, list[Any]] = field(default_factory=dict)
    """An accepted status's fields: every value given for each key except ``v`` and ``dev``."""
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


def _judge_string_value(b: _Breaches, s: str, what: str) -> None:
    if has_surrogate(s):
        b.must("bad_string", "schema", why=f"{what} has a lone surrogate")
        return
    cps, u16 = len(s), len(s.encode("utf-16-le")) // 2
    if cps > MAX_STRING:
        b.must("schema", why=f"{what} is {cps} characters")
    elif u16 > MAX_STRING:
        b.may("schema", why=f"{what} is {cps} characters but {u16} UTF-16 units")


def _judge_scalar(b: _Breaches, v: Any, what: str) -> None:
    """A metric or status value: a number (64-bit integer, or finite), a boolean, or a string."""
    if isinstance(v, bool):
        return
    if isinstance(v, str):
        _judge_string_value(b, v, what)
    elif isinstance(v, int):
        if not INT64[0] <= v <= INT64[1]:
            if 0 <= v < 2**64:
                b.may("schema", why=f"{what}={v} fits 64 bits only unsigned")
            else:
                b.must("schema", why=f"{what}={v} does not fit 64 bits")
    elif isinstance(v, float):
        if not math.isfinite(v):
            b.must("non_finite", why=f"{what}={v}")
    else:
        b.must("schema", why=f"{what} is {type(v).__name__}")


def _judge_metrics(b: _Breaches, m: Any) -> dict[str, list[Any]]:
    if not isinstance(m, Obj):
        b.must("schema", why=f"m is {type(m).__name__}")
        return {}
    n = len(m)
    if n == 0:
        b.must("schema", why="m is empty")
    elif n > MAX_METRICS:
        b.must("schema", "too_many_metrics", why=f"{n} metrics")
    elif m.pairs > MAX_METRICS:
        b.may("schema", why=f"{m.pairs} pairs for {n} metric names")
    for name, values in m.all.items():
        if not METRIC_RE.fullmatch(name) or name in RESERVED:
            b.must("schema", *(["bad_string"] if has_surrogate(name) else []), why=f"metric name {name!r}")
        inner = [_Breaches() for _ in values]
        for sub, v in zip(inner, values, strict=True):
            _judge_scalar(sub, v, f"metric {name!r}")
        last = inner[-1]
        b.definite |= last.definite
        b.maybe |= last.maybe
        b.why += last.why
        for sub in inner[:-1]:  # a repeated key: the gateway may keep any of its values
            b.maybe |= sub.definite | sub.maybe
    return {k: list(vs) for k, vs in m.all.items()}


def judge_reading(i: int, r: Any, now_ms: int, honest: bool, margin_ms: int = FUTURE_MARGIN_MS) -> ReadingVerdict:
    b = _Breaches()
    if not isinstance(r, Obj):
        return ReadingVerdict(i, "never", frozenset({"schema"}), why=f"reading is {type(r).__name__}")
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
                b.must("time_too_old", "schema" if ti < 0 else "time_too_old", why=f"t={ti} before 2020")
            elif ti > now_ms + MAX_FUTURE_MS + margin_ms:
                b.must("time_in_future", why=f"t={ti} in the future")
            elif ti > now_ms + (MAX_FUTURE_MS if margin_ms == 0 else 0):
                b.may("time_in_future", why=f"t={ti} near the future bound")
            t = ti
    q = r.get("q")
    if "q" in r and not (isinstance(q, str) and q in QUALITIES):
        b.must("schema", *(["bad_string"] if isinstance(q, str) and has_surrogate(q) else []), why=f"q={q!r:.40}")
    metrics = _judge_metrics(b, r["m"]) if "m" in r else {}
    ident = (boot, seq) if boot is not None and seq is not None else None
    if b.definite:
        return ReadingVerdict(
            i, "never", frozenset(b.definite | b.maybe), ident, t, None, metrics, honest, "; ".join(b.why)
        )
    if honest:
        assert not b.maybe, f"the strategies made an honest reading the contract finds ambiguous: {b.why}"
        return ReadingVerdict(i, "must", frozenset(), ident, t, q, metrics, True)
    return ReadingVerdict(
        i,
        "may",
        frozenset(b.maybe | STATE_READING),
        ident,
        t,
        q if isinstance(q, str) else None,
        metrics,
        False,
        "; ".join(b.why),
    )


def parse_topic(topic: str, prefix: str) -> tuple[str, str, str] | None:
    parts = topic.split("/")
    if len(parts) != 4 or parts[0] != prefix or parts[3] not in ("readings", "status"):
        return None
    if not (NAME_RE.fullmatch(parts[1]) and NAME_RE.fullmatch(parts[2])):
        return None
    return parts[1], parts[2], parts[3]


def judge(sent: Sent, prefix: str, now_ms: int, *, exact: bool = False) -> Verdict:
    """What docs/protocol.md says of one message. ``now_ms`` is when its payload was made; the gateway's clock
    reads a little later when it arrives, so times within an hour past the future bound are ambiguous, unless
    ``exact`` (``now_ms`` is the arrival time, as in the shared vectors)."""
    honest = sent.role in ("honest", "honest_status")
    parsed = parse_topic(sent.topic, prefix)

    def whole(reasons: Iterable[str], why: str, accept: Accept = "never") -> Verdict:
        rs = frozenset(reasons) | (frozenset() if honest or accept == "never" else STATE_MESSAGE)
        return Verdict(sent, kind, site, device, accept, rs, why=why)

    kind: Literal["readings", "status", "none"] = "none"
    site = device = None
    if parsed is None:
        return whole({"bad_topic"}, "bad topic")
    site, device, suffix = parsed
    kind = "readings" if suffix == "readings" else "status"
    payload = sent.payload
    if kind == "status" and payload == b"":
        v = Verdict(sent, kind, site, device, "must", frozenset(), ignored=True, why="cleared retained status")
        return v
    early: set[str] = set()
    if len(payload) > MAX_BYTES:
        early.add("oversize")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return whole(early | {"bad_utf8"}, "not UTF-8")
    try:
        doc = parse_json(text)
    except RecursionError:
        return whole(early | {"bad_json", "schema"}, "nested too deeply")
    except ValueError as exc:
        return whole(early | {"bad_json"}, f"not JSON: {exc}")
    if early:
        return whole(early, f"{len(payload)} bytes")
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
        b.must("device_mismatch", *(["bad_string", "schema"] if has_surrogate(dev) else []), why=f"dev={dev!r:.40}")
    if len(doc.all.get("dev", [])) > 1 and any(x != device for x in doc.all["dev"]):
        b.may("device_mismatch", "schema", why="repeated dev")
    if kind == "status":
        return _judge_status(sent, doc, b, site, device, honest)
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
        elif not 0 <= fl <= INT64[1]:  # docs/semantics.md ignores a marker before 2020; protocol.md sets no range
            b.may("schema", why=f"flushed={fl!r:.40}")
    if not isinstance(r, list):
        b.must("schema", why=f"r is {type(r).__name__}")
    elif len(r) > MAX_READINGS:
        b.must("too_many_readings", why=f"{len(r)} readings")
    elif not r and "flushed" not in doc:
        b.must("schema", why="r is empty and there is no flushed")
    readings = []
    if isinstance(r, list) and len(r) <= MAX_READINGS:
        margin = 0 if exact else FUTURE_MARGIN_MS
        readings = [judge_reading(i, x, now_ms, i in sent.honest_idx, margin) for i, x in enumerate(r)]
    if honest and sent.role == "honest":
        assert not b.definite and not b.maybe, f"the strategies made an honest message the contract rejects: {b.why}"
    if sent.honest_idx or honest:
        assert not b.definite and not b.maybe, f"a message with honest readings has a bad envelope: {b.why}"
        return Verdict(sent, kind, site, device, "must", frozenset(), readings=readings)
    if b.definite:
        return Verdict(
            sent, kind, site, device, "never", frozenset(b.definite | b.maybe), readings=readings, why="; ".join(b.why)
        )
    return Verdict(
        sent, kind, site, device, "may", frozenset(b.maybe | STATE_MESSAGE), readings=readings, why="; ".join(b.why)
    )


def _judge_status(sent: Sent, doc: Obj, b: _Breaches, site: str, device: str, honest: bool) -> Verdict:
    state = doc.get("state")
    if not (isinstance(state, str) and state in STATES):
        b.must(
            "schema",
            *(["bad_string"] if isinstance(state, str) and has_surrogate(state) else []),
            why=f"state={state!r:.40}",
        )
    if any(not (isinstance(x, str) and x in STATES) for x in doc.all.get("state", [])):
        b.may("schema", why="repeated state")
    fields: dict[str, list[Any]] = {}
    for key, values in doc.all.items():
        if key in ("v", "dev"):
            continue
        fields[key] = list(values)
        if key == "state":
            continue
        if not METRIC_RE.fullmatch(key) or key == "time":  # `time` cannot be a field: InfluxDB drops it
            b.must("schema", *(["bad_string"] if has_surrogate(key) else []), why=f"status key {key!r}")
        elif key in RESERVED - {"boot"}:  # the documented example sends `boot`, which metric names may not be
            b.may("schema", why=f"status key {key!r} is a reserved metric name")
        for i, v in enumerate(values):
            sub = _Breaches()
            _judge_scalar(sub, v, f"status {key!r}")
            if key == "sleep_s" and not sub.definite:
                if not _is_num(v) or not 0 < v <= 2_678_400:
                    sub.must("schema", why=f"sleep_s={v!r:.40}")
            if i == len(values) - 1:
                b.definite |= sub.definite
                b.maybe |= sub.maybe
                b.why += sub.why
            else:
                b.maybe |= sub.definite | sub.maybe
    if len(fields) > 1 + MAX_METRICS:
        b.may("schema", why=f"{len(fields)} status keys")
    if honest:
        assert not b.definite and not b.maybe, f"the strategies made an honest status the contract rejects: {b.why}"
        return Verdict(sent, "status", site, device, "must", frozenset(), status=fields)
    if b.definite:
        return Verdict(
            sent, "status", site, device, "never", frozenset(b.definite | b.maybe), status=fields, why="; ".join(b.why)
        )
    return Verdict(
        sent, "status", site, device, "may", frozenset(b.maybe | STATE_MESSAGE), status=fields, why="; ".join(b.why)
    )


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


def same_value(sent: Any, stored: Any) -> bool:
    """A stored field equals what was sent, in the documented type: a number compares as a float (an integer
    is written as a float), a boolean as a boolean, a string exactly."""
    if isinstance(sent, bool) or isinstance(stored, bool):
        return isinstance(sent, bool) and isinstance(stored, bool) and sent == stored
    if isinstance(sent, str) or isinstance(stored, str):
        return isinstance(sent, str) and isinstance(stored, str) and sent == stored
    if _is_num(sent) and _is_num(stored):
        return float(sent) == float(stored)
    return False


def kind_of(v: Any) -> str:
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, str):
        return "string"
    return "float"


@dataclass(slots=True)
class _Occ:
    """One occurrence of a reading in a message that was not rejected whole."""

    verdict: Verdict
    rv: ReadingVerdict
    dead: str | None = None  # the reason of its dead letter, if one was matched to it


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


def check(verdicts: Sequence[Verdict], obs: Observed) -> list[str]:
    """Every violation of the accounting in this run, each ``[category] what, and the message it is about``;
    empty when the run kept every promise."""
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
                if i != index or s in taken:
                    continue
                accept = vd.accept if i == -1 else _reading(vd, i).accept
                allowed = vd.reasons if i == -1 else _reading(vd, i).reasons
                if accept == "must":  # honest: matched whatever the reason, and reported below
                    allowed = DOCUMENTED
                fits = i != -1 or (_excerpt_fits(vd.sent, row) and row.fields.get("size") == len(vd.sent.payload))
                if reason in allowed and (not strict or fits):
                    ok.append(s)
            return ok

        # the excerpt and the size name a message among others on its topic; a dead letter whose excerpt or
        # size is wrong is still attributed (second pass) and reported
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

    # --- messages: rejected whole, ignored, or taken (and then each reading judged on its own)
    occs: list[_Occ] = []
    honest_dead: list[tuple[Verdict, ReadingVerdict, str]] = []
    statuses: list[Verdict] = []
    readings_in = 0
    for vd in verdicts:
        n = vd.sent.n
        if n in msg_dead:
            if any((n, rv.index) in read_dead for rv in vd.readings):
                add("both", f"rejected whole ({msg_dead[n]}) and reading by reading too: {vd.sent.describe()}")
            if vd.accept == "must":
                add("honest-rejected", f"must be accepted, was dead-lettered `{msg_dead[n]}`: {vd.sent.describe()}")
            continue
        if vd.ignored:
            continue
        if vd.accept == "never":
            add(
                "no-dead-letter",
                f"the contract rejects this message ({sorted(vd.reasons)}: {vd.why}), the gateway took it "
                f"without a dead letter: {vd.sent.describe()}",
            )
            continue
        if vd.kind == "status":
            statuses.append(vd)
            continue
        readings_in += len(vd.readings)
        for rv in vd.readings:
            dead = read_dead.get((n, rv.index))
            if dead is not None and rv.accept == "must":
                honest_dead.append((vd, rv, dead))
            if dead is None and rv.accept == "never":
                add(
                    "no-dead-letter",
                    f"reading {rv.index} breaks the contract ({sorted(rv.reasons)}: {rv.why}) but no dead "
                    f"letter names it: {vd.sent.describe()}",
                )
            occs.append(_Occ(vd, rv, dead))

    # --- lines the sink dead-lettered, by what they were
    refused_ids: Counter[tuple[str, str, int, int]] = Counter()
    refused_devices: Counter[tuple[str, str]] = Counter()
    refused_status: Counter[tuple[str, str]] = Counter()
    seen_lines: Counter[str] = Counter()
    for row in sink_dead:
        line = str(row.fields.get("payload", ""))
        seen_lines[line] += 1
        meas, tags, fields, _ = parse_line(line)
        key = (tags.get("site", ""), tags.get("device", ""))
        if meas == "reading":
            boot, seq = fields.get("boot"), fields.get("seq")
            if _is_int(boot) and _is_int(seq):
                refused_ids[(*key, boot, seq)] += 1
            else:
                refused_devices[key] += 1
        elif meas == "device_status":
            refused_status[key] += 1
    for line, count in seen_lines.items():
        if count > 1:
            add("refused-twice", f"the same refused line is dead-lettered {count} times: {line[:300]!r}")

    # --- readings: every identity's first occurrence not dead is accepted (a point, or a refused line),
    # every later one is a duplicate; nothing else is in `reading`
    reading_rows: dict[tuple[str, str, int, int], list[Row]] = defaultdict(list)
    for row in rows.get("reading", []):
        boot, seq = row.fields.get("boot"), row.fields.get("seq")
        key4 = (row.tags.get("site", ""), row.tags.get("device", ""), boot, seq)
        reading_rows[key4].append(row)  # type: ignore[index]
    by_id: dict[tuple[str, str, int, int], list[_Occ]] = defaultdict(list)
    for o in occs:
        if o.dead is None:
            if o.rv.identity is None:
                add(
                    "lost",
                    f"reading {o.rv.index} has no identity but was not dead-lettered: {o.verdict.sent.describe()}",
                )
                continue
            by_id[(o.verdict.site or "", o.verdict.device or "", *o.rv.identity)].append(o)
    for vd, rv, dead in honest_dead:  # only a re-send of a reading accepted before may be judged stale
        ident = (vd.site or "", vd.device or "", *rv.identity) if rv.identity else None
        earlier = [o for o in by_id.get(ident, []) if o.verdict.sent.n < vd.sent.n] if ident else []  # type: ignore[arg-type]
        if not (dead in STALE and earlier):
            add("honest-rejected", f"honest reading {rv.index} dead-lettered `{dead}`: {vd.sent.describe()}")
    accepted = duplicates = 0
    by_device: Counter[str] = Counter()
    metric_kinds: dict[str, set[str]] = defaultdict(set)
    for ident, group in by_id.items():
        accepted += 1
        by_device[ident[1]] += 1
        duplicates += len(group) - 1
        found = reading_rows.pop(ident, [])
        if refused_ids.get(ident):
            refused_ids[ident] -= 1
            if found:
                add("both", f"reading {ident} both written and dead-lettered as refused")
            if any(o.rv.accept == "must" for o in group):
                add("honest-refused", f"honest reading {ident} refused by InfluxDB: {group[0].verdict.sent.describe()}")
            continue
        if not found and refused_devices.get(ident[:2]):
            refused_devices[ident[:2]] -= 1  # a refused line cut before its boot and seq
            if any(o.rv.accept == "must" for o in group):
                add("honest-refused", f"honest reading {ident} refused by InfluxDB: {group[0].verdict.sent.describe()}")
            continue
        first = group[0]
        if not found:
            add(
                "lost",
                f"reading {ident} (index {first.rv.index}) was neither dead-lettered nor written "
                f"({len(group)} occurrence(s), none dead): {first.verdict.sent.describe()}",
            )
            continue
        if len(found) > 1:
            add("written-twice", f"reading {ident} written {len(found)} times, at {[r.time_ns for r in found]}")
        # the values of the first message that carried this identity (any of its copies within that message)
        firsts = [o for o in group if o.verdict.sent.n == first.verdict.sent.n]
        row = found[0]
        problems = [_compare_reading(o.rv, row) for o in firsts]
        if all(problems):
            add("stored-wrongly", f"reading {ident} stored wrongly: {problems[0]}: {first.verdict.sent.describe()}")
        for name, value in row.fields.items():
            if name not in ("boot", "seq", "q"):
                metric_kinds[name].add(kind_of(value))
    for ident, found in reading_rows.items():
        add(
            "unexplained-point",
            f"reading point {ident} at {found[0].time_ns} that no accepted reading explains: {found[0].fields}",
        )
    for ident, count in (+refused_ids).items():
        add("unexplained-refusal", f"{count} refused line(s) for reading {ident}, which was not accepted")
    for key, count in (+refused_devices).items():
        add("unexplained-refusal", f"{count} refused reading line(s) of device {key} that no accepted reading explains")

    # --- one documented type per field: numbers as floats, booleans, strings; boot and seq integers
    types = obs.field_types.get("reading", {})
    for name, kinds in types.items():
        want = {"boot": {"integer"}, "seq": {"integer"}, "q": {"string"}}.get(name)
        if want is None:
            want = metric_kinds.get(name, kinds if len(kinds) == 1 else set())
            if "float" in metric_kinds.get(name, set()) and kinds != {"float"}:
                add("field-type", f"metric {name!r} stored as {sorted(kinds)}; numbers are documented as floats")
                continue
        if kinds != want:
            add("field-type", f"field {name!r} of `reading` has types {sorted(kinds)}, documented {sorted(want)}")
    for meas in ("device_status", "dead_letter"):
        for name, kinds in obs.field_types.get(meas, {}).items():
            if len(kinds) > 1:
                add("field-type", f"field {name!r} of `{meas}` has {len(kinds)} types {sorted(kinds)}")

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
    for reason in SINK_REASONS:
        if pipe_dead.get(reason, 0) not in (0, total_dead.get(reason, 0)):
            add(
                "counters",
                f"pipeline counts {pipe_dead[reason]} `{reason}`, InfluxDB holds {total_dead.get(reason, 0)}",
            )
        pipe_dead.pop(reason, None)
        total_dead.pop(reason, None)
    reading_dead = sum(1 for o in occs if o.dead is not None)
    ignored = sum(1 for vd in verdicts if vd.ignored and vd.sent.n not in msg_dead)
    want_counts = {
        "messages": len(verdicts) - ignored,
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
                    f"the ledger says {by_device[device]} (distinct identities not dead-lettered)",
                )
    if obs.sink_exact:
        points = sum(len(rs) for rs in rows.values())
        if sink.get("points_written") != points:
            per = {m: len(rs) for m, rs in sorted(rows.items())}
            add(
                "counters",
                f"stats sink.points_written = {sink.get('points_written')}, InfluxDB holds {points} points {per}",
            )
        refused_n = sum(1 for r in dead_rows if r.tags.get("reason") in SINK_REASONS)
        if sink.get("points_refused") != refused_n:
            add(
                "counters",
                f"stats sink.points_refused = {sink.get('points_refused')}, the sink dead-lettered {refused_n}",
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


def _reading(vd: Verdict, i: int) -> ReadingVerdict:
    return vd.readings[i]


def _dl(row: Row) -> str:
    f = row.fields
    return (
        f"reason={row.tags.get('reason')!r} topic={f.get('topic')!r} index={f.get('index')} "
        f"detail={str(f.get('detail'))[:200]!r} payload={str(f.get('payload'))[:200]!r}"
    )


EXCERPT = 200


def _excerpt_fits(sent: Sent, row: Row) -> bool:
    """A whole-message dead letter's excerpt names its message among others on the same topic: the start of
    the payload, 200 characters (docs/measurements.md; cutting at 200 bytes, with a mark such as "…" and a
    split character escaped, names it as well); any excerpt fits a payload that is not UTF-8."""
    try:
        text = sent.payload.decode("utf-8")
    except UnicodeDecodeError:
        return True
    excerpt = str(row.fields.get("payload", ""))
    if excerpt == text[:EXCERPT]:
        return True
    cut = re.sub(r"(\\x[0-9a-f]{2})+$", "", excerpt.rstrip("…").removesuffix("..."))
    long_enough = len(cut) >= EXCERPT - 3 or len(cut.encode("utf-8", "surrogatepass")) >= EXCERPT - 4
    return len(text) > len(cut) and long_enough and text.startswith(cut)


def _check_dead_letter_fields(vd: Verdict, i: int, row: Row) -> list[str]:
    out = []
    f = row.fields
    if i == -1 and f.get("size") != len(vd.sent.payload):
        out.append(f"dead letter size {f.get('size')} for a {len(vd.sent.payload)}-byte payload: {_dl(row)}")
    if vd.site is not None and (row.tags.get("site"), row.tags.get("device")) != (vd.site, vd.device):
        out.append(f"dead letter tags {row.tags} for topic {vd.sent.topic!r}")
    return out


def _compare_reading(rv: ReadingVerdict, row: Row) -> str:
    """Empty when ``row`` holds reading ``rv`` as documented, else what differs."""
    if rv.t is None or not rv.t * 1_000_000 <= row.time_ns < (rv.t + 1) * 1_000_000:
        return f"time {row.time_ns} ns for t={rv.t} ms"
    if rv.q is not None and row.fields.get("q") != rv.q:
        return f"q={row.fields.get('q')!r}, sent {rv.q!r}"
    names = set(row.fields) - {"boot", "seq", "q"}
    if names != set(rv.metrics):
        return f"fields {sorted(names)}, sent metrics {sorted(rv.metrics)}"
    for name, values in rv.metrics.items():
        stored = row.fields[name]
        if not any(same_value(x, stored) for x in values):
            return f"{name}={stored!r} ({type(stored).__name__}), sent {values[-1]!r}"
    return ""


def _compare_status(status: Mapping[str, list[Any]], row: Row) -> str:
    if set(row.fields) != set(status):
        return f"fields {sorted(row.fields)}, sent {sorted(status)}"
    for name, values in status.items():
        if not any(same_value(x, row.fields[name]) for x in values):
            return f"{name}={row.fields[name]!r}, sent {values[-1]!r}"
    return ""
