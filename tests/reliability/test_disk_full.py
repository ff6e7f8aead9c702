"""The state disk fills up, for real: the gateway's state directory is a small tmpfs, and a file fills it.

The log cannot take a message then (SQLite: "database or disk is full"), so the message must not be
acknowledged, and the gateway must not stop: it waits and tries again, the broker keeps what is not
acknowledged, and once there is room again every reading reaches InfluxDB once. A checkpoint that fails on
the full disk (the periodic one, and the one the log's size asks for) is tried again later, never the end of
the gateway.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import influx_query, running_gateway, wait_for
from services import Proc

from gateway.config import parse_config
from sim.publish import BrokerConfig, publish
from sim.wire import Outgoing

pytestmark = pytest.mark.integration

T0 = 1_764_072_000_000
MESSAGES, PER_MESSAGE = 40, 20


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs of this test (the tests run as root, like CI)."""
    where = tmp_path / "disk"
    where.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)], capture_output=True, text=True
    )
    assert done.returncode == 0, f"cannot mount a tmpfs for the test (run as root): {done.stderr}"
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(disk: Path) -> Path:
    """Fill ``disk`` up to the last byte with one file; returns it."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (65536, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(fd)
    assert shutil.disk_usage(disk).free < 65536
    return filler


def messages(prefix: str, first: int, count: int) -> list[Outgoing]:
    out = []
    for m in range(first, first + count):
        device = f"d{m % 4}"
        rows = [
            {"b": 1, "s": m * PER_MESSAGE + i, "t": T0 + (m * PER_MESSAGE + i) * 1000, "q": "s", "m": {"x": i + 0.25}}
            for i in range(PER_MESSAGE)
        ]
        doc = {"v": 1, "dev": device, "r": rows}
        out.append(Outgoing(f"{prefix}/site/{device}/readings", json.dumps(doc).encode(), "batch"))
    return out


async def test_a_full_state_disk_stops_acknowledging_not_the_gateway(
    broker: Proc, influxdb_v1: Proc, influx_db: str, small_disk: Path
) -> None:
    prefix = f"df{uuid.uuid4().hex[:6]}"
    cfg = parse_config(
        {
            "mqtt": {"url": f"mqtt://{broker.host}:{broker.port}", "prefix": prefix, "client_id": f"gw-{prefix}"},
            "influx": {"target": "v1", "url": influxdb_v1.url, "database": influx_db, "batch_size": 200},
            # checkpoints every second, and one asked for by the log's size every few messages
            "state": {"dir": str(small_disk / "state"), "checkpoint_interval_s": 1.0, "checkpoint_max_log_rows": 5},
        },
        env={},
    )  # fmt: skip
    half = MESSAGES // 2
    total = MESSAGES * PER_MESSAGE
    async with running_gateway(cfg) as gw:  # raises whatever ended the gateway's run
        await publish(messages(prefix, 0, half), BrokerConfig(broker.host, broker.port), client_id=f"s1-{prefix}")
        await wait_for(lambda: gw.pipeline.stats.readings_accepted == half * PER_MESSAGE, "the first half taken")
        filler = fill(small_disk)
        acked = gw.ingest_stats.acked
        await publish(messages(prefix, half, half), BrokerConfig(broker.host, broker.port), client_id=f"s2-{prefix}")
        await wait_for(lambda: gw.ingest_stats.log_failures >= 3, "the log refusing messages, tried again", 60)
        assert gw.ingest_stats.acked == acked, "a message the log could not take was acknowledged"
        assert gw.pipeline.stats.readings_accepted == half * PER_MESSAGE
        assert gw.ingest_stats.connected
        rows_before = gw.store.log_rows
        with pytest.raises(sqlite3.OperationalError, match="full"):
            await gw.checkpoint()
        assert gw.checkpoint_failures >= 1 and gw.store.log_rows == rows_before
        assert gw.metrics.health()["status"] == "degraded"  # what /healthz says
        filler.unlink()  # room again
        await wait_for(lambda: gw.pipeline.stats.readings_accepted == total, "every reading taken", 120)
        await wait_for(lambda: gw.sink.pending == 0, "every line written", 60)
        assert gw.checkpoints >= 2
    rows = influx_query(influxdb_v1.url, influx_db, "SELECT count(x) FROM reading")
    assert rows[0]["count"] == total
    assert gw.pipeline.stats.duplicates == 0
