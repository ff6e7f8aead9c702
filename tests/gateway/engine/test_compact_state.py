"""A sliding window's pane of one reading is kept as the reading (in the pane store's columns), not as an
accumulator: outputs and snapshots are exactly those of the accumulators (``singles`` off, the representation
before), floats included, and the state of the benchmark's workload is far smaller."""

from __future__ import annotations

import json
import math
import random
import struct
import sys
from typing import Any

from engine_helpers import batch

from bench.memsize import deep_size  # as the benchmarks measure state
from gateway.engine import Engine, parse_engine
from gateway.engine.operators import SlidingOperator
from gateway.engine.outputs import WindowResult

T0 = 1_764_072_000_000
WINDOWS: list[dict[str, Any]] = [
    {"name": "s", "kind": "sliding", "size": "10s", "slide": "1s", "metrics": ["x", "y", "z"]},
    {"name": "v", "kind": "sliding", "size": "9s", "slide": "3s", "metrics": ["x"], "allowed_lateness": "4s",
     "aggregates": ["count", "stddev", "first", "last"]},
    {"name": "w", "kind": "sliding", "size": "6s", "slide": "2s", "metrics": ["x", "y", "z", "u", "q"]},
    {"name": "f", "kind": "sliding", "size": "5s", "slide": "1s", "metrics": ["u", "x", "y", "z"],
     "aggregates": ["count", "sum", "first", "last"]},
    # 150 panes: a front keeps every 13th entry, and a window 8 or more panes below the lowest keeps some between
    {"name": "l", "kind": "sliding", "size": "150s", "slide": "1s", "metrics": ["x", "y"], "allowed_lateness": "5s"},
]  # fmt: skip


def _engine(singles: bool, sparse: bool = True) -> Engine:
    engine = Engine(parse_engine({"windows": WINDOWS}))
    for w in engine.windows:
        assert isinstance(w.op, SlidingOperator)
        w.op.singles = singles and w.op.nm <= 4
        w.op.sparse = sparse
    return engine


def _stream(seed: int) -> list[tuple[Any, int]]:
    rng = random.Random(seed)
    out = []
    for i in range(2500):
        dev = f"d{rng.randrange(4)}"
        now = T0 + i * 250
        t = now - rng.choice([0, 0, 0, 100, 700, 3000, 9000, 14000])
        names = rng.sample(["x", "y", "z", "u", "q"], rng.randrange(1, 5))
        vals = {m: rng.uniform(-100, 100) for m in names}
        out.append((batch(dev, [(t, 1, i, vals)], received_ms=now), now + 5))
    return out


def _run(
    engine: Engine, stream: list[tuple[Any, int]], every: int = 500, show: Any = repr, each: Any = None
) -> tuple[list[str], list[dict[str, Any]]]:
    """The outputs (each as ``show`` gives it) and a snapshot every ``every`` messages of ``stream``; ``each(i,
    engine)`` after each message."""
    outs: list[str] = []
    snaps = []
    for i, (b, now) in enumerate(stream):
        outs += [show(o) for o in engine.process_batch(b, now)]
        if i % every == every - 1:
            snaps.append(engine.snapshot())
        if each is not None:
            each(i, engine)
    return outs, snaps


def test_single_reading_panes_give_exactly_what_accumulators_give() -> None:
    for seed in range(3):
        stream = _stream(seed)
        singles = _run(_engine(True), stream)
        accs = _run(_engine(False), stream)
        assert len(singles[0]) > 2000
        assert singles == accs


def test_a_front_stack_keeping_some_entries_gives_exactly_what_keeping_all_gives() -> None:
    """A sliding window's front stack keeps about sqrt(n) of its n entries, and a window whose first pane has none
    makes it from the nearest kept one and the panes: outputs and snapshots (which name the front's newest pane) are
    those of the stack that keeps all, floats included."""
    for seed in range(3):
        stream = _stream(seed)
        sparse = _run(_engine(True), stream)
        dense = _run(_engine(True, sparse=False), stream)
        assert len(sparse[0]) > 2000
        assert sparse == dense


def test_a_front_stack_keeps_few_entries() -> None:
    """60 s/1 s read every second: of the front's up to 60 entries a key keeps its newest and every 16th below it
    (about 2 sqrt(60) apart: 4 of 59), not dozens, nor the 8 every 8th came to."""
    windows = [{"name": "s", "kind": "sliding", "size": "60s", "slide": "1s", "metrics": ["x", "y", "z"]}]
    kept = []
    for sparse in (True, False):
        engine = Engine(parse_engine({"windows": windows}))
        op = engine.windows[0].op
        assert isinstance(op, SlidingOperator)
        op.sparse = sparse
        most = 0
        for sec in range(150):
            t = T0 + sec * 1000
            engine.process_batch(batch("d0", [(t, 1, sec, {"x": 1.0, "y": 2.0, "z": float(sec)})]), t)
            most = max(most, len(op.states()["d0"].front_a))
        kept.append(most)
    assert kept[1] >= 55 and kept[0] <= 4, kept


def test_a_snapshot_with_single_panes_restores_and_goes_on_the_same() -> None:
    stream = _stream(5)
    whole, _ = _run(_engine(True), stream)
    head, snaps = _run(_engine(True), stream[:1000])
    again = _engine(True)
    again.restore(snaps[-1])
    tail, _ = _run(again, stream[1000:])
    assert head + tail == whole


def test_a_board_reading_once_a_second_keeps_a_small_sliding_window() -> None:
    """20 devices, one reading each per second, 60 s/1 s over three metrics: the panes are readings (before, each
    pane was an accumulator of 3 x 14 fields)."""
    windows = [{"name": "s", "kind": "sliding", "size": "60s", "slide": "1s", "metrics": ["x", "y", "z"]}]
    sizes = []
    for singles in (True, False):
        engine = Engine(parse_engine({"windows": windows}))
        engine.windows[0].op.singles = singles  # type: ignore[union-attr]
        for sec in range(90):
            for d in range(20):
                t = T0 + sec * 1000 + d
                engine.process_batch(batch(f"d{d}", [(t, 1, sec, {"x": 1.0, "y": 2.0, "z": float(sec)})]), t)
        sizes.append(deep_size(engine.windows[0].op))
    assert sizes[0] * 5 < sizes[1] * 4, sizes  # a fifth smaller at least (pure Python; compiled, nearly half)


def test_a_restored_window_keeps_its_panes_of_one_reading_as_readings() -> None:
    """Restored, a pane of one reading is that reading again (in the columns, not an accumulator of 3 x 14 fields for
    the rest of its life: 10,000 devices restarting from a checkpoint held over 200 MiB more for a minute), and one
    of two readings stays an accumulator: the same snapshot again, and the panes in the same memory as before the
    restore. The front stack likewise keeps the entries a transfer keeps, not all of them."""
    windows = [{"name": "s", "kind": "sliding", "size": "60s", "slide": "1s", "metrics": ["x", "y", "z"]}]
    engine = Engine(parse_engine({"windows": windows}))
    for sec in range(90):
        for d in range(20):
            t = T0 + sec * 1000 + d
            vals = {"x": 1.0, "y": -0.0, "z": float(sec)} if d % 3 else {"x": float(d)}
            engine.process_batch(batch(f"d{d}", [(t, 1, sec, vals)]), t)
            if d == 7 and sec % 10 == 0:  # a second reading in the same pane
                engine.process_batch(batch(f"d{d}", [(t + 1, 1, 10_000 + sec, {"y": 3.0})]), t + 1)
    op = engine.windows[0].op
    assert isinstance(op, SlidingOperator)
    snap = json.loads(json.dumps(engine.snapshot()))
    # the front's entries, one a pane from its newest (top) down to the first pane of the last window fired
    fronts = [
        [row[0] for row in d["panes"] if d["top"] is not None and d["hi"] - 60_000 <= row[0] <= d["top"]]
        for d in snap["windows"]["s"]["keys"].values()
    ]
    again = Engine(parse_engine({"windows": windows}))
    again.restore(snap)
    op2 = again.windows[0].op
    assert isinstance(op2, SlidingOperator)
    assert json.dumps(again.snapshot()) == json.dumps(snap)  # -0.0 too

    assert _kinds(op2) == _kinds(op)
    assert "one" in _kinds(op)["d1"] and set(_kinds(op)["d7"]) > {"one"}
    before = sum(sys.getsizeof(a) for ks in op.states().values() for a in (ks.panes.big or []) if a is not None)
    after = sum(sys.getsizeof(a) for ks in op2.states().values() for a in (ks.panes.big or []) if a is not None)
    assert after == before
    # restored, the front keeps the entries a transfer keeps, at its stride from its newest pane: every key the same
    # entries as before the restore, a few of the dozens of panes the front spans
    for k, ks in op.states().items():
        assert [f.start for f in op2.states()[k].front_a] == [f.start for f in ks.front_a], k
    # (each key transfers in a phase of its own, so its front spans from a few panes to a whole window's)
    assert max(len(ks.front_a) for ks in op2.states().values()) <= 8 and max(len(f) for f in fronts) > 40
    assert sum(len(ks.front_a) for ks in op2.states().values()) * 5 < sum(len(f) for f in fronts)


def test_a_snapshot_lets_other_threads_run_every_few_keys() -> None:
    """Compiled, the operators' loops never hand the GIL to another thread: a snapshot taken in a worker thread
    held it throughout (bench/bench_checkpoint.py: the event loop stalled for the whole snapshot). It calls its
    ``snapshot_pause`` every few keys, and the snapshot is the same."""
    stream = _stream(3)
    engine = _engine(True)
    _run(engine, stream)
    keys = sum(len(w.op.states()) for w in engine.windows)  # type: ignore[union-attr]
    plain = engine.snapshot()
    calls: list[int] = []
    engine.snapshot_pause = lambda: calls.append(1)
    assert engine.snapshot() == plain
    assert keys >= 8 and len(calls) >= keys // 4 - len(engine.windows), (keys, len(calls))


def test_a_key_without_late_panes_holds_no_set_of_them() -> None:
    """A sliding window's key keeps the panes changed after a window containing them fired only while it has
    some (an empty set was 216 bytes a key: 2 MiB of 10,000 devices); the snapshot still says ``[]``, and a
    snapshot's dirty panes come back."""
    windows = [{"name": "s", "kind": "sliding", "size": "10s", "slide": "1s", "metrics": ["x"]}]
    engine = Engine(parse_engine({"windows": windows}))
    op = engine.windows[0].op
    assert isinstance(op, SlidingOperator)
    for sec in range(30):
        t = T0 + sec * 1000
        engine.process_batch(batch("d0", [(t, 1, sec, {"x": float(sec)})]), t)
    assert op.states()["d0"].dirty is None
    snap = engine.snapshot()
    assert snap["windows"]["s"]["keys"]["d0"]["dirty"] == []
    late = T0 + 20_500  # in a pane of windows already fired (watermark 24 s) and of windows still to fire
    engine.process_batch(batch("d0", [(late, 1, 99, {"x": 5.0})]), T0 + 29_100)
    assert op.states()["d0"].dirty is None  # the advance after it rebuilt the stacks
    t = T0 + 35_000
    outs = [
        o
        for o in engine.process_batch(batch("d0", [(t, 1, 31, {"x": 1.0})]), t)
        if isinstance(o, WindowResult) and o.start_ms == T0 + 20_000
    ]
    assert [o.count for o in outs] == [11]  # the window [20 s, 30 s): ten readings and the late one
    snap["windows"]["s"]["keys"]["d0"]["dirty"] = [T0 + 20_000]
    again = Engine(parse_engine({"windows": windows}))
    again.restore(snap)
    assert again.windows[0].op.states()["d0"].dirty == {T0 + 20_000}  # type: ignore[union-attr]
    assert again.snapshot()["windows"]["s"]["keys"]["d0"]["dirty"] == [T0 + 20_000]


def test_a_board_reading_once_a_second_has_a_small_sliding_window_snapshot() -> None:
    """60 s/1 s over three metrics, one reading a second: a key's snapshot holds each pane of one reading as that
    reading, and the front stack as the pane it starts from (its entries are made again from the panes on restore,
    to the bit, as a transfer makes them). Each pane was a 30-number accumulator and each of the front's up to 60
    entries another: about 59,000 bytes of JSON a key, 80 times a tumbling window's. Restored, it gives the same
    snapshot and goes on exactly as the engine that never stopped."""
    windows = [{"name": "s", "kind": "sliding", "size": "60s", "slide": "1s", "metrics": ["x", "y", "z"]}]
    rng = random.Random(4)
    feed = []
    for sec in range(150):
        t = T0 + sec * 1000 + rng.randrange(1000)
        vals = {"x": rng.uniform(-40, 40), "y": rng.uniform(0, 100), "z": -0.0}
        feed.append(batch("d0", [(t, 1, sec, vals)], received_ms=t))
    whole = Engine(parse_engine({"windows": windows}))
    outs = [repr(o) for b in feed for o in whole.process_batch(b, b.received_ms + 20)]
    head = Engine(parse_engine({"windows": windows}))
    first = [repr(o) for b in feed[:95] for o in head.process_batch(b, b.received_ms + 20)]
    snap = json.loads(json.dumps(head.snapshot()))
    key = snap["windows"]["s"]["keys"]["d0"]
    assert len(key["panes"]) >= 60
    assert len(json.dumps(key)) < 7_000, len(json.dumps(key))
    again = Engine(parse_engine({"windows": windows}))
    again.restore(snap)
    assert json.dumps(again.snapshot()) == json.dumps(snap)
    rest = [repr(o) for b in feed[95:] for o in again.process_batch(b, b.received_ms + 20)]
    assert first + rest == outs


def _edits() -> dict[str, Any]:
    """Ways to damage one key of a 60 s/1 s sliding window's snapshot (a reading row is [start, t, boot, seq, x, y,
    z]), each of which a restore must refuse."""

    def row(d: dict[str, Any]) -> list[Any]:
        return next(r for r in d["panes"] if len(r) > 2)

    return {
        "a value too many": lambda d: row(d).append(1.0),
        "a value missing": lambda d: row(d).pop(),
        "no value": lambda d: row(d).__setitem__(slice(4, None), [None, None, None]),
        "a time outside its pane": lambda d: row(d).__setitem__(1, row(d)[0] + 1000),
        "a time before its pane": lambda d: row(d).__setitem__(1, row(d)[0] - 1),
        "a seq of 2**31": lambda d: row(d).__setitem__(3, 2**31),
        "a negative seq": lambda d: row(d).__setitem__(3, -1),
        "a boot of 2**31": lambda d: row(d).__setitem__(2, 2**31),
        "a start off the panes' grid": lambda d: row(d).__setitem__(0, row(d)[0] + 1),
        "panes out of order": lambda d: d["panes"].reverse(),
        "an accumulator of another width": lambda d: d["panes"].__setitem__(0, [d["panes"][0][0], [1, 2.0, 3.0]]),
        "the back's first pane not a pane": lambda d: d.__setitem__("back_from", d["back_from"] + 1),
        "the back at or after hi": lambda d: d.__setitem__("back_from", d["hi"]),
        # before version 3 a pane was [start, accumulator]; one of one reading is taken as that reading, which must
        # fall in the pane (an outside review: a reading 2.5 s into a 1 s pane left the columns out of order)
        "an old row's reading outside its pane": lambda d: d["panes"].__setitem__(0, _old_row(row(d)[0], 2500)),
    }


def _old_row(p: int, dt: int) -> list[Any]:
    """A pane as a snapshot before version 3 wrote it, ``[start, accumulator]``: one reading ``dt`` ms from ``p``."""
    from gateway.engine.accs import acc_empty

    acc = acc_empty(3)
    acc.clear()
    acc.add([1.0, 2.0, 3.0], p + dt, 1, 7)
    return [p, acc.to_json()]


def test_a_damaged_sliding_window_snapshot_is_refused_with_its_reason() -> None:
    """A checkpoint row edited or damaged into something the engine never writes is a clear error on restore, not
    wrong results later (an outside review edited rows by hand: a seq of 2**31 became boot + 1, a fourth value of a
    three-metric window was dropped, a time outside its pane was taken as it was)."""
    windows = [{"name": "s", "kind": "sliding", "size": "60s", "slide": "1s", "metrics": ["x", "y", "z"]}]
    engine = Engine(parse_engine({"windows": windows}))
    for sec in range(95):
        t = T0 + sec * 1000 + 250
        engine.process_batch(batch("d0", [(t, 1, sec, {"x": 1.0, "y": 2.0, "z": float(sec)})], received_ms=t), t)
    snap = json.loads(json.dumps(engine.snapshot()))
    assert snap["windows"]["s"]["keys"]["d0"]["back_from"] is not None
    again = Engine(parse_engine({"windows": windows}))
    again.restore(json.loads(json.dumps(snap)))  # as it was: restores
    for name, edit in _edits().items():
        bad = json.loads(json.dumps(snap))
        edit(bad["windows"]["s"]["keys"]["d0"])
        try:
            Engine(parse_engine({"windows": windows})).restore(bad)
        except ValueError as exc:
            assert "sliding window" in str(exc), (name, exc)
        else:
            raise AssertionError(f"{name}: restored")


BOUNDARY_WINDOWS: list[dict[str, Any]] = [
    {"name": "long", "kind": "sliding", "size": "10m", "slide": "5m", "metrics": ["x", "y", "z"],
     "allowed_lateness": "20s"},
    {"name": "short", "kind": "sliding", "size": "10s", "slide": "1s", "metrics": ["x", "y"]},
    {"name": "four", "kind": "sliding", "size": "20s", "slide": "4s", "metrics": ["x", "y", "z", "u"]},
]  # fmt: skip


def _boundary_stream(seed: int) -> list[tuple[Any, int]]:
    """Readings whose boot, seq and time from their pane's start lie on both sides of what a pane of one reading once
    held in one int (boot below 1,024, time within 131,071 ms of the pane's start; 5-minute panes go beyond it)."""
    rng = random.Random(seed)
    boots = [0, 1, 1022, 1023, 1024, 1025, 70_000, 0x7FFFFFFF]
    seqs = [0, 1, 0x3FFFFFFF, 0x7FFFFFFE, 0x7FFFFFFF]
    out = []
    for i in range(3000):
        now = T0 + i * 700
        t = now - rng.choice([0, 0, 0, 300, 5000, 25_000])
        # fast boards read every 700 ms among them; slow ones every few minutes, so that a 5-minute pane holds one
        # reading at any time from its start
        dev = f"slow{rng.randrange(2)}" if rng.random() < 0.007 else f"d{rng.randrange(3)}"
        names = rng.sample(["x", "y", "z", "u"], rng.randrange(1, 4))
        vals = {m: rng.choice([rng.uniform(-1e6, 1e6), -0.0, 0.0, 5e-324]) for m in names}
        out.append((batch(dev, [(t, rng.choice(boots), rng.choice(seqs), vals)], received_ms=now), now + 5))
    return out


def test_panes_of_one_reading_give_exactly_what_accumulators_give() -> None:
    """A pane of one reading (in the pane store's columns: its time and the bits of its metrics, boot and seq, its
    values) gives the outputs and snapshots of an accumulator, whatever its boot, seq and time in its pane (boots and
    seqs up to 2**31 - 1, 5-minute panes read at any time of the pane, four metrics), and a restore goes on the
    same."""
    kinds: set[str] = set()

    def seen_kinds(i: int, engine: Engine) -> None:
        if i % 100 == 0:
            for w in engine.windows:
                assert isinstance(w.op, SlidingOperator)
                kinds.update(x for ks in w.op.states().values() for x in _kinds_of(ks))

    for seed in range(3):
        stream = _boundary_stream(seed)
        runs = _with_and_without_singles(BOUNDARY_WINDOWS, stream, seen_kinds)
        assert len(runs[0][0]) > 1000
        assert runs[0] == runs[1]
        whole = [x.split(" @ ")[0] for x in runs[0][0]]
        head, snaps = _run_windows(stream[:1700])
        again = Engine(parse_engine({"windows": BOUNDARY_WINDOWS}))
        again.restore(json.loads(json.dumps(snaps[-1])))
        tail = [repr(o) for b, now in stream[1700:] for o in again.process_batch(b, now)]
        assert head + tail == whole
    assert "one" in kinds and len(kinds) > 1, kinds


def _with_and_without_singles(
    windows: list[dict[str, Any]], stream: list[tuple[Any, int]], each: Any = None
) -> list[tuple[list[str], list[dict[str, Any]]]]:
    """The outputs (``_seen``) and a snapshot every 250 messages of ``stream`` through ``windows``, with panes of one
    reading kept as readings and (second) as accumulators; ``each(i, engine)`` after each message of the first."""
    runs = []
    for singles in (True, False):
        engine = Engine(parse_engine({"windows": windows}))
        for w in engine.windows:
            assert isinstance(w.op, SlidingOperator)
            w.op.singles = singles
        runs.append(_run(engine, stream, 250, _seen, each if singles else None))
    return runs


def _kinds_of(ks: Any) -> list[str]:
    """A sliding key's panes: ``one`` for a pane of one reading (in the columns), else its accumulator's class."""
    p = ks.panes
    return [type(p.acc(i)).__name__ if p.acc(i) is not None else "one" for i in range(p.n)]


def _kinds(o: SlidingOperator) -> dict[str, list[str]]:
    return {k: _kinds_of(ks) for k, ks in o.states().items()}


def _seen(o: Any) -> str:
    """An output as the tests compare it: its repr, and for a window's result the time, boot and seq of its first and
    last readings too (kept in its Stat, not in its repr), after `` @ ``."""
    if isinstance(o, WindowResult):
        return f"{o!r} @ {(o.ft, o.fb, o.fs, o.lt, o.lb, o.ls)}"
    return repr(o)


def _run_windows(stream: list[tuple[Any, int]]) -> tuple[list[str], list[dict[str, Any]]]:
    engine = Engine(parse_engine({"windows": BOUNDARY_WINDOWS}))
    outs: list[str] = []
    for b, now in stream:
        outs += [repr(o) for o in engine.process_batch(b, now)]
    return outs, [engine.snapshot()]


def test_a_fleet_that_starts_together_spreads_its_fronts_over_the_cycle() -> None:
    """200 boards that start in the same second, 60 s/1 s: each key's front is built at a transfer and shrinks as its
    windows fire, so keys that transfer together hold their most entries at the same time. Each key transfers at a
    phase of its own, so the entries the fleet holds stay near their mean over the cycle (together, the highest was
    about 1.8 times the mean: 8 entries a key against 4.5 on average, when a front kept every 8th entry)."""
    windows = [{"name": "s", "kind": "sliding", "size": "60s", "slide": "1s", "metrics": ["x", "y", "z"]}]
    engine = Engine(parse_engine({"windows": windows}))
    op = engine.windows[0].op
    assert isinstance(op, SlidingOperator)
    totals = []
    for sec in range(200):
        for d in range(200):
            t = T0 + sec * 1000 + d
            engine.process_batch(batch(f"d{d}", [(t, 1, sec, {"x": 1.0, "y": 2.0, "z": float(sec)})]), t)
        if sec >= 70:
            totals.append(sum(len(ks.front_a) for ks in op.states().values()))
    mean = sum(totals) / len(totals)
    assert mean > 200 * 2, mean  # 4 entries a key at a transfer (every 16th of 59), one before the next
    assert max(totals) < 1.25 * mean, (max(totals), mean)


def _decimal_stream(seed: int) -> list[tuple[Any, int]]:
    """Boards sending fixed-point readings (as the firmware does: 21.37, 45.2, 300, 0.0001, up to 8 digits, and
    some just past them), and one board, ``w``, that later sends values no short decimal is (1/3, -0.0, 1e300)."""
    rng = random.Random(seed)
    out = []
    for i in range(2500):
        now = T0 + i * 300
        t = now - rng.choice([0, 0, 0, 200, 3000, 9000])
        dev = rng.choice(["d0", "d1", "d2", "w"])
        names = rng.sample(["x", "y", "z", "u"], rng.randrange(1, 5))
        vals: dict[str, float] = {}
        for m in names:
            kind = rng.random()
            if kind < 0.7:
                vals[m] = round(rng.uniform(-500, 500), rng.choice([0, 1, 2, 3, 4]))
            elif kind < 0.8:
                vals[m] = rng.choice(
                    # 2**27 / 10**11 as JSON decodes it: v * 10**11 is just under 2**27 and rounds to it
                    [
                        0.0,
                        1e-7,
                        0.1,
                        12_345_678.9,
                        13_421_772.7,
                        13_421_772.8,
                        99_999_999.0,
                        0.00134217728,
                        -0.00134217728,
                    ]
                )
            elif kind < 0.9:
                vals[m] = float(rng.randrange(-134_217_728, 134_217_728)) / rng.choice([1.0, 10.0, 1e8])
            else:
                vals[m] = float(rng.randrange(-1000, 1000))
            if dev == "w" and i > 1500 and rng.random() < 0.05:
                vals[m] = rng.choice([1 / 3, -0.0, 1e300, 5e-324])
        out.append((batch(dev, [(t, 1, i, vals)], received_ms=now), now + 5))
    return out


def test_a_boards_decimal_values_are_kept_as_decimals_and_give_exactly_what_doubles_give() -> None:
    """A pane of one reading keeps a board's fixed-point values as decimals (4 bytes a value, not 8) while every value
    its key has kept is one; the first that is not widens the key's columns, each decimal the double it is. Either
    way the outputs and snapshots are those of accumulators of the doubles (``singles`` off), to the bit, and a
    restore goes on the same."""
    narrow_seen = set()
    for seed in range(3):
        stream = _decimal_stream(seed)
        runs = []
        for singles in (True, False):
            engine = _engine(singles)
            outs: list[str] = []
            snaps = []
            for i, (b, now) in enumerate(stream):
                outs += [_seen(o) for o in engine.process_batch(b, now)]
                if i % 250 == 249:
                    snaps.append(engine.snapshot())
                if singles and i % 100 == 99:
                    for w in engine.windows:
                        assert isinstance(w.op, SlidingOperator)
                        narrow_seen.update((k, ks.panes.nar) for k, ks in w.op.states().items() if ks.panes.n)
            runs.append((outs, snaps))
        assert len(runs[0][0]) > 2000
        assert runs[0] == runs[1]
        head, snaps = _run(_engine(True), stream[:1500])
        again = _engine(True)
        again.restore(json.loads(json.dumps(snaps[-1])))
        tail, _ = _run(again, stream[1500:])
        assert head + tail == [x.split(" @ ")[0] for x in runs[0][0]]
    assert ("d0", True) in narrow_seen and ("w", True) in narrow_seen and ("w", False) in narrow_seen, narrow_seen


def test_a_boards_decimal_values_take_half_the_bytes_of_doubles() -> None:
    """20 boards read three metrics once a second, 60 s/1 s: values of two decimals (a board's) against the same
    values off by a little that no short decimal is (a double computed on a host): 4 bytes a value less in each
    pane."""
    windows = [{"name": "s", "kind": "sliding", "size": "60s", "slide": "1s", "metrics": ["x", "y", "z"]}]
    sizes = []
    for off in (0.0, 1e-9):
        engine = Engine(parse_engine({"windows": windows}))
        rng = random.Random(3)
        for sec in range(90):
            for d in range(20):
                t = T0 + sec * 1000 + d
                vals = {m: round(rng.uniform(15, 30), 2) + off for m in ("x", "y", "z")}
                engine.process_batch(batch(f"d{d}", [(t, 1, sec, vals)]), t)
        sizes.append(deep_size(engine.windows[0].op))
    assert sizes[0] + 20 * 60 * 3 * 4 < sizes[1], sizes


def test_a_key_in_its_phase_transfers_about_as_often_as_one_that_is_not() -> None:
    """100 boards, 60 s/1 s, a tenth of the readings 2 s late, 400 s: each key's transfers (each sets where its back
    starts) are about as many as without phases. A whole transfer at a window's start takes the panes to the end of
    the window before, so it is emptied 59 windows later, not 60: a phase of 60 windows made a front of one pane after
    each whole one, and merged the back's 58 panes again (1.48 times the transfers)."""
    windows = [{"name": "s", "kind": "sliding", "size": "60s", "slide": "1s", "metrics": ["x"]}]
    counts = []
    for stagger in (True, False):
        engine = Engine(parse_engine({"windows": windows}))
        op = engine.windows[0].op
        assert isinstance(op, SlidingOperator)
        op.stagger = stagger
        rng = random.Random(1)
        starts: dict[str, set[int]] = {}
        for i in range(40_000):
            d = i % 100
            now = T0 + (i // 100) * 1000
            t = now - rng.choice([0] * 9 + [2000])
            engine.process_batch(batch(f"d{d}", [(t, 1, i, {"x": rng.random()})], received_ms=now), now + 5)
            ks = op.states().get(f"d{d}")
            if ks is not None:
                starts.setdefault(f"d{d}", set()).add(ks.back_from)
        counts.append(sum(len(x) for x in starts.values()))
    assert counts[1] > 100 * 6, counts
    assert counts[0] < counts[1] * 1.25, counts


def test_a_key_that_is_no_valid_utf8_still_has_a_phase() -> None:
    """The engine takes any key (the gateway's topics allow ASCII only, but a replay or the simulator may call it
    with any string): a lone surrogate in a device's name has a phase as any other, and its windows fire."""
    windows = [{"name": "s", "kind": "sliding", "size": "10s", "slide": "1s", "metrics": ["x"]}]
    engine = Engine(parse_engine({"windows": windows}))
    fired = 0
    for sec in range(40):
        t = T0 + sec * 1000
        outs = engine.process_batch(batch("d\ud800", [(t, 1, sec, {"x": 1.5})], received_ms=t), t + 5)
        fired += sum(1 for o in outs if isinstance(o, WindowResult))
    assert fired > 25
    again = Engine(parse_engine({"windows": windows}))
    again.restore(json.loads(json.dumps(engine.snapshot())))
    assert again.snapshot() == engine.snapshot()


def test_a_decimal_kept_is_one_whose_digits_fit_and_that_reads_back_to_the_bit() -> None:
    """Around the largest digits a narrow column keeps (2**27, 8 digits) at every number of decimals, and their
    neighbouring doubles: a value kept as a decimal fits an i32 and reads back to the bit (0.00134217728 is
    2**27 / 10**11 as JSON decodes it; times 10**11 it was just under 2**27, and rounded to it: kept as 2**27 << 4 | 11,
    past an i32, it came back as -0.00134217728 compiled, and raised in the pure engine)."""
    from gateway.engine.operators import _NO_DEC, _dec, _decimal

    kept = 0
    for e in range(16):
        for m in (2**27 - 1, 2**27, 2**27 + 1, 99_999_999, 12_345_678):
            for sign in (1, -1):
                v = float(f"{sign * m}e-{e}")
                for x in (v, math.nextafter(v, math.inf), math.nextafter(v, -math.inf)):
                    d = _decimal(x)
                    if d == _NO_DEC:
                        continue
                    kept += 1
                    assert -(2**31) <= d < 2**31, (x, d)
                    assert abs(d >> 4) < 2**27, (x, d)
                    assert struct.pack("<d", _dec(d)) == struct.pack("<d", x), (x, d)
    assert kept > 80, kept


def _board_sizes(boots: list[list[int]], vals: list[list[float]]) -> list[int]:
    """The sliding window's state (60 s/1 s, three metrics) after 150 s of 20 boards each reading once a second, once
    for each run's boots (the boot of second ``s`` is ``boots[run][s]``) and values (the offset added at second ``s``).
    """
    windows = [{"name": "s", "kind": "sliding", "size": "60s", "slide": "1s", "metrics": ["x", "y", "z"]}]
    sizes = []
    for boot, off in zip(boots, vals, strict=True):
        engine = Engine(parse_engine({"windows": windows}))
        rng = random.Random(3)
        for sec in range(150):
            for d in range(20):
                t = T0 + sec * 1000 + d
                v = {m: round(rng.uniform(15, 30), 2) + off[sec] for m in ("x", "y", "z")}
                engine.process_batch(batch(f"d{d}", [(t, boot[sec], sec, v)]), t)
        sizes.append(deep_size(engine.windows[0].op))
    return sizes


def test_a_boards_time_bits_and_seq_take_one_int_a_pane() -> None:
    """A board's boot lasts from one power-on to the next, through deep sleep: while every pane of one reading of a
    key has the same boot and its times are within 25.6 hours of each other, the time, the metrics' bits and the seq are
    one 64-bit int a pane (the boot is the key's). 20 boards of one boot against the same boards whose boot changes
    every second (each key's columns wide): 8 bytes a pane less."""
    one = [1] * 150
    many = [1 + s % 2 for s in range(150)]
    sizes = _board_sizes([one, many], [[0.0] * 150] * 2)
    assert sizes[0] + 20 * 60 * 8 < sizes[1], sizes


def test_a_key_is_narrow_again_a_window_after_a_reboot_or_a_value_no_decimal_is() -> None:
    """A board that reboots at 40 s (boot 1, then 2), and one that sends a value no short decimal is at 40 s: each
    key's columns widen then, and narrow again once the panes of the other boot or the wide value have left the
    window: at 150 s they take what a board that did neither takes. (Until now a key's values, once wide, stayed
    wide.)"""
    plain = [1] * 150
    reboot = [1 if s < 40 else 2 for s in range(150)]
    wide = [1e-9 if s == 40 else 0.0 for s in range(150)]
    sizes = _board_sizes([plain, reboot, plain], [[0.0] * 150, [0.0] * 150, wide])
    assert sizes[0] == sizes[1] == sizes[2], sizes


def _span_stream(seed: int) -> list[tuple[Any, int]]:
    """Boards that reboot now and then (back to an earlier boot too: a key keeps several), go quiet for days, and
    flush readings hours or days old (times far apart in one key's panes), for windows of hours and days."""
    rng = random.Random(seed)
    out = []
    now = T0
    boots = {"d0": 1, "d1": 5, "d2": 0x7FFFFFFF, "d3": 0}
    for i in range(2000):
        now += rng.choice([1000, 1000, 1000, 60_000, 3_600_000, 86_400_000, 5 * 86_400_000])
        dev = rng.choice(list(boots))
        if rng.random() < 0.03:
            boots[dev] = rng.choice([boots[dev] + 1, 1, 0x7FFFFFFF, 0])
        t = now - rng.choice([0, 0, 0, 500, 40_000, 3_600_000, 2 * 86_400_000, 4 * 86_400_000])
        vals = {m: rng.choice([round(rng.uniform(-50, 50), 2), rng.uniform(-50, 50), -0.0]) for m in ("x", "y", "z")}
        out.append((batch(dev, [(t, boots[dev], i, vals)], received_ms=now), now + 5))
    return out


SPAN_WINDOWS: list[dict[str, Any]] = [
    {"name": "h", "kind": "sliding", "size": "1h", "slide": "1m", "metrics": ["x", "y", "z"], "allowed_lateness": "2h"},
    {"name": "d", "kind": "sliding", "size": "4d", "slide": "1d", "metrics": ["x", "y"], "allowed_lateness": "3d"},
    {"name": "s", "kind": "sliding", "size": "10s", "slide": "1s", "metrics": ["z"], "allowed_lateness": "5d"},
]  # fmt: skip


def test_narrow_and_wide_keys_through_reboots_and_days_give_exactly_what_accumulators_give() -> None:
    """Keys whose boots change (and change back), whose readings are days apart (a key's base moved, or its panes
    more than 25.6 hours apart: wide), narrowed again when their panes allow: outputs and snapshots are those of
    accumulators (``singles`` off), to the bit, and a restore from any snapshot goes on the same."""
    for seed in range(3):
        stream = _span_stream(seed)
        runs = _with_and_without_singles(SPAN_WINDOWS, stream)
        assert len(runs[0][0]) > 500
        assert runs[0] == runs[1]
        for k in (1, 5):
            again = Engine(parse_engine({"windows": SPAN_WINDOWS}))
            again.restore(json.loads(json.dumps(runs[0][1][k])))
            tail = [_seen(o) for b, now in stream[250 * (k + 1) :] for o in again.process_batch(b, now)]
            assert tail == runs[0][0][len(runs[0][0]) - len(tail) :]


def test_a_keys_columns_end_within_two_places_of_its_panes() -> None:
    """60 s/1 s read every second: a key holds 65-66 panes, and its columns, grown 8 places at a time to 64 and then
    by a sixteenth, reached 70 and stayed there (96 bytes a key of three doubles). They are trimmed to two places
    more than the panes at the key's first drop, after each window of drops, and after a restore."""
    windows = [{"name": "s", "kind": "sliding", "size": "60s", "slide": "1s", "metrics": ["x", "y", "z"]}]
    engine = Engine(parse_engine({"windows": windows}))
    op = engine.windows[0].op
    assert isinstance(op, SlidingOperator)
    most = 0
    for sec in range(200):
        t = T0 + sec * 1000
        engine.process_batch(batch("d0", [(t, 1, sec, {"x": 1.0 + sec / 3, "y": 2.0, "z": float(sec)})]), t)
        panes = op.states()["d0"].panes
        most = max(most, panes.n)
        if sec >= 70:
            assert panes.cap <= most + 2, (sec, panes.n, panes.cap, most)
    again = Engine(parse_engine({"windows": windows}))
    again.restore(json.loads(json.dumps(engine.snapshot())))
    op2 = again.windows[0].op
    assert isinstance(op2, SlidingOperator)
    restored = op2.states()["d0"].panes
    assert restored.n == op.states()["d0"].panes.n and restored.cap <= restored.n + 2, (restored.n, restored.cap)
