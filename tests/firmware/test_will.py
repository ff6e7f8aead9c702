"""The retained status a board leaves behind, under the real MicroPython against a real Mosquitto:

- power lost while connected -> the broker publishes the firmware's last will, and the retained status on
  edgekit/<site>/<id>/status is {"v":1,"dev":"<id>","state":"offline"}; both when the connection is closed
  (the host kills the process) and when it goes silent (a real ESP32 losing power sends nothing: the
  broker notices after 1.5 x the firmware's default keepalive);
- a clean wake ending in deep sleep -> the retained status is "sleeping" (the DISCONNECT discards the will).

A publishing wake is connected for only ~0.1 s, too short to cut the power into reliably, so the powered-off
boards talk through sim/board/proxy.py's half-open proxy ("silent"): it passes everything until the broker's
PUBACK of the "online" status has reached the board and then holds the board's further packets: the board
waits for a PUBACK that never comes, and the runner's PowerLoss cuts it there, connected. When the board is
gone, one proxy closes the broker's side at once, the other leaves it open and quiet (keep_broker_side). The
clean board talks to the broker directly."""

from __future__ import annotations

import ast
import json
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from gateway.model import StatusUpdate
from gateway.protocol import decode
from sim.board.proxy import BrokerProxy
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
    closed_proxy = BrokerProxy(broker.port, half_open="silent")
    silent_proxy = BrokerProxy(broker.port, half_open="silent", keep_broker_side=True)
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
    # cut both proxied boards 2 s after the 3 s they wait for the gateway's time ends (none here; a new clock
    # era's NTP time is checked against it): after "online", while they wait for the PUBACK of what they send
    # next, on any machine (a cut 5 s into the wake, as before, assumed this one's speed); power returns after
    # the test has ended
    cuts = [
        PowerLoss(name, start, after_ms=2000, after_output=b"EK gwtime", off_ms=3_600_000)
        for name in ("fw-closed", "fw-silent")
    ]
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
            online_passed = any(ONLINE in payload and not stalled for *_, payload, stalled in p.published)
            assert online_passed and p.held > 0, "not cut while connected"

        # closed connection: the will at once
        at = watcher.wait_for(topic["fw-closed"], "offline", 5)
        assert at is not None, watcher.states(topic["fw-closed"])
        # silent drop: the will once the broker's keepalive check gives up, 1.5 x keepalive after the last
        # packet it got (the "online" status, ~5 s before the cut), give or take Mosquitto's coarse check
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
