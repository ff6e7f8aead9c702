"""Throughput of anomaly detection alone (no MQTT, no sinks), on one core.

Reproduce (from the repository root)::

    python bench/bench_anomaly.py                     # 1,000 devices x 3 metrics, 100 readings each
    python bench/bench_anomaly.py -n 50               # quicker
    python bench/bench_anomaly.py --against main -r 5 # side by side with another revision, 5 rounds
    python bench/bench_anomaly.py --against main --builds -r 5  # ... this tree both pure and compiled
    python bench/bench_anomaly.py --against /path/to/checkout --builds -r 5  # ... and that checkout compiled

Each device sends batches of 20 readings; the time is that of ``AnomalyEngine.process`` only (scoring,
learning and writing the ``anomaly`` points), for the ``ewma`` baseline univariate (``multivariate =
false``), with the per-device multivariate score, for the ``window`` baseline, and as ``bench/bench_e2e.py``'s
example configuration has it (``temp_c`` and ``vib`` scored, the multivariate score over the two, only
anomalous points written). State is the size of the engine's JSON snapshot. ``--against REV`` runs the same
workload on ``gateway/`` of that git revision (in a subprocess, from a temporary copy), alternating with this
tree round by round, and prints each variant's median and spread (min-max) over the rounds, of the wall-clock
time and of the process's CPU time (on a machine shared with other work the CPU time is the steadier: waiting
for a core is not counted). With
``--builds`` this tree runs twice a round, with ``EDGEKIT_ENGINE=pure`` and ``EDGEKIT_ENGINE=compiled`` (the
mypyc build of ``scripts/build_compiled.py``, which must be there); the other revision runs as its ``gateway/``
is in git, pure. ``--against`` a directory (a checkout with its own build) runs that checkout as it is, and with
``--builds`` its compiled build (``EDGEKIT_ENGINE=compiled``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_704_067_200_000
VARIANTS = {
    "ewma": {"multivariate": False},
    "ewma+mv": {},
    "window": {"baseline": "window", "multivariate": False},
    "example": {"metrics": ["temp_c", "vib"], "write": "flagged"},
}


def batches(devices: int, per_device: int) -> list[list[object]]:
    from gateway.model import Reading

    rng = random.Random(1)
    out: list[list[object]] = []
    for start in range(0, per_device, 20):
        for d in range(devices):
            rows = [
                Reading("s", f"dev-{d:04d}", 1, i, T0 + i * 60_000, "s",
                        {"temp_c": 20 + rng.gauss(0, 0.2), "rh": 50 + rng.gauss(0, 1), "vib": abs(rng.gauss(0, 0.05))})
                for i in range(start, min(per_device, start + 20))
            ]  # fmt: skip
            out.append(rows)
    return out


def measure(devices: int, readings: int) -> dict[str, tuple[float, int, float]]:
    """us per value (wall clock), snapshot bytes and us per value of the process's CPU time, of each variant
    (the code imported from ``sys.path``). On a shared machine the CPU time is the steadier of the two."""
    from gateway.anomaly import AnomalyEngine, AnomalySpec, parse_anomaly

    has_mv = "multivariate" in AnomalySpec.__dataclass_fields__
    work = batches(devices, readings)
    values = sum(len(b) for b in work) * 3
    out = {}
    for name, section in VARIANTS.items():
        if not has_mv:  # an older revision: no multivariate score, its single-metric variants as they are
            if name == "ewma+mv":
                continue
            section = {k: v for k, v in section.items() if k != "multivariate"}
        eng = AnomalyEngine(parse_anomaly({"anomaly": section}))
        now = T0 + readings * 60_000
        start, cpu = time.perf_counter(), time.process_time()
        for b in work:
            eng.process(b, now)  # type: ignore[arg-type]
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        out[name] = (elapsed / values * 1e6, len(json.dumps(eng.snapshot())), cpu / values * 1e6)
    return out


def _child(path: str, devices: int, readings: int) -> None:
    sys.path.insert(0, path)
    print(json.dumps(measure(devices, readings)))


def _run(path: Path, devices: int, readings: int, build: str = "") -> dict[str, list[float]]:
    """``measure`` in a subprocess on the ``gateway/`` at ``path`` (``build``: its ``EDGEKIT_ENGINE``)."""
    code = f"import sys; sys.path.insert(0, {str(ROOT / 'bench')!r}); import bench_anomaly as b; "
    code += f"b._child({str(path)!r}, {devices}, {readings})"
    env = {**os.environ, "EDGEKIT_ENGINE": build} if build else None
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=path, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-d", "--devices", type=int, default=1000)
    parser.add_argument("-n", "--readings", type=int, default=100, help="readings per device")
    parser.add_argument("--against", help="a git revision, or a checkout's directory, to measure side by side")
    parser.add_argument("-r", "--rounds", type=int, default=3)
    parser.add_argument("--builds", action="store_true", help="with --against: this tree pure and compiled")
    args = parser.parse_args()
    values = args.devices * args.readings * 3
    if not args.against:
        sys.path.insert(0, str(ROOT))
        for name, (us, state, cpu) in measure(args.devices, args.readings).items():
            print(f"{name:>8}: {values:,} values ({args.devices} devices x 3 metrics): {us:.1f} us each "
                  f"({cpu:.1f} us of CPU), {1e6 / us:,.0f} values/s; state {state / 1e6:.2f} MB JSON")  # fmt: skip
        return
    with tempfile.TemporaryDirectory() as tmp:
        if Path(args.against).is_dir():  # a checkout with its own build
            other, label, other_build = Path(args.against), Path(args.against).name, "compiled"
        else:  # a revision: its gateway/ from git, pure
            archive = subprocess.run(["git", "archive", args.against, "gateway"], cwd=ROOT, check=True,
                                     capture_output=True).stdout  # fmt: skip
            tarfile.open(fileobj=BytesIO(archive)).extractall(tmp, filter="data")
            other, label, other_build = Path(tmp), args.against, "pure"
        runs = [("this tree", ROOT, ""), (label, other, "")]
        if args.builds:
            runs = [("pure", ROOT, "pure"), ("compiled", ROOT, "compiled"), (label, other, other_build)]
        results: dict[str, dict[str, list[float]]] = {label: {} for label, _, _ in runs}
        cpus: dict[str, dict[str, list[float]]] = {label: {} for label, _, _ in runs}
        for _ in range(args.rounds):
            for label, path, build in runs:
                for name, (us, _state, *cpu) in _run(path, args.devices, args.readings, build).items():
                    results[label].setdefault(name, []).append(us)
                    cpus[label].setdefault(name, []).append(cpu[0] if cpu else math.nan)
        print(
            f"{values:,} values per variant ({args.devices} devices x 3 metrics), {args.rounds} rounds, us per value:"
        )
        for label, per in results.items():
            for name, xs in per.items():
                cs = cpus[label][name]
                print(f"  {label:>10} {name:>8}: median {statistics.median(xs):5.1f}  min {min(xs):5.1f}  "
                      f"max {max(xs):5.1f}   CPU time: median {statistics.median(cs):5.1f}  min {min(cs):5.1f}  "
                      f"max {max(cs):5.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
