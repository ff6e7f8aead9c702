"""``bench/bench_e2e.py`` stopped from outside (SIGTERM, as ``kill`` and ``timeout`` send it) stops what it started:
its Mosquitto, its InfluxDB, its gateway and its publishers. Before, a SIGTERM ended the benchmark without its
clean-up and left them running, taking the machine's CPU from whatever was measured next."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def descendants(pid: int) -> set[int]:
    out: set[int] = set()
    todo = [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            for c in map(int, children):
                if c not in out:
                    out.add(c)
                    todo.append(c)
    return out


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def names(pids: set[int]) -> set[str]:
    out = set()
    for p in pids:
        try:
            out.add(Path(f"/proc/{p}/comm").read_text().strip())
        except OSError:
            pass
    return out


@pytest.mark.integration
def test_a_sigterm_stops_the_services_and_the_gateway_it_started() -> None:
    cmd = [sys.executable, str(REPO / "bench" / "bench_e2e.py"), "latency", "--rounds", "1", "--seconds", "60"]
    cmd += ["--rate", "200", "--publishers", "1", "--boards", "20", "--core", "-1"]
    bench = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    started: set[int] = set()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # until the services and the gateway run
            started |= descendants(bench.pid)
            if {"mosquitto", "influxd"} <= names(started) and any(
                b"gateway" in Path(f"/proc/{p}/cmdline").read_bytes() for p in started if alive(p)
            ):
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"the benchmark did not start its services and gateway: {names(started)}")
        time.sleep(1.0)
        started |= descendants(bench.pid)
        bench.send_signal(signal.SIGTERM)
        assert bench.wait(timeout=60) != 0
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(alive(p) for p in started):
            time.sleep(0.2)
        assert not [p for p in started if alive(p)], names({p for p in started if alive(p)})
    finally:  # nothing of it outlives the test, whatever happened
        if bench.poll() is None:
            started |= descendants(bench.pid)
            bench.kill()
            bench.wait(timeout=30)
        for p in started:
            if alive(p):
                os.kill(p, signal.SIGKILL)
