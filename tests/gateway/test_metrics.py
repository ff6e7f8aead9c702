"""The gateway's own numbers, as the stats file and ``/metrics`` show them (no services needed)."""

from __future__ import annotations

import json
from pathlib import Path

from gateway.app import Gateway
from gateway.config import parse_config

NOW = 1_764_072_100_000


def test_the_number_of_devices_with_state_is_shown(tmp_path: Path) -> None:
    doc = {
        "influx": {"url": "http://127.0.0.1:9"},  # never written to here
        "state": {"dir": str(tmp_path / "state")},
        "devices": {"max_devices": 2},
    }
    gw = Gateway(parse_config(doc, env={}), now_ms=lambda: NOW)
    try:
        for dev in ("d1", "d2", "d3"):
            gw.pipeline.handle(
                f"edgekit/s/{dev}/status", json.dumps({"v": 1, "dev": dev, "state": "online"}).encode(), NOW
            )
        assert gw.snapshot_stats()["pipeline"] == {**gw.pipeline.stats.as_dict(), "devices": 2}
        assert "\nedgekit_devices 2.0\n" in gw.metrics.render().decode()
    finally:
        gw.store.close()


def test_the_joins_counters_are_on_metrics(tmp_path: Path) -> None:
    doc = {
        "influx": {"url": "http://127.0.0.1:9"},  # never written to here
        "state": {"dir": str(tmp_path / "state")},
        "joins": [{"name": "j", "between": "b.t BETWEEN a.t AND a.t + 1m",
                   "a": {"devices": ["a-*"], "metrics": ["x"]}, "b": {"devices": ["b-*"], "metrics": ["y"]}}],
    }  # fmt: skip
    gw = Gateway(parse_config(doc, env={}), now_ms=lambda: NOW)

    def send(dev: str, seq: int, t: int, m: dict[str, float]) -> None:
        body = {"v": 1, "dev": dev, "r": [{"b": 1, "s": seq, "t": t, "q": "s", "m": m}]}
        gw.pipeline.handle(f"edgekit/s/{dev}/readings", json.dumps(body).encode(), NOW)

    try:
        t = NOW - 600_000
        send("a-1", 0, t, {"x": 1.0})
        send("b-1", 0, t + 1_000, {"y": 1.0})
        send("a-1", 1, t + 120_000, {"x": 1.0})
        send("b-1", 1, t + 120_000, {"y": 1.0})  # both watermarks past the first pair: joined
        send("b-1", 2, t, {"y": 1.0})  # two minutes behind: late
        text = gw.metrics.render().decode()
        assert "\nedgekit_joined_total 1.0\n" in text
        assert "\nedgekit_join_events 2.0\n" in text  # the second pair waits; the first is past its interval
        assert 'edgekit_join_dropped_total{reason="late"} 1.0' in text
    finally:
        gw.store.close()


def test_the_group_relative_counters_are_on_metrics(tmp_path: Path) -> None:
    doc = {
        "influx": {"url": "http://127.0.0.1:9"},  # never written to here
        "state": {"dir": str(tmp_path / "state")},
        "groups": {"g": ["d*"]},
        "windows": [{"name": "w", "kind": "tumbling", "size": "1m", "metrics": ["x"], "aggregates": ["mean"],
                     "relative": {}}],
    }  # fmt: skip
    gw = Gateway(parse_config(doc, env={}), now_ms=lambda: NOW)

    def send(dev: str, seq: int, t: int, x: float, flushed: int) -> None:
        body = {"v": 1, "dev": dev, "r": [{"b": 1, "s": seq, "t": t, "q": "s", "m": {"x": x}}], "flushed": flushed}
        gw.pipeline.handle(f"edgekit/s/{dev}/readings", json.dumps(body).encode(), NOW)

    try:
        t = NOW - NOW % 60_000 - 600_000
        for dev in ("d1", "d2", "d3"):
            gw.pipeline.handle(
                f"edgekit/s/{dev}/status", json.dumps({"v": 1, "dev": dev, "state": "online"}).encode(), NOW
            )
        send("d1", 0, t, 1.0, t + 60_000)
        send("d2", 0, t + 1_000, 3.0, t + 60_000)  # d3 has said online but sent nothing: the group waits
        text = gw.metrics.render().decode()
        assert "\nedgekit_relative_values_total 0.0\n" in text and "\nedgekit_relative_held 2.0\n" in text
        send("d3", 0, t + 70_000, 9.0, t + 70_000)  # its flushed marker: the first minute is final for all
        text = gw.metrics.render().decode()
        # d1 and d2 compared; d3 had no reading in that minute, and its next minute is not final yet
        assert "\nedgekit_relative_values_total 2.0\n" in text and "\nedgekit_relative_held 0.0\n" in text
        assert 'edgekit_relative_skipped_total{reason="late"} 0.0' in text
        assert gw.pipeline.stats.relative_values == 2
    finally:
        gw.store.close()
