"""MQTT ingest: subscribe at QoS 1 and hand every message to a callback; reconnect with backoff.

Acknowledgements are manual (paho's ``manual_ack``; aiomqtt 2.5 exposes no option for it, so it is set
on the wrapped paho client before connecting): :func:`run_durable_ingest` takes the messages that have
arrived (up to ``batch``), calls ``accept`` with them, which returns only once they are durable, then
sends the PUBACKs, then calls ``process``. A message the gateway has not made durable is never
acknowledged, so the broker re-sends it after a crash or a lost connection. The session is MQTT 5 with a
fixed client id, ``clean_start = false`` and a session expiry; its Receive Maximum (``max_inflight``)
bounds how many unacknowledged messages the broker sends at once, which bounds the client's queue.

The reconnect loop sits outside the client (aiomqtt's own advice): each connection is a fresh
``aiomqtt.Client`` context, and a lost connection waits an exponentially growing, jittered delay
before the next try. With ``clean_session = false`` and a fixed client id, the broker keeps the
subscription and queues QoS 1 messages while the gateway is away.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from .config import MqttConfig

__all__ = ["IngestStats", "Outbox", "make_client", "run_durable_ingest", "run_ingest"]

log = logging.getLogger("gateway.ingest")

Handler = Callable[[str, bytes], Awaitable[None]]
Incoming = tuple[str, bytes, bool]
"""(topic, payload, dup): ``dup`` is the broker's DUP flag, set when it re-sends an unacknowledged message."""
T = TypeVar("T")


class IngestStats:
    __slots__ = ("acked", "connected", "connects", "disconnects", "queued", "received")

    def __init__(self) -> None:
        self.connects = 0
        self.disconnects = 0
        self.connected = False
        self.received = 0
        self.acked = 0
        self.queued = 0
        """Messages received from the broker and not yet taken by the gateway (bounded by max_inflight)."""

    def as_dict(self) -> dict[str, object]:
        return {
            "connected": self.connected,
            "connects": self.connects,
            "disconnects": self.disconnects,
            "received": self.received,
            "acked": self.acked,
        }


class Outbox:
    """Messages the gateway publishes (alerts), bounded: when full, the oldest is shed and counted.

    They are sent at QoS 1 while the broker connection is up, and wait (in order) while it is down.
    Messages that are only worth something at once (a time reply to a board, ``put_now``) go first, at
    QoS 0, on the current connection only: never queued across a reconnect, never checkpointed.
    """

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        self.queue: deque[tuple[str, bytes]] = deque()
        self.now: deque[tuple[str, bytes]] = deque(maxlen=1000)
        self.ready = asyncio.Event()
        self.empty = asyncio.Event()
        self.empty.set()
        self.sent = 0
        self.sent_now = 0
        self.shed = 0
        self.sending = False

    def put(self, topic: str, payload: bytes) -> None:
        if len(self.queue) >= self.limit:
            # the oldest that is not being published right now (the sender pops the head once acknowledged)
            del self.queue[1 if self.sending and len(self.queue) > 1 else 0]
            self.shed += 1
            log.error("outbox full: oldest message shed", extra={"event": "outbox_shed", "topic": topic})
        self.queue.append((topic, payload))
        self.ready.set()
        self.empty.clear()

    def put_now(self, topic: str, payload: bytes) -> None:
        self.now.append((topic, payload))
        self.ready.set()

    async def drain_into(self, client: aiomqtt.Client) -> None:
        """Publish queued messages for as long as the connection lasts (a failure leaves them queued)."""
        self.now.clear()  # put while there was no connection: stale now
        while True:
            await self.ready.wait()
            while self.now:
                topic, payload = self.now.popleft()
                await client.publish(topic, payload, qos=0)
                self.sent_now += 1
            while self.queue:
                topic, payload = self.queue[0]
                self.sending = True
                try:
                    await client.publish(topic, payload, qos=1)
                finally:
                    self.sending = False
                self.queue.popleft()
                self.sent += 1
            self.ready.clear()
            self.empty.set()

    async def flush(self, limit_s: float) -> bool:
        """Wait (at most ``limit_s``) until every queued message was acknowledged; False if time ran out."""
        try:
            await asyncio.wait_for(self.empty.wait(), limit_s)
        except TimeoutError:
            return False
        return True


def _payload_bytes(payload: object) -> bytes:
    if isinstance(payload, (bytes, bytearray)):
        return bytes(payload)
    if payload is None:
        return b""
    return str(payload).encode("utf-8")


def make_client(cfg: MqttConfig, dup_mids: set[int] | None = None) -> aiomqtt.Client:
    """An MQTT 5 client for ``cfg`` with manual acknowledgements (not connected yet).

    ``dup_mids`` collects the packet ids of messages that arrive with the DUP flag (aiomqtt's ``Message``
    drops the flag, so it is read in paho's callback before aiomqtt sees the message).
    """
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.ReceiveMaximum = cfg.max_inflight
    props.SessionExpiryInterval = 0 if cfg.clean_session else cfg.session_expiry_s
    tls_context = None
    if cfg.tls:
        tls_context = ssl.create_default_context(cafile=cfg.ca_file)
    client = aiomqtt.Client(
        hostname=cfg.host,
        port=cfg.port,
        username=cfg.username,
        password=cfg.password,
        identifier=cfg.client_id,
        protocol=aiomqtt.ProtocolVersion.V5,
        clean_start=cfg.clean_session,
        properties=props,
        keepalive=cfg.keepalive_s,
        timeout=10,
        tls_context=tls_context,
    )
    # aiomqtt 2.5 has no manual-ack option; its paho client does (messages are acked in run_durable_ingest)
    client._client.manual_ack_set(True)
    if dup_mids is not None:
        on_message = client._on_message

        def note_dup(c: Any, userdata: Any, message: Any) -> None:
            if message.dup:
                dup_mids.add(message.mid)
            on_message(c, userdata, message)

        client._client.on_message = note_dup
    client.pending_calls_threshold = max(client.pending_calls_threshold, 1000)
    return client


async def run_ingest(
    cfg: MqttConfig, handle: Handler, stats: IngestStats, stop: asyncio.Event, outbox: Outbox | None = None
) -> None:
    """Run until ``stop`` is set, feeding each message to ``handle`` and acknowledging it after it returns."""

    def accept(msgs: list[Incoming]) -> list[Incoming]:
        return msgs

    async def process(msgs: list[Incoming]) -> None:
        for topic, payload, _ in msgs:
            await handle(topic, payload)

    await run_durable_ingest(cfg, accept, process, stats, stop, outbox, ack_after_process=True)


async def run_durable_ingest(
    cfg: MqttConfig,
    accept: Callable[[list[Incoming]], T],
    process: Callable[[T], Awaitable[None]],
    stats: IngestStats,
    stop: asyncio.Event,
    outbox: Outbox | None = None,
    *,
    batch: int = 100,
    ack_after_process: bool = False,
) -> None:
    """Run until ``stop`` is set: connect, subscribe, accept + acknowledge + process; reconnect on failure.

    ``accept`` must make the messages durable before it returns (it runs synchronously, so nothing else
    happens between it and the acknowledgements).
    """
    delay = cfg.reconnect_min_s
    while not stop.is_set():
        try:
            dup_mids: set[int] = set()
            async with make_client(cfg, dup_mids) as client:
                # retained messages (board statuses) only for a new subscription: a resumed session already had them
                options = SubscribeOptions(qos=cfg.qos, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB)
                for topic in cfg.subscriptions:
                    await client.subscribe(topic, options=options)
                stats.connects += 1
                stats.connected = True
                delay = cfg.reconnect_min_s
                log.info(
                    "connected to broker",
                    extra={"event": "mqtt_connected", "broker": f"{cfg.host}:{cfg.port}",
                           "topics": list(cfg.subscriptions), "max_inflight": cfg.max_inflight},
                )  # fmt: skip
                sender = asyncio.create_task(outbox.drain_into(client)) if outbox is not None else None
                try:
                    await _consume(client, dup_mids, accept, process, stats, stop, sender, batch, ack_after_process)
                finally:
                    if sender is not None:
                        if stop.is_set() and not sender.done() and outbox is not None:
                            await outbox.flush(5.0)  # a clean stop sends the alerts already queued first
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
    client: aiomqtt.Client,
    dup_mids: set[int],
    accept: Callable[[list[Incoming]], T],
    process: Callable[[T], Awaitable[None]],
    stats: IngestStats,
    stop: asyncio.Event,
    sender: asyncio.Task[None] | None,
    batch: int,
    ack_after_process: bool,
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
            if nxt not in done or stopper in done:
                # a stop wins over waiting messages: they are not acknowledged, the broker keeps them
                nxt.cancel()
                return
            got: list[aiomqtt.Message] = [nxt.result()]
            while len(got) < batch and len(client.messages) > 0:
                got.append(await anext(messages))
            stats.received += len(got)
            stats.queued = len(client.messages)
            incoming: list[Incoming] = []
            for m in got:
                dup = m.mid in dup_mids
                dup_mids.discard(m.mid)
                incoming.append((str(m.topic), _payload_bytes(m.payload), dup))
            accepted = accept(incoming)
            if not ack_after_process:
                _ack(client, got, stats)
                await asyncio.sleep(0)  # let the PUBACKs go out before the (synchronous) processing
            await process(accepted)
            if ack_after_process:
                _ack(client, got, stats)
    finally:
        stopper.cancel()


def _ack(client: aiomqtt.Client, got: list[aiomqtt.Message], stats: IngestStats) -> None:
    for m in got:
        if m.qos > 0:
            client._client.ack(m.mid, m.qos)
    stats.acked += len(got)
