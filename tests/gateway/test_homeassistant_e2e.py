"""Home Assistant discovery end to end: a simulated fleet -> Mosquitto -> gateway (``[homeassistant]`` on) while a
subscriber on ``homeassistant/#`` collects the discovery messages, as Home Assistant would.

Every discovery message follows the documented schema; every entity's state topic carries a retained value its
``value_template`` renders (Jinja2); each alert rule's binary sensor renders ``ON`` for an alert the gateway
published; and each board's availability reads ``online`` from its status, then ``offline`` once a board dies
without a goodbye and the broker publishes its last will.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
import pytest
from ha_schema import fleet_problems, is_number
from helpers import running_gateway, wait_for
from services import Proc
from test_homeassistant import render

from gateway.app import Gateway
from gateway.config import parse_config
from gateway.ingest import Outbox
from sim.fleet import FleetSpec, generate
from sim.publish import BrokerConfig, publish

pytestmark = pytest.mark.integration


async def retained(host: str, port: int, topics: set[str], client_id: str) -> dict[str, bytes]:
    """The retained message of each topic (a fresh subscription gets them at once)."""
    got: dict[str, bytes] = {}
    async with aiomqtt.Client(host, port, identifier=client_id) as c:
        for t in topics:
            await c.subscribe(t, qos=1)
        async with asyncio.timeout(10):
            async for msg in c.messages:
                got[str(msg.topic)] = bytes(msg.payload)  # type: ignore[arg-type]
                if set(got) >= topics:
                    break
    return got


def die_with_last_will(host: str, port: int, status_topic: str, device: str) -> None:
    """A board that vanishes: connected with its last will (docs/protocol.md), its socket then closed without
    a DISCONNECT, so the broker publishes the will."""
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"board-{device}-{uuid.uuid4().hex[:6]}")
    client.will_set(status_topic, json.dumps({"v": 1, "dev": device, "state": "offline"}), qos=1, retain=True)
    client.connect(host, port, keepalive=5)
    client.loop_start()
    deadline = time.monotonic() + 10
    while not client.is_connected():
        assert time.monotonic() < deadline, "the board did not connect"
        time.sleep(0.02)
    client.loop_stop()
    sock = client.socket()
    assert isinstance(sock, socket.socket)
    sock.shutdown(socket.SHUT_RDWR)
    sock.close()


async def test_every_discovered_entity_has_a_state_it_can_render_and_availability_follows_the_last_will(
    mosquitto: Proc, influxdb_v1: Proc, influx_db: str, tmp_path: Path
) -> None:
    prefix = f"ha{uuid.uuid4().hex[:8]}"
    plan = generate(FleetSpec(devices=3, sites=("north", "south"), readings_per_device=8, batch_size=4,
                              metrics=("temp_c", "rh"), prefix=prefix, seed=7))  # fmt: skip
    cfg = parse_config(
        {
            "mqtt": {"url": f"mqtt://{mosquitto.host}:{mosquitto.port}", "prefix": prefix,
                     "client_id": f"gw-{prefix}", "clean_session": True},
            "influx": {"target": "v1", "url": influxdb_v1.url, "database": influx_db},
            "state": {"dir": str(tmp_path)},
            "patterns": [{"name": "any_temp", "steps": [{"name": "t", "where": "temp_c > -1000"}]}],
            "homeassistant": {"enabled": True},
        },
        env={},
    )  # fmt: skip
    node = f"edgekit_{prefix}_"
    configs: dict[str, dict[str, Any]] = {}
    alerts: list[bytes] = []
    broker = (mosquitto.host, mosquitto.port)
    async with aiomqtt.Client(*broker, identifier=f"ha-{prefix}") as ha:
        await ha.subscribe("homeassistant/#", qos=1)
        await ha.subscribe(f"{prefix}/_gateway/alerts/#", qos=1)

        async def collect() -> None:
            async for msg in ha.messages:
                topic, payload = str(msg.topic), bytes(msg.payload)  # type: ignore[arg-type]
                if topic.startswith("homeassistant/") and f"/{node}" in topic and payload:
                    configs[topic] = json.loads(payload)
                elif topic.startswith(f"{prefix}/_gateway/alerts/"):
                    alerts.append(payload)

        collector = asyncio.create_task(collect())
        try:
            async with running_gateway(cfg) as gw:
                await publish(list(plan.messages), BrokerConfig(*broker), client_id=f"pub-{prefix}")
                readings = len(plan.readings)
                await wait_for(lambda: gw.pipeline.stats.alerts >= readings, "an alert for every reading")
                await wait_for(lambda: not gw.outbox.retained and not gw.outbox.queue, "the outbox to empty")
                await wait_for(lambda: len(alerts) >= readings, "the alerts on MQTT")
                assert gw.outbox.sent_retained >= len(configs) > 0
                # of what it published itself only the alerts come back as input (ignored); the states are not logged
                await wait_for(lambda: gw.pipeline.stats.ignored >= readings, "the alerts to come back")
                await asyncio.sleep(0.3)
                assert gw.pipeline.stats.ignored == readings
                assert gw.pipeline.stats.dead_letters == 0
        finally:
            collector.cancel()
    # a restart goes on from the checkpoint's device states (never a state that lacks a metric announced)
    again = Gateway(cfg)
    try:
        await again.recover()
        assert again.discovery is not None and gw.discovery is not None
        assert again.discovery.snapshot() == gw.discovery.snapshot() and again.discovery.devices
    finally:
        again.store.close()

    assert fleet_problems(configs.items(), "homeassistant") == []
    devices = {d.device for d in plan.devices}
    assert {c["device"]["name"] for c in configs.values()} == devices
    state_topics = {c["state_topic"] for c in configs.values() if "/_gateway/state/" in c["state_topic"]}
    status_topics = {a["topic"] for c in configs.values() for a in c["availability"]}
    assert len(state_topics) == len(status_topics) == len(devices)
    values = await retained(*broker, state_topics | status_topics, f"check-{prefix}")
    rendered = 0
    for topic, c in configs.items():
        for av in c["availability"]:
            assert render(av["value_template"], values[av["topic"]]) == av["payload_available"]
        if c["state_topic"] in state_topics:
            got = render(c["value_template"], values[c["state_topic"]])
            if "state_class" in c:
                assert is_number(got), (topic, got)
            elif c.get("device_class") == "enum":
                assert got in c["options"], (topic, got)
            else:
                raise AssertionError(f"{topic}: an entity this test does not expect")
            rendered += 1
        else:  # an alert rule: ON for its own alerts, nothing for the others
            outs = [render(c["value_template"], a) for a in alerts]
            mine = sum(1 for a in alerts if json.loads(a)["key"] == c["device"]["name"])
            assert outs.count("ON") == mine > 0 and outs.count("") == len(alerts) - mine, topic
    per_device = {"m_temp_c", "m_rh", "battery_mv", "buf", "buf_fill", "dropped", "clock"}
    assert rendered == len(devices) * len(per_device)

    # a board dies without a goodbye: the broker publishes its last will, and its entities become unavailable
    gone = plan.devices[0]
    status_topic = f"{prefix}/{gone.site}/{gone.device}/status"
    die_with_last_will(*broker, status_topic, gone.device)
    av = next(c["availability"][0] for c in configs.values() if c["device"]["name"] == gone.device)
    assert av["topic"] == status_topic

    async def will() -> bytes:
        while True:
            payload = (await retained(*broker, {status_topic}, f"will-{prefix}"))[status_topic]
            if b'"offline"' in payload:
                return payload
            await asyncio.sleep(0.1)

    payload = await asyncio.wait_for(will(), 15)
    assert render(av["value_template"], payload) == av["payload_not_available"]

    async with aiomqtt.Client(*broker, identifier=f"clean-{prefix}") as c:  # leave no retained messages behind
        for topic in [*configs, *state_topics, *status_topics]:
            await c.publish(topic, b"", qos=1, retain=True)


async def test_the_outbox_sends_the_latest_retained_message_per_topic_before_the_queue(mosquitto: Proc) -> None:
    prefix = f"ob{uuid.uuid4().hex[:8]}"
    broker = (mosquitto.host, mosquitto.port)
    box = Outbox()
    box.put(f"{prefix}/_gateway/alerts/s/pattern", b"alert")
    box.put_retained(f"{prefix}/a", b"a1")
    box.put_retained(f"{prefix}/b", b"b1")
    box.put_retained(f"{prefix}/a", b"a2")  # replaces a1, which was never sent
    got: list[tuple[str, bytes]] = []
    async with aiomqtt.Client(*broker, identifier=f"sub-{prefix}") as sub:
        await sub.subscribe(f"{prefix}/#", qos=1)
        async with aiomqtt.Client(*broker, identifier=f"pub-{prefix}") as pub:
            sender = asyncio.create_task(box.drain_into(pub))
            try:
                assert await box.flush(10)
            finally:
                sender.cancel()
        async with asyncio.timeout(10):
            async for msg in sub.messages:
                got.append((str(msg.topic), bytes(msg.payload)))  # type: ignore[arg-type]
                if len(got) == 3:
                    break
    # a live subscription gets them with the retain flag cleared (MQTT's rule): what the broker kept is read below
    assert got == [(f"{prefix}/a", b"a2"), (f"{prefix}/b", b"b1"),
                                           (f"{prefix}/_gateway/alerts/s/pattern", b"alert")]  # fmt: skip
    assert (box.sent_retained, box.sent, box.retained) == (2, 1, {})
    kept = await retained(*broker, {f"{prefix}/a", f"{prefix}/b"}, f"check-{prefix}")
    assert kept == {f"{prefix}/a": b"a2", f"{prefix}/b": b"b1"}
    async with aiomqtt.Client(*broker, identifier=f"clean-{prefix}") as c:
        for topic in kept:
            await c.publish(topic, b"", qos=1, retain=True)
