"""Where the engine's rules differ from Flink's, pinned (docs/concepts.md, "Compared with Flink").

1. Global mode fires a window ``[start, end)`` when ``W >= end`` with ``W = max t - bound``: the reading that
   makes ``max t - bound`` reach ``end`` fires it, one at ``end - 1`` does not. That is when Flink DataStream's
   ``BoundedOutOfOrdernessWatermarks`` (``W = max t - bound - 1``) fires its ``TimeWindow`` (at
   ``W >= maxTimestamp() = end - 1``); Flink SQL's ``WATERMARK FOR ts AS ts - INTERVAL ...`` (``W = max t -
   bound``) fires it one millisecond earlier, at ``max t - bound = end - 1``.
2. Session windows merge when they overlap, not when they only touch: ``[a, b)`` and ``[b, c)`` stay two
   sessions (Flink's ``TimeWindow.intersects`` is ``start <= other.end && end >= other.start``: it merges them).
3. A late reading that would extend a kept session backwards (start it earlier) goes to the late output when the
   window it would open on its own is past the allowed lateness; Flink merges it first and checks the merged
   window, so it keeps it.
"""

from __future__ import annotations

from engine_helpers import batch

from gateway.engine import Engine, EngineSpec, LateReading, WatermarkSpec, WindowResult, WindowSpec

T0 = 1_764_072_000_000  # a minute boundary
BOUND = 5_000


def engine(*windows: WindowSpec, mode: str = "global") -> Engine:
    wm = WatermarkSpec(mode=mode, out_of_orderness_ms=BOUND)  # type: ignore[arg-type]
    return Engine(EngineSpec(windows=windows, watermark=wm))


def fired(outs: list[object]) -> list[tuple[int, int, int]]:
    return [(o.start_ms, o.count, o.revision) for o in outs if isinstance(o, WindowResult) and o.fired != "superseded"]


def test_global_mode_fires_at_max_t_minus_bound_equal_to_the_end() -> None:
    e = engine(WindowSpec("m", "tumbling", ("x",), size_ms=60_000, slide_ms=60_000))
    out = e.process_batch(batch("d1", [(T0 + 1_000, 1, 1, {"x": 1.0})]), T0 + 1_000)
    assert fired(out) == []
    # max t - bound = end - 1: Flink SQL's watermark (max t - bound) would fire [T0, T0 + 60 s) here
    out = e.process_batch(batch("d2", [(T0 + 60_000 + BOUND - 1, 1, 1, {"x": 2.0})]), T0 + 70_000)
    assert fired(out) == []
    # max t - bound = end: the kit fires, as Flink DataStream does (its watermark max t - bound - 1 = end - 1)
    out = e.process_batch(batch("d3", [(T0 + 60_000 + BOUND, 1, 1, {"x": 3.0})]), T0 + 70_000)
    assert fired(out) == [(T0, 1, 1)]


def test_touching_sessions_stay_apart() -> None:
    gap = 10_000
    e = engine(WindowSpec("s", "session", ("x",), gap_ms=gap), mode="device")
    # [T0, T0 + gap) and [T0 + gap, T0 + 2 gap): they touch, they do not overlap
    e.process_batch(batch("d1", [(T0, 1, 1, {"x": 1.0}), (T0 + gap, 1, 2, {"x": 2.0})]), T0 + gap)
    out = e.process_batch(batch("d1", [(T0 + 60_000, 1, 3, {"x": 3.0})]), T0 + 60_000)
    assert sorted(fired(out)) == [(T0, 1, 1), (T0 + gap, 1, 1)]  # two sessions; Flink would emit one of two


def test_a_late_reading_that_would_start_a_kept_session_earlier_is_late() -> None:
    gap, lateness = 10_000, 30_000
    e = engine(WindowSpec("s", "session", ("x",), gap_ms=gap, allowed_lateness_ms=lateness), mode="device")
    e.process_batch(batch("d1", [(T0 + 50_000, 1, 1, {"x": 1.0})]), T0 + 50_000)
    # the watermark moves to T0 + 85 s: the session [T0 + 50 s, T0 + 60 s) fired and is kept until T0 + 90 s
    e.process_batch(batch("d1", [(T0 + 90_000, 1, 2, {"x": 2.0})]), T0 + 90_000)
    # a reading at T0 + 41 s: [T0 + 41 s, T0 + 51 s) overlaps the kept session, but on its own it ended at
    # T0 + 51 s + 30 s = T0 + 81 s <= W: late. Flink merges it into [T0 + 41 s, T0 + 60 s), not late there.
    out = e.process_batch(batch("d1", [(T0 + 41_000, 1, 3, {"x": 3.0})]), T0 + 91_000)
    late = [o for o in out if isinstance(o, LateReading)]
    assert [(o.t_ms, o.window, o.late_by_ms) for o in late] == [(T0 + 41_000, "s", 85_000 - 41_000)]
    assert fired(out) == []
    # a reading inside the kept session is taken: the session re-fires with revision 2
    out = e.process_batch(batch("d1", [(T0 + 55_000, 1, 4, {"x": 4.0})]), T0 + 92_000)
    assert fired(out) == [(T0 + 50_000, 2, 2)]
