"""A reload under load, end to end: boards -> Mosquitto -> gateway -> InfluxDB, with ``edgekit-gateway reload``
asking the running gateway (its metrics endpoint) to take a new file while readings flow.

The new file keeps one window, changes another (1 minute -> 2 minutes) and adds a pattern. Every reading is in
InfluxDB exactly once; the kept window's results are those of the same input through a pipeline that never
reloaded; the changed window is restarted (the log and /metrics say so) and gives 2-minute windows after it; the
new pattern raises an alert for each hot reading published after the reload.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from helpers import influx_query, running_gateway, wait_for
from services import Proc, free_port
from test_reload import toml

from gateway.cli import _run
from gateway.cli import main as cli
from gateway.config import load_config
from gateway.engine.outputs import WindowResult
from gateway.pipeline import Pipeline
from sim.publish import BrokerConfig, publish
from sim.wire import Outgoing

pytestmark = pytest.mark.integration

SITE = "plant"
DEVICES = ("b1", "b2", "b3")


def messages(prefix: str, t0: int, first: int, n: int, hot: bool = False) -> list[Outgoing]:
    """``n`` messages per board of 5 readings each (one every 5 s of event time), from reading ``first`` on."""
    out = []
    for m in range(n):
        for dev in DEVICES:
            rows = []
            for j in range(5):
                s = first + m * 5 + j
                v = 90.0 + j if hot and m == 0 else 20.0 + (s * 7 + len(dev)) % 11
                rows.append({"b": 1, "s": s, "t": t0 + s * 5_000, "q": "s", "m": {"temp_c": v}})
            doc = {"v": 1, "dev": dev, "r": rows}
            out.append(Outgoing(f"{prefix}/{SITE}/{dev}/readings", json.dumps(doc).encode(), "batch"))
    return out


async def test_a_reload_under_load_loses_nothing_and_keeps_unchanged_windows(
    mosquitto: Proc,
    influxdb_v1: Proc,
    influx_db: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    prefix = f"r{uuid.uuid4().hex[:8]}"
    port = free_port()
    base: dict[str, Any] = {
        "mqtt": {"url": f"mqtt://{mosquitto.host}:{mosquitto.port}", "prefix": prefix, "client_id": f"gw-{prefix}",
                 "clean_session": True},
        "influx": {"target": "v1", "url": influxdb_v1.url, "database": influx_db, "batch_size": 200,
                   "flush_interval_ms": 100},
        "state": {"dir": str(tmp_path / "state")},
        "metrics": {"port": port},
        "engine": {"watermark": {"out_of_orderness": "1s"}},
    }  # fmt: skip
    aggregates = ["count", "mean", "min", "max"]
    keep = {"name": "keep", "kind": "tumbling", "size": "1m", "metrics": ["temp_c"], "aggregates": aggregates}
    change = {**keep, "name": "change"}
    path = tmp_path / "gateway.toml"
    path.write_text(toml({**base, "windows": [keep, change]}))
    new_doc = {
        **base,
        "windows": [keep, {**change, "size": "2m"}],
        "patterns": [{"name": "hot", "steps": [{"name": "hot", "where": "temp_c > 80"}]}],
    }
    cfg = load_config(path)
    t0 = (time.time_ns() // 1_000_000 - 3_600_000) // 60_000 * 60_000
    before = messages(prefix, t0, 1, 24)  # 2 minutes of event time a board
    during = messages(prefix, t0, 121, 48)  # 4 minutes, published while the reload happens
    after = messages(prefix, t0, 361, 12, hot=True) + messages(prefix, t0, 421, 12)  # 5 hot readings a board first
    total = 5 * len(before + during + after)
    broker = BrokerConfig(mosquitto.host, mosquitto.port)
    caplog.set_level(logging.INFO, logger="gateway")
    async with running_gateway(cfg, config_path=path) as gw:
        fingerprint = gw.fingerprint
        await publish(before, broker, client_id=f"{prefix}-pub")
        await wait_for(lambda: gw.pipeline.stats.readings_accepted == 5 * len(before), "the first readings")
        # another broker needs a restart: refused by the gateway, exit 2 with the reason, nothing changed
        path.write_text(toml({**new_doc, "mqtt": {**base["mqtt"], "url": "mqtt://192.0.2.1:1883"}}))
        assert await asyncio.to_thread(cli, ["reload", "--config", str(path)]) == 2
        assert "mqtt.host, mqtt.port changed" in capsys.readouterr().err
        assert (gw.reloads, gw.reload_failures, gw.fingerprint) == (0, 1, fingerprint)
        flowing = asyncio.create_task(publish(during, broker, client_id=f"{prefix}-pub", rate=40))
        await wait_for(lambda: gw.pipeline.stats.readings_accepted > 5 * len(before), "readings flowing")
        path.write_text(toml(new_doc))
        code = await asyncio.to_thread(cli, ["reload", "--config", str(path)])
        at_reload = gw.last_reload.get("log_pos", 0), gw.pipeline.stats.readings_accepted
        assert code == 0, caplog.text
        await flowing
        assert 5 * len(before) < at_reload[1] < 5 * len(before + during)  # the reload came while they flowed
        await publish(after, broker, client_id=f"{prefix}-pub")
        await wait_for(lambda: gw.pipeline.stats.readings_accepted == total, "every reading accepted")
        await wait_for(lambda: gw.pipeline.stats.alerts == 3 * 5, "an alert for each hot reading")
        metrics = gw.metrics.render().decode()
        assert gw.pipeline.stats.duplicates == 0
    assert 'edgekit_reload_restarted_total{kind="window"} 1.0' in metrics
    assert 'edgekit_reloads_total{outcome="applied"} 1.0' in metrics
    assert "window change restarted: its definition changed" in caplog.text

    # every reading in InfluxDB, exactly once (per board: each identity one point)
    per_device = influx_query(influxdb_v1.url, influx_db, "SELECT count(temp_c) FROM reading GROUP BY device")
    assert sorted((r["device"], r["count"]) for r in per_device) == [(d, total // 3) for d in DEVICES]

    # the kept window: what a pipeline of the old configuration gives for the same input, never reloaded
    ref = Pipeline(cfg)
    now = time.time_ns() // 1_000_000
    expected = {}
    for m in before + during + after:
        for o in ref.handle(m.topic, m.payload, now).outputs:
            if isinstance(o, WindowResult) and o.window == "keep":
                expected[(o.key, o.start_ms)] = (
                    o.count,
                    o.aggregates["mean"],
                    o.aggregates["min"],
                    o.aggregates["max"],
                )
    rows = influx_query(
        influxdb_v1.url, influx_db, """SELECT "count", "mean", "min", "max" FROM "window" WHERE "window" = 'keep' """
        "GROUP BY device", epoch="ms",
    )  # fmt: skip
    got = {(r["device"], r["time"]): (r["count"], r["mean"], r["min"], r["max"]) for r in rows}
    assert len(expected) == 3 * 39 and got == expected  # 40 minutes a board: every window closed but the last
    # the changed window: 1-minute windows before the reload, 2-minute ones after it
    sizes = influx_query(
        influxdb_v1.url, influx_db, """SELECT "end_ms" FROM "window" WHERE "window" = 'change'""", epoch="ms"
    )
    spans = {r["end_ms"] - r["time"] for r in sizes}
    assert spans == {60_000, 120_000}


async def test_sighup_makes_run_reload_and_sigterm_stops_it(
    mosquitto: Proc, influxdb_v1: Proc, influx_db: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``run`` (``gateway.cli._run``, as systemd's ``ExecReload=`` or ``kill -HUP`` reach it): SIGHUP reads the file
    again and applies it; SIGTERM then stops the gateway cleanly (exit 0)."""
    prefix = f"h{uuid.uuid4().hex[:8]}"
    doc: dict[str, Any] = {
        "mqtt": {"url": f"mqtt://{mosquitto.host}:{mosquitto.port}", "prefix": prefix, "client_id": f"gw-{prefix}",
                 "clean_session": True},
        "influx": {"target": "v1", "url": influxdb_v1.url, "database": influx_db},
        "state": {"dir": str(tmp_path / "state")},
        "windows": [{"name": "w", "kind": "tumbling", "size": "1m", "metrics": ["temp_c"]}],
    }  # fmt: skip
    path = tmp_path / "gateway.toml"
    path.write_text(toml(doc))
    caplog.set_level(logging.INFO, logger="gateway")
    loop = asyncio.get_running_loop()
    run = asyncio.create_task(_run(load_config(path), None, None, path))
    try:
        await wait_for(lambda: "connected to broker" in caplog.text or run.done(), "the gateway connected")
        path.write_text(toml({**doc, "windows": [{**doc["windows"][0], "size": "2m"}]}))
        os.kill(os.getpid(), signal.SIGHUP)
        await wait_for(lambda: "reload: applied" in caplog.text or run.done(), "the reload")
        assert "window w restarted: its definition changed" in caplog.text
        os.kill(os.getpid(), signal.SIGTERM)
        assert await asyncio.wait_for(run, 60) == 0
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        if not run.done():
            run.cancel()
