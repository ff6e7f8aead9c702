"""Sink-only mode end to end: a job's result files (docs/scale-out.md, "Output") -> the gateway as a process ->
a real InfluxDB 1.6 that goes away in between. The points equal those the gateway itself writes for the same
results, and each committed file is consumed once across a SIGKILL and a restart; files in progress are not read.

The result files are made from the gateway's own pipeline over a simulated fleet, written in the documented
output schema (what a Flink job writes), so InfluxDB must end up with exactly the gateway's own points."""

from __future__ import annotations

import json
import os
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
import services
from harness import PROCESSING_TIME_FIELDS, GatewayProcess, scrape, wait_until, write_config
from helpers import influx_query, start_or_fail

from gateway.alerts import Alert
from gateway.config import parse_config
from gateway.engine.outputs import LateReading, WindowResult
from gateway.pipeline import Pipeline
from gateway.schema import parse_point
from sim.fleet import FleetSpec, generate

WINDOWS: list[dict[str, object]] = [
    {"name": "t10m", "kind": "tumbling", "size": "10m", "metrics": ["temp_c", "rh"],
     "aggregates": ["count", "sum", "mean", "min", "max", "stddev", "first", "last"], "allowed_lateness": "0s"},
    {"name": "site5m", "kind": "tumbling", "size": "5m", "metrics": ["temp_c"], "aggregates": ["count", "mean"],
     "key": "site", "allowed_lateness": "0s", "publish": True},
]  # fmt: skip
PATTERNS: list[dict[str, object]] = [
    {"name": "warm_then_dry", "within": "10m", "severity": "warning",
     "steps": [{"name": "warm", "where": "temp_c > 20.5"}, {"name": "dry", "where": "rh < 40"}]},
]  # fmt: skip
MEASUREMENTS = ("window", "late_reading", "alert")
AFTERNOON_MS = 1_780_326_000_000  # 2026-06-01 15:00 UTC


def _results(
    prefix: str,
) -> tuple[dict[str, list[bytes]], dict[str, dict[Any, dict[str, object]]], list[tuple[str, bytes]]]:
    """The documented output records of the gateway's own results, by folder, the gateway's own points, and the
    alerts and window results it publishes on MQTT (topic, payload) in their order."""
    doc = {"mqtt": {"prefix": prefix}, "windows": WINDOWS, "patterns": PATTERNS}
    pipe = Pipeline(parse_config(doc, env={}))
    # a fixed afternoon: the simulated climate follows the time of day, and the pattern's alerts need warm readings
    plan = generate(FleetSpec(devices=6, readings_per_device=60, batch_size=10, sites=("north", "south"), seed=5,
                              prefix=prefix, start_ms=AFTERNOON_MS))  # fmt: skip
    now = int(time.time() * 1000)
    records: dict[str, list[bytes]] = {"windows": [], "late": [], "alerts": []}
    points: dict[str, dict[Any, dict[str, object]]] = {m: {} for m in MEASUREMENTS}
    published: list[tuple[str, bytes]] = []
    msgs = [(m.topic, m.payload) for m in plan.messages]
    r0 = plan.readings[0]  # one reading re-sent long after its windows closed: late records
    late = {"v": 1, "dev": r0.device, "r": [{"b": r0.boot, "s": 99_999, "t": r0.t_ms, "q": "s", "m": {"temp_c": 9.0}}]}
    msgs.append((f"{prefix}/{r0.site}/{r0.device}/readings", json.dumps(late).encode()))
    for topic, payload in msgs:
        out = pipe.handle(topic, payload, now)
        for o in out.outputs:
            if isinstance(o, WindowResult):
                d = json.loads(o.to_payload())
                d.pop("emitted_ms")  # the job does not write it
                records["windows"].append(json.dumps(d).encode())
            elif isinstance(o, LateReading) and o.reason == "too_late":
                records["late"].append(json.dumps({
                    "v": 1, "window": o.window, "site": o.site, "device": o.device, "metric": o.metric, "t_ms": o.t_ms,
                    "boot": o.boot, "seq": o.seq, "late_by_ms": o.late_by_ms, "watermark_ms": o.watermark_ms,
                    "reason": o.reason, "value": o.value}).encode())  # fmt: skip
        for a in out.alerts:
            records["alerts"].append(_alert_record(a))
        published += [(t, p) for t, p in out.publish if "/_gateway/alerts/" in t or "/_gateway/windows/" in t]
        for ln in out.lines:
            m, tags, fields, ts = parse_point(ln)
            if m in points and (m != "late_reading" or tags["reason"] == "too_late"):
                key = (tuple(sorted(tags.items())), ts)
                points[m][key] = {k: v for k, v in fields.items() if k not in PROCESSING_TIME_FIELDS}
    assert len(records["windows"]) > 20 and records["late"] and records["alerts"], {
        k: len(v) for k, v in records.items()
    }
    assert len([t for t, _ in published if "/alerts/" in t]) == len(records["alerts"])
    return records, points, published


def _alert_record(a: Alert) -> bytes:
    return json.dumps({
        "v": 1, "source": a.source, "name": a.name, "site": a.site, "key": a.key, "severity": a.severity,
        "first_ms": a.first_ms, "last_ms": a.last_ms, "readings": [f"{d}/{b}/{s}" for d, b, s in a.readings],
        "details": {k: str(v) for k, v in a.details.items()}}).encode()  # fmt: skip


def _no_emitted(payload: bytes) -> bytes:
    doc = json.loads(payload)
    doc.pop("emitted_ms")
    return json.dumps(doc, sort_keys=True).encode()


def _write(path: Path, lines: list[bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(x + b"\n" for x in lines))


def _stored(url: str, db: str) -> dict[str, dict[Any, dict[str, object]]]:
    tag_keys = {"window": ("device", "metric", "site", "window"), "late_reading": ("device", "metric", "reason",
                "site", "window"), "alert": ("key", "name", "path", "severity", "site", "source")}  # fmt: skip
    out: dict[str, dict[Any, dict[str, object]]] = {}
    for m in MEASUREMENTS:
        got: dict[Any, dict[str, object]] = {}
        rows = influx_query(url, db, f'SELECT * FROM "{m}"', epoch="ns")
        for row in rows:
            tags = tuple(sorted((k, row[k]) for k in tag_keys[m] if row.get(k) is not None))
            skip = set(tag_keys[m]) | {"time"} | PROCESSING_TIME_FIELDS
            got[(tags, row["time"])] = {k: v for k, v in row.items() if v is not None and k not in skip}
        assert len(rows) == len(got), m
        out[m] = got
    return out


@pytest.mark.integration
@pytest.mark.slow
def test_sink_only_writes_the_gateways_points_once_through_an_outage(tmp_path: Path) -> None:
    prefix = f"s{uuid.uuid4().hex[:6]}"
    records, want, _ = _results(prefix)
    results = tmp_path / "flink-out"
    w = records["windows"]
    third = len(w) // 3
    _write(results / "windows" / "part-aa-0-0", w[:third])
    _write(results / "windows" / "2026-12-02--16" / "part-aa-1-0", w[third : 2 * third])  # a bucket folder
    _write(results / "windows" / ".part-aa-0-1.inprogress.0f3e", w[2 * third :])  # not committed yet: never read
    _write(results / "late" / "part-bb-0-0", [*records["late"], b'{"v":1,"window":"t10m"}'])  # one line amiss
    _write(results / "alerts" / "part-cc-0-0", records["alerts"])

    influx_dir = tmp_path / "influx"
    http_port, rpc_port = services.free_ports(2)
    influx = start_or_fail(lambda: services.start_influxdb(influx_dir, http_port, rpc_port))
    try:
        sections: dict[str, dict[str, object]] = {
            "mqtt": {"prefix": prefix, "client_id": f"sink-{prefix}"},
            "influx": {"target": "v1", "url": influx.url, "database": "results", "timeout_s": 2.0, "retry_max_s": 0.5},
            "state": {"dir": str(tmp_path / "state"), "checkpoint_interval_s": 0.3},
            "sink_only": {"dir": str(results), "poll_interval_s": 0.2},
        }
        # the same configuration as the job's: the pattern's steps make the alert's message
        pattern = '[[patterns]]\nname = "warm_then_dry"\nwithin = "10m"\nseverity = "warning"\n'
        pattern += '[[patterns.steps]]\nname = "warm"\nwhere = "temp_c > 20.5"\n'
        pattern += '[[patterns.steps]]\nname = "dry"\nwhere = "rh < 40"\n'
        config = write_config(tmp_path / "gateway.toml", sections, extra=pattern)
        gw = GatewayProcess(config, tmp_path)
        gw.start()

        def stat(*path: str) -> Any:
            node: Any = gw.stats()
            for p in path:
                node = node.get(p, {}) if isinstance(node, dict) else {}
            return node

        wait_until(
            lambda: stat("files", "consumed") == 4 and stat("sink", "pending") == 0, "four files written", 30, gw
        )
        influx.stop()  # the outage
        os.rename(results / "windows" / ".part-aa-0-1.inprogress.0f3e", results / "windows" / "part-aa-0-1")
        wait_until(lambda: stat("files", "consumed") == 5 and stat("sink", "spool_lines") > 0, "spooled", 30, gw)
        gw.kill()  # the spool and the files consumed are in the state file
        gw.start()
        wait_until(lambda: stat("files", "recovered") == 5 and stat("state", "checkpoints") >= 2, "restarted", 30, gw)
        assert stat("files", "consumed") == 0 and stat("sink", "spool_lines") > 0  # no file read twice
        influx = start_or_fail(lambda: services.start_influxdb(influx_dir, http_port, rpc_port))
        wait_until(lambda: stat("sink", "pending") == 0 and stat("sink", "spool_lines") == 0, "drained", 60, gw)
        assert gw.stop() == 0, gw.logs()
        assert stat("files", "bad_records") == 0 and stat("files", "consumed") == 0  # this run read no file
        (dead,) = influx_query(influx.url, "results", "SELECT * FROM dead_letter", epoch="ms")
        assert (dead["reason"], dead["topic"], dead["index"]) == ("bad_result", "late/part-bb-0-0",
                                                                  len(records["late"]) + 1)  # fmt: skip
        assert dead["payload"] == '{"v":1,"window":"t10m"}' and "KeyError" in dead["detail"]
        got = _stored(influx.url, "results")
        for m in MEASUREMENTS:
            for k in want[m]:
                assert got[m].get(k) == want[m][k], (m, k)
            assert got[m] == want[m], m
        print({m: len(v) for m, v in got.items()})
    finally:
        influx.stop()


@pytest.mark.integration
@pytest.mark.slow
def test_sink_only_publishes_the_jobs_alerts_as_the_gateway_does_through_a_broker_outage(
    tmp_path: Path, influxdb_v1: services.Proc
) -> None:
    """``publish``: each alert record, and each result of a window with ``publish``, goes out on MQTT with the
    topic and payload the gateway itself publishes for it. While the broker is away they wait in the outbox, which
    the checkpoint keeps: a SIGKILL after their file was consumed loses none of them. ``/metrics``, ``/healthz``
    and the ``gateway_health`` points say so."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    prefix = f"a{uuid.uuid4().hex[:6]}"
    records, _, every = _results(prefix)
    published = [(t, p) for t, p in every if "/alerts/" in t]
    windows = [(t, _no_emitted(p)) for t, p in every if "/windows/" in t]
    assert windows and all("/site5m" in t for t, _ in windows)  # only the window with publish = true
    alerts = records["alerts"]
    half = len(alerts) // 2
    assert half >= 1, len(alerts)
    results = tmp_path / "flink-out"
    _write(results / "alerts" / "part-cc-0-0", alerts[:half])
    _write(results / "windows" / "part-aa-0-0", records["windows"])
    broker_dir, port = tmp_path / "broker", services.free_port()
    broker = start_or_fail(lambda: services.start_mosquitto(broker_dir, port, persistence=True))

    got: list[tuple[str, bytes]] = []
    subscribed: list[int] = []
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"watch-{prefix}", clean_session=False)
    got_windows: list[tuple[str, bytes]] = []
    redelivered: list[tuple[str, bytes]] = []  # copies the broker sent the watcher again (DUP: its PUBACK unseen)

    def on_message(c: Any, u: Any, m: Any) -> None:
        if m.dup:
            redelivered.append((m.topic, m.payload))
        else:
            (got_windows if "/windows/" in m.topic else got).append((m.topic, m.payload))

    sub.on_message = on_message
    sub.on_subscribe = lambda *a: subscribed.append(1)
    sub.on_connect = lambda c, u, f, rc, p=None: c.subscribe(f"{prefix}/_gateway/#", qos=1)
    sub.reconnect_delay_set(0.2, 1.0)
    sub.connect("127.0.0.1", port)
    sub.loop_start()
    gw: GatewayProcess | None = None
    metrics_port = services.free_port()
    metrics_url = f"http://127.0.0.1:{metrics_port}"
    try:
        wait_until(lambda: bool(subscribed), "watcher subscribed", 15)
        sections: dict[str, dict[str, object]] = {
            "mqtt": {"prefix": prefix, "client_id": f"sink-{prefix}", "url": f"mqtt://127.0.0.1:{port}",
                     "reconnect_min_s": 0.2, "reconnect_max_s": 1.0},
            "influx": {"target": "v1", "url": influxdb_v1.url, "database": f"alerts_{prefix}"},
            "state": {"dir": str(tmp_path / "state"), "checkpoint_interval_s": 0.3},
            "sink_only": {"dir": str(results), "poll_interval_s": 0.2, "publish": True},
            "metrics": {"port": metrics_port},
        }  # fmt: skip
        pattern = '[[patterns]]\nname = "warm_then_dry"\nwithin = "10m"\nseverity = "warning"\n'
        pattern += '[[patterns.steps]]\nname = "warm"\nwhere = "temp_c > 20.5"\n'
        pattern += '[[patterns.steps]]\nname = "dry"\nwhere = "rh < 40"\n'
        pattern += '[[windows]]\nname = "site5m"\nkind = "tumbling"\nsize = "5m"\nmetrics = ["temp_c"]\n'
        pattern += 'aggregates = ["count", "mean"]\nkey = "site"\npublish = true\n'  # the job's: publish = true
        gw = GatewayProcess(write_config(tmp_path / "gateway.toml", sections, extra=pattern), tmp_path)
        gw.start()

        def stat(*path: str) -> Any:
            node: Any = gw.stats() if gw is not None else {}
            for p in path:
                node = node.get(p, {}) if isinstance(node, dict) else {}
            return node

        wait_until(lambda: len(got) >= half and len(got_windows) >= len(windows), "the first files on MQTT", 30, gw)
        assert got == published[:half]  # the gateway's own topic and payload, in order
        assert [(t, _no_emitted(p)) for t, p in got_windows] == windows  # emitted_ms: the sink's own clock
        m = scrape(f"{metrics_url}/metrics")
        assert m["edgekit_alerts_total"] == half and m["edgekit_window_results_total"] == len(records["windows"])
        assert m["edgekit_mqtt_connected"] == 1 and m["edgekit_sink_only_files_total"] == 2
        assert json.loads(urllib.request.urlopen(f"{metrics_url}/healthz", timeout=5).read())["status"] == "ok"

        broker.stop()  # the outage: the subscriber's session is saved with the broker's persistence
        wait_until(lambda: stat("mqtt", "connected") is False, "the sink saw the outage", 30, gw)
        _write(results / "alerts" / "part-cc-0-1", alerts[half:])
        wait_until(lambda: stat("files", "consumed") == 3 and stat("mqtt", "outbox") == len(alerts) - half,
                   "the second file's alerts waiting", 30, gw)  # fmt: skip
        health = json.loads(urllib.request.urlopen(f"{metrics_url}/healthz", timeout=5).read())
        assert health["status"] == "degraded" and health["mqtt_connected"] is False
        assert scrape(f"{metrics_url}/metrics")['edgekit_queue_depth{queue="outbox"}'] == len(alerts) - half
        ckpts = stat("state", "checkpoints")
        wait_until(lambda: stat("state", "checkpoints") > ckpts, "a checkpoint with them", 30, gw)
        gw.kill()
        gw.start()  # the broker is still away: the alerts come back from the checkpoint, the files are not read
        wait_until(lambda: stat("files", "recovered") == 3, "restarted", 30, gw)
        assert stat("files", "consumed") == 0 and stat("mqtt", "outbox") == len(alerts) - half

        broker = start_or_fail(lambda: services.start_mosquitto(broker_dir, port, persistence=True))
        wait_until(lambda: len(got) >= len(alerts), "every alert on MQTT", 60, gw)
        wait_until(lambda: stat("mqtt", "outbox") == 0, "outbox empty", 30, gw)
        assert gw.stop() == 0, gw.logs()
        assert sorted(set(got)) == sorted(set(published))  # every alert, as the gateway publishes it
        # the watcher's PUBACKs for the first half may not have reached the broker before it stopped: those copies
        # come again with DUP set (at least once between the broker and the watcher); the sink publishes each once
        assert len(got) == len(published), ("an alert published twice (no file was read twice here)", len(redelivered))
        assert set(redelivered) <= set(published[:half]), redelivered
        assert len(got_windows) == len(windows)
        rows = influx_query(influxdb_v1.url, f"alerts_{prefix}", "SELECT count(reading_ids) FROM alert")
        assert rows and rows[0]["count"] == len(alerts)  # and each once in InfluxDB
        health_rows = influx_query(influxdb_v1.url, f"alerts_{prefix}", "SELECT * FROM gateway_health")
        assert {r["gateway"] for r in health_rows} == {f"sink-{prefix}"}
        last = health_rows[-1]  # written at the clean stop
        assert last["mqtt_connected"] is True and last["outbox"] == 0 and last["points_written"] > 0
    finally:
        sub.loop_stop()
        sub.disconnect()
        if gw is not None:
            gw.kill()
        broker.stop()
