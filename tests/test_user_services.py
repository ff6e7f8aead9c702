"""A newcomer's gateway against real services, as typed (issue 21): `check --probe`, a wrong database name, an
unreachable broker, the stop line and the exit codes.

Mosquitto 2.0, InfluxDB 1.6 and VictoriaMetrics are the test suite's own (tests/conftest.py); what each answers
is theirs: InfluxDB 1.6 answers an empty write to a missing database with 404 ``database not found``, and
VictoriaMetrics takes a write to any bucket.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import services
from helpers import influx_query, poll
from user_path import gateway

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / f"gw-{uuid.uuid4().hex[:6]}.toml"
    path.write_text(text, encoding="utf-8")
    return path


def databases(url: str) -> list[str]:
    return sorted(r["name"] for r in influx_query(url, "", "SHOW DATABASES"))


# --- defect 10: check --probe -------------------------------------------------------------------------


def test_check_probe_says_the_broker_and_the_database_are_usable(
    tmp_path: Path, mosquitto: Any, influxdb_v1: Any, influx_db: str
) -> None:
    cfg = write(
        tmp_path,
        f'[mqtt]\nurl = "mqtt://127.0.0.1:{mosquitto.port}"\n'
        f'[influx]\nurl = "{influxdb_v1.url}"\ndatabase = "{influx_db}"\ncreate_database = false\n',
    )
    done = gateway("check", "--probe", "--config", str(cfg))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"broker:    OK: mqtt://127.0.0.1:{mosquitto.port} takes the login anonymously" in done.stdout
    assert f"database:  OK: {influxdb_v1.url} takes writes to database '{influx_db}'" in done.stdout
    assert "broker:    mqtt://" in done.stdout  # the description comes first, as without --probe


def test_check_probe_names_a_missing_database_and_what_exists(tmp_path: Path, mosquitto: Any, influxdb_v1: Any,
                                                              influx_db: str) -> None:  # fmt: skip
    typo = influx_db[:-1]
    cfg = write(
        tmp_path,
        f'[mqtt]\nurl = "mqtt://127.0.0.1:{mosquitto.port}"\n'
        f'[influx]\nurl = "{influxdb_v1.url}"\ndatabase = "{typo}"\ncreate_database = false\n',
    )
    done = gateway("check", "--probe", "--config", str(cfg))
    assert done.returncode == 1
    assert f"database:  FAILED: {influxdb_v1.url} has no database '{typo}' (it has: " in done.stdout
    assert influx_db in done.stdout and "create_database = true" in done.stdout
    assert typo not in databases(influxdb_v1.url)  # the probe wrote nothing, created nothing


def test_check_probe_names_a_missing_retention_policy(tmp_path: Path, mosquitto: Any, influxdb_v1: Any,
                                                      influx_db: str) -> None:  # fmt: skip
    """InfluxDB 1.6 answers a write to a retention policy that does not exist with HTTP 500."""
    cfg = write(
        tmp_path,
        f'[mqtt]\nurl = "mqtt://127.0.0.1:{mosquitto.port}"\n'
        f'[influx]\nurl = "{influxdb_v1.url}"\ndatabase = "{influx_db}"\nretention_policy = "nope"\n',
    )
    done = gateway("check", "--probe", "--config", str(cfg))
    assert done.returncode == 1
    assert f"database:  FAILED: {influxdb_v1.url}: database '{influx_db}' has no retention policy 'nope'" in done.stdout


def test_check_probe_refused_login_and_unreachable_services(tmp_path: Path) -> None:
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), "gw", "right"], check=True, capture_output=True)
    broker = services.start_mosquitto(tmp_path / "broker", services.free_port(), password_file=passwd)
    closed = services.free_port()
    try:
        cfg = write(
            tmp_path,
            f'[mqtt]\nurl = "mqtt://127.0.0.1:{broker.port}"\nusername = "gw"\n'
            f'[influx]\nurl = "http://127.0.0.1:{closed}"\n',
        )
        wrong = gateway("check", "--probe", "--config", str(cfg), env={"EDGEKIT_MQTT_PASSWORD": "wrong"})
        right = gateway("check", "--probe", "--config", str(cfg), env={"EDGEKIT_MQTT_PASSWORD": "right"})
    finally:
        broker.stop()
    assert wrong.returncode == 1
    assert f"broker:    FAILED: mqtt://127.0.0.1:{broker.port} refused the connection as 'gw'" in wrong.stdout
    assert "wrong" not in wrong.stdout.replace("refused", "")  # the password is never shown
    assert f"broker:    OK: mqtt://127.0.0.1:{broker.port} takes the login as 'gw'" in right.stdout
    assert f"database:  FAILED: InfluxDB at http://127.0.0.1:{closed} unreachable" in right.stdout


def test_check_probe_v2_against_victoria_metrics(tmp_path: Path, mosquitto: Any, victoria_metrics: Any) -> None:
    cfg = write(
        tmp_path,
        f'[mqtt]\nurl = "mqtt://127.0.0.1:{mosquitto.port}"\n'
        f'[influx]\ntarget = "v2"\nurl = "{victoria_metrics.url}"\nbucket = "b"\norg = "o"\n',
    )
    done = gateway("check", "--probe", "--config", str(cfg), env={"EDGEKIT_INFLUX_TOKEN": "t0ken-x"})
    assert done.returncode == 0, done.stdout
    assert f"database:  OK: {victoria_metrics.url} takes writes to bucket 'b'" in done.stdout


# --- defect 3: a wrong database name, said at start -------------------------------------------------------


class Run:
    """``edgekit-gateway run --config FILE`` as its own process, its log in a file."""

    def __init__(self, cfg: Path, tmp_path: Path) -> None:
        self.log = tmp_path / f"run-{uuid.uuid4().hex[:6]}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEKIT_")}
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "run", "--config", str(cfg)],
                cwd=tmp_path,
                env={**env, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"},
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def wait_for(self, words: str, limit_s: float = 30) -> None:
        poll(lambda: words in self.text() or self.proc.poll() is not None, timeout=limit_s)
        assert words in self.text(), self.text()

    def stop(self, sig: int = signal.SIGTERM, limit_s: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(limit_s)


def config(tmp_path: Path, mosquitto: Any, influx_url: str, db: str, *extra: str, fmt: str = "text") -> Path:
    return write(
        tmp_path,
        f'[mqtt]\nurl = "mqtt://127.0.0.1:{mosquitto.port}"\nclient_id = "gw-{uuid.uuid4().hex[:6]}"\n'
        f'[influx]\nurl = "{influx_url}"\ndatabase = "{db}"\n{chr(10).join(extra)}\n'
        f'[state]\ndir = "{tmp_path / "state"}"\n[log]\nformat = "{fmt}"\n',
    )


def test_run_with_a_missing_database_stops_at_once_and_says_so(
    tmp_path: Path, mosquitto: Any, influxdb_v1: Any, influx_db: str
) -> None:
    typo = influx_db + "x"
    run = Run(config(tmp_path, mosquitto, influxdb_v1.url, typo, "create_database = false"), tmp_path)
    try:
        code = run.proc.wait(60)
    finally:
        run.stop()
    assert code == 2, run.text()
    assert f"has no database '{typo}' (it has: " in run.text() and influx_db in run.text()
    assert "unreachable" not in run.text()


def test_run_creates_a_missing_database_says_it_did_and_sigint_exits_130_with_a_plain_stop_line(
    tmp_path: Path, mosquitto: Any, influxdb_v1: Any, influx_db: str
) -> None:
    """Defect 3 with create_database (the default) and defect 11's text stop line and SIGINT, in one run."""
    typo = influx_db + "y"
    run = Run(config(tmp_path, mosquitto, influxdb_v1.url, typo), tmp_path)
    try:
        run.wait_for(f"has no database '{typo}'")
        run.wait_for("connected to broker")
    finally:
        code = run.stop(signal.SIGINT)
    assert code == 130, run.text()
    assert "creates it at its first write (influx.create_database = true)" in run.text()
    assert typo in databases(influxdb_v1.url)
    influx_query(influxdb_v1.url, "", f'DROP DATABASE "{typo}"')
    stop = [line for line in run.text().splitlines() if "gateway stopped" in line]
    assert len(stop) == 1, run.text()
    assert "{" not in stop[0] and "[" not in stop[0], stop[0]  # no Python dicts or lists
    assert "drained" in stop[0] and "every point written" in stop[0], stop[0]


# --- defect 11: logs and exit codes -------------------------------------------------------------------


def test_an_unreachable_broker_is_called_unreachable_and_the_json_stop_line_explains_drained(tmp_path: Path) -> None:
    """Neither the broker nor InfluxDB answers: the log says the broker is unreachable (not "connection lost"),
    and at the stop drained is false and the line says where the points are."""

    class Closed:
        port = services.free_port()

    closed = f"http://127.0.0.1:{services.free_port()}"
    run = Run(config(tmp_path, Closed, closed, "edgekit", fmt="json"), tmp_path)
    try:
        run.wait_for("retrying in")
        run.wait_for("spooling")
    finally:
        code = run.stop()
    text = run.text()
    assert code == 0, text
    assert f"broker unreachable at mqtt://127.0.0.1:{Closed.port}" in text, text
    assert "connection lost" not in text
    stop = [json.loads(line) for line in text.splitlines() if '"event": "stop"' in line]
    assert len(stop) == 1 and stop[0]["drained"] is False
    assert "spool" in stop[0]["drained_means"] and "next start" in stop[0]["drained_means"], stop[0]


def test_simulate_to_a_broker_in_real_time_shows_its_progress(tmp_path: Path, mosquitto: Any) -> None:
    """`edgekit-sim simulate SCENARIO --broker URL --speed N` says at once how long it will take, then shows
    progress (on stderr, a line every 10 % when not on a terminal) instead of a silent minute."""
    done = subprocess.run(
        [sys.executable, "-m", "sim", "simulate", "steady", "--broker", f"mqtt://127.0.0.1:{mosquitto.port}",
         "--speed", "1000", "--duration", "40m", "--truth", str(tmp_path / "t.json")],
        capture_output=True, text=True, timeout=120, cwd=REPO,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("EDGEKIT_")}, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    start = [line for line in done.stdout.splitlines() if line.startswith("publishing ")]
    assert len(start) == 1 and "40m of virtual time at 1000x: about 2 s" in start[0], done.stdout
    steps = [line for line in done.stderr.splitlines() if line.startswith("simulate: messages: ")]
    assert steps and steps[-1].endswith("(100%)"), done.stderr
