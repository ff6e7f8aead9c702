"""InfluxDB line protocol, written by hand because it is small and every sink needs the same bytes.

``line("reading", {"site": "a"}, {"temp": 21.5}, ts)`` gives ``reading,site=a temp=21.5 <ts>``; the
timestamp's unit is the ``precision`` the sink writes with (milliseconds unless a caller says otherwise).
Integers get the ``i`` suffix, strings are quoted, booleans are ``true``/``false``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from .model import MetricValue

__all__ = ["NS_PER_MS", "line"]

NS_PER_MS = 1_000_000
"""The gateway writes every timestamp in nanoseconds (``precision=ns``); event times are milliseconds."""

_MEASUREMENT = str.maketrans({",": r"\,", " ": r"\ ", "\n": r"\n"})
_KEY = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\n": r"\n"})


def _field_value(value: MetricValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"line protocol cannot carry {value!r}")
        return repr(value)
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
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
    head = measurement.translate(_MEASUREMENT)
    for key in sorted(tags):
        value = tags[key]
        if value:
            head += f",{key.translate(_KEY)}={value.translate(_KEY)}"
    body = ",".join(f"{k.translate(_KEY)}={_field_value(v)}" for k, v in fields.items())
    return f"{head} {body} {timestamp}"
