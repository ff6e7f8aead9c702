"""``anomaly.max_series`` is shared fairly between devices: no device can take another's share."""

from __future__ import annotations

import json
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.anomaly import AnomalyEngine, parse_anomaly
from gateway.model import MetricValue, Reading

MIN = 60_000
T0 = 1_704_067_200_000


def reading(device: str, i: int, metrics: dict[str, MetricValue]) -> Reading:
    return Reading("s1", device, 1, i, T0 + i * MIN, "s", metrics)


def engine(max_series: int) -> AnomalyEngine:
    return AnomalyEngine(parse_anomaly({"anomaly": {"max_series": max_series, "write": "flagged"}}))


def test_devices_inventing_names_cannot_keep_a_later_device_from_its_alert() -> None:
    eng = engine(100)
    # ten devices make up 16 names each: 160 series wanted, the table holds 100
    for i in range(3):
        flood = [reading(f"inv-{d}", i, {f"x{d}_{k}": 1.0 for k in range(16)}) for d in range(10)]
        eng.process(flood, T0 + i * MIN)
    assert len(eng.detectors) == 100 and eng.stats["series_refused"] > 0
    held = sorted(sum(1 for d, _ in eng.series() if d == f"inv-{k}") for k in range(10))
    assert held == [10] * 10  # the flood shared the table out evenly among the flooders
    evicted = eng.stats["series_evicted"]
    rng = random.Random(1)
    quiet = [reading("honest", i, {"temp_c": 20 + rng.gauss(0, 0.2)}) for i in range(40)]
    assert eng.process(quiet, T0 + 40 * MIN).alerts == []
    spike = eng.process([reading("honest", 40, {"temp_c": 30.0})], T0 + 41 * MIN)
    assert [(a.name, a.key) for a in spike.alerts] == [("zscore.temp_c", "honest")]
    assert eng.stats["series_evicted"] == evicted + 1 and len(eng.detectors) == 100


def test_a_device_at_the_top_gets_no_more_and_takes_nothing() -> None:
    eng = engine(4)
    eng.process([reading("a", 0, {"p": 1.0, "q": 1.0}), reading("b", 0, {"p": 1.0, "q": 1.0})], T0)
    eng.process([reading("a", 1, {"r": 1.0})], T0 + MIN)  # a has 2, b has 2: no room, nothing taken
    assert eng.stats == {**eng.stats, "series_refused": 1, "series_evicted": 0}
    eng.process([reading("c", 0, {"p": 1.0})], T0 + MIN)  # c has 0: takes one from a (the smaller id)
    assert sorted(eng.series()) == [("a", "q"), ("b", "p"), ("b", "q"), ("c", "p")]  # a's p was the older


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 12), min_size=1, max_size=8),  # how many series each device wants
    st.integers(1, 30),
    st.randoms(use_true_random=False),
)
def test_every_device_gets_its_share_whatever_the_others_want(
    demand: list[int], max_series: int, rng: random.Random
) -> None:
    eng = engine(max_series)
    wanting = [d for d in range(len(demand)) if demand[d]]
    for i in range(4):  # each device sends all its metrics, in a random order of devices, a few times
        order = wanting[:]
        rng.shuffle(order)
        for d in order:
            eng.process([reading(f"d{d}", i, {f"m{k}": 1.0 for k in range(demand[d])})], T0 + i * MIN)
    assert len(eng.detectors) <= max_series
    held = {d: sum(1 for dev, _ in eng.series() if dev == f"d{d}") for d in wanting}
    share = max_series // max(1, len(wanting))
    assert all(held[d] >= min(demand[d], share) for d in wanting), (held, share)


def test_the_share_survives_snapshot_and_restore() -> None:
    a = engine(4)
    a.process([reading("a", 0, {"p": 1.0, "q": 1.0, "r": 1.0}), reading("b", 0, {"p": 1.0})], T0)
    b = engine(4)
    b.restore(json.loads(json.dumps(a.snapshot())))
    more = [reading("c", 1, {"p": 1.0})]
    assert a.process(more, T0 + MIN).lines == b.process(more, T0 + MIN).lines
    assert sorted(a.series()) == sorted(b.series()) and a.stats == b.stats
    old = a.snapshot()
    del old["stats"]["series_evicted"]  # a snapshot from before the counter existed
    c = engine(4)
    c.restore(old)
    assert c.stats["series_evicted"] == 0


def _mirrors(eng: AnomalyEngine) -> bool:
    """The engine's detectors by device are its ``detectors``, the same objects, no more and no fewer."""
    by_device = {(d, m): det for d, mine in eng._dets.items() for m, det in mine.items()}
    return by_device.keys() == eng.detectors.keys() and all(by_device[k] is eng.detectors[k] for k in by_device)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 6), min_size=1, max_size=6),
    st.integers(1, 12),
    st.randoms(use_true_random=False),
)
def test_detectors_by_device_are_kept_with_the_table(demand: list[int], max_series: int, rng: random.Random) -> None:
    """Series made, taken to make room, restored, copied and pickled: the detectors found by device (without a
    tuple a metric) are always those of ``detectors``, and a copy goes on as the original does."""
    import copy
    import pickle

    eng = engine(max_series)
    for i in range(6):
        order = list(range(len(demand)))
        rng.shuffle(order)
        for d in order:
            names = rng.sample(range(8), k=min(demand[d], 8))
            eng.process([reading(f"d{d}", i, {f"m{k}": 1.0 + rng.random() for k in names})], T0 + i * MIN)
            assert _mirrors(eng)
        if i == 2:
            again = engine(max_series)
            again.restore(json.loads(json.dumps(eng.snapshot())))
            assert _mirrors(again)
            eng = again
        if i == 3:
            twin = copy.deepcopy(eng)
            assert _mirrors(twin) and _mirrors(pickle.loads(pickle.dumps(eng)))
            step = [reading(f"d{d}", 9, {f"m{k}": 2.0 for k in range(8)}) for d in range(len(demand))]
            assert eng.process(step, T0 + 9 * MIN).lines == twin.process(step, T0 + 9 * MIN).lines
            assert _mirrors(eng) and _mirrors(twin) and sorted(eng.series()) == sorted(twin.series())


def test_a_restore_that_fails_leaves_the_detectors_by_device_with_the_table() -> None:
    eng = engine(10)
    eng.process([reading("d1", 0, {"a": 1.0}), reading("d2", 0, {"a": 2.0})], T0)
    snap = json.loads(json.dumps(eng.snapshot()))
    snap["detectors"][1][2] = "garbage"
    try:
        eng.restore(snap)
    except (TypeError, ValueError, KeyError, AttributeError):
        pass
    else:  # pragma: no cover - the state above is not a detector's
        raise AssertionError("a garbage detector state was restored")
    assert _mirrors(eng) and eng.series() == [("d1", "a")]
