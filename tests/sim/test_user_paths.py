"""The simulator as a newcomer uses it (issue 21): ``edgekit-sim`` commands as typed in a shell, their output
and exit codes checked.

- ``simulate --gateway-config`` applies the whole configuration (patterns, anomaly detection), and a verdict
  fails when an alert the scenario expects is missing;
- ``run --truth`` writes a truth file that ``verify`` and ``report`` read;
- ``run`` and ``simulate`` name their boards apart, and ``verify`` says when another run's readings of the same
  devices were in the database first.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from helpers import running_gateway, wait_for
from services import Proc

from gateway.config import Config
from sim.inprocess import gateway_config
from sim.scenario import load_scenario

ROOT = Path(__file__).resolve().parent.parent.parent
EXAMPLE = ROOT / "gateway" / "examples" / "gateway.toml"
START = "1764072000000"  # a fixed event time, so each run is the same


def sim(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``edgekit-sim ARGS`` as a user runs it (the console script of the checkout's venv, else ``python -m sim``)."""
    exe = Path(sys.executable).with_name("edgekit-sim")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "sim"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEKIT_")}
    return subprocess.run([*cmd, *args], cwd=cwd, capture_output=True, text=True, timeout=120, env=env)


def table_row(out: str, output: str) -> list[int]:
    """The numbers of one output's row in the verdict table."""
    for line in out.splitlines():
        words = line.split()
        if words and words[0] == output and all(w.isdigit() for w in words[1:]) and len(words) > 2:
            return [int(w) for w in words[1:]]
    raise AssertionError(f"no {output!r} row in:\n{out}")


# --- defect 5: the whole gateway configuration, and alerts in the verdict --------------------------------------


def test_simulate_with_the_example_configuration_raises_the_pattern_alerts(tmp_path: Path) -> None:
    p = sim("simulate", "pattern-sequences", "--in-process", "--start-ms", START, "--gateway-config", str(EXAMPLE),
            "--truth", "t.json", "--report", "r.html", cwd=tmp_path)  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
    # three sequences should raise an alert (two doors left open, three FAILED), two near misses none
    expected, found, missing, extra = table_row(p.stdout, "alert")[:4]
    assert (expected, found, missing, extra) == (3, 3, 0, 0), p.stdout
    assert "verdict: OK" in p.stdout
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "3 alerts raised by the gateway" in page


def test_a_verdict_fails_when_the_configuration_cannot_raise_the_expected_alerts(tmp_path: Path) -> None:
    # a configuration without [anomaly] and without the scenario's patterns: nothing can raise their alerts
    cfg = tmp_path / "windows-only.toml"
    cfg.write_text(
        '[metric_types]\nstring = ["door", "status"]\n\n'
        '[[windows]]\nname = "t5"\nkind = "tumbling"\nsize = "5m"\nmetrics = ["temp_c"]\n'
    )
    p = sim("simulate", "sensor-faults", "--in-process", "--start-ms", START, "--gateway-config", str(cfg),
            cwd=tmp_path)  # fmt: skip
    assert p.returncode == 1, p.stdout + p.stderr
    expected, found, missing = table_row(p.stdout, "alert")[:3]
    assert expected > 0 and found == 0 and missing == expected, p.stdout
    assert "MISMATCH" in p.stdout
    assert "no [anomaly] section" in p.stdout  # the likely cause, named
    q = sim("simulate", "pattern-sequences", "--in-process", "--start-ms", START, "--gateway-config", str(cfg),
            cwd=tmp_path)  # fmt: skip
    assert q.returncode == 1, q.stdout + q.stderr
    assert "no pattern named 'door_left_open'" in q.stdout


def test_the_fault_scenarios_carry_their_detection_and_pass_as_shipped(tmp_path: Path) -> None:
    for name in ("sensor-faults", "pattern-sequences"):
        p = sim("simulate", name, "--in-process", "--start-ms", START, cwd=tmp_path)
        assert p.returncode == 0, p.stdout + p.stderr
        expected, found, missing, extra = table_row(p.stdout, "alert")[:4]
        assert expected > 0 and found >= expected and missing == extra == 0, p.stdout


# --- defect 6: one truth format --------------------------------------------------------------------------------


def test_the_truth_of_run_is_read_by_report(tmp_path: Path) -> None:
    p = sim("run", "--devices", "3", "--readings", "12", "--malformed", "4", "--nan", "1", "--dry-run", "--truth",
            "t.json", cwd=tmp_path)  # fmt: skip
    assert p.returncode == 0, p.stderr
    r = sim("report", "--truth", "t.json", "--out", "r.html", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "edgekit-sim run" in page
    assert '<td class="l">readings</td><td class="">35</td>' in page  # 3 x 12 less the NaN one


# --- defects 6 and 7 through the real broker, gateway and InfluxDB ---------------------------------------------


def _gateway_cfg(mosquitto: Proc, influx: Proc, db: str, tag: str) -> Config:
    return gateway_config(
        load_scenario("steady").gateway,  # the windows the scenario's truth expects
        "edgekit",
        {"mqtt": {"url": f"mqtt://{mosquitto.host}:{mosquitto.port}", "client_id": f"gw-{tag}", "clean_session": True},
         "influx": {"target": "v1", "url": influx.url, "database": db, "batch_size": 500}},
    )  # fmt: skip


async def _until_taken(gw: Any, messages: int) -> None:
    await wait_for(lambda: gw.pipeline.stats.messages + gw.pipeline.stats.ignored >= messages, "every message", 60)
    await wait_for(lambda: gw.sink.pending == 0, "the sink to write everything", 60)


@pytest.mark.integration
async def test_run_then_simulate_into_one_database_both_verify(
    mosquitto: Proc, influxdb_v1: Proc, influx_db: str, tmp_path: Path
) -> None:
    broker = f"mqtt://{mosquitto.host}:{mosquitto.port}"
    influx = ["--influx-url", influxdb_v1.url, "--database", influx_db]
    async with running_gateway(_gateway_cfg(mosquitto, influxdb_v1, influx_db, uuid.uuid4().hex[:8])) as gw:
        p = await asyncio.to_thread(sim, "run", "--devices", "4", "--readings", "20", "--malformed", "3", "--nan",
                                    "1", "--broker", broker, "--truth", "run.json", cwd=tmp_path)  # fmt: skip
        assert p.returncode == 0, p.stderr
        await _until_taken(gw, json.loads((tmp_path / "run.json").read_text())["counts"]["messages"])
        v = await asyncio.to_thread(sim, "verify", "--truth", "run.json", *influx, cwd=tmp_path)
        assert v.returncode == 0, v.stdout + v.stderr  # defect 6: verify reads what run wrote
        assert table_row(v.stdout, "reading")[:4] == [80 - 1, 80 - 1, 0, 0], v.stdout
        s = await asyncio.to_thread(sim, "simulate", "steady", "--duration", "20m", "--devices", "4", "--broker",
                                    broker, "--truth", "steady.json", cwd=tmp_path)  # fmt: skip
        assert s.returncode == 0, s.stderr
        sent = len(json.loads((tmp_path / "steady.json").read_text())["deliveries"])
        await _until_taken(gw, sent + json.loads((tmp_path / "run.json").read_text())["counts"]["messages"])
    # defect 7: the two runs' boards are apart, so the second verifies too
    v2 = await asyncio.to_thread(sim, "verify", "--truth", "steady.json", *influx, cwd=tmp_path)
    assert v2.returncode == 0, v2.stdout + v2.stderr
    assert "verdict: OK" in v2.stdout


@pytest.mark.integration
async def test_verify_names_watermarks_already_past_as_the_likely_cause(
    mosquitto: Proc, influxdb_v1: Proc, influx_db: str, tmp_path: Path
) -> None:
    broker = f"mqtt://{mosquitto.host}:{mosquitto.port}"
    influx = ["--influx-url", influxdb_v1.url, "--database", influx_db]
    later, earlier = "1764072000000", str(1764072000000 - 3 * 3_600_000)
    async with running_gateway(_gateway_cfg(mosquitto, influxdb_v1, influx_db, uuid.uuid4().hex[:8])) as gw:
        taken = 0
        for start, truth in ((later, "a.json"), (earlier, "b.json")):
            argv = ["simulate", "steady", "--duration", "20m", "--devices", "3", "--start-ms", start, "--broker",
                    broker, "--truth", truth]  # fmt: skip
            s = await asyncio.to_thread(sim, *argv, cwd=tmp_path)
            assert s.returncode == 0, s.stderr
            taken += len(json.loads((tmp_path / truth).read_text())["deliveries"])
            await _until_taken(gw, taken)
    v = await asyncio.to_thread(sim, "verify", "--truth", "b.json", *influx, cwd=tmp_path)
    assert v.returncode == 1, v.stdout + v.stderr
    assert "MISMATCH" in v.stdout
    hint = v.stdout[v.stdout.index("MISMATCH") :]
    assert "already past" in hint and "dev-0001" in hint and "another run" in hint, v.stdout


# --- defect 12: the report page ----------------------------------------------------------------------------


def figures(page: str) -> dict[str, str]:
    """Each figure of a report page by its ``data-plot`` key: its HTML up to ``</figure>``."""
    out: dict[str, str] = {}
    for part in page.split("<figure data-plot='")[1:]:
        key, _, rest = part.partition("'")
        out[key] = rest[: rest.index("</figure>")]
    return out


def labels(figure: str) -> list[str]:
    """The texts of a figure's chart at font size 11: tick labels and legend entries ("label (count)")."""
    return [t.split("<")[0] for t in figure.split('font-size="11">')[1:]]


def test_the_report_says_which_devices_it_draws_and_keeps_metrics_and_window_kinds_apart(tmp_path: Path) -> None:
    p = sim("simulate", "flaky-network", "--in-process", "--start-ms", START, "--report", "f.html", cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    page = (tmp_path / "f.html").read_text(encoding="utf-8")
    figs = figures(page)
    # all ten boards are drawn (the plots used to keep eight, silently)
    shown = {e.split(" (")[0] for e in labels(figs["arrival"]) if e.startswith("dev-")}
    assert shown == {f"dev-{i:04d}" for i in range(1, 11)}, shown
    # the tumbling and the session window are told apart, each named with its kind
    kinds = labels(figs["windows"])
    assert any("temp_5m" in x and "tumbling" in x for x in kinds), kinds
    assert any("rh_session" in x and "session" in x for x in kinds), kinds

    many = sim("simulate", "flaky-network", "--in-process", "--start-ms", START, "--devices", "12", "--duration",
               "35m", "--report", "m.html", cwd=tmp_path)  # fmt: skip
    assert many.returncode == 0, many.stdout + many.stderr
    assert "10 of 12 devices are drawn" in (tmp_path / "m.html").read_text(encoding="utf-8")

    s = sim("simulate", "sensor-faults", "--in-process", "--start-ms", START, "--report", "s.html", cwd=tmp_path)
    assert s.returncode == 0, s.stdout + s.stderr
    figs = figures((tmp_path / "s.html").read_text(encoding="utf-8"))
    # temp_c (15-25) and rh (35-60) each on their own axis
    assert {"anomalies-temp_c", "anomalies-rh"} <= set(figs), sorted(figs)
    assert "anomalies" not in figs


def test_an_empty_section_says_none_instead_of_a_blank_box(tmp_path: Path) -> None:
    p = sim("simulate", "steady", "--in-process", "--start-ms", START, "--report", "r.html", cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "no data" not in page
    for key, fig in figures(page).items():
        assert int(fig.split("data-marks='")[1].split("'")[0]) > 0, key
    late = page[page.index("id='late'") :]
    assert "None:" in late[: late.index("<h2")], late[:400]


def test_verify_names_a_site_binding_as_the_likely_cause() -> None:
    """Readings refused as site_mismatch (another run bound the ids to its site first) are named under the
    verdict; the cause is read from the rows found, as verify reads them from InfluxDB."""
    from sim.commands import prepare
    from sim.verify import Found, compare

    truth = prepare(load_scenario("steady").scaled(devices=2, duration_ms=600_000, start_ms=int(START))).truth()
    found = Found()
    for r in truth["readings"]:
        found.rows["dead_letter"].append({"reason": "site_mismatch", "site": r[0], "device": r[1], "time": r[9]})
    verdict = compare(truth, found)
    assert not verdict.ok
    text = verdict.render()
    assert "likely cause:" in text and "site_mismatch" in text and "dev-0001" in text, text
