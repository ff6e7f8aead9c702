"""Detector behaviour: warm-up, zero deviation, hysteresis, baseline protection and re-baselining, gaps,
stuck sensors, and the snapshot/restore contract."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.anomaly import Detector, DetectorSpec, Result

MIN = 60_000


def normal(n: int, *, seed: int = 1, level: float = 10.0, sd: float = 1.0, start: int = 0) -> list[tuple[int, float]]:
    rng = random.Random(seed)
    return [(start + i * MIN, level + rng.gauss(0.0, sd)) for i in range(n)]


def run(det: Detector, points: list[tuple[int, float]]) -> list[Result]:
    return [det.process(t, x) for t, x in points]


def kinds(results: list[Result]) -> list[str]:
    return [e.kind for r in results for e in r.events]


def test_warmup_flags_nothing_and_scores_zero() -> None:
    det = Detector(DetectorSpec(warmup=30))
    pts = [*normal(29), (29 * MIN, 1e6)]  # a wild value inside the warm-up
    res = run(det, pts)
    assert all(r.scored.phase == "warmup" and r.scored.score == 0.0 and not r.anomalous for r in res)
    assert kinds(res) == []
    assert det.state.n == 30
    nxt = det.process(30 * MIN, 10.0)
    assert nxt.scored.phase == "scored" and nxt.scored.z is not None


def test_zero_deviation_is_guarded() -> None:
    det = Detector(DetectorSpec(warmup=5, stuck_points=0, rel_min_std=0.0))
    run(det, [(i * MIN, 5.0) for i in range(10)])
    assert det.state.var == 0.0
    same = det.process(10 * MIN, 5.0)
    assert same.scored.z == 0.0 and not same.anomalous
    other = det.process(11 * MIN, 5.01)
    assert other.anomalous and other.scored.score > 0.999999 and other.scored.std == 1e-9
    floored = Detector(DetectorSpec(warmup=5, stuck_points=0, min_std=0.02))
    run(floored, [(i * MIN, 5.0) for i in range(10)])
    z = floored.process(10 * MIN, 5.01).scored.z
    assert z is not None and abs(z - 0.5) < 1e-9  # 0.01 / the floor 0.02


def test_hysteresis_keeps_one_anomaly_open_across_a_noisy_boundary() -> None:
    base = [(i * MIN, 10.0 + (1.0 if i % 2 else -1.0)) for i in range(60)]  # mean 10, sd 1
    wobble = [((60 + i) * MIN, 10.0 + (5.2 if i % 2 == 0 else 3.0)) for i in range(20)]
    calm = [((80 + i) * MIN, 10.0) for i in range(10)]
    det = Detector(DetectorSpec(stuck_points=0))
    res = run(det, base + wobble + calm)
    assert kinds(res) == ["opened", "shifted", "closed"]  # five points on one side: scored against that level
    assert all(r.anomalous for r in res[60:80])
    flappy = Detector(DetectorSpec(stuck_points=0, clear_threshold=4.5, clear_points=1))  # no hysteresis
    res = run(flappy, base + wobble + calm)
    assert kinds(res[60:62]) == ["opened", "closed"]  # closed by the first point below the threshold
    assert not all(r.anomalous for r in res[60:80])


def test_min_points_needs_consecutive_points() -> None:
    base = [(i * MIN, 10.0 + (1.0 if i % 2 else -1.0)) for i in range(60)]
    det = Detector(DetectorSpec(stuck_points=0, min_points=3))
    one = run(det, [*base, (60 * MIN, 20.0), (61 * MIN, 10.0)])
    assert "opened" not in kinds(one) and not any(r.anomalous for r in one)
    three = run(det, [((62 + i) * MIN, 20.0 + i) for i in range(3)])
    assert [r.anomalous for r in three] == [False, False, True]
    (opened,) = [e for r in three for e in r.events]
    assert (opened.kind, opened.since_ms, opened.t_ms) == ("opened", 62 * MIN, 64 * MIN)


def fault_run(protection: str) -> list[Result]:
    """200 normal minutes, a +8 sd fault for 10 minutes, then normal again."""
    pts = normal(200)
    fault = [(t, x + 8.0) for t, x in normal(10, seed=2, start=200 * MIN)]
    after = normal(30, seed=3, start=210 * MIN)
    det = Detector(DetectorSpec(protection=protection, stuck_points=0))  # type: ignore[arg-type]
    return run(det, pts + fault + after)


def test_protection_keeps_a_short_fault_flagged_for_its_whole_span() -> None:
    res = fault_run("exclude")
    assert all(r.anomalous for r in res[200:210])
    assert kinds(res[:200]) == [] and kinds(res[200:]) == ["opened", "shifted", "closed"]
    ref_z = [r.scored.ref_z or 0.0 for r in res[200:210]]
    assert min(ref_z) > 5.0  # the reference did not move towards the fault ...
    z = [r.scored.z or 0.0 for r in res[200:210]]
    assert z[0] > 5.0 and max(abs(v) for v in z[5:]) < 4.5  # ... while the score followed the new level
    assert not any(r.anomalous for r in res[215:])


def test_without_protection_the_fault_fades_into_the_baseline() -> None:
    res = fault_run("off")
    z = [r.scored.z or 0.0 for r in res[200:210]]
    assert z[0] > 4.5 and z[-1] < 2.5  # it became normal while it was still there
    ref_z = [r.scored.ref_z or 0.0 for r in res[200:210]]
    assert ref_z[-1] < 0.6 * ref_z[0]  # the reference itself moved towards the fault (excluded: it does not)
    down = fault_run("downweight")  # down-weighting sits in between: still flagged at the end
    assert all(r.anomalous for r in down[200:210])


def test_a_permanent_level_shift_is_rebaselined_after_the_stated_time() -> None:
    spec = DetectorSpec(stuck_points=0, rebaseline_after_ms=60 * MIN)
    for baseline in ("ewma", "window"):
        det = Detector(replace(spec, baseline=baseline))  # type: ignore[arg-type]
        pts = normal(200) + [(t, x + 10.0) for t, x in normal(300, seed=2, start=200 * MIN)]
        res = run(det, pts)
        events = [e for r in res for e in r.events]
        assert [e.kind for e in events] == ["opened", "shifted", "rebaselined"], baseline
        opened, _, rebased = events
        assert opened.t_ms == 200 * MIN
        assert rebased.t_ms == 260 * MIN and rebased.since_ms == 200 * MIN and rebased.after_ms == 60 * MIN
        assert rebased.old_mean is not None and abs(rebased.old_mean - 10.0) < 0.5
        assert rebased.new_mean is not None and abs(rebased.new_mean - 20.0) < 0.7
        assert all(r.anomalous for r in res[200:261])
        assert not any(r.anomalous for r in res[261:]), baseline  # not locked out: the new level is normal


def test_first_reading_after_a_gap_is_not_an_anomaly_by_default() -> None:
    before = normal(100)
    after = [(t, x + 6.0) for t, x in normal(20, seed=4, start=100 * MIN + 120 * MIN)]  # 2 h asleep, warmer now
    det = Detector(DetectorSpec(stuck_points=0))
    res = run(det, before + after)
    first = res[100]
    assert first.scored.phase == "gap" and not first.anomalous
    assert kinds(res) == ["gap"] and res[100].events[0].after_ms == 121 * MIN
    assert not any(r.anomalous for r in res[100:])
    scoring = Detector(DetectorSpec(stuck_points=0, after_gap="score"))
    res = run(scoring, before + after)
    assert res[100].anomalous and "opened" in kinds(res)


def test_regular_slow_sampling_is_not_a_gap() -> None:
    det = Detector(DetectorSpec(stuck_points=0))
    res = run(det, [(i * 30 * MIN, x) for i, (_, x) in enumerate(normal(100))])
    assert "gap" not in kinds(res)


def test_stuck_sensor() -> None:
    det = Detector(DetectorSpec(stuck_points=20))
    pts = normal(100) + [((100 + i) * MIN, 10.25) for i in range(40)] + normal(20, seed=5, start=140 * MIN)
    res = run(det, pts)
    events = [e for r in res for e in r.events]
    assert [e.kind for e in events][:2] == ["stuck", "unstuck"]
    assert events[0].t_ms == 119 * MIN and events[0].since_ms == 100 * MIN
    assert all(r.anomalous for r in res[119:140]) and not any(r.anomalous for r in res[:119])


series = st.lists(st.tuples(st.integers(0, 10 * MIN), st.floats(-50, 50, allow_nan=False)), min_size=1, max_size=150)


@settings(max_examples=100, deadline=None)
@given(
    points=series,
    baseline=st.sampled_from(["ewma", "window"]),
    protection=st.sampled_from(["exclude", "downweight", "off"]),
    data=st.data(),
)
def test_snapshot_restore_round_trip(
    points: list[tuple[int, float]], baseline: str, protection: str, data: st.DataObject
) -> None:
    spec = DetectorSpec(
        baseline=baseline, protection=protection, warmup=5, stuck_points=3, rebaseline_after_ms=30 * MIN,  # type: ignore[arg-type]
        window_ms=60 * MIN, threshold=2.0, clear_threshold=1.0,
    )  # fmt: skip
    ts, t = [], 0
    for dt, x in points:
        t += dt
        ts.append((t, round(x)))  # rounding makes repeats (stuck) likely
    cut = data.draw(st.integers(0, len(ts)))
    whole = Detector(spec)
    want = run(whole, ts)
    first = Detector(spec)
    got = run(first, ts[:cut])
    second = Detector(spec)
    second.restore(json.loads(json.dumps(first.snapshot())))
    got += run(second, ts[cut:])
    assert got == want
    assert second.snapshot() == whole.snapshot()


@pytest.mark.parametrize("baseline", ["ewma", "window"])
def test_rebaselining_with_protection_off_keeps_the_baseline_it_learned(baseline: str) -> None:
    """protection = "off" learns every point, so an anomaly held open past rebaseline_points has held nothing
    back: the baseline that learned it is kept (it was reset to an empty hold: mean 0.0, an empty window that
    then said it had stalled). Found by test_anomaly_stats' window property (hypothesis)."""
    det = Detector(DetectorSpec(baseline=baseline, protection="off", rebaseline_points=20))
    rng = random.Random(2)
    xs = [100 + rng.gauss(0, 1) for _ in range(60)] + [100 + (1 if i % 2 else -1) * 20 * 1.2**i for i in range(30)]
    events = []
    for i, x in enumerate(xs):
        events += det.process(i * MIN, x).events
    rebased = [e for e in events if e.kind == "rebaselined"]
    assert rebased and all(e.new_mean == e.old_mean for e in rebased)
    assert "stalled" not in [e.kind for e in events]
    assert det.reference(len(xs) * MIN)[0] >= 30
