"""Grafana alert rules (issue 25), generated with the dashboards by scripts/dashboards.py.

Grafana cannot run here, so what it would do is checked piece by piece against what it documents and does:

- the provisioning files against the structure of Grafana's "Use configuration files to provision alerting
  resources" (apiVersion 1, ``groups`` of ``orgId``/``name``/``folder``/``interval``/``rules``, each rule's
  ``uid``, ``title``, ``condition``, ``data``, ``noDataState``, ``execErrState``, ``for``, ``annotations``,
  ``labels``), with the field names and values of its reader (``pkg/services/provisioning/alerting/
  rules_types.go``: ``AlertRuleGroupV1``, ``AlertRuleV1``, ``QueryV1``) and of the server-side expressions
  (``pkg/expr``: ``reduce`` with ``expression``/``reducer``/``settings.mode``, ``threshold`` with exactly one
  condition whose evaluator is one of Grafana's);
- every query against what the gateway writes (gateway/schema.py, the dashboards' checker);
- every InfluxQL rule on a real InfluxDB 1.6, with ``$timeFilter`` rendered as Grafana renders it
  (``time >= <from>ms and time <= <to>ms`` over the rule's relativeTimeRange), over what the real pipeline writes
  for a fleet where each rule's fault happens and for one where none does; the series are reduced and compared
  with the threshold the way the file's reduce and threshold expressions say, and the firing label sets are
  the expected ones: the silent board fires, the talking ones do not, and so on.

The Flux variant is checked for structure and names only (InfluxDB 1.6 has no Flux).
"""

from __future__ import annotations

import copy
import json
import re
import tomllib
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_dashboards import problems  # the dashboards' query checker: names against gateway/schema.py

import dashboards as gen  # scripts/dashboards.py
from gateway import schema

REPO = Path(__file__).resolve().parent.parent
GRAFANA = REPO / "deploy" / "grafana"
DATASOURCE_FILES = {
    "flux": GRAFANA / "provisioning" / "datasources" / "influxdb.yml",
    "influxql": GRAFANA / "pi" / "datasources" / "edgekit.yml",
}

# --- the documented structure ------------------------------------------------------------------------

GROUP_KEYS = {"orgId", "name", "folder", "interval", "rules"}
RULE_KEYS = {
    "uid", "title", "condition", "data", "dashboardUid", "panelId", "noDataState", "execErrState", "for",
    "keepFiringFor", "missing_series_evals_to_resolve", "annotations", "labels", "isPaused",
    "notification_settings", "record",
}  # fmt: skip
QUERY_KEYS = {"refId", "queryType", "relativeTimeRange", "datasourceUid", "model"}
NO_DATA_STATES = {"NoData", "Alerting", "OK"}  # as the file-provisioning page lists them
EXEC_ERR_STATES = {"Error", "Alerting", "OK"}
EXPRESSION_TYPES = {"math", "reduce", "resample", "classic_conditions", "threshold"}
REDUCERS = {"sum", "mean", "min", "max", "count", "last"}  # pkg/expr/mathexp/reduce.go GetReduceFunc
THRESHOLDS_ONE = {"gt", "lt", "eq", "ne", "gte", "lte"}
THRESHOLDS_TWO = {"within_range", "outside_range", "within_range_included", "outside_range_included"}
DURATION = re.compile(r"0|(?=\d)(\d+y)?(\d+w)?(\d+d)?(\d+h)?(\d+m)?(\d+s)?(\d+ms)?")  # Prometheus' ParseDuration
UID = re.compile(r"[A-Za-z0-9_-]{1,40}")


def _strmap(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())


def rule_file_problems(doc: Any, datasource_uids: set[str]) -> list[str]:
    """What in an alert-rule provisioning file Grafana would refuse or misread (empty when it is sound)."""
    if not isinstance(doc, dict) or doc.get("apiVersion") != 1:
        return ["apiVersion must be 1"]
    out = [f"unknown top-level key {k!r}" for k in sorted(set(doc) - {"apiVersion", "groups", "deleteRules"})]
    groups = doc.get("groups")
    if not isinstance(groups, list) or not groups:
        return [*out, "groups must be a non-empty list"]
    uids: set[str] = set()
    for g in groups:
        where = f"group {g.get('name')!r}"
        out += [f"{where}: unknown key {k!r}" for k in sorted(set(g) - GROUP_KEYS)]
        if not isinstance(g.get("orgId", 1), int) or g.get("orgId", 1) < 1:
            out.append(f"{where}: orgId must be a positive integer")
        for key in ("name", "folder"):
            if not isinstance(g.get(key), str) or not g[key].strip():
                out.append(f"{where}: {key} is required")
        if not isinstance(g.get("interval"), str) or not DURATION.fullmatch(g["interval"]) or g["interval"] == "0":
            out.append(f"{where}: interval must be a duration such as 1m, not {g.get('interval')!r}")
        if not isinstance(g.get("rules"), list) or not g["rules"]:
            out.append(f"{where}: rules must be a non-empty list")
            continue
        for r in g["rules"]:
            out += [f"{where}: {p}" for p in _rule_problems(r, datasource_uids)]
            if r.get("uid") in uids:
                out.append(f"{where}: uid {r.get('uid')!r} used twice")
            uids.add(r.get("uid"))
    return out


def _rule_problems(r: dict[str, Any], datasource_uids: set[str]) -> list[str]:
    where = f"rule {r.get('title')!r}"
    out = [f"{where}: unknown key {k!r}" for k in sorted(set(r) - RULE_KEYS)]
    if not isinstance(r.get("uid"), str) or not UID.fullmatch(r["uid"]):
        out.append(f"{where}: uid must be 1 to 40 letters, digits, - or _, not {r.get('uid')!r}")
    if not isinstance(r.get("title"), str) or not r["title"].strip() or len(r["title"]) > 190:
        out.append(f"{where}: title is required (190 characters at most)")
    if r.get("noDataState", "NoData") not in NO_DATA_STATES:
        out.append(f"{where}: noDataState {r.get('noDataState')!r} is not one of {sorted(NO_DATA_STATES)}")
    if r.get("execErrState", "Alerting") not in EXEC_ERR_STATES:
        out.append(f"{where}: execErrState {r.get('execErrState')!r} is not one of {sorted(EXEC_ERR_STATES)}")
    if not isinstance(r.get("for"), str) or not DURATION.fullmatch(r["for"]):
        out.append(f"{where}: for must be a duration, not {r.get('for')!r}")
    for key in ("annotations", "labels"):
        if key in r and not _strmap(r[key]):
            out.append(f"{where}: {key} must map strings to strings")
    if ("dashboardUid" in r) != ("panelId" in r):
        out.append(f"{where}: dashboardUid and panelId go together")
    data = r.get("data")
    if not isinstance(data, list) or not data:
        return [*out, f"{where}: data must be a non-empty list"]
    seen: list[str] = []
    for q in data:
        ref = q.get("refId")
        out += [f"{where} {ref}: unknown key {k!r}" for k in sorted(set(q) - QUERY_KEYS)]
        if not isinstance(ref, str) or not ref or ref in seen:
            out.append(f"{where}: refId {ref!r} missing or used twice")
        model = q.get("model")
        if not isinstance(model, dict) or model.get("refId", ref) != ref:
            out.append(f"{where} {ref}: model must be an object with the same refId")
            continue
        rng = q.get("relativeTimeRange", {})
        if set(rng) - {"from", "to"} or not all(isinstance(rng.get(k, 0), int) for k in ("from", "to")):
            out.append(f"{where} {ref}: relativeTimeRange is from and to, in seconds")
        if q.get("datasourceUid") == "__expr__":
            out += [f"{where} {ref}: {p}" for p in _expression_problems(model, seen)]
        else:
            if q.get("datasourceUid") not in datasource_uids:
                out.append(f"{where} {ref}: data source {q.get('datasourceUid')!r} is not provisioned")
            if not rng or not 0 <= rng.get("to", 0) < rng.get("from", 0):
                out.append(f"{where} {ref}: a query needs a relativeTimeRange with from > to >= 0")
            if not isinstance(model.get("query"), str) or not model["query"].strip():
                out.append(f"{where} {ref}: the query text is missing")
        seen.append(ref)
    if r.get("condition") not in seen:
        out.append(f"{where}: condition {r.get('condition')!r} is not a refId of data")
    return out


def _expression_problems(model: dict[str, Any], before: list[str]) -> list[str]:
    if model.get("datasource", {}).get("uid") not in ("__expr__", "-100") or model.get("type") not in EXPRESSION_TYPES:
        return [f"an expression needs datasource __expr__ and a type of {sorted(EXPRESSION_TYPES)}"]
    out = []
    kind = model["type"]
    if kind in ("reduce", "threshold", "resample") and str(model.get("expression", "")).lstrip("$") not in before:
        out.append(f"{kind} refers to {model.get('expression')!r}, not an earlier refId")
    if kind == "reduce":
        if model.get("reducer") not in REDUCERS:
            out.append(f"reducer {model.get('reducer')!r} is not one of {sorted(REDUCERS)}")
        mode = model.get("settings", {}).get("mode", "")
        if mode not in ("", "dropNN", "replaceNN") or (
            mode == "replaceNN" and not isinstance(model["settings"].get("replaceWithValue"), (int, float))
        ):
            out.append(f"reduce mode {mode!r} is not dropNN or replaceNN (with replaceWithValue)")
    if kind == "threshold":
        conditions = model.get("conditions")
        if not isinstance(conditions, list) or len(conditions) != 1:
            return [*out, "a threshold takes exactly one condition"]
        ev = conditions[0].get("evaluator", {})
        params = ev.get("params")
        need = 1 if ev.get("type") in THRESHOLDS_ONE else 2 if ev.get("type") in THRESHOLDS_TWO else None
        if need is None:
            out.append(f"threshold type {ev.get('type')!r} is not one of Grafana's")
        elif not isinstance(params, list) or len(params) < need or not all(isinstance(p, (int, float)) for p in params):
            out.append(f"threshold {ev.get('type')} needs {need} numeric params, not {params!r}")
    return out


# --- the files ---------------------------------------------------------------------------------------


def rule_file(lang: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(gen.ALERT_FILES[lang].read_text(encoding="utf-8"))
    return doc


def provisioned_uids(lang: str) -> set[str]:
    doc = yaml.safe_load(DATASOURCE_FILES[lang].read_text(encoding="utf-8"))
    return {d["uid"] for d in doc["datasources"]}


def rules_of(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for g in doc["groups"] for r in g["rules"]]


def query_of(rule: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    (q,) = [d for d in rule["data"] if d["datasourceUid"] != "__expr__"]
    return q, q["model"]


@pytest.mark.parametrize("lang", gen.LANGS)
def test_alert_rule_files_follow_grafanas_provisioning_format(lang: str) -> None:
    doc = rule_file(lang)
    assert rule_file_problems(doc, provisioned_uids(lang)) == []
    names = {r["uid"].removesuffix(f"-{lang}") for r in rules_of(doc)}
    assert names == {
        "edgekit-device-silent", "edgekit-watermark-lag", "edgekit-backlog-growing", "edgekit-dead-letters",
        "edgekit-gateway-silent",
    }  # fmt: skip
    for r in rules_of(doc):
        q, model = query_of(r)
        assert q["datasourceUid"] == model["datasource"]["uid"] == f"edgekit-{lang}"
        assert r["labels"]["severity"] in ("info", "warning", "critical")
        # provisioning expands ${VAR} in annotations from Grafana's environment: none may appear by accident
        assert "${" not in json.dumps(r["annotations"]), r["title"]
        # each rule links to a panel of the dashboard of its own language
        board = json.loads((gen.OUT / lang / f"{r['dashboardUid'].removesuffix('-' + lang)}.json").read_text())
        assert board["uid"] == r["dashboardUid"] and r["panelId"] in {p["id"] for p in board["panels"]}


def test_the_format_check_catches_what_grafana_refuses() -> None:
    good = rule_file("influxql")
    uids = provisioned_uids("influxql")
    assert rule_file_problems(good, uids) == []

    def broken(change: Any) -> list[str]:
        doc = copy.deepcopy(good)
        change(doc["groups"][0]["rules"][0])
        return rule_file_problems(doc, uids)

    def two_conditions(r: dict[str, Any]) -> None:
        r["data"][2]["model"]["conditions"] *= 2

    def setter(path: tuple[Any, ...], value: Any) -> Any:
        def change(r: dict[str, Any]) -> None:
            node = r
            for k in path[:-1]:
                node = node[k]
            node[path[-1]] = value

        return change

    assert broken(setter(("uid",), "no spaces allowed")) != []
    title = good["groups"][0]["rules"][0]["title"]
    assert broken(setter(("condition",), "D")) == [
        f"group 'edgekit': rule {title!r}: condition 'D' is not a refId of data"
    ]
    assert broken(setter(("for",), "5 minutes")) != []
    assert broken(setter(("noDataState",), "Ok")) != []
    assert broken(setter(("execErrState",), "Err")) != []
    assert broken(setter(("dasboard",), "x")) != []  # an unknown key: a typo Grafana would ignore silently
    assert broken(setter(("data", 0, "datasourceUid"), "influxdb")) != []
    assert broken(setter(("data", 0, "relativeTimeRange"), {"from": 0, "to": 0})) != []
    assert broken(setter(("data", 1, "model", "reducer"), "latest")) != []
    assert broken(setter(("data", 1, "model", "expression"), "C")) != []
    assert broken(setter(("data", 2, "model", "conditions"), [{"evaluator": {"type": "above", "params": [1]}}])) != []
    assert broken(setter(("data", 2, "model", "conditions"), [{"evaluator": {"type": "gt", "params": []}}])) != []
    assert broken(two_conditions) != []
    assert broken(setter(("labels",), {"severity": 2})) != []
    assert rule_file_problems({**good, "apiVersion": 2}, uids) != []


@pytest.mark.parametrize("lang", gen.LANGS)
def test_every_alert_query_matches_the_schema(lang: str) -> None:
    registry = schema.load_all()
    for r in rules_of(rule_file(lang)):
        _, model = query_of(r)
        text = model["query"]
        # a rule has no dashboard variables: only Grafana's $timeFilter (InfluxQL) or v.timeRange* (Flux)
        assert not re.search(r"\$(?!timeFilter\b)", text), (r["title"], text)
        assert problems(text, lang, registry) == [], r["title"]


def test_alert_files_are_covered_by_the_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``scripts/dashboards.py --check`` fails when an alert file is stale (the dashboards being up to date)."""
    assert gen.main(["--check"]) == 0
    files = {lang: tmp_path / lang / "edgekit.yml" for lang in gen.LANGS}
    monkeypatch.setattr(gen, "ALERT_FILES", files)
    assert gen.main(["--check"]) == 1  # missing
    assert gen.main([]) == 0
    assert gen.main(["--check"]) == 0
    text = files["influxql"].read_text()
    assert "type: gt" in text
    files["influxql"].write_text(text.replace("type: gt", "type: lt", 1))
    assert gen.main(["--check"]) == 1


def test_the_provisioning_is_wired_for_docker_and_the_pi() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text(encoding="utf-8"))
    mounts = compose["services"]["grafana"]["volumes"]
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in mounts  # alerting/ comes with it
    assert gen.ALERT_FILES["flux"].parent == GRAFANA / "provisioning" / "alerting"
    assert gen.ALERT_FILES["influxql"].parent == GRAFANA / "pi" / "alerting"
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    line = "-t /etc/grafana/provisioning/alerting/ /opt/edgekit/src/deploy/grafana/pi/alerting/edgekit.yml"
    assert line in readme and line in (REPO / "docs" / "grafana.md").read_text(encoding="utf-8")


# --- evaluating the InfluxQL rules on a real InfluxDB 1.6 ----------------------------------------------

NOW = 1_764_072_000_000  # a whole minute
READING = b'{"v":1,"dev":"%s","r":[{"b":1,"s":%d,"t":%d,"q":"s","m":{"temp_c":20.5}}]}'
STATUS = b'{"v":1,"dev":"%s","state":"sleeping","clock":"s","sleep_s":60,"battery_mv":3900,"buf":3,"buf_cap":256}'


def fleet_lines(now: int, faulty: bool) -> list[str]:
    """30 minutes of a gateway with three boards, as the real pipeline and live view write them. d1 reads every
    minute; d2 sleeps 60 s between readings (it says so in its status); d3 reads every minute too. With
    ``faulty``: d2 stops after its first reading, d3's clock is 20 minutes behind, the write backlog grows by
    200 lines a minute and 20 malformed messages arrive in the last 10 minutes. Without: all is well, and two
    malformed messages arrive."""
    from gateway.config import parse_config
    from gateway.live import LiveView
    from gateway.pipeline import Pipeline

    doc = tomllib.loads((REPO / "deploy" / "gateway.toml").read_text(encoding="utf-8"))
    pipe = Pipeline(parse_config(doc, {"EDGEKIT_INFLUX_BUCKET": "b"}))
    start = now - 30 * 60_000
    live = LiveView(pipe.engine, "gw", start)
    lines = pipe.handle("edgekit/gh/d2/status", STATUS % b"d2", start).lines
    for seq, i in enumerate(range(30, -1, -1)):
        at = now - i * 60_000
        for dev in ("d1", "d2", "d3"):
            if dev == "d2" and faulty and seq > 0:
                continue
            t = at - 20 * 60_000 if dev == "d3" and faulty else at
            body = READING % (dev.encode(), seq, t)
            lines += pipe.handle(f"edgekit/gh/{dev}/readings", body, at + 500).lines
        for _ in range((2 if i < 10 else 0) if faulty else (1 if i in (3, 5) else 0)):
            lines += pipe.handle("edgekit/gh/d1/readings", b"{not json", at + 600).lines
        pending = 200 * seq if faulty else 50 + 10 * (seq % 2)
        lines += live.health_lines(at + 1000, {"pipeline": pipe.stats.as_dict(), "sink": {"pending": pending}})
    return lines


def run_influxql(url: str, db: str, q: str) -> dict[tuple[tuple[str, str], ...], list[float | None]]:
    """The answer as Grafana's InfluxQL data source frames it for an alert: one series per tag set (the tags
    become its labels), with the values of its one value column in time order."""
    params = urllib.parse.urlencode({"db": db, "q": q, "epoch": "ms"})
    with urllib.request.urlopen(f"{url}/query?{params}", timeout=30) as resp:
        result = json.load(resp)["results"][0]
    assert "error" not in result, (q, result)
    out = {}
    for s in result.get("series", []):
        assert s["columns"][0] == "time" and len(s["columns"]) == 2, s["columns"]  # one frame per series
        out[tuple(sorted((s.get("tags") or {}).items()))] = [v for _, v in sorted(s["values"], key=lambda x: x[0])]
    return out


def evaluate(rule: dict[str, Any], url: str, db: str, now: int) -> dict[tuple[tuple[str, str], ...], float] | None:
    """What the rule's expressions make of its query at ``now``: the reduced value of each series whose threshold
    holds (firing), or None when the query returns no series at all (the rule's noDataState applies)."""
    by_ref = {d["refId"]: d for d in rule["data"]}
    q, model = query_of(rule)
    rng = q["relativeTimeRange"]
    text = model["query"].replace(
        "$timeFilter", f"time >= {now - rng['from'] * 1000}ms and time <= {now - rng['to'] * 1000}ms"
    )
    series = run_influxql(url, db, text)
    if not series:
        return None
    cond = by_ref[rule["condition"]]["model"]
    assert cond["type"] == "threshold"
    red = by_ref[cond["expression"]]["model"]
    assert red["type"] == "reduce" and red["expression"] == q["refId"]
    assert red["settings"]["mode"] == "dropNN"  # non-numbers are dropped before reducing
    reduce = {"last": lambda v: v[-1], "max": max, "min": min, "sum": sum, "count": len}[red["reducer"]]
    ev = cond["conditions"][0]["evaluator"]
    test = {
        "gt": lambda x, p: x > p[0], "lt": lambda x, p: x < p[0], "gte": lambda x, p: x >= p[0],
        "lte": lambda x, p: x <= p[0], "eq": lambda x, p: x == p[0], "ne": lambda x, p: x != p[0],
    }[ev["type"]]  # fmt: skip
    firing = {}
    for labels, values in series.items():
        numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if numbers and test(reduce(numbers), ev["params"]):
            firing[labels] = reduce(numbers)
    return firing


@pytest.mark.integration
def test_influxql_alert_rules_fire_on_faults_and_only_on_them(influxdb_v1: Any, influx_db: str) -> None:
    from helpers import influx_write

    quiet, faulty = NOW, NOW + 3 * 3_600_000  # two fleets, hours apart, in one database
    influx_write(influxdb_v1.url, influx_db, fleet_lines(quiet, faulty=False) + fleet_lines(faulty, faulty=True))
    at = {"quiet": quiet + 5_000, "faulty": faulty + 5_000}  # evaluated 5 s after the last minute's points

    expected = {
        "edgekit-device-silent-influxql": {(("device", "d2"), ("gateway", "gw"), ("site", "gh"))},
        "edgekit-watermark-lag-influxql": {(("device", "d3"), ("gateway", "gw"), ("site", "gh"))},
        "edgekit-backlog-growing-influxql": {(("gateway", "gw"),)},
        "edgekit-dead-letters-influxql": {(("reason", "bad_json"),)},
        "edgekit-gateway-silent-influxql": set(),  # both gateways report
    }
    doc = rule_file("influxql")
    assert {r["uid"] for r in rules_of(doc)} == set(expected)
    for r in rules_of(doc):
        fired = evaluate(r, influxdb_v1.url, influx_db, at["faulty"])
        assert fired is not None and set(fired) == expected[r["uid"]], (r["uid"], fired)
        calm = evaluate(r, influxdb_v1.url, influx_db, at["quiet"])
        # nothing fires in the quiet fleet: no series at all is "OK" by the rule's noDataState
        assert calm == {} or (calm is None and r["noDataState"] == "OK"), (r["uid"], calm)
        if r["noDataState"] == "Alerting":  # the gateway rule: series in both fleets, none below the threshold
            assert calm == {} and fired == {}, (r["uid"], calm, fired)
    # an hour after the quiet fleet's gateway stopped: no data anywhere, and only the gateway rule says so
    gone = {
        r["uid"]: (evaluate(r, influxdb_v1.url, influx_db, quiet + 3_600_000), r["noDataState"]) for r in rules_of(doc)
    }
    assert {uid for uid, (result, no_data) in gone.items() if result is None and no_data == "Alerting"} == {
        "edgekit-gateway-silent-influxql"
    }
    assert all(result is None for result, _ in gone.values())
    # not vacuous: where the quiet fleet has series, they are there and below the threshold
    lag = next(r for r in rules_of(doc) if r["uid"] == "edgekit-watermark-lag-influxql")
    _, model = query_of(lag)
    text = model["query"].replace("$timeFilter", f"time >= {at['quiet'] - 300_000}ms and time <= {at['quiet']}ms")
    assert {dict(k)["device"] for k in run_influxql(influxdb_v1.url, influx_db, text)} == {"d1", "d2", "d3"}
