"""Pane storage as native columns: mypyc's ``librt.vecs`` against ``array`` columns and one object a pane, the three
compiled with mypyc the same way (the window engine's panes, docs/semantics.md "Panes as columns").

Reproduce (from the repository root; builds a small module in a temporary folder, about 30 s)::

    python bench/bench_columns.py            # 200,000 panes, 5 repetitions
    python bench/bench_columns.py -n 1000000

Each store keeps a pane's start (an integer) and one value (a float) and is measured, per pane, on: appending
one (called from Python, so the call is included), summing the values, and a binary search by start. Also
printed: the bytes a pane takes (``tracemalloc`` over a filled store, growth slack included). The sliding
window's panes are about three quarters of the state of issue 19's state benchmark; the columns of ``array``
were built and lost a third of the engine's speed to boxing each value (semantics.md), which is the question
this answers for ``librt.vecs``.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

MODULE = """\
from array import array
from librt.vecs import vec, append
from mypy_extensions import i64


class PanesVec:
    def __init__(self) -> None:
        self.start: vec[i64] = vec[i64]()
        self.val: vec[float] = vec[float]()

    def add(self, s: i64, x: float) -> None:
        self.start = append(self.start, s)
        self.val = append(self.val, x)

    def total(self) -> float:
        t = 0.0
        v = self.val
        for i in range(len(v)):
            t += v[i]
        return t

    def find(self, s: i64) -> int:
        st = self.start
        lo, hi = 0, len(st)
        while lo < hi:
            mid = (lo + hi) // 2
            if st[mid] < s:
                lo = mid + 1
            else:
                hi = mid
        return lo


class PanesArr:
    def __init__(self) -> None:
        self.start = array("q")
        self.val = array("d")

    def add(self, s: int, x: float) -> None:
        self.start.append(s)
        self.val.append(x)

    def total(self) -> float:
        t = 0.0
        v = self.val
        for i in range(len(v)):
            t += v[i]
        return t

    def find(self, s: int) -> int:
        st = self.start
        lo, hi = 0, len(st)
        while lo < hi:
            mid = (lo + hi) // 2
            if st[mid] < s:
                lo = mid + 1
            else:
                hi = mid
        return lo


class P:
    def __init__(self, s: i64, x: float) -> None:
        self.s = s
        self.x = x


class PanesObj:
    def __init__(self) -> None:
        self.items: list[P] = []

    def add(self, s: i64, x: float) -> None:
        self.items.append(P(s, x))

    def total(self) -> float:
        t = 0.0
        for p in self.items:
            t += p.x
        return t

    def find(self, s: i64) -> int:
        st = self.items
        lo, hi = 0, len(st)
        while lo < hi:
            mid = (lo + hi) // 2
            if st[mid].s < s:
                lo = mid + 1
            else:
                hi = mid
        return lo
"""


def measure(cls: Any, n: int, reps: int) -> tuple[dict[str, float], float]:
    got: dict[str, list[float]] = {"append": [], "sum": [], "search": []}
    for _ in range(reps):
        store = cls()
        started = time.perf_counter()
        for i in range(n):
            store.add(i * 1000, i * 0.5)
        got["append"].append((time.perf_counter() - started) / n * 1e9)
        started = time.perf_counter()
        store.total()
        got["sum"].append((time.perf_counter() - started) / n * 1e9)
        probes = range(0, n * 1000, 7000)
        started = time.perf_counter()
        for s in probes:
            store.find(s)
        got["search"].append((time.perf_counter() - started) / len(probes) * 1e9)
    tracemalloc.start()
    store = cls()
    for i in range(n):
        store.add(i * 1000, i * 0.5)
    size = tracemalloc.get_traced_memory()[0] / n
    tracemalloc.stop()
    return {k: statistics.median(v) for k, v in got.items()}, size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", "--panes", type=int, default=200_000)
    ap.add_argument("-r", "--reps", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-columns-") as tmp:
        (Path(tmp) / "panes_store.py").write_text(MODULE)
        subprocess.run([sys.executable, "-m", "mypyc", "panes_store.py"], cwd=tmp, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)  # fmt: skip
        sys.path.insert(0, tmp)
        mod = importlib.import_module("panes_store")
        assert str(mod.__file__).endswith(".so"), mod.__file__
        print(f"{args.panes:,} panes, median of {args.reps}, compiled with mypyc (ns a pane; bytes a pane):")
        for name in ("PanesVec", "PanesArr", "PanesObj"):
            times, size = measure(getattr(mod, name), args.panes, args.reps)
            cells = ", ".join(f"{k} {v:.0f}" for k, v in times.items())
            print(f"  {name:9s} {cells}; {size:.1f} bytes")


if __name__ == "__main__":
    main()
