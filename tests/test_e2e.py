"""The walking skeleton end to end: a simulated fleet -> real Mosquitto -> the gateway -> a real InfluxDB.

Once for each target: ``v1`` on InfluxDB 1.6 read back with InfluxQL, ``v2`` (influxdb-client) on
VictoriaMetrics' ``/api/v2/write`` read back with ``/api/v1/export``. Every valid reading must be found
exactly once with its event time and values; every malformed message and rejected reading must be in
the dead-letter output with its reason.
"""

from __future__ import annotations

import math
import uuid
from collections import Counter

import pytest
from helpers import influx_query, poll, running_gateway, vm_export, wait_for
from services import Proc

from gateway.app import Gateway
from gateway.config import Config, parse_config
from sim.fleet import FleetSpec, Plan, generate
from sim.publish import BrokerConfig, publish

pytestmark = pytest.mark.integration

METRICS = ("temp_c", "rh", "vib")


def fleet(site: str, prefix: str) -> Plan:
    spec = FleetSpec(
        devices=20,
        readings_per_device=50,
        batch_size=10,
        sites=(site,),
        metrics=METRICS,
        duplicate_rate=0.2,
        malformed=14,
        nan_readings=4,
        old_readings=3,
        seed=7,
        prefix=prefix,
    )
    return generate(spec)


async def run_through_gateway(cfg: Config, plan: Plan, broker: Proc) -> Gateway:
    async with running_gateway(cfg) as gw:
        result = await publish(
            plan.messages, BrokerConfig(broker.host, broker.port), client_id=f"sim-{uuid.uuid4().hex[:8]}"
        )
        assert result.messages == len(plan.messages)
        await wait_for(lambda: gw.pipeline.stats.messages >= len(plan.messages), "gateway received every message")
    return gw


def check_gateway_counts(gw: Gateway, plan: Plan) -> None:
    counts = plan.counts()
    s = gw.pipeline.stats
    assert s.messages == counts.messages
    assert s.readings_accepted == counts.readings
    assert s.duplicates == counts.duplicate_readings
    assert s.dead_letters == counts.dead_letters
    assert dict(s.dead_by_reason) == counts.dead_letters_by_reason
    assert gw.sink.stats.points_refused == 0
    assert gw.sink.pending == 0


def expected_dead_letters(plan: Plan) -> Counter[tuple[str, str]]:
    """(reason, device) of every dead-letter record; a duplicated batch dead-letters its bad readings again."""
    want: Counter[tuple[str, str]] = Counter()
    for msg in plan.messages:
        if msg.expect_reason is not None:
            want[(msg.expect_reason, msg.device)] += 1
        for reason in msg.rejects:
            want[(reason, msg.device)] += 1
    return want


def short_id() -> str:
    return uuid.uuid4().hex[:8]


async def test_fleet_to_influxdb_v1(mosquitto: Proc, influxdb_v1: Proc, influx_db: str) -> None:
    prefix, site = f"t{short_id()}", f"site-{short_id()}"
    plan = fleet(site, prefix)
    assert len(plan.readings) > 900 and plan.malformed and plan.rejected
    cfg = parse_config(
        {
            "mqtt": {"url": f"mqtt://{mosquitto.host}:{mosquitto.port}", "prefix": prefix,
                     "client_id": f"gw-{short_id()}", "clean_session": True},
            "influx": {"target": "v1", "url": influxdb_v1.url, "database": influx_db, "batch_size": 200},
        },
        env={},
    )  # fmt: skip
    gw = await run_through_gateway(cfg, plan, mosquitto)
    check_gateway_counts(gw, plan)

    rows = influx_query(influxdb_v1.url, influx_db, "SELECT * FROM reading", epoch="ms")
    got = {(r["device"], r["boot"], r["seq"]): r for r in rows}
    assert len(rows) == len(got) == len(plan.readings)  # exactly once
    for want in plan.readings:
        row = got[(want.device, want.boot, want.seq)]
        assert row["time"] == want.t_ms
        assert row["site"] == want.site and row["q"] == want.quality
        assert {m: row[m] for m in want.metrics} == dict(want.metrics)

    dead = influx_query(influxdb_v1.url, influx_db, "SELECT * FROM dead_letter")
    assert Counter((r["reason"], r["device"]) for r in dead) == expected_dead_letters(plan)
    assert all(r["detail"] and r["topic"].startswith(prefix + "/") for r in dead)
    status = influx_query(influxdb_v1.url, influx_db, "SELECT * FROM device_status")
    assert sorted(r["device"] for r in status) == sorted(d.device for d in plan.devices)


async def test_fleet_to_influxdb_v2_api(mosquitto: Proc, victoria_metrics: Proc) -> None:
    prefix, site = f"t{short_id()}", f"site-{short_id()}"
    plan = fleet(site, prefix)
    cfg = parse_config(
        {
            "mqtt": {"url": f"mqtt://{mosquitto.host}:{mosquitto.port}", "prefix": prefix,
                     "client_id": f"gw-{short_id()}", "clean_session": True},
            "influx": {"target": "v2", "url": victoria_metrics.url, "bucket": "edgekit", "org": "edgekit",
                       "batch_size": 200},
        },
        env={"EDGEKIT_INFLUX_TOKEN": "unused-by-victoria-metrics"},
    )  # fmt: skip
    gw = await run_through_gateway(cfg, plan, mosquitto)
    check_gateway_counts(gw, plan)

    def export() -> dict[tuple[str, str], dict[int, float]]:
        series: dict[tuple[str, str], dict[int, float]] = {}
        for s in vm_export(victoria_metrics.url, f'{{__name__=~"reading_.*",site="{site}"}}'):
            name, device = s["metric"]["__name__"], s["metric"]["device"]
            points = series.setdefault((name, device), {})
            for ts, value in zip(s["timestamps"], s["values"], strict=True):
                assert ts not in points, f"{name} {device} has two points at {ts}"
                points[ts] = value
        return series

    want_points = len(plan.readings) * (len(METRICS) + 3)  # metrics plus boot, seq and q (a string: stored as 0)

    series = poll(export, until=lambda s: sum(map(len, s.values())) >= want_points, timeout=30)
    assert sum(map(len, series.values())) == want_points
    for want in plan.readings:
        assert series[("reading_boot", want.device)][want.t_ms] == want.boot
        assert series[("reading_seq", want.device)][want.t_ms] == want.seq
        for metric, value in want.metrics.items():
            assert isinstance(value, float)
            assert math.isclose(series[(f"reading_{metric}", want.device)][want.t_ms], value, rel_tol=1e-12)

    want_dead = expected_dead_letters(plan)

    def dead_export() -> Counter[tuple[str, str]]:
        got: Counter[tuple[str, str]] = Counter()
        for s in vm_export(victoria_metrics.url, f'{{__name__="dead_letter_size",site="{site}"}}'):
            got[(s["metric"]["reason"], s["metric"]["device"])] += len(s["values"])
        return got

    got_dead = poll(dead_export, until=lambda g: g == want_dead, timeout=30)
    assert got_dead == want_dead
