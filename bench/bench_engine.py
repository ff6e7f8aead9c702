"""Throughput of the event-time engine alone (no MQTT, no sinks), on one core.

Reproduce (from the repository root)::

    taskset -c 0 python bench/bench_engine.py            # all workloads, 1,000,000 readings each
    taskset -c 0 python bench/bench_engine.py -n 200000  # quicker
    taskset -c 0 python bench/bench_engine.py --only b --feed drain
    taskset -c 0 python bench/bench_engine.py --engine pure  # only the pure-Python engine

Each workload runs with the pure-Python engine (``EDGEKIT_ENGINE=pure``) and, when it has been built
(``python scripts/build_compiled.py``, mypyc), the compiled one (``EDGEKIT_ENGINE=compiled``); the
``engine=`` column says which. Without a build, the compiled rows say so and are skipped.

Workloads:

(a) reference: 100 devices, one reading per device per second, 10% delayed 0-3 s, 0.05% delayed 8-12 s;
    a 10 s tumbling mean per device, 5 s out-of-orderness bound.
(b) 1,000 devices x 3 metrics through tumbling 60 s + sliding 60 s/1 s + session 30 s together.
(c) sliding windows with size/slide = 1, 10, 60, 600: the cost per reading should not grow with it.
(e) early (provisional) results: the (a) window with ``early_count = 5`` or ``early_every = "1s"``, a sliding
    60 s/10 s and a session 30 s with ``early_every = "10s"``, 100 devices; the feed calls
    ``Engine.on_processing_time`` once a second of arrival time, as the gateway's tick does (its outputs count).
(l) a long allowed lateness: a 1 s tumbling mean kept 1 h for late readings, 20 devices (so each key holds 3,600
    fired windows once the stream is an hour long: an advance should cost what it fires and drops, not what it
    keeps).
(g) the watermark modes side by side, 1,000 devices (``--devices`` to change): each of tumbling 60 s, sliding
    60 s/1 s and session 30 s (one metric) keyed by device with per-device watermarks (``device``), keyed by
    device with the one global watermark (``global``), and keyed by site on the fleet watermark (``fleet``:
    all devices at one site).

``--devices N`` runs a workload with N devices instead of its own number (for example ``--only b --devices
10000`` for the state of 10,000 devices).

How input is fed. Every reading is its own MQTT message (a one-reading ``Batch`` with its own arrival
time): the delays above are per reading, so no reading waits for another on the wire. Two feeds:

- ``message``: one ``Engine.process_batch(batch, arrival)`` call per message - the pipeline as it is.
- ``drain``: a gateway under load drains the messages already queued (here up to ``--drain`` = 256 at a
  time, in arrival order) and hands them to ``Engine.process_batches([(batch, arrival), ...])``, which is
  by definition ``process_batch`` on each in turn (same outputs, same watermarks; a test asserts it). It
  saves only per-call overhead; nothing is merged across messages.

Readings are generated in chunks of 100,000 outside the timed loop and frozen out of the cyclic garbage
collector (``gc.freeze``: a gateway holds no such backlog of decoded messages; the engine's own objects are
collected as usual). The time is the process's CPU time (``time.process_time``, so that other load on the
machine does not count) spent in the loop of engine calls only; outputs are counted (``len`` in the loop,
no function call) and dropped, as a sink would, and ``--render`` also keeps them and times ``to_line()`` of
every one. Each workload runs in a fresh process. Memory: "state" is the deep size of the engine object
graph (``sys.getsizeof`` over ``gc.get_referents``), the largest seen at any chunk boundary; "peak RSS" is
the process's maximum resident set size (``ru_maxrss``), which also holds the interpreter and one generated
chunk of input.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from memsize import deep_size  # bench/memsize.py

from gateway.engine import Engine, parse_engine
from gateway.model import Batch, Reading

T0 = 1_764_072_000_000
ROOT = Path(__file__).resolve().parent.parent
CHUNK = 100_000


def stream(n: int, devices: int, metrics: tuple[str, ...], seed: int = 1) -> Iterator[list[tuple[int, Batch]]]:
    """Chunks of (arrival ms, one-reading batch), in arrival order, with the reference workload's delays."""
    rng = random.Random(seed)
    names = [f"dev-{i:04d}" for i in range(devices)]
    made = 0
    second = 0
    pending: list[tuple[int, int, Batch]] = []
    order = 0
    while made < n or pending:
        out: list[tuple[int, Batch]] = []
        while len(out) < CHUNK and (made < n or pending):
            if made < n:
                for i, dev in enumerate(names):
                    if made >= n:
                        break
                    t = T0 + second * 1000 + i * 7 % 1000
                    u = rng.random()
                    delay = rng.randint(0, 3000) if u < 0.10 else rng.randint(8000, 12000) if u < 0.1005 else 0
                    vals = {m: 20.0 + rng.random() for m in metrics}
                    r = Reading("site-a", dev, 1, second, t, "s", vals)
                    order += 1
                    pending.append((t + delay + 50, order, Batch("site-a", dev, "", t, (r,), ())))
                    made += 1
                second += 1
            pending.sort(key=lambda x: (x[0], x[1]))
            horizon = T0 + second * 1000 if made < n else None
            keep = []
            for arrival, o, b in pending:
                if horizon is None or arrival < horizon - 13_000:
                    out.append((arrival, b))
                else:
                    keep.append((arrival, o, b))
            pending = keep
        yield out


def run(
    name: str,
    windows: list[dict[str, Any]],
    n: int,
    devices: int,
    metrics: tuple[str, ...],
    feed: str,
    drain: int,
    engine_doc: dict[str, Any] | None = None,
) -> None:
    engine = Engine(parse_engine({"windows": windows, "engine": engine_doc or {}}))
    total = 0.0
    render = 0.0
    outputs = 0
    count = 0
    state = 0
    for chunk in stream(n, devices, metrics):
        outs: list[Any] = []
        groups = [[(b, arrival) for arrival, b in chunk[i : i + drain]] for i in range(0, len(chunk), drain)]
        gc.collect()
        gc.freeze()  # the generated input is not the engine's: keep the collector from scanning it
        counted = 0
        if feed == "message" and name.startswith("(e)"):  # early results: the gateway's tick, once a second
            process = engine.process_batch
            tick = engine.on_processing_time
            next_tick = chunk[0][0] if chunk else 0
            start = time.process_time()
            for arrival, b in chunk:
                if arrival >= next_tick:
                    counted += len(tick(arrival))
                    next_tick = arrival + 1000
                counted += len(process(b, arrival))
            total += time.process_time() - start
        elif feed == "message":
            process = engine.process_batch
            start = time.process_time()
            if RENDER:
                for arrival, b in chunk:
                    outs.extend(process(b, arrival))
            else:
                for arrival, b in chunk:
                    counted += len(process(b, arrival))
            total += time.process_time() - start
        else:
            process_many = engine.process_batches
            start = time.process_time()
            if RENDER:
                for g in groups:
                    outs.extend(process_many(g))
            else:
                for g in groups:
                    counted += len(process_many(g))
            total += time.process_time() - start
        gc.unfreeze()
        outputs += len(outs) if RENDER else counted
        if RENDER:
            start = time.process_time()
            for o in outs:
                o.to_line()
            render += time.process_time() - start
        count += len(chunk)
        state = max(state, deep_size(engine))
    late = engine.late_count()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rate = count / total
    from gateway.engine import ENGINE_BUILD

    build = "compiled" if ENGINE_BUILD == "compiled" else "pure"
    print(
        f"{name:<24} {devices:>6,} devices engine={build:<8} feed={feed:<7} {count:>9,} readings {rate:>9,.0f} /s"
        f" {total * 1e6 / count:6.2f} us/reading"
        f"  outputs {outputs:>9,}  late {late:>4,}  state {state / 2**20:6.1f} MiB  peak RSS {peak:5.0f} MiB",
        flush=True,
    )
    if RENDER:
        both = count / (total + render)
        print(f"{'':<24} with to_line() of every output: {both:>9,.0f} readings/s", flush=True)


CASES: dict[str, tuple[str, list[dict[str, Any]], int, tuple[str, ...]]] = {
    "a": (
        "(a) tumbling 10s mean",
        [{"name": "t10", "kind": "tumbling", "size": "10s", "metrics": ["temp_c"], "aggregates": ["count", "mean"]}],
        100,
        ("temp_c",),
    ),
    "b": (
        "(b) t60 + s60/1 + ses30",
        [
            {"name": "t60", "kind": "tumbling", "size": "60s", "metrics": ["temp_c", "rh", "lux"]},
            {"name": "s60", "kind": "sliding", "size": "60s", "slide": "1s", "metrics": ["temp_c", "rh", "lux"]},
            {"name": "ses", "kind": "session", "gap": "30s", "metrics": ["temp_c", "rh", "lux"]},
        ],
        1000,
        ("temp_c", "rh", "lux"),
    ),
}
for _size, _slide in (("60s", "60s"), ("60s", "6s"), ("60s", "1s"), ("600s", "10s"), ("600s", "1s")):
    CASES[f"c-{_size}-{_slide}"] = (
        f"(c) sliding {_size}/{_slide}",
        [
            {
                "name": "s",
                "kind": "sliding",
                "size": _size,
                "slide": _slide,
                "metrics": ["temp_c"],
                "aggregates": ["count", "mean", "max"],
            }
        ],
        100,
        ("temp_c",),
    )
_T10 = {"name": "t10", "kind": "tumbling", "size": "10s", "metrics": ["temp_c"], "aggregates": ["count", "mean"]}
for _case, _label, _spec in (
    ("e-count", "(e) (a) + early_count 5", {**_T10, "early_count": 5}),
    ("e-every", "(e) (a) + early_every 1s", {**_T10, "early_every": "1s"}),
    ("e-sliding", "(e) s60/10 + every 10s", {**_T10, "kind": "sliding", "size": "60s", "slide": "10s",
                                             "early_every": "10s"}),
    ("e-session", "(e) ses30 + every 10s", {"name": "ses", "kind": "session", "gap": "30s", "metrics": ["temp_c"],
                                            "aggregates": ["count", "mean"], "early_every": "10s"}),
):  # fmt: skip
    CASES[_case] = (_label, [_spec], 100, ("temp_c",))
CASES["l"] = (  # a long allowed lateness: every key keeps an hour of fired 1 s windows
    "(l) tumbling 1s, lateness 1h",
    [{"name": "t1", "kind": "tumbling", "size": "1s", "metrics": ["temp_c"], "aggregates": ["count", "mean"],
      "allowed_lateness": "1h"}],
    20,
    ("temp_c",),
)  # fmt: skip
CASES["c-session"] = (
    "(c) session 30s",
    [{"name": "ses", "kind": "session", "gap": "30s", "metrics": ["temp_c"]}],
    100,
    ("temp_c",),
)
MODES: dict[str, dict[str, Any]] = {}
for _kind, _w in (
    ("tumbling", {"kind": "tumbling", "size": "60s"}),
    ("sliding", {"kind": "sliding", "size": "60s", "slide": "1s"}),
    ("session", {"kind": "session", "gap": "30s"}),
):
    for _mode in ("device", "global", "fleet"):
        _spec = {"name": "w", **_w, "metrics": ["temp_c"], "key": "site" if _mode == "fleet" else "device"}
        CASES[f"g-{_kind}-{_mode}"] = (f"(g) {_kind} {_mode}", [_spec], 1000, ("temp_c",))
        MODES[f"g-{_kind}-{_mode}"] = {"watermark": {"mode": "global" if _mode == "global" else "device"}}
RENDER = False


def main() -> None:
    global RENDER
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("-n", "--readings", type=int, default=1_000_000)
    ap.add_argument("--only", default=None, help="a, b, c (all of c), l or one case name, e.g. c-60s-1s")
    ap.add_argument("--feed", choices=["message", "drain", "both"], default="both")
    ap.add_argument("--drain", type=int, default=256, help="messages per process_batches call (feed=drain)")
    ap.add_argument("--engine", choices=["pure", "compiled", "both"], default="both")
    ap.add_argument("--render", action="store_true", help="also time to_line() of every output")
    ap.add_argument("--devices", type=int, default=None, help="devices (default: the workload's own number)")
    ap.add_argument("--case", default=None, help=argparse.SUPPRESS)  # one case in this process
    args = ap.parse_args()
    if args.case is not None:
        RENDER = args.render
        name, windows, devices, metrics = CASES[args.case]
        devices = args.devices or devices
        run(name, windows, args.readings, devices, metrics, args.feed, args.drain, MODES.get(args.case))
        return
    feeds = ["message", "drain"] if args.feed == "both" else [args.feed]
    engines = ["pure", "compiled"] if args.engine == "both" else [args.engine]
    if "compiled" in engines:
        probe = [sys.executable, "-c", "import gateway.engine"]
        env = {**os.environ, "EDGEKIT_ENGINE": "compiled"}
        if subprocess.run(probe, env=env, capture_output=True, cwd=ROOT).returncode != 0:
            print("compiled engine: not built (python scripts/build_compiled.py) - its rows are skipped", flush=True)
            engines.remove("compiled")
    for case in CASES:
        if args.only is not None and not (case == args.only or case.split("-")[0] == args.only):
            continue
        for engine in engines:
            for feed in feeds:
                cmd = [sys.executable, __file__, "--case", case, "-n", str(args.readings), "--feed", feed]
                cmd += ["--drain", str(args.drain)] + (["--render"] if args.render else [])
                cmd += ["--devices", str(args.devices)] if args.devices else []
                subprocess.run(cmd, check=True, env={**os.environ, "EDGEKIT_ENGINE": engine})


if __name__ == "__main__":
    main()
