"""Publish a plan's messages to an MQTT broker: the simulator's thin I/O layer.

One ``aiomqtt`` client publishes for the whole fleet (one connection per simulated board would be
realistic but costs a socket and a session each). Messages go out in the plan's order at QoS 1, the
statuses retained, paced at ``rate`` messages a second (0: as fast as the broker acknowledges) with
at most ``max_in_flight`` unacknowledged at a time. Any failure ends the run with a
:class:`~sim.errors.PublishError`; on success every message was acknowledged by the broker.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import aiomqtt

from .errors import PublishError, SpecError
from .fleet import Outgoing

__all__ = [
    "PASSWORD_ENV",
    "BrokerConfig",
    "Pacer",
    "PublishResult",
    "make_client",
    "parse_broker_url",
    "publish",
]

PASSWORD_ENV = "EDGEKIT_MQTT_PASSWORD"

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    """Where to publish, and as whom. ``tls`` uses the system's default certificate checks."""

    host: str
    port: int = 1883
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False

    def describe(self) -> str:
        """The broker as a URL, without the password."""
        user = f"{self.username}@" if self.username else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{self.host}:{self.port}"


def parse_broker_url(url: str, env: Mapping[str, str] | None = None) -> BrokerConfig:
    """``mqtt://[user[:password]@]host[:port]`` or ``mqtts://...`` (default ports 1883 and 8883).

    Without a password in the URL, a URL that names a user takes it from ``EDGEKIT_MQTT_PASSWORD`` in
    ``env``. Raises :class:`SpecError` naming what is wrong.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise SpecError(f"broker URL must start with mqtt:// or mqtts://, got {url!r}")
    if not parts.hostname:
        raise SpecError(f"broker URL has no host: {url!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise SpecError(f"broker URL must be mqtt://[user[:password]@]host[:port], got {url!r}")
    try:
        port = parts.port
    except ValueError as exc:
        raise SpecError(f"broker URL has a bad port: {url!r}") from exc
    tls = parts.scheme == "mqtts"
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    if password is not None and not username:
        raise SpecError("broker URL has a password but no user name")
    if password is None and username:
        password = (env or {}).get(PASSWORD_ENV)
    return BrokerConfig(parts.hostname, port or (8883 if tls else 1883), username, password, tls)


@dataclass(frozen=True, slots=True)
class PublishResult:
    """What was published and acknowledged."""

    messages: int
    statuses: int
    batches: int
    duplicates: int
    malformed: int
    readings: int
    """Valid readings in first publications of batches (duplicates not counted again)."""
    elapsed_s: float


class Pacer:
    """Spaces events ``1/rate`` seconds apart on a monotonic clock; ``rate <= 0`` does not wait.

    The schedule is absolute (event ``n`` is due at ``start + n / rate``), so a slow publish is caught
    up on rather than accumulating delay.
    """

    def __init__(self, rate: float, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep) -> None:
        self.rate = rate
        self.clock = clock
        self.sleep = sleep
        self.start: float | None = None
        self.count = 0

    async def wait(self) -> None:
        """Return when the next event is due."""
        if self.rate <= 0:
            self.count += 1
            return
        now = self.clock()
        if self.start is None:
            self.start = now
        due = self.start + self.count / self.rate
        self.count += 1
        if due > now:
            await self.sleep(due - now)


class _Client(aiomqtt.Client):
    """aiomqtt's client, registering write readiness only for a socket that is still open.

    paho asks for write readiness from the thread it runs in; aiomqtt 2.5 has the event loop register
    the socket's descriptor later (``call_soon_threadsafe(add_writer, fileno, ...)``). When the broker is
    lost in between, the socket is closed by the time the loop runs that: ``add_writer`` raised inside the
    loop ("Exception in callback BaseSelectorEventLoop.add_writer"), or could have watched a descriptor
    reused by another socket. Here the loop checks, when it registers, that paho still has that socket and
    that it is open; the writing itself is aiomqtt's (its callback, which reports a failed write as the
    disconnection).
    """

    def _on_socket_register_write(self, client: Any, userdata: Any, sock: Any) -> None:
        loop = self._loop
        disconnected = self._disconnected

        def write() -> None:  # as aiomqtt's: a failed write is the disconnection
            try:
                client.loop_write()
            except Exception as exc:
                if not disconnected.done():
                    disconnected.set_exception(exc)

        def register() -> None:
            if client.socket() is not sock or sock.fileno() < 0:
                return  # closed or replaced meanwhile: nothing to write to
            loop.add_writer(sock.fileno(), write)

        loop.call_soon_threadsafe(register)


def make_client(broker: BrokerConfig, client_id: str, timeout_s: float, max_in_flight: int) -> aiomqtt.Client:
    """One publishing client for a fleet: QoS 1 with at most ``max_in_flight`` unacknowledged messages."""
    client = _Client(
        hostname=broker.host,
        port=broker.port,
        username=broker.username,
        password=broker.password,
        identifier=client_id,
        timeout=timeout_s,
        max_inflight_messages=max_in_flight,
        tls_context=ssl.create_default_context() if broker.tls else None,
    )
    # aiomqtt warns above 10 unacknowledged publishes; ours are bounded by max_in_flight on purpose
    client.pending_calls_threshold = max_in_flight
    return client


async def publish(
    messages: Iterable[Outgoing],
    broker: BrokerConfig,
    *,
    client_id: str = "edgekit-sim",
    rate: float = 0.0,
    max_in_flight: int = 64,
    timeout_s: float = 10.0,
    clock: Clock = time.monotonic,
    sleep: Sleep = asyncio.sleep,
) -> PublishResult:
    """Publish ``messages`` in order at QoS 1 (statuses retained) and wait for every acknowledgement.

    ``timeout_s`` bounds the connection and each acknowledgement. Raises :class:`PublishError` when the
    broker cannot be reached, refuses the client or a publication fails.
    """
    if max_in_flight < 1:
        raise SpecError(f"max_in_flight must be at least 1, got {max_in_flight}")
    tally = _Tally()
    started = clock()
    client = make_client(broker, client_id, timeout_s, max_in_flight)
    try:
        async with client:
            await _send_all(client, messages, Pacer(rate, clock, sleep), max_in_flight, tally)
    except aiomqtt.MqttError as exc:
        raise PublishError(f"broker {broker.describe()}: {exc}") from exc
    except OSError as exc:  # pragma: no cover - aiomqtt converts most of these (and ssl.SSLError is one)
        raise PublishError(f"broker {broker.describe()}: {exc}") from exc
    c = tally.kinds
    return PublishResult(
        messages=sum(c.values()),
        statuses=c["status"],
        batches=c["batch"],
        duplicates=c["duplicate"],
        malformed=c["malformed"],
        readings=tally.readings,
        elapsed_s=clock() - started,
    )


class _Tally:
    __slots__ = ("kinds", "readings")

    def __init__(self) -> None:
        self.kinds = {"status": 0, "batch": 0, "duplicate": 0, "malformed": 0}
        self.readings = 0

    def add(self, msg: Outgoing) -> None:
        self.kinds[msg.kind] += 1
        if msg.kind == "batch":
            self.readings += msg.readings


async def _send_all(
    client: aiomqtt.Client, messages: Iterable[Outgoing], pacer: Pacer, max_in_flight: int, tally: _Tally
) -> None:
    """Start each publication in order, at most ``max_in_flight`` awaiting their PUBACK; the first failure
    cancels the rest and propagates."""
    pending: set[asyncio.Task[None]] = set()
    try:
        for msg in messages:
            await pacer.wait()
            if len(pending) >= max_in_flight:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                _raise_first(done)
            pending.add(asyncio.create_task(client.publish(msg.topic, msg.payload, qos=1, retain=msg.retain)))
            tally.add(msg)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            _raise_first(done)
    finally:
        for task in pending:
            task.cancel()
        # collect what they ended with, so that no "exception was never retrieved" noise follows an error
        await asyncio.gather(*pending, return_exceptions=True)


def _raise_first(done: Iterable[asyncio.Task[None]]) -> None:
    """Raise the first failure among finished tasks, after marking every one's outcome as retrieved."""
    errors = [exc for exc in (task.exception() for task in done) if exc is not None]
    if errors:
        raise errors[0]
