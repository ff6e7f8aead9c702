"""Writing the firmware to a board: mpremote's ``fs cp`` (256-byte steps as repr()) against scripts/deploy.py's
writer (3 KB steps as base64), side by side on the same board, alternating, several rounds.

    .venv/bin/python bench/bench_deploy.py [--rounds 5]

The board is the MicroPython unix port on a socat pseudo-terminal (as in tests/firmware/test_fleet_path.py), at
its REPL; each round removes the files, then writes the whole build once with each method (in alternating order),
for the source build and for the compiled one. Prints the median and the spread (min-max) of the seconds each
took. A real ESP32 at 115200 baud adds the wire's own time (about 11 KB/s) to both.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO))

deploy: Any = importlib.import_module("deploy")  # scripts/deploy.py (not the deploy/ directory)


def board(tmp: Path) -> tuple[subprocess.Popen[bytes], Path, Path]:
    from sim.board.runner import find_micropython

    flash, dev = tmp / "flash", tmp / "tty"
    flash.mkdir()
    mp = find_micropython()
    p = subprocess.Popen(
        ["socat", f"PTY,link={dev},raw,echo=0", f"EXEC:{mp} -i,pty,setsid,ctty,stderr,raw,echo=0"], cwd=flash
    )
    while not dev.exists():
        time.sleep(0.02)
    time.sleep(0.3)
    return p, flash, dev


def clear(flash: Path) -> None:
    for n in os.listdir(flash):
        (flash / n).unlink()


def with_mpremote(dev: Path, files: list[Path]) -> float:
    cmd = ["mpremote", "connect", str(dev), "resume"]
    for f in files:
        cmd += ["fs", "cp", str(f), f":{f.name}", "+"]
    t0 = time.perf_counter()
    subprocess.run(cmd[:-1], check=True, capture_output=True)
    return time.perf_counter() - t0


def with_deploy(dev: Path, files: list[Path]) -> float:
    t0 = time.perf_counter()
    b = deploy.Board(str(dev), 10)
    try:
        for f in files:
            b.write(f.name, f.read_bytes())
    finally:
        b.close()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-deploy-") as t:
        tmp = Path(t)
        proc, flash, dev = board(tmp)
        try:
            for compiled in (False, True):
                out = tmp / ("mpy" if compiled else "py")
                out.mkdir()
                files = deploy.build(out, {"device": "b"}, {}, None, compiled, None)
                size = sum(f.stat().st_size for f in files)
                times: dict[str, list[float]] = {"mpremote fs cp": [], "deploy.py": []}
                for r in range(a.rounds):
                    order = list(times) if r % 2 == 0 else list(reversed(times))
                    for name in order:
                        clear(flash)
                        fn = with_mpremote if name == "mpremote fs cp" else with_deploy
                        times[name].append(fn(dev, files))
                kind = "compiled" if compiled else "source"
                print(f"{kind}: {len(files)} files, {size} bytes, {a.rounds} rounds")
                for name, ts in times.items():
                    print(f"  {name:15s} median {statistics.median(ts):6.2f} s  spread {min(ts):.2f}-{max(ts):.2f} s")
                shutil.rmtree(out)
        finally:
            proc.terminate()
            proc.wait(5)


if __name__ == "__main__":
    main()
