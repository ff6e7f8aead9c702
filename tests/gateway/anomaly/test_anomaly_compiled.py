"""The optional compiled anomaly detector (scripts/build_compiled.py) against the pure-Python reference.

Both builds run in their own process (``EDGEKIT_ENGINE=pure`` and ``compiled``), serving the same requests;
their answers must be the same text: every ``anomaly`` line, every alert's repr, every reading's result's repr
and the final snapshot as JSON, so every float bit for bit (``-0.0`` is not ``0.0``, a NaN is a NaN). The
inputs: the Skoltech Anomaly Benchmark's pump recordings (public data, read from where the SKAB tests read it,
never copied here), and generated series over the whole input space (huge, tiny and subnormal values, negative
zero, infinities and NaN, integers beyond a float, strings and booleans, gaps, repeated and out-of-order times,
readings of unknown time), each through the engine as the gateway calls it and through the detectors directly.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import SERVE_HELPERS, Builds, build_pair, check_loaded_build, same_answer, skab_dir
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gateway.anomaly
from gateway.anomaly import ANOMALY_BUILD, COMPILED_MODULES

SERVE = (
    SERVE_HELPERS
    + r"""
import copy, pickle
from pathlib import Path
from gateway.anomaly import ANOMALY_BUILD, AnomalyEngine, AnomalyOutput, parse_anomaly
from gateway.anomaly.config import DetectorSpec
from gateway.anomaly.detector import Detector
from gateway.anomaly.multivariate import MultiDetector
from gateway.anomaly.skab import load_skab
from gateway.model import Reading


def engine(req):
    eng = AnomalyEngine(parse_anomaly({"anomaly": req["anomaly"]}))
    out = AnomalyOutput()
    for i, (now, rows) in enumerate(req["batches"]):
        if i == 1:  # an engine goes on as a copy, or pickled and unpickled, as it would have
            eng = copy.deepcopy(eng) if now % 2 else pickle.loads(pickle.dumps(eng))
        o = guarded(eng.process, [Reading("s", *row) for row in rows], now)
        if isinstance(o, str):
            out.lines.append(o)
        else:
            out.lines += o.lines
            out.alerts += o.alerts
    return {"lines": out.lines, "alerts": [repr(a) for a in out.alerts], "snapshot": eng.snapshot()}


def series(req):
    spec = DetectorSpec(**req["spec"])
    det, md = Detector(spec), MultiDetector(spec, req["memory"])
    half = len(req["points"]) // 2
    results = [repr(guarded(det.process, t, x)) for t, x in req["points"][:half]]
    det = pickle.loads(pickle.dumps(det))  # the state goes on the same through a copy or a pickle
    results += [repr(guarded(det.process, t, x)) for t, x in req["points"][half:]]
    results.append(repr(guarded(lambda: pickle.loads(pickle.dumps(det.process(0, 1.0))))))
    half = len(req["vectors"]) // 2
    multi = [repr(guarded(md.process, t, dict(zip("abc", xs)))) for t, xs in req["vectors"][:half]]
    md = copy.deepcopy(md)
    multi += [repr(guarded(md.process, t, dict(zip("abc", xs)))) for t, xs in req["vectors"][half:]]
    multi.append(repr(guarded(lambda: copy.deepcopy(md.process(0, {"a": 1.0, "b": 2.0, "c": 3.0})))))
    return {"results": results, "multi": multi, "snapshot": det.snapshot(), "multi_snapshot": md.snapshot()}


def skab(req):
    answers = []
    for f in load_skab(Path(req["folder"])):
        eng = AnomalyEngine(parse_anomaly({"anomaly": req["anomaly"]}))
        out = AnomalyOutput()
        results = []
        for i, t in enumerate(f.t_ms):
            r = Reading("skab", "pump", 0, i, t, "s", {m: f.columns[m][i] for m in f.columns})
            results.append(repr(eng.score_reading(r, out)))
        answers.append({"file": f.name, "results": results, "lines": out.lines,
                        "alerts": [repr(a) for a in out.alerts], "snapshot": eng.snapshot()})
    return answers


serve(ANOMALY_BUILD, lambda req: globals()[req["kind"]](req))
"""
)


@pytest.fixture(scope="module")
def builds() -> Iterator[Builds]:
    """The pure and the compiled build, each in its own process; None where set-up did not build it."""
    yield from build_pair(SERVE)


def same(builds: Builds, request: dict[str, Any]) -> Any:
    """Both builds' answer to ``request``, which must be the same text; the pure one, parsed."""
    return same_answer(builds, request, ANOMALY_BUILD)


def test_loaded_modules_are_the_reported_build() -> None:
    check_loaded_build("gateway.anomaly", COMPILED_MODULES, ANOMALY_BUILD)
    assert gateway.anomaly.AnomalyEngine.__module__ == "gateway.anomaly.engine"


SKAB_CONFIGS = [
    {},  # the defaults: ewma baselines, the multivariate score, every point written
    {"baseline": "window", "window": "120s", "rebaseline_after": "60s", "season": "day", "season_bins": 96,
     "protection": "downweight", "stuck_points": 5, "after_gap": "score", "multivariate_memory": 50},
    {"min_points": 2, "clear_points": 1, "threshold": 3.0, "clear_threshold": 1.5, "shift_points": 2,
     "rebaseline_points": 40, "recurring": 2, "recur_points": 200, "protection": "off", "gap": "3s",
     "gap_alerts": True, "compound": {"span": "30s", "min_metrics": 2}},
]  # fmt: skip


SKAB_FILES = [("valve1", ("0", "1", "2")), ("valve2", ("0", "1", "2")), ("other", ("1", "3", "4"))]
"""Three experiments of each kind (valve closures at the outlet and at the inlet, other faults): ~10,000 rows."""


@pytest.mark.parametrize("config", range(len(SKAB_CONFIGS)))
def test_skab_gives_identical_outputs(builds: Builds, config: int, tmp_path: Path) -> None:
    folder, names = SKAB_FILES[config]
    files = [f"{folder}/{n}.csv" for n in names]
    for f in files:  # a folder of links to the few files (SKAB's loader reads a whole folder)
        (tmp_path / f).parent.mkdir(exist_ok=True)
        (tmp_path / f).symlink_to(skab_dir() / f)
    answer = same(builds, {"kind": "skab", "folder": str(tmp_path), "anomaly": SKAB_CONFIGS[config]})
    if answer is not None:
        assert [f["file"] for f in answer] == files
        assert sum(len(f["results"]) for f in answer) > 2900
        assert sum(len(f["lines"]) for f in answer) > 2900 * 9  # eight sensors and the multivariate score
        assert any(f["alerts"] for f in answer)


# --- generated inputs ------------------------------------------------------------------------------

EDGE = [0.0, -0.0, 5e-324, -5e-324, 1e-300, 2.2250738585072014e-308, 1e15, -1e15, 1e15 + 2, 1e154, 1e300,
        1.7976931348623157e308, -1.7976931348623157e308, float("inf"), float("-inf"), float("nan")]  # fmt: skip
floats = st.one_of(
    st.sampled_from(EDGE),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-3.0, 3.0),  # around a level: anomalies open and close
    st.floats(-3.0, 3.0).map(lambda x: 20.0 + x / 10),
    st.sampled_from([20.0, 20.0, 25.0, 100.0]),  # repeats: stuck sensors, constant series, steps
)
values = st.one_of(floats, floats, floats, st.integers(-(2**1100), 2**1100), st.booleans(), st.just("on"))
CONFIGS = [
    {},
    {"warmup": 2, "multivariate_memory": 3, "stuck_points": 3, "clear_points": 1, "shift_points": 2,
     "rebaseline_points": 4, "recurring": 2, "recur_points": 20, "gap_alerts": True, "write": "flagged"},
    {"baseline": "window", "window": "10s", "rebaseline_after": "5s", "warmup": 2, "season": "week",
     "season_bins": 3, "protection": "downweight", "after_gap": "score", "min_points": 2, "multivariate_memory": 2},
    {"baseline": "window", "window_max_points": 5, "rebaseline_points": 3, "warmup": 3, "gap": "2s",
     "threshold": 1.0, "clear_threshold": 0.5, "protection": "off", "metrics": ["a", "b"], "max_series": 3,
     "groups": [{"name": "g", "devices": ["d*"], "min_devices": 2}], "compound": {"span": "5s"}},
]  # fmt: skip


@st.composite
def engine_requests(draw: st.DrawFn) -> dict[str, Any]:
    """Batches of readings of up to three devices and metrics, times stepping 0-3 s, sometimes back, or by a gap."""
    step = st.one_of(st.integers(0, 3_000), st.integers(-5_000, -1), st.integers(10**6, 10**9))
    t = {d: 1_700_000_000_000 for d in ("d1", "d2", "x")}
    batches = []
    for _ in range(draw(st.integers(1, 6))):
        rows = []
        for seq in range(draw(st.integers(0, 25))):
            d = draw(st.sampled_from(sorted(t)))
            t[d] += draw(step)
            metrics = draw(st.dictionaries(st.sampled_from("abc"), values, max_size=3))
            rows.append([d, 1, seq, t[d], draw(st.sampled_from("sssu")), metrics])
        batches.append([max(t.values()) + draw(st.sampled_from([0, 10**9])), rows])
    return {"kind": "engine", "anomaly": draw(st.sampled_from(CONFIGS)), "batches": batches}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(req=engine_requests())
def test_engine_gives_identical_outputs(builds: Builds, req: dict[str, Any]) -> None:
    same(builds, req)


SPECS = [
    {"warmup": 2, "stuck_points": 3, "clear_points": 1, "shift_points": 2, "rebaseline_points": 4, "recurring": 2,
     "recur_points": 20},
    {"baseline": "window", "window_ms": 4_000, "rebaseline_after_ms": 2_000, "warmup": 2, "season": "day",
     "season_bins": 5, "protection": "downweight", "after_gap": "score", "gap_ms": 3_000},
    {"baseline": "window", "window_max_points": 4, "rebaseline_points": 2, "warmup": 3, "min_points": 2,
     "threshold": 1.0, "clear_threshold": 1.0, "protection": "off", "rel_min_std": 0.0},
]  # fmt: skip


@st.composite
def series_requests(draw: st.DrawFn) -> dict[str, Any]:
    """One series into a detector and one vector series into a multivariate detector, straight (no engine in
    front refusing non-finite values or older times)."""
    step = st.one_of(st.integers(0, 2_000), st.integers(-3_000, -1), st.integers(10**5, 10**8))
    t, points, vectors = 1_700_000_000_000, [], []
    for _ in range(draw(st.integers(0, 60))):
        t += draw(step)
        points.append([t, draw(floats)])
    k = draw(st.integers(2, 3))
    calm = st.lists(st.floats(-1.0, 1.0), min_size=k, max_size=k)  # a warm-up ...
    for _ in range(draw(st.integers(0, 40))):
        t += draw(step)
        vectors.append([t, draw(calm)])
    near = st.one_of(st.floats(-1.0, 1.0), st.floats(-1.0, 1.0), floats)  # ... then anything (a metric missing too)
    for _ in range(draw(st.integers(0, 40))):
        t += draw(step)
        vectors.append([t, draw(st.lists(near, min_size=k - 1, max_size=k))])
    return {"kind": "series", "spec": draw(st.sampled_from(SPECS)), "memory": draw(st.sampled_from([2, 5, 200])),
            "points": points, "vectors": vectors}  # fmt: skip


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(req=series_requests())
def test_detectors_give_identical_outputs(builds: Builds, req: dict[str, Any]) -> None:
    same(builds, req)
