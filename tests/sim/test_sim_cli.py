"""``edgekit-sim`` / ``python -m sim``: flags, exit codes, the truth file and the one-line summary."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.publish as paho_publish
import pytest

from sim.cli import main

NOW = 1_764_072_000_000
ROOT = Path(__file__).resolve().parent.parent.parent


def run(argv: list[str], env: dict[str, str] | None = None) -> int:
    return main(argv, env=env or {}, now_ms=lambda: NOW)


def test_dry_run_writes_the_truth_and_a_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    truth = tmp_path / "truth.json"
    argv = ["run", "--devices", "5", "--readings", "12", "--batch", "5", "--duplicates", "0.5", "--malformed",
            "9", "--nan", "2", "--too-old", "1", "--site", "north,south", "--metrics", "temp_c,vib", "--seed", "3",
            "--dry-run", "--truth", str(truth)]  # fmt: skip
    assert run(argv) == 0
    out = capsys.readouterr().out.strip()
    assert "\n" not in out
    assert out.startswith("dry run:") and "57 readings from 5 devices" in out and "9 malformed" in out
    doc = json.loads(truth.read_text(encoding="utf-8"))
    assert doc["published"] is None
    assert doc["counts"]["readings"] == len(doc["readings"]) == 5 * 12 - 3
    assert len(doc["rejected"]) == 3 and len(doc["malformed"]) == 9
    assert doc["start_ms"] == NOW - 12 * 60_000
    assert doc["format"] == "edgekit-sim-truth/2"  # the scenarios' format: verify and report read it
    assert {r[0] for r in doc["readings"]} == {"north", "south"}
    assert set(doc["readings"][0][7]) == {"temp_c", "vib"}
    assert {r[1] for r in doc["readings"]} == {"run-0001", "run-0002", "run-0003", "run-0004", "run-0005"}
    assert doc["spec"]["seed"] == 3 and doc["broker"] == "mqtt://127.0.0.1:1883"
    assert not list(tmp_path.glob("*.tmp"))


def test_the_same_seed_gives_the_same_truth(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    base = ["run", "--devices", "3", "--readings", "7", "--dry-run", "--truth"]
    assert run([*base, str(a), "--seed", "1"]) == 0
    assert run([*base, str(b), "--seed", "1"]) == 0
    assert run([*base, str(c), "--seed", "2"]) == 0
    assert a.read_text() == b.read_text() != c.read_text()


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["run", "--devices", "many"], "invalid int value"),
        (["run", "--no-such-flag"], "unrecognized arguments"),
        ([], "required"),
        (["run", "--batch", "65"], "batch_size must be 1..64"),
        (["run", "--devices", "0"], "devices must be at least 1"),
        (["run", "--metrics", "temp_c,co2"], "unknown metric 'co2'"),
        (["run", "--duplicates", "2"], "duplicate_rate"),
        (["run", "--site", "bad site"], "'bad site'"),
        (["run", "--broker", "http://127.0.0.1:1883"], "mqtt://"),
        (["run", "--rate", "-5"], "--rate"),
        (["run", "--max-in-flight", "0"], "--max-in-flight"),
        (["run", "--timeout", "0"], "--timeout"),
    ],
)
def test_usage_errors_exit_2_with_a_message(argv: list[str], words: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(argv) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err
    assert "edgekit-sim" in err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["run", "--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--devices", "--readings", "--batch", "--duplicates", "--malformed", "--broker", "--rate", "--truth"):
        assert flag in out


def test_an_unreachable_broker_exits_1_without_writing_the_truth(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], refused_port: int
) -> None:
    port = refused_port
    truth = tmp_path / "truth.json"
    code = run(["run", "--devices", "1", "--readings", "2", "--broker", f"mqtt://127.0.0.1:{port}",
                "--timeout", "5", "--truth", str(truth)])  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err
    assert f"publishing failed: broker mqtt://127.0.0.1:{port}" in err and "Traceback" not in err
    assert not truth.exists()


def test_an_unwritable_truth_file_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = run(["run", "--devices", "1", "--readings", "2", "--dry-run", "--truth", str(tmp_path / "no" / "t.json")])
    assert code == 1
    assert "cannot write the truth file" in capsys.readouterr().err


def test_python_dash_m_sim_runs_as_a_process(tmp_path: Path, refused_port: int) -> None:
    truth = tmp_path / "t.json"
    ok = subprocess.run(
        [sys.executable, "-m", "sim", "run", "--devices", "2", "--readings", "3", "--dry-run", "--truth", str(truth)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "6 readings from 2 devices" in ok.stdout and truth.exists()
    bad = subprocess.run(
        [sys.executable, "-m", "sim", "run", "--broker", f"mqtt://127.0.0.1:{refused_port}", "--timeout", "5"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 1
    assert "publishing failed" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.integration
def test_run_publishes_to_a_real_broker(
    mosquitto: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    prefix = f"simcli{uuid.uuid4().hex[:8]}"
    truth = tmp_path / "truth.json"
    argv = ["run", "--devices", "20", "--readings", "50", "--batch", "10", "--duplicates", "0.1", "--malformed",
            "12", "--broker", f"mqtt://sim@{mosquitto.host}:{mosquitto.port}", "--rate", "0", "--seed", "1",
            "--prefix", prefix, "--truth", str(truth)]  # fmt: skip
    assert run(argv, env={"EDGEKIT_MQTT_PASSWORD": "anything"}) == 0
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    out = capsys.readouterr().out
    assert out.startswith("published ") and f"to mqtt://sim@{mosquitto.host}:{mosquitto.port}" in out
    doc = json.loads(truth.read_text(encoding="utf-8"))
    published, counts = doc["published"], doc["counts"]
    assert published["messages"] == counts["messages"] == 20 + 100 + counts["duplicates"] + 12
    assert published["readings"] == counts["readings"] == len(doc["readings"]) == 1000
    assert published["malformed"] == 12 and published["duplicates"] == counts["duplicates"] > 0
    # leave no retained statuses behind on the shared broker
    paho_publish.multiple(
        [(f"{prefix}/site-a/dev-{i:04d}/status", b"", 1, True) for i in range(1, 21)],
        hostname=mosquitto.host,
        port=mosquitto.port,
    )


@pytest.mark.integration
def test_the_password_comes_from_the_environment(private_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import services  # scripts/services.py, put on sys.path by tests/conftest.py

    passwd = private_dir / "passwd.src"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwd), "sim", "s3cret"], check=True)
    proc = services.start_mosquitto(private_dir, services.free_port(), password_file=passwd)
    try:
        argv = ["run", "--devices", "2", "--readings", "3", "--broker", f"mqtt://sim@{proc.host}:{proc.port}",
                "--timeout", "5"]  # fmt: skip
        assert run(argv, env={"EDGEKIT_MQTT_PASSWORD": "s3cret"}) == 0
        assert capsys.readouterr().out.startswith("published 4 messages")
        assert run(argv, env={"EDGEKIT_MQTT_PASSWORD": "wrong"}) == 1
        err = capsys.readouterr().err
        assert "publishing failed" in err and "authori" in err.lower() and "s3cret" not in err
        assert run(argv) == 1  # no password at all
        assert run([*argv[:-4], "--broker", f"mqtt://sim:s3cret@{proc.host}:{proc.port}"]) == 0
    finally:
        proc.stop()
