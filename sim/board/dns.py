"""A DNS server on a loopback UDP port for simulated boards: answers A queries (RFC 1035) from a table of
names, NXDOMAIN for other names, and stays silent inside ``down`` windows of virtual time (a resolver that
does not answer, as when the uplink is half-broken). Boards reach it through the Wi-Fi's DNS server
address (the network shim's ``ifconfig()``) and the firmware's ``dns_port`` setting."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable, Sequence

from sim.board.runner import serve_datagrams

__all__ = ["DnsServer"]


class DnsServer:
    def __init__(
        self,
        records: dict[str, str],
        clock: Callable[[], int],
        down: Sequence[tuple[int, int]] = (),
        ttl_s: int = 300,
    ) -> None:
        self.records = {k.lower().rstrip("."): v for k, v in records.items()}
        self.clock = clock
        self.down = list(down)
        self.ttl_s = ttl_s
        self.queries: list[tuple[int, str, bool]] = []  # (virtual time, name, answered)
        self._sock: socket.socket | None = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self.port = int(self._sock.getsockname()[1])
        threading.Thread(target=self._loop, args=(self._sock,), daemon=True).start()

    def _silent(self, vt: int) -> bool:
        return any(a <= vt < b for a, b in self.down)

    def _loop(self, s: socket.socket) -> None:
        def answer(req: bytes) -> tuple[bytes, Callable[[], None]] | None:
            resp = self.answer(req)
            return None if resp is None else (resp, lambda: None)

        serve_datagrams(s, lambda: self._sock is s, answer)

    def answer(self, req: bytes) -> bytes | None:
        """The reply to one query datagram, or None for no reply (garbage, or a silent window)."""
        if len(req) < 12:
            return None
        qid, flags, qd = struct.unpack_from("!HHH", req, 0)
        if flags & 0x8000 or qd != 1:
            return None
        labels, i = [], 12
        while i < len(req) and req[i]:
            n = req[i]
            labels.append(req[i + 1 : i + 1 + n].decode("ascii", "replace"))
            i += 1 + n
        end = i + 5  # the zero byte, QTYPE, QCLASS
        if end > len(req):
            return None
        name = ".".join(labels).lower()
        vt = self.clock()
        if self._silent(vt):
            self.queries.append((vt, name, False))
            return None
        qtype, qclass = struct.unpack_from("!HH", req, i + 1)
        ip = self.records.get(name)
        self.queries.append((vt, name, ip is not None))
        question = req[12:end]
        rd = flags & 0x0100
        if ip is None or qtype != 1 or qclass != 1:
            rcode = 3 if ip is None else 0  # NXDOMAIN, or NOERROR without an answer
            return struct.pack("!HHHHHH", qid, 0x8080 | rd | rcode, 1, 0, 0, 0) + question
        rr = struct.pack("!HHHIH", 0xC00C, 1, 1, self.ttl_s, 4) + socket.inet_aton(ip)
        return struct.pack("!HHHHHH", qid, 0x8080 | rd, 1, 1, 0, 0) + question + rr

    def close(self) -> None:
        s, self._sock = self._sock, None
        if s is not None:
            s.close()
