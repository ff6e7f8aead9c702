"""Aggregates: the per-aggregate objects and the operators' fused ``Stat`` agree with plain Python, and merge."""

from __future__ import annotations

import math
import statistics

from hypothesis import given
from hypothesis import strategies as st

from gateway.engine.aggregates import AGGREGATES, Stat

values = st.lists(st.tuples(st.integers(0, 50), st.integers(-1000, 1000)), min_size=1, max_size=40)
NAMES = ("sum", "mean", "min", "max", "stddev", "first", "last")


def expected(items: list[tuple[int, int, float]]) -> dict[str, float]:
    xs = [v for _, _, v in items]
    out = {
        "sum": sum(xs),
        "mean": statistics.fmean(xs),
        "min": min(xs),
        "max": max(xs),
        "first": min(items)[2],
        "last": max(items)[2],
    }
    if len(xs) > 1:
        out["stddev"] = statistics.stdev(xs)
    return out


def close(a: dict[str, float], b: dict[str, float]) -> bool:
    return a.keys() == b.keys() and all(math.isclose(a[k], b[k], rel_tol=1e-9, abs_tol=1e-9) for k in a)


def fold(items: list[tuple[int, int, float]]) -> Stat:
    st = Stat()
    for t, s, v in items:
        st.add_var(v, t, 0, s)
    return st


@given(values, st.integers(0, 40), st.booleans())
def test_fused_stat_adds_and_merges(raw: list[tuple[int, int]], cut: int, shuffle: bool) -> None:
    items = [(t, i, float(v)) for i, (t, v) in enumerate(raw)]  # (t, seq, value)
    feed = sorted(items, key=lambda x: (-x[0], x[1])) if shuffle else items  # arrival order must not matter
    whole = fold(feed)
    assert whole.n == len(items)
    assert close(whole.aggregate(NAMES), expected(items))
    restored = Stat.from_json(whole.to_json())  # the snapshot form keeps everything
    assert restored.aggregate(NAMES) == whole.aggregate(NAMES) and restored.n == whole.n
    cut = min(max(cut, 1), len(items) - 1) if len(items) > 1 else 0
    if cut:
        left, right = fold(feed[:cut]), fold(feed[cut:])
        before = right.aggregate(NAMES)
        merged = left.copy()
        merged.merge_from(right)
        assert right.aggregate(NAMES) == before  # the merged-in side is not changed
        assert merged.n == len(items)
        assert close(merged.aggregate(NAMES), expected(items))
        into_empty = Stat()
        into_empty.merge_from(whole)
        assert into_empty.aggregate(NAMES) == whole.aggregate(NAMES)


@given(values, values)
def test_each_aggregator_merges_like_one_pass(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> None:
    ia = [(t, i, float(v)) for i, (t, v) in enumerate(a)]
    ib = [(t, 1000 + i, float(v)) for i, (t, v) in enumerate(b)]
    exp = expected(ia + ib)
    for name, agg in AGGREGATES.items():

        def fold(items: list[tuple[int, int, float]], agg=agg):  # type: ignore[no-untyped-def]
            acc = agg.initial()
            for t, s, v in items:
                acc = agg.add(acc, v, (t, 0, s))
            return acc

        merged = agg.result(agg.merge(fold(ia), fold(ib)))
        one = agg.result(fold(ia + ib))
        if name == "count":
            assert merged == one == len(ia) + len(ib)
        elif name not in exp:
            assert merged is None and one is None
        else:
            assert math.isclose(merged, exp[name], rel_tol=1e-9, abs_tol=1e-9)
            assert math.isclose(one, exp[name], rel_tol=1e-9, abs_tol=1e-9)


def test_welford_is_stable_with_a_large_offset() -> None:
    xs = [1e9 + x for x in (4.0, 7.0, 13.0, 16.0)]
    acc = fold([(i, i, x) for i, x in enumerate(xs)])
    assert math.isclose(acc.aggregate(("stddev",))["stddev"], statistics.stdev(xs), rel_tol=1e-9)
