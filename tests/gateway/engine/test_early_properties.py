"""Property tests of early (provisional) results against the brute-force reference.

For random windows of every kind, both watermark modes, random disorder, lateness, flushed markers and
processing-time ticks interleaved with the messages:

- the final results and updates of a window with early triggers are exactly those of the same window
  without them, and those of the reference (whatever the trigger);
- each provisional result is exactly the aggregate of the readings handled before it (brute force over every
  reading of its key inside the window);
- per window, key and metric the kinds come in the order provisional* final update*;
- a checkpoint (snapshot, JSON, restore) anywhere in the stream changes nothing;
- windows without a trigger emit no provisional result and keep no trigger state.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

from engine_helpers import batch, late_rows, rows_close, window_rows
from engine_reference import Reference
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_engine_properties import streams, window_specs

from gateway.engine import Engine, EngineSpec, Output, WatermarkSpec, WindowResult, WindowSpec
from sim.reference import _aggregates

Item = tuple[str, str, list[tuple[int, int, int, dict[str, float]]], int | None]


@st.composite
def triggers(draw: st.DrawFn) -> tuple[int, int]:
    """``(early_every_ms, early_count)``, at least one of them set."""
    every = draw(st.sampled_from([0, 0, 1, 7, 50]))
    count = draw(st.sampled_from([0, 1, 2, 3]) if every else st.sampled_from([1, 2, 3]))
    return every, count


def _engine(spec: WindowSpec, mode: str, bound: int) -> Engine:
    wm = WatermarkSpec(mode=mode, out_of_orderness_ms=bound, idle_timeout_ms=10**12)  # type: ignore[arg-type]
    return Engine(EngineSpec(windows=(spec,), watermark=wm, min_time_ms=0))


def _is_early(o: Output) -> bool:
    """A provisional result, or the mark left on one whose session merged away (never emitted without them)."""
    return isinstance(o, WindowResult) and (o.revision == 0 or (o.fired == "superseded" and o.revision == 1))


def _close(a: dict[str, float], b: dict[str, float]) -> bool:
    return set(a) == set(b) and all(math.isclose(a[k], b[k], rel_tol=1e-9, abs_tol=1e-9) for k in a)


def _lines(outs: list[Output]) -> list[str]:
    return [o.to_line() for o in outs]


def run(
    spec: WindowSpec, trig: tuple[int, int], mode: str, bound: int, stream: list[Item], ticks: list[int], cut: int
) -> None:
    early_spec = dataclasses.replace(spec, early_every_ms=trig[0], early_count=trig[1])
    engine = _engine(early_spec, mode, bound)
    plain = _engine(spec, mode, bound)
    ref = Reference(spec, mode, bound)
    now = 10**9
    handled: dict[str, list[tuple[int, int, int, dict[str, float]]]] = {}  # key -> every reading handled
    kinds: dict[tuple[str, int, str], list[int]] = {}  # revisions in the order emitted
    per_window: dict[tuple[str, int], list[int]] = {}
    names = tuple(a for a in spec.aggregates if a != "count")
    far = 10**6
    closing = [
        (site, device, [(far, 9, 0, {"z": 0.0})], far) for site, device in sorted({(x[0], x[1]) for x in stream})
    ]
    for i, (site, device, readings, flushed) in enumerate(stream + closing):
        if i == cut:  # a checkpoint and a restart: the rest must be the same as without
            again = _engine(early_spec, mode, bound)
            again.restore(json.loads(json.dumps(engine.snapshot())))
            engine = again
            event("restored mid-stream")
        now += ticks[i % len(ticks)]
        key = site if spec.key == "site" else device
        b = batch(device, readings, flushed=flushed, site=site)
        ticked = engine.on_processing_time(now) if ticks[i % len(ticks)] % 3 == 0 else []
        _check_early(engine, ticked, handled, names, now, kinds, per_window)
        outs = engine.process_batch(b, now_ms=now)
        handled.setdefault(key, []).extend(readings)
        _check_early(engine, outs, handled, names, now, kinds, per_window)
        base = plain.process_batch(b, now_ms=now)
        # finals and updates: those of the window without triggers, line for line, and the reference's
        assert _lines([o for o in ticked + outs if not _is_early(o)]) == _lines(base)
        ref_rows, ref_late = ref.batch(site, device, readings, flushed)
        assert rows_close(window_rows(base), sorted(ref_rows, key=lambda r: r[:5]))
        assert late_rows(outs) == sorted(ref_late)
    # provisional* final update*: revisions 0, then 1, then more, per window and per metric (a metric's first
    # value may come with an update: the window's final result was emitted for the other metrics)
    for (key, start, metric), revs in kinds.items():
        assert revs == sorted(revs), (key, start, metric, revs)
        assert 0 not in revs or 1 in revs, f"a provisional point never made final: {(key, start, metric, revs)}"
    for (key, start), revs in per_window.items():
        assert revs == sorted(revs) and revs.count(1) <= len(spec.metrics), (key, start, revs)
    assert not [o for o in engine.on_processing_time(now + 10**6) if isinstance(o, WindowResult)]
    snap = engine.snapshot()["early"]["w"]
    assert not snap["pend"] and not snap["prov"], "trigger state left after every window closed"


def _check_early(
    engine: Engine,
    outs: list[Output],
    handled: dict[str, list[tuple[int, int, int, dict[str, float]]]],
    names: tuple[str, ...],
    now: int,
    kinds: dict[tuple[str, int, str], list[int]],
    per_window: dict[tuple[str, int], list[int]],
) -> None:
    """Provisional results: exactly the readings handled so far, and only for windows still open."""
    for o in outs:
        if not isinstance(o, WindowResult):
            continue
        assert o.emitted_ms == now
        kinds.setdefault((o.key, o.start_ms, o.metric), []).append(o.revision)
        per_window.setdefault((o.key, o.start_ms), []).append(o.revision)
        if o.revision == 0:
            event("provisional results")
            assert o.fired == "early" and o.result == "provisional" and o.provisional_n >= 1
            evs = [r for r in handled[o.key] if o.start_ms <= r[0] < o.end_ms]
            agg = _aggregates(evs, o.metric, names)
            assert agg is not None and o.count == agg[0] and _close(dict(o.aggregates), agg[1]), (o, evs)
            wm = engine.device_watermark(o.key, "w")
            assert wm is None or o.end_ms > wm
        elif _is_early(o):
            event("provisional session superseded")


EXAMPLES = int(os.environ.get("EDGEKIT_PROPERTY_EXAMPLES", "100"))
common = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@common
@given(
    spec=window_specs(),
    trig=triggers(),
    mode=st.sampled_from(["device", "global"]),
    bound=st.integers(0, 10),
    stream=streams(),
    ticks=st.lists(st.integers(0, 40), min_size=1, max_size=8),
    cut=st.integers(0, 40),
)
def test_early_results_against_reference(
    spec: WindowSpec, trig: tuple[int, int], mode: str, bound: int, stream: list[Any], ticks: list[int], cut: int
) -> None:
    run(spec, trig, mode, bound, stream, ticks, cut)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=window_specs(), stream=streams(), ticks=st.lists(st.integers(0, 40), min_size=1, max_size=8))
def test_windows_without_a_trigger_are_unchanged(spec: WindowSpec, stream: list[Any], ticks: list[int]) -> None:
    """No trigger: no provisional result, ``on_processing_time`` emits nothing, the checkpoint has no trigger
    state, and every result is a final one (revision 1) or an update."""
    engine = _engine(spec, "device", 3)
    now = 10**9
    for i, (site, device, readings, flushed) in enumerate(stream):
        now += ticks[i % len(ticks)]
        assert engine.on_processing_time(now) == []
        for o in engine.process_batch(batch(device, readings, flushed=flushed, site=site), now_ms=now):
            if isinstance(o, WindowResult):
                assert o.revision >= 1 and o.fired != "early"
                assert o.result == ("final" if o.revision == 1 else "update")
                assert o.provisional_n == 0 and o.emitted_ms == now
    assert "early" not in engine.snapshot()
