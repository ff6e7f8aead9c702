"""Pure window arithmetic."""

from __future__ import annotations

import random
from typing import Any

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


@given(
    st.lists(st.integers(-50, 50), max_size=30, unique=True).map(sorted),
    st.integers(-60, 60),
    st.integers(-3, 33),
    st.randoms(use_true_random=False),
)
def test_pane_searches_from_either_end_agree_with_bisect(
    starts: list[int], x: int, hint: int, rng: random.Random
) -> None:
    """A sliding window's searches by start (panes of 10 ms from 3; the starts a window searches for are panes'
    starts), over panes of one reading at any time of their pane and accumulators, agree with ``bisect``."""
    from bisect import bisect_left

    from gateway.engine.accs import acc_empty
    from gateway.engine.operators import Panes

    panes = Panes(1, 10, 3)
    for p in starts:
        if rng.random() < 0.3:
            acc = acc_empty(1)
            acc.start = 10 * p + 3
            panes.insert_acc(panes.n, acc)
        else:
            panes.insert_reading(panes.n, [1.0], 10 * p + 3 + rng.randrange(10), 1, 1)
    want = bisect_left(starts, x)
    assert [panes.start(i) for i in range(panes.n)] == [10 * p + 3 for p in starts]
    assert panes.find_front(10 * x + 3) == want
    assert panes.find_back(10 * x + 3) == want
    assert panes.find_back(10 * x + 3, hint) == want  # a stale hint is only a hint


@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 400), st.integers(0, 0x7FFFFFFF)), max_size=300))
def test_panes_as_columns_keep_what_a_list_of_panes_keeps(ops: list[tuple[int, int, int]]) -> None:
    """The pane store (``Panes``: columns with live panes in ``[lo, hi)``, moved down, grown and shrunk as panes come
    and go) against a sorted list of the same panes: after every step the same panes, readings and accumulators, in
    order, and columns no longer than a few panes beyond the live ones once they have shrunk."""
    _panes_against_a_list(ops)


@given(
    st.lists(
        st.tuples(
            st.integers(0, 5),
            st.one_of(st.integers(0, 400), st.integers(0, 300_000)),  # seconds: panes up to 3.5 days apart
            st.integers(0, 0x7FFFFFFF),
        ),
        max_size=300,
    )
)
def test_panes_of_one_boot_as_columns_keep_what_a_list_of_panes_keeps(ops: list[tuple[int, int, int]]) -> None:
    """As above, for a board's panes: mostly of one boot (the key's time, bits and seq in one int a pane), another now
    and then (the key wide), times hours and days apart (its base moved, or more than 25.6 hours apart: wide), narrowed
    again as panes are dropped."""
    _panes_against_a_list(ops, board=True)


def test_panes_as_columns_through_a_boards_life() -> None:
    """As above, for the ways a board's panes come and go: a pane a second, the oldest dropped as windows pass (the
    columns' live panes moved down again and again), late ones inserted, a flushed buffer of hundreds (the columns
    grown) then dropped (shrunk back), and silences that empty them."""
    _panes_against_a_list(_board_life(random.Random(7), quiet=[0]), every=97)


def test_panes_of_one_boot_through_a_boards_life() -> None:
    """As above, for a board's panes mostly of one boot (another in one reading of 500: the key wide until its panes
    have left), and silences of an hour to three days, with or without the panes emptied (the key's base moved, or
    its panes more than 25.6 hours apart: wide), then narrowed again as panes are dropped."""
    for seed in range(3):
        _panes_against_a_list(_board_life(random.Random(seed), quiet=[0, 3600, 86_400, 250_000]), every=13, board=True)


def _board_life(rng: random.Random, quiet: list[int]) -> list[tuple[int, int, int]]:
    """Operations for :func:`_panes_against_a_list`: phases of live readings, bursts and silences (each silence
    ``rng.choice(quiet)`` seconds long, and then 30 drops)."""
    ops: list[tuple[int, int, int]] = []
    sec = 0
    for _ in range(40):
        phase = rng.choice(["live", "live", "burst", "quiet"])
        if phase == "live":
            for _ in range(rng.randrange(50, 400)):
                sec += 1
                ops.append((rng.choice([1, 2]), sec, rng.randrange(1 << 31)))
                if rng.random() < 0.1:
                    ops.append((2, max(0, sec - rng.randrange(1, 5)), rng.randrange(1 << 31)))  # late
                if rng.random() < 0.05:
                    ops.append((4, sec - 2, rng.randrange(1 << 31)))
                if sec > 60:
                    ops.append((3, 0, 0))  # one dropped (``a % 40 + 1`` panes: 1)
        elif phase == "burst":
            for _ in range(rng.randrange(200, 900)):
                sec += 1
                ops.append((1, sec, rng.randrange(1 << 31)))
            ops += [(3, 39, 0)] * rng.randrange(5, 30)  # 40 at a time
        else:
            sec += rng.choice(quiet)
            ops += [(3, 39, 0)] * rng.choice([30, 0] if len(quiet) > 1 else [30])
    return ops


def _panes_against_a_list(ops: list[tuple[int, int, int]], every: int = 1, board: bool = False) -> None:
    """``ops``: (0-2, a, b) a reading in the pane ``a`` (a new pane, or a second reading there), boot ``b`` (below
    1,024 unless 0; with ``board``, 1, or 2 for one ``b`` in 500); (3, a, _) drop the ``a % 40 + 1`` oldest; (4, a, b)
    an accumulator pane at ``a``. Compared in whole every ``every`` steps, and the columns' length after each drop."""
    from gateway.engine.accs import acc_empty
    from gateway.engine.aggregates import Stat
    from gateway.engine.operators import Panes

    pane, off, nm = 1000, 250, 3
    panes = Panes(nm, pane, off)
    model: list[tuple[int, Any]] = []  # (start, ("one", values, t, b, s) or ("acc", acc))
    step = 0
    for op, a, b in ops:
        if op <= 2:  # a reading in the pane of start a: a new pane, or its second reading
            p = a * pane + off
            t = p + b % pane
            values: list[float | None] = [float(b % 97) if (b >> m) & 1 else None for m in range(nm)]
            if all(v is None for v in values):
                values[1] = -0.0
            starts = [q for q, _ in model]
            i = panes.find_back(p)
            assert i == sum(q < p for q in starts)
            if p in starts:
                if panes.acc(i) is None:
                    acc = acc_empty(nm)
                    acc.start = p
                    panes.make_acc(i, acc, b & 1 == 0)
                    one = model[i][1]
                    ref = acc_empty(nm)
                    ref.add(one[1], one[2], one[3], one[4])
                    model[i] = (p, ("acc", acc, ref))
                else:
                    assert panes.acc(i) is model[i][1][1]
            else:
                boot = (1 if b % 500 else 2) if board else b % 1024 if op else b
                panes.insert_reading(i, values, t, boot, b)
                model.insert(i, (p, ("one", values, t, boot, b)))
        elif op == 3 and model:  # drop the oldest few
            n = min(len(model), 1 + a % 40)
            dropped = panes.drop(n)
            gone = [x[1] for _, x in model[:n] if x[0] == "acc"]
            assert (dropped or []) == gone
            del model[:n]
            assert len(panes.tm) <= max(16, 4 * len(model) + 8)  # shrunk back with the live panes
        elif op == 4:  # an accumulator pane
            p = a * pane + off
            starts = [q for q, _ in model]
            if p not in starts:
                acc = acc_empty(nm)
                acc.start = p
                acc.add([1.0, None, 2.0], p, 0, b)
                i = panes.find_front(p)
                panes.insert_acc(i, acc)
                model.insert(i, (p, ("acc", acc, acc)))
        assert panes.n == len(model)
        step += 1
        if step % every and step != len(ops):
            continue
        for i, (p, x) in enumerate(model):
            assert panes.start(i) == p
            assert (panes.acc(i) is None) == (x[0] == "one")
            if x[0] == "one":
                assert panes.row(i, nm) == [p, x[2], x[3], x[4], *x[1]]
                got, want = acc_empty(nm), acc_empty(nm)
                panes.set_into(i, got)
                want.add(x[1], x[2], x[3], x[4])
                assert got.to_json() == want.to_json()
                for m in range(nm):
                    r = Stat()
                    assert panes.reading_into(i, m, r, True) == (x[1][m] is not None)
            else:
                assert panes.acc(i) is x[1]
    if not model:
        assert len(panes.tm) <= 16


def test_a_narrow_keys_base_moves_rarely_whatever_its_span() -> None:
    """A key's panes of one minute, a reading a minute for 100 hours, the oldest dropped to keep 20, 27, 30 or 36
    hours of them: its base moves at most once in each 9.3 hours of readings (a quarter of the narrow span is left above
    the newest after each move), or the key is wide. An outside review found it moved at every reading from 28 hours
    on (the base put at the newest's edge): O(n) each, 90 s against 0.3 s for 300,000 panes."""
    from gateway.engine.operators import Panes

    for hours in (20, 27, 30, 36):
        panes = Panes(2, 60_000, 0)
        bases = set()
        for k in range(6000):
            panes.insert_reading(panes.n, [1.5, 2.0], 1_764_072_000_000 + k * 60_000, 1, k)
            if panes.n > hours * 60:
                panes.drop(1)
            bases.add(panes.base)
        assert len(bases) <= 100 // 9.3 + 2, (hours, len(bases))
        assert [panes.row(i, 2)[1] for i in (0, panes.n - 1)] == [
            1_764_072_000_000 + k * 60_000 for k in (5999 - hours * 60 + 1, 5999)
        ]
