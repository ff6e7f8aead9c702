"""The firmware's MQTT client (firmware/mqtt.py) and DNS lookup (firmware/dns.py) under the real MicroPython
unix port with the ESP32 socket shim, against a real Mosquitto and against TCP/UDP peers on loopback that
misbehave: every step either succeeds or raises OSError once its deadline has passed, never hangs."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from sim.board.dns import DnsServer

from .conftest import Broker, run_mpy

CLIENT = """
import time, mqtt, socket
def addr(port):
    return socket.getaddrinfo('127.0.0.1', port)[0][-1]
def step(name, f):
    t0 = time.ticks_ms()
    try:
        r = f()
        print('OK', name, r, time.ticks_diff(time.ticks_ms(), t0))
    except OSError as e:
        print('ERR', name, e.args[0], time.ticks_diff(time.ticks_ms(), t0))
"""


def run(mp: str, tmp: Path, code: str) -> dict[str, tuple[str, str]]:
    r = run_mpy(mp, CLIENT + code, tmp, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    out = {}
    for line in r.stdout.splitlines():
        p = line.split()
        if p and p[0] in ("OK", "ERR"):
            out[p[1]] = (p[0], p[2])
            print(line)
    return out


class Peer:
    """A TCP server on loopback that runs `behave(conn)` for each connection, in a thread."""

    def __init__(self, behave: Callable[[socket.socket], None], backlog: int = 5, accept: bool = True) -> None:
        self.lsock = socket.create_server(("127.0.0.1", 0), backlog=backlog)
        self.port = int(self.lsock.getsockname()[1])
        self.behave = behave
        self.conns: list[socket.socket] = []
        if accept:
            threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            self.conns.append(c)
            threading.Thread(target=self._run, args=(c,), daemon=True).start()

    def _run(self, c: socket.socket) -> None:
        try:
            self.behave(c)
        except OSError:
            pass

    def close(self) -> None:
        self.lsock.close()
        for c in self.conns:
            c.close()


@pytest.fixture
def peers() -> Iterator[list[Peer]]:
    made: list[Peer] = []
    yield made
    for p in made:
        p.close()


def dribble(c: socket.socket) -> None:
    """Take the CONNECT, then send the CONNACK one byte every 0.8 s (3.2 s in all)."""
    c.recv(4096)
    for b in b"\x20\x02\x00\x00":
        time.sleep(0.8)
        c.sendall(bytes([b]))
    time.sleep(5)


def refuse(c: socket.socket) -> None:
    c.recv(4096)
    c.sendall(b"\x20\x02\x00\x05")  # not authorised
    time.sleep(5)


def hang_up(c: socket.socket) -> None:
    c.recv(4096)
    c.close()


def silent(c: socket.socket) -> None:
    while c.recv(4096):
        pass


def test_client_against_mosquitto(micropython: str, broker: Broker, tmp_path: Path) -> None:
    got: list[tuple[str, bytes, bool]] = []
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="mqtt-test-sub")
    sub.on_connect = lambda c, u, f, rc, p: c.subscribe("t/#", qos=1)
    sub.on_message = lambda c, u, m: got.append((m.topic, bytes(m.payload), bool(m.retain)))
    subscribed = threading.Event()
    sub.on_subscribe = lambda c, u, mid, rc, p: subscribed.set()
    sub.connect("127.0.0.1", broker.port)
    sub.loop_start()
    assert subscribed.wait(10)  # subscribed before the board publishes (a fixed sleep raced on a slow machine)
    code = f"""
c = mqtt.Client('dev-é', keepalive=10)
c.set_last_will('t/will', b'gone', True, 1)
step('connect', lambda: c.connect(addr({broker.port}), 2000))
step('small', lambda: c.publish('t/a', b'x', False, 2000))
step('retained', lambda: c.publish('t/b', b'y' * 300, True, 2000))
step('big', lambda: c.publish('t/c', bytes(range(256)) * 80, False, 2000))
step('pid', lambda: c.pid)
step('disconnect', lambda: c.disconnect(2000))
step('closed', lambda: c.publish('t/a', b'x', False, 2000))
"""
    try:
        out = run(micropython, tmp_path, code)
        deadline = time.monotonic() + 5
        while len(got) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        sub.loop_stop()
        sub.disconnect()
    for k in ("connect", "small", "retained", "big", "disconnect"):
        assert out[k][0] == "OK", out
    assert out["pid"] == ("OK", "3")
    assert out["closed"] == ("ERR", "9")  # no socket after the DISCONNECT
    assert [(t, len(p), r) for t, p, r in got] == [("t/a", 1, False), ("t/b", 300, False), ("t/c", 20480, False)]
    assert got[2][1] == bytes(range(256)) * 80
    assert "t/will" not in [t for t, _, _ in got], "a clean DISCONNECT must discard the will"


def test_every_step_ends_at_its_deadline(micropython: str, tmp_path: Path, peers: list[Peer]) -> None:
    slow, no, gone, mute = (Peer(f) for f in (dribble, refuse, hang_up, silent))
    full = Peer(silent, backlog=0, accept=False)  # an accept queue that is full: further SYNs are dropped
    peers += [slow, no, gone, mute, full]
    fillers = []
    for _ in range(4):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", full.port))
        fillers.append(s)
    time.sleep(0.2)
    code = f"""
def conn(port):
    c = mqtt.Client('dev-1')
    c.connect(addr(port), 2000)
    return c
step('dribble', lambda: conn({slow.port}))
step('refused', lambda: conn({no.port}))
step('hangup', lambda: conn({gone.port}))
step('silent', lambda: conn({mute.port}))
step('synfull', lambda: conn({full.port}))
step('noport', lambda: conn({free_tcp_port()}))
"""
    try:
        out = run(micropython, tmp_path, code)
    finally:
        for s in fillers:
            s.close()
    # a CONNACK dribbled over 3.2 s does not fit a 2 s deadline: a per-read timeout would have taken it
    assert out["dribble"] == ("ERR", "110")
    assert out["refused"][0] == "ERR" and out["refused"][1] == "mqtt"  # OSError('mqtt refused 5')
    assert out["hangup"] == ("ERR", "104")
    assert out["silent"] == ("ERR", "110")
    assert out["synfull"] == ("ERR", "110")
    assert out["noport"][0] == "ERR"


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_dns_lookup_is_bounded(micropython: str, tmp_path: Path) -> None:
    now = [0]
    dns = DnsServer({"broker.lab": "10.1.2.3", "mqtt.example.org": "192.0.2.7"}, clock=lambda: now[0], down=[(5, 6)])
    code = f"""
import dns
step('known', lambda: dns.resolve('broker.lab', '127.0.0.1', {dns.port}, 2000))
step('case', lambda: dns.resolve('MQTT.Example.org', '127.0.0.1', {dns.port}, 2000))
step('unknown', lambda: dns.resolve('nope.lab', '127.0.0.1', {dns.port}, 2000))
"""
    try:
        out = run(micropython, tmp_path, code)
        now[0] = 5  # the server falls silent
        silent = run(
            micropython,
            tmp_path,
            f"""
import dns
step('silent', lambda: dns.resolve('broker.lab', '127.0.0.1', {dns.port}, 2500))
""",
        )
    finally:
        dns.close()
    assert out["known"] == ("OK", "('10.1.2.3',")
    assert out["case"] == ("OK", "('192.0.2.7',")
    assert out["unknown"] == ("ERR", "-202")
    assert silent["silent"] == ("ERR", "110")
    asked = [q for q in dns.queries if q[1] == "broker.lab" and not q[2]]
    assert len(asked) >= 2, "a lost datagram is asked again within the deadline"
