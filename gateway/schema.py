"""The schema of what the gateway writes to InfluxDB: one registry that the writing modules declare into.

Each module that writes a measurement declares it once, next to the code that builds its lines, with the
type of every field::

    READING: Final = declare("reading", tags=("site", "device"),
                             fields={"boot": "integer", "seq": "integer", "q": "string"},
                             open_fields=METRIC_PATTERN, open_type=METRIC, time="event time of the reading")

and the dashboards, the docs and the tests read it back with :func:`load_all` (which imports every
module of the ``gateway`` package first, so a measurement added by a new module is found without a list
to keep up to date). :func:`check_line` tells whether a line of line protocol keeps to its declaration:
its tags, its field names and the type of every field value.

``open_fields`` is a regular expression for field names that are not known in advance (a board's
metrics, extra status fields, a pattern alert's values); ``fields`` are the ones every reader may rely on.
An open field's type is ``open_type``, or, for :data:`METRIC`, the type the configuration declares for the
metric it carries (:class:`MetricTypes`, the ``[metric_types]`` section: a float unless declared otherwise).
InfluxDB keeps one type per field and measurement (per shard) and refuses a value of another type, so every
field the gateway writes has exactly one type.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, Literal

__all__ = [
    "FIELD_TYPES",
    "METRIC",
    "METRIC_PATTERN",
    "NO_TYPES",
    "FieldType",
    "Measurement",
    "MetricTypes",
    "check_line",
    "declare",
    "get",
    "load_all",
    "measurements",
    "parse_line",
    "parse_point",
    "type_of_value",
]

METRIC_PATTERN = r"[a-z][a-z0-9_]{0,31}"
"""Field names a board may send (``docs/protocol.md``: metric and status field names)."""

FieldType = Literal["float", "integer", "boolean", "string"]
FIELD_TYPES: Final[tuple[FieldType, ...]] = ("float", "integer", "boolean", "string")
METRIC: Final = "metric"
"""``open_type`` of fields whose type is their metric's declared type (:class:`MetricTypes`)."""
OpenType = FieldType | Literal["metric"]


@dataclass(frozen=True, slots=True)
class MetricTypes:
    """The declared type of each metric (``[metric_types]``); every metric not listed is a float.

    The same declarations give the type of a status field that ``docs/protocol.md`` does not document.
    """

    integer: frozenset[str] = frozenset()
    boolean: frozenset[str] = frozenset()
    string: frozenset[str] = frozenset()

    def of(self, name: str) -> FieldType:
        if name in self.string:
            return "string"
        if name in self.integer:
            return "integer"
        if name in self.boolean:
            return "boolean"
        return "float"

    def declared(self) -> dict[str, FieldType]:
        """Every metric declared other than float, by name."""
        out: dict[str, FieldType] = {}
        for kind in ("integer", "boolean", "string"):
            for name in sorted(getattr(self, kind)):
                out[name] = kind
        return out


NO_TYPES: Final = MetricTypes()
"""No declarations: every metric a float."""


@dataclass(frozen=True, slots=True)
class Measurement:
    """One measurement: its tags, its fields and their types, and what its timestamp means."""

    name: str
    tags: frozenset[str]
    types: Mapping[str, FieldType] = field(default_factory=dict)
    open_fields: str | None = None
    open_type: OpenType | None = None
    time: str = ""
    module: str = ""

    @property
    def fields(self) -> frozenset[str]:
        return frozenset(self.types)

    def has_tag(self, name: str) -> bool:
        return name in self.tags

    def has_field(self, name: str) -> bool:
        if name in self.types:
            return True
        return self.open_fields is not None and re.fullmatch(self.open_fields, name) is not None

    def field_type(self, name: str, metrics: MetricTypes = NO_TYPES) -> FieldType | None:
        """The type field ``name`` must have (``None`` if it is not declared). For an open field of type
        :data:`METRIC`, the declared type of the metric it carries: the regular expression's group
        ``metric`` if it has one, else the whole name."""
        t = self.types.get(name)
        if t is not None:
            return t
        if self.open_fields is None:
            return None
        m = re.fullmatch(self.open_fields, name)
        if m is None:
            return None
        if self.open_type == METRIC or self.open_type is None:
            return metrics.of(m.groupdict().get("metric") or name)
        return self.open_type


_REGISTRY: dict[str, Measurement] = {}


def declare(
    name: str,
    *,
    tags: Iterable[str],
    fields: Mapping[str, FieldType],
    open_fields: str | None = None,
    open_type: OpenType | None = None,
    time: str = "",
    module: str = "",
) -> str:
    """Register a measurement and return its name (for a module constant). ``fields`` maps each field to its
    type; ``open_type`` is the type of the ``open_fields`` (:data:`METRIC`: their metric's declared type).
    Declaring it twice the same way is harmless (a module reloaded); declaring it differently is a
    programming error."""
    if not isinstance(fields, Mapping):
        raise TypeError(f"measurement {name!r}: fields must map each field to its type, got {fields!r}")
    bad = {f: t for f, t in fields.items() if t not in FIELD_TYPES}
    if bad or (open_type is not None and open_type not in (*FIELD_TYPES, METRIC)):
        raise ValueError(f"measurement {name!r}: unknown field type(s) {bad or open_type!r}; known: {FIELD_TYPES}")
    if (open_fields is None) != (open_type is None):
        raise ValueError(f"measurement {name!r}: open_fields and open_type go together")
    m = Measurement(name, frozenset(tags), MappingProxyType(dict(fields)), open_fields, open_type, time, module)
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
#
# The inverse of gateway/lineproto.py, with InfluxDB 1.x's rules: in names and tags a backslash escapes a
# comma, an equals sign or a space; in a string field value it escapes a backslash or a double quote, and
# any other backslash is itself.

_UNSAFE: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
"""Characters no line may hold: control characters (Unicode category Cc) and lone surrogates (Cs)."""


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
    return re.sub(r"\\([,= ])", r"\1", text)


def _unescape_string(text: str) -> str:
    return re.sub(r'\\([\\"])', r"\1", text)


def _field_value(raw: str) -> object:
    if raw.startswith('"'):
        if len(raw) < 2 or not raw.endswith('"'):
            raise ValueError(f"unterminated string field value {raw!r}")
        return _unescape_string(raw[1:-1])
    if raw.endswith("i"):
        return int(raw[:-1])
    if raw in ("t", "T", "true", "True", "TRUE"):
        return True
    if raw in ("f", "F", "false", "False", "FALSE"):
        return False
    return float(raw)


def _key_value(part: str) -> tuple[str, str]:
    """``key=value`` split at the first ``=`` that is not escaped."""
    i = 0
    while True:
        j = part.find("=", i)
        if j < 0:
            raise ValueError(f"no '=' in {part!r}")
        if j == 0 or part[j - 1] != "\\":
            return part[:j], part[j + 1 :]
        i = j + 1


def parse_point(text: str) -> tuple[str, dict[str, str], dict[str, object], int]:
    """``measurement, tags, fields (values decoded), timestamp`` of one line of line protocol."""
    parts = _split(text, " ")
    if len(parts) != 3:
        raise ValueError(f"not a line of line protocol (expected 3 space-separated parts): {text!r}")
    head, body, ts = parts
    name, *tag_parts = _split(head, ",")
    tags = {}
    for tp in tag_parts:
        k, v = _key_value(tp)
        tags[_unescape(k)] = _unescape(v)
    fields = {}
    for fp in _split(body, ","):
        k, v = _key_value(fp)
        fields[_unescape(k)] = _field_value(v)
    return _unescape(name), tags, fields, int(ts)


def parse_line(text: str) -> tuple[str, dict[str, str], list[str], int]:
    """``measurement, tags, field names, timestamp`` of one line of line protocol."""
    name, tags, fields, ts = parse_point(text)
    return name, tags, list(fields), ts


def type_of_value(value: object) -> FieldType:
    """The line-protocol type of a decoded field value."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    raise TypeError(f"not a field value: {value!r}")


def check_line(text: str, metrics: MetricTypes = NO_TYPES) -> list[str]:
    """What in this line does not keep to the declared schema (an empty list when all is well): an
    undeclared measurement, tag or field, a field value of another type than declared (``metrics`` gives
    the metrics' declared types), a character no line may hold, text that is not UTF-8."""
    problems = []
    bad = _UNSAFE.search(text)
    if bad is not None:
        problems.append(f"the line holds U+{ord(bad.group()):04X} at {bad.start()} (a control character or surrogate)")
        if "\ud800" <= bad.group() <= "\udfff":
            return problems  # not UTF-8: not a line InfluxDB could be sent
    name, tags, fields, _ = parse_point(text)
    m = _REGISTRY.get(name)
    if m is None:
        return [*problems, f"measurement {name!r} is not declared"]
    problems += [f"{name}: tag {t!r} is not declared" for t in tags if not m.has_tag(t)]
    for f, value in fields.items():
        want = m.field_type(f, metrics)
        if want is None:
            problems.append(f"{name}: field {f!r} is not declared")
        elif type_of_value(value) != want:
            problems.append(f"{name}: field {f!r} is {type_of_value(value)} {value!r}, declared {want}")
    return problems
