from __future__ import annotations

import pytest

from gateway.anomaly import AnomalySpec, DetectorSpec
from gateway.config import parse_config
from gateway.errors import ConfigError


def test_absent_section_means_off_and_present_means_on() -> None:
    assert parse_config({}, env={}).anomaly == AnomalySpec()
    assert not AnomalySpec().enabled
    cfg = parse_config({"anomaly": {}}, env={})
    assert cfg.anomaly.enabled and cfg.anomaly.detector == DetectorSpec()
    assert not parse_config({"anomaly": {"enabled": False}}, env={}).anomaly.enabled


def test_full_section() -> None:
    doc = {
        "anomaly": {
            "metrics": ["temp_c", "rh"], "baseline": "window", "window": "3h", "rebaseline_after": "90m",
            "threshold": 5, "warmup": 10, "write": "flagged", "gap_alerts": True, "multivariate_memory": 500,
            "compound": {"span": "2m", "min_metrics": 3},
            "groups": [{"name": "gh", "devices": ["gh-*"], "min_devices": 3}],
            "overrides": {"rh": {"min_std": 0.5, "threshold": 6.0}},
        }
    }  # fmt: skip
    a = parse_config(doc, env={}).anomaly
    assert a.metrics == ("temp_c", "rh") and a.write == "flagged" and a.gap_alerts and a.multivariate_memory == 500
    assert (a.detector.baseline, a.detector.window_ms, a.detector.rebaseline_after_ms) == (
        "window",
        10_800_000,
        5_400_000,
    )
    assert a.detector.threshold == 5.0 and isinstance(a.detector.threshold, float) and a.detector.warmup == 10
    assert (a.compound.span_ms, a.compound.min_metrics) == (120_000, 3)
    assert a.groups[0].name == "gh" and a.groups[0].devices == ("gh-*",) and a.groups[0].min_devices == 3
    rh = a.detector_for("rh")
    assert (rh.min_std, rh.threshold, rh.baseline) == (0.5, 6.0, "window")  # inherits the section's values
    assert a.detector_for("temp_c") is a.detector


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"treshold": 4}, "[anomaly]: unknown key(s) treshold"),
        ({"threshold": "high"}, "anomaly.threshold: expected a number, got 'high'"),
        ({"threshold": True}, "anomaly.threshold: expected a number, got True"),
        ({"warmup": 2.5}, "anomaly.warmup: expected an integer, got 2.5"),
        ({"warmup": 1}, "anomaly.warmup: must be at least 2 points, got 1"),
        ({"alpha": 0}, "anomaly.alpha: must be in (0, 1], got 0.0"),
        ({"clear_threshold": 5.0}, "anomaly.clear_threshold: must be in (0, threshold=4.5], got 5.0"),
        ({"baseline": "median"}, "anomaly.baseline: expected 'ewma' or 'window', got 'median'"),
        ({"protection": "ignore"}, "anomaly.protection: expected 'exclude', 'downweight' or 'off', got 'ignore'"),
        (
            {"baseline": "window", "window": "1h", "rebaseline_after": "1h"},
            "anomaly.rebaseline_after: 3600000 ms must be set and shorter than window",
        ),
        ({"baseline": "window", "window": "1h"}, "anomaly.rebaseline_after: 0 ms must be set and shorter than window"),
        ({"window": "soon"}, "anomaly.window: expected milliseconds or a string"),
        ({"metrics": ["Temp"]}, "anomaly.metrics: expected a list of metric names"),
        ({"overrides": {"rh": {"alpha": 2}}}, "anomaly.overrides.rh.alpha: must be in (0, 1], got 2.0"),
        ({"metrics": ["temp_c"], "overrides": {"rh": {}}}, "anomaly.overrides.rh: not among anomaly.metrics"),
        ({"compound": {"span": "0s"}}, "anomaly.compound.span: must be positive"),
        ({"compound": {"min_metrics": 1}}, "anomaly.compound.min_metrics: must be at least 2, got 1"),
        ({"groups": [{"name": "g", "devices": []}]}, "anomaly.groups[0].devices: expected a non-empty list"),
        ({"groups": [{"name": "g", "devices": ["a"]}, {"name": "g", "devices": ["b"]}]}, "declared twice"),
        ({"write": "some"}, "anomaly.write: expected 'all' or 'flagged', got 'some'"),
        ({"stuck_points": 2}, "anomaly.stuck_points: 0 (off) or >= 3, got 2"),
        ({"multivariate_memory": 1}, "anomaly.multivariate_memory: must be at least 2 readings, got 1"),
        ({"multivariate_memory": 2.5}, "anomaly.multivariate_memory: expected an integer, got 2.5"),
    ],
)
def test_errors_name_the_key_and_the_value(section: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"anomaly": section}, env={})
    assert message in str(err.value)


def test_not_a_table() -> None:
    with pytest.raises(ConfigError, match=r"\[anomaly\] must be a table"):
        parse_config({"anomaly": 3}, env={})
