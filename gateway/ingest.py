"""MQTT ingest: subscribe at QoS 1 and hand every message to a callback; reconnect with backoff.

Acknowledgements are manual (paho's ``manual_ack``; aiomqtt 2.5 exposes no option for it, so it is set
on the wrapped paho client before connecting): :func:`run_durable_ingest` takes the messages that have
arrived (up to ``batch``), calls ``accept`` with them, which returns only once they are durable, then
sends the PUBACKs, then calls ``process``. A message the gateway has not made durable is never
acknowledged, so the broker re-sends it after a crash or a lost connection. The session is MQTT 5 with a
fixed client id, ``clean_start = false`` and a session expiry, and asks for a Receive Maximum
(``max_inflight``).

The Receive Maximum alone does not bound what the gateway holds: Mosquitto 2.0.11 sends far more
unacknowledged messages than it once acknowledgements flow (measured: with a Receive Maximum of 10, over
10,000 received and not yet acknowledged, bench/bench_e2e.py and tests/gateway/test_ingest_backpressure.py).
So the gateway applies its own backpressure (:class:`ReadGate`): once ``max_inflight`` messages are
received and not yet taken, it stops reading the broker's socket until the pipeline has taken half of
them. TCP flow control then stops the broker, which keeps the backlog in the session, not in the gateway's
memory.

The gateway asks for an MQTT 5 Maximum Packet Size (:func:`max_packet_size`: the payload limit
``limits.max_bytes`` plus :data:`PACKET_ROOM` for the topic and headers), so a broker never sends it a
message far over the limit: Mosquitto drops such a message for the gateway and logs it ("Dropping too large
outgoing PUBLISH for <client id>"). It reads the broker's own limit from the CONNACK, warns when the broker
has none (or a larger one), and never publishes an alert the broker would refuse (one over the broker's
limit would end the connection at every try): it is counted in ``Outbox.too_large`` and logged instead.

The reconnect loop sits outside the client (aiomqtt's own advice): each connection is a fresh
``aiomqtt.Client`` context, and a lost connection waits an exponentially growing, jittered delay
before the next try. With ``clean_session = false`` and a fixed client id, the broker keeps the
subscription and queues QoS 1 messages while the gateway is away.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import inspect
import logging
import random
import socket
import ssl
import struct
import termios
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Final, TypeVar

import aiomqtt
from paho.mqtt.client import MQTT_LOG_DEBUG, PUBACK, MQTTMessage
from paho.mqtt.client import time_func as mqtt_time
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.matcher import MQTTMatcher
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from .config import MqttConfig
from .protocol import Limits

__all__ = [
    "HEAD_BYTES",
    "PACKET_ROOM",
    "IngestStats",
    "Outbox",
    "ReadGate",
    "make_client",
    "max_packet_size",
    "oversize_stub",
    "publish_packet_size",
    "read_oversize_stub",
    "run_durable_ingest",
    "run_ingest",
    "share_property_tables",
]

log = logging.getLogger("gateway.ingest")

Handler = Callable[[str, bytes], Awaitable[None]]
Incoming = tuple[str, bytes, bool]
"""(topic, payload, dup): ``dup`` is the broker's DUP flag, set when it re-sends an unacknowledged message."""
T = TypeVar("T")

PACKET_ROOM: Final = 4096
"""Bytes beyond the payload limit in the gateway's Maximum Packet Size: the fixed header, the topic (a valid
one is under 100 bytes past the prefix), the packet id and the properties a broker passes on. The broker
configurations the project ships take packets of at most 8192 + 2048 bytes (``max_packet_size 10240``),
so whatever they accept reaches the gateway (docs/reliability.md)."""

READ_PACKETS: Final = 256
"""Packets :class:`ReadGate` reads in one turn of the event loop at most (then it lets the loop go on)."""

HEAD_BYTES: Final = 256
"""How much of an oversize payload the log keeps (the dead letter's excerpt is its first 200 bytes)."""

_STUB: Final = struct.Struct(">Q16s")


def max_packet_size(limits: Limits) -> int:
    """The MQTT 5 Maximum Packet Size the gateway asks for: ``limits.max_bytes`` + :data:`PACKET_ROOM`."""
    return limits.max_bytes + PACKET_ROOM


def publish_packet_size(topic: str, payload: bytes) -> int:
    """The size of the MQTT 5 PUBLISH (QoS 1, no properties) that carries ``payload`` on ``topic``."""
    remaining = 2 + len(topic.encode()) + 2 + 1 + len(payload)
    return 1 + _varint_bytes(remaining) + remaining


def _varint_bytes(n: int) -> int:
    return 1 if n < 128 else 2 if n < 16_384 else 3 if n < 2_097_152 else 4


def oversize_stub(payload: bytes) -> bytes:
    """What the log keeps of a payload over the limit: its size, a digest of it and its first bytes.

    Enough to dead-letter it as ``oversize`` with its true size and excerpt; the payload itself is never
    stored (a 100 MB message would otherwise cost 100 MB of log, and more of WAL).
    """
    digest = hashlib.blake2b(payload, digest_size=16).digest()
    return _STUB.pack(len(payload), digest) + payload[:HEAD_BYTES]


def read_oversize_stub(stub: bytes) -> tuple[int, bytes]:
    """``(size, head)`` of an :func:`oversize_stub`."""
    size, _ = _STUB.unpack_from(stub)
    return size, stub[_STUB.size :]


class IngestStats:
    __slots__ = (
        "acked",
        "broker_max_packet",
        "connected",
        "connects",
        "disconnects",
        "log_failing",
        "log_failures",
        "queued",
        "queued_most",
        "read_pauses",
        "received",
        "waiting",
    )

    def __init__(self) -> None:
        self.connects = 0
        self.disconnects = 0
        self.connected = False
        self.received = 0
        self.acked = 0
        self.queued = 0
        """Messages received from the broker and not yet taken by the gateway (at most max_inflight: ReadGate)."""
        self.queued_most = 0
        """The most there have been on any connection."""
        self.read_pauses = 0
        """Times the gateway stopped reading the broker's socket on the current connection (the queue was full)."""
        self.broker_max_packet: int | None = None
        """The Maximum Packet Size in the broker's last CONNACK (None: the broker states no limit)."""
        self.log_failures = 0
        """Times the durable log could not take messages (a full disk, an I/O error): they were not acknowledged."""
        self.log_failing = False
        """True from such a failure until the log takes messages again."""
        self.waiting: Callable[[], int] = _none_waiting
        """Messages received from the broker and not yet taken, right now (on the current connection)."""

    def as_dict(self) -> dict[str, object]:
        return {
            "connected": self.connected,
            "connects": self.connects,
            "disconnects": self.disconnects,
            "received": self.received,
            "acked": self.acked,
            "queued": self.queued,
            "queued_most": self.queued_most,
            "read_pauses": self.read_pauses,
            "broker_max_packet": self.broker_max_packet,
            "log_failures": self.log_failures,
            "log_failing": self.log_failing,
        }


class Outbox:
    """Messages the gateway publishes (alerts), bounded: when full, the oldest is shed and counted.

    They are sent at QoS 1 while the broker connection is up, and wait (in order) while it is down.
    Messages that are only worth something at once (a time reply to a board, ``put_now``) go first, at
    QoS 0, on the current connection only: never queued across a reconnect, never checkpointed.

    Retained messages (``put_retained``: Home Assistant discovery and device states) are kept per topic, only the
    latest payload of each (a newer one replaces one not yet sent), and go before the queue, at QoS 1 with the
    retain flag; the gateway's checkpoint keeps them with the device states they come from.
    """

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        self.queue: deque[tuple[str, bytes]] = deque()
        self.now: deque[tuple[str, bytes]] = deque(maxlen=1000)
        self.retained: dict[str, bytes] = {}
        """Retained messages to publish, the latest payload per topic, in the order their topics were first put."""
        self.sent_retained = 0
        self.ready = asyncio.Event()
        self.empty = asyncio.Event()
        self.empty.set()
        self.sent = 0
        self.sent_now = 0
        self.shed = 0
        self.too_large = 0
        """Messages not published because the broker would refuse them (over its Maximum Packet Size)."""
        self.max_packet: int | None = None
        """The broker's Maximum Packet Size on the current connection (None: no limit)."""
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

    def put_retained(self, topic: str, payload: bytes) -> None:
        self.retained[topic] = payload
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
            while self.retained or self.queue:
                if self.retained:  # before the queue: a discovery message before the alerts its entity shows
                    await self._send_retained(client)
                    continue
                topic, payload = self.queue[0]
                if self._too_large(topic, payload):  # the alert stays in InfluxDB
                    self.queue.popleft()
                    continue
                self.sending = True
                try:
                    await client.publish(topic, payload, qos=1)
                finally:
                    self.sending = False
                self.queue.popleft()
                self.sent += 1
            self.ready.clear()
            self.empty.set()

    def _too_large(self, topic: str, payload: bytes) -> bool:
        """Whether the broker would refuse this message (it would end the connection for it, at every try):
        then it is counted and logged, and the caller drops it."""
        if self.max_packet is None or publish_packet_size(topic, payload) <= self.max_packet:
            return False
        self.too_large += 1
        log.error(
            "message larger than the broker takes: not published",
            extra={"event": "outbox_too_large", "topic": topic, "bytes": len(payload),
                   "broker_max_packet": self.max_packet},
        )  # fmt: skip
        return True

    async def _send_retained(self, client: aiomqtt.Client) -> None:
        topic, payload = next(iter(self.retained.items()))
        if self._too_large(topic, payload):
            del self.retained[topic]
            return
        await client.publish(topic, payload, qos=1, retain=True)
        if self.retained.get(topic) is payload:  # not replaced meanwhile (else the newer one goes next)
            del self.retained[topic]
        self.sent_retained += 1

    async def flush(self, limit_s: float) -> bool:
        """Wait (at most ``limit_s``) until every queued message was acknowledged; False if time ran out."""
        try:
            await asyncio.wait_for(self.empty.wait(), limit_s)
        except TimeoutError:
            return False
        return True


def _none_waiting() -> int:
    return 0


def _payload_bytes(payload: object) -> bytes:
    if isinstance(payload, (bytes, bytearray)):
        return bytes(payload)
    if payload is None:
        return b""
    return str(payload).encode("utf-8")


def share_property_tables() -> None:
    """Make paho's MQTT 5 ``Properties`` objects share their tables (idempotent).

    paho 2.x builds the tables of property names, identifiers and types anew in every ``Properties``
    object, and makes one for every PUBLISH received: about a fifth of the gateway's time at its ceiling
    (issue 19's profile). The tables are constants that paho only reads; they are built once here and every
    new object refers to them. Its ``clear`` (the first step of reading every PUBLISH's properties) looks for
    each of the 27 property names on the object; here it looks at the attributes the object has.
    ``tests/gateway/test_ingest_properties.py`` checks that the objects pack, read and clear every property
    exactly as paho's own do.
    """
    cls: Any = Properties
    if getattr(cls, "_edgekit_shared_tables", False):
        return
    model = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    types, names, table = model.types, model.names, model.properties

    def __init__(self: Any, packetType: int) -> None:
        object.__setattr__(self, "packetType", packetType)
        object.__setattr__(self, "types", types)
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "properties", table)

    # paho's clear() (called first by every unpack, so once per PUBLISH, on a new object) tries to find each of the
    # 27 property names, without its spaces, as an attribute of the object: the same, from the names it does have
    attrs = frozenset(name.replace(" ", "") for name in names)
    on_class = [a for a in attrs if hasattr(cls, a)]

    def clear(self: Any) -> None:
        for a in [a for a in vars(self) if a in attrs] + on_class:
            if hasattr(self, a):
                delattr(self, a)

    cls._edgekit_own_init = cls.__init__  # paho's, for the test that compares the two
    cls._edgekit_own_clear = cls.clear
    cls.__init__ = __init__
    cls.clear = clear
    cls._edgekit_shared_tables = True


class EmptyFastMatcher(MQTTMatcher):
    """paho's trie of ``message_callback_add`` topic filters, answering at once when it holds none.

    paho's ``Client._handle_on_message`` looks every PUBLISH's topic up in it, and its ``iter_match`` makes a
    recursive closure, a reference cycle that only the cyclic garbage collector frees: one per message
    received, though the gateway adds no filter. With filters it is paho's own lookup
    (``tests/gateway/test_ingest_garbage.py``)."""

    def iter_match(self, topic: str) -> Iterator[Any]:
        if not self._root._children:
            return iter(())
        it: Iterator[Any] = super().iter_match(topic)  # type: ignore[no-untyped-call]  # paho's, untyped
        return it


def make_client(
    cfg: MqttConfig,
    dup_mids: set[int] | None = None,
    *,
    max_packet: int | None = None,
    connack: list[Any] | None = None,
) -> aiomqtt.Client:
    """An MQTT 5 client for ``cfg`` with manual acknowledgements (not connected yet).

    ``dup_mids`` collects the packet ids of messages that arrive with the DUP flag (aiomqtt's ``Message``
    drops the flag, so it is read in paho's callback before aiomqtt sees the message). ``max_packet`` is
    sent as the Maximum Packet Size; ``connack`` receives the properties of the broker's CONNACK.
    """
    share_property_tables()
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.ReceiveMaximum = cfg.max_inflight
    if max_packet is not None:
        props.MaximumPacketSize = max_packet
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
    # paho's filter trie, without a garbage cycle per message (the gateway adds no filter)
    client._client._on_message_filtered = EmptyFastMatcher()  # type: ignore[no-untyped-call]
    if dup_mids is not None:
        on_message = client._on_message

        def note_dup(c: Any, userdata: Any, message: Any) -> None:
            if message.dup:
                dup_mids.add(message.mid)
            on_message(c, userdata, message)

        client._client.on_message = note_dup
    if connack is not None:
        on_connect = client._on_connect

        def note_connack(c: Any, userdata: Any, flags: Any, reason: Any, properties: Any = None) -> None:
            connack.append(properties)
            on_connect(c, userdata, flags, reason, properties)

        client._client.on_connect = note_connack
    _no_delay(client)
    client.pending_calls_threshold = max(client.pending_calls_threshold, 1000)
    return client


def _no_delay(client: aiomqtt.Client) -> None:
    """Send each packet at once (TCP_NODELAY), as Mosquitto's ``set_tcp_nodelay`` does on the broker's side: the
    gateway's packets are small (a PUBACK is 4 bytes, an alert a few hundred), and with Nagle's algorithm, which
    paho leaves on, one waits while an earlier one is unacknowledged by the peer, whose acknowledgement may be
    delayed: an alert behind a PUBACK. Set when paho opens the socket, before its CONNECT."""
    paho = client._client
    opened: Any = paho.on_socket_open

    def on_open(c: Any, userdata: Any, sock: Any) -> None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):  # not TCP (a unix socket), or a transport without socket options
            pass
        opened(c, userdata, sock)

    paho.on_socket_open = on_open


READ_CHUNK: Final = 65536
"""Bytes :class:`BufferedRecv` asks the socket for at once (about 90 of the gateway's typical messages over plain TCP;
over TLS a read returns one record, and Mosquitto puts each packet in a record of its own)."""


class BufferedRecv:
    """paho's reads of one socket, served from what one ``recv`` of up to :data:`READ_CHUNK` bytes returned.

    paho reads a packet in three or more ``recv`` calls (its first byte, each byte of its length, the rest), a
    system call each: measured, 3.5 us a message in ``recv`` against 0.6 for the same bytes read at once. Installed
    as the client's ``_sock_recv`` for one socket, this hands paho the same bytes in the same order, with paho's
    own errors (it calls paho's ``_sock_recv`` to fill the buffer: ``BlockingIOError`` when nothing is there,
    ``b""`` at the end of the stream). A read larger than the chunk, with nothing buffered, is paho's own read.
    For any other socket (after paho closed this one) it is paho's own read.

    What it holds is not in the socket any more, so the socket's readiness no longer tells whether there is
    something to read: whoever has paho read packets must go on while :meth:`waiting` (the
    :class:`ReadGate` does).
    """

    __slots__ = ("data", "ended", "error", "own", "paho", "pos", "sock")

    def __init__(self, paho: Any, sock: Any) -> None:
        self.paho = paho
        self.sock = sock
        self.own: Callable[[Any, int], bytes] = type(paho)._sock_recv
        self.data = b""
        self.pos = 0
        self.error: BaseException | None = None  # what a read by :meth:`fill` raised, for paho's next read
        self.ended = False  # a read by :meth:`fill` found the end of the stream: paho's next reads find it too

    def fill(self) -> bool:
        """Read a chunk from the socket into the buffer when it is empty (before a packet is taken from it without
        paho): whether it holds bytes now. Nothing there (``BlockingIOError``) leaves paho's next read to find
        nothing too; an error or the end of the stream is kept, and paho's next read gets it, as from the socket."""
        if self.paho._sock is not self.sock or self.error is not None or self.ended:
            return False
        if self.pos < len(self.data):
            return True
        try:
            data = self.own(self.paho, READ_CHUNK)
        except BlockingIOError:
            return False
        except Exception as exc:  # paho's own read raises it again, from here
            self.error = exc
            return False
        if not data:
            self.ended = True
            return False
        self.data = data
        self.pos = 0
        return True

    def waiting(self) -> int:
        """Bytes read from the socket that paho has not taken yet (0 once paho no longer reads this socket)."""
        if self.paho._sock is not self.sock:
            return 0
        return len(self.data) - self.pos

    def recv(self, n: int) -> bytes:
        paho = self.paho
        if paho._sock is not self.sock:
            return self.own(paho, n)
        data = self.data
        pos = self.pos
        if pos >= len(data):
            if self.error is not None:
                error, self.error = self.error, None
                raise error
            if self.ended:
                return b""
            data = self.own(paho, n if n > READ_CHUNK else READ_CHUNK)
            if len(data) <= n:  # all of it for this read (b"": the end of the stream)
                return data
            self.data = data
            pos = 0
        end = pos + n
        if end >= len(data):
            self.data = b""
            self.pos = 0
            return data[pos:] if pos else data
        self.pos = end
        return data[pos:end]


def _read_packet(paho: Any, buffer: BufferedRecv | None = None) -> None:
    """paho's ``loop_read`` for one packet (or the next part of one). Its own reads as many packets as it has
    messages in flight (``len(_out_messages) + len(_in_messages)``: the gateway's alerts published at QoS 1 and not
    yet acknowledged), so one call could take the gate's queue past its bound by that many. A PUBLISH that
    :func:`_read_publish` can take from ``buffer`` is taken there."""
    if paho._sock is None:
        return
    rc = None if buffer is None else _read_publish(paho, buffer)
    if rc is None:
        rc = paho._packet_read()
    if rc > 0:  # as loop_read: a lost connection or a protocol error closes it and tells the callbacks
        paho._loop_rc_handle(rc)


_PUBLISH_LOG: Final = "Received PUBLISH (d%d, q%d, r%d, m%d), '%s', properties=%s, ...  (%d bytes)"
"""paho's debug message for a PUBLISH received under MQTT 5 (``Client._handle_publish``)."""


def _read_publish(paho: Any, buffer: BufferedRecv) -> int | None:
    """What paho's ``_packet_read`` does for the next packet when it is the commonest one, a PUBLISH at QoS 0 or 1
    under MQTT 5 with no properties, whole in ``buffer`` (paho between two packets): its result code; ``None`` for any
    other packet or state, which paho then reads itself. An empty buffer is filled first (:meth:`BufferedRecv.fill`),
    so the first packet of each read of the socket is taken here too.

    paho reads such a packet in three or more reads of the buffer (its first byte, each byte of its length, the
    rest), keeps its parts in a dict, unpacks the topic, packet id and payload with ``struct`` formats built for
    each packet, and makes and fills a ``Properties`` object from the empty property list: about half of the receive
    path's time (``bench/bench_ingest.py``). Here the same bytes are sliced from the buffer once; the message paho
    hands its callbacks is made as paho makes it (its class, fields and empty properties, its debug log if anyone
    listens, its time stamps, its ``_handle_on_message``, its PUBACK without manual acknowledgements).
    ``tests/gateway/test_ingest_read.py`` holds the messages, their order and the bytes left to paho's own reader
    over packet streams cut at every place."""
    if paho._sock is not buffer.sock or paho._in_packet["command"] != 0 or not buffer.fill():
        return None
    data = buffer.data
    pos = buffer.pos
    n = len(data)
    cmd = data[pos]
    if cmd & 0xF6 != 0x30 and cmd & 0xF6 != 0x32:  # PUBLISH at QoS 0 or 1 (any DUP and RETAIN flags)
        return None
    if paho._protocol != MQTTProtocolVersion.MQTTv5:
        return None
    i = pos + 1
    length = 0
    shift = 0
    while True:  # the remaining length: at most four bytes (paho refuses more)
        if i >= n or shift > 21:
            return None
        b = data[i]
        i += 1
        length |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            break
    end = i + length
    qos = (cmd >> 1) & 3
    if end > n or length < 3:
        return None
    topic_end = i + 2 + (data[i] << 8 | data[i + 1])
    at = topic_end + 2 if qos else topic_end  # the property length: one byte, 0 (no properties) taken here
    if at >= end or data[at] != 0:
        return None
    topic = data[i + 2 : topic_end]
    mid = data[topic_end] << 8 | data[topic_end + 1] if qos else 0
    payload = data[at + 1 : end]
    if end >= n:
        buffer.data = b""
        buffer.pos = 0
    else:
        buffer.pos = end
    with paho._msgtime_mutex:
        paho._last_bytes_received = mqtt_time()
    message = MQTTMessage(mid=mid, topic=topic)
    message.dup = cmd & 0x08 != 0
    message.qos = qos
    message.retain = cmd & 0x01 != 0
    message.properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    message.payload = payload
    logger = paho._logger
    if paho.on_log is not None or (logger is not None and logger.isEnabledFor(logging.DEBUG)):
        try:
            print_topic = topic.decode("utf-8")
        except UnicodeDecodeError:
            print_topic = f"TOPIC WITH INVALID UTF-8: {topic!r}"
        paho._easy_log(
            MQTT_LOG_DEBUG, _PUBLISH_LOG, message.dup, qos, message.retain, mid, print_topic, message.properties,
            len(payload),
        )  # fmt: skip
    message.timestamp = mqtt_time()
    paho._handle_on_message(message)
    rc: int = 0 if qos == 0 or paho._manual_ack else paho._send_puback(mid)
    with paho._msgtime_mutex:
        paho._last_bytes_received = mqtt_time()
    return rc


class ReadGate:
    """Backpressure on the broker's socket: stop reading it while ``bound`` messages are received and not taken.

    aiomqtt reads the socket whenever it is readable and queues every message, however many; the broker
    does not keep to the Receive Maximum (see the module's docstring). The gate takes over the socket's
    reader (what aiomqtt's does, paho's ``loop_read``, here one packet at a time; a failure ends the connection),
    removes it once the queue holds ``bound`` messages and puts it back by :meth:`taken` when it holds fewer than half,
    from the moment the gateway takes messages (:meth:`arm`; before, the replies to the CONNECT and SUBSCRIBE
    must be read whatever comes before them, and what arrives meanwhile is not bounded).
    While the reader is off, nothing is read from the socket: the kernel's buffers fill, then TCP holds the
    broker back, which keeps the rest in the session.

    Once it has the socket, paho reads it through a :class:`BufferedRecv` (a chunk at a time, not a system call
    for each byte of a packet's header), and the gate reads packets until what was read is taken (at most
    :data:`READ_PACKETS` in one turn of the event loop, or until the queue holds ``bound`` messages; the rest
    waits in the buffer for the next turn or for :meth:`taken`).

    The broker's PINGRESP then waits unread behind the backlog, and paho would close the connection one keepalive
    after its PINGREQ (it judges the connection by the bytes it has read). So while reading is stopped, every half
    keepalive the gate tells paho that bytes came in (its ``_last_bytes_received``) when the socket does hold
    unread bytes from the broker: paho goes on sending PINGREQs, which keep the broker's side alive, and the
    replies are read with the rest once reading resumes. A broker that is gone shows when paho's writes fail, or
    at the latest one keepalive after reading resumes.
    """

    def __init__(self, client: aiomqtt.Client, bound: int) -> None:
        self.client = client
        self.bound = max(1, bound)
        self.resume_below = max(1, self.bound // 2)
        self.fd = -1
        self.paused = False
        self.armed = False
        """Set by :meth:`arm` once the gateway takes messages: until then (the CONNACK, the SUBACK, which a
        broker sends after the backlog of a resumed session) reading never stops."""
        self.pauses = 0
        self.kept_alive = 0
        """Times the gate told paho the connection is alive while reading was stopped."""
        self._keep: asyncio.TimerHandle | None = None
        self.buffer: BufferedRecv | None = None
        """paho's reads of the current socket (from :meth:`_take_over` on)."""
        self.most = 0
        """The most messages held received and not taken (at most ``bound``)."""
        self._loop = asyncio.get_running_loop()
        paho = client._client
        aiomqtt_open: Any = paho.on_socket_open

        def on_open(c: Any, userdata: Any, sock: Any) -> None:
            aiomqtt_open(c, userdata, sock)  # schedules aiomqtt's reader (and its misc loop) on the event loop
            fd = sock.fileno()
            self._loop.call_soon_threadsafe(self._take_over, fd)  # runs after aiomqtt's add_reader: replaces it

        aiomqtt_close: Any = paho.on_socket_close

        def on_close(c: Any, userdata: Any, sock: Any) -> None:
            self.fd = -1
            self.paused = False
            self._stop_keeping()
            aiomqtt_close(c, userdata, sock)

        paho.on_socket_open = on_open
        paho.on_socket_close = on_close

    def _take_over(self, fd: int) -> None:
        paho: Any = self.client._client
        sock = paho._sock
        if sock is None:  # closed meanwhile
            return
        self.fd = fd
        self.paused = False
        # from here on paho reads this socket a chunk at a time (aiomqtt's reader, until now, read it unbuffered)
        self.buffer = BufferedRecv(paho, sock)
        paho._sock_recv = self.buffer.recv
        self._loop.add_reader(fd, self._read)

    def queued(self) -> int:
        """Messages read from the socket and not yet taken."""
        return len(self.client.messages)

    def _read(self) -> None:
        if self.paused:  # a read scheduled before the gate stopped reading
            return
        paho = self.client._client
        buffer = self.buffer
        try:
            for _ in range(READ_PACKETS):
                _read_packet(paho, buffer)
                room = not self.armed or self.queued() < self.bound
                if buffer is not None and room and buffer.waiting():
                    continue  # read but not taken by paho yet: the socket's readiness would not say so
                sock: Any = paho._sock
                # a packet read does not always consume the bytes an SSL socket has already decrypted
                if hasattr(sock, "pending") and sock.pending() > 0 and self.queued() < self.bound:
                    continue
                break
            else:  # the loop's other callbacks get their turn first; what was read and not taken is taken next
                self._loop.call_soon(self._read)
        except Exception as exc:  # a broken connection (aiomqtt's own reader does the same)
            disconnected = self.client._disconnected
            if not disconnected.done():
                disconnected.set_exception(exc)
            return
        queued = self.queued()
        self.most = max(self.most, queued)
        if queued >= self.bound and self.armed:
            self._pause()

    def _pause(self) -> None:
        if not self.paused and self.fd >= 0:
            self._loop.remove_reader(self.fd)
            self.paused = True
            self.pauses += 1
            self._keep_alive_later()

    def _keep_alive_later(self) -> None:
        keepalive = float(self.client._client.keepalive or 0)
        if keepalive > 0 and self._keep is None:
            self._keep = self._loop.call_later(keepalive / 2, self._keep_alive)

    def _keep_alive(self) -> None:
        """Reading is stopped: bytes from the broker waiting in the socket (or read from it into the buffer and not
        taken by paho) count as the connection being alive."""
        self._keep = None
        if not self.paused or self.fd < 0:
            return
        try:
            waiting = struct.unpack("i", fcntl.ioctl(self.fd, termios.FIONREAD, b"\0\0\0\0"))[0]
        except OSError:
            return  # the socket is gone: paho's next read or write says so
        if waiting > 0 or (self.buffer is not None and self.buffer.waiting() > 0):
            paho: Any = self.client._client
            with paho._msgtime_mutex:
                paho._last_bytes_received = mqtt_time()
            self.kept_alive += 1
        self._keep_alive_later()

    def _stop_keeping(self) -> None:
        if self._keep is not None:
            self._keep.cancel()
            self._keep = None

    def arm(self) -> None:
        """The gateway takes messages from now on: stop reading while ``bound`` of them wait."""
        self.armed = True
        if self.queued() >= self.bound:
            self._pause()

    def taken(self) -> None:
        """Messages were taken from the queue: read the socket again if there is room."""
        if self.paused and self.fd >= 0 and self.queued() < self.resume_below:
            self.paused = False
            self._stop_keeping()
            self._loop.add_reader(self.fd, self._read)
            self._loop.call_soon(self._read)  # bytes already buffered (SSL) do not make the socket readable


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
    accept: Callable[[list[Incoming]], T | Awaitable[T]],
    process: Callable[[T], Awaitable[None]],
    stats: IngestStats,
    stop: asyncio.Event,
    outbox: Outbox | None = None,
    *,
    batch: int = 100,
    ack_after_process: bool = False,
    max_packet: int | None = None,
) -> None:
    """Run until ``stop`` is set: connect, subscribe, accept + acknowledge + process; reconnect on failure.

    ``accept`` must make the messages durable before it returns (or, when it is a coroutine function, before
    its coroutine returns: nothing else happens between its return and the acknowledgements). ``max_packet``
    is the Maximum Packet Size the gateway asks for (:func:`max_packet_size`; None: no limit).
    """

    async def session() -> None:
        dup_mids: set[int] = set()
        connack: list[Any] = []
        client = make_client(cfg, dup_mids, max_packet=max_packet, connack=connack)
        gate = ReadGate(client, cfg.max_inflight)
        stats.waiting = gate.queued
        async with client:
            _note_broker_limit(connack, stats, outbox, max_packet)
            # retained messages (board statuses) only for a new subscription: a resumed session already had them
            options = SubscribeOptions(qos=cfg.qos, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB)
            for topic in cfg.subscriptions:
                await client.subscribe(topic, options=options)
            _connected(cfg, stats, list(cfg.subscriptions))
            sender = asyncio.create_task(outbox.drain_into(client)) if outbox is not None else None
            try:
                await _consume(client, gate, dup_mids, accept, process, stats, stop, sender, batch, ack_after_process)
            finally:
                if sender is not None:
                    if stop.is_set() and not sender.done() and outbox is not None:
                        await outbox.flush(5.0)  # a clean stop sends the alerts already queued first
                    sender.cancel()

    await _reconnecting(cfg, stats, stop, session)


async def run_publisher(cfg: MqttConfig, outbox: Outbox, stats: IngestStats, stop: asyncio.Event) -> None:
    """Run until ``stop`` is set: connect, publish what ``outbox`` holds (QoS 1: a message leaves the queue once
    the broker has acknowledged it); reconnect on failure. Subscribes to nothing (the sink-only gateway's alerts).
    A stop while connected sends what is queued first (5 s at most); while not connected it ends at once."""

    async def session() -> None:
        connack: list[Any] = []
        async with make_client(cfg, connack=connack) as client:
            _note_broker_limit(connack, stats, outbox, None)
            _connected(cfg, stats, [])
            sender = asyncio.create_task(outbox.drain_into(client))
            lost = asyncio.create_task(_until_lost(client))  # an idle sender would not see the connection go
            stopper = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait({sender, lost, stopper}, return_when=asyncio.FIRST_COMPLETED)
                for t in (sender, lost):
                    if t.done():
                        t.result()  # raises the MqttError that ended it: reconnect
                await outbox.flush(5.0)  # a clean stop sends what is queued first
            finally:
                stopper.cancel()
                lost.cancel()
                sender.cancel()

    # a stop while not connected (connecting to a broker that does not answer, or waiting to try again) ends at
    # once: there is nothing to flush, and what is queued stays queued (the caller checkpoints it)
    runner = asyncio.ensure_future(_reconnecting(cfg, stats, stop, session))
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if not runner.done() and not stats.connected:
            runner.cancel()
        await asyncio.wait({runner})
        if not runner.cancelled():
            runner.result()
    finally:
        stopper.cancel()
        runner.cancel()
        stats.connected = False


async def _until_lost(client: aiomqtt.Client) -> None:
    """Returns never: raises aiomqtt's MqttError once the connection is lost (the client subscribes to nothing, so
    no message comes; aiomqtt ends its message iterator with the error)."""
    async for _ in client.messages:
        pass
    raise aiomqtt.MqttError("the connection ended")


def _connected(cfg: MqttConfig, stats: IngestStats, topics: list[str]) -> None:
    stats.connects += 1
    stats.connected = True
    log.info(
        "connected to broker",
        extra={"event": "mqtt_connected", "broker": f"{cfg.host}:{cfg.port}", "topics": topics,
               "max_inflight": cfg.max_inflight},
    )  # fmt: skip


async def _reconnecting(
    cfg: MqttConfig, stats: IngestStats, stop: asyncio.Event, session: Callable[[], Awaitable[None]]
) -> None:
    """``session()`` (one connection) again and again until ``stop`` is set, waiting after a failure
    (``reconnect_min_s`` doubling to ``reconnect_max_s``, with jitter; back to the minimum once connected)."""
    delay = cfg.reconnect_min_s
    while not stop.is_set():
        try:
            await session()
            delay = cfg.reconnect_min_s
        except aiomqtt.MqttError as exc:
            was_connected = stats.connected
            if stats.connected:
                stats.disconnects += 1
                delay = cfg.reconnect_min_s
            stats.connected = False
            wait = delay * (0.5 + random.random())
            where = f"mqtt{'s' if cfg.tls else ''}://{cfg.host}:{cfg.port}"
            if was_connected:
                what = f"broker connection lost ({exc})"
            elif isinstance(exc, aiomqtt.MqttCodeError):
                what = f"broker at {where} refused the connection: {exc}"
            else:
                what = f"broker unreachable at {where}: {exc}"
            log.warning(
                "%s; retrying in %.1f s",
                what,
                wait,
                extra={"event": "mqtt_disconnected", "error": str(exc), "retry_in_s": round(wait, 2)},
            )
            try:
                await asyncio.wait_for(stop.wait(), wait)
            except TimeoutError:
                pass
            delay = min(delay * 2, cfg.reconnect_max_s)
    stats.connected = False


def _note_broker_limit(connack: list[Any], stats: IngestStats, outbox: Outbox | None, ours: int | None) -> None:
    """Read the broker's Maximum Packet Size from its CONNACK; warn when it takes larger messages than ours."""
    props = connack[-1] if connack else None
    theirs = getattr(props, "MaximumPacketSize", None)
    stats.broker_max_packet = int(theirs) if theirs is not None else None
    if outbox is not None:
        outbox.max_packet = stats.broker_max_packet
    if ours is not None and (theirs is None or theirs > ours):
        log.warning(
            "the broker takes larger messages than the gateway: it drops those for the gateway and logs them",
            extra={"event": "broker_packet_limit", "broker_max_packet": theirs, "gateway_max_packet": ours,
                   "hint": "set max_packet_size in the broker's configuration (docs/reliability.md)"},
        )  # fmt: skip


async def _consume(
    client: aiomqtt.Client,
    gate: ReadGate,
    dup_mids: set[int],
    accept: Callable[[list[Incoming]], T | Awaitable[T]],
    process: Callable[[T], Awaitable[None]],
    stats: IngestStats,
    stop: asyncio.Event,
    sender: asyncio.Task[None] | None,
    batch: int,
    ack_after_process: bool,
) -> None:
    messages = aiter(client.messages)
    gate.arm()
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
            _take_queued(client, got, batch)
            stats.received += len(got)
            stats.queued = len(client.messages)
            stats.queued_most = max(stats.queued_most, gate.most)
            stats.read_pauses = gate.pauses
            gate.taken()
            incoming: list[Incoming] = []
            for m in got:
                dup = m.mid in dup_mids
                dup_mids.discard(m.mid)
                incoming.append((str(m.topic), _payload_bytes(m.payload), dup))
            accepted = await _accept_until_durable(accept, incoming, stats, stop)
            if isinstance(accepted, _Stopped):  # stopped while the log could not take them: not acknowledged
                return
            if not ack_after_process:
                _ack(client, got, stats)
                await asyncio.sleep(0)  # let the PUBACKs go out before the (synchronous) processing
            await process(accepted)
            if ack_after_process:
                _ack(client, got, stats)
    finally:
        stopper.cancel()


def _take_queued(client: aiomqtt.Client, got: list[aiomqtt.Message], batch: int) -> None:
    """Add the messages already queued to ``got``, up to ``batch`` in all: what ``anext(client.messages)`` returns
    for each of them, without the task and the wait that aiomqtt's iterator makes for every message.

    While the queue holds a message, aiomqtt's ``__anext__`` returns it, even once the connection is lost (its
    ``queue.get()`` task completes before the wait sees the disconnection); so does this.
    """
    queue: asyncio.Queue[aiomqtt.Message] = client._queue
    while len(got) < batch and queue.qsize() > 0:
        got.append(queue.get_nowait())


LOG_RETRY_MAX_S = 30.0


class _Stopped:
    """What :func:`_accept_until_durable` returns when the gateway stops while the log cannot take messages."""


async def _accept_until_durable(
    accept: Callable[[list[Incoming]], T | Awaitable[T]],
    incoming: list[Incoming],
    stats: IngestStats,
    stop: asyncio.Event,
) -> T | _Stopped:
    """``accept(incoming)``; when it fails (the log's disk is full, an I/O error, a lock held too long), the
    messages are not acknowledged and the gateway does not stop: it says so, waits (1 s doubling to 30 s) and
    tries again with the same messages, while the connection, the writer and the metrics go on. A
    :class:`_Stopped` when ``stop`` is set meanwhile."""
    delay = 1.0
    while True:
        try:
            result = accept(incoming)
            accepted = await result if inspect.isawaitable(result) else result
        except Exception as exc:
            stats.log_failures += 1
            if not stats.log_failing:
                log.exception(
                    "the durable log cannot take messages: not acknowledging them, trying again",
                    extra={"event": "log_failing", "messages": len(incoming), "error": f"{type(exc).__name__}: {exc}"},
                )
            else:
                log.warning(
                    "the durable log still cannot take messages",
                    extra={"event": "log_failing", "messages": len(incoming), "error": f"{type(exc).__name__}: {exc}",
                           "retry_in_s": delay},
                )  # fmt: skip
            stats.log_failing = True
            try:
                await asyncio.wait_for(stop.wait(), delay)
                return _Stopped()
            except TimeoutError:
                pass
            delay = min(delay * 2, LOG_RETRY_MAX_S)
            continue
        if stats.log_failing:
            log.warning(
                "the durable log takes messages again", extra={"event": "log_ok", "failures": stats.log_failures}
            )
            stats.log_failing = False
        return accepted


_PUBACK: Final = struct.Struct("!BBH")


def _ack(client: aiomqtt.Client, got: list[aiomqtt.Message], stats: IngestStats) -> None:
    """Acknowledge ``got``, in its order, as paho's ``ack`` does each message.

    paho queues each PUBACK as a packet of its own and writes each with a system call of its own; here the PUBACKs
    of consecutive QoS 1 messages are queued as one packet holding the same bytes (paho's: type, length 2, packet
    id), written with one call. A QoS 2 message is acknowledged by paho's ``ack`` (its PUBCOMP) in its place."""
    paho: Any = client._client
    run: list[int] = []
    for m in got:
        if m.qos == 1 and paho._manual_ack:
            run.append(m.mid)
        elif m.qos > 0:
            _queue_pubacks(paho, run)
            paho.ack(m.mid, m.qos)
    _queue_pubacks(paho, run)
    stats.acked += len(got)


def _queue_pubacks(paho: Any, mids: list[int]) -> None:
    """Queue the PUBACKs of the packet ids ``mids`` as one packet (paho writes it as it writes its own PUBACKs);
    empty ``mids``."""
    if mids:
        paho._packet_queue(PUBACK, b"".join([_PUBACK.pack(PUBACK, 2, mid) for mid in mids]), mids[-1], 1)
        mids.clear()
