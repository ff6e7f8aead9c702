"""The dashboards follow the configuration (issue 21): their template variables ``$site``, ``$device``,
``$window`` and ``$metric`` are filled from the data, so a gateway with other sites, devices, windows and
metrics than the demo's gets full panels.

The test runs each InfluxQL dashboard as Grafana would, against what a NON-default configuration writes into a
real InfluxDB 1.6: every variable query in the dashboard's order, with the variables before it substituted,
its answer read the way Grafana's InfluxDB data source reads it (``public/app/plugins/datasource/influxdb/
response_parser.ts``: the first column of ``SHOW FIELD KEYS``, the second of ``SHOW TAG VALUES``), filtered by
the variable's ``regex``; then every panel and annotation query for each value of the single-value variables
(a multi-value variable at "All", formatted for a regex as ``(a|b)``). The JSON of every dashboard, both
languages, is checked against the fields Grafana documents for a dashboard and its variables.
"""

from __future__ import annotations

import itertools
import json
import re
import tomllib
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
BOARDS = REPO / "dashboards"
NOW = 1_764_072_000_000

# not the demo's temp_10m over temp_c and rh: another window name, other metrics, another site and devices
CONFIG = """
[metric_types]
string = ["lid"]

[[windows]]
name = "soil_15m"
kind = "tumbling"
size = "15m"
metrics = ["moisture", "lux"]
aggregates = ["count", "mean", "min", "max"]
early_count = 1          # early results, kept for audit: the device board's window_provisional panel
provisional = "audit"

[windows.relative]       # each probe against the other: the device board's group panel
baseline = "median"

[groups]
field = ["probe-*"]

[anomaly]
metrics = ["moisture"]
warmup = 5
"""
SITE, DEVICES = "north-field", ("probe-01", "probe-02")

# Grafana's own variables and macros, as a panel query sees them (time range: NOW - 1 h .. NOW + 2 h)
MACROS = {
    "$timeFilter": f"time >= {NOW - 3_600_000}ms AND time <= {NOW + 7_200_000}ms",
    "$__interval": "1m",
}


def influxql(url: str, db: str, q: str) -> list[dict[str, Any]]:
    """InfluxDB's raw answer (the ``series`` of the first result); an InfluxQL error fails the test."""
    params = urllib.parse.urlencode({"db": db, "q": q, "epoch": "ms"})
    with urllib.request.urlopen(f"{url}/query?{params}", timeout=30) as resp:
        doc = json.load(resp)
    result = doc["results"][0]
    assert "error" not in result, f"{q}: {result['error']}"
    series: list[dict[str, Any]] = result.get("series", [])
    return series


def grafana_values(query: str, series: list[dict[str, Any]]) -> list[str]:
    """What Grafana's InfluxDB ResponseParser makes of a variable query's answer."""
    value_first = "show field keys" in query.lower() or "show retention policies" in query.lower()
    out: dict[str, None] = {}
    for s in series:
        for row in s.get("values", []):
            out[str(row[0] if value_first or len(row) < 2 else row[1])] = None
    return list(out)


def js_regex(text: str) -> re.Pattern[str]:
    """A variable's ``regex`` field, ``/pattern/flags`` (JavaScript), as a Python pattern."""
    m = re.fullmatch(r"/(.*)/([gimsuy]*)", text, re.S)
    assert m, f"not a /regex/: {text!r}"
    return re.compile(m[1], re.I if "i" in m[2] else 0)


def interpolate(q: str, values: dict[str, list[str]]) -> str:
    """Grafana's interpolation for the InfluxDB data source: inside a regex (``=~ /^$x$/``, ``${x:regex}``) the
    values regex-escaped and, for several, as ``(a|b)``; elsewhere the value itself."""

    def regex(vs: list[str]) -> str:
        escaped = [re.escape(v) for v in vs]
        return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"

    for name, vs in sorted(values.items(), key=lambda kv: -len(kv[0])):
        q = q.replace(f"${{{name}:regex}}", regex(vs))
        q = re.sub(rf"/\^\${name}\$/", lambda _m, vs=vs: f"/^{regex(vs)}$/", q)  # type: ignore[misc]
        q = q.replace(f"${{{name}}}", vs[0]).replace(f"${name}", vs[0])
    for k, v in MACROS.items():
        q = q.replace(k, v)
    return q


def resolve(doc: dict[str, Any], url: str, db: str) -> dict[str, list[str]]:
    """Every variable's options, in the dashboard's order, as Grafana fills them."""
    options: dict[str, list[str]] = {}
    for v in doc["templating"]["list"]:
        if v["type"] == "custom":
            found = [x.strip() for x in v["query"].split(",")]
        else:
            q = interpolate(v["query"], options)
            found = grafana_values(q, influxql(url, db, q))
        if v.get("regex"):
            found = [x for x in found if js_regex(v["regex"]).fullmatch(x) or js_regex(v["regex"]).search(x)]
        options[v["name"]] = sorted(found)
    return options


def write_fixture(url: str, db: str) -> None:
    """An hour of two boards at another site, through the gateway's pipeline, with CONFIG."""
    from helpers import influx_write

    from gateway.config import parse_config
    from gateway.live import LiveView
    from gateway.pipeline import Pipeline

    pipe = Pipeline(parse_config(tomllib.loads(CONFIG), {}))
    live = LiveView(pipe.engine, "gw", NOW)
    lines: list[str] = []
    for dev in DEVICES:  # both say online first: the group waits for both boards' windows
        status = (
            b'{"v":1,"dev":"%s","state":"online","clock":"s","sleep_s":60,"battery_mv":3900,"buf":3,"buf_cap":256}'
            % dev.encode()
        )
        lines += pipe.handle(f"edgekit/{SITE}/{dev}/status", status, NOW).lines
    for i in range(70):  # 70 minutes: four 15-minute windows fire; the last reading comes too late
        for k, dev in enumerate(DEVICES):  # the two boards side by side, as a group's members report
            t = NOW + i * 60_000 if i < 69 else NOW + 60_000
            moisture = 30.0 + k + (i % 7) * 0.1 + (25.0 if i == 40 else 0.0)
            q = "c" if i == 10 else "u" if i == 11 else "s"
            m = {"moisture": round(moisture, 2), "lux": 200 + i, "lid": "open" if i % 2 else "shut"}
            body = json.dumps({"v": 1, "dev": dev, "r": [{"b": 1, "s": i, "t": t, "q": q, "m": m}]}).encode()
            out = pipe.handle(f"edgekit/{SITE}/{dev}/readings", body, NOW + i * 60_000 + 500)
            live.observe(out.readings, out.outputs, out.alerts)
            lines += out.lines
    sink = {"points_written": 100, "points_refused": 0, "write_failures": 0, "pending": 0, "last_write_ms": 2.5}
    stats = {"pipeline": pipe.stats.as_dict(), "sink": sink, "mqtt": {"connected": True, "connects": 1, "outbox": 0}}
    lines += live.health_lines(NOW + 3_600_000, stats)
    influx_write(url, db, lines)


@pytest.mark.integration
def test_variables_and_panels_follow_a_non_default_configuration(influxdb_v1: Any, influx_db: str) -> None:
    write_fixture(influxdb_v1.url, influx_db)
    seen: dict[str, list[str]] = {}
    empty_with_variables: list[str] = []
    for path in sorted((BOARDS / "influxql").glob("*.json")):
        doc = json.loads(path.read_text(encoding="utf-8"))
        options = resolve(doc, influxdb_v1.url, influx_db)
        seen.update(options)
        multi = {v["name"] for v in doc["templating"]["list"] if v.get("multi")}
        single = [n for n in options if n not in multi]
        for where, q in board_queries(doc):
            used = [n for n in options if f"${n}" in q or f"${{{n}" in q]
            varying = [n for n in single if n in used]
            rows = 0
            for combo in itertools.product(*(options[n] for n in varying)):
                values = {n: options[n] for n in multi} | {n: [c] for n, c in zip(varying, combo, strict=True)}
                answer = influxql(influxdb_v1.url, influx_db, interpolate(q, values))
                rows += sum(len(s.get("values", [])) for s in answer)
            if used and rows == 0:
                empty_with_variables.append(f"{path.name} {where}: {q}")
    # the variables hold what this configuration wrote, not the demo's names
    assert seen["site"] == [SITE]
    assert seen["device"] == list(DEVICES)
    assert seen["window"] == ["soil_15m"]
    assert seen["metric"] == ["lid", "lux", "moisture"]  # the reading's fields but boot, seq and q
    # every query that depends on a variable finds data for some value of it (alerts are not written here)
    assert [m for m in empty_with_variables if "alert" not in m.lower()] == []


def board_queries(doc: dict[str, Any]) -> list[tuple[str, str]]:
    out = [(f"panel {p['title']!r} {t['refId']}", t["query"]) for p in doc["panels"] for t in p["targets"]]
    out += [(f"annotation {a['name']!r}", a.get("query") or a["target"]["query"]) for a in doc["annotations"]["list"]]
    return out


# --- the JSON against Grafana's documented dashboard model -----------------------------------------------------

DASHBOARD_KEYS = {
    "id", "uid", "title", "description", "tags", "style", "timezone", "editable", "graphTooltip", "time",
    "timepicker", "templating", "annotations", "refresh", "schemaVersion", "version", "panels", "links",
    "fiscalYearStartMonth", "liveNow", "weekStart",
}  # fmt: skip
VARIABLE_KEYS = {
    "name", "label", "description", "type", "datasource", "query", "definition", "regex", "refresh", "sort",
    "multi", "includeAll", "allValue", "current", "options", "hide", "skipUrlSync",
}  # fmt: skip
GLOBALS = {"timeFilter", "__interval", "__interval_ms", "__range", "__timeFilter", "__from", "__to"}


@pytest.mark.parametrize("path", sorted(BOARDS.glob("*/*.json")), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_dashboard_json_follows_grafanas_documented_model(path: Path) -> None:
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert set(doc) <= DASHBOARD_KEYS, set(doc) - DASHBOARD_KEYS
    assert 8 <= len(doc["uid"]) <= 40  # "string (8-40)"
    defined: list[str] = []
    for v in doc["templating"]["list"]:
        assert set(v) <= VARIABLE_KEYS, (v["name"], set(v) - VARIABLE_KEYS)
        assert v["type"] in ("query", "custom", "constant", "datasource", "interval", "textbox", "adhoc")
        assert v.get("refresh", 0) in (0, 1, 2) and v.get("hide", 0) in (0, 1, 2) and v.get("sort", 0) in range(9)
        if v["type"] == "query":
            assert set(v["datasource"]) == {"type", "uid"} and v["definition"] == v["query"]
        if v.get("regex"):
            js_regex(v["regex"])
        # a variable may only use the ones defined before it (Grafana resolves them in order)
        used = set(re.findall(r"\$\{?(\w+)", v["query"])) - {"v"}
        assert used <= set(defined), (v["name"], used - set(defined))
        defined.append(v["name"])
    texts = [q for _, q in board_queries(doc)] + [p["title"] for p in doc["panels"]]
    for text in texts:
        names = set(re.findall(r"\$\{?(\w+)", text)) - GLOBALS
        assert names <= set(defined), (text, names - set(defined))
