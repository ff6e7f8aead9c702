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
