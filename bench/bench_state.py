"""How much memory the window state takes, and how big its checkpoint is, for a large fleet.

Reproduce (from the repository root)::

    python bench/bench_state.py                          # 10,000 devices x 3 metrics, 90 s of readings
    python bench/bench_state.py --against ../main        # the same, side by side with another checkout
    python bench/bench_state.py -d 1000 --engine pure    # smaller, the pure-Python engine
    python bench/bench_state.py --restore                # also the state right after a restore of the snapshot
    python bench/bench_state.py -s 200 --cycle 5         # also the state every 5 s from 70 s on: its low and high
    python bench/bench_state.py --values board           # values as a board sends them: two decimals (21.37)

The workload is bench_engine.py's (b): every device reads temp_c, rh and lux once a second (10 % of readings
delayed 0-3 s, 0.05 % 8-12 s), one reading per message, through a tumbling 60 s, a sliding 60 s/1 s and a
session 30 s window (every aggregate: count sum mean min max stddev first last). The values are doubles of 20 +
a random fraction (53 bits of it, as a host computes them), or with ``--values board`` the same rounded to two
decimals, as the firmware sends a sensor's fixed-point reading (21.37: a sliding window's panes keep such values in 4
bytes, not 8). After ``--seconds`` of
readings (past the 60 s windows' first firing), printed:

- ``state``: the deep size of the engine's object graph (``sys.getsizeof`` over ``gc.get_referents``), and
  that of the sliding window alone; per device, the whole and each window's operator;
- ``as allocated``: the same graph as the allocator hands it out (``gateway.memsize.block_size``: pymalloc's
  blocks are multiples of 16 bytes, so a 72-byte object takes 80; a list's or dict's table is a block of its own),
  which is what the process holds for the state (checked against tracemalloc in ``tests/gateway/test_memsize.py``);
- ``RSS``: the process's resident memory then (the input is generated one second at a time and dropped; readings
  not yet arrived wait as tuples, and each message is made when it is taken, as a gateway decodes one on arrival),
  and its peak;
- the engine's snapshot as JSON and compressed whole (zlib level 1), with the time of each step, and as the
  gateway's checkpoint writes it: a row per key (and, in a checkout that has them, a row per chunk of a sliding
  key's panes), each JSON (``ckpt_rows.encode_row``) compressed on its own, as when every key changed since the
  checkpoint before (each device read in between; the time includes the snapshot of the rows); then, after two
  more seconds of readings (the gateway's default checkpoint interval), the next checkpoint as the gateway takes
  it: every key snapshotted again (with chunk rows, only the chunks from the oldest pane changed since), its rows
  encoded and compared with the digests of those before, and the rows that differ compressed (the CPU time of all
  that, and the rows and bytes rewritten);
- with ``--cycle S``: the state as allocated every S seconds of readings from 70 s on (the windows have fired by
  then), lowest, median and highest: a sliding window's front stack grows at each transfer and shrinks as its windows
  fire, so the state at one moment (the figure above, at ``--seconds``) is one point of a cycle;
- with ``--restore``: the deep size of a fresh engine right after restoring that JSON (what a restarted gateway
  holds until its windows move on), and the CPU time of ``Engine.restore``.

Each checkout runs in a fresh process (``--against PATH`` adds one for PATH, which must be importable as the
repository root: a worktree of another commit, for example). Its compiled engine is used if it has a
current build, unless ``--engine pure``.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import inspect
import json
import os
import random
import resource
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

from memsize import block_size, deep_size  # bench/memsize.py (standard library only: imported before any checkout)

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_764_072_000_000
METRICS = ("temp_c", "rh", "lux")
WINDOWS: list[dict[str, Any]] = [
    {"name": "t60", "kind": "tumbling", "size": "60s", "metrics": list(METRICS)},
    {"name": "s60", "kind": "sliding", "size": "60s", "slide": "1s", "metrics": list(METRICS)},
    {"name": "ses", "kind": "session", "gap": "30s", "metrics": list(METRICS)},
]


def _row_compressor(level: int) -> Any:
    """How the checkout's gateway compresses a checkpoint row: ``state.compress_row`` (zstd, checkpoint version 6),
    else zlib at the checkpoint's level."""
    from gateway import state

    row = getattr(state, "compress_row", None)
    return row if row is not None else lambda text: zlib.compress(text, level)


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(
    root: str, devices: int, seconds: int, restore: bool, cycle: int = 0, interval: int = 2, board: bool = False
) -> None:
    sys.path.insert(0, root)
    from gateway.engine import ENGINE_BUILD, Engine, parse_engine
    from gateway.model import Batch, Reading

    engine = Engine(parse_engine({"windows": WINDOWS}))
    rng = random.Random(1)
    names = [f"dev-{i:05d}" for i in range(devices)]
    # readings not yet arrived, compactly: (arrival, order, device, second, t, and the values); each message is made
    # when it is taken, as a gateway decodes one when it arrives (held as messages, 13 s of them took tens of MiB of
    # the bench's own, and their dicts shared the allocator's pools with the state's objects)
    pending: list[tuple[int, int, int, int, int, float, float, float]] = []
    order = 0
    samples: list[tuple[int, int]] = []  # with ``cycle``: (second, the state as allocated) every ``cycle`` s from 70 s

    def feed(first: int, last: int) -> None:
        """The readings of seconds ``first`` .. ``last - 1``: each second those that arrived by 13 s before its end,
        and after the last all the rest."""
        nonlocal pending, order
        for second in range(first, last):
            for i in range(len(names)):
                t = T0 + second * 1000 + i * 7 % 1000
                u = rng.random()
                delay = rng.randint(0, 3000) if u < 0.10 else rng.randint(8000, 12000) if u < 0.1005 else 0
                v0, v1, v2 = (20.0 + rng.random() for _ in METRICS)
                if board:
                    v0, v1, v2 = round(v0, 2), round(v1, 2), round(v2, 2)
                order += 1
                pending.append((t + delay + 50, order, i, second, t, v0, v1, v2))
            pending.sort(key=lambda x: (x[0], x[1]))
            horizon = T0 + (second + 1) * 1000 - 13_000 if second + 1 < last else None
            keep = []
            for x in pending:
                arrival, _, i, sec, t, v0, v1, v2 = x
                if horizon is None or arrival < horizon:
                    dev = names[i]
                    r = Reading("site-a", dev, 1, sec, t, "s", dict(zip(METRICS, (v0, v1, v2), strict=True)))
                    engine.process_batch(Batch("site-a", dev, "", t, (r,), ()), arrival)
                else:
                    keep.append(x)
            pending = keep
            if cycle and second >= 70 and second % cycle == 0:
                gc.collect()
                samples.append((second, block_size(engine)))

    start = time.process_time()
    feed(0, seconds)
    fed = time.process_time() - start
    gc.collect()
    state = deep_size(engine)
    sliding = deep_size(engine.windows[1].op)
    blocks = block_size(engine)
    per_window_blocks = ", ".join(f"{w.op.name} {block_size(w.op) / devices:,.0f}" for w in engine.windows)
    per_window = ", ".join(f"{w.op.name} {deep_size(w.op) / devices:,.0f}" for w in engine.windows)
    rss = rss_mib()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.perf_counter()
    snap = engine.snapshot()
    t_snap = time.perf_counter() - t
    t = time.perf_counter()
    text = json.dumps(snap, separators=(",", ":"))
    t_json = time.perf_counter() - t
    t = time.perf_counter()
    packed = zlib.compress(text.encode(), 1)
    t_zip = time.perf_counter() - t
    rows_line = ""
    try:  # as the gateway's checkpoint stores it: a row per key, each JSON compressed (a checkout that has them)
        from gateway.ckpt_rows import encode_row, split_rows
        from gateway.state import CHECKPOINT_LEVEL
    except ImportError:
        pass
    else:
        compress = _row_compressor(CHECKPOINT_LEVEL)
        chunked = "rows" in inspect.signature(engine.snapshot).parameters  # a sliding key's panes in chunk rows
        t = time.perf_counter()
        rows = split_rows({"pipeline": {"engine": engine.snapshot(rows=2) if chunked else engine.snapshot()}})
        texts = [encode_row(r) for r in rows.values()]
        t_rows = time.perf_counter() - t
        t = time.perf_counter()
        stored = sum(len(compress(x)) for x in texts)
        t_rows_zip = time.perf_counter() - t
        rows_line = (
            f"\n  as the checkpoint's rows ({len(rows):,}, every key changed): JSON {sum(map(len, texts)) / 2**20:.1f} "
            f"MiB ({t_rows * 1e3:.0f} ms), stored {stored / 2**20:.1f} MiB ({t_rows_zip * 1e3:.0f} ms)"
        )
        # the next checkpoint, ``interval`` s of readings later: every key changed, a row rewritten where its text did
        digests = {n: hashlib.blake2b(x, digest_size=16).digest() for n, x in zip(rows, texts, strict=True)}
        del rows, texts
        feed(seconds, seconds + interval)
        gc.collect()
        t = time.process_time()
        rows = split_rows({"pipeline": {"engine": engine.snapshot(rows=1) if chunked else engine.snapshot()}})
        written, stored_next = 0, 0
        for n, r in rows.items():
            x = encode_row(r)
            if digests.get(n) != hashlib.blake2b(x, digest_size=16).digest():
                written += 1
                stored_next += len(compress(x))
        t_next = time.process_time() - t
        rows_line += (
            f"\n  the next checkpoint, {interval} s of readings later: {written:,} of {len(rows):,} rows rewritten, "
            f"{stored_next / 2**20:.2f} MiB stored; {t_next * 1e3:.0f} ms of CPU (snapshot, rows, digests, compression)"
        )
        del rows
    build = "compiled" if ENGINE_BUILD == "compiled" else "pure"
    print(
        f"{root}: engine={build} {devices:,} devices x {len(METRICS)} metrics, {seconds} s of readings "
        f"{'(values of two decimals) ' if board else ''}"
        f"({seconds * devices:,}, fed in {fed:.1f} s CPU)\n"
        f"  state {state / 2**20:7.1f} MiB (sliding 60 s/1 s: {sliding / 2**20:.1f} MiB); "
        f"RSS {rss:.0f} MiB, peak {peak:.0f} MiB\n"
        f"  per device: {state / devices:,.0f} bytes, of which the windows' operators {per_window}\n"
        f"  as allocated: {blocks / 2**20:7.1f} MiB, {blocks / devices:,.0f} bytes a device (the operators "
        f"{per_window_blocks})\n"
        f"  snapshot {t_snap * 1e3:.0f} ms; as JSON {len(text) / 2**20:.1f} MiB ({t_json * 1e3:.0f} ms), "
        f"zlib level 1 {len(packed) / 2**20:.1f} MiB ({t_zip * 1e3:.0f} ms){rows_line}",
        flush=True,
    )
    if samples:
        sizes = sorted(x for _, x in samples)
        lo, mid, hi = sizes[0], sizes[len(sizes) // 2], sizes[-1]
        print(
            f"  as allocated every {cycle} s from {samples[0][0]} s to {samples[-1][0]} s ({len(samples)} times): "
            f"lowest {lo / 2**20:.1f}, median {mid / 2**20:.1f}, highest {hi / 2**20:.1f} MiB ({hi / devices:,.0f} "
            "bytes a device)",
            flush=True,
        )
    if restore:
        del snap, packed
        engine = Engine(parse_engine({"windows": WINDOWS}))
        loaded = json.loads(text)
        del text
        gc.collect()
        t = time.process_time()
        engine.restore(loaded)
        t_restore = time.process_time() - t
        del loaded
        gc.collect()
        print(
            f"  restored from it: state {deep_size(engine) / 2**20:7.1f} MiB, as allocated "
            f"{block_size(engine) / 2**20:.1f} MiB (restore {t_restore:.2f} s CPU)",
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("-d", "--devices", type=int, default=10_000)
    ap.add_argument("-s", "--seconds", type=int, default=90, help="seconds of readings (one per device)")
    ap.add_argument("--against", action="append", default=[], help="another checkout to measure beside this one")
    ap.add_argument("--engine", choices=["default", "pure"], default="default")
    ap.add_argument("--restore", action="store_true", help="also restore the snapshot and measure the state then")
    ap.add_argument("--cycle", type=int, default=0, help="also the state as allocated every CYCLE s from 70 s on")
    ap.add_argument("--values", choices=["doubles", "board"], default="doubles", help="as a host or a board makes them")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        child(args.child, args.devices, args.seconds, args.restore, args.cycle, board=args.values == "board")
        return
    env = {**os.environ}
    if args.engine == "pure":
        env["EDGEKIT_ENGINE"] = "pure"
    for root in [*args.against, str(ROOT)]:
        cmd = [sys.executable, __file__, "--child", str(Path(root).resolve()), "-d", str(args.devices)]
        cmd += ["-s", str(args.seconds)] + (["--restore"] if args.restore else []) + ["--cycle", str(args.cycle)]
        cmd += ["--values", args.values]
        subprocess.run(cmd, check=True, env=env, cwd=root)


if __name__ == "__main__":
    main()
