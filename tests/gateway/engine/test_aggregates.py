"""Aggregates: the per-aggregate objects and the fused summary agree with plain Python, and merge."""

from __future__ import annotations

import math
import statistics

from hypothesis import given
from hypothesis import strategies as st

from gateway.engine.aggregates import AGGREGATES, summary_add, summary_merge, summary_new, summary_result

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


@given(values, st.integers(0, 40))
def test_fused_summary_adds_and_merges(raw: list[tuple[int, int]], cut: int) -> None:
    items = [(t, i, float(v)) for i, (t, v) in enumerate(raw)]  # (t, seq, value)
    whole = summary_new(items[0][2], items[0][0], 0, items[0][1])
    for t, s, v in items[1:]:
        summary_add(whole, v, t, 0, s)
    assert whole[0] == len(items)
    assert close(summary_result(whole, NAMES), expected(items))
    cut = min(max(cut, 1), len(items) - 1) if len(items) > 1 else 0
    if cut:
        left = summary_new(items[0][2], items[0][0], 0, items[0][1])
        for t, s, v in items[1:cut]:
            summary_add(left, v, t, 0, s)
        right = summary_new(items[cut][2], items[cut][0], 0, items[cut][1])
        for t, s, v in items[cut + 1 :]:
            summary_add(right, v, t, 0, s)
        assert close(summary_result(summary_merge(right, left), NAMES), expected(items))


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
    acc = summary_new(xs[0], 0, 0, 0)
    for i, x in enumerate(xs[1:], 1):
        summary_add(acc, x, i, 0, i)
    assert math.isclose(summary_result(acc, ("stddev",))["stddev"], statistics.stdev(xs), rel_tol=1e-9)
