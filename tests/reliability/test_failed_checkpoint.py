"""A checkpoint whose SQLite transaction fails keeps every line where it was: in memory, and in the log.

The gateway runs in this process with InfluxDB away, so its lines wait in the sink's memory. Another
connection holds the state file's write lock (as an operator's ``sqlite3`` shell or a backup tool can), so
the checkpoint's transaction fails with "database is locked". Nothing may leave memory or the log then;
once the lock is gone a checkpoint moves the lines to the spool, and when InfluxDB comes up every reading
is written, once.

And the case the issue found: a line no writer can send (a lone surrogate) among them, with InfluxDB away.
The checkpoint's spool insert used to fail on it after the lines had left memory; the spool now stores any
string, and when InfluxDB is back the line is a dead letter ``unwritable`` and every other line is written.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from pathlib import Path

import pytest
import services
from helpers import influx_query, running_gateway, start_or_fail, wait_for
from services import Proc

from gateway.app import state_path
from gateway.config import parse_config
from sim.publish import BrokerConfig, publish
from sim.wire import Outgoing

pytestmark = pytest.mark.integration

T0 = 1_764_072_000_000
MESSAGES, PER_MESSAGE = 10, 30


def messages(prefix: str) -> list[Outgoing]:
    out = []
    for m in range(MESSAGES):
        device = f"d{m % 3}"
        rows = [
            {"b": 1, "s": m * PER_MESSAGE + i, "t": T0 + (m * PER_MESSAGE + i) * 1000, "q": "s", "m": {"x": i + 0.5}}
            for i in range(PER_MESSAGE)
        ]
        doc = {"v": 1, "dev": device, "r": rows}
        out.append(Outgoing(f"{prefix}/site/{device}/readings", json.dumps(doc).encode(), "batch"))
    return out


async def test_a_failed_checkpoint_keeps_memory_and_log(broker: Proc, tmp_path: Path) -> None:
    prefix = f"k{uuid.uuid4().hex[:6]}"
    http_port, rpc_port = services.free_ports(2)
    url = f"http://127.0.0.1:{http_port}"  # InfluxDB starts there later
    cfg = parse_config(
        {
            "mqtt": {"url": f"mqtt://{broker.host}:{broker.port}", "prefix": prefix, "client_id": f"gw-{prefix}"},
            "influx": {"target": "v1", "url": url, "database": "ck", "batch_size": 50, "timeout_s": 1.0,
                       "retry_max_s": 0.5},
            # checkpoints are taken by this test (and by the gateway when it starts and stops)
            "state": {"dir": str(tmp_path / "state"), "checkpoint_interval_s": 3600.0},
        },
        env={},
    )  # fmt: skip
    total = MESSAGES * PER_MESSAGE
    influx: Proc | None = None
    try:
        async with running_gateway(cfg) as gw:
            await publish(messages(prefix), BrokerConfig(broker.host, broker.port), client_id=f"sim-{prefix}")
            await wait_for(lambda: gw.pipeline.stats.readings_accepted == total, "every reading taken")
            await wait_for(lambda: not gw.sink.healthy, "the sink finds InfluxDB away")
            memory, log_rows = gw.sink.in_memory, gw.store.log_rows
            assert memory >= total and log_rows >= MESSAGES and gw.store.spool_lines == 0
            logged = [r.pos for r in gw.store.tail(0)]

            locker = sqlite3.connect(state_path(cfg), isolation_level=None)
            locker.execute("BEGIN IMMEDIATE")  # holds the write lock
            try:
                with pytest.raises(sqlite3.OperationalError, match="locked"):
                    await gw.checkpoint()
                # (a tick logged while the checkpoint waited may add lines; InfluxDB is away, the spool empty)
                assert gw.sink.in_memory >= memory, "a failed checkpoint took lines out of memory"
                # every row is still in the log (ticks logged while the checkpoint waited come after them)
                now_logged = [r.pos for r in gw.store.tail(0)]
                assert now_logged[: len(logged)] == logged and gw.store.log_rows == len(now_logged) >= log_rows
                assert gw.store.spool_lines == 0
            finally:
                locker.rollback()
                locker.close()

            await gw.checkpoint()  # a good one: memory to the spool, the log truncated (a tick may follow)
            assert gw.store.log_rows < MESSAGES
            assert gw.store.spool_lines >= total, f"only {gw.store.spool_lines} of {total}+ lines spooled"

            influx = start_or_fail(lambda: services.start_influxdb(tmp_path / "influx", http_port, rpc_port))
            await wait_for(lambda: gw.sink.pending == 0 and gw.sink.healthy, "the spool drained", 60)
        rows = influx_query(url, "ck", "SELECT * FROM reading", epoch="ms")
        got = {(r["device"], r["boot"], r["seq"]) for r in rows}
        assert len(rows) == len(got) == total, f"{len(rows)} rows, {len(got)} distinct readings of {total}"
    finally:
        if influx is not None:
            influx.stop()


async def test_an_unwritable_line_in_the_spool_does_not_hold_up_the_rest(broker: Proc, tmp_path: Path) -> None:
    prefix = f"w{uuid.uuid4().hex[:6]}"
    http_port, rpc_port = services.free_ports(2)
    url = f"http://127.0.0.1:{http_port}"  # InfluxDB starts there later
    cfg = parse_config(
        {
            "mqtt": {"url": f"mqtt://{broker.host}:{broker.port}", "prefix": prefix, "client_id": f"gw-{prefix}"},
            "influx": {"target": "v1", "url": url, "database": "ck", "batch_size": 50, "timeout_s": 1.0,
                       "retry_max_s": 0.5},
            "state": {"dir": str(tmp_path / "state"), "checkpoint_interval_s": 3600.0},
        },
        env={},
    )  # fmt: skip
    total = MESSAGES * PER_MESSAGE
    bad = f'reading,device=d9,site=site label="\ud800",boot=1i,seq=1i,q="s" {T0 * 1_000_000}'
    influx: Proc | None = None
    try:
        async with running_gateway(cfg) as gw:
            msgs = messages(prefix)
            await publish(msgs[:5], BrokerConfig(broker.host, broker.port), client_id=f"sim-{prefix}")
            await wait_for(lambda: gw.pipeline.stats.readings_accepted == total // 2, "half the readings taken")
            await gw.sink.add([bad])  # between the readings of the same burst
            await publish(msgs[5:], BrokerConfig(broker.host, broker.port), client_id=f"sim-{prefix}")
            await wait_for(lambda: gw.pipeline.stats.readings_accepted == total, "every reading taken")
            await gw.checkpoint()
            assert gw.store.spool_lines >= total + 1
            influx = start_or_fail(lambda: services.start_influxdb(tmp_path / "influx", http_port, rpc_port))
            await wait_for(lambda: gw.sink.pending == 0 and gw.sink.healthy, "the spool drained", 60)
            assert gw.sink.stats.points_unwritable == 1 and gw.sink.stats.dead_letters_written == 1
        rows = influx_query(url, "ck", "SELECT * FROM reading", epoch="ms")
        got = {(r["device"], r["boot"], r["seq"]) for r in rows}
        assert len(rows) == len(got) == total, f"{len(rows)} rows, {len(got)} distinct readings of {total}"
        (dead,) = influx_query(url, "ck", "SELECT * FROM dead_letter")
        assert (dead["reason"], dead["device"]) == ("unwritable", "d9")
    finally:
        if influx is not None:
            influx.stop()
