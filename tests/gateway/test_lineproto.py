from __future__ import annotations

import math
import re
import time
from typing import Any

import pytest

from gateway import schema
from gateway.lineproto import NS_PER_MS, line, reading_time_ns, visible


def test_types_and_escaping() -> None:
    got = line(
        "my meas", {"site": "a b", "device": "d,1=x", "empty": ""}, {"f": 1.5, "i": -3, "b": False, "s": 'q"\\'}, 7
    )
    assert got == r'my\ meas,device=d\,1\=x,site=a\ b f=1.5,i=-3i,b=false,s="q\"\\" 7'


def test_floats_keep_their_value() -> None:
    for value in (0.1, 1e300, -2.5e-12, 21.0):
        text = line("m", {}, {"v": value}, 0)
        assert float(text.split("v=")[1].split(" ")[0]) == value


def test_rejects_non_finite_and_empty() -> None:
    with pytest.raises(ValueError):
        line("m", {}, {"v": math.nan}, 0)
    with pytest.raises(ValueError):
        line("m", {}, {}, 0)


# --- strings ------------------------------------------------------------------------------------------

STORED = [
    'quote " inside',
    "back\\slash",
    "ends with a backslash \\",
    "two \\\\ backslashes",
    "a literal \\n, not a newline",
    "é, 漢字, 😀 and 𝄞",
    "line\u2028separator",
    "\ufeffbom",
    "  spaces, commas = equals  ",
    "",
    "\uffff\U0010ffff",
]
"""Strings a board may send (docs/protocol.md): each must read back exactly."""
TEXT = ["new\nline", "cr\r", "tab\t", "nul\x00", "del\x7f", "c1\x85", "lone \ud800 surrogate"]
"""Text the gateway composes itself may hold anything; each control character shows as an escape."""
SHOWN = ["new\\nline", "cr\\r", "tab\\t", "nul\\x00", "del\\x7f", "c1\\x85", "lone \\ud800 surrogate"]


def test_strings_round_trip_through_the_schemas_reader() -> None:
    for i, value in enumerate(STORED):
        text = line("m", {"k": "v"}, {"s": value, "n": i}, 1)
        assert schema.parse_point(text) == ("m", {"k": "v"}, {"s": value, "n": i}, 1), text
        assert not any(c in text for c in "\n\r")


def test_control_characters_in_gateway_text_are_visible_escapes() -> None:
    for value, shown in zip(TEXT, SHOWN, strict=True):
        text = line("m", {}, {"detail": value}, 1)
        text.encode("utf-8")  # a lone surrogate no longer breaks the writer
        assert not re.search(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]", text), text
        assert schema.parse_point(text)[2] == {"detail": shown}
    assert visible("plain é") == "plain é"
    # names and tag values too: a line never holds a line break
    assert line("m\n", {"t\n": "v\r"}, {"f\x00": 1}, 1) == "m\\n,t\\n=v\\r f\\x00=1i 1"


def test_integers_beyond_64_bits_are_refused() -> None:
    assert line("m", {}, {"i": 2**63 - 1, "j": -(2**63)}, 0) == f"m i={2**63 - 1}i,j={-(2**63)}i 0"
    with pytest.raises(ValueError, match="64 bits"):
        line("m", {}, {"i": 2**63}, 0)


# --- timestamps of readings ---------------------------------------------------------------------------


def test_a_readings_point_time_is_its_millisecond_plus_an_offset_from_its_identity() -> None:
    t = 1_764_072_000_123
    ns = reading_time_ns(t, 17, 120)
    assert ns // NS_PER_MS == t and ns == reading_time_ns(t, 17, 120)  # deterministic: a rewrite lands on itself
    same_ms = {reading_time_ns(t, 17, s) for s in range(120, 130)} | {reading_time_ns(t, 18, 0)}
    assert len(same_ms) == 11
    # within a boot, a million consecutive sequence numbers; across boots up to 100 apart, 5,026 of them
    assert len({reading_time_ns(0, 3, s) for s in range(NS_PER_MS)}) == NS_PER_MS
    assert len({reading_time_ns(0, b, s) for b in range(101) for s in range(5026)}) == 101 * 5026
    assert reading_time_ns(t, 0, 0) == t * NS_PER_MS


@pytest.mark.integration
def test_strings_read_back_exactly_from_influxdb_and_keep_their_line_in_victoria_metrics(
    influxdb_v1: Any, influx_db: str, victoria_metrics: Any
) -> None:
    """Against the real services: InfluxDB 1.6 gives back every string exactly as written (and the visible
    escapes of the gateway's own text); VictoriaMetrics (which turns a string into 0) keeps every such line.
    It drops, without an error, a line whose string holds a raw newline: why no line ever holds one."""
    from helpers import influx_query, influx_write, poll, vm_export, vm_write

    values = STORED + TEXT
    lines = [line("strings", {"i": str(i)}, {"s": v, "n": float(i)}, 1_000 + i) for i, v in enumerate(values)]
    influx_write(influxdb_v1.url, influx_db, lines)
    rows = influx_query(influxdb_v1.url, influx_db, "SELECT * FROM strings")
    assert {int(r["i"]): r["s"] for r in rows} == dict(enumerate(STORED + SHOWN))

    tag = f"t{time.time_ns()}"
    raw = f'strings,run={tag},i=raw s="a\nb",n=1 1764072000000000000'
    vm_lines = [line("strings", {"run": tag, "i": str(i)}, {"s": v, "n": float(i)}, 1_764_072_000_000_000_000 + i)
                for i, v in enumerate(values)]  # fmt: skip
    vm_write(victoria_metrics.url, [*vm_lines, raw])
    got = poll(
        lambda: vm_export(victoria_metrics.url, f'{{__name__="strings_n",run="{tag}"}}'),
        until=lambda s: len(s) >= len(values),
    )
    assert sorted(s["metric"]["i"] for s in got) == sorted(str(i) for i in range(len(values)))  # not "raw"
