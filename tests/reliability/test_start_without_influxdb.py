"""The gateway starts, connects and takes messages while InfluxDB is still away (it spools them)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import services
from helpers import running_gateway, wait_for
from services import Proc

from gateway.config import parse_config
from sim.publish import BrokerConfig, publish
from sim.wire import Outgoing

pytestmark = pytest.mark.integration


async def test_gateway_starts_and_spools_while_influxdb_is_down(broker: Proc, tmp_path: Path) -> None:
    prefix = f"n{uuid.uuid4().hex[:6]}"
    nowhere = f"http://127.0.0.1:{services.free_port()}"  # nothing listens there
    cfg = parse_config(
        {
            "mqtt": {"url": f"mqtt://{broker.host}:{broker.port}", "prefix": prefix, "client_id": f"gw-{prefix}"},
            "influx": {"target": "v1", "url": nowhere, "database": "db", "timeout_s": 1.0, "retry_max_s": 1.0},
            "state": {"dir": str(tmp_path / "state"), "checkpoint_interval_s": 0.5},
        },
        env={},
    )
    doc = {
        "v": 1,
        "dev": "d1",
        "r": [{"b": 1, "s": i, "t": 1_764_072_000_000 + i, "q": "s", "m": {"x": i}} for i in range(5)],
    }
    async with running_gateway(cfg, connect_s=20) as gw:
        msg = Outgoing(f"{prefix}/site/d1/readings", json.dumps(doc).encode(), "batch")
        await publish([msg], BrokerConfig(broker.host, broker.port), client_id=f"sim-{prefix}")
        await wait_for(
            lambda: gw.pipeline.stats.readings_accepted >= 5 and gw.store.spool_lines > 0,
            "the readings taken and spooled",
            20,
        )
        assert not gw.sink.healthy and gw.sink.stats.points_written == 0
