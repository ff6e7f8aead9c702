"""The gateway's MQTT connection and the broker's packet limit, against the real Mosquitto.

The session fixture ``mosquitto`` has the project's settings (``max_packet_size``, scripts/services.py).
A message over the broker's limit would end the gateway's connection at every try, so the outbox sets it
aside (counted and logged) and goes on with the rest. A broker without a limit is told apart by its CONNACK
and makes the gateway warn.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path

import aiomqtt
import pytest
import services
from helpers import start_or_fail
from services import Proc

from gateway.config import parse_config
from gateway.ingest import IngestStats, Outbox, max_packet_size, publish_packet_size, run_durable_ingest
from gateway.protocol import Limits

pytestmark = pytest.mark.integration


async def _run_with_outbox(broker: Proc, box: Outbox, stats: IngestStats, prefix: str, want: int) -> list[bytes]:
    """Run the gateway's ingest with ``box`` until a subscriber has seen ``want`` of its messages."""
    cfg = parse_config(
        {"mqtt": {"url": f"mqtt://{broker.host}:{broker.port}", "prefix": prefix, "client_id": prefix}}, env={}
    )
    stop = asyncio.Event()
    received: list[bytes] = []

    def accept(msgs: list[tuple[str, bytes, bool]]) -> None:
        return None

    async def process(_: None) -> None:
        return None

    async with aiomqtt.Client(broker.host, broker.port, identifier=f"{prefix}-sub") as sub:
        await sub.subscribe(f"{prefix}/_gateway/#", qos=1)
        task = asyncio.create_task(
            run_durable_ingest(cfg.mqtt, accept, process, stats, stop, box, max_packet=max_packet_size(Limits()))
        )
        try:
            async with asyncio.timeout(20):
                async for msg in sub.messages:
                    received.append(bytes(msg.payload))  # type: ignore[arg-type]
                    if len(received) == want:
                        break
        finally:
            stop.set()
            await task
    return received


async def test_an_alert_over_the_brokers_limit_is_set_aside_and_the_rest_goes_out(
    mosquitto: Proc, caplog: pytest.LogCaptureFixture
) -> None:
    prefix = f"l{uuid.uuid4().hex[:8]}"
    topic = f"{prefix}/_gateway/alerts/s/pattern"
    box = Outbox()
    big = b'{"readings":"' + b"r" * services.MAX_PACKET_SIZE + b'"}'
    assert publish_packet_size(topic, big) > services.MAX_PACKET_SIZE
    box.put(topic, b'{"n":1}')
    box.put(topic, big)
    box.put(topic, b'{"n":2}')
    stats = IngestStats()
    with caplog.at_level(logging.WARNING, logger="gateway.ingest"):
        received = await _run_with_outbox(mosquitto, box, stats, prefix, 2)
    assert received == [b'{"n":1}', b'{"n":2}']
    assert box.too_large == 1 and box.sent == 2 and not box.queue
    assert stats.connects == 1 and stats.disconnects == 0  # the connection was never lost over it
    assert stats.broker_max_packet == services.MAX_PACKET_SIZE
    assert [r for r in caplog.records if getattr(r, "event", None) == "outbox_too_large"]
    assert not [r for r in caplog.records if getattr(r, "event", None) == "broker_packet_limit"]


async def test_a_broker_without_a_limit_makes_the_gateway_warn(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broker = start_or_fail(lambda: services.start_mosquitto(tmp_path, services.free_port(), max_packet_size=None))
    try:
        prefix = f"u{uuid.uuid4().hex[:8]}"
        box = Outbox()
        box.put(f"{prefix}/_gateway/alerts/s/pattern", b'{"n":1}')
        stats = IngestStats()
        with caplog.at_level(logging.WARNING, logger="gateway.ingest"):
            assert await _run_with_outbox(broker, box, stats, prefix, 1) == [b'{"n":1}']
        assert stats.broker_max_packet is None
        (warning,) = [r for r in caplog.records if getattr(r, "event", None) == "broker_packet_limit"]
        assert warning.gateway_max_packet == max_packet_size(Limits())
    finally:
        broker.stop()
