"""Fleet soak: the real firmware on simulated ESP32 boards (MicroPython unix port, RC-oscillator RTCs) for days
of virtual time, through a real Mosquitto and the real gateway into a real InfluxDB 1.x, under the issue-17
faults: a half-open broker for an hour, NTP blocked for a day, one lying NTP server, a broker outage of six
hours, brown-outs, watchdog resets and power losses, a low battery and a flash log too small for the outage
(sim/board/soak.py, Plan.standard).

    python bench/soak_fleet.py --boards 20 --days 7      # the full soak (hours of wall time)
    python bench/soak_fleet.py --boards 4 --days 1       # a quick look

Prints per board and for the fleet: readings taken (by the world's count), arrived in InfluxDB, lost to a
power loss, still buffered, dropped as the board counted them (overflow / untimed), the event-time error per
clock quality against the documented bound, radio-on seconds per day against the power budget, resets by
cause and wakes. Exits 1 if any reading is unaccounted for, arrived twice or outside the bound, or a board
hung, looped or overran its radio budget.

Needs the MicroPython unix port, mpy-cross, mosquitto and influxd (scripts/setup.sh).
"""

from __future__ import annotations

import argparse
import pickle
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

import services  # scripts/services.py

from sim.board.soak import Mosquitto, Plan, Soak, report


def main() -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop Mosquitto and InfluxDB on a kill too
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--boards", type=int, default=20)
    ap.add_argument("--days", type=float, default=7)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--root", default=None, help="keep the boards' files here (default: a temporary dir, removed)")
    a = ap.parse_args()
    root = Path(a.root) if a.root else Path(tempfile.mkdtemp(prefix="edgekit-soak-"))
    root.mkdir(parents=True, exist_ok=True)
    broker = Mosquitto(root / "mosquitto")
    broker.start()
    http_port, rpc_port = services.free_ports(2)
    influx = services.start_influxdb(root / "services", http_port, rpc_port, database="soak")
    t0 = time.monotonic()
    try:
        plan = Plan.standard(a.boards, a.days, a.seed)
        print(f"soak: {plan}", flush=True)
        soak = Soak(root / "run", plan, broker, influx.url, "soak", progress=lambda s: print(s, flush=True))
        res = soak.run()
    finally:
        broker.stop()
        influx.stop()
    if a.root:  # the result itself, to print it again (python -c "import pickle; ...; print(report(r))")
        with (root / "result.pkl").open("wb") as f:
            pickle.dump(res, f)
    print(report(res))
    print(f"total wall time {time.monotonic() - t0:.0f} s")
    if not a.root:
        shutil.rmtree(root, ignore_errors=True)
    return 1 if res.violations else 0


if __name__ == "__main__":
    sys.exit(main())
