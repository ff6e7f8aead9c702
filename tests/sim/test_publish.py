"""The simulator's I/O layer: broker URLs and pacing by hand, then publishing to a real Mosquitto."""

from __future__ import annotations

import asyncio
import gc
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from sim.errors import PublishError, SpecError
from sim.fleet import FleetSpec, Plan, generate
from sim.publish import BrokerConfig, Pacer, parse_broker_url, publish

NOW = 1_764_072_000_000


# ------------------------------------------------------------------------------------------ broker URLs


@pytest.mark.parametrize(
    ("url", "env", "want"),
    [
        ("mqtt://127.0.0.1:1883", {}, BrokerConfig("127.0.0.1", 1883)),
        ("mqtt://broker.lan", {}, BrokerConfig("broker.lan", 1883)),
        ("mqtts://broker.lan", {}, BrokerConfig("broker.lan", 8883, tls=True)),
        ("mqtt://sim:s3cr%40t@h:1999", {}, BrokerConfig("h", 1999, "sim", "s3cr@t")),
        ("mqtt://sim@h", {"EDGEKIT_MQTT_PASSWORD": "from-env"}, BrokerConfig("h", 1883, "sim", "from-env")),
        ("mqtt://sim:url@h", {"EDGEKIT_MQTT_PASSWORD": "from-env"}, BrokerConfig("h", 1883, "sim", "url")),
        ("mqtt://h", {"EDGEKIT_MQTT_PASSWORD": "unused"}, BrokerConfig("h", 1883)),
    ],
)
def test_broker_urls(url: str, env: dict[str, str], want: BrokerConfig) -> None:
    got = parse_broker_url(url, env)
    assert got == want
    assert got.password == want.password  # excluded from repr, not from equality: check it anyway
    assert "s3cr" not in repr(got) and "s3cr" not in got.describe()


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://h:1883", "mqtt://"),
        ("127.0.0.1:1883", "mqtt://"),
        ("mqtt://:1883", "no host"),
        ("mqtt://h:99999", "bad port"),
        ("mqtt://h:port", "bad port"),
        ("mqtt://:pw@h", "no user"),
        ("mqtt://h/topic", r"mqtt://\[user"),
    ],
)
def test_bad_broker_urls_are_refused(url: str, words: str) -> None:
    with pytest.raises(SpecError, match=words):
        parse_broker_url(url)


# ------------------------------------------------------------------------------------------ pacing


class FakeTime:
    """A monotonic clock that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


async def test_pacer_spaces_events_by_the_rate_on_an_absolute_schedule() -> None:
    t = FakeTime()
    pacer = Pacer(4.0, t.clock, t.sleep)
    due = []
    for i in range(5):
        if i == 2:
            t.now += 0.6  # a slow publish: the next ones catch up instead of drifting
        await pacer.wait()
        due.append(round(t.now - 100.0, 6))
    assert due == [0.0, 0.25, 0.85, 0.85, 1.0]
    assert pacer.count == 5


async def test_pacer_at_rate_zero_never_sleeps() -> None:
    t = FakeTime()
    pacer = Pacer(0.0, t.clock, t.sleep)
    for _ in range(100):
        await pacer.wait()
    assert t.sleeps == [] and pacer.count == 100


# ------------------------------------------------------------------------------------------ failures


async def test_an_unreachable_broker_is_a_publish_error_naming_it(refused_port: int) -> None:
    port = refused_port
    plan = generate(FleetSpec(devices=1, readings_per_device=2), lambda: NOW)
    with pytest.raises(PublishError, match=f"mqtt://127.0.0.1:{port}"):
        await publish(plan.messages, BrokerConfig("127.0.0.1", port), timeout_s=5)


# ------------------------------------------------------------------------------------------ a real broker


def payload_bytes(payload: Any) -> bytes:
    assert isinstance(payload, bytes | bytearray), type(payload)
    return bytes(payload)


async def receive(client: aiomqtt.Client, count: int, within_s: float = 20.0) -> list[aiomqtt.Message]:
    got: list[aiomqtt.Message] = []
    if count == 0:
        return got
    async with asyncio.timeout(within_s):
        async for message in client.messages:
            got.append(message)
            if len(got) == count:
                break
    return got


async def clear_retained(host: str, port: int, plan: Plan) -> None:
    async with aiomqtt.Client(host, port, identifier=f"sim-clean-{uuid.uuid4().hex[:8]}") as client:
        for m in plan.messages:
            if m.retain:
                await client.publish(m.topic, b"", qos=1, retain=True)


@pytest.mark.integration
async def test_every_message_arrives_intact_in_order_and_statuses_are_retained(mosquitto: Any) -> None:
    prefix = f"simtest{uuid.uuid4().hex[:8]}"
    spec = FleetSpec(
        devices=4, readings_per_device=12, batch_size=5, duplicate_rate=0.4, malformed=10, nan_readings=2, seed=9,
        prefix=prefix,
    )  # fmt: skip
    plan = generate(spec, lambda: NOW)
    broker = BrokerConfig(mosquitto.host, mosquitto.port)
    async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier=f"sim-sub-{prefix}") as sub:
        await sub.subscribe(f"{prefix}/#", qos=1)
        sending = asyncio.create_task(publish(plan.messages, broker, client_id=f"sim-{prefix}", max_in_flight=8))
        got = await receive(sub, len(plan.messages))
        result = await sending
        # nothing more than the plan arrives
        with pytest.raises(TimeoutError):
            await receive(sub, 1, within_s=0.3)
    try:
        sent_by_topic: dict[str, list[bytes]] = defaultdict(list)
        got_by_topic: dict[str, list[bytes]] = defaultdict(list)
        for m in plan.messages:
            sent_by_topic[m.topic].append(m.payload)
        for message in got:
            got_by_topic[message.topic.value].append(payload_bytes(message.payload))
            assert message.qos == 1
        assert got_by_topic == sent_by_topic  # same payloads, byte for byte, in order per topic
        counts = plan.counts()
        assert result.messages == len(plan.messages)
        assert (result.statuses, result.batches, result.duplicates, result.malformed) == (
            counts.statuses, counts.batches, counts.duplicates, counts.malformed,
        )  # fmt: skip
        assert result.readings == counts.readings
        assert result.duplicates > 0 and result.malformed == 10

        # a subscriber arriving later gets each device's status, retained; nothing else was retained
        async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier=f"sim-late-{prefix}") as late:
            await late.subscribe(f"{prefix}/#", qos=1)
            retained = await receive(late, spec.devices, within_s=5)
            with pytest.raises(TimeoutError):
                await receive(late, 1, within_s=0.3)
        assert all(m.retain for m in retained)
        want = {m.topic: m.payload for m in plan.messages if m.kind == "status"}
        assert {m.topic.value: payload_bytes(m.payload) for m in retained} == want
    finally:
        await clear_retained(mosquitto.host, mosquitto.port, plan)


@pytest.mark.integration
async def test_rate_paces_publishing(mosquitto: Any) -> None:
    prefix = f"simtest{uuid.uuid4().hex[:8]}"
    plan = generate(FleetSpec(devices=2, readings_per_device=10, batch_size=1, prefix=prefix), lambda: NOW)
    assert len(plan.messages) == 22
    broker = BrokerConfig(mosquitto.host, mosquitto.port)
    try:
        result = await publish(plan.messages, broker, client_id=f"sim-{prefix}", rate=100.0)
        assert result.messages == 22
        assert result.elapsed_s >= 21 / 100.0  # 22 messages, 1/100 s apart
    finally:
        await clear_retained(mosquitto.host, mosquitto.port, plan)


@pytest.mark.integration
async def test_losing_the_broker_mid_run_is_one_clean_publish_error(private_dir: Path) -> None:
    import services  # scripts/services.py, put on sys.path by tests/conftest.py

    loop = asyncio.get_running_loop()
    unhandled: list[str] = []  # e.g. "Task exception was never retrieved" for a publish left behind
    loop.set_exception_handler(lambda _loop, context: unhandled.append(str(context.get("message"))))
    proc = services.start_mosquitto(private_dir, services.free_port())
    plan = generate(FleetSpec(devices=50, readings_per_device=100, batch_size=5), lambda: NOW)
    try:
        sending = asyncio.create_task(
            publish(plan.messages, BrokerConfig(proc.host, proc.port), rate=400.0, timeout_s=3)
        )
        await asyncio.sleep(0.5)
        assert not sending.done()
        await asyncio.to_thread(proc.stop)
        with pytest.raises(PublishError, match=f"mqtt://127.0.0.1:{proc.port}"):
            await sending
    finally:
        await asyncio.to_thread(proc.stop)
    del sending  # it holds the error, whose traceback holds the frames that held the publish tasks
    gc.collect()
    await asyncio.sleep(0.05)
    loop.set_exception_handler(None)
    assert unhandled == []


async def test_a_socket_closed_before_its_write_is_registered_raises_nothing() -> None:
    """paho asks for write readiness from its own thread; the loop registers it later. When the broker is
    lost in between, the socket is closed by then: registering it anyway raised inside the event loop
    ("Exception in callback BaseSelectorEventLoop.add_writer"), seen once in the test above under load."""
    import socket

    from sim.publish import make_client

    loop = asyncio.get_running_loop()
    unhandled: list[str] = []
    loop.set_exception_handler(lambda _loop, context: unhandled.append(str(context.get("message"))))
    try:
        client = make_client(BrokerConfig("127.0.0.1", 1), "sim-closed-socket", 1.0, 4)
        a, b = socket.socketpair()
        b.close()
        paho = client._client
        paho.on_socket_register_write(paho, None, a)  # what paho calls ...
        a.close()  # ... and the connection is lost before the loop runs the registration
        await asyncio.sleep(0.05)
    finally:
        loop.set_exception_handler(None)
    assert unhandled == []
