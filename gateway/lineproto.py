"""InfluxDB line protocol, written by hand because it is small and every sink needs the same bytes.

``line("reading", {"site": "a"}, {"temp": 21.5}, ts)`` gives ``reading,site=a temp=21.5 <ts>``; the
timestamp's unit is the ``precision`` the sink writes with (nanoseconds: the gateway's sinks write every
timestamp with ``precision=ns``). Integers get the ``i`` suffix, strings are quoted, booleans are
``true``/``false``.

Strings are written so that InfluxDB 1.x (and 2.x) read them back exactly: inside the quotes only a
backslash and a double quote are escaped (``\\\\`` and ``\\"``), every other character is itself. No line
holds a control character (Unicode category Cc: a newline would end the line for VictoriaMetrics, which
splits a request at every newline, quoted or not, and drops both halves without an error) nor a lone
surrogate (not UTF-8). The decoder refuses them in what a board sends (``bad_string``, docs/protocol.md),
so data never holds one; in text the gateway composes itself (a dead letter's detail and excerpt, an alert's
message) each is written as a visible escape: ``\\n``, ``\\r``, ``\\t``, ``\\xNN``, ``\\uNNNN``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Final

from .model import MetricValue

__all__ = ["INT64_MAX", "INT64_MIN", "NS_PER_MS", "field", "line", "reading_time_ns", "series", "visible"]

NS_PER_MS: Final = 1_000_000
"""The gateway writes every timestamp in nanoseconds (``precision=ns``); event times are milliseconds."""
INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1

_FIB: Final = 618_034
"""About 1e6 / golden ratio: consecutive identities land far apart within a millisecond (Fibonacci hashing)."""

_UNSAFE: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_NAMED: Final = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_MEASUREMENT: Final = str.maketrans({",": r"\,", " ": r"\ "})
_KEY: Final = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ "})


def reading_time_ns(t_ms: int, boot: int, seq: int) -> int:
    """The timestamp of a point about the reading ``(boot, seq)`` taken at ``t_ms``: its millisecond plus a
    sub-millisecond offset (0..999999 ns) that depends only on the reading's identity.

    Two readings of one device in one millisecond are then two points (InfluxDB keys a point by series and
    timestamp), and a rewrite of the same reading lands on itself. Within one boot, readings fewer than a
    million sequence numbers apart never share an offset; across boots the offset moves by about 0.618 ms
    a boot (Fibonacci hashing), so readings of boots up to 100 apart share an offset only if their sequence
    numbers differ by 5,026 or more (one precise amount for each pair of boots). Queries in milliseconds
    (``epoch=ms``, Grafana) see ``t_ms``: InfluxDB truncates, and VictoriaMetrics keeps milliseconds (two
    samples at one timestamp).
    """
    return t_ms * NS_PER_MS + (seq + boot * _FIB) % NS_PER_MS


def _escape(m: re.Match[str]) -> str:
    c = m.group()
    named = _NAMED.get(c)
    if named is not None:
        return named
    return f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"


def visible(text: str) -> str:
    """``text`` with every control character and lone surrogate written as a visible escape (``\\n``,
    ``\\x00``, ``\\ud800``); any other text is returned as it is."""
    if text.isprintable():  # the common case, fast: no Cc or Cs character (nor some harmless others)
        return text
    return _UNSAFE.sub(_escape, text)


_ESCAPED: dict[str, str] = {}
"""Names and tag values already escaped (a fleet has few: metric names, sites, devices), up to _CACHED."""
_CACHED: Final = 20_000


def _key(text: str) -> str:
    """``text`` as a tag key, tag value or field key."""
    out = _ESCAPED.get(text)
    if out is None:
        out = visible(text).translate(_KEY)
        if len(_ESCAPED) < _CACHED:
            _ESCAPED[text] = out
    return out


def _field_value(value: MetricValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise ValueError(f"line protocol cannot carry the integer {value} (beyond 64 bits)")
        return f"{value}i"
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"line protocol cannot carry {value!r}")
        return repr(value)
    escaped = visible(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def line(
    measurement: str,
    tags: Mapping[str, str],
    fields: Mapping[str, MetricValue],
    timestamp: int,
) -> str:
    """One point in line protocol. Tags with empty values are left out (InfluxDB rejects them)."""
    if not fields:
        raise ValueError(f"point {measurement!r} has no fields")
    body = ",".join(f"{_key(k)}={_field_value(v)}" for k, v in fields.items())
    return f"{series(measurement, tags)} {body} {timestamp}"


def series(measurement: str, tags: Mapping[str, str]) -> str:
    """The measurement and tags of a point (what comes before the fields): the same for every point of a
    series, so a writer of many points may keep it (``gateway.points.reading_line``)."""
    head = visible(measurement).translate(_MEASUREMENT)
    for key in sorted(tags):
        value = tags[key]
        if value:
            head += f",{_key(key)}={_key(value)}"
    return head


def field(key: str, value: MetricValue) -> str:
    """One field of a point, ``key=value``, as :func:`line` writes it."""
    if type(value) is float and math.isfinite(value):  # the common case, first
        return f"{_key(key)}={value!r}"
    return f"{_key(key)}={_field_value(value)}"
