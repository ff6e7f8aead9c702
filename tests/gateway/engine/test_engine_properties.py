"""Property tests: the engine against a brute-force reference, for every window kind and both
watermark modes, with random disorder, lateness and flushed markers."""

from __future__ import annotations

from typing import Any

from engine_helpers import batch, late_rows, rows_close, window_rows
from engine_reference import Reference
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gateway.engine import Engine, EngineSpec, WatermarkSpec, WindowSpec

Batch_ = tuple[str, str, list[tuple[int, int, int, dict[str, float]]], int | None]
KINDS = ("tumbling", "sliding", "session")


@st.composite
def window_specs(draw: st.DrawFn) -> WindowSpec:
    kind = draw(st.sampled_from(KINDS))
    lateness = draw(st.sampled_from([0, 0, 5, 13, 40]))
    key = draw(st.sampled_from(["device", "device", "site"]))
    if kind == "session":
        return WindowSpec(
            "w", "session", ("x", "y"), gap_ms=draw(st.integers(1, 12)), allowed_lateness_ms=lateness, key=key
        )
    size = draw(st.integers(1, 20))
    slide = size if kind == "tumbling" else draw(st.integers(1, size))
    offset = draw(st.integers(0, slide - 1))
    return WindowSpec(
        "w",
        kind,
        ("x", "y"),
        size_ms=size,
        slide_ms=slide,
        offset_ms=offset,
        allowed_lateness_ms=lateness,
        key=key,
    )


@st.composite
def streams(draw: st.DrawFn) -> list[Batch_]:
    """Batches (site, device, readings, flushed): per-device clocks with random delays, some very late."""
    n_dev = draw(st.integers(1, 3))
    clocks = [0] * n_dev
    seq = 0  # unique across devices: site windows order ties by (t, boot, seq)
    out = []
    for _ in range(draw(st.integers(1, 25))):
        d = draw(st.integers(0, n_dev - 1))
        clocks[d] += draw(st.integers(0, 15))
        readings = []
        for _ in range(draw(st.integers(0, 4))):
            delay = draw(st.one_of(st.integers(0, 4), st.integers(0, 60)))
            seq += 1
            vals: dict[str, float] = {"x": float(draw(st.integers(-5, 5)))}
            if draw(st.booleans()):
                vals["y"] = float(draw(st.integers(0, 3)))
            readings.append((max(0, clocks[d] - delay), 1, seq, vals))
        flushed = max(0, clocks[d] - draw(st.integers(0, 10))) if draw(st.integers(0, 4)) == 0 else None
        if not readings and flushed is None:
            flushed = max(0, clocks[d] - 20)
        out.append(("s1" if d < 2 else "s2", f"d{d}", readings, flushed))
    return out


def run(spec: WindowSpec, mode: str, bound: int, stream: list[Any]) -> None:
    engine = Engine(
        EngineSpec(
            windows=(spec,),
            watermark=WatermarkSpec(
                mode=mode,
                out_of_orderness_ms=bound,  # type: ignore[arg-type]
                idle_timeout_ms=10**12,
            ),
            min_time_ms=0,
        )
    )
    ref = Reference(spec, mode, bound)
    fed: dict[str, int] = {"x": 0, "y": 0}
    late_all: list[tuple[Any, ...]] = []
    final: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    for site, device, readings, flushed in stream:
        outs = engine.process_batch(batch(device, readings, flushed=flushed, site=site), now_ms=10**9)
        ref_rows, ref_late = ref.batch(site, device, readings, flushed)
        got = window_rows(outs)
        assert rows_close(got, sorted(ref_rows, key=lambda r: r[:5])), (got, ref_rows)
        assert late_rows(outs) == sorted(ref_late)
        late_all += ref_late
        if ref_late:
            event("late readings")
        if any(r[7] > 1 for r in ref_rows):
            event("re-fired windows (revision > 1)")
        if any(r[3] is None for r in ref_rows):
            event("superseded sessions")
        for r in readings:
            for m in r[3]:
                fed[m] += 1
        for row in got:
            final[(row[1], row[2], row[4])] = row
    # Close everything: every device flushes far ahead (device mode), or a far-ahead reading of a
    # metric no window uses moves the global watermark. Then every window has fired and been dropped.
    far = 10**6
    for site, device in sorted({(x[0], x[1]) for x in stream}):
        outs = engine.process_batch(batch(device, [(far, 9, 0, {"z": 0.0})], flushed=far, site=site), 10**9)
        ref_rows, ref_late = ref.batch(site, device, [(far, 9, 0, {"z": 0.0})], far)
        got = window_rows(outs)
        assert rows_close(got, sorted(ref_rows, key=lambda r: r[:5])), (got, ref_rows)
        assert not late_rows(outs) and not ref_late
        for row in got:
            final[(row[1], row[2], row[4])] = row
    snap = engine.snapshot()["windows"]["w"]
    assert not (snap.get("wins") or snap.get("keys") or snap.get("sessions")), "state left after closing"
    if spec.kind != "sliding":
        # Exactly once: each value is in the latest result of exactly one window, or in the late output.
        for m in ("x", "y"):
            finals = sum(r[5] for (_, _, mm), r in final.items() if mm == m)
            lates = sum(1 for x in late_all if x[2] == m)
            assert finals + lates == fed[m], (m, finals, lates, fed[m])


common = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@common
@given(spec=window_specs(), bound=st.integers(0, 10), stream=streams())
def test_device_watermarks_match_reference(spec: WindowSpec, bound: int, stream: list[Any]) -> None:
    run(spec, "device", bound, stream)


@common
@given(spec=window_specs(), bound=st.integers(0, 10), stream=streams())
def test_global_watermark_matches_reference(spec: WindowSpec, bound: int, stream: list[Any]) -> None:
    run(spec, "global", bound, stream)
