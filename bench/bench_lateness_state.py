#!/usr/bin/env python3
"""What allowed lateness costs in state: ``edgekit-gateway plan`` for one fleet and three lateness values.

500 boards reading every minute in batches of ten, one 10-minute tumbling window over temp_c and rh
(count, mean, min, max), a 30 s out-of-orderness bound; allowed lateness 0 s, 30 min and 2 h. Runs the real
pipeline through the ``plan`` command (3 h of event time after its warm-up) and prints its summary lines; the
numbers are in docs/concepts.md ("Choosing out_of_orderness and allowed_lateness").

    python bench/bench_lateness_state.py [--devices 500] [--hours 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

CONFIG = """[engine.watermark]
out_of_orderness = "30s"

[[windows]]
name = "temp_10m"
kind = "tumbling"
size = "10m"
metrics = ["temp_c", "rh"]
aggregates = ["count", "mean", "min", "max"]
allowed_lateness = "{lateness}"
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--devices", type=int, default=500)
    ap.add_argument("--hours", type=float, default=3.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-") as tmp:
        for lateness in ("0s", "30m", "2h"):
            cfg = Path(tmp) / f"plan-{lateness}.toml"
            cfg.write_text(CONFIG.format(lateness=lateness), encoding="utf-8")
            cmd = [sys.executable, "-m", "gateway", "plan", "--config", str(cfg), "--devices", str(args.devices),
                   "--interval", "1m", "--hours", str(args.hours)]  # fmt: skip
            done = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=Path(__file__).parent.parent)
            keep = [x for x in done.stdout.splitlines() if x.startswith(("window:", "state:", "  total"))]
            print(f"allowed_lateness {lateness}:")
            print("\n".join(f"  {x.strip()}" for x in keep))
    return 0


if __name__ == "__main__":
    sys.exit(main())
