"""Issue 21's "first hour" and defect 1: `make demo` on a machine whose default ports are taken.

In a network namespace of its own (``unshare -n``: its loopback is private, so the default ports are free for
the test to take, and nothing here touches the machine's), a foreign Mosquitto holds 1883 and a foreign
InfluxDB 8086 and 8088, with a database named like the demo's holding a point of its own. Then the user types
``make demo`` (with a small fleet). It must say, before any set-up, that those ports are taken and which it uses
instead, run on them, and leave the foreign InfluxDB exactly as it was.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SMALL = "DEMO_ARGS=--devices 4 --readings 40 --rate 0 --no-report"


def first_hour(tmp_path: Path, *make_args: str) -> dict[str, object]:
    unshare = shutil.which("unshare")
    assert unshare, "unshare (util-linux) is missing"
    driver = REPO / "tests" / "first_hour.py"
    done = subprocess.run(
        [unshare, "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", sys.executable, str(driver),
         str(tmp_path), *make_args],
        capture_output=True,
        text=True,
        timeout=400,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.integration
def test_make_demo_with_its_ports_taken_moves_before_setup_and_never_touches_the_foreign_influxdb(
    tmp_path: Path,
) -> None:
    r = first_hour(tmp_path, SMALL)
    out = str(r["out"]) + str(r["err"])
    assert r["code"] == 0, out
    lines = out.splitlines()
    setup_at = next(i for i, line in enumerate(lines) if line.startswith("==> system packages"))
    # one line for each port taken, before the set-up begins (the demo script says them again as it starts)
    moved = [i for i, line in enumerate(lines[:setup_at]) if "in use by another program" in line]
    assert len(moved) == 3, out
    ports = {}
    for i in moved:
        m = re.search(
            r"port (\d+) is in use by another program: the demo's (\S+) uses (\d+) instead \((\w+)=", lines[i]
        )
        assert m, lines[i]
        ports[int(m[1])] = (m[2], int(m[3]), m[4])
    assert set(ports) == {1883, 8086, 8088}
    assert ports[1883][2] == "EDGEKIT_DEMO_MQTT_PORT" and ports[8086][2] == "EDGEKIT_DEMO_INFLUX_PORT"
    # the demo ran on the ports it said, read its readings back from its own InfluxDB
    assert "every valid reading found exactly once" in out, out
    assert f"http://127.0.0.1:{ports[8086][1]}/query" in out and "8086/query" not in out
    # the foreign InfluxDB: the same databases, measurements and points as before
    assert r["before"] == r["after"], (r["before"], r["after"])


@pytest.mark.integration
def test_make_demo_with_a_chosen_port_taken_says_how_in_one_line_before_setup(tmp_path: Path) -> None:
    r = first_hour(tmp_path, SMALL, "EDGEKIT_DEMO_MQTT_PORT=1883")
    out = str(r["out"]) + str(r["err"])
    assert r["code"] != 0
    assert "==> system packages" not in out, "no set-up ran"
    said = [line for line in out.splitlines() if "EDGEKIT_DEMO_MQTT_PORT" in line]
    assert len(said) == 1 and "127.0.0.1:1883 (EDGEKIT_DEMO_MQTT_PORT) is in use by another program" in said[0], out
    assert "make demo EDGEKIT_DEMO_MQTT_PORT=" in said[0]
    assert r["before"] == r["after"]
