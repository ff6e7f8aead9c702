"""The firmware's TLS client (mqtt.py over uplink.py's context) under the MicroPython unix port and the ESP32 socket
shims, against a TLS server in this process (CPython's ssl) with scripts/make_certs.sh's certificate: the name the
board checks must be one the certificate covers, a server that accepts and then says nothing costs one timeout
(the handshake runs inside the client's bounded reads and writes), and a good server gets a CONNECT."""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from sim.board.runner import REPO

from .conftest import run_mpy

CONNECT = """
from uplink import Uplink
cfg = {{'prefix': 'edgekit', 'site': 's', 'device': 'tls-1', 'broker': '127.0.0.1', 'port': {port},
        'tls': True, 'ca': 'ca.der', 'tls_name': {name!r}, 'keepalive_s': 10, 'net_timeout_s': 2,
        'sleep_s': 300}}
up = Uplink(cfg)
try:
    up.connect()
    print('CONNECTED')
except OSError as e:
    print('FAILED', repr(e))
"""


class Server:
    """Accepts TLS connections; answers a CONNECT with a CONNACK, or (silent) never reads nor answers."""

    def __init__(self, certs: Path, *, silent: bool = False) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(certs / "server.crt", certs / "server.key")
        self.silent = silent
        self.got: list[bytes] = []
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)
            if self.silent:
                continue  # the TCP connection is up; nobody answers the ClientHello
            try:
                s = self.ctx.wrap_socket(c, server_side=True)
                s.settimeout(5)
                self.got.append(s.recv(512))
                s.sendall(b"\x20\x02\x00\x00")  # CONNACK, accepted
            except (OSError, ssl.SSLError):
                pass

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    d = tmp_path_factory.mktemp("certs")
    subprocess.run(["bash", str(REPO / "scripts" / "make_certs.sh"), str(d), "broker.test"], check=True,
                   capture_output=True)  # fmt: skip
    yield d


def board(tmp: Path, certs: Path) -> Path:
    fl = tmp / "flash"
    fl.mkdir(exist_ok=True)
    (fl / "ca.der").write_bytes((certs / "ca.der").read_bytes())
    return fl


@pytest.mark.parametrize(("name", "ok"), [("127.0.0.1", True), ("broker.test", True), ("other.test", False)])
def test_the_board_checks_the_name_against_the_certificate(
    micropython: str, tmp_path: Path, certs: Path, name: str, ok: bool
) -> None:
    srv = Server(certs)
    try:
        r = run_mpy(micropython, CONNECT.format(port=srv.port, name=name), board(tmp_path, certs), heap="256K")
    finally:
        srv.close()
    if ok:
        assert "CONNECTED" in r.stdout, r.stdout + r.stderr
        assert srv.got and srv.got[0][:1] == b"\x10" and b"tls-1" in srv.got[0]  # its CONNECT, decrypted
    else:
        assert "FAILED" in r.stdout and "tls" in r.stdout, r.stdout + r.stderr
        assert not srv.got


def test_a_server_that_does_not_answer_the_handshake_costs_one_timeout(
    micropython: str, tmp_path: Path, certs: Path
) -> None:
    srv = Server(certs, silent=True)
    try:
        r = run_mpy(micropython, CONNECT.format(port=srv.port, name="127.0.0.1"), board(tmp_path, certs),
                    heap="256K", timeout=30)  # fmt: skip
    finally:
        srv.close()
    # two tries (uplink's bounded retry), each ended by mqtt.py's deadline: ETIMEDOUT, not a hang
    assert "FAILED" in r.stdout and "110" in r.stdout, r.stdout + r.stderr
    assert len(srv.conns) == 2
