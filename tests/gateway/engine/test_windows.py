"""Pure window arithmetic."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.engine.windows import (
    first_window_end_after,
    last_window_containing,
    pane_size,
    pane_start,
    window_ranges,
    window_start,
    windows_of_pane,
)


def test_examples() -> None:
    assert window_ranges(65, 60, 20) == [(20, 80), (40, 100), (60, 120)]
    assert window_ranges(65, 60, 60) == [(60, 120)]
    assert window_ranges(-1, 10, 10) == [(-10, 0)]
    assert window_start(65, 60, offset=15) == 15
    assert last_window_containing(65, 60, 20) == (60, 120)
    assert pane_size(60, 25) == 5
    assert first_window_end_after(100, 60, 20) == 120


@given(st.integers(-1000, 1000), st.integers(1, 50), st.data())
def test_ranges_are_exactly_the_grid_windows_containing_ts(ts: int, size: int, data: st.DataObject) -> None:
    slide = data.draw(st.integers(1, size))
    offset = data.draw(st.integers(0, slide - 1))
    got = window_ranges(ts, size, slide, offset)
    brute = [
        (s, s + size) for s in range(ts - size - slide, ts + 1) if (s - offset) % slide == 0 and s <= ts < s + size
    ]
    assert got == brute
    assert got[-1] == last_window_containing(ts, size, slide, offset)
    if slide == size:
        assert got == [(window_start(ts, size, offset), window_start(ts, size, offset) + size)]
    g = pane_size(size, slide)
    p = pane_start(ts, g, offset)
    assert list(windows_of_pane(p, size, slide, offset)) == [s for s, _ in got]
    e = first_window_end_after(ts, size, slide, offset)
    assert e > ts and (e - size - offset) % slide == 0 and e - slide <= ts


@given(st.lists(st.integers(-50, 50), max_size=30).map(sorted), st.integers(-60, 60), st.integers(-3, 33))
def test_pane_searches_from_either_end_agree_with_bisect(starts: list[int], x: int, hint: int) -> None:
    from bisect import bisect_left

    from gateway.engine.accs import acc_empty
    from gateway.engine.operators import _left_from_back, _left_from_front

    panes = []  # the searches look at each pane's start
    for p in starts:
        acc = acc_empty(1)
        acc.start = p
        panes.append(acc)
    assert _left_from_front(panes, x) == bisect_left(starts, x)
    assert _left_from_back(panes, x) == bisect_left(starts, x)
    assert _left_from_back(panes, x, hint) == bisect_left(starts, x)  # a stale hint is only a hint
