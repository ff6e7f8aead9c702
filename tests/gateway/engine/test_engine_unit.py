"""The engine driven by hand: refused readings, lateness, revisions, line protocol, watermark rules."""

from __future__ import annotations

import pytest
from engine_helpers import batch

from gateway.engine import Engine, LateReading, WindowResult, parse_engine
from gateway.engine.config import WindowSpec
from gateway.engine.operators import TumblingOperator
from gateway.lineproto import reading_time_ns

T0 = 1_764_072_000_000


def engine(**extra: object) -> Engine:
    w = {"name": "m1", "kind": "tumbling", "size": "60s", "metrics": ["temp_c"], "allowed_lateness": "60s"}
    return Engine(parse_engine({"windows": [w], "engine": extra}))


def test_impossible_and_unsynced_times_are_refused_with_a_reason() -> None:
    e = engine()
    outs = e.process_batch(batch("d", [(T0 + 400_000, 1, 1, {"temp_c": 1.0})]), now_ms=T0)
    outs += e.process_batch(batch("d", [(1_000, 1, 2, {"temp_c": 1.0})]), now_ms=T0)
    outs += e.process_batch(batch("d", [(T0, 1, 3, {"temp_c": 1.0})], quality="u"), now_ms=T0)
    assert [(o.reason, o.window, o.seq) for o in outs if isinstance(o, LateReading)] == [
        ("time_in_future", "", 1),
        ("time_too_old", "", 2),
        ("unsynced", "", 3),
    ]
    assert e.device_watermark("d") is None  # none of them moved the watermark
    assert e.stats["time_in_future"] == e.stats["time_too_old"] == e.stats["unsynced"] == 1


def test_a_boot_or_seq_beyond_31_bits_is_refused_and_the_rest_of_the_batch_windowed() -> None:
    """The windows order readings of one time by ``boot << 31 | seq`` (0 .. 2**31 - 1 each, docs/protocol.md; the
    gateway's decoder refuses any other first). Given to the engine directly, such a reading is refused with its
    reason, and the batch's other readings are windowed: a tumbling window's and a session's first reading is the
    honest one. An outside review found seq 2**31 taken as a first reading of seq 0 (its boot's bit spilt over)."""
    windows = [
        {"name": "t", "kind": "tumbling", "size": "1s", "metrics": ["x"]},
        {"name": "g", "kind": "session", "gap": "1s", "metrics": ["x"]},
    ]
    e = Engine(parse_engine({"windows": windows}))
    bad = [(1, 2**31), (2**31, 5), (-1, 5), (1, -1)]
    rows = [(T0 + 5, b, s, {"x": 1.0}) for b, s in bad] + [(T0 + 5, 1, 5, {"x": 2.0})]
    outs = e.process_batch(batch("d", rows), now_ms=T0)
    outs += e.process_batch(batch("d", [(T0 + 60_000, 1, 6, {"x": 3.0})]), now_ms=T0 + 60_000)
    assert [(o.reason, o.boot, o.seq) for o in outs if isinstance(o, LateReading)] == [("bad_id", b, s) for b, s in bad]
    assert e.stats["bad_id"] == 4
    firsts = {(o.window, o.count, o.fb, o.fs, o.fv) for o in outs if isinstance(o, WindowResult)}
    assert firsts == {("t", 1, 1, 5, 2.0), ("g", 1, 1, 5, 2.0)}


def test_a_time_beyond_the_engines_range_is_refused_whatever_the_clock_says() -> None:
    """Event times are kept within 2**53 ms of 1970 (about 285,000 years, ``config.TIME_LIMIT_MS``), whatever
    ``now_ms`` the caller passes: a sliding window keeps a reading's time shifted left by four in a 64-bit column, and
    a time of 2**59 ms or more wrapped there (compiled) or failed after the pane's place was made (pure; an outside
    review). Such a reading is refused as in the future, and the state is as before it."""
    w = {"name": "s", "kind": "sliding", "size": "10s", "slide": "5s", "metrics": ["temp_c"]}
    e = Engine(parse_engine({"windows": [w]}))
    e.process_batch(batch("d", [(T0, 1, 1, {"temp_c": 1.0})]), now_ms=T0)
    before = e.snapshot()
    for t in (2**53 + 1, 2**59 + 123_000, 2**63 + 5):
        outs = e.process_batch(batch("d", [(t, 1, 2, {"temp_c": 2.0})], flushed=t), now_ms=t)
        assert [(o.reason, o.t_ms) for o in outs if isinstance(o, LateReading)] == [("time_in_future", t)]
        assert e.snapshot()["windows"] == before["windows"]
    assert e.stats["time_in_future"] == 3
    outs = e.process_batch(batch("d", [(2**53, 1, 3, {"temp_c": 3.0})]), now_ms=2**53)  # the limit itself is kept
    assert not [o for o in outs if isinstance(o, LateReading)]


def test_the_pane_columns_refuse_a_time_they_cannot_hold_before_making_its_place() -> None:
    from gateway.engine.accs import acc_empty
    from gateway.engine.operators import Panes

    panes = Panes(1, 1000, 0)
    panes.insert_reading(0, [1.0], 5_000, 1, 1)
    # shifted left by five (the pane's flags) in a wide key's column; -2**58's pane starts below it (an outside review:
    # when that pane became an accumulator, its start overflowed)
    for t in (2**58, -(2**58) - 1, -(2**58)):
        with pytest.raises(ValueError, match="time"):
            panes.insert_reading(1, [1.0], t, 1, 2)
        assert panes.n == 1 and panes.row(0, 1)[1] == 5_000
    for t in (
        2**58 - 1,
        -(2**58) + 1000,
    ):  # the last it holds, each end (the key widened: beyond 25.6 hours from the one before)
        edge = Panes(1, 1000, 0)
        edge.insert_reading(0, [1.0], 5_000, 1, 1)
        edge.insert_reading(1 if t > 0 else 0, [2.0], t, 1, 2)
        assert sorted(edge.row(i, 1)[1] for i in range(2)) == sorted([5_000, t])
        i = [edge.row(q, 1)[1] for q in range(2)].index(t)  # its pane an accumulator: its start in the column too
        acc = acc_empty(1)
        acc.start = edge.start(i)
        edge.make_acc(i, acc, False)
        assert edge.acc(i) is acc and acc.count(0) == 1 and edge.start(i) == t - (t % 1000)


def test_unsynced_window_policy_aggregates_but_never_moves_the_watermark() -> None:
    e = engine(unsynced="window")
    assert e.process_batch(batch("d", [(T0, 1, 1, {"temp_c": 1.0})], quality="u"), now_ms=T0) == []
    assert e.device_watermark("d") is None
    outs = e.process_batch(batch("d", [(T0 + 70_000, 1, 2, {"temp_c": 3.0})]), now_ms=T0 + 70_000)
    assert [(o.start_ms, o.count) for o in outs if isinstance(o, WindowResult)] == [(T0, 1)]


def test_late_within_lateness_refires_same_point_beyond_goes_late() -> None:
    e = engine()
    e.process_batch(batch("d", [(T0 + 1_000, 1, 1, {"temp_c": 10.0})]), now_ms=T0)
    first = e.process_batch(batch("d", [(T0 + 66_000, 1, 2, {"temp_c": 11.0})]), now_ms=T0)
    (w1,) = [o for o in first if isinstance(o, WindowResult)]
    assert (w1.revision, w1.fired, w1.count) == (1, "watermark", 1)
    second = e.process_batch(batch("d", [(T0 + 2_000, 1, 3, {"temp_c": 20.0})]), now_ms=T0)
    (w2,) = [o for o in second if isinstance(o, WindowResult)]
    assert (w2.revision, w2.fired, w2.count, w2.aggregates["mean"]) == (2, "late", 2, 15.0)
    # same series and timestamp: the second point overwrites the first in InfluxDB
    assert w1.to_line().rsplit(" ", 1)[1] == w2.to_line().rsplit(" ", 1)[1] == str(T0 * 1_000_000)
    assert w1.to_line().split(" ")[0] == w2.to_line().split(" ")[0]
    e.process_batch(batch("d", [(T0 + 200_000, 1, 4, {"temp_c": 1.0})]), now_ms=T0)
    (late,) = e.process_batch(batch("d", [(T0 + 3_000, 1, 5, {"temp_c": 9.0})]), now_ms=T0)
    assert isinstance(late, LateReading)
    assert (late.reason, late.late_by_ms, late.window, late.metric) == ("too_late", 192_000, "m1", "temp_c")
    assert e.late_count() == 1


def test_flushed_marker_advances_at_once() -> None:
    e = engine()
    e.process_batch(batch("d", [(T0 + 1_000, 1, 1, {"temp_c": 10.0})]), now_ms=T0)
    outs = e.process_batch(batch("d", [], flushed=T0 + 59_999), now_ms=T0 + 60_000)
    assert [o.count for o in outs if isinstance(o, WindowResult)] == [1]
    assert e.device_watermark("d") == T0 + 60_000


def test_line_protocol_of_outputs() -> None:
    w = WindowResult("m1", "device", "gh-07", "a", T0, T0 + 60_000, "temp_c", 2, {"mean": 21.5}, 1, "watermark")
    assert w.to_line() == (
        "window,device=gh-07,metric=temp_c,site=a,window=m1 count=2i,mean=21.5,revision=1i,"
        f'end_ms={T0 + 60_000}i,fired="watermark",result="final" {T0 * 1_000_000}'
    )
    late = LateReading("m1", "a", "gh-07", "temp_c", T0, 17, 3, 5_000, T0 + 5_000, "too_late", 21.0)
    assert late.to_line() == (
        "late_reading,device=gh-07,metric=temp_c,reason=too_late,site=a,window=m1 "
        f"late_by_ms=5000i,boot=17i,seq=3i,watermark_ms={T0 + 5_000}i,value=21.0 {reading_time_ns(T0, 17, 3)}"
    )  # at the reading's own point time: two readings of one millisecond stay apart here too


def test_watermark_never_goes_back() -> None:
    op = TumblingOperator(WindowSpec("w", "tumbling", ("x",), size_ms=10, slide_ms=10), shared=False)
    op.advance("d", 100)
    with pytest.raises(AssertionError, match="went back"):
        op.advance("d", 99)


def test_snapshot_version_and_windows_are_checked() -> None:
    snap = engine().snapshot()
    other = Engine(parse_engine({"windows": [{"name": "x", "kind": "session", "gap": 5, "metrics": ["t"]}]}))
    with pytest.raises(ValueError, match="windows"):
        other.restore(snap)
    with pytest.raises(ValueError, match="version"):
        other.restore({**snap, "version": 99})


def test_a_flushed_buffer_does_not_leave_its_panes_allocated_to_the_device() -> None:
    """A board flushing half an hour of readings at once opens 1,800 one-second panes; once they are past,
    its sliding window keeps at most a few windows' worth of accumulators for reuse, not all 1,800."""
    w = {"name": "s", "kind": "sliding", "size": "60s", "slide": "1s", "metrics": ["temp_c", "rh"]}
    e = Engine(parse_engine({"windows": [w]}))
    flushed = [(T0 + i * 1000, 1, i, {"temp_c": 20.0 + i % 7, "rh": 50.0}) for i in range(1800)]
    outs = e.process_batch(batch("d", flushed, flushed=T0 + 1_800_000), now_ms=T0 + 1_801_000)
    assert sum(isinstance(o, WindowResult) for o in outs) == 2 * 1800  # every window up to the marker, 2 metrics
    for s in range(1800, 1900):  # then live
        now = T0 + s * 1000
        e.process_batch(batch("d", [(now, 1, s, {"temp_c": 21.0, "rh": 50.0})]), now_ms=now + 50)
    op = e.windows[0].op
    key = op.states()["d"]
    assert key.panes.n <= 70  # the panes still in a window (plus the bound ahead)
    assert len(key.panes.tm) <= 100  # and the columns shrank to about them
    assert len(op.spare) <= op.spare_max == 4 * 60 + 64
