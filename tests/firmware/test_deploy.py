"""The deploy command, run against the MicroPython unix port through a pseudo-terminal (socat), installs the
files; the deployed tree then starts (one wake, ending in deep sleep) under the host shims."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sim.board.runner import REPO, SHIMS

FLEET = {
    "defaults": {
        "site": "lab",
        "broker": "127.0.0.1",
        "port": 1,
        "ntp_host": "127.0.0.1",
        "ntp_port": 1,
        "sleep_s": 300,
        "wifi_ssid": "sim",
        "wifi_password": "pw",
        "wifi_timeout_s": 1,
        "net_timeout_s": 1,
    },
    "devices": {"dep-1": {"mqtt_user": "dep-1", "mqtt_password": "secret-1"}},
}


@pytest.fixture
def pty_board(micropython: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    socat = shutil.which("socat")
    if not socat:
        pytest.fail("socat not found: apt-get install socat")
    flash = tmp_path / "flash"
    flash.mkdir()
    dev = tmp_path / "ttyV"
    p = subprocess.Popen(
        [socat, f"PTY,link={dev},raw,echo=0", f"EXEC:{micropython} -i,pty,setsid,ctty,stderr,raw,echo=0"],
        cwd=flash,
    )
    deadline = time.monotonic() + 5
    while not dev.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    yield dev, flash
    p.terminate()
    p.wait(5)


@pytest.mark.parametrize("compiled", [False, True])
def test_deploy_through_a_pty(
    pty_board,
    micropython: str,
    tmp_path: Path,  # type: ignore[no-untyped-def]
    compiled: bool,
) -> None:
    dev, flash = pty_board
    fleet = tmp_path / "fleet.json"
    fleet.write_text(json.dumps(FLEET))
    cmd = [
        sys.executable,
        str(REPO / "scripts" / "deploy.py"),
        "--port",
        str(dev),
        "--fleet",
        str(fleet),
        "--device",
        "dep-1",
    ]
    if compiled:
        cmd.append("--compile")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    names = set(os.listdir(flash))
    ext = ".mpy" if compiled else ".py"
    assert {
        "boot.py",
        "main.py",
        "config_local.py",
        "secrets.py",
        "app" + ext,
        "codec" + ext,
        "buffer" + ext,
        "mqtt" + ext,
        "uplink" + ext,
    } <= names
    assert "secret-1" in (flash / "secrets.py").read_text()
    assert "secret-1" not in (flash / "config_local.py").read_text()

    # the deployed tree starts: one wake under the shims, ending in deep sleep
    hw = tmp_path / "hw"
    hw.mkdir()
    (hw / "hw.json").write_text(json.dumps({"reset_cause": 1, "rtc_set_vt": 0, "rtc_set_val": 946684800000}))
    (hw / "scenario.json").write_text(json.dumps({"values": {"temp_c": 22.5, "rh": 40.0}}))
    env = dict(os.environ, MICROPYPATH=f"{flash}:{flash}/lib:.frozen", EDGEKIT_SIM=str(hw))
    env.pop("EDGEKIT_CLOCK", None)
    run = subprocess.run(
        [micropython, "-X", "heapsize=112K", str(SHIMS / "start.py")],
        cwd=flash,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Traceback" not in run.stdout, run.stdout
    assert "EK read 1 0" in run.stdout and "EK sleep" in run.stdout, run.stdout
    assert json.loads((hw / "sleep.json").read_text())["ms"] > 200_000
