"""The state contract, over every operator and both watermark modes: a stream processed in one go, and
the same stream snapshotted at a random point (through JSON), restored into a fresh engine and continued,
give identical output - exactly, floats included."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from engine_helpers import batch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_engine_properties import streams, window_specs

from gateway.engine import Engine, EngineSpec, WatermarkSpec, WindowSpec


def make(specs: tuple[WindowSpec, ...], mode: str) -> Engine:
    wm = WatermarkSpec(mode=mode, out_of_orderness_ms=3, idle_timeout_ms=50)  # type: ignore[arg-type]
    return Engine(EngineSpec(windows=specs, watermark=wm, min_time_ms=0))


def feed(engine: Engine, stream: list[Any], start: int) -> list[Any]:
    out: list[Any] = []
    for i, (site, device, readings, flushed) in enumerate(stream):
        now = (start + i) * 10
        out += engine.process_batch(batch(device, readings, flushed=flushed, site=site), now_ms=now)
        out += engine.advance(now + 5)
    return out


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    specs=st.lists(window_specs(), min_size=1, max_size=3),
    mode=st.sampled_from(["device", "global"]),
    stream=streams(),
    data=st.data(),
)
def test_snapshot_restore_round_trip(
    specs: list[WindowSpec], mode: str, stream: list[Any], data: st.DataObject
) -> None:
    specs_t = named(specs)
    part, whole, second = cut_and_restore(specs_t, mode, stream, data)
    assert part == whole
    assert second.snapshot() == json.loads(json.dumps(make_and_feed(specs_t, mode, stream).snapshot()))


def named(specs: list[WindowSpec]) -> tuple[WindowSpec, ...]:
    """The specs named w0, w1, ... (a window's name is its key in the engine)."""
    return tuple(
        WindowSpec(f"w{i}", **{k: getattr(s, k) for k in s.__slots__ if k != "name"})  # type: ignore[arg-type]
        for i, s in enumerate(specs)
    )


def cut_and_restore(
    specs: tuple[WindowSpec, ...],
    mode: str,
    stream: list[Any],
    data: st.DataObject,
    edit: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[list[Any], list[Any], Engine]:
    """The stream's output in one go, and cut at a drawn point: snapshotted through JSON (``edit`` may change the
    snapshot), restored into a fresh engine and continued; and that engine."""
    whole = feed(make(specs, mode), stream, 0)
    cut = data.draw(st.integers(0, len(stream)))
    first = make(specs, mode)
    part = feed(first, stream[:cut], 0)
    snap = json.loads(json.dumps(first.snapshot()))
    if edit is not None:
        edit(snap)
    second = make(specs, mode)
    second.restore(snap)
    part += feed(second, stream[cut:], cut)
    return part, whole, second


def make_and_feed(specs: tuple[WindowSpec, ...], mode: str, stream: list[Any]) -> Engine:
    e = make(specs, mode)
    feed(e, stream, 0)
    return e


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    specs=st.lists(window_specs().filter(lambda s: s.kind == "tumbling"), min_size=1, max_size=2),
    mode=st.sampled_from(["device", "global"]),
    stream=streams(),
    data=st.data(),
)
def test_tumbling_windows_restore_in_any_order(
    specs: list[WindowSpec], mode: str, stream: list[Any], data: st.DataObject
) -> None:
    """A snapshot lists a key's tumbling windows, and their timers, in any order: checkpoints written before the
    windows were kept in order of their start listed them as they were made (a late reading's window after a
    newer one) and the timers as a heap's list. Restored from the lists shuffled, the engine goes on exactly as
    one that never stopped."""

    def shuffle(snap: dict[str, Any]) -> None:
        for w in snap["windows"].values():
            for table in ("wins", "timers"):
                for k, rows in w[table].items():
                    w[table][k] = data.draw(st.permutations(rows))

    part, whole, _ = cut_and_restore(named(specs), mode, stream, data, shuffle)
    assert part == whole
