"""The gateway's command line: help and exit codes, plan, and run --record -> top (in tmux) -> replay."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import influx_query, poll, start_or_fail

from gateway.cli import main
from gateway.record import Recorder

REPO = Path(__file__).resolve().parents[2]

WINDOW = """
[[windows]]
name = "t1m"
kind = "tumbling"
size = "1m"
metrics = ["temp_c", "rh"]
aggregates = ["count", "mean"]
allowed_lateness = "5m"
"""


def config(tmp_path: Path, influx_url: str = "http://127.0.0.1:9", db: str = "x", broker: str = "") -> Path:
    path = tmp_path / f"gw-{uuid.uuid4().hex[:6]}.toml"
    mqtt = f'[mqtt]\nurl = "{broker}"\nclient_id = "gw-{uuid.uuid4().hex[:6]}"\n' if broker else ""
    path.write_text(
        f'{mqtt}[influx]\ntarget = "v1"\nurl = "{influx_url}"\ndatabase = "{db}"\nflush_interval_ms = 100\n'
        f'[log]\nformat = "text"\n{WINDOW}',
        encoding="utf-8",
    )
    return path


def test_help_and_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: Any) -> None:
    monkeypatch.delenv("EDGEKIT_STATS_FILE", raising=False)
    assert main(["--help"]) == 0
    assert "Exit codes: 0 done, 1 failed, 2 usage" in capsys.readouterr().out
    for cmd in ("run", "check", "plan", "replay", "top"):
        assert main([cmd, "--help"]) == 0
        out = capsys.readouterr().out
        assert ("--config" in out) == (cmd != "top"), cmd
    assert main(["frobnicate"]) == 2
    assert main(["check", "--config", str(config(tmp_path))]) == 0
    assert "devices:   any, state for at most 10000\n" in capsys.readouterr().out
    assert main(["check", "--config", str(tmp_path / "missing.toml")]) == 2
    assert "configuration error" in capsys.readouterr().err
    assert main(["top"]) == 2
    assert "--stats-file" in capsys.readouterr().err
    assert main(["top", "--once", "--stats-file", str(tmp_path / "none.json")]) == 1
    assert main(["replay", str(tmp_path / "none.jsonl")]) == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"topic": "a", "payload": "AAAA", "received_ms": 1}\n{"topic": "a"}\n', encoding="utf-8")
    assert main(["replay", "--dry-run", str(bad), "--config", str(config(tmp_path))]) == 1
    assert f"{bad}:2" in capsys.readouterr().err
    assert main(["plan", "--devices", "0", "--config", str(config(tmp_path))]) == 2
    assert main(["plan", "--metrics", "Temp", "--config", str(config(tmp_path))]) == 2


def test_plan_measures_points_per_hour_and_state(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = str(config(tmp_path))
    assert main(["plan", "--config", cfg, "--devices", "20", "--interval", "30s", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    per_hour = doc["points_per_hour"]
    assert per_hour["reading"] == 20 * 120
    assert per_hour["window"] == 20 * 2 * 60  # a one-minute window per device and metric
    assert per_hour["device_watermark"] == 20 * 60 and per_hour["gateway_health"] == 360
    assert "late_reading" not in per_hour and "dead_letter" not in per_hour  # an on-time fleet
    assert doc["engine_state_bytes"] > 20 * 100 and doc["dedup_state_bytes"] > 0
    assert main(["plan", "--config", cfg, "--devices", "40", "--interval", "30s", "--json"]) == 0
    bigger = json.loads(capsys.readouterr().out)
    assert bigger["points_per_hour"]["window"] == 2 * per_hour["window"]
    assert bigger["engine_state_bytes"] > 1.5 * doc["engine_state_bytes"]
    assert main(["plan", "--config", cfg, "--devices", "3"]) == 0
    text = capsys.readouterr().out
    assert "window:    t1m: tumbling 60 s per device" in text and "points per hour:" in text
    assert "devices:" not in text and doc["devices_note"] is None  # the default cap admits them all


def test_plan_sizes_the_fleet_as_given_and_says_what_devices_would_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = config(tmp_path)
    path.write_text(path.read_text(encoding="utf-8") + "[devices]\nmax_devices = 5\n", encoding="utf-8")
    assert main(["plan", "--config", str(path), "--devices", "8", "--interval", "30s", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert "dead_letter" not in doc["points_per_hour"]  # every board of the fleet was planned for
    assert doc["points_per_hour"]["window"] == 8 * 2 * 60
    assert "3 boards beyond it would be dead letters (too_many_devices)" in doc["devices_note"]
    assert main(["plan", "--config", str(path), "--devices", "5"]) == 0
    assert "devices:" not in capsys.readouterr().out
    assert main(["plan", "--config", str(path), "--devices", "6"]) == 0
    assert "devices:   devices.max_devices = 5: 1 board beyond it" in capsys.readouterr().out


def test_replay_of_a_recording_dry_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rec = Recorder(tmp_path / "rec.jsonl")
    t = 1_764_072_000_000
    for s in range(5):
        body = b'{"v":1,"dev":"d1","r":[{"b":1,"s":%d,"t":%d,"q":"s","m":{"temp_c":1.5}}]}' % (s, t + s * 30_000)
        rec.write("edgekit/gh/d1/readings", body, t + s * 30_000 + 100)
    rec.write("edgekit/gh/d1/readings", b"\xff not json", t + 200_000)
    rec.close()
    assert main(["replay", "--dry-run", "-q", str(tmp_path / "rec.jsonl"), "--config", str(config(tmp_path))]) == 0
    out = capsys.readouterr().out
    assert "replayed 6 messages" in out and "5 readings accepted" in out and "1 dead letters" in out
    assert (
        "1 window results" in out
    )  # [0, 60 s); the watermark (115 s) has not closed [60, 120 s) and "dry run: nothing written" in out


def _counts(url: str, db: str) -> dict[str, int]:
    out = {}
    for m, f in (("reading", "seq"), ("window", "count"), ("dead_letter", "size"), ("late_reading", "late_by_ms")):
        rows = influx_query(url, db, f'SELECT count("{f}") FROM "{m}"')
        out[m] = rows[0]["count"] if rows else 0
    return out


def _tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, check=True).stdout


@pytest.fixture
def own_mosquitto(tmp_path: Path) -> Iterator[Any]:
    """A broker of the test's own: the session's broker holds other tests' retained statuses, whose devices
    the gateway (and so top) would list beside the test's."""
    import services

    (tmp_path / "broker").mkdir()
    proc = start_or_fail(lambda: services.start_mosquitto(tmp_path / "broker", services.free_port()))
    yield proc
    proc.stop()


@pytest.mark.integration
def test_run_record_top_in_tmux_then_replay(tmp_path: Path, own_mosquitto: Any, influxdb_v1: Any) -> None:
    import services

    mosquitto = own_mosquitto
    db1, db2 = f"cli_{uuid.uuid4().hex[:8]}", f"cli_{uuid.uuid4().hex[:8]}"
    broker = f"mqtt://{mosquitto.host}:{mosquitto.port}"
    cfg = config(tmp_path, influxdb_v1.url, db1, broker)
    stats, rec = tmp_path / "stats.json", tmp_path / "rec.jsonl"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    gw = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway",
            "run",
            "--config",
            str(cfg),
            "--stats-file",
            str(stats),
            "--record",
            str(rec),
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    session = f"edgekit-top-{uuid.uuid4().hex[:6]}"
    try:
        assert poll(lambda: json.loads(stats.read_text()) if stats.exists() else {}, timeout=20).get("mqtt", {})
        poll(lambda: json.loads(stats.read_text())["mqtt"]["connected"], timeout=20)
        sim = subprocess.run(
            [sys.executable, "-m", "sim", "run", "--devices", "6", "--readings", "30", "--interval-ms", "20000",
             "--duplicates", "0.2", "--malformed", "3", "--broker", broker, "--site", "gh"],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert sim.returncode == 0, sim.stderr
        live = poll(
            lambda: json.loads(stats.read_text()),
            until=lambda s: s["pipeline"]["readings_accepted"] >= 180 and s["sink"]["pending"] == 0,
            timeout=30,
        )
        assert live["pipeline"]["readings_accepted"] == 180
        devices = live["live"]["devices"]
        assert len(devices) == 6 and all(d["readings"] == 30 and d["watermark_ms"] for d in devices.values())
        assert live["live"]["windows"], "latest windows in the stats file"

        # top, in a real terminal (tmux), over the running gateway's stats file
        cmd = f"cd {REPO} && {sys.executable} -m gateway top --stats-file {stats}; echo top-exited-$?; sleep 30"
        _tmux("new-session", "-d", "-s", session, "-x", "130", "-y", "45", cmd)
        screen = poll(lambda: _tmux("capture-pane", "-p", "-t", session), until=lambda s: "run-0005" in s, timeout=15)
        assert "WM LAG" in screen and "LATEST WINDOWS" in screen and "t1m" in screen, screen
        assert "mqtt connected" in screen and "devices: 6 (6 active)" in screen, screen
        assert all(f"run-000{i}" in screen for i in range(1, 7)), screen  # 45 lines: room for every device
        _tmux("send-keys", "-t", session, "q")
        screen = poll(lambda: _tmux("capture-pane", "-p", "-t", session), until=lambda s: "top-exited" in s)
        assert "top-exited-0" in screen, screen
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
        gw.send_signal(signal.SIGTERM)
        _, err = gw.communicate(timeout=40)
    assert gw.returncode == 0, err[-2000:]
    assert len(rec.read_text().splitlines()) == live["pipeline"]["messages"]

    # the recording through replay into a second database gives the same points
    cfg2 = config(tmp_path, influxdb_v1.url, db2)
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "replay", str(rec), "--config", str(cfg2)],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    first = _counts(influxdb_v1.url, db1)
    assert first["reading"] == 180 and first["window"] > 0 and first["dead_letter"] == 3
    time.sleep(0.2)
    assert _counts(influxdb_v1.url, db2) == first
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "replay", "-q", str(rec), "--config", str(cfg2)],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0 and _counts(influxdb_v1.url, db2) == first  # replaying again overwrites
    for db in (db1, db2):
        services.http_request(f"{influxdb_v1.url}/query", method="POST", data=f"q=DROP DATABASE {db}".encode())
