"""Early results end to end: Mosquitto -> gateway -> InfluxDB 1.x and the window's MQTT output.

A tumbling minute with ``early_every = "1s"`` (``provisional = "audit"``, ``publish = true``): one reading
shows up as a provisional point in ``window`` within 2 s of gateway time; a later reading moves the watermark
past the window's end, and the final value overwrites the provisional point (the same series and timestamp),
while ``window_provisional`` keeps the provisional one and MQTT carries both results in order.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import aiomqtt
import pytest
from helpers import influx_query, running_gateway, wait_for
from services import Proc

from gateway.config import parse_config
from sim.publish import BrokerConfig, publish
from sim.wire import Outgoing

pytestmark = pytest.mark.integration

SITE = "site-e2e"
WINDOW = {
    "name": "early",
    "kind": "tumbling",
    "size": "60s",
    "metrics": ["temp_c"],
    "aggregates": ["count", "mean"],
    "early_every": "1s",
    "provisional": "audit",
    "publish": True,
}


def message(prefix: str, seq: int, t: int, value: float) -> Outgoing:
    doc = {"v": 1, "dev": "d1", "r": [{"b": 1, "s": seq, "t": t, "q": "s", "m": {"temp_c": value}}]}
    return Outgoing(f"{prefix}/{SITE}/d1/readings", json.dumps(doc).encode(), "batch")


async def test_provisional_point_then_final_at_the_same_series_and_time(
    mosquitto: Proc, influxdb_v1: Proc, influx_db: str
) -> None:
    t0 = (time.time_ns() // 1_000_000 - 3_600_000) // 60_000 * 60_000
    prefix = f"e{uuid.uuid4().hex[:8]}"
    cfg = parse_config(
        {
            "mqtt": {"url": f"mqtt://{mosquitto.host}:{mosquitto.port}", "prefix": prefix,
                     "client_id": f"gw-{prefix}", "clean_session": True},
            "influx": {"target": "v1", "url": influxdb_v1.url, "database": influx_db, "flush_interval_ms": 100},
            "windows": [WINDOW],
        },
        env={},
    )  # fmt: skip
    broker = BrokerConfig(mosquitto.host, mosquitto.port)
    query = f"SELECT * FROM {{}} WHERE \"window\" = 'early' AND time = {t0}ms"
    received: list[dict[str, Any]] = []

    def points(measurement: str) -> list[dict[str, Any]]:
        return influx_query(influxdb_v1.url, influx_db, query.format(measurement), epoch="ms")

    async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier=f"sub-{prefix}") as sub:
        await sub.subscribe(f"{prefix}/_gateway/windows/#", qos=1)
        async with running_gateway(cfg) as gw, asyncio.timeout(60):
            sent_ms = gw.now_ms()  # gateway time when the reading is sent
            await publish([message(prefix, 0, t0 + 1_000, 20.0)], broker, client_id=f"pub1-{prefix}")
            await wait_for(lambda: bool(points("window")), "a provisional point in window", 20)
            (prov,) = points("window")
            assert (prov["result"], prov["revision"], prov["fired"], prov["count"]) == ("provisional", 0, "early", 1)
            assert prov["mean"] == 20.0 and prov["end_ms"] == t0 + 60_000
            assert 0 <= prov["emitted_ms"] - sent_ms <= 2_000, prov["emitted_ms"] - sent_ms

            # a second reading of the window, then one past its end + the bound: the watermark closes it
            await publish([message(prefix, 1, t0 + 2_000, 30.0)], broker, client_id=f"pub2-{prefix}")
            await wait_for(lambda: points("window")[0]["count"] == 2, "the second provisional result", 20)
            await publish([message(prefix, 2, t0 + 70_000, 99.0)], broker, client_id=f"pub3-{prefix}")
            await wait_for(lambda: points("window")[0]["result"] == "final", "the final result", 20)
            async for msg in sub.messages:
                doc = json.loads(bytes(msg.payload))  # type: ignore[arg-type]
                assert str(msg.topic) == f"{prefix}/_gateway/windows/{SITE}/early"
                if doc["start_ms"] == t0:
                    received.append(doc)
                if doc["result"] == "final":
                    break
    assert gw.sink.stats.points_refused == 0

    (final,) = points("window")  # the same series and timestamp: the final result overwrote the provisional one
    assert (final["result"], final["revision"], final["fired"], final["count"]) == ("final", 1, "watermark", 2)
    assert final["mean"] == 25.0 and final["device"] == "d1" and final["emitted_ms"] >= prov["emitted_ms"]

    # each provisional result kept in window_provisional, at t0 + its number in nanoseconds
    audit = influx_query(
        influxdb_v1.url, influx_db, "SELECT * FROM window_provisional WHERE \"window\" = 'early'", epoch="ns"
    )
    assert [(p["time"] - t0 * 1_000_000, p["count"], p["result"]) for p in audit] == [
        (1, 1, "provisional"),
        (2, 2, "provisional"),
    ]
    kinds = [(d["result"], d["count"], d["aggregates"]["mean"]) for d in received]
    assert kinds == [("provisional", 1, 20.0), ("provisional", 2, 25.0), ("final", 2, 25.0)]
    assert all(d["device"] == "d1" and d["site"] == SITE and d["v"] == 1 for d in received)
