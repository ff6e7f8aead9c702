"""Windows end to end: readings through Mosquitto -> gateway -> InfluxDB 1.x, read back with InfluxQL.

The final state of every window point in InfluxDB (the last revision overwrote the earlier ones in
place: same series, same timestamp) must equal the brute-force reference fed the same batches, and so
must the late measurement. The script includes a late-but-allowed reading (revision 2) and a too-late one.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from typing import Any

import pytest
from engine_reference import Reference
from helpers import influx_query, running_gateway, wait_for
from services import Proc

from gateway.config import parse_config
from sim.publish import BrokerConfig, publish
from sim.wire import Outgoing

pytestmark = pytest.mark.integration

WINDOWS = [
    {"name": "t60", "kind": "tumbling", "size": "60s", "metrics": ["temp_c"], "allowed_lateness": "60s"},
    {"name": "s60", "kind": "sliding", "size": "60s", "slide": "20s", "metrics": ["temp_c"], "allowed_lateness": "30s"},
    {"name": "sess", "kind": "session", "gap": "45s", "metrics": ["temp_c"], "allowed_lateness": "30s"},
]
BOUND_MS = 5_000
AGGS = ("count", "sum", "mean", "min", "max", "stddev", "first", "last")


def script(t0: int) -> list[tuple[str, list[tuple[int, int, int, dict[str, float]]], int | None]]:
    """(device, readings (t, boot, seq, metrics), flushed) per batch, in publishing order."""
    s = 1_000
    return [
        ("d1", [(t0 + 1 * s, 1, 0, {"temp_c": 10.0}), (t0 + 30 * s, 1, 1, {"temp_c": 20.0})], None),
        ("d2", [(t0 + 5 * s, 4, 0, {"temp_c": 5.5}), (t0 + 62 * s, 4, 1, {"temp_c": 6.5})], None),
        ("d1", [(t0 + 70 * s, 1, 2, {"temp_c": 30.0})], None),  # d1's watermark passes t0+60s: fires
        ("d1", [(t0 + 50 * s, 1, 3, {"temp_c": 40.0})], None),  # late, within the lateness: revision 2
        ("d1", [(t0 + 200 * s, 1, 4, {"temp_c": 50.0})], None),  # watermark t0+195s: cleans [t0, t0+60s)
        ("d1", [(t0 + 10 * s, 1, 5, {"temp_c": 60.0})], None),  # too late: the late measurement
        ("d2", [(t0 + 121 * s, 4, 2, {"temp_c": 7.25})], t0 + 300 * s),  # flushed marker releases d2
        ("d1", [], t0 + 300 * s),  # a pure flushed marker
    ]


def final_reference(t0: int) -> tuple[dict[tuple[Any, ...], tuple[Any, ...]], set[tuple[Any, ...]]]:
    cfg = parse_config({"windows": WINDOWS, "engine": {"watermark": {"out_of_orderness": f"{BOUND_MS}ms"}}}, env={})
    final: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    late: set[tuple[Any, ...]] = set()
    for spec in cfg.engine.windows:
        ref = Reference(spec, "device", BOUND_MS)
        for device, readings, flushed in script(t0):
            emitted, lates = ref.batch("site-e2e", device, readings, flushed)
            for name, key, st, _en, metric, count, aggs, rev in emitted:
                final[(name, key, st, metric)] = (count, aggs, rev)
            late.update(lates)
    return final, late


async def test_window_results_and_late_readings_land_in_influxdb(
    mosquitto: Proc, influxdb_v1: Proc, influx_db: str
) -> None:
    t0 = (time.time_ns() // 1_000_000 - 3_600_000) // 60_000 * 60_000
    prefix = f"w{uuid.uuid4().hex[:8]}"
    cfg = parse_config(
        {
            "mqtt": {"url": f"mqtt://{mosquitto.host}:{mosquitto.port}", "prefix": prefix,
                     "client_id": f"gw-{prefix}", "clean_session": True},
            "influx": {"target": "v1", "url": influxdb_v1.url, "database": influx_db, "batch_size": 50},
            "engine": {"watermark": {"out_of_orderness": f"{BOUND_MS}ms"}},
            "windows": WINDOWS,
        },
        env={},
    )  # fmt: skip
    messages = []
    for device, readings, flushed in script(t0):
        doc: dict[str, Any] = {
            "v": 1,
            "dev": device,
            "r": [{"b": b, "s": s, "t": t, "q": "s", "m": m} for t, b, s, m in readings],
        }
        if flushed is not None:
            doc["flushed"] = flushed
        messages.append(Outgoing(f"{prefix}/site-e2e/{device}/readings", json.dumps(doc).encode(), "batch"))

    async with running_gateway(cfg) as gw:
        await publish(messages, BrokerConfig(mosquitto.host, mosquitto.port), client_id=f"sim-{prefix}")
        await wait_for(lambda: gw.pipeline.stats.messages >= len(messages), "the gateway to take every message")
    assert gw.sink.stats.points_refused == 0

    want, want_late = final_reference(t0)
    assert any(rev == 2 for _, _, rev in want.values()), "the script must cause a revision 2"
    assert any(w[0] == "t60" and w[3] == t0 + 10_000 for w in want_late), "and a too-late reading"

    rows = influx_query(influxdb_v1.url, influx_db, "SELECT * FROM window", epoch="ms")
    got = {(r["window"], r["device"], r["time"], r["metric"]): r for r in rows}
    # merged-away sessions are marked superseded with count 0 and carry no aggregates
    live = {k: v for k, v in got.items() if v["count"] > 0}
    assert set(live) == set(want)
    for key, (count, aggs, rev) in want.items():
        row = live[key]
        assert (row["count"], row["revision"]) == (count, rev), key
        for name in AGGS[1:]:
            if name in aggs:
                assert math.isclose(row[name], aggs[name], rel_tol=1e-9), (key, name)
    t60 = live[("t60", "d1", t0, "temp_c")]
    assert (t60["count"], t60["revision"], t60["fired"]) == (3, 2, "late")
    assert math.isclose(t60["mean"], (10.0 + 20.0 + 40.0) / 3)

    late = influx_query(influxdb_v1.url, influx_db, "SELECT * FROM late_reading", epoch="ms")
    got_late = {(r["window"], r["device"], r["metric"], r["time"], r["boot"], r["seq"]) for r in late}
    assert got_late == want_late
    too_late = [r for r in late if r["window"] == "t60"]
    assert [(r["reason"], r["late_by_ms"]) for r in too_late] == [("too_late", 195_000 - 10_000)]
