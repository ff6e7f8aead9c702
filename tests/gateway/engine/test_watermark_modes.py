"""Global watermark mode: an advance visits only the keys with something due, and gives exactly what a walk over
every key gives (``scan_all``, the operators as they were), outputs in the same order and the same snapshot."""

from __future__ import annotations

import random
from typing import Any

from engine_helpers import SITE, batch, window_rows

from gateway.engine import Engine, parse_engine
from gateway.engine.outputs import Output
from gateway.model import StatusUpdate

T0 = 1_764_072_000_000
WINDOWS: list[dict[str, Any]] = [
    {"name": "t", "kind": "tumbling", "size": "10s", "metrics": ["x", "y"], "allowed_lateness": "5s"},
    {"name": "s", "kind": "sliding", "size": "10s", "slide": "2s", "metrics": ["x", "y"], "allowed_lateness": "3s"},
    {"name": "s0", "kind": "sliding", "size": "6s", "slide": "1s", "metrics": ["x"]},
    {"name": "g", "kind": "session", "gap": "4s", "metrics": ["x"], "allowed_lateness": "2s"},
    {"name": "site", "kind": "tumbling", "size": "20s", "metrics": ["x"], "key": "site"},
]


def global_engine(windows: list[dict[str, Any]], scan_all: bool = False) -> Engine:
    wm = {"mode": "global", "out_of_orderness": "2s"}
    engine = Engine(parse_engine({"engine": {"watermark": wm}, "windows": windows}))
    assert engine.global_mode
    for w in engine.windows:
        w.op.scan_all = scan_all
    return engine


def test_an_advance_that_reaches_no_window_end_visits_no_key() -> None:
    """1,000 devices: a reading that moves the global watermark without reaching any window's end visits none of
    the 1,000 keys; before, every operator walked every key's state on each advance (``scan_all``: 1,000 each)."""
    windows = [
        {"name": "t60", "kind": "tumbling", "size": "60s", "metrics": ["x"]},
        {"name": "s60", "kind": "sliding", "size": "60s", "slide": "1s", "metrics": ["x"]},
        {"name": "ses", "kind": "session", "gap": "30s", "metrics": ["x"]},
    ]
    for scan_all, visited in ((True, [1000, 1000, 1000]), (False, [0, 0, 0])):
        engine = global_engine(windows, scan_all)
        assert _visits_of_a_quiet_advance(engine) == visited
    # the watermark passing T0 + 11 s fires each device's sliding windows ending there, and visits those keys
    before = [w.op.visits for w in engine.windows]
    t = T0 + 13_100
    out = engine.process_batch(batch("d0001", [(t, 1, 2, {"x": 1.0})]), now_ms=t)
    assert [w.op.visits - v for w, v in zip(engine.windows, before, strict=True)] == [0, 1000, 0]
    assert len(out) == 1000


def _visits_of_a_quiet_advance(engine: Engine) -> list[int]:
    for i in range(1000):  # every device one reading in [T0 + 10 s, T0 + 10.999 s)
        t = T0 + 10_000 + i
        engine.process_batch(batch(f"d{i:04d}", [(t, 1, 1, {"x": float(i)})]), now_ms=t)
    before = [w.op.visits for w in engine.windows]
    t = T0 + 12_500  # watermark T0 + 10.5 s: no window ends in between
    engine.process_batch(batch("d0000", [(t, 1, 2, {"x": 1.0})]), now_ms=t)
    return [w.op.visits - v for w, v in zip(engine.windows, before, strict=True)]


def _stream(seed: int) -> list[tuple[Any, int]]:
    rng = random.Random(seed)
    out = []
    clock = T0
    for i in range(1500):
        dev = f"d{rng.randrange(12)}"
        clock += rng.choice([0, 50, 200, 700, 1500])
        t = clock - rng.choice([0, 0, 0, 300, 2500, 6000, 15000])
        vals = {"x": rng.uniform(-5, 5), "y": float(rng.randrange(3))} if rng.random() < 0.8 else {"x": 0.5}
        readings = [(t, 1, i * 2, vals)]
        if rng.random() < 0.1:
            readings.append((t - rng.randrange(4000), 1, i * 2 + 1, {"y": rng.uniform(0, 1)}))
        site = "a" if rng.random() < 0.7 else "b"
        out.append((batch(dev, readings, site=site, received_ms=clock), clock + 20))
    return out


def _run(engine: Engine, stream: list[tuple[Any, int]], snap_at: int) -> tuple[list[Output], dict[str, Any]]:
    outs: list[Output] = []
    snap: dict[str, Any] = {}
    for i, (b, now) in enumerate(stream):
        outs += engine.process_batch(b, now)
        if i == snap_at:
            snap = engine.snapshot()
        if i % 97 == 0:
            outs += engine.advance(now)
    return outs, snap


def test_global_mode_gives_what_walking_every_key_gives() -> None:
    for seed in range(2):
        stream = _stream(seed)
        new, snap_new = _run(global_engine(WINDOWS), stream, 700)
        old, snap_old = _run(global_engine(WINDOWS, scan_all=True), stream, 700)
        assert len(new) > 500
        assert [repr(o) for o in new] == [repr(o) for o in old]
        assert snap_new == snap_old


def test_global_mode_after_restore_gives_the_same() -> None:
    stream = _stream(9)
    whole, _ = _run(global_engine(WINDOWS), stream, -1)
    first = global_engine(WINDOWS)
    head, snap = _run(first, stream[:600], 599)
    again = global_engine(WINDOWS)
    again.restore(snap)
    tail: list[Output] = []
    for i, (b, now) in enumerate(stream[600:], start=600):
        tail += again.process_batch(b, now)
        if i % 97 == 0:
            tail += again.advance(now)
    assert [repr(o) for o in head + tail] == [repr(o) for o in whole]


SITE_WINDOWS: list[dict[str, Any]] = [
    {"name": "t", "kind": "tumbling", "size": "10s", "metrics": ["x"], "key": "site", "allowed_lateness": "4s"},
    {"name": "s", "kind": "sliding", "size": "8s", "slide": "2s", "metrics": ["x"], "key": "site"},
    {"name": "g", "kind": "session", "gap": "3s", "metrics": ["x"], "key": "site", "out_of_orderness": "1s"},
    {"name": "d", "kind": "tumbling", "size": "5s", "metrics": ["x"]},
]


def _fleet_run(
    seed: int, walk: bool, devices: int = 10, restore_at: int | None = None
) -> tuple[list[str], dict[str, Any]]:
    """Site windows on fleet watermarks: devices that sleep, go offline, come back, move site; time alone.
    ``restore_at``: the engine is replaced there by a new one restored from its snapshot."""

    def new_engine() -> Engine:
        spec = {"engine": {"watermark": {"idle_timeout": "20s", "idle_grace": "2s"}}, "windows": SITE_WINDOWS}
        engine = Engine(parse_engine(spec))
        engine.fleet_walk = walk
        return engine

    engine = new_engine()
    rng = random.Random(seed)
    outs: list[Output] = []
    clock = T0
    sites = {f"d{i}": "ab"[i % 2] for i in range(devices)}
    for i in range(1200):
        if i == restore_at:
            snap = engine.snapshot()
            engine = new_engine()
            engine.restore(snap)
        clock += rng.choice([0, 100, 400, 1500])
        if rng.random() < 0.02:
            clock -= 3000  # the gateway's clock steps back
        dev = f"d{rng.randrange(devices if rng.random() < 0.9 else 3)}"
        u = rng.random()
        if u < 0.05:
            state = rng.choice(["online", "offline", "sleeping"])
            fields = {"sleep_s": float(rng.choice([1, 5, 30]))} if rng.random() < 0.5 else {}
            outs += engine.process_status(StatusUpdate(sites[dev], dev, "", clock, state, fields))
        elif u < 0.07:
            sites[dev] = rng.choice("abc")
            engine.move_device(dev, sites[dev])
        elif u < 0.12:
            outs += engine.advance(clock + rng.choice([0, 5000, 30000]))
        else:
            t = clock - rng.choice([0, 0, 200, 2500, 9000])
            flushed = t if rng.random() < 0.05 else None
            b = batch(dev, [(t, 1, i, {"x": rng.uniform(0, 9)})], site=sites[dev], flushed=flushed, received_ms=clock)
            outs += engine.process_batch(b, clock + 10)
    return [repr(o) for o in outs], engine.snapshot()


def test_fleet_watermarks_from_heaps_give_what_walking_the_devices_gives() -> None:
    for seed in range(3):
        heaps = _fleet_run(seed, walk=False)
        walk = _fleet_run(seed, walk=True)
        assert len(heaps[0]) > 200
        assert heaps == walk


def test_fleet_heaps_of_many_devices_give_what_walking_them_gives() -> None:
    """Sites of 20-60 devices (a heap several levels deep), some of them restored from a snapshot half way."""
    for seed in [*range(3, 9), 42]:  # 42: differed before a board was put back after every message (a review's find)
        devices = 20 * (seed % 3 + 1)
        restore_at = 600 if seed % 2 else None
        heaps = _fleet_run(seed, walk=False, devices=devices, restore_at=restore_at)
        walk = _fleet_run(seed, walk=True, devices=devices, restore_at=restore_at)
        assert len(heaps[0]) > 150
        assert heaps == walk


def test_a_board_whose_first_reading_follows_its_status_holds_the_site_window() -> None:
    """A board that said it is online before its first reading counts for the fleet watermark from that reading
    on, as every other board of the site: a later reading of another board does not close the window its first
    reading is in (the heaps, which had no watermark of it at the status, give what the walk gives)."""
    for walk in (False, True):
        spec = {"windows": [{"name": "t", "kind": "tumbling", "size": "10s", "metrics": ["x"], "key": "site"}]}
        engine = Engine(parse_engine(spec))
        engine.fleet_walk = walk
        outs: list[Output] = []
        outs += engine.process_batch(batch("a1", [(T0 + 1_000, 1, 1, {"x": 1.0})], received_ms=T0 + 1_000), T0 + 1_000)
        outs += engine.process_status(StatusUpdate(SITE, "a2", "", T0 + 1_500, "online", {}))
        outs += engine.process_batch(batch("a2", [(T0 + 2_000, 1, 1, {"x": 2.0})], received_ms=T0 + 2_000), T0 + 2_000)
        outs += engine.process_batch(batch("a1", [(T0 + 30_000, 1, 2, {"x": 3.0})], received_ms=T0 + 3_000), T0 + 3_000)
        assert window_rows(outs) == [], walk  # a2's watermark (T0 - 3 s) holds the window [T0, T0 + 10 s)
        outs += engine.process_batch(batch("a2", [(T0 + 31_000, 1, 2, {"x": 4.0})], received_ms=T0 + 4_000), T0 + 4_000)
        assert [(r[2], r[5]) for r in window_rows(outs)] == [(T0, 2)], walk  # both boards past it now


def test_a_site_enters_the_state_in_the_order_it_gets_a_watermark() -> None:
    """A site heard from only by a status (no watermark yet) makes no state in a site window, whether time alone
    moves the fleet watermarks or a message does: the order of the keys, which is state (``snapshot(order=True)``),
    is the order the sites got a watermark in."""
    for walk in (False, True):
        spec = {"windows": [{"name": "t", "kind": "tumbling", "size": "10s", "metrics": ["x"], "key": "site"}]}
        engine = Engine(parse_engine(spec))
        engine.fleet_walk = walk
        engine.process_status(StatusUpdate("c", "c1", "", T0, "online", {}))
        engine.advance(T0 + 500)
        for device, site, t in (("b1", "b", T0 + 1_000), ("c1", "c", T0 + 2_000)):
            engine.process_batch(batch(device, [(t, 1, 1, {"x": 1.0})], site=site, received_ms=t), t)
        assert list(engine.snapshot(order=True)["windows"]["t"]["wm"]) == ["b", "c"], walk


def test_a_board_heard_at_an_earlier_gateway_time_than_its_site_last_judged_counts_again() -> None:
    """A site judged at 150 finds a moved board idle; the board's next message carries an earlier gateway time (the
    clock stepped back), when it was still active; the site judged again at 160 must count it: the walk does.
    (Found by an outside review: the heaps put a board back only when it was idle at its message's own time.)"""
    spec = {"engine": {"min_time_ms": 0, "watermark": {"idle_timeout": 100, "out_of_orderness": 0}},
            "windows": [{"name": "t", "kind": "tumbling", "size": 100, "metrics": ["x"], "key": "site"}]}  # fmt: skip
    results = []
    for walk in (False, True):
        engine = Engine(parse_engine(spec))
        engine.fleet_walk = walk
        outs: list[Output] = []
        outs += engine.process_batch(batch("d1", [(10, 1, 1, {"x": 1.0})], site="A"), 0)
        outs += engine.process_batch(batch("d2", [(500, 1, 1, {"x": 2.0})], site="A"), 100)
        engine.move_device("d1", "B")  # d1 counts for A and for B
        outs += engine.advance(150)  # A at 150: d1 idle (heard at 0)
        outs += engine.process_batch(batch("d1", [(600, 1, 2, {"x": 3.0})], site="B"), 100)  # heard, at 100
        rows = [(650, 1, 2, {"x": 4.0}), (900, 1, 3, {"x": 5.0})]
        outs += engine.process_batch(batch("d2", rows, site="A"), 160)  # A at 160: d1 active, its watermark 600
        assert engine.snapshot()["windows"]["t"]["wm"]["A"] == 600, walk
        results.append([repr(o) for o in outs])
    assert results[0] == results[1]
