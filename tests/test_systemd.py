"""The service unit passes ``systemd-analyze verify`` (no warning at all) and is hardened; its commands work.

The unit names /opt/edgekit/venv/bin/edgekit-gateway, which ``verify`` requires to be executable; the test
points that one path at a launcher of this checkout (``python -m gateway``) and changes nothing else.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "deploy" / "systemd" / "edgekit-gateway.service"
INSTALLED = "/opt/edgekit/venv/bin/edgekit-gateway"


@pytest.fixture
def unit(tmp_path: Path) -> Path:
    launcher = tmp_path / "edgekit-gateway"
    launcher.write_text(f'#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} -m gateway "$@"\n', encoding="utf-8")
    launcher.chmod(0o755)
    text = UNIT.read_text(encoding="utf-8")
    assert text.count(INSTALLED) >= 2
    out = tmp_path / UNIT.name
    out.write_text(text.replace(INSTALLED, str(launcher)), encoding="utf-8")
    return out


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("systemd-analyze")
    assert binary, "systemd-analyze is missing: apt-get install systemd"
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=60)


def test_systemd_analyze_verify_is_silent(unit: Path) -> None:
    done = analyze("verify", str(unit))
    assert done.returncode == 0 and done.stdout + done.stderr == "", done.stdout + done.stderr


def test_verify_would_catch_a_mistake(unit: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad" / unit.name
    bad.parent.mkdir()
    bad.write_text(unit.read_text().replace("Restart=on-failure", "Restartt=on-failure"), encoding="utf-8")
    done = analyze("verify", str(bad))
    assert "Unknown key 'Restartt'" in done.stderr


def test_unit_is_hardened(unit: Path) -> None:
    done = analyze("security", "--offline=yes", str(unit))
    level = re.search(r"Overall exposure level for \S+: ([\d.]+)", done.stdout)
    assert level, done.stdout + done.stderr
    assert float(level[1]) <= 2.0, done.stdout
    text = UNIT.read_text(encoding="utf-8")
    for setting in (
        "DynamicUser=yes",
        "StateDirectory=edgekit",
        "EnvironmentFile=-/etc/edgekit/gateway.env",
        "Restart=on-failure",
        "RestartPreventExitStatus=2 3",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
    ):
        assert re.search(rf"^{re.escape(setting)}$", text, re.M), setting


def test_no_restart_on_the_exit_codes_that_a_restart_cannot_fix() -> None:
    """A configuration error (2) and a damaged or unusable state file (3) stop the unit instead of a restart
    loop: every such exit code of the CLI is in RestartPreventExitStatus, and the CLI documents them."""
    from gateway.cli import EXIT_STATE, build_parser

    prevent = re.search(r"^RestartPreventExitStatus=(.+)$", UNIT.read_text(encoding="utf-8"), re.M)
    assert prevent and {2, EXIT_STATE} <= {int(c) for c in prevent[1].split()}
    epilog = build_parser().epilog or ""
    assert f"{EXIT_STATE} state file unusable" in epilog and "2 usage or configuration error" in epilog


def test_the_unit_commands_run_with_the_shipped_configuration(unit: Path) -> None:
    """ExecStartPre (check) succeeds on deploy/systemd/gateway.toml placed where the unit reads it."""
    lines = dict(re.findall(r"^(ExecStartPre|ExecStart)=(.+)$", unit.read_text(encoding="utf-8"), re.M))
    pre = shlex.split(lines["ExecStartPre"])
    shipped = str(REPO / "deploy" / "systemd" / "gateway.toml")
    cmd = [shipped if a == "/etc/edgekit/gateway.toml" else a for a in pre]
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEKIT_")}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "InfluxDB 1.x at http://127.0.0.1:8086, database 'edgekit'" in done.stdout
    assert "window:    temp_10m" in done.stdout
    run = shlex.split(lines["ExecStart"])
    assert run[1:] == ["run", "--config", "/etc/edgekit/gateway.toml", "--stats-file", "/run/edgekit/stats.json"]
