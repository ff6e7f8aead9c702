"""Who a reading belongs to, end to end: real Mosquitto, the gateway, InfluxDB 1.6.

- one device id under two sites: the first site's data complete, the second's all ``site_mismatch`` dead
  letters, nothing silent;
- one device inventing thousands of metric names, then another device's spike: the spike still raises its
  alert, the invented ones are ``too_many_metrics`` dead letters, and the ``reading`` measurement's field keys
  stay within the documented bound;
- an old boot's readings re-sent after eight newer boots: the windows equal a run without the re-sends, the
  re-sends are ``stale_boot`` dead letters.
"""

from __future__ import annotations

import json
import statistics
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from helpers import influx_query, running_gateway, wait_for
from services import Proc

from gateway.app import Gateway
from gateway.config import Config, parse_config
from gateway.pipeline import reading_field_bound
from sim.publish import BrokerConfig, publish
from sim.wire import Outgoing

pytestmark = pytest.mark.integration


def _config(broker: Proc, influx_url: str, db: str, prefix: str, tmp_path: Path, **sections: Any) -> Config:
    doc: dict[str, Any] = {
        "mqtt": {"url": f"mqtt://{broker.host}:{broker.port}", "prefix": prefix, "client_id": f"gw-{prefix}",
                 "clean_session": True},
        "influx": {"target": "v1", "url": influx_url, "database": db, "batch_size": 500},
        "state": {"dir": str(tmp_path / "state")},
        **sections,
    }  # fmt: skip
    return parse_config(doc, env={})


def _batch(prefix: str, site: str, dev: str, readings: list[tuple[int, int, int, dict[str, float]]]) -> Outgoing:
    r = [{"b": b, "s": s, "t": t, "q": "s", "m": m} for b, s, t, m in readings]
    payload = json.dumps({"v": 1, "dev": dev, "r": r}, separators=(",", ":")).encode()
    return Outgoing(f"{prefix}/{site}/{dev}/readings", payload, "batch", device=dev, readings=len(r))


def _status(prefix: str, site: str, dev: str) -> Outgoing:
    payload = json.dumps({"v": 1, "dev": dev, "state": "online", "boot": 1}).encode()
    return Outgoing(f"{prefix}/{site}/{dev}/status", payload, "status", device=dev)


async def _send(gw: Gateway, broker: Proc, messages: list[Outgoing], prefix: str) -> None:
    before = gw.pipeline.stats.messages + gw.pipeline.stats.ignored
    await publish(messages, BrokerConfig(broker.host, broker.port), client_id=f"sim-{prefix}-{uuid.uuid4().hex[:4]}")
    await wait_for(
        lambda: gw.pipeline.stats.messages + gw.pipeline.stats.ignored >= before + len(messages),
        lambda: f"the gateway took {gw.pipeline.stats.messages} messages: {gw.snapshot_stats()}",
        60,
    )


def _minute(ms: int) -> int:
    return ms - ms % 60_000


async def test_one_device_id_under_two_sites(broker: Proc, influxdb_v1: Proc, influx_db: str, tmp_path: Path) -> None:
    prefix = f"i{uuid.uuid4().hex[:6]}"
    cfg = _config(broker, influxdb_v1.url, influx_db, prefix, tmp_path)
    t0 = _minute(int(time.time() * 1000)) - 3_600_000
    north = [_status(prefix, "north", "dev-1")] + [
        _batch(prefix, "north", "dev-1", [(1, s, t0 + s * 1000, {"temp_c": 20.0 + s}) for s in range(k, k + 5)])
        for k in (0, 5)
    ]
    # another board given the same id at another site: same boot and sequence numbers, other times and values
    south = [_status(prefix, "south", "dev-1")] + [
        _batch(prefix, "south", "dev-1", [(1, s, t0 + 500 + s * 1000, {"temp_c": -5.0 - s}) for s in range(k, k + 5)])
        for k in (0, 5)
    ]
    async with running_gateway(cfg) as gw:
        await _send(gw, broker, north, prefix)
        await _send(gw, broker, south, prefix)
    s = gw.pipeline.stats
    assert s.readings_accepted == 10 and s.duplicates == 0  # nothing dropped silently as a duplicate
    assert dict(s.dead_by_reason) == {"site_mismatch": 3}  # two batches and a status from the other site
    assert gw.pipeline.devices == {"dev-1": "north"}

    rows = influx_query(influxdb_v1.url, influx_db, "SELECT * FROM reading", epoch="ms")
    assert sorted((r["site"], r["seq"], r["time"], r["temp_c"]) for r in rows) == [
        ("north", s, t0 + s * 1000, 20.0 + s) for s in range(10)
    ]
    dead = influx_query(influxdb_v1.url, influx_db, "SELECT * FROM dead_letter")
    assert len(dead) == 3
    for d in dead:
        assert (d["reason"], d["site"], d["device"]) == ("site_mismatch", "south", "dev-1")
        assert "'north'" in d["detail"] and "'south'" in d["detail"], d["detail"]
    status = influx_query(influxdb_v1.url, influx_db, "SELECT * FROM device_status")
    assert [r["site"] for r in status] == ["north"]


async def test_invented_metric_names_cannot_use_up_anomaly_detection(
    broker: Proc, influxdb_v1: Proc, influx_db: str, tmp_path: Path
) -> None:
    prefix = f"i{uuid.uuid4().hex[:6]}"
    cfg = _config(
        broker, influxdb_v1.url, influx_db, prefix, tmp_path,
        devices={"max_devices": 4},
        anomaly={"max_series": 2_000, "write": "flagged"},
    )  # fmt: skip
    t0 = _minute(int(time.time() * 1000)) - 7_200_000
    # one device invents 3,200 metric names, 16 a reading (more than the whole anomaly.max_series)
    names = [f"x{i:05d}" for i in range(3_200)]
    invented = [(1, i, t0 + i * 1000, {n: 1.0 for n in names[i * 16 : i * 16 + 16]}) for i in range(len(names) // 16)]
    flood = [_batch(prefix, "a", "inventor", invented[k : k + 20]) for k in range(0, len(invented), 20)]
    # then another device: 40 quiet readings, then a spike
    quiet = [20.0 + (0.1 if i % 2 else -0.1) * (i % 5) for i in range(40)]
    good = [(1, i, t0 + i * 10_000, {"temp_c": v}) for i, v in enumerate([*quiet, 60.0])]
    honest = [_batch(prefix, "a", "honest", good[k : k + 10]) for k in range(0, len(good), 10)]
    async with running_gateway(cfg) as gw:
        await _send(gw, broker, flood, prefix)
        await _send(gw, broker, honest, prefix)
    cap = cfg.devices.max_metric_names
    s = gw.pipeline.stats
    refused = len(invented) - cap // 16  # the readings whose names would take the device past its cap
    assert dict(s.dead_by_reason) == {"too_many_metrics": refused}
    assert s.readings_accepted == len(invented) - refused + len(good)

    alerts = influx_query(influxdb_v1.url, influx_db, "SELECT * FROM alert WHERE \"key\" = 'honest'", epoch="ms")
    assert [(a["name"], a["last_ms"]) for a in alerts] == [("zscore.temp_c", good[-1][2])]
    dead = influx_query(influxdb_v1.url, influx_db, "SELECT * FROM dead_letter")
    assert Counter((d["reason"], d["device"]) for d in dead) == {("too_many_metrics", "inventor"): refused}
    assert all(f"devices.max_metric_names = {cap}" in d["detail"] for d in dead)
    fields = influx_query(influxdb_v1.url, influx_db, "SHOW FIELD KEYS FROM reading")
    bound = reading_field_bound(cfg)
    assert bound == 3 + 4 * cap
    assert len(fields) <= bound
    assert len(fields) == 3 + cap + 1  # boot, seq, q, the inventor's first names, temp_c


async def test_an_old_boot_resent_after_eight_newer_boots_is_not_counted_again(
    broker: Proc, influxdb_v1: Proc, influx_db: str, tmp_path: Path
) -> None:
    prefix = f"i{uuid.uuid4().hex[:6]}"
    window = {"name": "m1", "kind": "tumbling", "size": "60s", "metrics": ["temp_c"], "aggregates": ["count", "mean"],
              "allowed_lateness": "3h"}  # fmt: skip
    cfg = _config(broker, influxdb_v1.url, influx_db, prefix, tmp_path, windows=[window])
    t0 = _minute(int(time.time() * 1000)) - 3_600_000
    first = [(1, s, t0 + 1_000 + s * 5_000, {"temp_c": 10.0 + 2 * s}) for s in range(10)]
    messages = [_batch(prefix, "a", "dev-1", first[:5]), _batch(prefix, "a", "dev-1", first[5:])]
    # eight newer boots (the board reset eight times), each with one reading in a later window
    messages += [_batch(prefix, "a", "dev-1", [(b, 0, t0 + 60_000 * b, {"temp_c": 1.0})]) for b in range(2, 10)]
    resent = [_batch(prefix, "a", "dev-1", [r]) for r in first[:3]]
    async with running_gateway(cfg) as gw:
        await _send(gw, broker, messages, prefix)
        await _send(gw, broker, resent, prefix)
    s = gw.pipeline.stats
    assert s.readings_accepted == 18
    assert dict(s.dead_by_reason) == {"stale_boot": 3}

    rows = influx_query(influxdb_v1.url, influx_db, f'SELECT * FROM "window" WHERE time = {t0 * 1_000_000}', epoch="ms")
    assert len(rows) == 1
    values = [m["temp_c"] for _, _, _, m in first]
    assert (rows[0]["count"], rows[0]["mean"]) == (len(values), statistics.fmean(values))  # 10 and 19.0
    dead = influx_query(influxdb_v1.url, influx_db, "SELECT * FROM dead_letter")
    assert sorted(json.loads(d["payload"])["s"] for d in dead) == [0, 1, 2]
    assert all(d["reason"] == "stale_boot" for d in dead)
    readings = influx_query(influxdb_v1.url, influx_db, "SELECT count(seq) FROM reading")
    assert readings[0]["count"] == 18
