"""CEP end to end: scripted readings through Mosquitto -> gateway (the example patterns) -> InfluxDB 1.x and
MQTT alerts. Exactly the expected alerts arrive on ``<prefix>/_gateway/alerts/#`` and in the ``alert``
measurement; a replay of the same readings into a gateway started afresh raises the same alert ids, so
InfluxDB still holds exactly those points, and a duplicate message into the running gateway raises none.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from cep_helpers import Row, arrival_order
from helpers import influx_query, running_gateway, wait_for
from services import Proc
from test_cep_examples import CASES, EXAMPLE

from gateway.alerts import alert_id
from gateway.app import Gateway
from gateway.config import load_config, parse_config
from sim.publish import BrokerConfig, publish
from sim.wire import Outgoing

pytestmark = pytest.mark.integration

SITE = "site-e2e"


def shifted(t0: int) -> list[Row]:
    """The example scripts (made for T0) moved to ``t0``, one device per pattern."""
    from cep_helpers import T0

    return [(d, seq, t - T0 + t0, m) for rows, _ in CASES.values() for d, seq, t, m in rows]


def messages(prefix: str, rows: list[Row], end: int) -> list[Outgoing]:
    out: list[Outgoing] = []
    order = arrival_order(rows, random.Random(11))  # disorder inside the 5 s bound
    rng = random.Random(5)
    i = 0
    while i < len(order):
        device = order[i][0]
        chunk: list[Row] = []
        size = rng.randint(1, 3)
        while i < len(order) and len(chunk) < size and order[i][0] == device:
            chunk.append(order[i])
            i += 1
        doc = {"v": 1, "dev": device, "r": [{"b": 1, "s": s, "t": t, "q": "s", "m": m} for _, s, t, m in chunk]}
        out.append(Outgoing(f"{prefix}/{SITE}/{device}/readings", json.dumps(doc).encode(), "batch"))
    for device in sorted({r[0] for r in rows}):  # the boards' flushed markers close every quiet period
        doc = {"v": 1, "dev": device, "r": [], "flushed": end}
        out.append(Outgoing(f"{prefix}/{SITE}/{device}/readings", json.dumps(doc).encode(), "batch"))
    return out


async def run_gateway(
    cfg: Any, mosquitto: Proc, msgs: list[Outgoing], sub_id: str, want: int
) -> tuple[Gateway, list[Any]]:
    received: list[tuple[str, dict[str, Any]]] = []
    async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier=sub_id) as sub:
        await sub.subscribe(f"{cfg.mqtt.prefix}/_gateway/alerts/#", qos=1)
        async with running_gateway(cfg) as gw, asyncio.timeout(30):
            await publish(msgs, BrokerConfig(mosquitto.host, mosquitto.port), client_id=f"{sub_id}-pub")
            await wait_for(lambda: gw.pipeline.stats.messages >= len(msgs), "the gateway to take every message")
            async for msg in sub.messages:
                received.append((str(msg.topic), json.loads(bytes(msg.payload))))  # type: ignore[arg-type]
                if len(received) == want:
                    break
    return gw, received


async def test_pattern_alerts_on_mqtt_and_in_influxdb(
    mosquitto: Proc, influxdb_v1: Proc, influx_db: str, tmp_path: Path
) -> None:
    t0 = (time.time_ns() // 1_000_000 - 3_600_000) // 1_000 * 1_000
    prefix = f"c{uuid.uuid4().hex[:8]}"
    base = load_config(EXAMPLE, env={})
    cfg = parse_config(
        {
            **base.raw,
            "mqtt": {"url": f"mqtt://{mosquitto.host}:{mosquitto.port}", "prefix": prefix,
                     "client_id": f"gw-{prefix}", "clean_session": True},
            "influx": {"target": "v1", "url": influxdb_v1.url, "database": influx_db, "batch_size": 50},
            "state": {"dir": str(tmp_path / "first")},
        },
        env={},
    )  # fmt: skip
    rows = shifted(t0)
    msgs = messages(prefix, rows, t0 + 1_800_000)
    want = {
        alert_id("pattern", name, readings[0][0], readings): (name, readings[0][0], readings)
        for name, (_, matches) in CASES.items()
        for readings in matches
    }
    assert len(want) == 8

    gw, received = await run_gateway(cfg, mosquitto, msgs + msgs[:3], f"sub-{prefix}", len(want))
    assert gw.pipeline.stats.duplicates > 0  # the repeated messages were seen, and raised nothing
    assert gw.pipeline.stats.alerts == len(want) and gw.outbox.sent == len(want)
    assert gw.sink.stats.points_refused == 0
    got = {doc["id"]: (doc["name"], doc["key"], tuple(tuple(r) for r in doc["readings"])) for _, doc in received}
    assert got == want
    for topic, doc in received:
        assert topic == f"{prefix}/_gateway/alerts/{SITE}/pattern"
        assert doc["source"] == "pattern" and doc["site"] == SITE and doc["v"] == 1
        readings = [r for r in rows if (r[0], 1, r[1]) in {tuple(x) for x in doc["readings"]}]
        assert (doc["first_ms"], doc["last_ms"]) == (min(r[2] for r in readings), max(r[2] for r in readings))
    door = next(doc for _, doc in received if doc["name"] == "door_left_open")
    assert door["severity"] == "warning" and door["details"] == {"closed_before.door": "closed", "opened.door": "open"}

    def stored() -> dict[str, tuple[str, str, int]]:
        rows_ = influx_query(influxdb_v1.url, influx_db, "SELECT * FROM alert", epoch="ms")
        return {r["id"]: (r["name"], r["key"], r["readings"]) for r in rows_}

    first = stored()
    assert first == {i: (n, k, len(r)) for i, (n, k, r) in want.items()}

    # a replay of the same readings into a gateway that remembers nothing (a fresh state directory): the same
    # ids, the same points
    fresh = parse_config({**cfg.raw, "state": {"dir": str(tmp_path / "second")}}, env={})
    gw2, again = await run_gateway(fresh, mosquitto, msgs, f"sub2-{prefix}", len(want))
    assert {doc["id"] for _, doc in again} == set(want)
    assert gw2.pipeline.stats.alerts == len(want)
    assert stored() == first
    count = influx_query(influxdb_v1.url, influx_db, "SELECT count(id) FROM alert")
    assert count[0]["count"] == len(want)
