"""Helpers for the clock, buffer and configuration tests that run the real firmware on simulated boards
(sim/board) under the MicroPython unix port against a real Mosquitto: a subscriber that decodes every
message with the gateway's own decoder, and a short way to run a fleet."""

from __future__ import annotations

import json
import struct
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from gateway.model import Batch, Reading, StatusUpdate
from gateway.protocol import decode
from sim.board.launcher import native_micropython
from sim.board.runner import BOARD_VALUES, REPO, BoardSpec, Fleet, Hook, PowerLoss, Reset, WakeRecord, host_ms

from .conftest import Broker, run_mpy

MIN = 60_000
HOUR = 60 * MIN

VALUES = BOARD_VALUES

FW_GATEWAY: dict[str, Any] = {"client_id": "fw-test-gateway", "flush_interval_ms": 100}
"""How the firmware tests run sim/board/soak.py's GatewayThread (its other settings are the soak's)."""


class Collector:
    """Subscribes to edgekit/# and keeps (topic, payload, host ms of arrival, retained); ready once the broker
    has acknowledged the subscription."""

    def __init__(
        self,
        port: int,
        client_id: str = "fitl-sub",
        *,
        username: str | None = None,
        password: str | None = None,
        ca: Path | None = None,
    ) -> None:
        self.msgs: list[tuple[str, bytes, int, bool]] = []
        self.lock = threading.Lock()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        if username is not None:
            self.c.username_pw_set(username, password)
        if ca is not None:
            self.c.tls_set(ca_certs=str(ca))
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe("edgekit/#", qos=1)
        self.c.on_message = self._on
        self.subscribed = threading.Event()
        self.c.on_subscribe = lambda c, u, mid, rc, p: self.subscribed.set()
        self.c.reconnect_delay_set(0.05, 0.5)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        self.subscribed.wait(5)

    def _on(self, c: Any, u: Any, m: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.msgs.append((m.topic, bytes(m.payload), host_ms(), bool(m.retain)))

    def settle(self, quiet_s: float = 1.0) -> None:
        n, t = -1, time.monotonic()
        while time.monotonic() - t < 15:
            time.sleep(quiet_s)
            if len(self.msgs) == n:
                return
            n = len(self.msgs)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()

    def decoded(self, received_ms: int | None = None) -> tuple[list[Batch], list[StatusUpdate]]:
        """Every message through gateway.protocol.decode. received_ms: the gateway's clock to judge
        future times against (default: the host's clock when the message arrived)."""
        batches: list[Batch] = []
        statuses: list[StatusUpdate] = []
        with self.lock:
            msgs = list(self.msgs)
        for topic, payload, rcv, _ in msgs:
            if not payload or topic.endswith("/cmd") or "/_gateway/" in topic:
                continue  # cmd: the gateway's time and commands; _gateway: what edgekit-ota leaves (builds)
            m = decode(topic, payload, rcv if received_ms is None else received_ms)
            if isinstance(m, StatusUpdate):
                statuses.append(m)
            elif isinstance(m, Batch):
                batches.append(m)
        return batches, statuses

    def keys(self) -> list[tuple[str, int, int]]:
        """(device, boot, seq) of every reading received, in order of arrival, a reading sent twice twice;
        no message may have had a reading rejected."""
        batches, _ = self.decoded()
        out: list[tuple[str, int, int]] = []
        for b in batches:
            assert not b.rejected, b.rejected
            out.extend(r.key for r in b.readings)
        return out

    def status_json(self, device: str) -> list[dict[str, Any]]:
        out = []
        for topic, payload, _, _ in self.msgs:
            if topic.endswith(f"/{device}/status") and payload:
                out.append(json.loads(payload))
        return out


@dataclass
class Run:
    fleet: Fleet
    wakes: list[WakeRecord]
    sub: Collector
    batches: list[Batch] = field(default_factory=list)
    statuses: list[StatusUpdate] = field(default_factory=list)

    def readings(self, device: str | None = None) -> dict[tuple[str, int, int], Reading]:
        got: dict[tuple[str, int, int], Reading] = {}
        for b in self.batches:
            for r in b.readings:
                if device is None or r.device == device:
                    got[(r.device, r.boot, r.seq)] = r
        return got

    def rejected(self) -> list[Any]:
        return [x for b in self.batches for x in b.rejected]

    def lines(self, board: str, kind: str) -> list[list[str]]:
        return [p for w in self.wakes if w.board == board for p in w.lines(kind)]

    def radio_ms(self, board: str) -> int:
        """Virtual ms the board's Wi-Fi radio was on (the network shim's 'radio on/off' lines)."""
        return sum(w.radio_ms() for w in self.wakes if w.board == board)

    def radio_wakes(self, board: str) -> int:
        return sum(1 for w in self.wakes if w.board == board and any(x.startswith("radio on") for x in w.truth))

    def truth(self) -> dict[tuple[str, int, int], int]:
        """(board, boot, seq) -> virtual time of the sensor measurement."""
        return {(r.board, r.boot, r.seq): r.true_vt for r in self.fleet.readings_taken() if r.true_vt is not None}


def config(broker: Broker, **kw: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "site": "lab",
        "broker": "127.0.0.1",
        "port": broker.port,
        "sleep_s": 300,
        "publish_every": 3,
        "wifi_ssid": "sim",
        "wifi_timeout_s": 1,
        "net_timeout_s": 2,
        "wake_timeout_s": 30,
    }
    cfg.update(kw)
    return cfg


def run(
    tmp_path: Path,
    broker: Broker,
    boards: Sequence[BoardSpec],
    start: int,
    until: int,
    *,
    hooks: Iterable[Hook] = (),
    power_losses: Iterable[PowerLoss] = (),
    resets: Iterable[Reset] = (),
    prepare: Any = None,
    wdt_ms: int = 30_000,
    fast: bool = False,
) -> Run:
    """fast: the native launcher and the shims as .mpy, as the soak runs them (sim/board/launcher.py)."""
    kw: dict[str, Any] = {}
    if fast:
        kw = {"micropython": native_micropython(REPO / ".run" / "micropython-native"), "compiled_shims": True}
    fleet = Fleet(tmp_path / "fleet", boards, start_vt=start, heap="112K", wdt_ms=wdt_ms, **kw)
    fleet.prepare()
    if prepare is not None:
        prepare(fleet)
    sub = Collector(broker.port)
    try:
        wakes = fleet.run(until, hooks=hooks, power_losses=power_losses, resets=resets)
        sub.settle()
    finally:
        sub.close()
        fleet.stop_ntp()
    r = Run(fleet, wakes, sub)
    r.batches, r.statuses = sub.decoded()
    return r


def past_start(dur_ms: int) -> int:
    """A start time such that the whole run lies in the past of the host's clock (so the gateway's
    decoder does not see future times)."""
    return host_ms() - dur_ms - 10 * MIN


def ring_ids(raw: bytes) -> set[tuple[int, int]]:
    """(boot, seq) of the readings in an RTC-memory image (firmware/state.py): the header says where the
    ring starts (bytes 4-5, from layout 2 on) and its head, count and capacity (bytes 6-11); layout 1 had
    them at 20-25 and the ring at 60."""
    if len(raw) < 12:
        return set()
    if raw[2] >= 2:
        hdr, head, count, cap = struct.unpack_from("<HHHH", raw, 4)
    else:
        hdr = 60
        head, count, cap = struct.unpack_from("<HHH", raw, 20)
    rec = raw[3]
    out = set()
    for k in range(count):
        b, s = struct.unpack_from("<II", raw, hdr + ((head + k) % cap) * rec)
        out.add((b, s))
    return out


def state_hdr(micropython: str, tmp_path: Path) -> int:
    """The RTC-memory header size (firmware/state.py HDR), as the firmware computes it."""
    d = tmp_path / "hdr"
    d.mkdir(exist_ok=True)
    r = run_mpy(micropython, "import state; print(state.HDR)", d)
    assert r.returncode == 0, r.stdout + r.stderr
    return int(r.stdout.split()[-1])
