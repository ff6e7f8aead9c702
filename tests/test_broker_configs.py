"""Every broker configuration the project ships persists promptly and limits packet size, consistently.

The configurations: deploy/mosquitto/anonymous.conf and fleet.conf (docker-compose.yml), the conf.d file
of Debian's Mosquitto (deploy/systemd/mosquitto-edgekit.conf), and the one scripts/services.py generates
(the demo and the tests). Each is read for its settings, and each is loaded by the real Mosquitto, which
must then announce the packet limit in its CONNACK and save its database within seconds.
"""

from __future__ import annotations

import os
import queue
import re
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import services
from helpers import poll
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from services import Proc

from gateway.ingest import max_packet_size, publish_packet_size
from gateway.protocol import Limits

REPO = Path(__file__).resolve().parent.parent
SHIPPED = {
    "anonymous": REPO / "deploy" / "mosquitto" / "anonymous.conf",
    "fleet": REPO / "deploy" / "mosquitto" / "fleet.conf",
    "systemd": REPO / "deploy" / "systemd" / "mosquitto-edgekit.conf",
}
WANT = {
    "persistence": "true",
    "autosave_interval": str(services.AUTOSAVE_INTERVAL),
    "max_packet_size": str(services.MAX_PACKET_SIZE),
    "max_queued_messages": "1000000",
    "max_queued_bytes": "0",
}


def settings(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.strip().partition(" ")
            out[key] = value.strip()
    return out


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    """The configuration scripts/services.py writes for a persistent broker (the demo's and the tests')."""
    proc = services.start_mosquitto(tmp_path_factory.mktemp("gen"), services.free_port(), persistence=True)
    yield proc
    proc.stop()


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_each_shipped_configuration_has_the_settings(name: str) -> None:
    got = settings(SHIPPED[name].read_text(encoding="utf-8"))
    assert {k: got.get(k) for k in WANT} == WANT
    assert got.get("autosave_on_changes", "false") == "false"  # autosave_interval counts seconds


@pytest.mark.integration
def test_the_generated_configuration_has_the_settings(generated: Proc) -> None:
    got = settings((generated.dir / "mosquitto.conf").read_text())
    assert {k: got.get(k) for k in WANT} == WANT


def test_the_packet_limit_fits_the_protocol_the_boards_and_the_gateway() -> None:
    limits = Limits()
    longest_topic = "edgekit/" + "s" * 32 + "/" + "d" * 32 + "/readings"
    # the largest message the protocol allows passes the broker (Mosquitto compares remaining length + 1)
    assert publish_packet_size(longest_topic, b"x" * limits.max_bytes) <= services.MAX_PACKET_SIZE
    # the firmware's batches are well under it
    codec = (REPO / "firmware" / "codec.py").read_text(encoding="utf-8")
    firmware_max = int(re.search(r"^MAX_BYTES = const\((\d+)\)", codec, re.M)[1])  # type: ignore[index]
    assert firmware_max <= limits.max_bytes
    # whatever the broker takes reaches the gateway: on the way out a broker adds at most a property length
    # byte and a packet id; were the gateway's limit lower, Mosquitto would drop the message for the gateway
    assert services.MAX_PACKET_SIZE + 8 < max_packet_size(limits)


def _copy_for_test(name: str, tmp: Path, port: int) -> Path:
    """The shipped file with its port, paths and (as root) user changed to fit this test; nothing else."""
    text = SHIPPED[name].read_text(encoding="utf-8")
    text = text.replace("listener 1883", f"listener {port} 127.0.0.1")
    if "listener 8883" in text:  # the boards' TLS listener, with certificates as scripts/make_certs.sh makes them
        text = text.replace("listener 8883", f"listener {services.free_port()} 127.0.0.1")
        subprocess.run(["bash", str(REPO / "scripts" / "make_certs.sh"), str(tmp / "certs")], check=True,
                       capture_output=True)  # fmt: skip
    text = text.replace("/mosquitto/data/", f"{tmp}/data/").replace("/mosquitto/config/", f"{tmp}/")
    (tmp / "data").mkdir()
    (tmp / "passwd").write_text("")
    (tmp / "acl").write_text("topic read $SYS/#\n")
    for path in (tmp / "passwd", tmp / "acl"):
        path.chmod(0o600)
    user = "user root\n" if os.geteuid() == 0 else ""
    if name == "systemd":  # a conf.d file: Debian's mosquitto.conf includes it
        (tmp / "conf.d").mkdir()
        (tmp / "conf.d" / "edgekit.conf").write_text(text)
        main = f"persistence true\npersistence_location {tmp}/data/\nlog_dest stderr\n{user}include_dir {tmp}/conf.d\n"
        conf = tmp / "mosquitto.conf"
        conf.write_text(main)
        return conf
    conf = tmp / f"{name}.conf"
    conf.write_text(text + user)
    return conf


def _connack_max_packet(proc: Proc) -> object:
    got: queue.Queue[object] = queue.Queue()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="probe-v5", protocol=mqtt.MQTTv5)
    client.on_connect = lambda _c, _u, _f, _rc, props: got.put(getattr(props, "MaximumPacketSize", None))
    client.connect(proc.host, proc.port, properties=Properties(PacketTypes.CONNECT))  # type: ignore[no-untyped-call]
    client.loop_start()
    try:
        return got.get(timeout=10)
    finally:
        client.disconnect()
        client.loop_stop()


def _send_oversize(proc: Proc, client_id: str) -> None:
    """Connect as a board would (MQTT 3.1.1) and start a PUBLISH one byte over the limit: the broker must
    close the connection (without a PUBACK) once it has read the packet's length."""
    cid = client_id.encode()
    body = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(cid).to_bytes(2, "big") + cid
    with socket.create_connection((proc.host, proc.port), timeout=10) as sock:
        sock.sendall(b"\x10" + bytes([len(body)]) + body)
        assert sock.recv(4) == b"\x20\x02\x00\x00"  # CONNACK, accepted
        topic = b"edgekit/s/d/readings"
        remaining = 2 + len(topic) + 2 + services.MAX_PACKET_SIZE
        length = bytearray()
        while True:
            remaining, digit = divmod(remaining, 128)
            length.append(digit | (0x80 if remaining else 0))
            if not remaining:
                break
        try:
            sock.sendall(b"\x32" + bytes(length) + len(topic).to_bytes(2, "big") + topic + b"\x00\x01" + b"x" * 100)
            answer = sock.recv(4)
        except ConnectionResetError:  # closed while the rest of the packet was on its way
            answer = b""
        assert answer == b""  # closed, no PUBACK


@pytest.mark.integration
@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_mosquitto_loads_each_shipped_configuration(name: str, tmp_path: Path) -> None:
    binary = services.MOSQUITTO.find_binary()
    port = services.free_port()
    conf = _copy_for_test(name, tmp_path, port)
    proc = services._launch(services.MOSQUITTO, [binary, "-c", str(conf)], tmp_path, port)
    try:
        if name != "fleet":  # the fleet broker refuses anonymous clients (CONNACK 5), which is the point
            assert _connack_max_packet(proc) == services.MAX_PACKET_SIZE
            # a packet over the limit ends the sender's connection, and the log says so at once (not in a
            # buffer: `docker logs` shows it when it happens)
            _send_oversize(proc, "too-big")
            seen = poll(lambda: "Client too-big disconnected due to oversize packet" in proc.log_tail(50), timeout=10)
            assert seen, proc.log_tail()
        # it saves its database again and again (each save writes a new file and renames it over the old)
        db = tmp_path / "data" / "mosquitto.db"
        first = poll(lambda: db.stat().st_ino if db.exists() else None, until=bool, timeout=30)
        assert first, proc.log_tail()
        again = poll(lambda: db.stat().st_ino, until=lambda ino: ino != first, timeout=30)
        assert again != first, proc.log_tail()
        assert "Error" not in proc.log_file.read_text()
    finally:
        proc.stop()
