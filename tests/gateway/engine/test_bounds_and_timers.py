"""When a window fires and goes: each device's out-of-orderness bound in the window engine (a device of a watermark
class, ``[[engine.watermark.classes]]``, waits its class's bound, the others the default, and a window with its
own ``out_of_orderness`` uses that for every device: when no bound depends on the device, every device shares one
list of bounds instead of its own, and these say the devices that differ still differ), and a tumbling window's
drop at its allowed lateness, and the order of a tumbling key's windows that its advance relies on."""

from __future__ import annotations

from typing import Any

from engine_helpers import batch, window_rows
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_engine_properties import streams, window_specs
from test_snapshot_contract import make, named

from gateway.engine import Engine, WindowSpec, parse_engine
from gateway.engine.operators import TumblingOperator

T0 = 1_764_072_000_000
CLASSES = [{"name": "slow", "devices": ["slow-*"], "out_of_orderness": "10s"}]


def engine(window: dict[str, Any], mode: str = "device") -> Engine:
    wm = {"mode": mode, "out_of_orderness": "1s", "classes": CLASSES}
    return Engine(parse_engine({"engine": {"watermark": wm}, "windows": [window]}))


def fired(eng: Engine, device: str, t_ms: int, seq: int) -> list[tuple[Any, ...]]:
    return window_rows(eng.process_batch(batch(device, [(T0 + t_ms, 1, seq, {"x": 1.0})]), now_ms=T0 + t_ms))


def test_a_device_of_a_class_waits_its_own_bound() -> None:
    eng = engine({"name": "t", "kind": "tumbling", "size": "5s", "metrics": ["x"]})
    for device in ("fast-1", "slow-1"):
        assert fired(eng, device, 1_000, 1) == []
    assert [r[:4] for r in fired(eng, "fast-1", 7_000, 2)] == [("t", "fast-1", T0, T0 + 5_000)]  # 7 s - 1 s >= 5 s
    assert fired(eng, "slow-1", 7_000, 2) == []  # 7 s - 10 s: not yet
    assert fired(eng, "slow-1", 14_000, 3) == []
    assert [r[:4] for r in fired(eng, "slow-1", 15_000, 4)] == [("t", "slow-1", T0, T0 + 5_000)]


def test_a_window_with_its_own_bound_uses_it_for_every_device() -> None:
    eng = engine({"name": "t", "kind": "tumbling", "size": "5s", "metrics": ["x"], "out_of_orderness": "2s"})
    for device in ("fast-1", "slow-1"):
        assert fired(eng, device, 1_000, 1) == []
        assert fired(eng, device, 6_000, 2) == []  # 6 s - 2 s < 5 s
        assert [r[:4] for r in fired(eng, device, 7_000, 3)] == [("t", device, T0, T0 + 5_000)]


def test_a_fired_tumbling_window_goes_at_its_lateness_while_a_newer_one_is_open() -> None:
    """A window kept for its allowed lateness is dropped once the watermark passes its end plus the lateness, even
    while a newer window of the key waits for its end (the smallest of the key's timers is the old one's)."""
    eng = engine({"name": "t", "kind": "tumbling", "size": "5s", "metrics": ["x"], "allowed_lateness": "3s"})
    fired(eng, "fast-1", 1_000, 1)
    assert [r[:4] for r in fired(eng, "fast-1", 7_000, 2)] == [("t", "fast-1", T0, T0 + 5_000)]
    assert [w[0] for w in eng.snapshot()["windows"]["t"]["wins"]["fast-1"]] == [T0, T0 + 5_000]
    fired(eng, "fast-1", 9_500, 3)  # watermark 8.5 s: past 5 s + 3 s, before the newer window's end (10 s)
    snap = eng.snapshot()["windows"]["t"]
    assert [w[0] for w in snap["wins"]["fast-1"]] == [T0 + 5_000]
    assert snap["timers"]["fast-1"] == [[T0 + 10_000, T0 + 5_000, 0]]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    specs=st.lists(window_specs().filter(lambda s: s.kind == "tumbling"), min_size=1, max_size=2),
    mode=st.sampled_from(["device", "global"]),
    stream=streams(),
)
def test_a_tumbling_key_keeps_its_fired_windows_first(specs: list[WindowSpec], mode: str, stream: list[Any]) -> None:
    """What a tumbling key's advance relies on, after every message (white box): its windows in order of their
    start, the fired ones (phase 1, dropped at end + lateness) first and counted, the others (phase 0, fired at
    their end) after, none of those the watermark has passed, and the smallest timer kept."""
    eng = make(named(specs), mode)
    for i, (site, device, readings, flushed) in enumerate(stream):
        now = i * 10
        eng.process_batch(batch(device, readings, flushed=flushed, site=site), now_ms=now)
        eng.advance(now + 5)
        for w in eng.windows:
            op = w.op
            assert isinstance(op, TumblingOperator)
            for key, tk in op.states().items():
                wins = tk.wins
                starts = [x.start for x in wins]
                assert starts == sorted(set(starts)) and wins, (key, starts)
                # the first ``fired`` are in phase 1: their end passed, their timer their end plus the lateness; the
                # others in phase 0: their timer their end, which the watermark has not passed
                f = tk.fired
                assert 0 <= f <= len(wins), (key, f)
                ends = [x.start + op.size for x in wins]
                timers = [e + op.lateness for e in ends[:f]] + ends[f:]
                assert tk.due(op.size, op.drop) == min(timers), (key, tk.due(op.size, op.drop), timers)
                wm = op.watermark("" if op.shared else key)
                assert wm is None or all(e > wm for e in ends[f:]), (key, wm)
                assert wm is not None or not f, key
                assert wm is None or all(e <= wm for e in ends[:f]), (key, wm)
