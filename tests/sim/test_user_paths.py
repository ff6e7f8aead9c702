"""The simulator as a newcomer uses it (issue 21): ``edgekit-sim`` commands as typed in a shell, their output
and exit codes checked.

- ``simulate --gateway-config`` applies the whole configuration (patterns, anomaly detection), and a verdict
  fails when an alert the scenario expects is missing;
- ``run --truth`` writes a truth file that ``verify`` and ``report`` read;
- ``run`` and ``simulate`` name their boards apart, and ``verify`` says when another run's readings of the same
  devices were in the database first.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
EXAMPLE = ROOT / "gateway" / "examples" / "gateway.toml"
START = "1764072000000"  # a fixed event time, so each run is the same


def sim(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``edgekit-sim ARGS`` as a user runs it (the console script of the checkout's venv, else ``python -m sim``)."""
    exe = Path(sys.executable).with_name("edgekit-sim")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "sim"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEKIT_")}
    return subprocess.run([*cmd, *args], cwd=cwd, capture_output=True, text=True, timeout=120, env=env)


def table_row(out: str, output: str) -> list[int]:
    """The numbers of one output's row in the verdict table."""
    for line in out.splitlines():
        words = line.split()
        if words and words[0] == output and all(w.isdigit() for w in words[1:]) and len(words) > 2:
            return [int(w) for w in words[1:]]
    raise AssertionError(f"no {output!r} row in:\n{out}")


# --- defect 5: the whole gateway configuration, and alerts in the verdict --------------------------------------


def test_simulate_with_the_example_configuration_raises_the_pattern_alerts(tmp_path: Path) -> None:
    p = sim("simulate", "pattern-sequences", "--in-process", "--start-ms", START, "--gateway-config", str(EXAMPLE),
            "--truth", "t.json", "--report", "r.html", cwd=tmp_path)  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
    # three sequences should raise an alert (two doors left open, three FAILED), two near misses none
    expected, found, missing, extra = table_row(p.stdout, "alert")[:4]
    assert (expected, found, missing, extra) == (3, 3, 0, 0), p.stdout
    assert "verdict: OK" in p.stdout
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "3 alerts raised by the gateway" in page


def test_a_verdict_fails_when_the_configuration_cannot_raise_the_expected_alerts(tmp_path: Path) -> None:
    # a configuration without [anomaly] and without the scenario's patterns: nothing can raise their alerts
    cfg = tmp_path / "windows-only.toml"
    cfg.write_text(
        '[metric_types]\nstring = ["door", "status"]\n\n'
        '[[windows]]\nname = "t5"\nkind = "tumbling"\nsize = "5m"\nmetrics = ["temp_c"]\n'
    )
    p = sim("simulate", "sensor-faults", "--in-process", "--start-ms", START, "--gateway-config", str(cfg),
            cwd=tmp_path)  # fmt: skip
    assert p.returncode == 1, p.stdout + p.stderr
    expected, found, missing = table_row(p.stdout, "alert")[:3]
    assert expected > 0 and found == 0 and missing == expected, p.stdout
    assert "MISMATCH" in p.stdout
    assert "no [anomaly] section" in p.stdout  # the likely cause, named
    q = sim("simulate", "pattern-sequences", "--in-process", "--start-ms", START, "--gateway-config", str(cfg),
            cwd=tmp_path)  # fmt: skip
    assert q.returncode == 1, q.stdout + q.stderr
    assert "no pattern named 'door_left_open'" in q.stdout


def test_the_fault_scenarios_carry_their_detection_and_pass_as_shipped(tmp_path: Path) -> None:
    for name in ("sensor-faults", "pattern-sequences"):
        p = sim("simulate", name, "--in-process", "--start-ms", START, cwd=tmp_path)
        assert p.returncode == 0, p.stdout + p.stderr
        expected, found, missing, extra = table_row(p.stdout, "alert")[:4]
        assert expected > 0 and found >= expected and missing == extra == 0, p.stdout
