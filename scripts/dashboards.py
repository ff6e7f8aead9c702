#!/usr/bin/env python3
"""Generate the Grafana dashboards in dashboards/ from one description, in two query languages.

    python scripts/dashboards.py           # (re)write dashboards/flux/*.json and dashboards/influxql/*.json
    python scripts/dashboards.py --check   # exit 1 if the files on disk differ from what this would write

Why two variants instead of one dashboard with a data-source variable: in Grafana the query language
(Flux or InfluxQL) is a property of the InfluxDB data source, and a panel's query text is written in one
of them, so switching the data source of a dashboard does not translate its queries. Each panel is
described here once with both queries side by side, and the two variants are generated, so they cannot
drift apart. InfluxDB 2.x (docker-compose.yml) gets both data sources (InfluxQL through the bucket's
DBRP mapping); InfluxDB 1.x (a 32-bit Raspberry Pi, Debian's `influxdb` package) gets the InfluxQL one.

Panels for a measurement the gateway does not declare (gateway/schema.py) are left out, so a
dashboard never asks for data nobody writes; once it is declared, --check says to regenerate.

The same description holds Grafana's alert rules (``rules()``: a device silent past its sleep cycle plus
grace, watermark lag, the write backlog growing, dead letters rising, the gateway not reporting), written
as file-provisioned alert rules (apiVersion 1, Grafana's "Use configuration files to provision alerting
resources"): the Flux variant to deploy/grafana/provisioning/alerting/ (docker-compose.yml mounts it), the
InfluxQL one to deploy/grafana/pi/alerting/ (installed into /etc/grafana/provisioning/alerting/ on a Pi).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from gateway import schema  # noqa: E402

OUT = REPO / "dashboards"
LANGS = ("flux", "influxql")
DATASOURCE = {lang: {"type": "influxdb", "uid": f"edgekit-{lang}"} for lang in LANGS}
NOT_METRICS = ("boot", "seq", "q")  # the reading's fields that are not metrics (docs/measurements.md)

PIVOT_LAST = '  |> last()\n  |> pivot(rowKey: ["device"], columnKey: ["_field"], valueColumn: "_value")\n'
RANGE = "from(bucket: v.defaultBucket)\n  |> range(start: v.timeRangeStart, stop: v.timeRangeStop)\n"
DEV = "r.device =~ /^${device:regex}$/"


def flux(measurement: str, where: str = "", tail: str = "") -> str:
    """A Flux query over one measurement: ``where`` adds to the filter, ``tail`` follows it."""
    cond = f'r._measurement == "{measurement}"' + (f" and {where}" if where else "")
    return RANGE + f"  |> filter(fn: (r) => {cond})\n" + tail


def agg(fn: str = "mean") -> str:
    return f"  |> aggregateWindow(every: v.windowPeriod, fn: {fn}, createEmpty: false)\n"


@dataclass
class Panel:
    title: str
    queries: list[tuple[str, str]]  # (flux, influxql); "" where the other language needs no counterpart
    kind: str = "timeseries"
    unit: str | None = None
    w: int = 12
    h: int = 8
    table: bool = False
    needs: str | None = None  # a measurement that must be declared for this panel to exist
    description: str = ""


@dataclass
class Annotation:
    name: str
    flux: str
    influxql: str
    color: str
    needs: str | None = None


@dataclass
class Board:
    slug: str
    title: str
    description: str
    panels: list[Panel]
    annotations: list[Annotation] = field(default_factory=list)
    variables: list[str] = field(default_factory=list)  # of: site, device, device_one, window, metric


def _variable(name: str, lang: str) -> dict[str, Any]:
    """A query variable filled from the data, so that the dashboards follow any configuration: the sites and
    devices that sent readings (devices of the chosen sites), the windows that wrote points, the metrics the
    readings carry (their fields but boot, seq and q). Grafana resolves them in order, so site comes first."""
    regex = ""
    if name == "site":
        query = (
            _SCHEMA + 'schema.measurementTagValues(bucket: v.defaultBucket, measurement: "reading", tag: "site")'
            if lang == "flux"
            else 'SHOW TAG VALUES FROM "reading" WITH KEY = "site"'
        )
    elif name in ("device", "device_one"):
        query = (
            _SCHEMA + 'schema.tagValues(bucket: v.defaultBucket, tag: "device", predicate: (r) => '
            'r._measurement == "reading" and r.site =~ /^${site:regex}$/)'
            if lang == "flux"
            else 'SHOW TAG VALUES FROM "reading" WITH KEY = "device" WHERE "site" =~ /^$site$/'
        )
    elif name == "window":
        query = (
            _SCHEMA + 'schema.measurementTagValues(bucket: v.defaultBucket, measurement: "window", tag: "window")'
            if lang == "flux"
            else 'SHOW TAG VALUES FROM "window" WITH KEY = "window"'
        )
    elif name == "metric":
        query = (
            _SCHEMA + 'schema.measurementFieldKeys(bucket: v.defaultBucket, measurement: "reading")'
            if lang == "flux"
            else 'SHOW FIELD KEYS FROM "reading"'
        )
        regex = f"/^(?!(?:{'|'.join(NOT_METRICS)})$).+$/"  # no capturing group: Grafana would take its match
    else:
        raise ValueError(f"unknown variable {name!r}")
    multi = name in ("site", "device")
    return {
        "name": "device" if name == "device_one" else name,
        "label": name.removesuffix("_one"),
        "type": "query",
        "datasource": DATASOURCE[lang],
        "query": query,
        "definition": query,
        "regex": regex,
        "refresh": 2,  # on time range change: a new device or window appears without reloading
        "multi": multi,
        "includeAll": multi,
        "sort": 1,
    }


_SCHEMA = 'import "influxdata/influxdb/schema"\n'


def _panel(p: Panel, lang: str, pid: int, x: int, y: int) -> dict[str, Any]:
    targets = []
    for fq, iq in p.queries:
        if not (fq if lang == "flux" else iq):
            continue  # one Flux query can do what takes InfluxQL several
        t: dict[str, Any] = {"refId": chr(ord("A") + len(targets)), "datasource": DATASOURCE[lang]}
        if lang == "flux":
            t["query"] = fq
        else:
            t.update(query=iq, rawQuery=True, resultFormat="table" if p.table else "time_series")
        targets.append(t)
    doc: dict[str, Any] = {
        "id": pid,
        "type": p.kind,
        "title": p.title,
        "description": p.description,
        "datasource": DATASOURCE[lang],
        "gridPos": {"x": x, "y": y, "w": p.w, "h": p.h},
        "targets": targets,
        "fieldConfig": {"defaults": {"unit": p.unit} if p.unit else {}, "overrides": []},
        "options": {},
    }
    if p.table:
        doc["transformations"] = [{"id": "merge", "options": {}}] if lang == "influxql" else []
    return doc


def render(board: Board, lang: str, declared: set[str]) -> dict[str, Any]:
    panels, x, y, row_h = [], 0, 0, 0
    for p in board.panels:
        if p.needs is not None and p.needs not in declared:
            continue
        if x + p.w > 24:
            x, y, row_h = 0, y + row_h, 0
        panels.append(_panel(p, lang, len(panels) + 1, x, y))
        x, row_h = x + p.w, max(row_h, p.h)
    annotations = [
        {
            "name": a.name,
            "datasource": DATASOURCE[lang],
            "enable": True,
            "iconColor": a.color,
            **(
                {"target": {"refId": "Anno", "query": a.flux}}
                if lang == "flux"
                else {"query": a.influxql, "textColumn": "message", "tagsColumn": "name,severity"}
            ),
        }
        for a in board.annotations
        if a.needs is None or a.needs in declared
    ]
    return {
        "uid": f"edgekit-{board.slug}-{lang}",
        "title": f"edgekit: {board.title} ({'Flux' if lang == 'flux' else 'InfluxQL'})",
        "description": board.description,
        "tags": ["edgekit", lang],
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s",
        "templating": {"list": [_variable(v, lang) for v in board.variables]},
        "annotations": {"list": annotations},
        "panels": panels,
    }


# --- the dashboards ----------------------------------------------------------------------------------

TF = "WHERE $timeFilter"
IDEV = '"device" =~ /^$device$/'


def boards() -> list[Board]:
    fleet = Board(
        "fleet",
        "fleet overview",
        "Devices online, last seen, battery, buffer fill and clock quality of every board.",
        variables=["site", "device"],
        panels=[
            Panel(
                "Devices online (active as the gateway sees them)",
                [
                    (
                        flux("gateway_health", 'r._field == "devices_active"', "  |> last()\n"),
                        f'SELECT last("devices_active") FROM "gateway_health" {TF}',
                    ),
                ],
                kind="stat",
                w=6,
                h=5,
                description="Heard from within the idle timeout and not offline (gateway_health.devices_active).",
            ),
            Panel(
                "Devices known",
                [
                    (
                        flux("gateway_health", 'r._field == "devices"', "  |> last()\n"),
                        f'SELECT last("devices") FROM "gateway_health" {TF}',
                    ),
                ],
                kind="stat",
                w=6,
                h=5,
            ),
            Panel(
                "Readings by clock quality (s synced, c corrected, u unsynced)",
                [
                    (
                        flux(
                            "reading", f'r._field == "q" and {DEV}', '  |> group(columns: ["_value"])\n' + agg("count")
                        )
                        if q == "s"
                        else "",
                        f'SELECT count("seq") AS "{q}" FROM "reading" {TF} AND "q" = \'{q}\' AND {IDEV} '
                        "GROUP BY time($__interval) fill(none)",
                    )
                    for q in "scu"
                ],
                w=12,
                h=5,
            ),
            Panel(
                "Devices: last seen, event time and watermark lag",
                [
                    (
                        flux(
                            "device_watermark",
                            DEV,
                            PIVOT_LAST + '  |> keep(columns: ["site", "device", "last_seen_ms", "last_event_ms", '
                            '"watermark_lag_ms", "readings", "late", "active"])\n',
                        ),
                        'SELECT last("last_seen_ms") AS "last_seen_ms", last("last_event_ms") AS "last_event_ms", '
                        'last("watermark_lag_ms") AS "watermark_lag_ms", last("readings") AS "readings", '
                        f'last("late") AS "late" FROM "device_watermark" {TF} AND {IDEV} GROUP BY "site", "device"',
                    ),
                ],
                kind="table",
                table=True,
                w=24,
                description="last_seen_ms and last_event_ms are epoch milliseconds (gateway clock, board clock).",
            ),
            Panel(
                "Device status (last report): battery, buffer, clock, firmware, commands",
                [
                    (
                        flux(
                            "device_status",
                            DEV,
                            PIVOT_LAST
                            + '  |> keep(columns: ["site", "device", "state", "battery_mv", "buf", "buf_cap", '
                            '"dropped", "clock", "fw", "ota", "ack", "ack_err"])\n',
                        ),
                        'SELECT last("state") AS "state", last("battery_mv") AS "battery_mv", last("buf") AS "buf", '
                        'last("buf_cap") AS "buf_cap", last("dropped") AS "dropped", last("clock") AS "clock", '
                        'last("fw") AS "fw", last("ota") AS "ota", last("ack") AS "ack", last("ack_err") AS "ack_err" '
                        f'FROM "device_status" {TF} AND {IDEV} GROUP BY "site", "device"',
                    ),
                ],
                kind="table",
                table=True,
                w=24,
            ),
            Panel(
                "Battery",
                [
                    (
                        flux("device_status", f'r._field == "battery_mv" and {DEV}', agg()),
                        f'SELECT mean("battery_mv") FROM "device_status" {TF} AND {IDEV} '
                        'GROUP BY time($__interval), "device" fill(none)',
                    ),
                ],
                unit="mvolt",
            ),
            Panel(
                "Buffer fill",
                [
                    (
                        flux(
                            "device_status",
                            f'(r._field == "buf" or r._field == "buf_cap") and {DEV}',
                            '  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")\n'
                            "  |> map(fn: (r) => ({_time: r._time, device: r.device, "
                            "_value: 100.0 * float(v: r.buf) / float(v: r.buf_cap)}))\n",
                        ),
                        f'SELECT 100 * mean("buf") / mean("buf_cap") FROM "device_status" {TF} AND {IDEV} '
                        'GROUP BY time($__interval), "device" fill(none)',
                    ),
                ],
                unit="percent",
            ),
            Panel(
                "Recent alerts",
                [
                    (
                        flux(
                            "alert",
                            "",
                            '  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")\n'
                            '  |> group()\n  |> sort(columns: ["_time"], desc: true)\n  |> limit(n: 50)\n'
                            '  |> keep(columns: ["_time", "severity", "source", "name", "site", "key", "message"])\n',
                        ),
                        'SELECT "severity", "source", "name", "site", "key", "message" FROM "alert" '
                        f"{TF} ORDER BY time DESC LIMIT 50",
                    ),
                ],
                kind="table",
                table=True,
                w=24,
            ),
            Panel(
                "Joined records (interval joins)",
                [
                    (
                        flux(
                            "join",
                            "",
                            '  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")\n'
                            '  |> group()\n  |> sort(columns: ["_time"], desc: true)\n  |> limit(n: 50)\n'
                            '  |> keep(columns: ["_time", "name", "key", "a_reading", "b_reading", "offset_ms"])\n',
                        ),
                        'SELECT "name", "key", "a_reading", "b_reading", "offset_ms" FROM "join" '
                        f"{TF} ORDER BY time DESC LIMIT 50",
                    ),
                ],
                kind="table",
                table=True,
                w=24,
                description="Pairs of readings a [[joins]] rule joined (docs/correlation.md), at the a side's time.",
            ),
        ],
    )
    device = Board(
        "device",
        "per device",
        "One board's readings with its window results overlaid; anomalies and pattern alerts as annotations.",
        variables=["site", "device_one", "window", "metric"],
        panels=[
            Panel(
                "$metric: readings (points) and the window $window (mean, min, max)",
                [
                    (
                        flux("reading", f'r._field == "${{metric}}" and {DEV}'),
                        f'SELECT "$metric" FROM "reading" {TF} AND {IDEV}',
                    ),
                    *[
                        (
                            flux(
                                "window",
                                f'r.window == "${{window}}" and r.metric == "${{metric}}" and r._field == "{a}" '
                                f"and {DEV}",
                            ),
                            f'SELECT "{a}" FROM "window" {TF} AND "window" = \'$window\' AND "metric" = \'$metric\' '
                            f"AND {IDEV}",
                        )
                        for a in ("mean", "min", "max")
                    ],
                ],
                w=24,
                h=10,
                description="Window points sit at the window's start; a late reading re-fires the window "
                "(revision + 1) and overwrites its point.",
            ),
            Panel(
                "Window revisions (re-fired by late readings)",
                [
                    (
                        flux(
                            "window",
                            f'r.window == "${{window}}" and r.metric == "${{metric}}" '
                            f'and r._field == "revision" and {DEV}',
                        ),
                        f'SELECT "revision" FROM "window" {TF} AND "window" = \'$window\' AND "metric" = \'$metric\' '
                        f"AND {IDEV}",
                    ),
                ],
            ),
            Panel(
                'Early results of $window: each provisional $metric mean, kept (provisional = "audit")',
                [
                    (
                        flux(
                            "window_provisional",
                            f'r.window == "${{window}}" and r.metric == "${{metric}}" and r._field == "mean" and {DEV}',
                        ),
                        f'SELECT "mean" FROM "window_provisional" {TF} AND "window" = \'$window\' '
                        f"AND \"metric\" = '$metric' AND {IDEV}",
                    ),
                ],
                description="A window with early_every or early_count emits provisional results before the watermark "
                "closes it; the final result overwrites them in the window panel above. With provisional = "
                '"audit" each provisional result is also kept here, a few nanoseconds after the window\'s start, so '
                "a person sees how far the early values were from the final one (docs/semantics.md).",
            ),
            Panel(
                "This device against its group: $metric deviation from the other members ($window)",
                [
                    (
                        flux(
                            "window_relative",
                            f'r.window == "${{window}}" and r.metric == "${{metric}}" and r._field == "deviation" '
                            f"and {DEV}",
                        ),
                        f'SELECT "deviation" FROM "window_relative" {TF} AND "window" = \'$window\' '
                        f'AND "metric" = \'$metric\' AND {IDEV} GROUP BY "group"',
                    ),
                ],
                description="A window with [windows.relative] compares each device's value in each window with the "
                "median (or mean) of the other members of its groups in the same window (docs/cep.md, Group-relative "
                "values): 0 is in line with the group, +3 three above the others. One series per group.",
            ),
            Panel(
                "Late readings of this device",
                [
                    (
                        flux("late_reading", f'r._field == "late_by_ms" and {DEV}'),
                        f'SELECT "late_by_ms" FROM "late_reading" {TF} AND {IDEV} GROUP BY "reason"',
                    ),
                ],
                unit="ms",
            ),
            Panel(
                "Anomaly score of $metric",
                [
                    (
                        flux(
                            "anomaly",
                            f'r.metric == "${{metric}}" and (r._field == "z" or r._field == "score") and {DEV}',
                        ),
                        f'SELECT "z", "score" FROM "anomaly" {TF} AND "metric" = \'$metric\' AND {IDEV}',
                    ),
                ],
                needs="anomaly",
                w=24,
            ),
        ],
        annotations=[
            Annotation(
                "Anomaly alerts",
                flux("alert", 'r.source == "anomaly" and r.key == "${device}" and r._field == "message"'),
                f'SELECT "message", "name", "severity" FROM "alert" {TF} AND "source" = \'anomaly\' '
                "AND \"key\" = '$device'",
                "orange",
            ),
            Annotation(
                "Pattern alerts (CEP)",
                flux("alert", 'r.source == "pattern" and r.key == "${device}" and r._field == "message"'),
                f'SELECT "message", "name", "severity" FROM "alert" {TF} AND "source" = \'pattern\' '
                "AND \"key\" = '$device'",
                "red",
            ),
        ],
    )
    lateness = Board(
        "lateness",
        "late readings and watermarks",
        "Late readings by device and reason, and how far each device's watermark lags the gateway's clock.",
        variables=["site", "device"],
        panels=[
            Panel(
                "Watermark lag per device (gateway clock - device watermark)",
                [
                    (
                        flux("device_watermark", f'r._field == "watermark_lag_ms" and {DEV}', agg("max")),
                        f'SELECT max("watermark_lag_ms") FROM "device_watermark" {TF} AND {IDEV} '
                        'GROUP BY time($__interval), "device" fill(none)',
                    ),
                ],
                unit="ms",
                w=24,
                description="A sleeping board's lag grows until it wakes and flushes: that is expected; "
                "a lag that only grows while the board is online is not.",
            ),
            Panel(
                "Late readings per device",
                [
                    (
                        flux(
                            "late_reading",
                            f'r._field == "late_by_ms" and {DEV}',
                            '  |> group(columns: ["device"])\n' + agg("count"),
                        ),
                        f'SELECT count("late_by_ms") FROM "late_reading" {TF} AND {IDEV} '
                        'GROUP BY time($__interval), "device" fill(none)',
                    ),
                ],
                kind="barchart",
            ),
            Panel(
                "Late readings by reason",
                [
                    (
                        flux(
                            "late_reading",
                            f'r._field == "late_by_ms" and {DEV}',
                            '  |> group(columns: ["reason"])\n' + agg("count"),
                        ),
                        f'SELECT count("late_by_ms") FROM "late_reading" {TF} AND {IDEV} '
                        'GROUP BY time($__interval), "reason" fill(none)',
                    ),
                ],
                kind="barchart",
            ),
            Panel(
                "How late (behind the watermark)",
                [
                    (
                        flux("late_reading", f'r._field == "late_by_ms" and {DEV}', agg("max")),
                        f'SELECT max("late_by_ms") FROM "late_reading" {TF} AND {IDEV} '
                        'GROUP BY time($__interval), "device", "window" fill(none)',
                    ),
                ],
                unit="ms",
                w=24,
            ),
        ],
    )
    gateway = Board(
        "gateway",
        "gateway health",
        "The gateway's counters (processing time, every 10 s), dead letters and write health.",
        panels=[
            Panel(
                "Messages and readings per second",
                [
                    (
                        flux("gateway_health", f'r._field == "{f}"', "  |> derivative(unit: 1s, nonNegative: true)\n"),
                        f'SELECT non_negative_derivative(last("{f}"), 1s) AS "{f}" FROM "gateway_health" {TF} '
                        'GROUP BY time($__interval), "gateway" fill(none)',
                    )
                    for f in ("messages", "readings_accepted", "duplicates", "window_results")
                ],
                unit="ops",
            ),
            Panel(
                "InfluxDB writes: points per second, refused, failures",
                [
                    (
                        flux("gateway_health", f'r._field == "{f}"', "  |> derivative(unit: 1s, nonNegative: true)\n"),
                        f'SELECT non_negative_derivative(last("{f}"), 1s) AS "{f}" FROM "gateway_health" {TF} '
                        'GROUP BY time($__interval), "gateway" fill(none)',
                    )
                    for f in ("points_written", "points_refused", "write_failures")
                ],
                unit="ops",
            ),
            Panel(
                "Backlog: points pending, MQTT outbox",
                [
                    (
                        flux("gateway_health", f'r._field == "{f}"', agg("max")),
                        f'SELECT max("{f}") FROM "gateway_health" {TF} '
                        'GROUP BY time($__interval), "gateway" fill(none)',
                    )
                    for f in ("pending", "outbox")
                ],
            ),
            Panel(
                "Last write duration",
                [
                    (
                        flux("gateway_health", 'r._field == "last_write_ms"', agg("max")),
                        f'SELECT max("last_write_ms") FROM "gateway_health" {TF} '
                        'GROUP BY time($__interval), "gateway" fill(none)',
                    ),
                ],
                unit="ms",
            ),
            Panel(
                "Broker connection (1 connected) and reconnects",
                [
                    (
                        flux(
                            "gateway_health",
                            'r._field == "mqtt_connected"',
                            "  |> map(fn: (r) => ({r with _value: if r._value then 1 else 0}))\n",
                        ),
                        f'SELECT "mqtt_connected" FROM "gateway_health" {TF}',
                    ),
                    (
                        flux("gateway_health", 'r._field == "mqtt_connects"', agg("max")),
                        f'SELECT max("mqtt_connects") FROM "gateway_health" {TF} GROUP BY time($__interval) fill(none)',
                    ),
                ],
            ),
            Panel(
                "Uptime",
                [
                    (
                        flux("gateway_health", 'r._field == "uptime_s"', "  |> last()\n"),
                        f'SELECT last("uptime_s") FROM "gateway_health" {TF}',
                    ),
                ],
                kind="stat",
                unit="s",
            ),
            Panel(
                "Dead letters by reason",
                [
                    (
                        flux("dead_letter", 'r._field == "size"', '  |> group(columns: ["reason"])\n' + agg("count")),
                        f'SELECT count("size") FROM "dead_letter" {TF} GROUP BY time($__interval), "reason" fill(none)',
                    ),
                ],
                kind="barchart",
            ),
            Panel(
                "Latest dead letters",
                [
                    (
                        flux(
                            "dead_letter",
                            "",
                            '  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: '
                            '"_value")\n  |> group()\n  |> sort(columns: ["_time"], desc: true)\n  |> limit(n: 50)\n'
                            '  |> keep(columns: ["_time", "reason", "device", "topic", "detail"])\n',
                        ),
                        f'SELECT "reason", "device", "topic", "detail" FROM "dead_letter" {TF} '
                        "ORDER BY time DESC LIMIT 50",
                    ),
                ],
                kind="table",
                table=True,
            ),
        ],
    )
    return [fleet, device, lateness, gateway]


# --- the alert rules -----------------------------------------------------------------------------------

ALERT_FILES = {
    "flux": REPO / "deploy" / "grafana" / "provisioning" / "alerting" / "edgekit.yml",  # docker-compose.yml
    "influxql": REPO / "deploy" / "grafana" / "pi" / "alerting" / "edgekit.yml",  # a Pi with InfluxDB 1.x
}
ALERT_FOLDER = "edgekit"
ALERT_GROUP = "edgekit"
ALERT_INTERVAL = "1m"  # how often Grafana evaluates the group
EXPR = {"type": "__expr__", "uid": "__expr__"}  # Grafana's server-side expressions

# the thresholds, in one place (docs/grafana.md explains each)
WATERMARK_LAG_MS = 600_000  # an online board whose watermark is 10 min behind the gateway's clock
BACKLOG_GROWTH = 1_000  # lines not yet written to InfluxDB, added over 15 min
DEAD_LETTERS = 10  # dead letters of one reason in 15 min


@dataclass
class Rule:
    """One alert rule: a query per language that returns one series per thing watched (its tags become the
    alert's labels), reduced to its last value, which fires the rule when it is above ``above``."""

    uid: str
    title: str
    flux: str
    influxql: str
    range_s: int  # how far back the query looks (relativeTimeRange.from)
    above: float
    summary: str  # Grafana templates: {{ $labels.device }}, {{ $values.B }} (the reduced value)
    description: str
    board: str  # the dashboard (slug) and panel (title) the rule links to
    panel: str
    pending: str = "0s"  # Grafana's "for": how long the condition must hold before the rule fires
    severity: str = "warning"
    below: bool = False  # fire when the value is below the threshold (instead of above)
    no_data: str = "OK"  # the rule's state when the query returns no series at all
    needs: str | None = None


def rules() -> list[Rule]:
    return [
        Rule(
            "edgekit-device-silent",
            "Device silent past its sleep cycle plus grace",
            flux(
                "device_watermark",
                'r._field == "active"',
                "  |> last()\n  |> map(fn: (r) => ({r with _value: if r._value then 0 else 1}))\n",
            ),
            'SELECT count("readings") AS "inactive" FROM "device_watermark" WHERE $timeFilter AND "active" = false '
            'GROUP BY "gateway", "site", "device"',
            range_s=90,  # device_watermark comes every 60 s: the last one or two
            above=0,
            summary="{{ $labels.site }}/{{ $labels.device }} has not been heard from for longer than it may be",
            description="The gateway counts a board as active while it is heard from within idle_factor x its "
            "announced sleep_s plus idle_grace (idle_timeout without sleep_s), and not offline (last will); "
            "device_watermark.active says so every 60 s. This board is past that: check its battery, Wi-Fi "
            "and the broker.",
            board="fleet",
            panel="Devices: last seen, event time and watermark lag",
        ),
        Rule(
            "edgekit-watermark-lag",
            "Watermark lag of an online device",
            flux(
                "device_watermark",
                '(r._field == "watermark_lag_ms" or r._field == "active")',
                "  |> last()\n"
                '  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")\n'
                "  |> filter(fn: (r) => r.active)\n"
                "  |> map(fn: (r) => ({r with _value: r.watermark_lag_ms}))\n"
                '  |> keep(columns: ["_time", "_value", "gateway", "site", "device"])\n',
            ),
            'SELECT last("watermark_lag_ms") FROM "device_watermark" WHERE $timeFilter AND "active" = true '
            'GROUP BY "gateway", "site", "device"',
            range_s=300,
            above=WATERMARK_LAG_MS,
            pending="5m",
            summary="{{ $labels.site }}/{{ $labels.device }}: watermark {{ $values.B }} ms behind the gateway's "
            "clock while the board is online",
            description="An online board whose event time stays far behind the gateway's clock holds its windows "
            "open (they fire late): its clock is wrong (unsynced, a bad RTC) or it is replaying an old buffer. "
            "A sleeping board's lag is expected and left to the silent-device rule.",
            board="lateness",
            panel="Watermark lag per device (gateway clock - device watermark)",
        ),
        Rule(
            "edgekit-backlog-growing",
            "Write backlog (memory and spool) growing",
            flux("gateway_health", 'r._field == "pending"', "  |> difference()\n  |> sum()\n"),
            'SELECT last("pending") - first("pending") AS "growth" FROM "gateway_health" WHERE $timeFilter '
            'GROUP BY "gateway"',
            range_s=900,
            above=BACKLOG_GROWTH,
            pending="5m",
            summary="{{ $labels.gateway }}: {{ $values.B }} more lines waiting for InfluxDB than 15 min ago",
            description="gateway_health.pending counts the lines not yet written (memory plus the on-disk spool). "
            "It grows while InfluxDB is slow, refusing or unreachable; nothing is lost, but the spool fills "
            "the disk and, when full, the gateway stops reading from the broker (docs/reliability.md).",
            board="gateway",
            panel="Backlog: points pending, MQTT outbox",
        ),
        Rule(
            "edgekit-dead-letters",
            "Dead letters rising",
            flux("dead_letter", 'r._field == "size"', '  |> group(columns: ["reason"])\n  |> count()\n'),
            'SELECT count("size") FROM "dead_letter" WHERE $timeFilter GROUP BY "reason"',
            range_s=900,
            above=DEAD_LETTERS,
            summary="{{ $values.B }} dead letters ({{ $labels.reason }}) in 15 min",
            description="Messages or readings the gateway rejected (docs/protocol.md, validation and dead letters), "
            "or lines InfluxDB refused: the dashboard's Latest dead letters table shows which and why.",
            board="gateway",
            panel="Dead letters by reason",
        ),
        Rule(
            "edgekit-gateway-silent",
            "Gateway not reporting",
            flux("gateway_health", 'r._field == "uptime_s"', "  |> count()\n"),
            'SELECT count("uptime_s") FROM "gateway_health" WHERE $timeFilter GROUP BY "gateway"',
            range_s=180,  # gateway_health comes every 10 s
            above=1,
            below=True,
            no_data="Alerting",  # the point of this rule: no health point at all in 3 min
            pending="1m",
            severity="critical",
            summary="No health point from the gateway for 3 minutes",
            description="The gateway writes gateway_health every 10 s. Nothing came: the gateway is stopped or "
            "cannot write (InfluxDB unreachable: its spool keeps everything). While it is silent, the other "
            "rules see no data and stay quiet. systemctl status edgekit-gateway, or docker compose ps.",
            board="gateway",
            panel="Uptime",
        ),
    ]


def render_rules(lang: str, declared: set[str], boards_by_slug: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The provisioning file of one language: one rule group with a query (A), a reduce (B) and a threshold (C)
    per rule, as Grafana's file provisioning documents them."""
    out = []
    for r in rules():
        if r.needs is not None and r.needs not in declared:
            continue
        board = boards_by_slug[r.board]
        (panel_id,) = [p["id"] for p in board["panels"] if p["title"] == r.panel]
        query: dict[str, Any] = {"refId": "A", "datasource": DATASOURCE[lang]}
        if lang == "flux":
            query["query"] = r.flux
        else:
            query.update(query=r.influxql, rawQuery=True, resultFormat="time_series")
        query.update(intervalMs=1000, maxDataPoints=43200)
        out.append(
            {
                "uid": f"{r.uid}-{lang}",
                "title": r.title,
                "condition": "C",
                "data": [
                    {
                        "refId": "A",
                        "relativeTimeRange": {"from": r.range_s, "to": 0},
                        "datasourceUid": DATASOURCE[lang]["uid"],
                        "model": query,
                    },
                    {
                        "refId": "B",
                        "relativeTimeRange": {"from": 0, "to": 0},
                        "datasourceUid": EXPR["uid"],
                        "model": {
                            "refId": "B",
                            "datasource": EXPR,
                            "type": "reduce",
                            "expression": "A",
                            "reducer": "last",
                            "settings": {"mode": "dropNN"},
                        },
                    },
                    {
                        "refId": "C",
                        "relativeTimeRange": {"from": 0, "to": 0},
                        "datasourceUid": EXPR["uid"],
                        "model": {
                            "refId": "C",
                            "datasource": EXPR,
                            "type": "threshold",
                            "expression": "B",
                            "conditions": [{"evaluator": {"type": "lt" if r.below else "gt", "params": [r.above]}}],
                        },
                    },
                ],
                "dashboardUid": board["uid"],
                "panelId": panel_id,
                "noDataState": r.no_data,  # OK: no series is nothing wrong (no silent device, no dead letter)
                "execErrState": "Error",
                "for": r.pending,
                "annotations": {"summary": r.summary, "description": r.description},
                "labels": {"severity": r.severity, "source": "edgekit"},
                "isPaused": False,
            }
        )
    return {
        "apiVersion": 1,
        "groups": [{"orgId": 1, "name": ALERT_GROUP, "folder": ALERT_FOLDER, "interval": ALERT_INTERVAL, "rules": out}],
    }


_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_YAML_WORDS = {"true", "false", "yes", "no", "on", "off", "null", "y", "n", "~"}


def to_yaml(value: Any, indent: int = 0) -> str:
    """Block-style YAML for the generated files (pyyaml is a test dependency only; the tests read every file
    back with it and compare): a name plain, a line single-quoted, a text of several lines as a literal block."""
    pad = " " * indent
    if isinstance(value, dict) and value:
        return "\n".join(
            f"{pad}{k}:\n{to_yaml(v, indent + 2)}"
            if isinstance(v, (dict, list)) and v
            else f"{pad}{k}: {to_yaml(v, indent + 2)}"
            for k, v in value.items()
        )
    if isinstance(value, list) and value:
        return "\n".join(
            f"{pad}- {to_yaml(v, indent + 2).lstrip()}"
            if isinstance(v, (dict, list)) and v
            else f"{pad}- {to_yaml(v, indent + 2)}"
            for v in value
        )
    if isinstance(value, (dict, list)):
        return "{}" if isinstance(value, dict) else "[]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    if not isinstance(value, str):
        raise TypeError(f"no YAML for {value!r}")
    if "\n" in value.rstrip("\n") and value.endswith("\n") and not value.endswith("\n\n"):
        body = value[:-1].split("\n")
        if all(ln and ln == ln.rstrip() and ln.isprintable() for ln in body) and not body[0].startswith(" "):
            return "|\n" + "\n".join(f"{pad}{ln}" for ln in body)
    if _PLAIN.fullmatch(value) and value.lower() not in _YAML_WORDS:
        return value
    if value.isprintable():
        return "'" + value.replace("'", "''") + "'"
    return json.dumps(value, ensure_ascii=False)


ALERT_HEADER = {
    "flux": "# Grafana alert rules for docker-compose.yml (InfluxDB 2.x, the Flux data source edgekit-flux), read\n"
    "# from /etc/grafana/provisioning/alerting at start. Generated by scripts/dashboards.py: do not edit.\n",
    "influxql": "# Grafana alert rules for a Raspberry Pi with InfluxDB 1.x (InfluxQL data source edgekit-influxql):\n"
    "#   sudo install -D -m 0644 -t /etc/grafana/provisioning/alerting/ deploy/grafana/pi/alerting/edgekit.yml\n"
    "# Generated by scripts/dashboards.py: do not edit.\n",
}


def generate() -> dict[Path, str]:
    """Every dashboard file, by path, as it should be on disk."""
    declared = set(schema.load_all())
    files = {}
    for lang in LANGS:
        rendered = {}
        for b in boards():
            doc = rendered[b.slug] = render(b, lang, declared)
            files[OUT / lang / f"edgekit-{b.slug}.json"] = json.dumps(doc, indent=1, ensure_ascii=False) + "\n"
        files[ALERT_FILES[lang]] = ALERT_HEADER[lang] + to_yaml(render_rules(lang, declared, rendered)) + "\n"
    return files


def _shown(p: Path) -> Path:
    return p.relative_to(REPO) if p.is_relative_to(REPO) else p


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if a file is out of date")
    args = parser.parse_args(argv)
    files = generate()
    stale = sorted(p for p, text in files.items() if not p.exists() or p.read_text(encoding="utf-8") != text)
    extra = sorted(p for lang in LANGS for p in (OUT / lang).glob("*.json") if p not in files)
    if args.check:
        for p in stale:
            print(f"out of date: {_shown(p)}", file=sys.stderr)
        for p in extra:
            print(f"not generated: {_shown(p)}", file=sys.stderr)
        if stale or extra:
            print("run: python scripts/dashboards.py", file=sys.stderr)
        return 1 if stale or extra else 0
    for p in stale:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(files[p], encoding="utf-8")
        print(f"wrote {_shown(p)}")
    for p in extra:
        p.unlink()
        print(f"removed {_shown(p)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
