"""MQTT ingest: subscribe at QoS 1 and hand every message to a callback; reconnect with backoff.

The reconnect loop sits outside the client (aiomqtt's own advice): each connection is a fresh
``aiomqtt.Client`` context, and a lost connection waits an exponentially growing, jittered delay
before the next try. With ``clean_session = false`` and a fixed client id, the broker keeps the
subscription and queues QoS 1 messages while the gateway is away.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

import aiomqtt

from .config import MqttConfig

__all__ = ["IngestStats", "run_ingest"]

log = logging.getLogger("gateway.ingest")

Handler = Callable[[str, bytes], Awaitable[None]]


class IngestStats:
    __slots__ = ("connected", "connects", "disconnects")

    def __init__(self) -> None:
        self.connects = 0
        self.disconnects = 0
        self.connected = False

    def as_dict(self) -> dict[str, object]:
        return {"connected": self.connected, "connects": self.connects, "disconnects": self.disconnects}


def _payload_bytes(payload: object) -> bytes:
    if isinstance(payload, (bytes, bytearray)):
        return bytes(payload)
    if payload is None:
        return b""
    return str(payload).encode("utf-8")


async def run_ingest(cfg: MqttConfig, handle: Handler, stats: IngestStats, stop: asyncio.Event) -> None:
    """Run until ``stop`` is set: connect, subscribe, feed ``handle``; reconnect on failure."""
    delay = cfg.reconnect_min_s
    while not stop.is_set():
        try:
            async with aiomqtt.Client(
                hostname=cfg.host,
                port=cfg.port,
                username=cfg.username,
                password=cfg.password,
                identifier=cfg.client_id,
                clean_session=cfg.clean_session,
                keepalive=cfg.keepalive_s,
                timeout=10,
            ) as client:
                for topic in cfg.subscriptions:
                    await client.subscribe(topic, qos=cfg.qos)
                stats.connects += 1
                stats.connected = True
                delay = cfg.reconnect_min_s
                log.info(
                    "connected to broker",
                    extra={"event": "mqtt_connected", "broker": f"{cfg.host}:{cfg.port}",
                           "topics": list(cfg.subscriptions)},
                )  # fmt: skip
                await _consume(client, handle, stop)
        except aiomqtt.MqttError as exc:
            if stats.connected:
                stats.disconnects += 1
            stats.connected = False
            wait = delay * (0.5 + random.random())
            log.warning(
                "broker connection lost, reconnecting",
                extra={"event": "mqtt_disconnected", "error": str(exc), "retry_in_s": round(wait, 2)},
            )
            try:
                await asyncio.wait_for(stop.wait(), wait)
            except TimeoutError:
                pass
            delay = min(delay * 2, cfg.reconnect_max_s)
    stats.connected = False


async def _consume(client: aiomqtt.Client, handle: Handler, stop: asyncio.Event) -> None:
    messages = aiter(client.messages)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        while True:
            nxt = asyncio.ensure_future(anext(messages))
            done, _ = await asyncio.wait({nxt, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if nxt not in done:
                nxt.cancel()
                return
            message = nxt.result()
            await handle(str(message.topic), _payload_bytes(message.payload))
    finally:
        stopper.cancel()
