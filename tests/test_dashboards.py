"""Every dashboard query asks only for what the gateway writes, and everything it writes is on a dashboard.

The schema comes from the code (``gateway/schema.py``, which the writing modules declare into); the
measurement, field and tag names are parsed out of each InfluxQL and Flux query. A measurement that a
new module declares (the ``anomaly`` one, say) fails the coverage test until a dashboard shows it.
"""

from __future__ import annotations

import itertools
import json
import re
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

import dashboards as gen  # scripts/dashboards.py (tests/conftest.py puts scripts/ on sys.path)
from gateway import schema
from gateway.schema import Measurement
from sim.devices import METRIC_GENERATORS

REPO = Path(__file__).resolve().parent.parent
BOARDS = REPO / "dashboards"
PROVISIONING = REPO / "deploy" / "grafana" / "provisioning"


# --- parsing the queries ------------------------------------------------------------------------------


def _quoted(text: str) -> list[str]:
    return re.findall(r'"([^"]+)"', text)


def influxql_names(q: str) -> tuple[str, set[str], set[str], set[str]]:
    """``measurement, fields, tags, tag-or-field`` of a query.

    Fields: the arguments of functions in SELECT; tags: GROUP BY and SHOW ... WITH KEY; tag or field:
    bare names in SELECT (InfluxQL returns tags there too) and names in WHERE.
    """
    show = re.fullmatch(r'SHOW TAG VALUES FROM "(\w+)" WITH KEY = "(\w+)"(?: WHERE "(\w+)" =~ /[^/]*/)?', q.strip())
    if show:
        return show[1], set(), {show[2]} | ({show[3]} if show[3] else set()), set()
    keys = re.fullmatch(r'SHOW FIELD KEYS FROM "(\w+)"', q.strip())
    if keys:
        return keys[1], set(), set(), set()
    m = re.fullmatch(r"SELECT (.+?) FROM \"(\w+)\"(.*)", q.strip(), re.S)
    assert m, f'not a SELECT ... FROM "measurement" query: {q!r}'
    select, measurement, rest = m.groups()
    select = re.sub(r'\bAS "[^"]+"', "", select)
    where, _, tail = rest.partition(" GROUP BY ")
    where = re.sub(r"'[^']*'", "''", where)  # values are not names
    tail = re.sub(r"time\([^)]*\)", "", tail.partition(" ORDER BY ")[0])
    in_calls = {n for args in re.findall(r"\w+\(([^()]*)\)", select) for n in _quoted(args)}
    either = (set(_quoted(select)) - in_calls) | set(_quoted(where.partition(" ORDER BY ")[0]))
    return measurement, in_calls, set(_quoted(tail)), either


def flux_names(q: str) -> tuple[str, set[str], set[str], set[str]]:
    """``measurement, fields (_field ==), tags (group columns), tag-or-field (r.x, keep columns)``."""
    tv = re.search(r'measurementTagValues\(.*measurement: "(\w+)", tag: "(\w+)"\)', q)
    if tv:
        return tv[1], set(), {tv[2]}, set()
    tv = re.search(r'schema\.tagValues\(.*tag: "(\w+)", predicate: \(r\) => r\._measurement == "(\w+)"(.*)\)', q)
    if tv:
        return tv[2], set(), {tv[1]}, set(re.findall(r"\br\.([A-Za-z]\w*)", tv[3]))
    fk = re.search(r'measurementFieldKeys\(.*measurement: "(\w+)"\)', q)
    if fk:
        return fk[1], set(), set(), set()
    measurements = set(re.findall(r'r\._measurement == "(\w+)"', q))
    assert len(measurements) == 1, f"expected one r._measurement == ... in {q!r}"
    fields = set(re.findall(r'r\._field == "(\w+)"', q))
    tags = {c for g in re.findall(r"group\(columns: \[([^\]]*)\]", q) for c in _quoted(g) if not c.startswith("_")}
    either = set(re.findall(r"\br\.([A-Za-z]\w*)", q)) - {"with"}
    either |= {c for k in re.findall(r"keep\(columns: \[([^\]]*)\]", q) for c in _quoted(k) if not c.startswith("_")}
    return measurements.pop(), fields, tags, either


def problems(q: str, lang: str, registry: Mapping[str, Measurement]) -> list[str]:
    """What in one query does not exist in the schema (empty when the query is sound)."""
    if lang == "flux":
        if 'import "influxdata/influxdb/schema"' not in q:
            assert q.startswith("from(bucket: v.defaultBucket)\n  |> range(start: v.timeRangeStart"), q
        name, fields, tags, either = flux_names(q)
    else:
        if not q.startswith("SHOW"):
            assert "$timeFilter" in q, q
        name, fields, tags, either = influxql_names(q)
    m = registry.get(name)
    if m is None:
        return [f"measurement {name!r} is not written by the gateway"]
    out = [f"{name}: no field {f!r}" for f in sorted(fields) if not m.has_field(f)]
    out += [f"{name}: no tag {t!r}" for t in sorted(tags) if not m.has_tag(t)]
    out += [f"{name}: no tag or field {x!r}" for x in sorted(either) if not (m.has_tag(x) or m.has_field(x))]
    return out


# --- walking the dashboards ---------------------------------------------------------------------------


def board_files() -> list[Path]:
    return sorted(BOARDS.glob("*/*.json"))


def queries(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any] | None]]:
    """(where, query, datasource) of every panel target, variable and annotation of a dashboard."""
    for p in doc["panels"]:
        for t in p["targets"]:
            yield f"panel {p['title']!r} {t['refId']}", t["query"], t.get("datasource")
    for v in doc["templating"]["list"]:
        if v["type"] == "query":
            yield f"variable {v['name']}", v["query"], v["datasource"]
    for a in doc["annotations"]["list"]:
        yield f"annotation {a['name']!r}", a.get("query") or a["target"]["query"], a["datasource"]


def expand(q: str, doc: dict[str, Any]) -> list[str]:
    """The query once for each value of every custom variable it uses, and of $window and $metric (filled from
    the data in Grafana) for each window of deploy/gateway.toml and each of its metrics."""
    custom = {v["name"]: v["query"].split(",") for v in doc["templating"]["list"] if v["type"] == "custom"}
    deployed = tomllib.loads((REPO / "deploy" / "gateway.toml").read_text(encoding="utf-8"))["windows"]
    custom["window"] = [w["name"] for w in deployed if {"mean", "min", "max"} <= set(w.get("aggregates", ()))]
    custom["metric"] = sorted({m for w in deployed if w["name"] in custom["window"] for m in w["metrics"]})
    used = [n for n in custom if f"${n}" in q or f"${{{n}}}" in q]
    out = []
    for values in itertools.product(*(custom[n] for n in used)):
        text = q
        for n, v in zip(used, values, strict=True):
            text = text.replace(f"${{{n}}}", v).replace(f"${n}", v)
        out.append(text)
    return out


@pytest.fixture(scope="module")
def registry() -> Mapping[str, Measurement]:
    return schema.load_all()


def test_there_are_dashboards_in_both_languages() -> None:
    langs = {p.parent.name for p in board_files()}
    assert langs == {"flux", "influxql"}
    assert {p.name for p in (BOARDS / "flux").glob("*.json")} == {p.name for p in (BOARDS / "influxql").glob("*.json")}


@pytest.mark.parametrize("path", board_files(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_query_matches_the_schema(path: Path, registry: Mapping[str, Measurement]) -> None:
    doc = json.loads(path.read_text(encoding="utf-8"))
    lang = path.parent.name
    found = []
    n = 0
    for where, q, ds in queries(doc):
        assert ds == {"type": "influxdb", "uid": f"edgekit-{lang}"}, f"{where}: data source {ds}"
        for text in expand(q, doc):
            n += 1
            found += [f"{where}: {p}" for p in problems(text, lang, registry)]
    assert n >= 5
    assert found == []


def test_every_measurement_the_gateway_writes_is_on_a_dashboard(registry: Mapping[str, Measurement]) -> None:
    for lang in ("flux", "influxql"):
        shown = set()
        for path in (BOARDS / lang).glob("*.json"):
            doc = json.loads(path.read_text(encoding="utf-8"))
            for _, q, _ in queries(doc):
                for text in expand(q, doc):
                    shown.add((flux_names if lang == "flux" else influxql_names)(text)[0])
        missing = sorted(set(registry) - shown)
        assert missing == [], f"{lang}: measurements on no dashboard: {missing} (add panels in scripts/dashboards.py)"


def test_the_checker_catches_wrong_names(registry: Mapping[str, Measurement]) -> None:
    assert problems(
        'SELECT mean("temp_C") FROM "reading" WHERE $timeFilter GROUP BY "devise"', "influxql", registry
    ) == [
        "reading: no field 'temp_C'",
        "reading: no tag 'devise'",
    ]
    bad_flux = gen.flux("window", 'r._field == "avg" and r.windw == "x"', '  |> group(columns: ["metric", "dev"])\n')
    assert problems(bad_flux, "flux", registry) == [
        "window: no field 'avg'",
        "window: no tag 'dev'",
        "window: no tag or field 'windw'",
    ]
    assert problems('SELECT "x" FROM "readings" WHERE $timeFilter', "influxql", registry) == [
        "measurement 'readings' is not written by the gateway"
    ]


def test_dashboard_files_are_generated_and_up_to_date() -> None:
    assert gen.main(["--check"]) == 0, "run: python scripts/dashboards.py"


def test_no_window_or_metric_name_is_written_into_the_dashboards() -> None:
    """The window and the metrics come from the data ($window, $metric: tests/test_dashboard_variables.py), not
    from the demo's configuration: no dashboard names the demo's window or a simulated metric."""
    doc = tomllib.loads((REPO / "deploy" / "gateway.toml").read_text(encoding="utf-8"))
    names = {w["name"] for w in doc["windows"]} | set(METRIC_GENERATORS)
    for path in board_files():
        text = path.read_text(encoding="utf-8")
        assert not [n for n in names if re.search(rf"\b{n}\b", text)], path


def test_provisioned_data_sources_and_dashboard_folders() -> None:
    ds = yaml.safe_load((PROVISIONING / "datasources" / "influxdb.yml").read_text(encoding="utf-8"))
    by_uid = {d["uid"]: d for d in ds["datasources"]}
    assert by_uid["edgekit-flux"]["jsonData"]["version"] == "Flux"
    assert by_uid["edgekit-influxql"]["jsonData"].get("version", "InfluxQL") == "InfluxQL"
    assert by_uid["edgekit-influxql"]["jsonData"]["dbName"]
    prov = yaml.safe_load((PROVISIONING / "dashboards" / "edgekit.yml").read_text(encoding="utf-8"))
    (provider,) = prov["providers"]
    assert provider["options"]["foldersFromFilesStructure"] is True
    uids = [json.loads(p.read_text(encoding="utf-8"))["uid"] for p in board_files()]
    assert len(uids) == len(set(uids)) == len(board_files())


@pytest.mark.integration
def test_influxql_queries_run_on_influxdb_1x_over_what_the_gateway_writes(influxdb_v1: Any, influx_db: str) -> None:
    """Each InfluxQL query, with Grafana's macros filled in, runs on a real InfluxDB 1.x and returns rows."""
    from helpers import influx_query, influx_write

    from gateway.config import parse_config
    from gateway.live import LiveView
    from gateway.pipeline import Pipeline

    now = 1_764_072_000_000
    doc = tomllib.loads((REPO / "deploy" / "gateway.toml").read_text(encoding="utf-8"))
    doc["windows"][0] |= {"early_count": 1, "provisional": "audit"}  # its early results, kept in window_provisional
    doc["windows"][0]["relative"] = {}  # d1 against the other board of its group, in window_relative
    doc["groups"] = {"gh": ["site:gh"]}
    doc["joins"] = [  # the board's warm readings joined with its humidity a minute either side: `join` points
        {
            "name": "warm_humid",
            "between": "b.t BETWEEN a.t - 1m AND a.t + 1m",
            "a": {"metrics": ["temp_c"], "where": "temp_c > 30"},
            "b": {"metrics": ["rh"]},
        }
    ]
    cfg = parse_config(doc, {"EDGEKIT_INFLUX_BUCKET": "b"})
    pipe = Pipeline(cfg)
    live = LiveView(pipe.engine, "gw", now)
    lines: list[str] = []
    status = b'{"v":1,"dev":"d1","state":"sleeping","clock":"s","sleep_s":60,"battery_mv":3900,"buf":3,"buf_cap":256}'
    for i in range(40):  # 40 minutes of one board: windows fire, the last readings arrive too late
        t = now + i * 60_000 if i < 38 else now + 60_000
        q = b"c" if i == 10 else b"u" if i == 11 else b"s"
        body = b'{"v":1,"dev":"d1","r":[{"b":1,"s":%d,"t":%d,"q":"%s","m":{"temp_c":%d.5,"rh":40}}]}' % (i, t, q, i)
        out = pipe.handle("edgekit/gh/d1/readings", body, now + i * 60_000 + 500)
        live.observe(out.readings, out.outputs, out.alerts)
        lines += out.lines
        if i < 38:  # a second board of the group, a degree cooler
            other = body.replace(b'"d1"', b'"d2"').replace(b'"temp_c":%d.5' % i, b'"temp_c":%d.5' % (i - 1))
            lines += pipe.handle("edgekit/gh/d2/readings", other, now + i * 60_000 + 600).lines
    lines += pipe.handle("edgekit/gh/d1/status", status, now).lines
    lines += pipe.handle("edgekit/gh/d1/readings", b"{not json", now).lines
    from gateway.alerts import Alert

    alert = Alert("anomaly", "z", "gh", "d1", "warning", now, now, (("d1", 1, 3),), "hot", {"z": 4.0})
    lines.append(alert.to_line())
    for k, at in enumerate((now + 3_600_000, now + 3_670_000)):  # two health points a minute apart
        sink = {"points_written": 100 + k, "points_refused": k, "write_failures": k, "pending": 0, "last_write_ms": 2.5}
        mqtt = {"connected": True, "connects": 1, "outbox": 0}
        lines += live.health_lines(at, {"pipeline": pipe.stats.as_dict(), "sink": sink, "mqtt": mqtt})
    written = {schema.parse_line(x)[0] for x in lines}
    assert written == set(schema.load_all()), sorted(written)
    influx_write(influxdb_v1.url, influx_db, lines)

    macros = {
        "$timeFilter": f"time >= {now - 3_600_000}ms AND time <= {now + 7_200_000}ms",
        "$__interval": "1m",
        "$device": "d1",
        "$site": "gh",
    }
    empty = []
    for path in sorted((BOARDS / "influxql").glob("*.json")):
        doc = json.loads(path.read_text(encoding="utf-8"))
        for where, q, _ in queries(doc):
            for text in expand(q, doc):
                for k, v in macros.items():
                    text = text.replace(k, v)
                rows = influx_query(influxdb_v1.url, influx_db, text)  # raises on an InfluxQL error
                if not rows:
                    empty.append(f"{path.name} {where}: {text}")
    # the pattern-alert annotation has no data here (no CEP yet): everything else must return rows
    assert empty == [m for m in empty if "Pattern alerts" in m], empty
    assert len(empty) <= 1


def test_raspberry_pi_provisioning_points_at_the_influxql_dashboards() -> None:
    pi = REPO / "deploy" / "grafana" / "pi"
    (ds,) = yaml.safe_load((pi / "datasources" / "edgekit.yml").read_text(encoding="utf-8"))["datasources"]
    assert ds["uid"] == "edgekit-influxql" and ds["jsonData"]["dbName"] == "edgekit"
    toml = tomllib.loads((REPO / "deploy" / "systemd" / "gateway.toml").read_text(encoding="utf-8"))
    assert toml["influx"]["database"] == ds["jsonData"]["dbName"] and toml["influx"]["target"] == "v1"
    (provider,) = yaml.safe_load((pi / "dashboards" / "edgekit.yml").read_text(encoding="utf-8"))["providers"]
    path = Path(provider["options"]["path"])
    assert path.parts[:4] == ("/", "opt", "edgekit", "src")  # the checkout, as the README installs it
    assert sorted((REPO / path.relative_to("/opt/edgekit/src")).glob("*.json")) == sorted(
        (BOARDS / "influxql").glob("*.json")
    )
