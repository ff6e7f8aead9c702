"""The schema of what the gateway writes to InfluxDB: one registry that the writing modules declare into.

Each module that writes a measurement declares it once, next to the code that builds its lines::

    READING: Final = declare("reading", tags=("site", "device"), fields=("boot", "seq", "q"),
                             open_fields=METRIC_PATTERN, time="event time of the reading")

and the dashboards, the docs and the tests read it back with :func:`load_all` (which imports every
module of the ``gateway`` package first, so a measurement added by a new module is found without a list
to keep up to date). :func:`check_line` tells whether a line of line protocol keeps to its declaration.

``open_fields`` is a regular expression for field names that are not known in advance (a board's
metrics, extra status fields, an alert's details); ``fields`` are the ones every reader may rely on.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

__all__ = [
    "METRIC_PATTERN",
    "Measurement",
    "check_line",
    "declare",
    "get",
    "load_all",
    "measurements",
    "parse_line",
    "parse_point",
]

METRIC_PATTERN = r"[a-z][a-z0-9_]{0,31}"
"""Field names a board may send (``docs/protocol.md``: metric and status field names)."""


@dataclass(frozen=True, slots=True)
class Measurement:
    """One measurement: its tags, its fields, and what its timestamp means."""

    name: str
    tags: frozenset[str]
    fields: frozenset[str]
    open_fields: str | None = None
    time: str = ""
    module: str = ""

    def has_tag(self, name: str) -> bool:
        return name in self.tags

    def has_field(self, name: str) -> bool:
        if name in self.fields:
            return True
        return self.open_fields is not None and re.fullmatch(self.open_fields, name) is not None


_REGISTRY: dict[str, Measurement] = {}


def declare(
    name: str,
    *,
    tags: Iterable[str],
    fields: Iterable[str],
    open_fields: str | None = None,
    time: str = "",
    module: str = "",
) -> str:
    """Register a measurement and return its name (for a module constant). Declaring it twice the same way
    is harmless (a module reloaded); declaring it differently is a programming error."""
    m = Measurement(name, frozenset(tags), frozenset(fields), open_fields, time, module)
    if m.tags & m.fields:
        raise ValueError(f"measurement {name!r}: {sorted(m.tags & m.fields)} declared both as tag and field")
    old = _REGISTRY.get(name)
    if old is not None and old != m:
        raise ValueError(f"measurement {name!r} declared twice, differently ({old.module} and {m.module})")
    _REGISTRY[name] = m
    return name


def measurements() -> Mapping[str, Measurement]:
    """What has been declared so far (read-only). Use :func:`load_all` for everything the gateway writes."""
    return MappingProxyType(dict(sorted(_REGISTRY.items())))


def get(name: str) -> Measurement:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"measurement {name!r} is not declared; declared: {', '.join(sorted(_REGISTRY))}") from None


def load_all() -> Mapping[str, Measurement]:
    """Import every module of the ``gateway`` package, then return the whole registry."""
    import gateway

    for info in pkgutil.walk_packages(gateway.__path__, "gateway."):
        if info.name.rsplit(".", 1)[-1] != "__main__":
            importlib.import_module(info.name)
    return measurements()


# --- line protocol, read back -----------------------------------------------------------------------


def _split(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside double quotes and not escaped by a backslash."""
    parts, cur, quoted, i = [], [], False, 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            cur.append(text[i : i + 2])
            i += 2
            continue
        if c == '"':
            quoted = not quoted
        if c == sep and not quoted:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    parts.append("".join(cur))
    return parts


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def _field_value(raw: str) -> object:
    if raw.startswith('"'):
        return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), raw[1:-1])
    if raw.endswith("i"):
        return int(raw[:-1])
    if raw in ("t", "T", "true", "True"):
        return True
    if raw in ("f", "F", "false", "False"):
        return False
    return float(raw)


def parse_point(text: str) -> tuple[str, dict[str, str], dict[str, object], int]:
    """``measurement, tags, fields (values decoded), timestamp`` of one line of line protocol."""
    parts = _split(text, " ")
    if len(parts) != 3:
        raise ValueError(f"not a line of line protocol (expected 3 space-separated parts): {text!r}")
    head, body, ts = parts
    name, *tag_parts = _split(head, ",")
    tags = {}
    for tp in tag_parts:
        k, _, v = tp.partition("=")
        tags[_unescape(k)] = _unescape(v)
    fields = {}
    for fp in _split(body, ","):
        k, _, v = fp.partition("=")
        fields[_unescape(k)] = _field_value(v)
    return _unescape(name), tags, fields, int(ts)


def parse_line(text: str) -> tuple[str, dict[str, str], list[str], int]:
    """``measurement, tags, field names, timestamp`` of one line of line protocol."""
    name, tags, fields, ts = parse_point(text)
    return name, tags, list(fields), ts


def check_line(text: str) -> list[str]:
    """What in this line does not keep to the declared schema (an empty list when all is well)."""
    name, tags, fields, _ = parse_line(text)
    m = _REGISTRY.get(name)
    if m is None:
        return [f"measurement {name!r} is not declared"]
    problems = [f"{name}: tag {t!r} is not declared" for t in tags if not m.has_tag(t)]
    problems += [f"{name}: field {f!r} is not declared" for f in fields if not m.has_field(f)]
    return problems
