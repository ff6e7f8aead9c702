"""The state's size as the allocator hands it out (``gateway.memsize.block_size``), checked against what the measure
does not use: ``tracemalloc``'s record of every block CPython asked for (the sizes), and the allocators' own counts of
the bytes they hand out (pymalloc's ``sys._debugmallocstats`` and glibc's ``mallinfo2``: the rounding)."""

from __future__ import annotations

import ctypes
import gc
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import tracemalloc
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pytest

from gateway.engine import ENGINE_BUILD, Engine, parse_engine
from gateway.engine.operators import Panes
from gateway.memsize import block, block_size, deep_size
from gateway.model import Batch, Reading

T0 = 1_764_072_000_000
METRICS = ("temp_c", "rh", "lux")
WINDOWS = [  # bench_state.py's three windows
    {"name": "t60", "kind": "tumbling", "size": "60s", "metrics": list(METRICS)},
    {"name": "s60", "kind": "sliding", "size": "60s", "slide": "1s", "metrics": list(METRICS)},
    {"name": "ses", "kind": "session", "gap": "30s", "metrics": list(METRICS)},
]


def _traced(make: Callable[[], Any]) -> tuple[Any, int, int]:
    """What ``make`` returns, and the bytes of the blocks allocated while it ran that are still held after a
    collection: as tracemalloc recorded them (requested) and as the allocator handed them out."""
    gc.collect()
    tracemalloc.start()
    try:
        made = make()
        gc.collect()
        traces = tracemalloc.take_snapshot().traces
    finally:
        tracemalloc.stop()
    return made, sum(t.size for t in traces), sum(block(t.size) for t in traces)


_MALLINFO2_FIELDS = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (*_MALLINFO2_FIELDS, "keepcost")]


_LIBC = ctypes.CDLL("libc.so.6")
_LIBC.mallinfo2.restype = _Mallinfo2


def _held() -> int:
    """The bytes both allocators have handed out and not had back, by their own counts: pymalloc's blocks in use (as
    ``sys._debugmallocstats`` prints them, on the C stderr) and glibc's chunks in use (``mallinfo2``)."""
    gc.collect()
    with tempfile.TemporaryFile() as f:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(f.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        f.seek(0)
        stats = f.read().decode()
    found = re.search(r"# bytes in allocated blocks\s+=\s+([\d,]+)", stats)
    assert found is not None, stats[:500]
    info = _LIBC.mallinfo2()
    return int(found.group(1).replace(",", "")) + info.uordblks + info.hblkhd


def _panes(n: int) -> Panes:
    """A sliding window key's panes: ``n`` of one reading each (columns of ``librt.vecs``, grown as they fill)."""
    p = Panes(3, 1000, 0)
    for i in range(n):
        p.insert_reading(i, [1.0, None, 3.0], 1_000_000 + i * 1000 + 5, 1, i)
    return p


def _engine(devices: int, seconds: int) -> Engine:
    engine = Engine(parse_engine({"windows": WINDOWS}))
    rng = random.Random(7)
    names = [f"dev-{i:05d}" for i in range(devices)]
    for second in range(seconds):
        for i, dev in enumerate(names):
            # the time as the decoder makes it, from the message's text: an int computed by an addition keeps the
            # block of one digit more than it holds (CPython's ``x_add`` allocates it and trims the digit in place),
            # 48 bytes for a time, not the 32 its size says; the pure engine keeps each reading's time
            t = json.loads(str(T0 + second * 1000 + i * 7 % 1000))
            r = Reading("site-a", dev, 1, second, t, "s", {m: 20.0 + rng.random() for m in METRICS})
            engine.process_batch(Batch("site-a", dev, "", t, (r,), ()), t + rng.randint(0, 2000))
    return engine


_NO_TCACHE = "glibc.malloc.tcache_count=0"


def test_the_allocators_own_counts_agree() -> None:
    """What pymalloc and glibc say they hand out for containers of many sizes, for sliding keys' panes of 0-149 panes
    and for an engine of the three windows (1,200 devices through 90 s), is what ``block_size`` counts: the rounding
    is theirs, not only the model's (``tracemalloc`` below gives sizes, which ``block`` rounds).

    Counted in a child process with glibc's per-thread cache off. A chunk freed into that cache stays in use by
    ``mallinfo2``'s count, and the chunks it held before a graph was made, taken by the graph, are then not counted
    in the difference: about 145 KB for the panes, whose columns are made anew as they grow (2.5 % of them; 1.5 %
    for the engine, against the counts 0.01 % and 0.3-0.5 % with the cache off). Up to 6 December 2026 the test ran
    with the cache on, within 1-2 %, and took that gap for glibc holding more than the blocks round to. The pure
    engine within 1.5 %: the allocators hold 1.1 % more than the count there (9.57 against 9.46 MB), the digit an
    int made by an addition keeps beyond its size (its window ends and timers: ``gateway.memsize``); before the
    readings' times were made as the decoder makes them, from text, 1.6 %."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if _NO_TCACHE not in tunables.split(":"):
        env = {**os.environ, "GLIBC_TUNABLES": f"{tunables}:{_NO_TCACHE}" if tunables else _NO_TCACHE}
        test = f"{__file__}::test_the_allocators_own_counts_agree"
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
        assert "1 passed" in done.stdout, done.stdout[-2000:]
        return
    makers: list[tuple[Callable[[], Any], float]] = [
        (lambda: _engine(1200, 90), 0.01 if ENGINE_BUILD == "compiled" else 0.015),
        (lambda: [[float(j) for j in range(i % 80)] for i in range(2000)], 0.002),
        (lambda: [{f"k{j}": float(j) for j in range(i % 40)} for i in range(1000)], 0.002),
        (lambda: [{float(j) + 0.5 for j in range(i % 40)} for i in range(1000)], 0.002),
        (lambda: [_panes(i % 150) for i in range(3000)], 0.002),
        (lambda: [bytes(400 + i % 900) for i in range(3000)], 0.002),
    ]
    _engine(3, 3)
    for make, within in makers:
        before = _held()
        made = make()
        held = _held() - before
        assert abs(block_size(made) - held) <= within * held, (block_size(made), held)
        del made


def test_windows_of_more_than_four_metrics_as_allocated() -> None:
    """A window of more than four metrics keeps its accumulators and front stack entries with a list of ``Stat``s
    or two lists each (``AccN``, ``PartN``): the count sees them (compiled, they were marked acyclic, which hid the
    lists from the collector's walk: a six-metric window's state was counted at about a third; an outside review)."""
    six = ["a", "b", "c", "d", "e", "f"]
    windows = [
        {"name": "t", "kind": "tumbling", "size": "60s", "metrics": six},
        {"name": "s", "kind": "sliding", "size": "60s", "slide": "6s", "metrics": six},
    ]

    def make() -> Engine:
        engine = Engine(parse_engine({"windows": windows}))
        rng = random.Random(3)
        for second in range(90):
            for i in range(40):
                dev = f"dev-{i:03d}"
                t = T0 + second * 1000 + i
                r = Reading("site-a", dev, 1, second, t, "s", {m: 20.0 + rng.random() for m in six})
                engine.process_batch(Batch("site-a", dev, "", t, (r,), ()), t + 500)
        return engine

    make()
    engine, requested, blocks = _traced(make)
    assert abs(block_size(engine) - blocks) <= 0.01 * blocks, (block_size(engine), blocks)
    assert abs(deep_size(engine) - requested) <= 0.01 * requested, (deep_size(engine), requested)


def test_block_rounds_as_pymalloc_and_glibc() -> None:
    assert [block(n) for n in (0, 1, 16, 17, 72, 80, 368, 512)] == [16, 16, 16, 32, 80, 80, 368, 512]
    assert [block(n) for n in (513, 520, 521, 4096)] == [528, 528, 544, 4112]


def test_an_engines_state_as_allocated() -> None:
    """The three windows of the state benchmark, 150 devices through 90 s: the blocks the engine's objects take
    are the blocks CPython allocated for them (within 1 %), and their sizes' sum what it asked for."""
    _engine(3, 3)  # anything made once (interned names, caches) is made before the count
    engine, requested, blocks = _traced(lambda: _engine(150, 90))
    measured = block_size(engine)
    assert abs(measured - blocks) <= 0.01 * blocks, (measured, blocks)
    assert abs(deep_size(engine) - requested) <= 0.01 * requested, (deep_size(engine), requested)
    assert measured > deep_size(engine)


@pytest.mark.parametrize(
    "make",
    [
        lambda: [[] for _ in range(2000)],
        lambda: [[float(i)] for i in range(2000)],
        lambda: [[float(j) for j in range(i % 80)] for i in range(2000)],
        lambda: [{f"k{j}": float(j) for j in range(i % 40)} for i in range(1000)],
        lambda: [defaultdict(list, {f"k{j}": float(j) for j in range(i % 40)}) for i in range(1000)],
        lambda: [{float(j) + 0.5 for j in range(i % 40)} for i in range(1000)],
        lambda: [(float(i), float(i) + 1) for i in range(2000)],
        lambda: [f"device-{i:06d}" * (1 + i % 60) for i in range(1000)],
        lambda: [bytearray(i % 700) for i in range(1000)],
        lambda: [_panes(i % 150) for i in range(600)],
    ],
    ids=[
        "empty lists",
        "lists of one",
        "lists",
        "dicts",
        "defaultdicts",
        "sets",
        "tuples",
        "strings",
        "bytearrays",
        "panes",
    ],
)
def test_containers_as_allocated(make: Callable[[], Any]) -> None:
    made, _, blocks = _traced(make)
    assert abs(block_size(made) - blocks) <= 0.01 * blocks, (block_size(made), blocks)


def test_a_restored_engine_holds_what_it_held() -> None:
    """Restored from its snapshot (as JSON, as a checkpoint is), the engine of the three windows holds what it held,
    within 1 % as allocated, per operator: a restart must not leave the gateway bigger until its windows move on. A
    site's name came back from the JSON as a string of its own for every key of every operator (64 bytes each),
    where the running engine shares one; they are shared again. The pure engine within 15 %: its accumulators hold
    boxed numbers, which a running one shares between fields (an accumulator of one reading has one float for its
    sum, min, max, mean, first and last) and the JSON gives one each; compiled they are unboxed."""
    engine = _engine(300, 90)
    snap = json.loads(json.dumps(engine.snapshot()))
    again = Engine(parse_engine({"windows": WINDOWS}))
    again.restore(snap)
    slack = 1.01 if ENGINE_BUILD == "compiled" else 1.15
    for a, b in zip(engine.windows, again.windows, strict=True):
        before, after = block_size(a.op), block_size(b.op)
        assert after <= before * slack, (a.op.name, before, after)


def test_a_count_reads_attributes_and_never_runs_a_property() -> None:
    """An object of a compiled class that the collector does not track (``mypyc_attr(acyclic=True)``) shows it no
    referents, so the count reads its attributes; a property is a descriptor of the same kind but computes what it
    returns (a result's ``aggregates`` makes a dict and keeps it). An outside review found the count running it: 2.6
    times the bytes held, and every result changed."""
    engine = Engine(parse_engine({"windows": WINDOWS}))
    outs: list[Any] = []
    for s in range(130):
        r = Reading("site-a", "d", 1, s, T0 + s * 1000, "s", {m: float(s) for m in METRICS})
        outs += engine.process_batch(Batch("site-a", "d", "", T0 + s * 1000, (r,), ()), T0 + s * 1000)
    results = [o for o in outs if type(o).__name__ == "WindowResult"]
    assert len(results) > 100
    assert all(o._aggs is None for o in results)
    first = block_size(results)
    assert all(o._aggs is None for o in results)  # nothing made
    assert block_size(results) == first
