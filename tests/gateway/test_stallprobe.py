"""bench/stallprobe (``bench_e2e.py latency --stalls``): what it says about a gateway's event loop has to be true
of a loop whose stalls are known - a callback that holds it 60 ms (named, with what it ran), short ones that are
not counted, and a full pass of the garbage collector over many objects."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

_LOOP = """
import asyncio, gc, time

def hold_the_loop():
    time.sleep(0.06)

async def main():
    loop = asyncio.get_running_loop()
    for _ in range(50):
        loop.call_soon(time.sleep, 0.001)  # short: not a stall
        await asyncio.sleep(0)
    loop.call_soon(hold_the_loop)
    await asyncio.sleep(0.1)
    keep = [[i] for i in range(600_000)]
    gc.collect()

asyncio.run(main())
"""


def test_the_stall_probe_records_what_held_the_loop_and_the_collectors_passes(tmp_path: Path) -> None:
    out = tmp_path / "stalls"
    env = {**os.environ, "PYTHONPATH": str(REPO / "bench" / "stallprobe"), "STALLPROBE_OUT": str(out)}
    subprocess.run([sys.executable, "-c", _LOOP], env=env, check=True, timeout=60)
    files = list(tmp_path.glob("stalls.*.json"))
    assert len(files) == 1, files
    got = json.loads(files[0].read_text(encoding="utf-8"))
    stalls = got["stalls"]
    assert len([s for s in stalls if "sleep" in s[2]]) < 10, stalls  # the 1 ms callbacks are not (a loaded CPU: a few)
    held = [s for s in stalls if "hold_the_loop" in s[2]]
    assert len(held) == 1, stalls
    _, took, _, stack = held[0]
    assert 0.055 <= took < 1.0
    assert stack and any(frame.startswith("hold_the_loop ") for frame in stack), stack
    assert "task main" in [s[2] for s in stalls]  # making the lists and collecting them
    assert any(g[2] == 2 for g in got["gc"]), got["gc"]  # the full collection over 600,000 lists


def test_the_stall_probe_does_nothing_unless_asked(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "STALLPROBE_OUT"}
    env["PYTHONPATH"] = str(REPO / "bench" / "stallprobe")
    probe = "import asyncio.events, sys; print(asyncio.events.Handle._run.__module__, 'sitecustomize' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, check=True, capture_output=True, text=True, cwd=tmp_path
    )
    assert done.stdout.split() == ["asyncio.events", "True"]
    assert list(tmp_path.iterdir()) == []
