"""The gateway's MQTT sockets send small packets at once (TCP_NODELAY), against the real Mosquitto.

The gateway writes small packets: a PUBACK of 4 bytes per message, an alert of a few hundred bytes. With
Nagle's algorithm on (the default of a TCP socket, and paho does not turn it off) a small write waits while an
earlier one is not yet acknowledged by the peer, which may delay its acknowledgement: an alert could wait
behind a PUBACK. Mosquitto's own ``set_tcp_nodelay`` exists for the same reason on the broker's side. Checked
from outside the code that sets it: every TCP socket of this process connected to the test's own broker.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from pathlib import Path

import pytest
import services
from helpers import start_or_fail

from gateway.config import parse_config
from gateway.ingest import IngestStats, Outbox, max_packet_size, run_durable_ingest, run_publisher
from gateway.protocol import Limits

pytestmark = pytest.mark.integration


def _sockets_to(port: int) -> list[int]:
    """TCP_NODELAY of every socket of this process whose peer is ``port`` on loopback."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                continue
            s = socket.socket(fileno=os.dup(int(fd)))
        except OSError:
            continue
        try:
            if s.family in (socket.AF_INET, socket.AF_INET6) and s.type == socket.SOCK_STREAM:
                try:
                    peer = s.getpeername()
                except OSError:
                    continue
                if peer[1] == port:
                    out.append(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        finally:
            s.close()
    return out


async def test_the_ingest_and_the_publisher_connections_do_not_wait_to_send(tmp_path: Path) -> None:
    broker = start_or_fail(lambda: services.start_mosquitto(tmp_path, services.free_port()))
    try:
        prefix = f"n{uuid.uuid4().hex[:8]}"
        cfg = parse_config(
            {"mqtt": {"url": f"mqtt://{broker.host}:{broker.port}", "prefix": prefix, "client_id": prefix}}, env={}
        )
        pub_cfg = parse_config(
            {"mqtt": {"url": f"mqtt://{broker.host}:{broker.port}", "prefix": prefix, "client_id": f"{prefix}-p"}},
            env={},
        )
        stop = asyncio.Event()
        ingest, publisher = IngestStats(), IngestStats()

        async def process(_: None) -> None:
            return None

        tasks = [
            asyncio.create_task(
                run_durable_ingest(
                    cfg.mqtt, lambda msgs: None, process, ingest, stop, Outbox(), max_packet=max_packet_size(Limits())
                )
            ),
            asyncio.create_task(run_publisher(pub_cfg.mqtt, Outbox(), publisher, stop)),
        ]
        try:
            async with asyncio.timeout(20):
                while not (ingest.connected and publisher.connected):
                    await asyncio.sleep(0.05)
            assert _sockets_to(broker.port) == [1, 1]
        finally:
            stop.set()
            await asyncio.gather(*tasks)
    finally:
        broker.stop()
