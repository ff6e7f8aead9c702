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
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import aiomqtt

from .config import MqttConfig

__all__ = ["IngestStats", "Outbox", "run_ingest"]

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


class Outbox:
    """Messages the gateway publishes (alerts), bounded: when full, the oldest is shed and counted.

    They are sent at QoS 1 while the broker connection is up, and wait (in order) while it is down.
    """

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        self.queue: deque[tuple[str, bytes]] = deque()
        self.ready = asyncio.Event()
        self.sent = 0
        self.shed = 0

    def put(self, topic: str, payload: bytes) -> None:
        if len(self.queue) >= self.limit:
            self.queue.popleft()
            self.shed += 1
            log.error("outbox full: oldest message shed", extra={"event": "outbox_shed", "topic": topic})
        self.queue.append((topic, payload))
        self.ready.set()

    async def drain_into(self, client: aiomqtt.Client) -> None:
        """Publish queued messages for as long as the connection lasts (a failure leaves them queued)."""
        while True:
            await self.ready.wait()
            while self.queue:
                topic, payload = self.queue[0]
                await client.publish(topic, payload, qos=1)
                self.queue.popleft()
                self.sent += 1
            self.ready.clear()


def _payload_bytes(payload: object) -> bytes:
    if isinstance(payload, (bytes, bytearray)):
        return bytes(payload)
    if payload is None:
        return b""
    return str(payload).encode("utf-8")


async def run_ingest(
    cfg: MqttConfig, handle: Handler, stats: IngestStats, stop: asyncio.Event, outbox: Outbox | None = None
) -> None:
    """Run until ``stop`` is set: connect, subscribe, feed ``handle``, send ``outbox``; reconnect on failure."""
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
                sender = asyncio.create_task(outbox.drain_into(client)) if outbox is not None else None
                try:
                    await _consume(client, handle, stop, sender)
                finally:
                    if sender is not None:
                        sender.cancel()
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


async def _consume(
    client: aiomqtt.Client, handle: Handler, stop: asyncio.Event, sender: asyncio.Task[None] | None
) -> None:
    messages = aiter(client.messages)
    stopper = asyncio.ensure_future(stop.wait())
    watch: set[asyncio.Future[Any]] = {stopper}
    if sender is not None:
        watch.add(sender)
    try:
        while True:
            nxt: asyncio.Future[Any] = asyncio.ensure_future(anext(messages))
            done, _ = await asyncio.wait({nxt, *watch}, return_when=asyncio.FIRST_COMPLETED)
            if sender is not None and sender in done:
                nxt.cancel()
                sender.result()  # raises the MqttError that ended the sender: reconnect
            if nxt not in done:
                nxt.cancel()
                return
            message = nxt.result()
            await handle(str(message.topic), _payload_bytes(message.payload))
    finally:
        stopper.cancel()
