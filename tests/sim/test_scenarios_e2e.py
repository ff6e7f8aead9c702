"""Every shipped scenario end to end: replayed through a real Mosquitto into the gateway and a real
InfluxDB 1.6, then ``edgekit-sim verify`` against the ground truth: no missing, no extra, no differing
point in any output, and late routing exactly as the reference expects."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from helpers import scenario_through_gateway
from services import Proc

from sim.cli import main
from sim.commands import prepare
from sim.scenario import load_scenario, scenario_names

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("name", scenario_names())
async def test_scenario_through_broker_gateway_and_influxdb(
    name: str, mosquitto: Proc, influxdb_v1: Proc, influx_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tag = uuid.uuid4().hex[:8]
    base = load_scenario(name)
    sites = tuple(f"{s[:20]}-{tag}" for s in base.sites)
    prep = prepare(base.scaled(prefix=f"s{tag}", sites=sites))
    truth_file = tmp_path / "truth.json"
    truth_file.write_text(json.dumps(prep.truth()))

    gw = await scenario_through_gateway(prep, mosquitto, influxdb_v1.url, influx_db, tag)
    assert gw.pipeline.stats.readings_accepted == len(prep.expected.readings)
    assert gw.pipeline.stats.duplicates == prep.expected.duplicates

    capsys.readouterr()
    code = main(["verify", "--truth", str(truth_file), "--influx-url", influxdb_v1.url, "--database", influx_db,
                 "--json", str(tmp_path / "verdict.json")])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    verdict = json.loads((tmp_path / "verdict.json").read_text())
    tables = {t["output"]: t for t in verdict["tables"]}
    for t in tables.values():
        assert (t["missing"], t["extra"], t["differ"]) == (0, 0, 0), out
    assert tables["reading"]["found"] == len(prep.expected.readings) > 0
    assert tables["window"]["found"] == len(prep.expected.windows) > 0
    assert tables["late_reading"]["found"] == len(prep.expected.late)
    assert tables["dead_letter"]["found"] == sum(prep.expected.dead_letters.values())
    if name == "correlated":  # the interval join (docs/correlation.md): exactly its joined records, and their alerts
        joins = prep.truth()["expected"]["joins"]
        assert tables["join"]["found"] == tables["join"]["expected"] == len(joins) == 2
        assert tables["alert"]["found"] == 2 and gw.pipeline.stats.joined == 2
