"""``Engine.process_batches`` is ``process_batch`` on each (batch, now) in turn: same outputs, same state."""

from __future__ import annotations

import json
from itertools import pairwise
from typing import Any

from engine_helpers import batch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_engine_properties import streams, window_specs

from gateway.engine import Engine, EngineSpec, WatermarkSpec, WindowSpec


def make(specs: tuple[WindowSpec, ...], mode: str) -> Engine:
    wm = WatermarkSpec(mode=mode, out_of_orderness_ms=3, idle_timeout_ms=50)  # type: ignore[arg-type]
    return Engine(EngineSpec(windows=specs, watermark=wm, min_time_ms=0))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    specs=st.lists(window_specs(), min_size=1, max_size=3),
    mode=st.sampled_from(["device", "global"]),
    stream=streams(),
    cuts=st.lists(st.integers(0, 30), max_size=4),
)
def test_process_batches_equals_one_by_one(
    specs: list[WindowSpec], mode: str, stream: list[Any], cuts: list[int]
) -> None:
    specs_t = tuple(
        WindowSpec(f"w{i}", **{k: getattr(s, k) for k in s.__slots__ if k != "name"})  # type: ignore[arg-type]
        for i, s in enumerate(specs)
    )
    pairs = [(batch(d, rs, flushed=f, site=site), i * 10) for i, (site, d, rs, f) in enumerate(stream)]
    one = make(specs_t, mode)
    expected: list[Any] = []
    for b, now in pairs:
        expected += one.process_batch(b, now)
    many = make(specs_t, mode)
    got: list[Any] = []
    bounds = sorted({0, len(pairs), *(c for c in cuts if c <= len(pairs))})
    for lo, hi in pairwise(bounds):
        got += many.process_batches(pairs[lo:hi])
    assert got == expected
    assert json.dumps(many.snapshot(), sort_keys=True) == json.dumps(one.snapshot(), sort_keys=True)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    specs=st.lists(window_specs(), min_size=2, max_size=4),
    metrics=st.lists(st.sampled_from([("x",), ("y",), ("x", "y"), ("y", "x")]), min_size=4, max_size=4),
    mode=st.sampled_from(["device", "global"]),
    stream=streams(),
)
def test_windows_together_equal_each_alone(
    specs: list[WindowSpec], metrics: list[tuple[str, ...]], mode: str, stream: list[Any]
) -> None:
    """Windows over the same or other metrics share a reading's values; each still sees exactly its own."""
    specs_t = tuple(
        WindowSpec(
            f"w{i}",
            **{k: getattr(s, k) for k in s.__slots__ if k not in ("name", "metrics")},  # type: ignore[arg-type]
            metrics=metrics[i],
        )
        for i, s in enumerate(specs)
    )
    pairs = [(batch(d, rs, flushed=f, site=site), i * 10) for i, (site, d, rs, f) in enumerate(stream)]
    together = make(specs_t, mode)
    alone = [make((s,), mode) for s in specs_t]
    got: list[Any] = []
    for b, now in pairs:
        got += together.process_batch(b, now)
    for spec, eng in zip(specs_t, alone, strict=True):
        expected: list[Any] = []
        for b, now in pairs:
            expected += eng.process_batch(b, now)
        assert [o for o in got if o.window == spec.name] == expected
