"""The multivariate detector with two metrics keeps their state in fields instead of its lists (``MultiDetector``'s
``fields``; compiled, a float in a list is an object made at each change). It must score exactly as the general
code over the lists does: the same results, to the bit, and the same snapshots, restored either way.

The reference is the same class with ``fields=False`` (the general code the other numbers of metrics run), fed the
same readings: SKAB's recordings (pairs of its sensors, public data none of this was written against) and generated
streams over the whole range of values a detector takes (shifts that open, close and rebaseline anomalies, constant
and collinear metrics, tiny and huge values, signed zeros), with snapshots taken, sent through JSON and restored
into a fresh detector of the other kind mid-stream.
"""

from __future__ import annotations

import json
import math
from typing import Any

from helpers import skab_dir
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.anomaly.config import DetectorSpec
from gateway.anomaly.multivariate import MULTI_FIELDS, MultiDetector
from gateway.anomaly.skab import load_skab

SPECS = [
    (DetectorSpec(), 200),
    (DetectorSpec(threshold=3.0, clear_threshold=2.0, clear_points=2, rebaseline_points=50), 50),
    (DetectorSpec(rebaseline_after_ms=20_000, min_std=0.5, rel_min_std=0.01), 30),
]


def _text(x: Any) -> str:
    """A result or snapshot as text: equal floats to the bit (repr), NaN too."""
    return repr(x)


def _run_both(spec: DetectorSpec, memory: int, rows: list[tuple[int, dict[str, float]]], swap_at: int) -> int:
    """Feed ``rows`` to a detector of each kind; at ``swap_at`` each one's snapshot, through JSON, is restored into
    a fresh detector of the other kind. Every result and every 7th snapshot must be the same. The results that
    were scored (past the warm-up)."""
    fast, slow = MultiDetector(spec, memory), MultiDetector(spec, memory, fields=False)
    scored = 0
    for i, (t, values) in enumerate(rows):
        if i == swap_at:
            a, b = json.loads(json.dumps(fast.snapshot())), json.loads(json.dumps(slow.snapshot()))
            assert _text(a) == _text(b)
            fast, slow = MultiDetector(spec, memory), MultiDetector(spec, memory, fields=False)
            fast.restore(b)
            slow.restore(a)
        r, q = fast.process(t, values), slow.process(t, values)
        assert _text(r) == _text(q), (i, t, values)
        scored += r is not None and r.phase == "scored"
        if i % 7 == 0:
            assert _text(fast.snapshot()) == _text(slow.snapshot()), i
    assert _text(fast.state) == _text(slow.state)  # the state as read: the fields put back in its lists
    return scored


def test_skab_pairs_score_as_the_general_code() -> None:
    files = load_skab(skab_dir())
    scored = events = 0
    for f in files:
        cols = sorted(f.columns)
        for a, b in ((cols[0], cols[1]), (cols[2], cols[3]), (cols[4], cols[5])):
            rows = [(t, {a: f.columns[a][i], b: f.columns[b][i]}) for i, t in enumerate(f.t_ms)]
            for spec, memory in SPECS:
                scored += _run_both(spec, memory, rows, len(rows) // 2)
                md = MultiDetector(spec, memory)
                events += sum(len(r.events) for r in (md.process(t, v) for t, v in rows) if r is not None)
    assert scored > 10_000 and events > 100, (scored, events)


ODD = st.sampled_from([0.0, -0.0, 5e-324, -5e-324, 1e-300, 1e15, -1e15, 1e300, 3.0])


@st.composite
def streams(draw: st.DrawFn) -> list[tuple[int, dict[str, float]]]:
    n = draw(st.integers(40, 400))
    base = draw(st.lists(st.floats(-1e6, 1e6), min_size=2, max_size=2))
    scale = draw(st.lists(st.sampled_from([1e-9, 1e-3, 1.0, 1e3, 1e9]), min_size=2, max_size=2))
    seed = draw(st.integers(0, 2**32 - 1))
    shift_at = draw(st.integers(0, n))
    shift = draw(st.sampled_from([0.0, 6.0, -12.0, 40.0]))
    kind = draw(st.sampled_from(["noise", "constant", "collinear", "twin", "odd"]))
    odd = draw(st.lists(ODD, min_size=n, max_size=n))
    rows = []
    t = 1_700_000_000_000
    x = seed
    for i in range(n):
        x = (x * 6364136223846793005 + 1442695040888963407) % 2**64  # a generator of its own: the same each run
        g0, g1 = (x >> 11) / 2**53 - 0.5, ((x * 31) % 2**64 >> 11) / 2**53 - 0.5
        v0 = base[0] + g0 * scale[0] + (shift * scale[0] if i >= shift_at else 0.0)
        v1 = base[1] + g1 * scale[1]
        if kind == "constant":
            v1 = base[1]
        elif kind == "collinear":
            v1 = 2.0 * v0 + 1.0
        elif kind == "twin":  # the same values: their terms tie, and the ranking keeps its order
            v1 = v0
        elif kind == "odd" and i % 5 == 0:
            v0 = odd[i]
        t += (1, 1000, 5000, 60_000)[x % 4]
        rows.append((t, {"b": v1, "a": v0}))  # named out of order: the detector sorts its metrics
    return rows


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=streams(), which=st.integers(0, len(SPECS) - 1), swap=st.integers(0, 500))
def test_generated_streams_score_as_the_general_code(
    rows: list[tuple[int, dict[str, float]]], which: int, swap: int
) -> None:
    spec, memory = SPECS[which]
    _run_both(spec, memory, rows, swap)


def test_a_reading_without_both_metrics_is_not_scored_and_changes_nothing() -> None:
    fast, slow = MultiDetector(DetectorSpec()), MultiDetector(DetectorSpec(), fields=False)
    for i in range(60):
        for md in (fast, slow):
            md.process(i * 1000, {"a": float(i % 7), "b": float(i % 5)})
    before = _text(fast.snapshot())
    assert fast.process(61_000, {"a": 1.0, "c": 2.0}) is None and slow.process(61_000, {"a": 1.0, "c": 2.0}) is None
    assert _text(fast.snapshot()) == before == _text(slow.snapshot())


def test_a_state_of_other_shapes_is_left_to_the_general_code() -> None:
    """A hand-made snapshot of two metrics whose lists the detector never makes (a trend of one value, an inverse
    missing after the warm-up) is run by the general code, which fails or goes on as it always did."""
    md = MultiDetector(DetectorSpec())
    for i in range(100):
        md.process(i * 1000, {"a": math.sin(i), "b": math.cos(i / 3)})
    snap = md.snapshot()
    for field, value in (("trend", [0.1]), ("inv", [])):
        odd = list(snap)
        odd[1 + MULTI_FIELDS.index(field)] = value
        outcomes = []
        for fields in (True, False):
            again = MultiDetector(DetectorSpec(), fields=fields)
            again.restore(json.loads(json.dumps(odd)))
            assert again._two is False
            try:
                outcomes.append(_text(again.process(200_000, {"a": 0.5, "b": 0.5})))
            except (IndexError, ValueError) as exc:
                outcomes.append(type(exc).__name__)
        assert outcomes[0] == outcomes[1], (field, outcomes)
