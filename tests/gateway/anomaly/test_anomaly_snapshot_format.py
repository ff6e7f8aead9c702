"""The detectors' snapshots as lists of their state's fields in order (detector version 3, multivariate 2), and the
dicts by name that came before (detector 2, multivariate 1, in the anomaly engine's snapshot version 2), which a
checkpoint written before may still hold: each restores to the same state, and the detectors go on to the same
outputs as ones never stopped."""

from __future__ import annotations

import json
import random
from collections import deque
from dataclasses import fields
from typing import Any

import pytest

from gateway.anomaly import AnomalyEngine, Detector, DetectorSpec, parse_anomaly
from gateway.anomaly.detector import STATE_FIELDS, STATE_VERSION, State
from gateway.anomaly.engine import SNAPSHOT_VERSION
from gateway.anomaly.multivariate import MULTI_FIELDS, MultiDetector, MultiState
from gateway.anomaly.multivariate import STATE_VERSION as MULTI_VERSION
from gateway.model import Reading

MIN = 60_000
T0 = 1_704_067_200_000


def plain(value: Any) -> Any:
    """A state field as JSON has it: deques and tuples as lists."""
    if isinstance(value, (list, tuple, deque)):
        return [plain(v) for v in value]
    return value


def detector_v2(snap: list[Any]) -> dict[str, Any]:
    """The version-2 snapshot (a dict by name) of the state a version-3 one holds."""
    assert snap[0] == STATE_VERSION == 3
    return {"v": 2, **dict(zip(STATE_FIELDS, snap[1:], strict=True))}


def multi_v1(snap: list[Any]) -> dict[str, Any]:
    """The first version's snapshot (a dict by name) of the state a version-2 one holds."""
    assert snap[0] == MULTI_VERSION == 2
    return dict(zip(MULTI_FIELDS, snap[1:], strict=True))


def engine_v2(snap: dict[str, Any]) -> dict[str, Any]:
    """An anomaly engine's snapshot as version 2 wrote it: the detectors' and multivariate states as dicts."""
    assert snap["version"] == SNAPSHOT_VERSION == 3
    return {
        **snap,
        "version": 2,
        "detectors": [[d, m, detector_v2(s)] for d, m, s in snap["detectors"]],
        "multi": {d: multi_v1(s) for d, s in snap["multi"].items()},
    }


def readings(n: int, seed: int = 5) -> list[Reading]:
    """Two devices of three metrics, with spikes and a level shift, so that anomalies open, shift and close."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        for dev in ("d1", "d2"):
            temp = 20.0 + rng.gauss(0, 0.3) + (6.0 if i % 97 == 60 else 0.0) + (3.0 if 150 <= i < 190 else 0.0)
            vib = 0.3 + rng.gauss(0, 0.02) + (0.4 if i % 71 == 50 else 0.0)
            rh = 45.0 + rng.gauss(0, 1.0)
            out.append(Reading("s", dev, 1, i, T0 + i * MIN, "s", {"temp_c": temp, "vib": vib, "rh": rh}))
    return out


def test_a_detector_snapshot_is_its_fields_in_order() -> None:
    """Each value of the list is the field :data:`STATE_FIELDS` names at its place: every field set to a value of
    its own, so that two swapped would show."""
    det = Detector(DetectorSpec(baseline="window"))
    st = det.state
    for i, f in enumerate(fields(State)):
        now = getattr(st, f.name)  # the compiled class holds each field to its type
        if isinstance(now, bool):
            value: Any = i % 2 == 0
        elif isinstance(now, int) or f.name == "last_t":
            value = 1000 + i
        elif isinstance(now, float) or f.name in ("log_dt", "last_value"):
            value = 0.5 + i
        elif f.name == "excursions":
            value = deque([(i, 1.5 + i, True)])
        elif f.name == "bins":
            value = [[1.0 + i, 2.0, 3.0]]
        else:  # window, held
            value = deque([(i, 2.5 + i)])
        setattr(st, f.name, value)
    snap = det.snapshot()
    assert snap[0] == STATE_VERSION and len(snap) == len(STATE_FIELDS) + 1 == len(fields(State)) + 1
    assert [plain(v) for v in snap[1:]] == [plain(getattr(st, name)) for name in STATE_FIELDS]
    with pytest.raises(ValueError, match="version 3 is a list"):
        Detector(DetectorSpec()).restore({"v": 3, **dict(zip(STATE_FIELDS, snap[1:], strict=True))})
    again = Detector(DetectorSpec(baseline="window"))
    again.restore(json.loads(json.dumps(snap)))
    assert again.state == st
    again = Detector(DetectorSpec(baseline="window"))
    again.restore(json.loads(json.dumps(detector_v2(snap))))
    assert again.state == st


def test_the_snapshot_fields_are_the_classes_fields() -> None:
    """The names a stored list is read by are written out; the state classes must still have exactly those fields
    (in any order): a field added or removed needs a new snapshot version."""
    assert sorted(f.name for f in fields(State)) == sorted(STATE_FIELDS) and len(set(STATE_FIELDS)) == 39
    assert sorted(f.name for f in fields(MultiState)) == sorted(MULTI_FIELDS) and len(set(MULTI_FIELDS)) == 18


def test_a_multivariate_snapshot_is_its_fields_in_order() -> None:
    md = MultiDetector(DetectorSpec())
    st = md.state
    for i, f in enumerate(fields(MultiState)):
        now = getattr(st, f.name)
        if isinstance(now, bool):
            value: Any = True
        elif isinstance(now, int):
            value = 1000 + i
        elif f.name == "names":
            value = ["a", "b"]
        elif f.name in ("cov", "inv", "ecov", "einv"):
            value = [[1.0 + i, 0.25], [0.5, 2.0 + i]]
        else:
            value = [0.5 + i, -1.0 - i]
        setattr(st, f.name, value)
    snap = md.snapshot()
    assert snap[0] == MULTI_VERSION and len(snap) == len(MULTI_FIELDS) + 1 == len(fields(MultiState)) + 1
    assert snap[1:] == [getattr(st, name) for name in MULTI_FIELDS]
    for form in (snap, multi_v1(snap)):
        again = MultiDetector(DetectorSpec())
        again.restore(json.loads(json.dumps(form)))
        assert again.state == st


@pytest.mark.parametrize("cut", [40, 155, 200])
@pytest.mark.parametrize("old", [False, True])
def test_an_engine_restored_goes_on_as_one_never_stopped(cut: int, old: bool) -> None:
    """From this version's snapshot, and from the one version 2 would have written of the same state."""
    section = {"anomaly": {"metrics": ["temp_c", "vib", "rh"]}}
    rs = readings(260)
    whole = AnomalyEngine(parse_anomaly(section))
    want = [whole.process([r], r.t_ms) for r in rs]
    first = AnomalyEngine(parse_anomaly(section))
    got = [first.process([r], r.t_ms) for r in rs[: 2 * cut]]
    snap = json.loads(json.dumps(first.snapshot()))
    second = AnomalyEngine(parse_anomaly(section))
    second.restore(engine_v2(snap) if old else snap)
    got += [second.process([r], r.t_ms) for r in rs[2 * cut :]]
    assert [(o.lines, o.alerts) for o in got] == [(o.lines, o.alerts) for o in want]
    assert second.snapshot() == whole.snapshot()
    assert any(a.name == "multivariate" for o in want for a in o.alerts)


def test_the_list_is_a_third_of_the_dict() -> None:
    """What the change is for: a checkpoint's rows are mostly the detectors' states, and the names were most of
    each (586 bytes of JSON for a warmed-up series by name, against about 200)."""
    eng = AnomalyEngine(parse_anomaly({"anomaly": {"metrics": ["temp_c", "vib", "rh"]}}))
    for r in readings(120):
        eng.process([r], r.t_ms)
    snap = eng.snapshot()
    new = len(json.dumps(snap["detectors"], separators=(",", ":")))
    before = len(json.dumps(engine_v2(snap)["detectors"], separators=(",", ":")))
    assert new < 0.45 * before


@pytest.mark.parametrize(
    "bad",
    [[], [STATE_VERSION], [99, *range(len(STATE_FIELDS))], [STATE_VERSION, *range(len(STATE_FIELDS) - 1)]],
)
def test_a_detector_list_of_another_version_or_length_is_refused(bad: list[Any]) -> None:
    with pytest.raises(ValueError, match="anomaly detector state of version"):
        Detector(DetectorSpec()).restore(bad)


@pytest.mark.parametrize("bad", [[], [1, *range(len(MULTI_FIELDS))], [MULTI_VERSION, *range(len(MULTI_FIELDS) + 1)]])
def test_a_multivariate_list_of_another_version_or_length_is_refused(bad: list[Any]) -> None:
    with pytest.raises(ValueError, match="multivariate state of version"):
        MultiDetector(DetectorSpec()).restore(bad)


def test_an_engine_snapshot_of_a_later_version_is_refused() -> None:
    eng = AnomalyEngine(parse_anomaly({"anomaly": {}}))
    with pytest.raises(ValueError, match="anomaly snapshot version 4"):
        eng.restore({**eng.snapshot(), "version": 4})
