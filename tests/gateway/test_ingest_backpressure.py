"""Backpressure on the broker: the gateway holds at most ``max_inflight`` messages received and not yet taken.

Against the real Mosquitto (2.0.11 here), which sends far more unacknowledged messages than the Receive
Maximum once acknowledgements flow: without the gateway's own backpressure (``gateway.ingest.ReadGate``) a
pipeline slower than the publishers let the received-message queue, and the gateway's memory, grow with
the backlog (docs/reliability.md, "Overload").
"""

from __future__ import annotations

import asyncio
import time
import uuid

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from services import Proc

from gateway.config import parse_config
from gateway.ingest import Incoming, IngestStats, run_durable_ingest

pytestmark = pytest.mark.integration

MESSAGES = 3000
MAX_INFLIGHT = 20


async def test_a_slow_pipeline_holds_at_most_max_inflight_received_messages(mosquitto: Proc) -> None:
    prefix = f"bp{uuid.uuid4().hex[:8]}"
    cfg = parse_config(
        {"mqtt": {"url": f"mqtt://{mosquitto.host}:{mosquitto.port}", "prefix": prefix, "client_id": prefix,
                  "max_inflight": MAX_INFLIGHT}},
        env={},
    )  # fmt: skip
    stats = IngestStats()
    stop = asyncio.Event()
    seen: list[bytes] = []
    most_queued = 0

    def accept(msgs: list[Incoming]) -> list[Incoming]:
        nonlocal most_queued
        most_queued = max(most_queued, stats.queued)
        return msgs

    async def process(msgs: list[Incoming]) -> None:
        time.sleep(0.0005 * len(msgs))  # noqa: ASYNC251 - a slow pipeline, synchronous like the real one
        seen.extend(p for _, p, _ in msgs)
        if len(seen) >= MESSAGES:
            stop.set()

    task = asyncio.create_task(run_durable_ingest(cfg.mqtt, accept, process, stats, stop, batch=10))
    async with asyncio.timeout(60):
        while not stats.connected:
            await asyncio.sleep(0.05)
        pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{prefix}-pub")
        pub.max_inflight_messages_set(1000)
        pub.connect(mosquitto.host, mosquitto.port)
        pub.loop_start()
        try:
            for i in range(MESSAGES):
                pub.publish(f"{prefix}/s/d/readings", b"%d" % i, qos=1)
            await task
        finally:
            pub.loop_stop()
            pub.disconnect()
    assert sorted(int(p) for p in seen) == list(range(MESSAGES)), "every message taken once, none lost"
    print(f"\nmost messages received and not taken: {most_queued} (max_inflight {MAX_INFLIGHT})")
    assert most_queued <= MAX_INFLIGHT


async def test_a_backlog_waiting_in_the_session_does_not_stop_the_connect(mosquitto: Proc) -> None:
    """The broker sends the session's backlog right after the CONNACK, before the SUBACK: reading must not stop
    before the gateway takes messages, or the subscription never completes."""
    prefix = f"bq{uuid.uuid4().hex[:8]}"
    cfg = parse_config(
        {"mqtt": {"url": f"mqtt://{mosquitto.host}:{mosquitto.port}", "prefix": prefix, "client_id": prefix,
                  "max_inflight": MAX_INFLIGHT}},
        env={},
    )  # fmt: skip
    seen: list[bytes] = []
    want = 0

    def accept(msgs: list[Incoming]) -> list[Incoming]:
        return msgs

    async def run(stop: asyncio.Event) -> tuple[IngestStats, asyncio.Task[None]]:
        stats = IngestStats()

        async def process(msgs: list[Incoming]) -> None:
            seen.extend(p for _, p, _ in msgs)
            if len(seen) >= want:
                stop.set()

        task = asyncio.create_task(run_durable_ingest(cfg.mqtt, accept, process, stats, stop, batch=10))
        while not stats.connected and not task.done():
            await asyncio.sleep(0.05)
        return stats, task

    async with asyncio.timeout(60):
        first = asyncio.Event()
        _, task = await run(first)  # makes the persistent session, then goes away
        first.set()
        await task  # gone before the backlog is published (a fixed sleep here raced on a slow machine)
        assert not seen
        pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{prefix}-pub")
        pub.connect(mosquitto.host, mosquitto.port)
        pub.loop_start()
        try:
            infos = [pub.publish(f"{prefix}/s/d/readings", b"%d" % i, qos=1) for i in range(20 * MAX_INFLIGHT)]
            for info in infos:
                info.wait_for_publish(10)
        finally:
            pub.loop_stop()
            pub.disconnect()
        want = 20 * MAX_INFLIGHT
        second = asyncio.Event()
        stats, _ = await run(second)
        await second.wait()
    assert sorted(int(p) for p in seen) == list(range(want))
    assert stats.connects == 1


async def test_a_long_pause_of_reading_keeps_the_connection(mosquitto: Proc) -> None:
    """While the gate stops reading, the broker's PINGRESP waits unread behind the backlog: the client must not
    take the missing reply for a dead connection (paho's keepalive check would close it after one keepalive).
    The pipeline here waits three keepalives on its first batch, as it does on a full spool."""
    prefix = f"bk{uuid.uuid4().hex[:8]}"
    cfg = parse_config(
        {"mqtt": {"url": f"mqtt://{mosquitto.host}:{mosquitto.port}", "prefix": prefix, "client_id": prefix,
                  "max_inflight": MAX_INFLIGHT, "keepalive_s": 1}},
        env={},
    )  # fmt: skip
    stats = IngestStats()
    stop = asyncio.Event()
    seen: list[bytes] = []
    total = 20 * MAX_INFLIGHT
    published = asyncio.Event()

    def accept(msgs: list[Incoming]) -> list[Incoming]:
        return msgs

    async def process(msgs: list[Incoming]) -> None:
        if not seen:
            await published.wait()
            await asyncio.sleep(3.5)  # three keepalives with reading stopped (the gate holds max_inflight)
        seen.extend(p for _, p, _ in msgs)
        if len(set(seen)) >= total:
            stop.set()

    task = asyncio.create_task(run_durable_ingest(cfg.mqtt, accept, process, stats, stop, batch=10))
    async with asyncio.timeout(60):
        while not stats.connected:
            await asyncio.sleep(0.05)
        pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{prefix}-pub")
        pub.max_inflight_messages_set(1000)
        pub.connect(mosquitto.host, mosquitto.port)
        pub.loop_start()
        try:
            infos = [pub.publish(f"{prefix}/s/d/readings", b"%d" % i, qos=1) for i in range(total)]
            await asyncio.to_thread(lambda: [info.wait_for_publish(10) for info in infos])
            published.set()
            await task
        finally:
            pub.loop_stop()
            pub.disconnect()
    assert sorted({int(p) for p in seen}) == list(range(total)), "every message taken"
    assert (stats.connects, stats.disconnects) == (1, 0), "the connection held through the pause"
