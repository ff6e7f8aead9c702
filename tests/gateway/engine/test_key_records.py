"""A key's record: its watermark cell and its window state are one object in one map per operator (``KeyCell``).

Until 6 December 2026 each operator kept a key in three maps (watermark cells, sites, states) and its cell beside its
state; a record costs one map entry and one object. A record lives as long as the cell did (never dropped), so a key
whose windows are all gone must hold nothing but the record: no panes, windows or sessions."""

from __future__ import annotations

import pytest
from engine_helpers import batch

from gateway.engine import Engine, parse_engine
from gateway.engine.operators import SessionOperator, SlidingOperator, TumblingOperator, _SlideKey
from gateway.memsize import block_size

T0 = 1_764_072_000_000
WINDOWS = [
    {"name": "t", "kind": "tumbling", "size": "60s", "metrics": ["x", "y"], "allowed_lateness": "10s"},
    {"name": "s", "kind": "sliding", "size": "60s", "slide": "1s", "metrics": ["x", "y"], "allowed_lateness": "10s"},
    {"name": "e", "kind": "session", "gap": "30s", "metrics": ["x", "y"], "allowed_lateness": "10s"},
]


def _engine(mode: str = "device") -> Engine:
    return Engine(parse_engine({"engine": {"watermark": {"mode": mode}}, "windows": WINDOWS}))


def _feed(engine: Engine, device: str, t0: int, n: int) -> list[object]:
    out: list[object] = []
    for i in range(n):
        t = t0 + i * 1000
        out += engine.process_batch(batch(device, [(t, 1, i, {"x": 1.0 + i, "y": 2.5})], received_ms=t + 50), t + 50)
    return out


@pytest.mark.parametrize("mode", ["device", "global"])
def test_a_key_is_in_one_map_and_its_cell_is_its_record(mode: str) -> None:
    engine = _engine(mode)
    _feed(engine, "d1", T0, 5)
    for w in engine.windows:
        op = w.op
        rec = op.state_of("d1")
        assert rec is not None and rec.site == "a", w.spec.name
        # per device, the cell a reading is judged against is the key's record; in global mode the shared one
        assert (op.key_cell("d1") is rec) == (mode == "device"), w.spec.name
        assert op.wm["d1"] is rec
        for gone in ("sites", "keys", "wins", "sessions"):  # the maps a key was also in
            assert not hasattr(op, gone), (w.spec.name, gone)


@pytest.mark.parametrize("mode", ["device", "global"])
def test_a_key_whose_windows_are_gone_holds_only_its_record(mode: str) -> None:
    """Per device the record stays (it is the key's watermark cell); in global mode it goes with the state (the outside
    review found a fleet's idle devices keeping one in each window, 130 bytes a device more than before)."""
    engine = _engine(mode)
    first = _feed(engine, "d1", T0, 90)
    assert any(getattr(o, "window", None) == "s" for o in first)
    if mode == "device":  # its board says it flushed everything up to there: its watermark passes it all
        engine.process_batch(batch("d1", [], flushed=T0 + 600_000, received_ms=T0 + 600_050), T0 + 600_050)
    else:  # another device moves the one watermark on
        _feed(engine, "d2", T0 + 600_000, 1)
    key = "d1"
    for w in engine.windows:
        op = w.op
        assert op.state_of(key) is None, (w.spec.name, key)
        if mode == "global":  # readings are judged against the shared cell: the key keeps nothing at all
            assert key not in op.wm and set(op.wm) == {"", "d2"}, (w.spec.name, list(op.wm))
            continue
        rec = op.wm[key]
        assert rec.site == "", (w.spec.name, key)
        if isinstance(op, SlidingOperator):
            sk = rec
            assert isinstance(sk, _SlideKey)
            assert sk.panes is op.no_panes and op.no_panes.n == 0 and op.no_panes.cap == 0
            assert sk.front_a == () and sk.back is None and sk.revs is None and sk.dirty is None
        elif isinstance(op, TumblingOperator):
            assert rec.wins == () and rec.fired == 0  # type: ignore[attr-defined]
        else:
            assert isinstance(op, SessionOperator)
            assert rec.sessions == ()  # type: ignore[attr-defined]
        # all it holds is the record (its key string is the tracker's too; the empty panes are the operator's)
        held = block_size(rec) - (block_size(op.no_panes) if isinstance(op, SlidingOperator) else 0)
        assert held <= 320, (w.spec.name, held)


def test_a_key_comes_back_with_state_made_anew() -> None:
    """A key whose windows were all dropped takes readings again: its windows are those of a key never seen."""
    engine = _engine()
    _feed(engine, "d1", T0, 70)
    _feed(engine, "d1", T0 + 500_000, 1)  # its earlier windows fire and go
    for w in engine.windows:
        assert w.op.state_of("d1") is not None
    again = _feed(engine, "d1", T0 + 900_000, 80)
    fresh = Engine(parse_engine({"windows": WINDOWS}))
    _feed(fresh, "d1", T0 + 500_000, 1)
    expect = _feed(fresh, "d1", T0 + 900_000, 80)
    assert [repr(o) for o in again] == [repr(o) for o in expect]
    for w, f in zip(engine.windows, fresh.windows, strict=True):
        snap, other = w.op.snapshot(), f.op.snapshot()
        snap.pop("late_count"), other.pop("late_count")
        assert snap == other, w.spec.name


def test_a_snapshot_whose_state_has_no_site_is_refused() -> None:
    engine = _engine()
    _feed(engine, "d1", T0, 5)
    snap = engine.snapshot()
    for name in ("t", "s", "e"):
        broken = engine.snapshot()
        del broken["windows"][name]["sites"]["d1"]
        with pytest.raises(ValueError, match="no site"):
            _engine().restore(broken)
    _engine().restore(snap)  # the whole one restores


def test_a_restored_tracker_keeps_one_string_a_site_and_a_device() -> None:
    """A snapshot's JSON gives a string for each place a name is written: restored, the watermark tracker holds one
    per site and per device, as when running (64 bytes a device each, twice, in bench_state.py's restored engine)."""
    import json

    engine = _engine()
    for d in ("board-1", "board-2", "board-3"):
        for i in range(3):
            t = T0 + i * 1000
            engine.process_batch(batch(d, [(t, 1, i, {"x": 1.0})], site="greenhouse-1", received_ms=t), t)
    again = _engine()
    again.restore(json.loads(json.dumps(engine.snapshot())))
    state, sites = again.tracker.state, again.tracker.sites
    assert state == engine.tracker.state and sites == engine.tracker.sites
    assert len({id(e[0]) for e in state.values()}) == 1  # one "greenhouse-1" for the three devices
    keys = {id(k) for k in state}
    assert {id(d) for ds in sites.values() for d in ds} == keys and {id(s) for s in sites} == {id(state["board-1"][0])}
