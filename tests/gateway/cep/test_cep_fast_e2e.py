"""Fast alerts end to end: readings through Mosquitto -> gateway (a pattern with ``on = "both"``) -> InfluxDB 1.x
and MQTT alerts. On one device the arrival alert comes at once and its event-time confirmation only once the
board's flushed marker moves the watermark past it; on another, readings out of order (inside the bound) make a
fast match that the event-time path does not find: its retraction follows. Both show in the ``alert``
measurement (``path`` tag, ``verdict`` and ``refers`` fields), the stats and ``/metrics``.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from helpers import influx_query, running_gateway, wait_for
from services import Proc

from gateway.alerts import alert_id
from gateway.config import parse_config
from sim.publish import BrokerConfig, publish
from sim.wire import Outgoing

pytestmark = pytest.mark.integration

SITE = "site-fast"
PATTERN = {
    "name": "heat_rising",
    "on": "both",
    "within": "10s",
    "severity": "critical",
    "steps": [
        {"name": "hot", "where": "temp_c > 80"},
        {"name": "hotter", "follow": "next", "where": "temp_c > hot.temp_c"},
    ],
}


def batch(prefix: str, device: str, rows: list[tuple[int, int, float]], flushed: int | None = None) -> Outgoing:
    doc: dict[str, Any] = {"v": 1, "dev": device, "r": [{"b": 1, "s": s, "t": t, "q": "s", "m": {"temp_c": v}}
                                                        for s, t, v in rows]}  # fmt: skip
    if flushed is not None:
        doc["flushed"] = flushed
    return Outgoing(f"{prefix}/{SITE}/{device}/readings", json.dumps(doc).encode(), "batch")


async def test_arrival_alert_then_confirmation_and_a_retraction(
    mosquitto: Proc, influxdb_v1: Proc, influx_db: str, tmp_path: Path
) -> None:
    t0 = (time.time_ns() // 1_000_000 - 3_600_000) // 1_000 * 1_000
    prefix = f"f{uuid.uuid4().hex[:8]}"
    cfg = parse_config(
        {
            "mqtt": {"url": f"mqtt://{mosquitto.host}:{mosquitto.port}", "prefix": prefix,
                     "client_id": f"gw-{prefix}", "clean_session": True},
            "influx": {"target": "v1", "url": influxdb_v1.url, "database": influx_db, "batch_size": 10,
                       "flush_interval_ms": 100},
            "state": {"dir": str(tmp_path / "state")},
            "engine": {"watermark": {"out_of_orderness": "5s"}},
            "patterns": [PATTERN],
        },
        env={},
    )  # fmt: skip
    broker = BrokerConfig(mosquitto.host, mosquitto.port)
    received: list[dict[str, Any]] = []

    async def next_alert() -> dict[str, Any]:
        async for msg in sub.messages:
            doc: dict[str, Any] = json.loads(bytes(msg.payload))  # type: ignore[arg-type]
            received.append(doc)
            return doc
        raise AssertionError("the subscription ended")

    async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier=f"sub-{prefix}") as sub:
        await sub.subscribe(f"{prefix}/_gateway/alerts/#", qos=1)
        async with running_gateway(cfg) as gw, asyncio.timeout(30):
            # d1, in order: 85 then 90 one second later -> the arrival alert at once
            await publish(
                [batch(prefix, "d1", [(0, t0, 85.0), (1, t0 + 1_000, 90.0)])], broker, client_id=f"p1-{prefix}"
            )
            fast1 = await next_alert()
            d1 = (("d1", 1, 0), ("d1", 1, 1))
            assert (fast1["path"], fast1.get("verdict"), fast1["key"]) == ("arrival", None, "d1")
            assert fast1["id"] == alert_id("pattern", "heat_rising", "d1", d1, "arrival")
            assert gw.pipeline.stats.alerts == 1  # the watermark (t0 + 1 s - 5 s) has not passed: nothing exact yet
            # the board's flushed marker moves the watermark past them: the event-time alert confirms it
            await publish([batch(prefix, "d1", [], flushed=t0 + 60_000)], broker, client_id=f"p2-{prefix}")
            exact1 = await next_alert()
            assert (exact1["path"], exact1["verdict"], exact1["refers"]) == ("event_time", "confirmed", fast1["id"])
            assert exact1["id"] == alert_id("pattern", "heat_rising", "d1", d1)  # the id it has without a fast path
            assert [tuple(r) for r in exact1["readings"]] == list(d1)

            # d2: 85 at t0, 70 at t0 + 1 s, 90 at t0 + 2 s; 90 arrives before 70 (inside the 5 s bound). On
            # arrival 85 -> 90 is a strict rise; in event time 70 comes between: no match, so it is retracted
            first, late = [(0, t0, 85.0), (2, t0 + 2_000, 90.0)], [(1, t0 + 1_000, 70.0)]
            await publish([batch(prefix, "d2", first), batch(prefix, "d2", late)], broker, client_id=f"p3-{prefix}")
            fast2 = await next_alert()
            assert (fast2["path"], fast2["key"], fast2["readings"]) == ("arrival", "d2", [["d2", 1, 0], ["d2", 1, 2]])
            await publish([batch(prefix, "d2", [], flushed=t0 + 60_000)], broker, client_id=f"p4-{prefix}")
            retracted = await next_alert()
            assert (retracted["path"], retracted["verdict"], retracted["refers"]) == (
                "arrival",
                "retracted",
                fast2["id"],
            )
            assert retracted["readings"] == fast2["readings"] and retracted["id"] != fast2["id"]

            stats = gw.pipeline.stats
            assert (stats.alerts, stats.fast_alerts, stats.alerts_confirmed, stats.alerts_retracted,
                    stats.alerts_missed_fast) == (4, 2, 1, 1, 0)  # fmt: skip
            metrics = gw.metrics.render().decode()
            assert "\nedgekit_fast_alerts_total 2.0\n" in metrics
            assert 'edgekit_alert_verdicts_total{verdict="retracted"} 1.0' in metrics
            assert 'edgekit_alert_verdicts_total{verdict="confirmed"} 1.0' in metrics

            def stored() -> list[dict[str, Any]]:
                return influx_query(influxdb_v1.url, influx_db, "SELECT * FROM alert GROUP BY path", epoch="ms")

            await wait_for(lambda: len(stored()) == 4, lambda: f"4 alert points, have {stored()}")

    points = {r["id"]: (r["path"], r["key"], r["verdict"], r["refers"], r["last_ms"]) for r in stored()}
    assert points == {
        fast1["id"]: ("arrival", "d1", None, None, t0 + 1_000),
        exact1["id"]: ("event_time", "d1", "confirmed", fast1["id"], t0 + 1_000),
        fast2["id"]: ("arrival", "d2", None, None, t0 + 2_000),
        retracted["id"]: ("arrival", "d2", "retracted", fast2["id"], t0 + 2_000),
    }
    assert [d["id"] for d in received] == [fast1["id"], exact1["id"], fast2["id"], retracted["id"]]
