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
from helpers import poll

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


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@pytest.mark.integration
def test_a_sigterm_stops_the_services_and_the_gateway_it_started() -> None:
    cmd = [sys.executable, str(REPO / "bench" / "bench_e2e.py"), "latency", "--rounds", "1", "--seconds", "60"]
    cmd += ["--rate", "200", "--publishers", "1", "--boards", "20", "--core", "-1"]
    bench = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    started: set[int] = set()

    def running() -> bool:  # its services and its gateway
        started.update(descendants(bench.pid))
        return {"mosquitto", "influxd"} <= names(started) and any(b"gateway" in cmdline(p) for p in started)

    try:
        assert poll(running, timeout=60, interval=0.2), f"the benchmark did not start them: {names(started)}"
        time.sleep(1.0)
        started |= descendants(bench.pid)
        bench.send_signal(signal.SIGTERM)
        assert bench.wait(timeout=60) != 0
        left = poll(lambda: {p for p in started if alive(p)}, until=lambda live: not live, timeout=20, interval=0.2)
        assert not left, names(left)
    finally:  # nothing of it outlives the test, whatever happened
        if bench.poll() is None:
            started |= descendants(bench.pid)
            bench.kill()
            bench.wait(timeout=30)
        for p in started:
            if alive(p):
                os.kill(p, signal.SIGKILL)
