"""The decoder's fast path (msgspec) against the reference (``json`` and checks field by field).

``decode`` must give exactly what ``decode_reference`` gives - the same readings with the same values of the
same types (floats to the bit, metrics in the same order), the same dead letters, the same error with the
same reason and detail - for every message: every JSON value (``test_decode_properties``' messages: lone
surrogates, control characters, integers and floats of every size, NaN and Infinity, duplicate keys) and
every way of writing a number, a key or a message (exponents, escapes, whitespace, unknown fields, nesting,
bytes that are not UTF-8), with and without declared metric types, under the default limits and small ones.
msgspec is a decoder we did not write: where it reads JSON differently from Python's, the fast path must
step aside, never answer.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_decode_properties import GOOD, NAMES, NOW, PROPERTY, TYPES, dump, floats, integers, messages, texts, values

from gateway.errors import DecodeError
from gateway.model import Batch, Reading, StatusUpdate
from gateway.protocol import Limits, _decode_fast, decode, decode_reference
from gateway.schema import NO_TYPES, MetricTypes

ROOT = Path(__file__).resolve().parents[2]
MORE = settings(parent=PROPERTY, max_examples=2 * PROPERTY.max_examples)
"""Twice the examples of test_decode_properties: about one message in eight takes the fast path."""
SMALL = Limits(max_readings=2, max_metrics=2, max_string=4)
SETUPS = [(Limits(), NO_TYPES), (Limits(), TYPES), (SMALL, NO_TYPES), (SMALL, TYPES)]


def exact(v: Any) -> tuple[str, Any]:
    """A value with its type, a float by its bits (so that -0.0 differs from 0.0)."""
    return (type(v).__name__, v.hex() if isinstance(v, float) else v)


def reading(r: Reading) -> tuple[Any, ...]:
    return (r.site, r.device, exact(r.boot), exact(r.seq), exact(r.t_ms), r.quality,
            tuple((k, exact(v)) for k, v in r.metrics.items()))  # fmt: skip


def canon(result: Batch | StatusUpdate) -> tuple[Any, ...]:
    if isinstance(result, Batch):
        flushed = None if result.flushed_ms is None else exact(result.flushed_ms)
        rejected = tuple(dataclasses.astuple(d) for d in result.rejected)
        return ("batch", result.site, result.device, result.topic, result.received_ms, flushed,
                tuple(reading(r) for r in result.readings), rejected)  # fmt: skip
    fields = tuple((k, exact(v)) for k, v in result.fields.items())
    return ("status", result.site, result.device, result.topic, result.received_ms, result.state, fields)


def outcome(fn: Any, topic: str, payload: bytes, limits: Limits, types: MetricTypes) -> tuple[Any, ...]:
    try:
        return canon(fn(topic, payload, NOW, limits=limits, types=types))
    except DecodeError as err:
        return ("error", err.reason, err.detail)


def same(topic: str, payload: bytes) -> int:
    """Check the fast path and ``decode`` against the reference in every setup; how many took the fast path."""
    taken = 0
    for limits, types in SETUPS:
        want = outcome(decode_reference, topic, payload, limits, types)
        assert outcome(decode, topic, payload, limits, types) == want, (payload, limits, types)
        fast = _decode_fast(topic, payload, NOW, limits, "edgekit", types)
        if fast is not None:
            assert canon(fast) == want, (payload, limits, types)
            assert not fast.rejected
            taken += 1
    return taken


# --- every JSON value, as test_decode_properties draws it ------------------------------------------------


@MORE
@given(messages())
def test_fast_path_agrees_on_every_json_value(msg: tuple[str, bytes]) -> None:
    same(*msg)


# --- every way of writing a message -----------------------------------------------------------------------


def rarely(draw: st.DrawFn, one_in: int) -> bool:
    """True about once in ``one_in`` draws (a middle value: hypothesis draws the ends of a range more often)."""
    return draw(st.integers(0, one_in - 1)) == one_in // 2


def mostly(common: st.SearchStrategy[Any], rare: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``common`` about seven times in eight, ``rare`` otherwise."""
    return st.integers(0, 7).flatmap(lambda k: rare if k == 4 else common)


SPECIAL_NUMBERS = ["-0", "-0.0", "0e0", "-0e-5", "1e-400", "-1e-400", "1e400", "2e308", "5e-324",
                   "9007199254740991", "9007199254740992", "9007199254740993", "-9007199254740993",
                   "9007199254740991.0", "9007199254740993.0", "9223372036854775807", "9223372036854775808",
                   "-9223372036854775808", "-9223372036854775809", "4.35", "21", "21.0", "1E2", "1e+02",
                   "NaN", "Infinity", "-Infinity"]  # fmt: skip


@st.composite
def number_text(draw: st.DrawFn) -> str:
    """A JSON number (or a token Python's json also reads) written any way: what a board or a library may send."""
    kind = 5 if rarely(draw, 25) else draw(st.integers(0, 4))  # something not a number one time in 25
    if kind == 0:
        return str(draw(integers))
    if kind == 1:
        x = draw(floats)
        return draw(
            st.sampled_from([repr(x), f"{x:.17e}", f"{x:.3g}", f"{x:E}", f"{x:.0f}" if abs(x) < 1e30 else repr(x)])
        )
    if kind == 2:  # digits and an exponent of any length: correct rounding at every size
        sign = draw(st.sampled_from(["", "-"]))
        whole = draw(st.from_regex(r"\A(0|[1-9][0-9]{0,30})\Z"))
        frac = draw(st.from_regex(r"\A[0-9]{0,40}\Z"))
        exp = draw(st.sampled_from(["", "e", "E", "e+", "e-", "E-"]))
        digits = draw(st.integers(0, 420)) if exp else ""
        return sign + whole + (f".{frac}" if frac else "") + (f"{exp}{digits:03d}" if exp else "")
    if kind == 3:
        return draw(st.sampled_from(SPECIAL_NUMBERS))
    if kind == 4:  # near the edges of 2**53 and of float's range, as integers and floats
        edge = draw(st.sampled_from([2**53, 2**63, 2**64, 10**308]))
        n = edge + draw(st.integers(-3, 3))
        return draw(st.sampled_from([str(n), str(-n), f"{n}.0", f"{n}e0"]))
    return draw(st.sampled_from(["true", "false", "null", '"21.5"', '""', "[]", "{}", "[1.5]"]))


def key_text(draw: st.DrawFn, name: str) -> str:
    """A key as JSON text, sometimes with some of its characters escaped (the same key to both decoders)."""
    if not name or not rarely(draw, 5):
        return dump(name, ascii_only=draw(st.booleans()))
    i = draw(st.integers(0, len(name) - 1))
    return '"' + dump(name[:i], True)[1:-1] + f"\\u{ord(name[i]):04x}" + dump(name[i + 1 :], True)[1:-1] + '"'


@st.composite
def obj_text(draw: st.DrawFn, pairs: list[tuple[str, str]]) -> str:
    """An object from (key, value text) pairs: shuffled, sometimes a key twice, sometimes unknown keys."""
    pairs = list(pairs)
    if rarely(draw, 6) and pairs:  # a key twice: the last one counts, in the first one's place
        k, _ = draw(st.sampled_from(pairs))
        pairs.insert(draw(st.integers(0, len(pairs))), (k, draw(st.one_of(number_text(), st.just(dump(1, True))))))
    if rarely(draw, 6):
        for _ in range(draw(st.integers(1, 2))):
            extra = draw(st.one_of(values.map(lambda v: dump(v, True)), number_text(), st.just('"\\ud800"')))
            pairs.insert(draw(st.integers(0, len(pairs))), (dump(draw(texts), True), extra))
    if rarely(draw, 3):
        pairs = draw(st.permutations(pairs))
    sep = draw(st.sampled_from(["", " ", "\n", "\t", "\r\n  "]))
    return "{" + sep + f",{sep}".join(f"{k}{sep}:{sep}{v}" for k, v in pairs) + sep + "}"


QUALITY = ['"s"', '"c"', '"u"', '"\\u0073"']


@st.composite
def reading_text(draw: st.DrawFn) -> str:
    """Mostly a reading both decoders accept (so that the fast path answers), its fields now and then not."""
    usual = st.lists(st.sampled_from([*GOOD[:2], "x", "pressure_hpa"]), min_size=1, max_size=4, unique=True)
    names = draw(mostly(usual, st.lists(st.sampled_from(NAMES + GOOD), max_size=4, unique=True)))
    numbers = number_text()
    metrics = [(key_text(draw, n), draw(numbers)) for n in names]
    t = draw(mostly(st.integers(NOW - 3_600_000, NOW + 1_000), st.sampled_from([NOW + 400_000, 0, 2**63])))
    pairs = [
        (key_text(draw, "b"), draw(mostly(st.sampled_from(["0", "1", "2147483647"]), numbers))),
        (key_text(draw, "s"), draw(mostly(st.integers(0, 99).map(str), numbers))),
        (key_text(draw, "t"), draw(mostly(st.just(str(t)), st.one_of(st.just(f"{t}.0"), numbers)))),
        (key_text(draw, "q"), draw(mostly(st.sampled_from(QUALITY), st.sampled_from(['"x"', "1", "null", '"S"'])))),
        (key_text(draw, "m"), draw(obj_text(metrics))),
    ]
    drop = draw(st.integers(0, 40)) - 20
    if 0 <= drop < len(pairs):  # a field missing, now and then
        del pairs[drop]
    return draw(obj_text(pairs))


@st.composite
def message_text(draw: st.DrawFn) -> tuple[str, bytes]:
    device = "d1"
    rs = draw(st.lists(reading_text(), min_size=0 if rarely(draw, 8) else 1, max_size=4))
    pairs = [
        ('"v"', draw(mostly(st.just("1"), st.sampled_from(["1.0", "1e0", "true", "2", "-0", '"1"'])))),
        (
            '"dev"',
            draw(mostly(st.sampled_from(['"d1"', '"\\u00641"']), st.sampled_from(['"d2"', '"d1\\u0000"', "null"]))),
        ),
        ('"r"', "[" + draw(st.sampled_from(["", " ", "\n"])).join([",".join(rs)]) + "]"),
    ]
    if draw(st.booleans()):
        pairs.append(('"flushed"', draw(mostly(st.just(str(NOW)), number_text()))))
    text = draw(obj_text(pairs))
    payload = text.encode("utf-8", errors="surrogatepass")
    if rarely(draw, 16):  # a byte that is not UTF-8, in a string or not
        i = draw(st.integers(0, len(payload)))
        payload = (
            payload[:i] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xef\xbb\xbf"])) + payload[i:]
        )
    topic = draw(mostly(st.just(f"edgekit/site-a/{device}/readings"),
                        st.sampled_from([f"edgekit/site-a/{device}/status", "edgekit/site-a/d2/readings",
                                         "edgekit/a b/d1/readings", "other/site-a/d1/readings"])))  # fmt: skip
    return topic, payload


@MORE
@given(message_text())
def test_fast_path_agrees_on_every_way_of_writing_a_message(msg: tuple[str, bytes]) -> None:
    same(*msg)


# --- vectors: what each decoder reads its own way -------------------------------------------------------

TOPIC = "edgekit/site-a/d1/readings"
R = '{"b":1,"s":%d,"t":%d,"q":"s","m":%s}'


def msg(*readings: str, extra: str = "") -> bytes:
    text = '{"v":1,"dev":"d1","r":[' + ",".join(readings) + "]" + extra + "}"
    return text.encode("utf-8", errors="surrogatepass")


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


VECTORS = {
    "plain": msg(R % (1, NOW, '{"temp_c":21.5,"rh":40.25}'), R % (2, NOW, '{"temp_c":21.75}')),
    "integer for a float metric": msg(R % (1, NOW, '{"temp_c":21}')),
    "integer with no exact float": msg(R % (1, NOW, '{"temp_c":9007199254740993}')),
    "integer with an exact float beyond 2**53": msg(R % (1, NOW, '{"temp_c":9007199254740994}')),
    "float beyond 2**53": msg(R % (1, NOW, '{"temp_c":1e20}')),
    "integer beyond 64 bits": msg(R % (1, NOW, '{"n":123456789012345678901234567890}')),
    "declared integer as a whole float": msg(R % (1, NOW, '{"n":21.0}')),
    "declared integer as a float": msg(R % (1, NOW, '{"n":21.5}')),
    "string metric": msg(R % (1, NOW, '{"note":"open"}')),
    "declared integer as a whole float, beside a float beyond 2**53": msg(R % (1, NOW, '{"n":21.0,"x":1e20}')),
    "declared integer as a float, beside a float beyond 2**53": msg(R % (1, NOW, '{"n":21.5,"x":1e20}')),
    "string with a control character escaped": msg(R % (1, NOW, '{"note":"a\\u0001"}')),
    "string with a lone surrogate": msg(R % (1, NOW, '{"note":"a\\ud800"}')),
    "boolean": msg(R % (1, NOW, '{"ok":true}')),
    "null value": msg(R % (1, NOW, '{"temp_c":null}')),
    "NaN": msg(R % (1, NOW, '{"temp_c":NaN}'), R % (2, NOW, '{"temp_c":1.5}')),
    "overflow to infinity": msg(R % (1, NOW, '{"temp_c":1e400}'), R % (2, NOW, '{"temp_c":1.5}')),
    "underflow to -0.0": msg(R % (1, NOW, '{"temp_c":-1e-400}')),
    "-0 integer": msg(R % (1, NOW, '{"temp_c":-0}')),
    "reserved name": msg(R % (1, NOW, '{"time":1.5}')),
    "bad name": msg(R % (1, NOW, '{"Temp":1.5}')),
    "escaped name": msg(R % (1, NOW, '{"\\u0074emp_c":1.5}')),
    "lone surrogate in a name": msg(R % (1, NOW, '{"temp\\udc00":1.5}')),
    "duplicate metric": msg(R % (1, NOW, '{"temp_c":1.5,"rh":2.5,"temp_c":3.5}')),
    "duplicate field, the last valid": msg(
        '{"b":"x","b":1,"s":1,"t":%d,"q":"s","m":{"rh":1.5}}'.replace("%d", str(NOW))
    ),
    "duplicate field, the last invalid": msg(
        '{"b":1,"b":"x","s":1,"t":%d,"q":"s","m":{"rh":1.5}}'.replace("%d", str(NOW))
    ),
    "duplicate r": msg(R % (1, NOW, '{"rh":1.5}'), extra=',"r":[]'),
    "empty metrics": msg(R % (1, NOW, "{}")),
    "too many metrics": msg(R % (1, NOW, "{" + ",".join(f'"m{i}":1.5' for i in range(17)) + "}")),
    "time too old": msg(R % (1, 1_000, '{"rh":1.5}'), R % (2, NOW, '{"rh":1.5}')),
    "time in the future": msg(R % (1, NOW + 10**9, '{"rh":1.5}'), R % (2, NOW, '{"rh":1.5}')),
    "time as a float": msg('{"b":1,"s":1,"t":%d.0,"q":"s","m":{"rh":1.5}}'.replace("%d", str(NOW))),
    "time -2**63": msg('{"b":1,"s":1,"t":%d,"q":"s","m":{"rh":1.5}}'.replace("%d", str(-(2**63)))),
    "seq out of range": msg(R % (2**31, NOW, '{"rh":1.5}')),
    "quality unknown": msg('{"b":1,"s":1,"t":%d,"q":"x","m":{"rh":1.5}}'.replace("%d", str(NOW))),
    "v as 1.0": msg(R % (1, NOW, '{"rh":1.5}')).replace(b'"v":1', b'"v":1.0'),
    "v as true": msg(R % (1, NOW, '{"rh":1.5}')).replace(b'"v":1', b'"v":true'),
    "dev escaped": msg(R % (1, NOW, '{"rh":1.5}')).replace(b'"dev":"d1"', b'"dev":"\\u00641"'),
    "dev of another device": msg(R % (1, NOW, '{"rh":1.5}')).replace(b'"dev":"d1"', b'"dev":"d2"'),
    "flushed null": msg(extra=',"flushed":null'),
    "flushed only": msg(extra=f',"flushed":{NOW}'),
    "flushed -2**63": msg(extra=f',"flushed":{-(2**63)}'),
    "flushed 2**63": msg(extra=f',"flushed":{2**63}'),
    "flushed as a float": msg(extra=f',"flushed":{NOW}.0'),
    "empty r, no flushed": msg(),
    "r not a list": b'{"v":1,"dev":"d1","r":{}}',
    "three readings": msg(*[R % (i, NOW, '{"rh":1.5}') for i in range(3)]),
    "64 readings": msg(*[R % (i, NOW, '{"rh":1.5,"temp_c":2.5}') for i in range(64)]),
    "too many readings": msg(*[R % (i, NOW, '{"rh":1.5}') for i in range(65)]),
    "unknown fields": msg(R % (1, NOW, '{"rh":1.5}'), extra=',"zz":[1,{"a":null}],"fw":"1.2"'),
    "NaN in an unknown field": msg(R % (1, NOW, '{"rh":1.5}'), extra=',"zz":[NaN,-Infinity]'),
    "lone surrogate in an unknown field": msg(R % (1, NOW, '{"rh":1.5}'), extra=',"zz":"\\ud800"'),
    "DEL raw in a string": msg(R % (1, NOW, '{"rh":1.5}'), extra=',"zz":"\x7f"'),
    "control character raw in a string": msg(R % (1, NOW, '{"rh":1.5}'), extra=',"zz":"\x01"'),
    "invalid UTF-8 in an unknown string": msg(R % (1, NOW, '{"rh":1.5}'), extra=',"zz":"') + b'\xff"}',
    "nested 60 deep in an unknown field": msg(R % (1, NOW, '{"rh":1.5}'), extra=',"zz":' + nested(60)),
    "nested 70 deep in an unknown field": msg(R % (1, NOW, '{"rh":1.5}'), extra=',"zz":' + nested(70)),
    "nested 200 deep in an unknown field": msg(R % (1, NOW, '{"rh":1.5}'), extra=',"zz":' + nested(200)),
    "nested 500 deep": msg(R % (1, NOW, '{"rh":1.5}'), extra=',"zz":' + nested(500)),
    "nested 3000 deep": msg(R % (1, NOW, '{"rh":1.5}'), extra=',"zz":' + nested(3000)),
    "trailing data": msg(R % (1, NOW, '{"rh":1.5}')) + b" {}",
    "trailing whitespace": msg(R % (1, NOW, '{"rh":1.5}')) + b" \n",
    "byte order mark": b"\xef\xbb\xbf" + msg(R % (1, NOW, '{"rh":1.5}')),
    "oversize": msg(
        *[R % (i, NOW, '{"temp_c":21.123456789012}') for i in range(64)], extra=',"zz":"' + "x" * 6000 + '"'
    ),
}


@pytest.mark.parametrize("name", list(VECTORS))
def test_fast_path_agrees_on_vectors(name: str) -> None:
    for topic in (TOPIC, "edgekit/site-a/d1/status", "edgekit/site-a/d1/nope"):
        same(topic, VECTORS[name])


def test_fast_path_is_taken_for_the_messages_boards_send() -> None:
    """Else the comparisons above would hold of a fast path that never answers."""
    for name in ["plain", "integer for a float metric", "duplicate metric", "escaped name", "unknown fields",
                 "underflow to -0.0", "flushed only", "nested 70 deep in an unknown field"]:  # fmt: skip
        assert same(TOPIC, VECTORS[name]) == len(SETUPS), name
    # declared types take the general shape; their values checked as the reference checks them
    assert same(TOPIC, VECTORS["64 readings"]) == 2  # under the default limits; the small ones allow 2
    for name in ["string metric", "boolean", "declared integer as a whole float", "float beyond 2**53"]:
        assert same(TOPIC, VECTORS[name]) >= 2, name
    for name in ["NaN", "time in the future", "nested 500 deep", "v as 1.0", "flushed null"]:
        assert same(TOPIC, VECTORS[name]) == 0, name
    r = _decode_fast(TOPIC, VECTORS["integer for a float metric"], NOW, Limits(), "edgekit", NO_TYPES)
    assert r is not None and exact(r.readings[0].metrics["temp_c"]) == exact(21.0)


def test_fast_path_steps_aside_for_an_integer_longer_than_python_converts() -> None:
    """Python's json refuses an integer of more digits than ``sys.get_int_max_str_digits()`` (bad_json), even in
    a field nobody reads; msgspec skips such a field without converting it (found by an outside review)."""
    old = sys.get_int_max_str_digits()
    try:
        for limit in (old, 640):
            sys.set_int_max_str_digits(limit)
            for digits in (limit, limit + 1):
                n = "1" * digits
                for extra in (f',"zz":{n}', f',"zz":-{n}', f',"zz":{{"a":[{n}]}}'):
                    same(TOPIC, msg(R % (1, NOW, '{"rh":1.5}'), extra=extra))
                same(TOPIC, msg('{"b":1,"s":1,"t":%d,"q":"s","zz":%s,"m":{"rh":1.5}}'.replace("%d", str(NOW)) % n))
            want = outcome(decode_reference, TOPIC, msg(R % (1, NOW, '{"rh":1.5}'), extra=f',"zz":{"1" * (limit + 1)}'),
                           Limits(), NO_TYPES)  # fmt: skip
            assert want[:2] == ("error", "bad_json")
    finally:
        sys.set_int_max_str_digits(old)


def test_fast_path_steps_aside_when_the_stack_runs_out() -> None:
    """Called deep in a stack, msgspec's decoder runs out of recursion where json does too: the reference's
    bad_json, not a RecursionError (found by an outside review)."""
    payload = msg(R % (1, NOW, '{"rh":1.5}'), extra=',"zz":' + nested(250))
    depth, frame = 0, sys._getframe()
    while frame is not None:
        depth, frame = depth + 1, frame.f_back
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(depth + 120)
    try:
        want = outcome(decode_reference, TOPIC, payload, Limits(), NO_TYPES)
        got = outcome(decode, TOPIC, payload, Limits(), NO_TYPES)
    finally:
        sys.setrecursionlimit(old)
    assert want == ("error", "bad_json", "nested too deeply")
    assert got == want


def test_pure_engine_decodes_with_the_reference_alone() -> None:
    code = "import gateway.protocol as p; print(p.FAST_DECODER)"
    for env, want in (({"EDGEKIT_ENGINE": "pure"}, "False"), ({"EDGEKIT_ENGINE": ""}, "True")):
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, **env},
                             capture_output=True, text=True, check=True)  # fmt: skip
        assert out.stdout.strip() == want
