"""A clean stop (SIGTERM) while ingest waits on a full spool with InfluxDB away.

The gateway runs as a subprocess against a real Mosquitto, first with InfluxDB unreachable (nothing listens on
its port) and a small spool budget, so that the spool fills and ingest waits for the database. Its stats file
must go on being written meanwhile, showing the wait. A SIGTERM must then stop it with exit code 0 (the bound
is generous: this is not a speed test). A restart with InfluxDB up replays what was logged and takes the rest
from the broker's session: every reading arrives exactly once.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path

import pytest
import services
from harness import GatewayProcess, scrape, wait_until, write_config
from helpers import influx_query
from services import Proc

from sim.fleet import FleetSpec, Plan, generate
from sim.publish import BrokerConfig, publish

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STOP_BOUND_S = 20.0
"""Generous: the stop takes well under a second; this only catches a stop that waits for the database."""
SPOOL_MAX_BYTES = 20_000


def sections(
    tmp_path: Path, broker: Proc, influx_url: str, db: str, prefix: str, metrics_port: int
) -> dict[str, dict[str, object]]:
    return {
        "mqtt": {"url": f"mqtt://{broker.host}:{broker.port}", "prefix": prefix, "client_id": f"gw-{prefix}",
                 "reconnect_max_s": 2.0},
        "influx": {"target": "v1", "url": influx_url, "database": db, "batch_size": 50, "max_buffered": 100,
                   "timeout_s": 1.0, "retry_max_s": 1.0},
        "state": {"dir": str(tmp_path / "state"), "checkpoint_interval_s": 1.0, "spool_max_bytes": SPOOL_MAX_BYTES},
        "metrics": {"port": metrics_port},
    }  # fmt: skip


def full_waits(metrics_url: str) -> float:
    try:
        return scrape(metrics_url).get("edgekit_sink_full_waits_total", 0)
    except OSError:  # not serving yet
        return 0


def wait_full_then_sigterm(gw: GatewayProcess, metrics_url: str, what: str) -> dict[str, float]:
    """Wait until ingest waits on a full spool, then SIGTERM: exit code 0 well within the bound."""
    wait_until(lambda: full_waits(metrics_url) > 0, what, 60, gw)
    full = scrape(metrics_url)
    assert full["edgekit_influx_up"] == 0
    assert full["edgekit_spool_bytes"] >= SPOOL_MAX_BYTES
    # the stats file (and `top`) goes on while ingest waits: it shows the full spool, and is rewritten
    wait_until(lambda: gw.stats().get("sink", {}).get("full_waits", 0) > 0, "the stats file shows the wait", 10, gw)
    assert gw.stats()["sink"]["spool_bytes"] >= SPOOL_MAX_BYTES
    written = gw.stats_file.stat().st_mtime_ns
    wait_until(lambda: gw.stats_file.stat().st_mtime_ns > written, "the stats file rewritten while full", 10, gw)
    started = time.monotonic()
    try:
        code = gw.stop(timeout=STOP_BOUND_S + 40)  # longer than the bound, to report how long it took
    except subprocess.TimeoutExpired:
        gw.kill()
        pytest.fail(f"SIGTERM did not stop the gateway in {STOP_BOUND_S + 40:.0f} s ({what})\n{gw.logs()}")
    took = time.monotonic() - started
    print(f"SIGTERM when {what}: exit {code} after {took:.1f} s")
    assert code == 0, gw.logs()
    assert took < STOP_BOUND_S, f"stop took {took:.1f} s ({what})\n{gw.logs()}"
    return full


async def test_sigterm_while_spool_full_stops_promptly_and_loses_nothing(
    broker: Proc, influxdb_v1: Proc, influx_db: str, tmp_path: Path
) -> None:
    prefix = f"f{uuid.uuid4().hex[:6]}"
    plan: Plan = generate(
        FleetSpec(devices=10, readings_per_device=200, batch_size=20, duplicate_rate=0.05, seed=5, prefix=prefix,
                  metrics=("temp_c", "rh"))
    )  # fmt: skip
    nowhere = f"http://127.0.0.1:{services.free_port()}"  # InfluxDB is not there: every write fails at once
    metrics_port = services.free_port()
    config = write_config(
        tmp_path / "gateway.toml", sections(tmp_path, broker, nowhere, influx_db, prefix, metrics_port)
    )
    gw = GatewayProcess(config, tmp_path)
    gw.start()
    wait_until(lambda: gw.stats().get("mqtt", {}).get("connected"), "gateway connected", 30, gw)
    await publish(plan.messages, BrokerConfig(broker.host, broker.port), client_id=f"sim-{prefix}")
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    full = wait_full_then_sigterm(gw, metrics_url, "ingest waits on the full spool")
    assert full["edgekit_messages_total"] < len(plan.messages), "the spool should fill before all messages are in"
    stopped = gw.stats()
    assert stopped["sink"]["points_written"] == 0
    print(
        f"at the stop: {stopped['pipeline']['readings_accepted']} of {len(plan.readings)} readings taken, "
        f"{stopped['state']['log_rows']} log records left to replay, {stopped['sink']['spool_lines']} lines spooled"
    )

    # still no InfluxDB: the restart's replay (or its ingest) waits on the spool at once; a stop ends that too
    gw.start()
    wait_full_then_sigterm(gw, metrics_url, "the restart waits on the full spool")

    # InfluxDB up: the same gateway (same state file, same broker session) writes everything, once
    write_config(config, sections(tmp_path, broker, influxdb_v1.url, influx_db, prefix, metrics_port))
    gw.start()

    def finished() -> bool:
        s = gw.stats()
        return (
            bool(s)
            and s["state"]["recovered_from"] > 0
            and s["pipeline"]["readings_accepted"] == len(plan.readings)
            and s["sink"]["pending"] == 0
        )

    wait_until(finished, "every reading written after the restart", 120, gw)
    assert gw.stop() == 0, gw.logs()
    rows = influx_query(influxdb_v1.url, influx_db, "SELECT * FROM reading", epoch="ms")
    got = {(r["device"], r["boot"], r["seq"]): r["time"] for r in rows}
    assert len(rows) == len(got) == len(plan.readings)
    assert got == {(r.device, r.boot, r.seq): r.t_ms for r in plan.readings}
