"""Groups end to end: the pump-group scenario through a real Mosquitto into the gateway and a real InfluxDB 1.6.
Exactly its two group alerts land (one per pump, each on the readings of two boards, one of them a sleepy board),
and every group-relative value in InfluxDB equals the definition computed from the boards' readings."""

from __future__ import annotations

import statistics
import uuid
from typing import Any

import pytest
from helpers import influx_query, scenario_through_gateway
from services import Proc

from sim.commands import prepare
from sim.scenario import load_scenario

pytestmark = pytest.mark.integration

SIZE = 600_000


async def test_pump_faults_and_relative_values_through_broker_gateway_and_influxdb(
    mosquitto: Proc, influxdb_v1: Proc, influx_db: str
) -> None:
    tag = uuid.uuid4().hex[:8]
    base = load_scenario("pump-group")
    prep = prepare(base.scaled(prefix=f"g{tag}", sites=(f"plant-{tag}",)))
    await scenario_through_gateway(prep, mosquitto, influxdb_v1.url, influx_db, tag)

    alerts = influx_query(influxdb_v1.url, influx_db, 'SELECT * FROM "alert" WHERE "source" = \'pattern\'')
    assert sorted((a["name"], a["key"], a["severity"]) for a in alerts) == [
        ("pump_fault", "pump_1", "critical"),
        ("pump_fault", "pump_2", "critical"),
    ]
    by_key = {a["key"]: sorted(x.split("/")[0] for x in a["reading_ids"].split(",")) for a in alerts}
    assert by_key == {"pump_1": ["dev-0001", "dev-0003"], "pump_2": ["dev-0002", "dev-0004"]}

    # the definition, from what the boards sent: each board's 10-minute mean against its pump's other board
    groups = {"pump_1": ("dev-0001", "dev-0003"), "pump_2": ("dev-0002", "dev-0004")}
    means: dict[tuple[str, int], list[float]] = {}
    for r in prep.run.readings:
        if r.reason is None and "temp_c" in r.metrics:
            means.setdefault((r.device, r.t_ms - r.t_ms % SIZE), []).append(float(r.metrics["temp_c"]))
    want: dict[tuple[str, str, int], tuple[float, float]] = {}
    for g, members in groups.items():
        for d in members:
            (other,) = [m for m in members if m != d]
            for (dev, start), vs in means.items():
                if dev == d and (other, start) in means:
                    value, base = statistics.fmean(vs), statistics.fmean(means[(other, start)])
                    want[(g, d, start)] = (value, base)
    rows = influx_query(influxdb_v1.url, influx_db, 'SELECT * FROM "window_relative"', epoch="ms")
    got: dict[tuple[str, str, int], dict[str, Any]] = {(r["group"], r["device"], r["time"]): r for r in rows}
    assert len(got) == len(rows) > 0
    for k, r in got.items():
        value, base = want[k]
        assert r["value"] == pytest.approx(value, rel=1e-9) and r["baseline"] == pytest.approx(base, rel=1e-9)
        assert r["deviation"] == pytest.approx(value - base, rel=1e-9, abs=1e-9) and r["others"] == 1
    # every window that ended 10 minutes before the run did is in: the sleepy boards' flushes closed it
    end = max(r.t_ms for r in prep.run.readings)
    assert {k for k in want if k[2] + SIZE <= end - SIZE} <= set(got)
