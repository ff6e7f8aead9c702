"""A TCP proxy between simulated boards and a real broker that can turn a connection half-open.

board <-> proxy <-> Mosquitto. Normally it passes every byte both ways. While ``half_open`` is set, a new
connection passes traffic until the broker's first PUBACK has reached the board, then stalls, and the board's
side stays open until the board closes it (a connection at the edge of Wi-Fi range that stops carrying
packets without a FIN or RST): with ``"silent"`` nothing more goes either way, with ``"acks"`` the board's
packets still reach the broker but nothing comes back (its messages arrive, their PUBACKs are lost). When the
broker cannot be reached (it is stopped), the board's connection is closed at once, as a refused connection
would end. When the board's side closes, the broker's side is closed too (the kernel's FIN for a killed
process), unless ``keep_broker_side`` is set: then it stays open and quiet, as a board that lost power leaves
it (the broker finds out only by its keepalive).
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["BrokerProxy"]


def _close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()


def _recv(s: socket.socket) -> bytes:
    """The next bytes from s; b"" once it is closed, reset or shut down."""
    try:
        return s.recv(4096)
    except OSError:
        return b""


def _packets(buf: bytearray) -> list[bytes]:
    """Cut whole MQTT control packets off the front of buf (fixed header + remaining length)."""
    out: list[bytes] = []
    while len(buf) >= 2:
        n, mul, i = 0, 1, 1
        while True:
            if i >= len(buf):
                return out
            b = buf[i]
            n += (b & 0x7F) * mul
            mul *= 128
            i += 1
            if not b & 0x80:
                break
        if len(buf) < i + n:
            return out
        out.append(bytes(buf[: i + n]))
        del buf[: i + n]
    return out


def _remaining(pkt: bytes) -> int:
    """Offset of the variable header (after the fixed header's remaining-length bytes)."""
    i = 1
    while i < len(pkt) and pkt[i] & 0x80:
        i += 1
    return i + 1


def _client_id(connect: bytes) -> str:
    """The client id of a CONNECT packet (MQTT 3.1.1: protocol name, level, flags, keepalive, then the id)."""
    try:
        i = _remaining(connect)
        (n,) = struct.unpack_from("!H", connect, i)
        i += 2 + n + 4
        (n,) = struct.unpack_from("!H", connect, i)
        return connect[i + 2 : i + 2 + n].decode()
    except (struct.error, UnicodeDecodeError):
        return ""


def _publish(pkt: bytes) -> tuple[str, bytes]:
    """Topic and payload of a PUBLISH packet (a packet id follows the topic at QoS 1 and 2)."""
    i = _remaining(pkt)
    (n,) = struct.unpack_from("!H", pkt, i)
    topic = pkt[i + 2 : i + 2 + n].decode(errors="replace")
    i += 2 + n + (2 if pkt[0] & 0x06 else 0)
    return topic, pkt[i:]


class BrokerProxy:
    """Listens on a loopback port of its own (``port``) and forwards to ``127.0.0.1:broker_port``."""

    def __init__(
        self,
        broker_port: int,
        clock: Callable[[], int] | None = None,
        *,
        half_open: str | None = None,
        keep_broker_side: bool = False,
    ) -> None:
        self.broker_port = broker_port
        self.clock = clock or (lambda: time.time_ns() // 1_000_000)
        self.delivered: list[tuple[str, str, int]] = []
        """(client id, topic, clock ms) of every PUBLISH the broker sent a board (e.g. the gateway's time)."""
        self.published: list[tuple[str, str, int, bytes, bool]] = []
        """(client id, topic, clock ms, payload, stalled) of every PUBLISH a board sent, whether it got through
        or not; stalled: sent on a connection gone half-open, so its PUBACK never reached the board (with
        ``"acks"`` the broker still got it)."""
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.lsock.getsockname()[1])
        self.half_open: str | None = half_open
        """None, "silent" or "acks" (see the module's doc), for connections made from now on."""
        self.keep_broker_side = keep_broker_side
        """Leave the broker's side open when the board's side closes (see the module's doc)."""
        self.connections = 0
        self.refused = 0
        """Connections closed at once because the broker could not be reached."""
        self.stalls = 0
        """Connections that went half-open."""
        self.held = 0
        """Bytes a board sent on a connection gone half-open with ``"silent"`` (they went nowhere)."""
        self.board_gone = threading.Event()
        """Set once the board's side of a connection has closed (the board closed it, or was killed)."""
        self.closed = False
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()
        threading.Thread(target=self._accept, daemon=True).start()

    def _track(self, *socks: socket.socket) -> None:
        with self._lock:
            self._socks.update(socks)

    def _forget(self, *socks: socket.socket) -> None:
        with self._lock:
            self._socks.difference_update(socks)

    def _accept(self) -> None:
        while not self.closed:
            try:
                down, _ = self.lsock.accept()
            except OSError:
                return
            self.connections += 1
            try:
                up = socket.create_connection(("127.0.0.1", self.broker_port), timeout=2)
                up.settimeout(None)
            except OSError:
                self.refused += 1
                _close(down)
                continue
            self._track(down, up)
            state: dict[str, Any] = {"stalled": False, "half_open": self.half_open, "client": ""}
            threading.Thread(target=self._board_to_broker, args=(down, up, state), daemon=True).start()
            threading.Thread(target=self._broker_to_board, args=(up, down, state), daemon=True).start()

    def _board_to_broker(self, down: socket.socket, up: socket.socket, state: dict[str, Any]) -> None:
        first = True
        buf = bytearray()
        while chunk := _recv(down):
            if first:
                first = False
                state["client"] = _client_id(chunk)
            buf += chunk
            for pkt in _packets(buf):
                if pkt[0] >> 4 == 3:  # PUBLISH
                    topic, payload = _publish(pkt)
                    self.published.append((state["client"], topic, self.clock(), payload, state["stalled"]))
            if state["stalled"] and state["half_open"] == "silent":
                self.held += len(chunk)
                continue  # swallowed: the board's packets go nowhere
            try:
                up.sendall(chunk)
            except OSError:
                break
        self.board_gone.set()
        if self.keep_broker_side:
            _close(down)
            self._forget(down)  # the broker's side stays open and quiet until close()
            return
        _close(up)  # the board closed (or was killed): the broker sees the connection drop
        _close(down)
        self._forget(down, up)

    def _broker_to_board(self, up: socket.socket, down: socket.socket, state: dict[str, Any]) -> None:
        buf = bytearray()
        while chunk := _recv(up):
            if state["stalled"]:
                continue
            buf += chunk
            for pkt in _packets(buf):
                stall = pkt[0] == 0x40 and state["half_open"]  # the first PUBACK goes through: stall after it
                if stall:  # (marked before the board can answer it with its next PUBLISH)
                    state["stalled"] = True
                    self.stalls += 1
                try:
                    down.sendall(pkt)
                except OSError:
                    return
                if pkt[0] >> 4 == 3:  # PUBLISH
                    self.delivered.append((state["client"], _publish(pkt)[0], self.clock()))
                if stall:
                    break
        if not state["stalled"]:
            _close(down)  # the broker went away: so does the board's connection

    def close(self) -> None:
        self.closed = True
        self.lsock.close()
        with self._lock:
            socks = list(self._socks)
        for s in socks:
            _close(s)
