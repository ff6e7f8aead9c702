"""Hypothesis strategies for a run of traffic: honest boards and arbitrary messages, interleaved.

A run (:func:`runs`) is a list of :class:`~accounting.Planned` messages in publishing order:

- honest boards on two or three sites: batches of valid readings (metrics ``temp_c`` and ``rh``, numbers
  that some encoders write as integers), re-sent readings, several readings in one millisecond, reboots,
  flush markers, retained statuses. Everything they send must be accepted (defects 1 and 2 of issue 16 were
  honest readings lost because of someone else's message);
- mixed messages: a valid envelope from a board of its own, honest readings beside arbitrary ones;
- hostile messages, each from a device of its own: any JSON value where the contract expects something
  (every string, lone surrogates and control characters included; integers and floats of every size and
  sign, ``-0.0``, ``1e308``, ``1e400``, 30-digit integers, ``NaN``), repeated keys, metric names that collide
  with tags (``site``, ``device``) or reserved names (``time``, ``boot``), mixed types for one metric name
  across devices, deep nesting, bytes that are not UTF-8, payloads of exactly the size limit and a little
  beyond, too many readings, arbitrary statuses, cleared statuses;
- garbage on an honest board's topic (a whole-message breach), a board id reused under another site,
  and topics the contract does not know.

Every metric has one type (docs/protocol.md, "Metric types"): :data:`METRIC_TYPES` is the ``[metric_types]``
the runs' gateway is given, so arbitrary values of every kind go to declared and undeclared metrics alike
(``temp_c`` and ``rh`` included: the honest boards' floats must arrive whatever others send). Each hostile
message has a topic of its own, so every dead letter names the message it is about.
"""

from __future__ import annotations

import os
import random
from typing import Any

from accounting import (
    MAX_BYTES,
    MIN_TIME_MS,
    RESERVED,
    JArr,
    JObj,
    JRaw,
    JStr,
    JTime,
    Kind,
    Planned,
    has_bad_char,
    num,
    obj,
)
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st

# a fixed seed and a few examples for `make test` (deterministic, bounded); EDGEKIT_ACCOUNTING_EXAMPLES=60
# for a longer run from a new seed, printed; EDGEKIT_ACCOUNTING_SEED repeats one; EDGEKIT_ACCOUNTING_SHRINK=1
# lets hypothesis shrink a failure (each step is a whole run: minutes)
EXAMPLES = int(os.environ.get("EDGEKIT_ACCOUNTING_EXAMPLES", "0"))
SEED = int(os.environ.get("EDGEKIT_ACCOUNTING_SEED") or (random.randrange(2**32) if EXAMPLES else 16))
SHRINK = os.environ.get("EDGEKIT_ACCOUNTING_SHRINK", "") not in ("", "0")


def property_settings(ci_examples: int) -> settings:
    """Hypothesis settings of the accounting tests: ``ci_examples`` unless EDGEKIT_ACCOUNTING_EXAMPLES says."""
    return settings(
        max_examples=EXAMPLES or ci_examples,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate] + ([Phase.shrink] if SHRINK else []),
        print_blob=True,
        suppress_health_check=list(HealthCheck),
    )


HONEST_METRICS = ("temp_c", "rh")
METRIC_TYPES: dict[str, Kind] = {
    "x": "integer",
    "level": "integer",
    "pulses": "integer",
    "y": "boolean",
    "relay": "boolean",
    "z": "string",
    "door": "string",
    "note": "string",
    "ssid": "string",
    "label": "string",
}
"""The runs' ``[metric_types]``: every other metric is a float."""
DAY_MS = 86_400_000

# ------------------------------------------------------------------------------------------- values

NUMBER_TEXTS = (
    "0",
    "-0",
    "-0.0",
    "0.0",
    "1e308",
    "-1e308",
    "1.7976931348623157e308",
    "5e-324",
    "1e-400",
    "1e400",
    "-1e400",
    "NaN",
    "Infinity",
    "-Infinity",
    "1E2",
    "1.0",
    "21",
    "21.0",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "-9223372036854775809",
    "18446744073709551615",
    "18446744073709551616",
    "123456789012345678901234567890",
    "-123456789012345678901234567890",
    "9007199254740993",
    "2147483647",
    "2147483648",
    "-1",
    "1e3",
    "0.1",
)

SPECIAL_STRINGS = (
    "",
    "\ud800",
    "a\udc00b",
    "\udfff\ud800",
    "\ud83d\ude00",
    "😀",
    "\n",
    "a\nb",
    "\r\n",
    "\x00",
    "\x7f",
    "\t",
    "\\n",
    '"',
    "\\",
    'a"b\\c',
    "\u2028",
    "\ufeff",
    "é",
    "x" * 64,
    "x" * 65,
    "😀" * 33,
    "😀" * 64,
    "é" * 64,
    "a,b=c d",
    "NaN",
    "true",
    "1",
)


ANY_CHAR = st.characters(codec=None, categories=None)  # every code point, lone surrogates included

NUMBERS = st.one_of(
    st.sampled_from(NUMBER_TEXTS).map(JRaw),
    st.integers().map(num),
    st.integers(min_value=-(2**70), max_value=2**70).map(num),
    st.floats(allow_nan=False, allow_infinity=False).map(num),
)
"""JSON numbers of every size and sign, as text (so ``-0.0``, ``1e400`` and 30-digit integers survive)."""

TEXTS = st.one_of(
    st.sampled_from(SPECIAL_STRINGS),
    st.text(ANY_CHAR, max_size=12),
    st.text(ANY_CHAR, min_size=60, max_size=70),
    st.text(st.sampled_from(["\ud800", "\udc00", "\n", "a", "é", "😀", "\x00", '"', "\\"]), max_size=8),
)
"""Any string: every code point (lone surrogates and control characters included), lengths around 64."""

JSTRINGS = st.builds(JStr, TEXTS, st.booleans())
SCALARS = st.one_of(NUMBERS, JSTRINGS, st.sampled_from([JRaw("true"), JRaw("false"), JRaw("null")]))
KEYS = st.one_of(st.sampled_from(["a", "b", "v", "m", "r", "x"]), TEXTS)


def _values(depth: int) -> st.SearchStrategy[Any]:
    if depth == 0:
        return SCALARS
    inner = _values(depth - 1)
    return st.one_of(
        SCALARS,
        st.lists(inner, max_size=3).map(lambda xs: JArr(tuple(xs))),
        st.lists(st.tuples(KEYS, inner), max_size=3).map(lambda ps: JObj(tuple(ps))),
    )


VALUES = {d: _values(d) for d in range(4)}
CONTAINERS = {
    d: st.one_of(
        st.lists(VALUES[d - 1], max_size=3).map(lambda xs: JArr(tuple(xs))),
        st.lists(st.tuples(KEYS, VALUES[d - 1]), max_size=3).map(lambda ps: JObj(tuple(ps))),
    )
    for d in range(1, 4)
}


def numbers() -> st.SearchStrategy[JRaw]:
    return NUMBERS


def texts() -> st.SearchStrategy[str]:
    return TEXTS


def jstrings() -> st.SearchStrategy[JStr]:
    return JSTRINGS


def scalars() -> st.SearchStrategy[Any]:
    return SCALARS


def values(max_depth: int = 3) -> st.SearchStrategy[Any]:
    """Any JSON value, nested at most ``max_depth`` levels."""
    return VALUES[max_depth]


METRIC_NAMES = (
    "temp_c",
    "rh",
    "x",
    "v1",
    "door",
    "level",
    "site",
    "device",
    "boot",
    "seq",
    "q",
    "rev",
    "time",
    "state",
    "reason",
    "Temp",
    "1a",
    "_x",
    "a" * 32,
    "a" * 33,
    "x-y",
    "é",
    "",
    "\ud800",
    "a b",
    "a,b",
    "a=b",
    'a"b',
    "a\\b",
    "a\nb",
    "m" * 200,
)


LOWER = "abcdefghijklmnopqrstuvwxyz"
VALID_NAMES = st.builds(lambda a, b: a + b, st.sampled_from(LOWER), st.text(LOWER + "0123456789_", max_size=31))
METRIC_NAME = st.one_of(
    st.sampled_from(METRIC_NAMES),
    st.sampled_from(["x", "y", "z", "w"]),  # a few shared names: mixed types across devices
    VALID_NAMES,
    TEXTS,
)
OTHER_VALUES = st.one_of(SCALARS, SCALARS, VALUES[2])

# valid, but unusual: what the contract allows must come through exactly (newlines, NUL, quotes,
# backslashes, emoji, -0.0, 1e308, 2^63-1, names that are also tags)
VALID_TEXTS = st.one_of(
    st.sampled_from([x for x in SPECIAL_STRINGS if not has_bad_char(x) and len(x) <= 64]),
    st.text(st.characters(codec="utf-8", exclude_categories=["Cc"]), max_size=12),
    st.text(st.characters(codec="utf-8", exclude_categories=["Cc"]), min_size=60, max_size=64),
)
"""Strings a field may hold: no lone surrogate, no control character (docs/protocol.md, "Strings")."""
VALID_NUMBERS = st.one_of(
    st.sampled_from(
        [
            "0",
            "-0",
            "-0.0",
            "1e308",
            "-1e308",
            "5e-324",
            "1e-400",
            "1E2",
            "1.0",
            "21",
            "0.1",
            "9223372036854775807",
            "-9223372036854775808",
            "9007199254740993",
        ]
    ).map(JRaw),
    st.integers(-(2**63), 2**63 - 1).map(num),
    st.floats(allow_nan=False, allow_infinity=False).map(num),
)
VALID_NAMES_ALL = st.one_of(
    st.sampled_from(["x", "y", "z", "w", "state", "reason", "level", "pulses", "relay", "door", "note"]),
    st.sampled_from(HONEST_METRICS),
    VALID_NAMES.filter(lambda n: n not in RESERVED),
)
WHOLE_FLOATS = st.sampled_from(["21.0", "-0.0", "0.0", "1e3", "1E2", "9.2e18", "-9.2e18", "1e19"]).map(JRaw)


def _value_of(draw: st.DrawFn, kind: str) -> Any:
    if kind == "boolean":
        return draw(st.sampled_from([JRaw("true"), JRaw("false")]))
    if kind == "string":
        return draw(st.builds(JStr, VALID_TEXTS, st.booleans()))
    if kind == "integer":
        return draw(st.one_of(st.integers(-(2**63), 2**63 - 1).map(num), WHOLE_FLOATS, VALID_NUMBERS))
    return draw(VALID_NUMBERS)


@st.composite
def valid_metric_pairs(draw: st.DrawFn) -> tuple[str, Any]:
    """A valid name with, mostly, a value of its declared type; sometimes a value of another kind."""
    name = draw(VALID_NAMES_ALL)
    kind = METRIC_TYPES.get(name, "float")
    if draw(st.integers(0, 3)) == 0:
        kind = draw(st.sampled_from(["boolean", "string", "integer", "float"]))
    return name, _value_of(draw, kind)


# a string whose only flaw is a lone surrogate (defect 1 of issue 16: it passed the decoder and broke the sink)
SURROGATE_TEXTS = st.text(
    st.sampled_from(["\ud800", "\udfff", "\udc00", "a", "\n", "é", "😀"]), min_size=1, max_size=6
).filter(lambda x: any("\ud800" <= c <= "\udfff" for c in x))


def metric_names() -> st.SearchStrategy[str]:
    return METRIC_NAME


@st.composite
def metric_pairs(draw: st.DrawFn) -> tuple[str, Any]:
    return draw(METRIC_NAME), draw(OTHER_VALUES)


# ------------------------------------------------------------------------------------------ readings


def honest_value() -> st.SearchStrategy[JRaw]:
    return st.one_of(
        st.integers(-400, 600).map(lambda x: num(round(x / 10, 1))),
        st.integers(-40, 60).map(num),  # 21 for 21.0: some JSON encoders write a whole float so
        st.sampled_from([JRaw("-0.0"), JRaw("0"), JRaw("1e3"), JRaw("21.0")]),
    )


def honest_reading(
    boot: int, seq: int, offset_ms: int, temp: JRaw, rh: JRaw | None, q: str = "s", extra: tuple[Any, ...] = ()
) -> JObj:
    m = [("temp_c", temp)] + ([("rh", rh)] if rh is not None else []) + list(extra)
    return obj(b=num(boot), s=num(seq), t=JTime(offset_ms), q=JStr(q), m=JObj(tuple(m)))


def honest_extras() -> st.SearchStrategy[list[tuple[str, Any]]]:
    """Metrics of the declared types an honest board may send beside its floats."""
    return st.lists(
        st.one_of(
            st.tuples(st.just("door"), st.sampled_from(["open", "closed", "ajar 5°", 'a "b" \\ c', "😀"]).map(JStr)),
            st.tuples(st.just("relay"), st.sampled_from([JRaw("true"), JRaw("false")])),
            st.tuples(
                st.just("pulses"),
                st.sampled_from([JRaw("0"), JRaw("21"), JRaw("21.0"), JRaw("-0.0"), JRaw("9007199254740993")]),
            ),
        ),
        max_size=3,
        unique_by=lambda kv: kv[0],
    )


def _field(draw: st.DrawFn, valid: Any) -> Any:
    """Mostly the valid value, sometimes anything."""
    return valid if draw(st.integers(0, 4)) else draw(values(2))


@st.composite
def arbitrary_reading(draw: st.DrawFn, max_boot: int = 2**31 - 1) -> Any:
    """A reading that may break the contract anywhere; ``max_boot`` bounds a valid boot counter (so it
    cannot make an honest neighbour's boot look old)."""
    if draw(st.integers(0, 9)) == 0:
        return draw(values(3))
    boot = draw(
        st.one_of(
            st.integers(0, max_boot).map(num),
            st.sampled_from([JRaw("-1"), JRaw("2147483648"), JRaw("1.0"), JRaw("true")]),
        )
    )
    seq = draw(st.one_of(st.integers(0, 2**31 - 1).map(num), st.sampled_from([JRaw("-1"), JRaw("2147483648")])))
    t = draw(
        st.one_of(
            st.integers(-2 * DAY_MS, -1).map(JTime),
            st.sampled_from(
                [
                    JRaw(str(MIN_TIME_MS)),
                    JRaw(str(MIN_TIME_MS - 1)),
                    JRaw("-1"),
                    JRaw("0"),
                    JTime(10 * DAY_MS),
                    JRaw("1e13"),
                    JRaw("99999999999999999999"),
                ]
            ),
        )
    )
    q = draw(st.one_of(st.sampled_from(["s", "c", "u"]).map(JStr), st.just(JStr("x")), jstrings()))
    if draw(st.booleans()):  # valid, if unusual: it must be accepted and stored exactly, or refused with a reason
        pairs = draw(st.lists(valid_metric_pairs(), min_size=1, max_size=16 if draw(st.integers(0, 9)) == 0 else 3))
        if draw(st.integers(0, 7)) == 0:
            pairs[-1] = (pairs[-1][0], JStr(draw(SURROGATE_TEXTS)))
        return obj(
            b=num(draw(st.integers(0, max_boot))),
            s=num(draw(st.integers(0, 2**31 - 1))),
            t=draw(st.one_of(st.integers(-2 * DAY_MS, -1).map(JTime), st.just(JRaw(str(MIN_TIME_MS))))),
            q=JStr(draw(st.sampled_from(["s", "c", "u"]))),
            m=JObj(tuple(pairs)),
        )
    many = draw(st.integers(0, 15)) == 0
    pairs = draw(st.lists(metric_pairs(), min_size=15 if many else 0, max_size=18 if many else 4))
    if pairs and draw(st.integers(0, 5)) == 0:  # a repeated metric name
        pairs.append((pairs[0][0], draw(scalars())))
    bad_boot = (
        values(2)
        if max_boot == 2**31 - 1
        else st.sampled_from([JRaw("-1"), JRaw("1.5"), JRaw("null"), JRaw("true"), JStr("1"), JArr(())])
    )  # a bounded boot stays bounded: a newer boot could make an honest neighbour's look stale
    fields: list[tuple[str, Any]] = [
        ("b", boot if draw(st.integers(0, 4)) else draw(bad_boot)),
        ("s", _field(draw, seq)),
        ("t", _field(draw, t)),
        ("q", _field(draw, q)),
        ("m", JObj(tuple(pairs)) if draw(st.integers(0, 9)) else draw(values(2))),
    ]
    if draw(st.integers(0, 6)) == 0:
        fields.pop(draw(st.integers(0, len(fields) - 1)))
    if draw(st.integers(0, 8)) == 0:  # an unknown key, or a repeated one
        fields.append((draw(st.sampled_from(["x", "b", "s", "t", "m"])), draw(scalars())))
    return JObj(tuple(fields))


# ------------------------------------------------------------------------------------------ boards


@st.composite
def honest_board(draw: st.DrawFn, site: str, device: str) -> list[Planned]:
    """An honest board's messages in order: batches, re-sends, same-millisecond readings, reboots, flush
    markers, and at most two retained statuses (told apart by ``buf``)."""
    topic = f"{{p}}/{site}/{device}/readings"
    boot = draw(st.integers(0, 50))
    seq = draw(st.integers(0, 1000))
    t = -draw(st.integers(DAY_MS, 2 * DAY_MS))
    sent_readings: list[JObj] = []
    out: list[Planned] = []
    for _ in range(draw(st.integers(1, 4))):
        batch: list[JObj] = []
        if sent_readings and draw(st.integers(0, 3)) == 0:  # re-send some readings the broker never acked
            batch += draw(st.lists(st.sampled_from(sent_readings), min_size=1, max_size=3, unique=True))
        for _ in range(draw(st.integers(0, 8))):
            step = draw(st.sampled_from([0, 1, 1000, 60_000, 60_000, 60_000]))  # 0: same millisecond
            if draw(st.integers(0, 15)) == 0:
                boot, seq, step = boot + 1, 0, max(step, 1)  # a reboot takes time: each boot's latest is its own
            t += step
            rh = draw(st.none() | honest_value())
            extra = tuple(draw(honest_extras())) if draw(st.integers(0, 3)) == 0 else ()
            r = honest_reading(boot, seq, t, draw(honest_value()), rh, draw(st.sampled_from("sscu")), extra)
            seq += 1
            batch.append(r)
            sent_readings.append(r)
        flushed = draw(st.booleans()) or not batch
        pairs: list[tuple[str, Any]] = [("v", num(1)), ("dev", JStr(device)), ("r", JArr(tuple(batch)))]
        if flushed:
            pairs.append(("flushed", JTime(t)))
        body = JObj(tuple(pairs))
        pad = MAX_BYTES if draw(st.integers(0, 12)) == 0 else None  # exactly at the limit
        out.append(Planned(topic, body, "honest", frozenset(range(len(batch))), pad_to=pad))
    for buf in range(draw(st.integers(0, 2))):
        out.insert(draw(st.integers(0, len(out))), honest_status(site, device, boot, buf, draw))
    return out


def honest_status(site: str, device: str, boot: int, buf: int, draw: st.DrawFn) -> Planned:
    battery = draw(st.sampled_from([num(3911), JRaw("3911.0"), num(3700)]))  # a whole float is an integer
    fields: list[tuple[str, Any]] = [
        ("v", num(1)),
        ("dev", JStr(device)),
        ("state", JStr(draw(st.sampled_from(["online", "sleeping", "offline"])))),
    ]
    optional = [
        ("boot", num(boot)),
        ("t", JTime(-draw(st.integers(0, DAY_MS)))),
        ("clock", JStr("s")),
        ("sleep_s", draw(st.sampled_from([num(300), num(1), JRaw("300.0"), num(2_678_400)]))),
        ("battery_mv", battery),
        ("buf_cap", num(256)),
        ("dropped", num(0)),
        ("fw", JStr("0.1.0")),
        ("rssi", draw(st.sampled_from([num(-70), num(-70.5)]))),  # not documented: a float
        ("ssid", JStr("greenhouse é")),  # declared a string
    ]
    fields += [kv for kv in optional if draw(st.booleans())]
    fields.append(("buf", num(buf)))
    return Planned(f"{{p}}/{site}/{device}/status", JObj(tuple(fields)), "honest_status", retain=True)


@st.composite
def mixed_message(draw: st.DrawFn, site: str, device: str) -> Planned:
    """A valid envelope with honest readings (boot 1000, never older than the arbitrary ones' boots) and
    arbitrary readings, at most 64 in all."""
    honest = [
        honest_reading(1000, i, -DAY_MS + 60_000 * i, draw(honest_value()), None)
        for i in range(draw(st.integers(1, 3)))
    ]
    others = draw(st.lists(arbitrary_reading(max_boot=999), min_size=1, max_size=5))
    readings: list[Any] = list(others)
    honest_idx = []
    for r in honest:
        at = draw(st.integers(0, len(readings)))
        readings.insert(at, r)
        honest_idx = [i + 1 if i >= at else i for i in honest_idx] + [at]
    body = obj(v=num(1), dev=JStr(device), r=JArr(tuple(readings)))
    return Planned(f"{{p}}/{site}/{device}/readings", body, "mixed", frozenset(honest_idx))


@st.composite
def hostile_message(draw: st.DrawFn, site: str, device: str) -> Planned:
    """Anything at all from a device of its own."""
    topic = f"{{p}}/{site}/{device}/readings"
    kind = draw(st.integers(0, 13))
    dev: Any = JStr(device)
    if draw(st.integers(0, 9)) == 0:
        dev = draw(st.one_of(jstrings(), values(1), st.just(JStr(device + "x"))))
    readings = draw(st.lists(arbitrary_reading(), max_size=4))
    if kind <= 5:  # a near-valid envelope
        pairs: list[tuple[str, Any]] = [("v", num(1)), ("dev", dev), ("r", JArr(tuple(readings)))]
        if draw(st.integers(0, 3)) == 0:
            pairs.append(("flushed", draw(st.one_of(st.just(JTime(-60_000)), numbers(), values(1)))))
        if draw(st.integers(0, 4)) == 0:
            at = draw(st.integers(0, len(pairs) - 1))
            pairs[at] = (pairs[at][0], draw(values(2)))
        if draw(st.integers(0, 6)) == 0:  # a repeated envelope key
            pairs.append((draw(st.sampled_from(["v", "dev", "r", "flushed"])), draw(values(1))))
        return Planned(topic, JObj(tuple(pairs)), "hostile")
    if kind == 6:
        return Planned(topic, draw(values(3)), "hostile")
    if kind == 7:  # not UTF-8
        raw = draw(st.sampled_from([b"\xff", b"\xed\xa0\x80", b"\xc0\x80", b"\xe2\x82", b"caf\xe9", b"\x80abc"]))
        return Planned(topic, b'{"v":1,"dev":"' + device.encode() + b'","r":[' + raw + b"]}", "hostile")
    if kind == 8:  # not JSON
        raw = draw(
            st.sampled_from(
                [
                    b"",
                    b"\x00",
                    b"{",
                    b"nul",
                    b'{"v":1,}',
                    b"[1,2",
                    b'{"a":"\n"}',
                    b"{'v':1}",
                    b'{"v":1,"dev":"x","r":[]}garbage',
                ]
            )
        )
        return Planned(topic, raw, "hostile")
    if kind == 9:  # deeply nested
        depth = draw(st.sampled_from([50, 200, 2000, 4000]))
        return Planned(
            topic, b'{"v":1,"dev":"' + device.encode() + b'","r":' + b"[" * depth + b"]" * depth + b"}", "hostile"
        )
    if kind == 10:  # the size limit: exactly at it, or a little beyond
        good = honest_reading(1, 0, -DAY_MS, num(1.5), None)
        pad = MAX_BYTES + draw(st.sampled_from([0, 0, 1, 2, 100]))
        return Planned(topic, obj(v=num(1), dev=JStr(device), r=JArr((good,))), "hostile", pad_to=pad)
    if kind == 11:  # too many readings (fresh identities: if they were taken, the ledger would see them)
        n = draw(st.sampled_from([64, 65, 80]))
        rs = tuple(honest_reading(1, i, -DAY_MS + i, num(1.0), None) for i in range(n))
        return Planned(topic, obj(v=num(1), dev=JStr(device), r=JArr(rs)), "hostile")
    return hostile_status(draw, site, device, dev)


def hostile_status(draw: st.DrawFn, site: str, device: str, dev: Any) -> Planned:
    topic = f"{{p}}/{site}/{device}/status"
    pairs: list[tuple[str, Any]]
    if draw(st.integers(0, 6)) == 0:
        return Planned(topic, b"", "hostile", retain=True)  # clears the retained status: ignored
    if draw(st.booleans()):  # valid, if unusual: stored exactly as sent, or refused with a reason
        state = JStr(draw(st.sampled_from(["online", "sleeping", "offline"])))
        pairs = [("v", num(1)), ("dev", JStr(device)), ("state", state)]
        pairs += draw(st.lists(valid_metric_pairs().filter(lambda kv: kv[0] not in ("sleep_s", "state")), max_size=5))
        if draw(st.integers(0, 5)) == 0:
            pairs.append(("note", JStr(draw(SURROGATE_TEXTS))))
        return Planned(topic, JObj(tuple(pairs)), "hostile", retain=True)
    state = draw(st.one_of(st.sampled_from(["online", "sleeping", "offline"]).map(JStr), jstrings()))
    pairs = [("v", num(1)), ("dev", dev), ("state", state)]
    names = st.one_of(
        st.sampled_from(["time", "boot", "t", "sleep_s", "battery_mv", "buf", "fw", "site", "state", "seq", "x", "y"]),
        metric_names(),
    )
    pairs += draw(st.lists(st.tuples(names, st.one_of(scalars(), values(1))), max_size=6))
    return Planned(topic, JObj(tuple(pairs)), "hostile", retain=True)


BAD_TOPICS = (
    "{p}/{s}/{d}/telemetry",
    "{p}/{s}/{d}",
    "{p}/{s}/{d}/readings/x",
    "{p}/{s}/{d}/status/",
    "{p}/bad site/{d}/readings",
    "{p}/{s}/-{d}/readings",
    "{p}/{s}/{d}.x/status",
    "{p}/{s}/dév{d}/readings",
    "{p}//{d}/readings",
    "{p}/{s}/" + "a" * 30 + "{d}/readings",
    "{p}/{s}/{d}/READINGS",
    "{p}/{s}",
)


@st.composite
def bad_topic_message(draw: st.DrawFn, site: str, device: str) -> Planned:
    pattern = draw(st.sampled_from(BAD_TOPICS))
    body = obj(v=num(1), dev=JStr(device), r=JArr((honest_reading(1, 0, -DAY_MS, num(2.5), None),)))
    return Planned(pattern.replace("{s}", site).replace("{d}", device), body, "bad_topic")


@st.composite
def garbage_message(draw: st.DrawFn, site: str, device: str) -> Planned:
    """A whole-message breach on an honest board's topic: it must cost nothing but itself."""
    topic = f"{{p}}/{site}/{device}/readings"
    g = draw(st.integers(0, 5))
    fresh = tuple(honest_reading(9999, i, -DAY_MS + i, num(3.5), None) for i in range(draw(st.integers(1, 3))))
    if g == 0:
        return Planned(topic, b"\xff\xfe" + device.encode(), "garbage")
    if g == 1:
        return Planned(topic, b'{"v":1,"dev":"' + device.encode() + b'","r":[', "garbage")
    if g == 2:
        return Planned(topic, obj(v=num(2), dev=JStr(device), r=JArr(fresh)), "garbage")
    if g == 3:
        return Planned(topic, obj(v=num(1), dev=JStr(device + "-not"), r=JArr(fresh)), "garbage")
    if g == 4:
        return Planned(
            topic,
            obj(v=num(1), dev=JStr(device), r=JArr(fresh)),
            "garbage",
            pad_to=MAX_BYTES + draw(st.integers(1, 50)),
        )
    many = tuple(honest_reading(9998, i, -DAY_MS + i, num(3.5), None) for i in range(65))
    return Planned(topic, obj(v=num(1), dev=JStr(device), r=JArr(many)), "garbage")


# ------------------------------------------------------------------------------------------- a run

ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
SITE_NAMES = st.builds(lambda a, b: a + b, st.sampled_from(ALNUM), st.text(ALNUM + "_-", max_size=12))
TAIL = st.text(ALNUM + "_-", max_size=6)


@st.composite
def runs(draw: st.DrawFn, max_boards: int = 5, max_hostile: int = 30) -> list[Planned]:
    """One run's messages, in the order they are published."""
    sites = draw(st.lists(SITE_NAMES, min_size=2, max_size=3, unique_by=str.lower))
    boards = [(draw(st.sampled_from(sites)), f"d{i}x{draw(TAIL)}") for i in range(draw(st.integers(1, max_boards)))]
    lanes: list[list[Planned]] = [draw(honest_board(site, dev)) for site, dev in boards]
    extra: list[Planned] = []
    n = 0
    for _ in range(draw(st.integers(0, max_hostile))):
        n += 1
        site, dev = draw(st.sampled_from(sites)), f"h{n}x{draw(TAIL)}"
        which = draw(st.integers(0, 9))
        if which <= 1:
            extra.append(draw(mixed_message(site, dev)))
        elif which <= 6:
            extra.append(draw(hostile_message(site, dev)))
        elif which == 7:
            extra.append(draw(bad_topic_message(site, dev)))
        elif which == 8:
            lane = draw(st.integers(0, len(lanes) - 1))
            bsite, bdev = boards[lane]
            at = draw(st.integers(0, len(lanes[lane])))
            lanes[lane].insert(at, draw(garbage_message(bsite, bdev)))
        else:  # the id of an honest board under another site, after that board's first message
            lane = draw(st.integers(0, len(lanes) - 1))
            bsite, bdev = boards[lane]
            other = next(s for s in sites if s != bsite)
            rs = tuple(honest_reading(7, i, -DAY_MS + i, num(4.5), None) for i in range(draw(st.integers(1, 3))))
            body = obj(v=num(1), dev=JStr(bdev), r=JArr(rs))
            first = next(i for i, p in enumerate(lanes[lane]) if p.role == "honest")
            at = draw(st.integers(first + 1, len(lanes[lane])))
            lanes[lane].insert(at, Planned(f"{{p}}/{other}/{bdev}/readings", body, "collider"))
    # interleave: each board's lane keeps its order; the rest go anywhere
    lanes += [[m] for m in extra]
    order = draw(st.permutations([i for i, lane in enumerate(lanes) for _ in lane]))
    pos = [0] * len(lanes)
    out = []
    for i in order:
        out.append(lanes[i][pos[i]])
        pos[i] += 1
    return out


def known_holes() -> list[Planned]:
    """One run with a trigger of each hole issue 16 found (it runs first in every accounting test)."""
    north, south = "north", "south-1"

    def batch(
        site: str, dev: str, readings: list[JObj], role: str = "honest", flushed: int | None = None, honest: bool = True
    ) -> Planned:
        pairs: list[tuple[str, Any]] = [("v", num(1)), ("dev", JStr(dev)), ("r", JArr(tuple(readings)))]
        if flushed is not None:
            pairs.append(("flushed", JTime(flushed)))
        idx = frozenset(range(len(readings))) if honest else frozenset()
        return Planned(f"{{p}}/{site}/{dev}/readings", JObj(tuple(pairs)), role, idx)  # type: ignore[arg-type]

    def reading(b: int, s: int, t: int, **m: Any) -> JObj:
        return obj(b=num(b), s=num(s), t=JTime(t), q=JStr("s"), m=obj(**m))

    def status(site: str, dev: str, role: str, **kv: Any) -> Planned:
        return Planned(f"{{p}}/{site}/{dev}/status", obj(v=num(1), dev=JStr(dev), **kv), role, retain=True)  # type: ignore[arg-type]

    t0 = -DAY_MS
    out = [
        # defect 2: an integer first fixes the field's type; every later float of every board is refused
        batch(north, "h-int", [reading(1, 0, t0, temp_c=num(21))], "hostile", honest=False),
        status(north, "d-one", "honest_status", state=JStr("online"), battery_mv=num(3911), buf=num(0)),
        # honest boards, with two readings in one millisecond (defect 10)
        batch(
            north,
            "d-one",
            [
                reading(3, 0, t0, temp_c=num(20.5), rh=num(40.0)),
                reading(3, 1, t0 + 1000, temp_c=num(20.6)),
                reading(3, 2, t0 + 1000, temp_c=num(20.7)),
            ],
        ),
        batch(south, "d-two", [reading(1, i, t0 + 60_000 * i, temp_c=num(18.0 + i)) for i in range(3)]),
        # defect 1: a lone surrogate beside honest readings, in the same burst as the honest boards
        Planned(
            f"{{p}}/{north}/h-sur/readings",
            obj(
                v=num(1),
                dev=JStr("h-sur"),
                r=JArr((reading(1000, 0, t0, temp_c=num(1.5)), reading(5, 0, t0, note=JStr("\ud800")))),
            ),
            "mixed",
            frozenset({0}),
        ),
        # defect 10: a newline in a string (bad_string), a boolean for a float metric; a status field named `time`
        batch(south, "h-nl", [reading(1, 0, t0, note=JStr("a\nb"), flag=JRaw("true"))], "hostile", honest=False),
        status(south, "h-time", "hostile", state=JStr("online"), time=num(5)),
        status(
            south,
            "d-two",
            "honest_status",
            state=JStr("sleeping"),
            battery_mv=JRaw("3911.0"),
            rssi=num(-70),
            buf=num(1),
        ),
        status(south, "h-wifi", "hostile", state=JStr("online"), wifi=JStr("x")),  # not declared: a float
        # defect 2 again: one type per metric, whatever each board sends (type_mismatch, never a conflict)
        batch(
            north,
            "h-types",
            [
                reading(1, 0, t0, temp_c=JRaw("true")),
                reading(1, 1, t0, temp_c=JStr("21.5")),
                reading(1, 2, t0, pulses=JRaw("21.5")),
                reading(1, 3, t0, relay=JRaw("1")),
                reading(1, 4, t0, door=num(5)),
                reading(1, 5, t0, door=JStr("ok"), pulses=JRaw("21.0"), relay=JRaw("false"), temp_c=num(21)),
                reading(1, 6, t0, pulses=JRaw("1e19")),
                reading(1, 7, t0, temp_c=JRaw("9007199254740993")),
            ],
            "hostile",
            honest=False,
        ),
        # valid values that InfluxDB refuses: the runs' database holds `w` as an integer and the status field
        # `x` as a string (test_accounting.seed_conflicts): the sink isolates and dead-letters those lines
        Planned(
            f"{{p}}/{north}/h-w/readings",
            obj(v=num(1), dev=JStr("h-w"), r=JArr((reading(1, 0, t0, w=num(1.5)), reading(1, 1, t0, temp_c=num(1.5))))),
            "mixed",
            frozenset({1}),
        ),
        status(north, "h-x", "hostile", state=JStr("online"), x=num(5)),
        # a flush marker before 2020 (negative too) is ignored; the readings beside it are taken
        batch(south, "d-two", [reading(1, 10, t0 + 400_000, temp_c=num(19.9))], flushed=-(10**13)),
        # colliding names: a metric named like a tag, a repeated key, values at the edges of a double
        batch(
            north,
            "h-names",
            [
                reading(1, 0, t0, device=num(1.5), site=JStr("x"), x=num(1), y=JRaw("-0.0")),
                obj(b=num(1), s=num(1), t=JTime(t0), q=JStr("c"), m=JObj((("x", num(2)), ("x", num(3))))),
                reading(1, 2, t0, z=JRaw("1e308"), w=JRaw("1e400")),
            ],
            "hostile",
            honest=False,
        ),
        # defect 5: an honest board's id under another site, readings and status (site_mismatch)
        batch(south, "d-one", [reading(3, 0, t0, temp_c=num(99.0))], "collider", honest=False),
        status(south, "d-one", "collider", state=JStr("online")),
        # the size limit: exactly at it (accepted), one byte beyond (oversize)
        Planned(
            f"{{p}}/{south}/d-two/readings",
            obj(v=num(1), dev=JStr("d-two"), r=JArr((reading(1, 3, t0 + 300_000, temp_c=num(19.5)),))),
            "honest",
            frozenset({0}),
            pad_to=MAX_BYTES,
        ),
        Planned(
            f"{{p}}/{south}/h-big/readings",
            obj(v=num(1), dev=JStr("h-big"), r=JArr((reading(1, 0, t0, temp_c=num(1.5)),))),
            "hostile",
            pad_to=MAX_BYTES + 1,
        ),
        # more honest floats after all that
        batch(north, "d-one", [reading(3, 3, t0 + 120_000, temp_c=num(20.8), rh=num(41.0))], flushed=t0 + 120_000),
    ]
    # defect 6: metric names capped per device: 32 names, then a reading with a 33rd is `too_many_metrics`,
    # and one with names the device has goes on
    names_a = {f"a{i:02}": num(float(i)) for i in range(16)}
    names_b = {f"b{i:02}": num(float(i)) for i in range(16)}
    cap = [reading(1, 0, t0, **names_a), reading(1, 1, t0, **names_b), reading(1, 2, t0, c00=num(1.0))]
    cap.append(reading(1, 3, t0 + 1, a00=num(2.0), b15=num(3.0)))
    out.append(
        Planned(
            f"{{p}}/{north}/h-cap/readings",
            obj(v=num(1), dev=JStr("h-cap"), r=JArr(tuple(cap))),
            "mixed",
            frozenset({3}),
        )
    )
    # a board whose boot counter started again: later readings reuse identities and are taken; its re-sends
    # from before the restart can no longer be judged (`stale_boot`), never taken twice
    out.append(batch(south, "d-flash", [reading(1, i, t0 + 1000 * i, temp_c=num(15.0 + i)) for i in range(3)]))
    out.append(batch(south, "d-flash", [reading(1, i, t0 + 600_000 + 1000 * i, temp_c=num(16.0)) for i in range(2)]))
    out.append(
        batch(south, "d-flash", [reading(1, 2, t0 + 2000, temp_c=num(17.0)), reading(1, 0, t0, temp_c=num(15.0))])
    )
    # defect 7: a reading re-sent after eight newer boots (a duplicate, or `stale_boot`; never accepted again)
    out.append(batch(north, "d-old", [reading(0, 0, t0, temp_c=num(10.0))]))
    for b in range(1, 10):
        out.append(batch(north, "d-old", [reading(b, 0, t0 + 60_000 * b, temp_c=num(10.0 + b))]))
    out.append(
        batch(north, "d-old", [reading(0, 0, t0, temp_c=num(10.0)), reading(9, 1, t0 + 600_000, temp_c=num(9.5))])
    )
    return out
