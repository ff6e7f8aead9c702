"""``bench/bench_engine.py`` of two checkouts side by side: alternating, round by round, the median and spread.

Reproduce (from the repository root; the other checkout, e.g. ``git worktree add --detach ../base main``,
with its own compiled build if ``--engine compiled``)::

    taskset -c 0 python bench/bench_engine_ab.py ../base --rounds 7 -- \\
        --only a -n 200000 --feed message --engine compiled
    taskset -c 0 python bench/bench_engine_ab.py ../base --rounds 5 -- \\
        --only b -n 100000 --feed message --engine compiled

Each round runs every case of the given ``bench_engine.py`` arguments in the other checkout, then in this one
(the order swaps every round, so neither always runs first on a warm machine). Per checkout and case it prints
the median readings per second over the rounds, the spread (lowest and highest), and this checkout's median
relative to the other's. The rates are ``bench_engine.py``'s own (process CPU time in the engine loop).
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
_ROW = re.compile(r"^(?P<case>.+?)\s+[\d,]+ devices engine=(?P<engine>\S+)\s+feed=(?P<feed>\S+)\s+[\d,]+ readings\s+"
                  r"(?P<rate>[\d,]+) /s")  # fmt: skip


def run(tree: Path, args: list[str]) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, str(tree / "bench" / "bench_engine.py"), *args], capture_output=True, text=True, check=True
    )
    rates: dict[str, float] = {}
    for line in done.stdout.splitlines():
        m = _ROW.match(line)
        if m:
            rates[f"{m['case'].strip()} {m['engine']} {m['feed']}"] = float(m["rate"].replace(",", ""))
    if not rates:
        raise SystemExit(f"no result rows from {tree}:\n{done.stdout}\n{done.stderr}")
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0], epilog="-- then bench_engine.py's args")
    ap.add_argument("other", type=Path, help="the other checkout (the baseline)")
    ap.add_argument("--rounds", type=int, default=5)
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    a = ap.parse_args(argv[:cut])
    args = argv[cut + 1 :]  # bench_engine.py's arguments
    trees = {"other": a.other.resolve(), "this": HERE}
    got: dict[str, dict[str, list[float]]] = {"other": {}, "this": {}}
    for r in range(a.rounds):
        order = ["other", "this"] if r % 2 == 0 else ["this", "other"]
        for label in order:
            for case, rate in run(trees[label], args).items():
                got[label].setdefault(case, []).append(rate)
        print(f"round {r + 1}/{a.rounds} done", file=sys.stderr, flush=True)
    print(f"bench_engine.py {' '.join(args)}; {a.rounds} rounds, alternating; readings/s: median [lowest, highest]")
    for case in got["other"]:
        base, this = got["other"][case], got["this"].get(case, [])
        if not this:
            continue
        mb, mt = statistics.median(base), statistics.median(this)
        print(
            f"{case:<44} other {mb:>9,.0f} [{min(base):,.0f}, {max(base):,.0f}]"
            f"  this {mt:>9,.0f} [{min(this):,.0f}, {max(this):,.0f}]  this/other {mt / mb:6.3f}"
        )


if __name__ == "__main__":
    main()
