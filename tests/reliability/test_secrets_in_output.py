"""No secret anywhere the gateway writes, tried as an attacker would.

Distinctive secrets (made here, at run time) go into every place the configuration takes one: the URLs (refused,
and the refusal must not show them), the environment, ``*_file``, the TOML file (refused). Then ``check`` and
``run`` (a subprocess, DEBUG logs) against a real Mosquitto that demands passwords and a real InfluxDB 1.6 with
authentication on, provoking every error: a wrong MQTT password, a wrong InfluxDB password, InfluxDB down, the
v2 API with a token against a server that does not serve it. Every byte of the output and the logs, the stats
file, ``/metrics``, ``top``, the state file and everything in InfluxDB (readings, dead letters, health points)
is searched for each secret in each form it could take (as given, JSON-escaped, percent-encoded, as HTTP Basic
credentials) and for its random core.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import services
from harness import REPO, GatewayProcess, wait_until, write_config
from helpers import start_or_fail
from services import Proc

from gateway.fleet import main as fleet_main

pytestmark = pytest.mark.integration

ADMIN = "admin"


def _made_up(tag: str, extra: str = "") -> tuple[str, str]:
    """(a secret, its random core): letters, digits and ``extra`` characters that escaping changes."""
    core = secrets.token_hex(12)
    return f"{tag}-{core}{extra}", core


class Secrets:
    def __init__(self) -> None:
        self.mqtt_wrong, c1 = _made_up("mqW", '"é€\\')
        self.influx_right, c2 = _made_up("ifR", "é€%:")  # used in InfluxQL: no quote, no backslash
        self.influx_wrong, c3 = _made_up("ifW", '"é€\\')
        self.token, c4 = _made_up("tkn")
        self.in_url, c5 = _made_up("url", "%40")
        self.in_toml, c6 = _made_up("tml")
        self.admin, c7 = _made_up("adm")
        self.mqtt_right = ""  # the broker's generated password for the gateway, set by the fixture
        self.cores = [c1, c2, c3, c4, c5, c6, c7]

    def forms(self) -> list[str]:
        out = list(self.cores)
        for pw in (self.mqtt_wrong, self.influx_right, self.influx_wrong, self.token, self.in_url, self.mqtt_right):
            out += [pw, json.dumps(pw)[1:-1], urllib.parse.quote(pw, safe=""), urllib.parse.quote(pw, safe=":")]
            for user in ("gw", "gateway", ""):
                out.append(base64.b64encode(f"{user}:{pw}".encode()).decode())
        return [f for f in out if f]


def find_secrets(where: str, data: bytes | str, forms: list[str]) -> list[str]:
    text = data if isinstance(data, str) else data.decode("utf-8", errors="replace")
    raw = data if isinstance(data, bytes) else data.encode()
    return [f"{where}: {f!r}" for f in forms if f in text or f.encode() in raw]


@pytest.fixture
def made() -> Secrets:
    return Secrets()


@pytest.fixture
def locked_broker(tmp_path: Path, made: Secrets) -> Iterator[tuple[Proc, Path]]:
    fleet, out = tmp_path / "fleet.toml", tmp_path / "creds"
    assert fleet_main(["--fleet", str(fleet), "add", "--site", "north", "dev-a"]) == 0
    assert fleet_main(["--fleet", str(fleet), "credentials", "--out", str(out)]) == 0
    made.mqtt_right = (out / "passwords" / "gateway.txt").read_text().strip()
    proc = start_or_fail(
        lambda: services.start_mosquitto(
            tmp_path / "broker", services.free_port(), password_file=out / "passwd", acl_file=out / "acl"
        )
    )
    yield proc, out
    proc.stop()


def _query(url: str, q: str, admin: str, db: str | None = None) -> dict[str, Any]:
    params = {"q": q, **({"db": db} if db else {})}
    req = urllib.request.Request(f"{url}/query", data=urllib.parse.urlencode(params).encode(), method="POST")
    req.add_header("Authorization", "Basic " + base64.b64encode(f"{ADMIN}:{admin}".encode()).decode())
    with urllib.request.urlopen(req, timeout=10) as resp:
        result: dict[str, Any] = json.loads(resp.read())
    return result


@pytest.fixture
def auth_influx(tmp_path: Path, made: Secrets, monkeypatch: pytest.MonkeyPatch) -> Iterator[Proc]:
    """A private InfluxDB 1.6 with authentication on, an admin, and user ``gw`` who may write ``edgekit``."""
    monkeypatch.setenv("INFLUXDB_HTTP_AUTH_ENABLED", "true")

    def start() -> Proc:
        http_port, rpc_port = services.free_ports(2)
        return services.start_influxdb(tmp_path / "influx", http_port, rpc_port)

    proc = start_or_fail(start)
    monkeypatch.delenv("INFLUXDB_HTTP_AUTH_ENABLED")
    try:
        body = urllib.parse.urlencode({"q": f"CREATE USER {ADMIN} WITH PASSWORD '{made.admin}' WITH ALL PRIVILEGES"})
        urllib.request.urlopen(f"{proc.url}/query", data=body.encode(), timeout=10).read()
        _query(proc.url, "CREATE DATABASE edgekit", made.admin)
        _query(proc.url, f"CREATE USER gw WITH PASSWORD '{made.influx_right}'", made.admin)
        _query(proc.url, "GRANT ALL ON edgekit TO gw", made.admin)
        with pytest.raises(urllib.error.HTTPError):  # authentication is really on
            urllib.request.urlopen(f"{proc.url}/query?q=SHOW+DATABASES", timeout=10)
        yield proc
    finally:
        proc.stop()


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("EDGEKIT_")} | {"PYTHONPATH": str(REPO), **env}
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], cwd=REPO, env=full, capture_output=True, text=True, timeout=60
    )


def test_check_and_run_never_show_a_secret(
    tmp_path: Path, made: Secrets, locked_broker: tuple[Proc, Path], auth_influx: Proc
) -> None:
    broker, creds = locked_broker
    influx = auth_influx
    outputs: list[tuple[str, bytes | str]] = []
    mqtt_url = f"mqtt://{broker.host}:{broker.port}"

    # --- the URLs and the TOML file: refused, and the refusal does not show the secret -----------------
    base = {"mqtt": {"url": mqtt_url, "username": "gateway"}, "influx": {"url": influx.url, "username": "gw"}}
    refused = [
        ({"EDGEKIT_INFLUX_URL": f"http://gw:{made.in_url}@{influx.host}:{influx.port}"}, base, "influx.username"),
        ({}, {**base, "influx": {"url": f"http://gw:{made.in_url}@{influx.host}:{influx.port}"}}, "EDGEKIT_INFLUX"),
        ({}, {**base, "influx": {"url": f"htp://gw:{made.in_url}@h:99999?p={made.in_url}"}}, "influx.url"),
        ({}, {**base, "influx": {"url": f"{influx.url}/?u=gw&p={made.in_url}"}}, "influx.url"),
        ({}, {**base, "mqtt": {"url": f"mqt://gateway:{made.in_url}@{broker.host}"}}, "EDGEKIT_MQTT_PASSWORD"),
        ({"EDGEKIT_MQTT_URL": f"mqtt://gateway:{made.in_url}@[::1"}, base, "EDGEKIT_MQTT_PASSWORD"),
        ({}, {**base, "influx": {"password": made.in_toml}}, "not read from the config file"),
        ({}, {**base, "influx": {"target": "v2", "bucket": "b", "token": made.in_toml}}, "not read from the config"),
        ({}, {**base, "mqtt": {"url": mqtt_url, "password": made.in_toml}}, "not read from the config file"),
    ]
    for n, (env, doc, says) in enumerate(refused):
        cfg = write_config(tmp_path / f"refused-{n}.toml", doc, extra="")
        done = cli("check", "--config", str(cfg), env=env)
        assert done.returncode == 2 and says in done.stderr and "Traceback" not in done.stderr, (n, done.stderr)
        outputs.append((f"check refused {n}", done.stdout + done.stderr))

    # --- secrets from the environment and from files: accepted, never shown ---------------------------
    (tmp_path / "mqtt.pw").write_text(made.mqtt_right + "\n")
    (tmp_path / "influx.pw").write_text(made.influx_right + "\n")
    (tmp_path / "token").write_text(made.token + "\n")
    state = tmp_path / "state"
    metrics_port = services.free_port()

    def config(name: str, influx_section: dict[str, object], mqtt: dict[str, object] | None = None) -> Path:
        return write_config(
            tmp_path / f"{name}.toml",
            {
                "mqtt": {"url": mqtt_url, "username": "gateway", "client_id": f"gw-{name}", **(mqtt or {})},
                "influx": {"username": "gw", "flush_interval_ms": 100, "retry_max_s": 0.5, **influx_section},
                "log": {"level": "DEBUG", "format": "json"},
                "state": {"dir": str(state), "checkpoint_interval_s": 0.5},
                "metrics": {"port": metrics_port},
            },
        )

    wrong_env = {"EDGEKIT_MQTT_PASSWORD": made.mqtt_wrong, "EDGEKIT_INFLUX_PASSWORD": made.influx_wrong}
    right_files = {"password_file": str(tmp_path / "influx.pw"), "create_database": False}  # gw is no admin
    closed = f"http://127.0.0.1:{services.free_port()}"
    runs = [
        # wrong MQTT and InfluxDB passwords (from the environment): the broker refuses, InfluxDB answers 401
        ("wrong", config("wrong", {"url": influx.url}), wrong_env),
        # InfluxDB down, the v2 API with a token from the environment
        ("down-v2", config("down", {"url": closed, "target": "v2", "bucket": "edgekit", "org": "o"}),
         {"EDGEKIT_MQTT_PASSWORD": made.mqtt_wrong, "EDGEKIT_INFLUX_TOKEN": made.token}),
        # the v2 API against InfluxDB 1.6, which does not serve it; the token from a file
        ("v2-1.6", config("v2", {"url": influx.url, "target": "v2", "bucket": "edgekit", "org": "o",
                                 "token_file": str(tmp_path / "token")}), {"EDGEKIT_MQTT_PASSWORD": made.mqtt_wrong}),
        # everything right, from files: messages flow, dead letters and health points are written
        ("right", config("right", {"url": influx.url, **right_files}, {"password_file": str(tmp_path / "mqtt.pw")}),
         {}),
    ]  # fmt: skip
    for name, cfg, env in runs:
        done = cli("check", "--config", str(cfg), env=env)
        assert done.returncode == 0, done.stderr
        assert "password set" in done.stdout or "token set" in done.stdout, done.stdout
        outputs.append((f"check {name}", done.stdout + done.stderr))
        outputs += run_and_collect(name, cfg, env, tmp_path / name, metrics_port, made, creds, broker)

    # everything the gateway wrote to InfluxDB
    dump = []
    for (m,) in _query(influx.url, "SHOW MEASUREMENTS", made.admin, "edgekit")["results"][0]["series"][0]["values"]:
        dump.append(json.dumps(_query(influx.url, f'SELECT * FROM "{m}"', made.admin, "edgekit")))
    text = "\n".join(dump)
    assert '"dead_letter"' in text or "dead_letter" in text, "the junk message became a dead letter"
    assert "reading" in text
    outputs.append(("InfluxDB", text))
    for db_file in state.glob("*"):
        outputs.append((f"state {db_file.name}", db_file.read_bytes()))

    forms = made.forms()
    found = [hit for where, data in outputs for hit in find_secrets(where, data, forms)]
    assert found == [], found
    # the errors were really provoked, and said so
    logs = "\n".join(str(d) for w, d in outputs if w.startswith("run "))
    assert "Bad user name or password" in logs or "Not authorized" in logs, "the broker refused the wrong password"
    assert "HTTP 401" in logs and "authorization failed" in logs, "InfluxDB refused the wrong password"
    assert "Cannot connect to host" in logs, "InfluxDB was down"
    assert "HTTP 404" in logs or "HTTP 401" in logs, "the v2 API answer of InfluxDB 1.6"


def run_and_collect(
    name: str, cfg: Path, env: dict[str, str], workdir: Path, metrics_port: int, made: Secrets, creds: Path,
    broker: Proc,
) -> list[tuple[str, bytes | str]]:  # fmt: skip
    workdir.mkdir()
    gw = GatewayProcess(cfg, workdir, env={k: v for k, v in os.environ.items() if not k.startswith("EDGEKIT_")} | env)
    gw.env = {k: v for k, v in gw.env.items() if not k.startswith("EDGEKIT_")} | env | {"PYTHONPATH": str(REPO)}
    gw.start()
    out: list[tuple[str, bytes | str]] = []
    try:
        wait_until(lambda: gw.stats().get("sink"), "stats file", 30, gw)
        if name == "right":
            wait_until(lambda: gw.stats()["mqtt"]["connected"], "connected to the broker", 30, gw)
            asyncio.run(publish(broker, creds))
            wait_until(
                lambda: (
                    gw.stats()["pipeline"]["readings_accepted"] >= 5
                    and gw.stats()["pipeline"]["dead_letters"] >= 1
                    and gw.stats()["sink"]["pending"] == 0
                ),
                "readings and a dead letter written",
                30,
                gw,
            )
        else:
            wait_until(lambda: gw.stats()["sink"]["write_failures"] >= 2, "failed writes retried", 30, gw)
            wait_until(lambda: gw.stats()["mqtt"]["connects"] == 0 and "mqtt_disconnected" in gw.logs(500),
                       "the broker refused", 30, gw)  # fmt: skip
        time.sleep(1.0)  # a few more rounds of retries, stats and checkpoints
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as resp:
            out.append((f"/metrics {name}", resp.read()))
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/healthz", timeout=10) as resp:
            out.append((f"/healthz {name}", resp.read()))
        top = cli("top", "--once", "--stats-file", str(gw.stats_file), env={})
        out.append((f"top {name}", top.stdout + top.stderr))
        out.append((f"stats {name}", gw.stats_file.read_bytes()))
    finally:
        code = gw.stop()
    assert code == 0, gw.logs()
    for log in sorted(workdir.glob("gateway-*.log")):
        out.append((f"run {name} {log.name}", log.read_bytes()))
    return out


async def publish(broker: Proc, creds: Path) -> None:
    password = (creds / "passwords" / "dev-a.txt").read_text().strip()
    now = time.time_ns() // 1_000_000
    async with aiomqtt.Client(broker.host, broker.port, username="dev-a", password=password) as c:
        for s in range(5):
            body = {"v": 1, "dev": "dev-a", "r": [{"b": 1, "s": s, "t": now - 5000 + s, "q": "s", "m": {"t_c": 21.5}}]}
            await c.publish("edgekit/north/dev-a/readings", json.dumps(body).encode(), qos=1)
        await c.publish("edgekit/north/dev-a/readings", b"not json at all", qos=1)
