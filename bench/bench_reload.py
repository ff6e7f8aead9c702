"""How long a reload holds the gateway's input, and how long it stalls its event loop.

Reproduce (from the repository root)::

    python bench/bench_reload.py                 # 1,000 devices, 60 readings each, 5 runs
    python bench/bench_reload.py -d 5000 -r 3

The state is bench_checkpoint.py's (the example patterns, three windows over three metrics, anomaly detection),
warmed up with ``-n`` readings per device. The new file changes one window (``t1m``: 1 min -> 2 min) and adds a
pattern; the rest is kept. ``Gateway.reload()`` runs in an event loop beside a heartbeat task that sleeps 1 ms at a
time (its lag: each gap between two heartbeats less the 1 ms). Printed, median, min and max over ``-r`` runs, each
on a freshly warmed gateway: the whole reload (reading the file, building the new pipeline in a worker thread
while inputs wait, the checkpoint after it, which writes every row), the time inputs wait (the build), the event
loop's longest stall during the build and during the whole reload, and a whole snapshot of the same state alone
on the loop (what the build does first, and what a synchronous build would have stalled the loop for at least).
``--ab``: every other run with the collector left on during the build and the checkpoint (as before the gateway
paused it for a reload), the two printed apart.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_checkpoint import EXTRA_TOML, ROOT, config, warm_up

import gateway.app
from gateway.app import Gateway
from gateway.engine import ENGINE_BUILD

T0 = 1_764_072_000_000
NEW_PATTERN = """
[[patterns]]
name = "very_hot"

[[patterns.steps]]
name = "hot"
where = "temp_c > 90"
"""


async def one(devices: int, readings: int, tmp: Path, path: Path) -> tuple[float, float, float, float, float]:
    gw = Gateway(config(tmp), now_ms=lambda: T0 + 3_600_000, config_path=path)
    try:
        warm_up(gw, devices, readings, T0)
        await gw.checkpoint()
        gw.started.set()  # driven by hand: no broker; InfluxDB never written to (the sink is not started)
        t = time.perf_counter()
        gw.pipeline.snapshot()
        snapshot = time.perf_counter() - t
        built: list[tuple[float, float]] = []
        build = gw._build

        def timed(*args: object) -> object:
            t = time.perf_counter()
            try:
                return build(*args)  # type: ignore[arg-type]
            finally:
                built.append((t, time.perf_counter()))

        gw._build = timed  # type: ignore[assignment,method-assign]
        gaps: list[tuple[float, float]] = []
        done = False

        async def heartbeat() -> None:
            while not done:
                t = time.perf_counter()
                await asyncio.sleep(0.001)
                gaps.append((t, time.perf_counter()))

        beat = asyncio.create_task(heartbeat())
        await asyncio.sleep(0.01)
        t = time.perf_counter()
        res = await gw.reload()
        whole = time.perf_counter() - t
        done = True
        await beat
        assert res.ok, res.message
        (b0, b1), lag = built[0], 0.001
        stall = max(g1 - g0 - lag for g0, g1 in gaps)
        during = max((g1 - g0 - lag for g0, g1 in gaps if g1 > b0 and g0 < b1), default=0.0)
        return whole, b1 - b0, during, stall, snapshot
    finally:
        gw.store.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-d", "--devices", type=int, default=1000)
    ap.add_argument("-n", "--readings", type=int, default=60, help="readings per device before the reload")
    ap.add_argument("-r", "--runs", type=int, default=5)
    ap.add_argument("--ab", action="store_true", help="alternate runs with the collector not paused")
    args = ap.parse_args()
    rows: list[tuple[float, float, float, float, float]] = []
    unpaused: list[tuple[float, float, float, float, float]] = []
    real_gc = gateway.app.gc
    on = types.SimpleNamespace(isenabled=gc.isenabled, disable=lambda: None, enable=gc.enable)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        # the file the reload reads: bench_checkpoint's configuration, changed; the rest as config() sets it
        text = (ROOT / "gateway" / "examples" / "gateway.toml").read_text() + EXTRA_TOML + NEW_PATTERN
        text = text.replace(
            'name = "t1m"\nkind = "tumbling"\nsize = "1m"', 'name = "t1m"\nkind = "tumbling"\nsize = "2m"'
        )
        path = tmp / "new.toml"
        path.write_text(text)
        os.environ.update(
            EDGEKIT_MQTT_CLIENT_ID="bench-checkpoint",
            EDGEKIT_INFLUX_URL="http://127.0.0.1:9",
            EDGEKIT_STATE_DIR=str(tmp),
        )
        print(f"engine: {ENGINE_BUILD}; {args.devices} devices x {args.readings} readings")
        for _ in range(args.runs):
            for variant in (rows, unpaused) if args.ab else (rows,):
                gateway.app.gc = on if variant is unpaused else real_gc  # type: ignore[assignment]
                variant.append(asyncio.run(one(args.devices, args.readings, tmp, path)))
                gateway.app.gc = real_gc
            for f in tmp.glob("*.db*"):  # the next run starts from an empty state file
                f.unlink()
    print("reload: t1m 1 min -> 2 min (restarted), pattern very_hot added, the rest kept")
    names = ("whole reload", "inputs wait (build)", "loop stall during the build", "loop stall, whole reload",
             "snapshot alone")  # fmt: skip
    for label, runs in (("", rows), ("collector not paused: ", unpaused)):
        for i, name in enumerate(names if runs else ()):
            xs = [r[i] * 1000 for r in runs]
            med = statistics.median(xs)
            print(f"{label}{name:<28} median {med:8.1f} ms  min {min(xs):8.1f}  max {max(xs):8.1f}  ({len(xs)} runs)")


if __name__ == "__main__":
    main()
