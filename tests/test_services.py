"""Prove that the service fixtures (and scripts/services.py) give working Mosquitto, InfluxDB and VM."""

from __future__ import annotations

import os
import queue
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import services
from helpers import influx_query, influx_write, poll, vm_export, vm_write
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode
from services import Proc

integration = pytest.mark.integration


def _client(host: str, port: int, *, username: str | None = None, password: str | None = None) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-{uuid.uuid4().hex[:8]}")
    if username is not None:
        client.username_pw_set(username, password)
    client.connect(host, port, keepalive=10)
    client.loop_start()
    return client


def _subscribe(client: mqtt.Client, topic: str) -> queue.Queue[mqtt.MQTTMessage]:
    """Subscribe with QoS 1, check that the SUBACK grants it and return the message queue."""
    received: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
    subscribed: queue.Queue[list[ReasonCode]] = queue.Queue()
    client.on_message = lambda _c, _u, msg: received.put(msg)
    client.on_subscribe = lambda _c, _u, _mid, codes, _p: subscribed.put(codes)
    client.subscribe(topic, qos=1)
    codes = subscribed.get(timeout=5)
    assert not any(code.is_failure for code in codes), codes
    return received


@integration
def test_mosquitto_answers_raw_mqtt_handshake(mosquitto: Proc) -> None:
    assert services.mqtt_handshake(mosquitto.host, mosquitto.port) == 0  # CONNACK "accepted"


@integration
def test_mosquitto_publish_subscribe_roundtrip(mosquitto: Proc) -> None:
    topic = f"edgekit/test/{uuid.uuid4().hex[:8]}"
    sub = _client(mosquitto.host, mosquitto.port)
    pub = _client(mosquitto.host, mosquitto.port)
    try:
        received = _subscribe(sub, topic)
        pub.publish(topic, b'{"t": 21.5}', qos=1).wait_for_publish(timeout=5)
        msg = received.get(timeout=5)
        assert (msg.topic, msg.payload) == (topic, b'{"t": 21.5}')
    finally:
        for client in (sub, pub):
            client.disconnect()
            client.loop_stop()


@pytest.fixture
def reachable_dir() -> Iterator[Path]:
    """A 0755 dir directly under the system tmp dir, so mosquitto can drop root for user 'mosquitto'."""
    path = Path(tempfile.mkdtemp(prefix="edgekit-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@integration
def test_mosquitto_with_password_and_acl(reachable_dir: Path) -> None:
    passwd_tool = services.which("mosquitto_passwd")
    if passwd_tool is None:
        pytest.fail(f"mosquitto_passwd not found; install with: {services.INSTALL_CMD}", pytrace=False)
    passwd = reachable_dir / "passwd.src"
    subprocess.run([passwd_tool, "-c", "-b", str(passwd), "gw", "s3cret"], check=True)
    acl = reachable_dir / "acl.src"
    acl.write_text("user gw\ntopic readwrite edgekit/#\n")

    proc = services.start_mosquitto(reachable_dir, services.free_port(), password_file=passwd, acl_file=acl)
    try:
        if os.geteuid() == 0:  # the privilege drop must work with our file permissions
            assert Path(f"/proc/{proc.pid}").stat().st_uid != 0
        assert services.mqtt_handshake(proc.host, proc.port) == 5  # anonymous: "not authorised"

        client = _client(proc.host, proc.port, username="gw", password="s3cret")
        try:
            received = _subscribe(client, "#")  # mosquitto 2.0 grants it and filters per message
            client.publish("other/topic", b"denied", qos=1).wait_for_publish(timeout=5)
            client.publish("edgekit/ok", b"allowed", qos=1).wait_for_publish(timeout=5)
            msg = received.get(timeout=5)  # the ACL dropped the first message
            assert (msg.topic, msg.payload) == ("edgekit/ok", b"allowed")
        finally:
            client.disconnect()
            client.loop_stop()
    finally:
        proc.stop()
    assert not proc.pid_file.exists()


@integration
def test_influxdb_write_select_roundtrip(influxdb_v1: Proc, influx_db: str) -> None:
    influx_write(
        influxdb_v1.url,
        influx_db,
        ["env,device=esp32-01 temp=21.5,rssi=-60i 1700000000000", "env,device=esp32-02 temp=19.25 1700000001000"],
        precision="ms",
    )
    rows = influx_query(influxdb_v1.url, influx_db, "SELECT * FROM env ORDER BY time", epoch="ms")
    assert rows == [
        {"time": 1700000000000, "device": "esp32-01", "rssi": -60, "temp": 21.5},
        {"time": 1700000001000, "device": "esp32-02", "rssi": None, "temp": 19.25},
    ]


@integration
def test_victoria_metrics_write_export_roundtrip(victoria_metrics: Proc) -> None:
    measurement = f"env_{uuid.uuid4().hex[:8]}"
    now_ms = int(time.time() * 1000)
    vm_write(
        victoria_metrics.url,
        [f"{measurement},device=esp32-01 temp=21.5 {now_ms - 1000}", f"{measurement},device=esp32-01 temp=22 {now_ms}"],
        precision="ms",
    )
    match = f'{{__name__="{measurement}_temp"}}'
    # Visibility is not atomic per request: one sample may show up before the other.
    series = poll(
        lambda: vm_export(victoria_metrics.url, match),
        until=lambda found: sum(len(s["values"]) for s in found) >= 2,
        timeout=15,
    )
    assert series, "written samples never became visible in VictoriaMetrics"
    assert len(series) == 1
    assert series[0]["metric"] == {"__name__": f"{measurement}_temp", "device": "esp32-01"}
    assert series[0]["values"] == [21.5, 22]
    assert series[0]["timestamps"] == [now_ms - 1000, now_ms]


def test_missing_binary_error_names_install_command() -> None:
    ghost = services.Service("ghost", "edgekit-no-such-binary", "ghost")
    with pytest.raises(services.BinaryMissingError, match="apt-get install"):
        ghost.find_binary()


@integration
def test_port_in_use_is_a_readable_error(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind((services.HOST, 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(services.ServiceError, match="already in use"):
            services.start_victoria_metrics(tmp_path, port)
    assert not (tmp_path / "victoria-metrics" / "victoria-metrics.pid").exists()


@integration
def test_cli_start_status_stop(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mqtt_port, http_port, rpc_port, vm_port = services.free_ports(4)
    ports = [
        f"--run-dir={tmp_path}",
        f"--mqtt-port={mqtt_port}",
        f"--influx-port={http_port}",
        f"--influx-rpc-port={rpc_port}",
        f"--vm-port={vm_port}",
    ]
    pids: list[Proc | None] = []
    try:
        assert services.main(["start", *ports]) == 0
        pids = [Proc.load(tmp_path / s.name, s.name) for s in services.SERVICES]
        assert all(p is not None and p.alive() for p in pids)
        assert services.main(["start", *ports]) == 0
        assert capsys.readouterr().out.count("already running") == 3
        assert services.main(["status", *ports]) == 0
        assert capsys.readouterr().out.count("answering yes") == 3
    finally:
        assert services.main(["stop", *ports]) == 0
    assert all(p is not None and not p.alive() for p in pids)
    assert services.main(["status", *ports]) == 3
