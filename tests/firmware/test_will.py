"""The retained status a board leaves behind, under the real MicroPython against a real Mosquitto:

- power lost while connected -> the broker publishes the firmware's last will, and the retained status on
  edgekit/<site>/<id>/status is {"v":1,"dev":"<id>","state":"offline"}; both when the connection is closed
  (the host kills the process) and when it goes silent (a real ESP32 losing power sends nothing: the
  broker notices after 1.5 x the firmware's default keepalive);
- a clean wake ending in deep sleep -> the retained status is "sleeping" (the DISCONNECT discards the will).

A publishing wake is connected for only ~0.1 s, too short to cut the power into reliably, so the powered-off
boards talk through a proxy that passes everything until the "online" status has reached the broker and
then holds the board's further packets: the board waits for a PUBACK that never comes, and the runner's
PowerLoss cuts it there, connected. The clean board talks to the broker directly."""

from __future__ import annotations

import ast
import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from gateway.model import StatusUpdate
from gateway.protocol import decode
from sim.board.runner import BoardSpec, Fleet, PowerLoss, host_ms

from .conftest import FIRMWARE, Broker

ONLINE = b'"state":"online"'


def default_keepalive_s() -> int:
    """keepalive_s from firmware/config.py's CFG (the boards below run with the default)."""
    tree = ast.parse((FIRMWARE / "config.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "CFG":
            cfg = ast.literal_eval(node.value)
            return int(cfg["keepalive_s"])
    raise AssertionError("no CFG in firmware/config.py")


def _drop(s: socket.socket) -> None:
    """Close a connection for real (FIN), even while another thread is blocked in recv() on it."""
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()


class HoldingProxy:
    """TCP proxy board -> broker for one connection at a time. Passes both directions until the board's
    "online" status went through, then holds (drops) whatever the board sends. When the board's side
    closes: mode "close" closes the broker side at once, mode "silent" leaves it open and quiet."""

    def __init__(self, broker_port: int, mode: str) -> None:
        self.broker_port = broker_port
        self.mode = mode
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.lsock.getsockname()[1])
        self.online_passed = threading.Event()
        self.board_gone = threading.Event()
        self.held = 0
        self.upstreams: list[socket.socket] = []
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                down, _ = self.lsock.accept()
            except OSError:
                return
            up = socket.create_connection(("127.0.0.1", self.broker_port))
            self.upstreams.append(up)
            threading.Thread(target=self._board_to_broker, args=(down, up), daemon=True).start()
            threading.Thread(target=self._broker_to_board, args=(up, down), daemon=True).start()

    def _board_to_broker(self, down: socket.socket, up: socket.socket) -> None:
        seen = b""
        while True:
            try:
                chunk = down.recv(4096)
            except OSError:
                chunk = b""
            if not chunk:
                break
            if self.online_passed.is_set():
                self.held += len(chunk)
                continue
            up.sendall(chunk)
            seen += chunk
            if ONLINE in seen:
                self.online_passed.set()
        self.board_gone.set()
        down.close()
        if self.mode == "close":
            _drop(up)  # what the kernel does with a killed process's socket

    def _broker_to_board(self, up: socket.socket, down: socket.socket) -> None:
        while True:
            try:
                chunk = up.recv(4096)
                if not chunk:
                    return
                down.sendall(chunk)
            except OSError:
                return

    def close(self) -> None:
        self.closed = True
        self.lsock.close()
        for s in self.upstreams:
            _drop(s)


class Watcher:
    """A live subscriber to edgekit/#: every status message, with its arrival time (monotonic)."""

    def __init__(self, port: int) -> None:
        self.msgs: list[tuple[float, str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="will-watcher")
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe("edgekit/+/+/status", qos=1)
        self.c.on_message = self._on
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        deadline = time.monotonic() + 5
        while not self.c.is_connected() and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)  # the SUBACK

    def _on(self, c: Any, u: Any, m: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.msgs.append((time.monotonic(), m.topic, bytes(m.payload), bool(m.retain)))

    def states(self, topic: str) -> list[str]:
        with self.lock:
            return [json.loads(p)["state"] for _, t, p, _ in self.msgs if t == topic]

    def wait_for(self, topic: str, state: str, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                for at, t, p, _ in self.msgs:
                    if t == topic and json.loads(p)["state"] == state:
                        return at
            time.sleep(0.05)
        return None

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def retained(port: int, topic: str) -> tuple[bytes, bool]:
    """What a new subscriber gets for topic: the retained message (payload, retain flag)."""
    got: list[tuple[bytes, bool]] = []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"will-check-{time.monotonic_ns()}")
    c.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
    c.on_message = lambda c, u, m: got.append((bytes(m.payload), bool(m.retain)))
    c.connect("127.0.0.1", port)
    c.loop_start()
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        time.sleep(0.02)
    c.loop_stop()
    c.disconnect()
    assert got, f"no retained message on {topic}"
    return got[0]


def test_last_will_on_power_loss_and_sleeping_on_clean_sleep(micropython: str, broker: Broker, tmp_path: Path) -> None:
    keepalive = default_keepalive_s()
    assert keepalive <= 15, "a board that dies connected must be declared offline soon"
    closed_proxy = HoldingProxy(broker.port, "close")
    silent_proxy = HoldingProxy(broker.port, "silent")
    start = host_ms() - 3_600_000
    common = {"site": "lab", "broker": "127.0.0.1", "wifi_ssid": "sim", "publish_every": 1, "net_timeout_s": 20}
    boards = [
        BoardSpec("fw-closed", {**common, "port": closed_proxy.port}, {"values": {"adc35": 1.9}}),
        BoardSpec("fw-silent", {**common, "port": silent_proxy.port}, {"values": {"adc35": 1.9}}),
        BoardSpec("fw-sleep", {**common, "port": broker.port}, {"values": {"adc35": 1.9}}),
    ]
    topic = {b.name: f"edgekit/lab/{b.name}/status" for b in boards}
    watcher = Watcher(broker.port)
    fleet = Fleet(tmp_path / "fleet", boards, start_vt=start, heap="112K")
    fleet.prepare()
    # cut both proxied boards 5 s into their first wake: long after "online" (~0.2 s) and the 3 s they wait
    # for the gateway's time (none here; a new clock era's NTP time is checked against it), while they wait
    # for the PUBACK of what they send next; power returns after the test has ended
    cuts = [PowerLoss(name, start, after_ms=5000, off_ms=3_600_000) for name in ("fw-closed", "fw-silent")]
    try:
        wakes = fleet.run(start + 60_000, power_losses=cuts)
        cut_at = time.monotonic()
        fleet.stop_ntp()
        outcome = {w.board: w.outcome for w in wakes}
        assert outcome == {"fw-closed": "power_loss", "fw-silent": "power_loss", "fw-sleep": "sleep"}, [
            w.output[-600:] for w in wakes
        ]
        for p in (closed_proxy, silent_proxy):
            # the proxy's thread sees the board's socket close a moment after the process is gone
            assert p.board_gone.wait(10), "the proxy never saw the board's connection end"
            assert p.online_passed.is_set() and p.held > 0, "not cut while connected"

        # closed connection: the will at once
        at = watcher.wait_for(topic["fw-closed"], "offline", 5)
        assert at is not None, watcher.states(topic["fw-closed"])
        # silent drop: the will once the broker's keepalive check gives up, 1.5 x keepalive after the last
        # packet it got (the "online" status, ~4.8 s before the cut), give or take Mosquitto's coarse check
        at = watcher.wait_for(topic["fw-silent"], "offline", 1.5 * keepalive + 10)
        assert at is not None, f"no will within 1.5 x keepalive ({keepalive} s): {watcher.states(topic['fw-silent'])}"
        assert at - cut_at > 1.0, "the silent board's will came at once: the proxy did not hold the connection"
        print(f"\nsilent drop: will {at - cut_at:.1f} s after the cut (keepalive {keepalive} s)")

        for name in ("fw-closed", "fw-silent"):
            assert watcher.states(topic[name]) == ["online", "offline"]
            payload, was_retained = retained(broker.port, topic[name])
            assert was_retained and payload == b'{"v":1,"dev":"' + name.encode() + b'","state":"offline"}', payload
            st = decode(topic[name], payload, host_ms())
            assert isinstance(st, StatusUpdate) and st.state == "offline" and st.device == name

        # the clean sleeper: "sleeping" stays, even after the time a will would have taken
        assert watcher.states(topic["fw-sleep"]) == ["online", "sleeping"]
        payload, was_retained = retained(broker.port, topic["fw-sleep"])
        st = decode(topic["fw-sleep"], payload, host_ms())
        assert was_retained and isinstance(st, StatusUpdate) and st.state == "sleeping", payload
        assert json.loads(payload)["dev"] == "fw-sleep"
    finally:
        watcher.close()
        fleet.stop_ntp()
        closed_proxy.close()
        silent_proxy.close()
