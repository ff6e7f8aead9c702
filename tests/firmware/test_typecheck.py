"""The firmware type-checks against micropython-esp32-stubs (kept in .run/esp32-stubs, not in the gateway's
environment), with mypy and firmware/mypy.ini, through scripts/typecheck_firmware.sh. Missing stubs or a
missing checker fail the test; it never skips."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sim.board.runner import REPO

from .conftest import FIRMWARE

SCRIPT = REPO / "scripts" / "typecheck_firmware.sh"
STUBS = REPO / ".run" / "esp32-stubs"


def run_check(*args: str) -> subprocess.CompletedProcess[str]:
    if importlib.util.find_spec("mypy") is None:
        pytest.fail(f"mypy not installed for {sys.executable}: pip install mypy (it is in the dev extras)")
    env = dict(os.environ, PYTHON=sys.executable)
    return subprocess.run(["sh", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=600)


def test_firmware_typechecks_against_esp32_stubs() -> None:
    r = run_check()
    assert r.returncode == 0, f"firmware type check failed:\n{r.stdout}{r.stderr}"
    assert (STUBS / "machine.pyi").exists() and (STUBS / "stdlib" / "builtins.pyi").exists()
    n = len(list(FIRMWARE.glob("*.py")))
    assert f"no issues found in {n} source files" in r.stdout, r.stdout


def test_checker_sees_micropython_not_cpython(tmp_path: Path) -> None:
    """The same configuration rejects code that is wrong for MicroPython: the stubs are really in use
    (not silently replaced by Any), and CPython's typeshed is not."""
    r = run_check("--install")
    assert r.returncode == 0, r.stdout + r.stderr
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import time\nimport machine\n"
        "a = time.ticks_ms(1)\n"  # MicroPython-only function, wrong arity
        "b = time.perf_counter()\n"  # CPython-only
        "machine.RTC().memory(1, 2)\n"
    )
    r = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(FIRMWARE / "mypy.ini"), str(bad)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert 'Too many arguments for "ticks_ms"' in out, out
    assert 'has no attribute "perf_counter"' in out, out
    assert 'No overload variant of "memory" of "RTC"' in out, out
