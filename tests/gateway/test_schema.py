"""The schema registry holds every measurement the gateway writes, and the writers keep to it."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

from gateway import schema
from gateway.alerts import Alert
from gateway.config import parse_config
from gateway.engine.outputs import LateReading, WindowResult
from gateway.live import HEALTH_INTERVAL_MS, LiveView
from gateway.model import DeadLetter, Reading, StatusUpdate
from gateway.pipeline import Pipeline
from gateway.points import dead_letter_line, reading_line, status_line

GATEWAY = Path(schema.__file__).resolve().parent


TYPES = schema.MetricTypes(boolean=frozenset({"door"}), integer=frozenset({"count"}), string=frozenset({"ssid"}))


def _written_lines() -> list[str]:
    r = Reading("gh", "dev-1", 3, 7, 1_764_072_060_500, "s", {"temp_c": 21.5, "rh": 40.0, "door": True, "count": 3})
    status = StatusUpdate(
        "gh", "dev-1", "t", 1, "sleeping", {"battery_mv": 3911, "buf": 0, "buf_cap": 256, "rssi": -70.0, "ssid": "x"}
    )
    dead = DeadLetter("bad_json", "x", "edgekit/gh/dev-1/readings", 1, 3, "{{{", "gh", "dev-1", None)
    window = WindowResult("w", "device", "dev-1", "gh", 0, 60_000, "temp_c", 2, {"mean": 1.0, "max": 2.0}, 1, "late")
    site_window = WindowResult("w", "site", "gh", "gh", 0, 60_000, "rh", 0, {}, 2, "superseded")
    late = LateReading("w", "gh", "dev-1", "temp_c", 5, 3, 7, 100, 105, "too_late", 21.5)
    alert = Alert("anomaly", "z", "gh", "dev-1", "warning", 1, 2, (("dev-1", 3, 7),), "hot", {"z": 4.2, "mean": 20.0})
    pattern = Alert("pattern", "p", "gh", "dev-1", "info", 1, 2, (("dev-1", 3, 7),), "", {"a.door": True, "b.rh": 4.0})
    return [
        reading_line(r),
        status_line(status),
        dead_letter_line(dead, 1),
        window.to_line(),
        site_window.to_line(),
        late.to_line(),
        alert.to_line(),
        pattern.to_line(),
    ]


def test_every_writer_keeps_to_its_declaration() -> None:
    schema.load_all()
    lines = _written_lines()
    for text in lines:
        assert schema.check_line(text, TYPES) == [], text
    assert {schema.parse_line(t)[0] for t in lines} == {"reading", "device_status", "dead_letter", "window",
                                                         "late_reading", "alert"}  # fmt: skip


def test_health_lines_keep_to_their_declaration() -> None:
    pipe = Pipeline(parse_config({"windows": [{"name": "w", "kind": "tumbling", "size": "1m", "metrics": ["t"]}]}, {}))
    now = 1_764_072_060_000
    out = pipe.handle(
        "edgekit/gh/dev-1/readings",
        b'{"v":1,"dev":"dev-1","r":[{"b":1,"s":1,"t":%d,"q":"s","m":{"t":1.5}}]}' % now,
        now,
    )
    assert out.readings, out.lines
    live = LiveView(pipe.engine, "gw", now - 5000)
    live.observe(out.readings, out.outputs, out.alerts)
    stats = {"pipeline": pipe.stats.as_dict(), "sink": {"pending": 3}, "mqtt": {"connected": True}}
    lines = live.health_lines(now, stats)
    assert sorted(schema.parse_line(t)[0] for t in lines) == ["device_watermark", "gateway_health"]
    for text in lines:
        assert schema.check_line(text) == [], text
    assert live.health_lines(now + 1, stats) == []  # not due again within the interval
    row = live.device_rows(now)["dev-1"]
    assert row["readings"] == 1 and row["watermark_ms"] == now - 5000 and row["watermark_lag_ms"] == 5000


def test_the_health_points_count_the_devices_as_their_rows_do() -> None:
    """``devices`` and ``devices_active`` of ``gateway_health`` are counted without making every device's row (a
    row per device every 10 s held the event loop; issue 19): the same numbers as the rows give, for devices that
    read lately, one idle for an hour, and one known only by its status."""
    from gateway.model import StatusUpdate

    pipe = Pipeline(parse_config({"windows": [{"name": "w", "kind": "tumbling", "size": "1m", "metrics": ["t"]}]}, {}))
    now = 1_764_072_060_000
    live = LiveView(pipe.engine, "gw", now - 7_200_000)
    for dev, at in (("dev-1", now), ("dev-2", now - 1000), ("old", now - 3_600_000)):
        out = pipe.handle(
            f"edgekit/gh/{dev}/readings",
            b'{"v":1,"dev":"%s","r":[{"b":1,"s":1,"t":%d,"q":"s","m":{"t":1.5}}]}' % (dev.encode(), at),
            at,
        )
        assert out.readings, out.lines
        live.observe(out.readings, out.outputs, out.alerts)
    live.observe([], [], [], StatusUpdate("gh", "quiet", "edgekit/gh/quiet/status", now, "online", {"fw": "1.2"}))
    assert len(live.health_lines(now, {"pipeline": pipe.stats.as_dict()})) == 5  # both due: health and 4 devices
    later = now + HEALTH_INTERVAL_MS  # only gateway_health due
    rows = live.device_rows(later)
    assert len(rows) == 4 and 0 < sum(r["active"] for r in rows.values()) < 4, rows
    made = live.device_rows
    calls: list[int] = []

    def counted(*args: Any, **kwargs: Any) -> dict[str, dict[str, Any]]:
        calls.append(1)
        return made(*args, **kwargs)

    live.device_rows = counted  # type: ignore[method-assign]
    health = live.health_lines(later, {"pipeline": pipe.stats.as_dict()})
    assert calls == [], "gateway_health made every device's row"
    assert len(health) == 1 and health[0].startswith("gateway_health")
    fields = schema.parse_point(health[0])[2]
    assert fields["devices"] == len(rows)
    assert fields["devices_active"] == sum(r["active"] for r in rows.values())


def test_check_line_reports_what_is_not_declared() -> None:
    schema.load_all()
    assert schema.check_line("reading,site=a,colour=red temp_c=1,Bad=2i 1") == [
        "reading: tag 'colour' is not declared",
        "reading: field 'Bad' is not declared",
    ]
    assert schema.check_line("nosuch f=1 1") == ["measurement 'nosuch' is not declared"]


def test_check_line_reports_a_field_of_another_type() -> None:
    """One type per field: a metric's declared type (a float by default), a fixed field's declared one."""
    schema.load_all()
    assert schema.check_line('reading,site=a temp_c=21i,door="open",seq=1.5 1') == [
        "reading: field 'temp_c' is integer 21, declared float",
        "reading: field 'door' is string 'open', declared float",
        "reading: field 'seq' is float 1.5, declared integer",
    ]
    assert schema.check_line("reading,site=a temp_c=21.0,door=true,seq=1i 1", TYPES) == []
    assert schema.check_line('alert,name=p a.door="x",b.temp_c=1i,id=7i 1', TYPES) == [
        "alert: field 'a.door' is string 'x', declared boolean",
        "alert: field 'b.temp_c' is integer 1, declared float",
        "alert: field 'id' is integer 7, declared string",
    ]
    assert schema.check_line('device_status,site=a battery_mv=3.5,rssi=-70i,ssid="x" 1', TYPES) == [
        "device_status: field 'battery_mv' is float 3.5, declared integer",
        "device_status: field 'rssi' is integer -70, declared float",
    ]


def test_check_line_reports_characters_no_line_may_hold() -> None:
    schema.load_all()
    assert schema.check_line(r'dead_letter detail="a\nb" 1') == []  # an escape, written as two characters
    assert schema.check_line('dead_letter detail="a\nb" 1') == [
        "the line holds U+000A at 21 (a control character or surrogate)"
    ]
    assert schema.check_line('dead_letter detail="\ud800" 1')[0].startswith("the line holds U+D800")


def test_parse_line_handles_escapes_and_quoted_strings() -> None:
    name, tags, fields, ts = schema.parse_line(r'dead\ letter,re\,ason=a\ b detail="x, y=z \"q\"",size=3i 42')
    assert (name, tags, fields, ts) == ("dead letter", {"re,ason": "a b"}, ["detail", "size"], 42)
    # InfluxDB 1.x's rules for a string field: only \\ and \" are escapes, any other backslash is itself
    _, _, values, _ = schema.parse_point(r'm s="a\\b\nc\"",t="\\" 1')
    assert values == {"s": 'a\\b\\nc"', "t": "\\"}


def test_declaring_differently_twice_is_refused() -> None:
    try:
        schema.declare("test_only", tags=("a",), fields={"f": "float"}, module="t")
        schema.declare("test_only", tags=("a",), fields={"f": "float"}, module="t")
        with pytest.raises(ValueError, match="declared twice"):
            schema.declare("test_only", tags=("a",), fields={"f": "integer"}, module="t")
        with pytest.raises(ValueError, match="both as tag and field"):
            schema.declare("test_other", tags=("a",), fields={"a": "string"})
        with pytest.raises(ValueError, match="unknown field type"):
            schema.declare("test_other", tags=("a",), fields={"f": "int"})  # type: ignore[dict-item]
        with pytest.raises(TypeError, match="map each field to its type"):
            schema.declare("test_other", tags=("a",), fields=("f",))  # type: ignore[arg-type]
    finally:
        schema._REGISTRY.pop("test_only", None)  # the dashboard tests read the registry too
    assert "test_only" not in schema.measurements()


def _measurement_args() -> list[tuple[str, str]]:
    """(file:line, source of the first argument) of every ``line(...)`` call in the gateway package."""
    found = []
    for path in sorted(GATEWAY.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "line" and node.args:
                found.append((f"{path.relative_to(GATEWAY)}:{node.lineno}", ast.unparse(node.args[0])))
    return found


def test_every_line_the_gateway_builds_names_a_declared_measurement() -> None:
    """Data-driven: a module that writes a new measurement without declaring it fails here."""
    import importlib

    declared = schema.load_all()
    calls = _measurement_args()
    assert len(calls) >= 8, calls
    for where, arg in calls:
        module = importlib.import_module("gateway." + where.split(":")[0].removesuffix(".py").replace("/", "."))
        value = getattr(module, arg, None)
        assert isinstance(value, str), f"{where}: line({arg}, ...) must name a module constant from schema.declare"
        assert value in declared, f"{where}: measurement {value!r} is written but not declared in gateway/schema.py"
