"""Property tests of the decoder and the lines it leads to, over the whole JSON value space.

Messages are drawn from every JSON value (strings with lone surrogates and control characters, integers
and floats of every size and sign, NaN and infinities, nesting, duplicate keys), mostly in the shape of the
contract so that the decoder goes deep, and some not at all. For each:

- ``decode`` returns or raises :class:`DecodeError`, never anything else;
- an accepted reading's metrics have exactly their declared types, and a status' fields theirs;
- every line the pipeline writes for the message (readings, status, dead letters, windows, late readings,
  pattern and anomaly alerts) keeps to ``gateway/schema.py`` (every field of its one type), holds no control
  character, encodes as UTF-8, and a reading's point reads back to the reading's values exactly;
- nothing becomes an ``internal`` dead letter (the gateway's own code never fails on it).

``EDGEKIT_PROPERTY_EXAMPLES`` raises the number of examples for a longer run (docs/protocol.md)::

    EDGEKIT_PROPERTY_EXAMPLES=20000 .venv/bin/python -m pytest tests/gateway/test_decode_properties.py -q
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import schema
from gateway.config import parse_config
from gateway.errors import DecodeError
from gateway.model import Batch, StatusUpdate
from gateway.pipeline import Pipeline
from gateway.points import reading_line
from gateway.protocol import STATUS_FIELDS, decode

NOW = 1_764_072_100_000
EXAMPLES = int(os.environ.get("EDGEKIT_PROPERTY_EXAMPLES", "300"))
PROPERTY = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)

CONFIG: dict[str, Any] = {
    "metric_types": {"integer": ["n", "count"], "boolean": ["ok"], "string": ["note", "ssid"]},
    "windows": [
        {"name": "w", "kind": "tumbling", "size": "1m", "metrics": ["temp_c", "n", "ok"], "allowed_lateness": "1m"}
    ],
    "anomaly": {"metrics": ["temp_c", "n"], "write": "all"},
    "patterns": [
        {"name": "p1", "steps": [{"name": "a", "where": 'note == "x"'}, {"name": "b", "where": "ok == true"}]},
        {"name": "p2", "steps": [{"name": "hot", "where": "temp_c > 0"}, {"name": "up", "where": "n > prev.n"}]},
    ],
}
TYPES = parse_config(CONFIG, env={}).metric_types
GOOD = ["temp_c", "rh", "n", "count", "ok", "note", "ssid", "x"]
"""Metric and status field names: declared of each type, and undeclared."""
NAMES = [*GOOD, "time", "site", "device", "seq", "boot", "q", "Bad"]
"""... and reserved or invalid ones."""

# --- every JSON value ---------------------------------------------------------------------------------

SPECIAL = ["\ud800", "\udfff", "\udbff\udc00", "\n", "\r", "\t", "\x00", "\x1f", "\x7f", "\x85", "\u2028", "\ufeff",
           '"', "\\", "\\n", "é", "😀", "\U0010ffff", "\uffff", " ", ",", "="]  # fmt: skip
texts = st.one_of(
    st.text(st.characters(exclude_categories=()), max_size=70),  # every code point, lone surrogates too
    st.lists(st.sampled_from(SPECIAL), max_size=6).map("".join),
    st.sampled_from(["open", "x", "FAILED", "", "s", "c", "u", "online", "0.1.0"]),
)
integers = st.one_of(
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 1, -1, 2**53, 2**53 + 1, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 10**400]),
)
floats = st.one_of(st.floats(), st.sampled_from([0.0, -0.0, 21.0, 21.5, 1e300, 2.0**63, 9.3e18, 5e-324]))
scalars = st.one_of(st.none(), st.booleans(), integers, floats, texts)


@dataclass(frozen=True)
class Obj:
    """A JSON object as a list of pairs, so that a key may come twice."""

    pairs: tuple[tuple[str, Any], ...]


values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(st.tuples(st.one_of(texts, st.sampled_from(NAMES)), inner), max_size=4).map(lambda ps: Obj(tuple(ps))),
    ),
    max_leaves=12,
)


def dump(v: Any, ascii_only: bool) -> str:
    """JSON text of ``v``; NaN and Infinity bare (as MicroPython writes them)."""
    if isinstance(v, Obj):
        return "{" + ",".join(f"{dump(k, ascii_only)}:{dump(x, ascii_only)}" for k, x in v.pairs) + "}"
    if isinstance(v, dict):
        return dump(Obj(tuple(v.items())), ascii_only)
    if isinstance(v, list):
        return "[" + ",".join(dump(x, ascii_only) for x in v) + "]"
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v) if abs(v) < 10**4000 else "1" + "0" * 4400  # beyond int's default digit limit
    return json.dumps(v, ensure_ascii=ascii_only, allow_nan=True)


# --- messages in the shape of the contract ---------------------------------------------------------------


def mostly(common: st.SearchStrategy[Any], rare: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``common`` about seven times in eight, ``rare`` otherwise (so that most readings get deep)."""
    return st.integers(0, 7).flatmap(lambda k: rare if k == 0 else common)


near_now = st.integers(NOW - 3_600_000, NOW + 1_000)
times = mostly(near_now, st.one_of(st.sampled_from([NOW + 400_000, 946_684_800_000, 2**63]), values))
plausible = st.one_of(  # the values a board might send, of every kind
    st.floats(-1e6, 1e6), st.integers(-(10**6), 10**6), st.booleans(), texts, integers, floats
)


@st.composite
def fitting(draw: st.DrawFn, name: str) -> Any:
    """Mostly a value of the metric's declared type (of any size, with any character), else anything."""
    kind = TYPES.of(name)
    right = {
        "float": st.one_of(st.floats(-1e6, 1e6), floats, integers),
        "integer": st.one_of(st.integers(-(10**6), 10**6), integers, floats),
        "boolean": st.booleans(),
        "string": texts,
    }[kind]
    return draw(mostly(right, mostly(plausible, values)))


metric_maps = mostly(
    st.lists(mostly(st.sampled_from(GOOD), st.sampled_from(NAMES)), min_size=1, max_size=5, unique=True).flatmap(
        lambda names: st.fixed_dictionaries({n: fitting(n) for n in names})
    ),
    values,
)


@st.composite
def readings(draw: st.DrawFn) -> Any:
    r: dict[str, Any] = {
        "b": draw(mostly(st.integers(0, 3), values)),
        "s": draw(mostly(st.integers(0, 20), values)),
        "t": draw(times),
        "q": draw(mostly(st.sampled_from(["s", "c", "u"]), values)),
        "m": draw(metric_maps),
    }
    if draw(st.booleans()):
        r = dict(draw(st.permutations(list(r.items()))))
    return r


@st.composite
def messages(draw: st.DrawFn) -> tuple[str, bytes]:
    device = draw(st.sampled_from(["d1", "d2"]))
    kind = draw(st.sampled_from(["readings", "readings", "readings", "status", "any"]))
    if kind == "readings":
        doc: Any = {"v": 1, "dev": device, "r": draw(st.lists(readings(), max_size=5))}
        if draw(st.booleans()):
            doc["flushed"] = draw(mostly(st.integers(NOW - 60_000, NOW), values))
    elif kind == "status":
        state = draw(mostly(st.sampled_from(["online", "sleeping", "offline"]), values))
        doc = {"v": 1, "dev": device, "state": state}
        names = draw(st.lists(st.sampled_from([*NAMES, *STATUS_FIELDS]), max_size=6, unique=True))
        doc.update(
            {n: draw(fitting(n) if n not in STATUS_FIELDS else mostly(st.integers(1, 9999), plausible)) for n in names}
        )
    else:
        doc = draw(values)
    if kind == "any":
        kind = draw(st.sampled_from(["readings", "status"]))
    text = dump(doc, ascii_only=draw(st.booleans()))
    payload = text.encode("utf-8", errors="surrogatepass")  # a raw surrogate is not UTF-8 on the wire
    return f"edgekit/site-a/{device}/{kind}", payload


# --- the properties ---------------------------------------------------------------------------------------

PY_TYPE = {"float": float, "integer": int, "boolean": bool, "string": str}


def check_types(msg: Batch | StatusUpdate) -> None:
    if isinstance(msg, Batch):
        for r in msg.readings:
            for name, v in r.metrics.items():
                assert type(v) is PY_TYPE[TYPES.of(name)], (name, v)
                assert not (isinstance(v, float) and not math.isfinite(v))
    else:
        for name, v in msg.fields.items():
            assert type(v) is PY_TYPE[STATUS_FIELDS.get(name) or TYPES.of(name)], (name, v)


def check_lines(lines: list[str]) -> None:
    for text in lines:
        text.encode("utf-8")
        assert schema.check_line(text, TYPES) == [], text


@PROPERTY
@given(messages())
def test_decode_raises_only_decode_errors_and_types_every_value(msg: tuple[str, bytes]) -> None:
    topic, payload = msg
    try:
        result = decode(topic, payload, NOW, types=TYPES)
    except DecodeError as err:
        assert err.reason and err.detail
        err.detail.encode("utf-8")
        return
    check_types(result)
    for dead in result.rejected if isinstance(result, Batch) else ():
        assert dead.reason and dead.detail
        (dead.detail + dead.excerpt).encode("utf-8")


@PROPERTY
@given(st.lists(messages(), min_size=1, max_size=6))
def test_every_line_of_a_run_keeps_to_the_schema(msgs: list[tuple[str, bytes]]) -> None:
    schema.load_all()
    pipe = Pipeline(parse_config(CONFIG, env={}))
    for i, (topic, payload) in enumerate(msgs):
        out = pipe.handle(topic, payload, NOW + i)
        check_lines(out.lines)
        for r in out.readings:  # a reading's point reads back to the reading exactly
            _, tags, fields, _ = schema.parse_point(reading_line(r))
            assert tags == {"site": r.site, "device": r.device}
            assert {k: (v, type(v)) for k, v in fields.items() if k not in ("boot", "seq", "q")} == {
                k: (v, type(v)) for k, v in r.metrics.items()
            }
    check_lines(pipe.tick(NOW + 3_600_000).lines)
    assert pipe.stats.dead_by_reason["internal"] == 0


@settings(max_examples=max(EXAMPLES // 3, 50), deadline=None)
@given(st.binary(max_size=300), st.sampled_from(["edgekit/a/d/readings", "edgekit/a/d/status", "x/a/d/readings"]))
def test_decode_of_arbitrary_bytes(payload: bytes, topic: str) -> None:
    try:
        decode(topic, payload, NOW, types=TYPES)
    except DecodeError:
        pass
