"""Bridge mode end to end: boards -> real Mosquitto -> the gateway as a process (SIGKILLed mid-run) -> the files
a Flink job's files source reads (docs/scale-out.md). Every accepted reading is in the committed files exactly
once, with its values, and nothing is left half-written."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from itertools import groupby
from pathlib import Path

import pytest
from harness import GatewayProcess, wait_until, write_config
from services import Proc

from gateway.bridge import N_PER_POS, committed_files
from sim.fleet import FleetSpec, generate
from sim.publish import BrokerConfig, publish

RATE = 80.0  # messages per second: publishing lasts about 3 s


@pytest.mark.integration
@pytest.mark.slow
async def test_bridge_files_hold_every_reading_once_across_a_sigkill(
    broker: Proc, influxdb_v1: Proc, influx_db: str, tmp_path: Path
) -> None:
    prefix = f"b{uuid.uuid4().hex[:6]}"
    plan = generate(
        FleetSpec(devices=12, readings_per_device=200, batch_size=10, sites=("north", "south"),
                  duplicate_rate=0.1, nan_readings=5, seed=7, prefix=prefix)
    )  # fmt: skip
    counts = plan.counts()
    out = tmp_path / "flink-in"
    sections: dict[str, dict[str, object]] = {
        "mqtt": {"url": f"mqtt://{broker.host}:{broker.port}", "prefix": prefix, "client_id": f"gw-{prefix}"},
        "influx": {"target": "v1", "url": influxdb_v1.url, "database": influx_db},
        "state": {"dir": str(tmp_path / "state"), "checkpoint_interval_s": 0.3},
        "bridge": {"dir": str(out), "roll_bytes": 8192, "roll_interval_s": 0.5},
    }
    # the windows of the configuration are the cluster's: the bridge forwards, it does not window
    gw = GatewayProcess(write_config(tmp_path / "gateway.toml", sections), tmp_path)
    gw.start()
    wait_until(lambda: gw.stats().get("mqtt", {}).get("connected"), "gateway connected", 30, gw)
    publisher = asyncio.create_task(
        publish(plan.messages, BrokerConfig(broker.host, broker.port), client_id=f"sim-{prefix}", rate=RATE)
    )
    deadline = time.monotonic() + 30
    while not committed_files(out) and time.monotonic() < deadline:  # some files complete, more in progress
        await asyncio.sleep(0.05)
    assert committed_files(out) and not publisher.done(), gw.logs()
    gw.kill()
    gw.start()
    assert (await publisher).messages == len(plan.messages)

    wait_until(
        lambda: gw.stats().get("pipeline", {}).get("readings_accepted") == counts.readings, "every reading", 60, gw
    )
    assert gw.stop() == 0, gw.logs()
    stats = gw.stats()
    assert stats["pipeline"]["window_results"] == 0 and stats["bridge"]["in_progress_bytes"] == 0

    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # a clean stop completes the last file
    docs = [json.loads(x) for p in committed_files(out) for x in p.read_bytes().splitlines()]
    ns = [d["n"] for d in docs]
    assert ns == sorted(set(ns))  # strictly increasing over the files in name order: nothing twice
    got = {(d["device"], d["boot"], d["seq"]): d for d in docs}
    # the plan's readings are the accepted ones (its NaN readings are dead letters, not forwarded)
    assert len(got) == len(docs) == counts.readings == len(plan.readings)
    for r in plan.readings:
        d = got[(r.device, r.boot, r.seq)]
        assert (d["t_ms"], d["site"], d["q"], d["num"]) == (r.t_ms, r.site, r.quality, dict(r.metrics))
    assert any("wm_ms" in d for d in docs)
    # every line carries the largest watermark field of the messages before it: across the SIGKILL too (the
    # forwarder's top comes back from the checkpoint, the replay moves it again)
    high: int | None = None
    for _, group in groupby(docs, key=lambda d: d["n"] // N_PER_POS):
        message = list(group)
        assert [d.get("wm0_ms") for d in message] == [high] * len(message), (high, message)
        assert all("wm_ms" not in d for d in message[:-1])
        top = message[-1].get("wm_ms")
        high = top if high is None or (top is not None and top > high) else high
    assert high is not None and sum("wm0_ms" in d for d in docs) > len(docs) // 2
    print(f"bridge: {len(committed_files(out))} files, {len(docs)} readings, stats {stats['bridge']}")
