"""Outage tests: InfluxDB stopped mid-run and started again; Mosquitto restarted mid-run.

The gateway runs as a subprocess with its metrics endpoint; during the InfluxDB outage the spool must be
visible in ``/metrics``. Afterwards every reading is in InfluxDB exactly once.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
import services
from harness import GatewayProcess, scrape, wait_until, write_config
from helpers import influx_query, start_or_fail
from services import Proc

from sim.fleet import FleetSpec, Plan, generate
from sim.publish import BrokerConfig, publish

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def plan_for(prefix: str, devices: int = 20, readings: int = 300) -> Plan:
    return generate(
        FleetSpec(devices=devices, readings_per_device=readings, batch_size=20, duplicate_rate=0.05, seed=3,
                  prefix=prefix, metrics=("temp_c", "rh"))
    )  # fmt: skip


def start_gateway(tmp_path: Path, broker: Proc, influx_url: str, db: str, prefix: str) -> tuple[GatewayProcess, str]:
    metrics_port = services.free_port()
    sections: dict[str, dict[str, object]] = {
        "mqtt": {"url": f"mqtt://{broker.host}:{broker.port}", "prefix": prefix, "client_id": f"gw-{prefix}",
                 "reconnect_max_s": 2.0},
        "influx": {"target": "v1", "url": influx_url, "database": db, "batch_size": 500, "timeout_s": 2.0,
                   "retry_max_s": 1.0},
        "state": {"dir": str(tmp_path / "state"), "checkpoint_interval_s": 1.0},
        "metrics": {"port": metrics_port},
    }  # fmt: skip
    gw = GatewayProcess(write_config(tmp_path / "gateway.toml", sections), tmp_path)
    gw.start()
    wait_until(lambda: gw.stats().get("mqtt", {}).get("connected"), "gateway connected", 30, gw)
    return gw, f"http://127.0.0.1:{metrics_port}/metrics"


def check_readings(url: str, db: str, plan: Plan) -> None:
    rows = influx_query(url, db, "SELECT * FROM reading", epoch="ms")
    got = {(r["device"], r["boot"], r["seq"]): r["time"] for r in rows}
    assert len(rows) == len(got) == len(plan.readings)
    assert got == {(r.device, r.boot, r.seq): r.t_ms for r in plan.readings}


def finished(gw: GatewayProcess, plan: Plan) -> bool:
    s = gw.stats()
    return bool(s) and s["pipeline"]["readings_accepted"] == len(plan.readings) and s["sink"]["pending"] == 0


async def test_influxdb_outage_spools_then_drains(broker: Proc, tmp_path: Path) -> None:
    http_port, rpc_port = services.free_ports(2)
    influx_dir = tmp_path / "influx"
    influx = start_or_fail(lambda: services.start_influxdb(influx_dir, http_port, rpc_port))
    try:
        prefix = f"o{uuid.uuid4().hex[:6]}"
        plan = plan_for(prefix)
        gw, metrics_url = start_gateway(tmp_path, broker, influx.url, "outage", prefix)
        half = len(plan.messages) // 2
        cfg = BrokerConfig(broker.host, broker.port)
        await publish(plan.messages[:half], cfg, client_id=f"sim-{prefix}")
        wait_until(lambda: gw.stats().get("sink", {}).get("points_written", 0) > 0, "first writes", 30, gw)
        influx.stop()
        await publish(plan.messages[half:], cfg, client_id=f"sim-{prefix}", rate=200)
        wait_until(lambda: scrape(metrics_url).get("edgekit_spool_lines", 0) > 0, "spool in metrics", 30, gw)
        during = scrape(metrics_url)
        assert during["edgekit_influx_up"] == 0
        assert during["edgekit_spool_bytes"] > 0
        print(f"spool during the outage: {during['edgekit_spool_lines']:.0f} lines")
        influx = start_or_fail(lambda: services.start_influxdb(influx_dir, http_port, rpc_port))
        wait_until(lambda: finished(gw, plan), "backlog drained", 120, gw)
        # /metrics is read a moment after the stats file: a point the gateway made meanwhile (a window result,
        # its own statistics) may sit in the spool for a checkpoint's length, so wait for the gauge to settle
        wait_until(lambda: scrape(metrics_url).get("edgekit_spool_lines") == 0, "spool empty in metrics", 30, gw)
        after = scrape(metrics_url)
        assert after["edgekit_spool_lines"] == 0 and after["edgekit_influx_up"] == 1
        assert gw.stop() == 0
        check_readings(influx.url, "outage", plan)
    finally:
        influx.stop()


async def test_mosquitto_restart_loses_nothing(broker: Proc, influxdb_v1: Proc, influx_db: str, tmp_path: Path) -> None:
    prefix = f"m{uuid.uuid4().hex[:6]}"
    plan = plan_for(prefix)
    gw, metrics_url = start_gateway(tmp_path, broker, influxdb_v1.url, influx_db, prefix)
    cfg = BrokerConfig(broker.host, broker.port)
    third = len(plan.messages) // 3
    await publish(plan.messages[:third], cfg, client_id=f"sim-{prefix}")
    # the gateway is down or reconnecting while these arrive: the broker keeps them for its session
    broker_dir, port = broker.dir.parent, broker.port
    broker.stop()
    wait_until(lambda: scrape(metrics_url).get("edgekit_mqtt_connected") == 0, "gateway saw the outage", 30, gw)
    restarted = start_or_fail(
        lambda: services.start_mosquitto(
            broker_dir, port, persistence=True, extra_conf=("max_queued_messages 1000000", "max_queued_bytes 0")
        )
    )
    try:
        await publish(plan.messages[third:], cfg, client_id=f"sim-{prefix}")
        wait_until(lambda: finished(gw, plan), "all readings written", 120, gw)
        assert gw.stats()["mqtt"]["connects"] >= 2
        assert gw.stop() == 0
        check_readings(influxdb_v1.url, influx_db, plan)
    finally:
        restarted.stop()
        await asyncio.sleep(0)
