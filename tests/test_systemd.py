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
    """The README's `check` of /etc/edgekit/gateway.toml succeeds on deploy/systemd/gateway.toml, with the unit's
    program, and the unit runs that configuration."""
    lines = dict(re.findall(r"^(ExecStart)=(.+)$", unit.read_text(encoding="utf-8"), re.M))
    shipped = str(REPO / "deploy" / "systemd" / "gateway.toml")
    cmd = [shlex.split(lines["ExecStart"])[0], "check", "--config", shipped]
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEKIT_")}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "InfluxDB 1.x at http://127.0.0.1:8086, database 'edgekit'" in done.stdout
    assert "window:    temp_10m" in done.stdout
    run = shlex.split(lines["ExecStart"])
    assert run[1:] == ["run", "--config", "/etc/edgekit/gateway.toml", "--stats-file", "/run/edgekit/stats.json"]


# --- issue 21, defect 4: a configuration error must not restart-loop -------------------------------------
# systemd.service(5): Restart=on-failure restarts the unit when any of its processes fails, ExecStartPre= ones
# included; RestartPreventExitStatus= lists exit statuses "returned by the main service process" that prevent
# the restart (systemd's service_shall_restart() compares only main_exec_status). So an ExecStartPre= that can
# exit 2 loops on a configuration error whatever RestartPreventExitStatus= says.


def _settings(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for key, value in re.findall(r"^(\w+)=(.*)$", text, re.M):
        out.setdefault(key, []).append(value)
    return out


def restarts(unit_text: str, process: str, code: int) -> bool:
    """systemd's decision, as documented, after ``process`` (an Exec* setting) exits with ``code``."""
    s = _settings(unit_text)
    restart = s.get("Restart", ["no"])[-1]
    prevent = {int(c) for v in s.get("RestartPreventExitStatus", []) for c in v.split()}
    if code == 0 or restart == "no":
        return False
    if process != "ExecStart":
        commands = s.get(process, [])
        if commands and all(c.startswith("-") for c in commands):  # "-": a failure is ignored, the start goes on
            return False
        return restart in ("on-failure", "always")
    return code not in prevent and restart in ("on-failure", "always")


def test_the_restart_model_reads_the_documented_rules() -> None:
    unit = "Restart=on-failure\nRestartPreventExitStatus=2 3\nExecStartPre=/bin/check\nExecStart=/bin/run\n"
    assert restarts(unit, "ExecStartPre", 2) and not restarts(unit, "ExecStart", 2) and restarts(unit, "ExecStart", 1)
    assert not restarts(unit.replace("=/bin/check", "=-/bin/check"), "ExecStartPre", 2)


def test_a_configuration_error_stops_the_unit_without_a_restart(unit: Path, tmp_path: Path) -> None:
    """Every command the unit runs, on a broken configuration: the first that fails, and whether systemd would
    restart after it (the README: "a configuration error, exit code 2, is not restarted in a loop")."""
    text = unit.read_text(encoding="utf-8")
    broken = tmp_path / "gateway.toml"
    broken.write_text('[influx]\nbatch_size = "many"\n', encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEKIT_")}
    for setting in ("ExecCondition", "ExecStartPre", "ExecStart"):
        for command in _settings(text).get(setting, []):
            argv = [str(broken) if a == "/etc/edgekit/gateway.toml" else a for a in shlex.split(command.lstrip("-"))]
            done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
            if done.returncode != 0 and not command.startswith("-"):
                assert done.returncode == 2 and "influx.batch_size" in done.stderr, done.stderr
                assert not restarts(text, setting, done.returncode), f"{setting} exits 2: systemd restarts the unit"
                return
    raise AssertionError("no command of the unit failed on a broken configuration")


def test_no_command_before_the_main_process_can_fail_the_start() -> None:
    """Only the main process's exit status is read by RestartPreventExitStatus=: nothing runs before it that
    could fail the unit (a '-' prefix would make a failure ignored)."""
    text = UNIT.read_text(encoding="utf-8")
    for setting in ("ExecCondition", "ExecStartPre", "ExecStartPost"):
        assert all(c.startswith("-") for c in _settings(text).get(setting, [])), setting


def test_the_reload_command_sends_sighup_to_the_main_process_with_the_shipped_configuration(unit: Path) -> None:
    """``systemctl reload``: ExecReload= runs with ``$MAINPID`` set; with the shipped configuration (no metrics
    endpoint) the command sends the gateway SIGHUP, which ``run`` takes as a reload."""
    lines = dict(re.findall(r"^(ExecReload)=(.+)$", unit.read_text(encoding="utf-8"), re.M))
    cmd = shlex.split(lines["ExecReload"])
    assert cmd[1:] == ["reload", "--config", "/etc/edgekit/gateway.toml"]
    cmd[3] = str(REPO / "deploy" / "systemd" / "gateway.toml")
    main = subprocess.Popen(  # stands in for the gateway: says when it got SIGHUP
        [sys.executable, "-c", "import signal; signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGHUP]); "
         "print('ready', flush=True); signal.sigwait([signal.SIGHUP]); "
         "print('hup', flush=True)"],
        stdout=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        assert main.stdout is not None and main.stdout.readline() == "ready\n"
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEKIT_")} | {"MAINPID": str(main.pid)}
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
        assert done.returncode == 0, done.stderr
        assert f"sent SIGHUP to process {main.pid}" in done.stdout
        assert main.stdout.readline() == "hup\n" and main.wait(10) == 0
    finally:
        if main.poll() is None:
            main.kill()
