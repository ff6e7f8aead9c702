"""Broker lock-down against the real Mosquitto: credentials and ACL from ``edgekit-fleet``, TLS from
``scripts/make_certs.sh``; and no secrets committed to the repository.

Under MQTT 3.1.1 Mosquitto acknowledges a publish the ACL denies and drops it silently, so the denial is
checked by the message never arriving at a subscriber allowed to read everything (the gateway account).
"""

from __future__ import annotations

import asyncio
import re
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest
import services
from harness import REPO
from helpers import start_or_fail
from services import Proc

from gateway.fleet import main as fleet_main

pytestmark = pytest.mark.integration


@pytest.fixture
def locked(tmp_path: Path) -> Iterator[tuple[Proc, int, Path, Path]]:
    """A broker with the fleet's password file and ACL and a TLS listener: (proc, tls port, creds, certs)."""
    fleet, out, certs = tmp_path / "fleet.toml", tmp_path / "creds", tmp_path / "certs"
    assert fleet_main(["--fleet", str(fleet), "add", "--site", "north", "dev-a", "dev-b", "--prefix", "ek"]) == 0
    assert fleet_main(["--fleet", str(fleet), "add", "--site", "south", "dev-c"]) == 0
    assert fleet_main(["--fleet", str(fleet), "credentials", "--out", str(out)]) == 0
    subprocess.run(["bash", str(REPO / "scripts" / "make_certs.sh"), str(certs)], check=True, capture_output=True)
    tls_port = services.free_port()
    tls = (
        f"listener {tls_port} 127.0.0.1",
        f"cafile {certs / 'ca.crt'}",
        f"certfile {certs / 'server.crt'}",
        f"keyfile {certs / 'server.key'}",
    )
    proc = start_or_fail(
        lambda: services.start_mosquitto(
            tmp_path / "broker",
            services.free_port(),
            password_file=out / "passwd",
            acl_file=out / "acl",
            extra_conf=("per_listener_settings false", *tls),
        )
    )
    yield proc, tls_port, out, certs
    proc.stop()


def pw(creds: Path, user: str) -> str:
    return (creds / "passwords" / f"{user}.txt").read_text().strip()


async def collect(client: aiomqtt.Client, into: list[tuple[str, bytes]], seconds: float) -> None:
    try:
        async with asyncio.timeout(seconds):
            async for m in client.messages:
                into.append((str(m.topic), bytes(m.payload)))  # type: ignore[arg-type]
    except TimeoutError:
        pass


async def test_devices_are_confined_to_their_topics(locked: tuple[Proc, int, Path, Path]) -> None:
    broker, _, creds, _ = locked
    h, p = broker.host, broker.port
    seen: list[tuple[str, bytes]] = []
    async with aiomqtt.Client(h, p, username="gateway", password=pw(creds, "gateway"), identifier="gw") as gw:
        await gw.subscribe("ek/#", qos=1)
        async with aiomqtt.Client(h, p, username="dev-a", password=pw(creds, "dev-a"), identifier="dev-a") as a:
            await a.subscribe("ek/#", qos=1)  # allowed to ask, but the ACL filters what it gets
            await a.publish("ek/north/dev-a/readings", b"own", qos=1)
            await a.publish("ek/north/dev-b/readings", b"spoofed-b", qos=1)
            await a.publish("ek/south/dev-c/status", b"spoofed-c", qos=1)
            await a.publish("ek/north/dev-a/cmd", b"self-command", qos=1)
            await a.publish("ek/_gateway/alerts/north/pattern", b"fake-alert", qos=1)
            async with aiomqtt.Client(h, p, username="dev-b", password=pw(creds, "dev-b"), identifier="dev-b") as b:
                await b.publish("ek/north/dev-b/readings", b"b-data", qos=1)
                await gw.publish("ek/north/dev-a/cmd", b"cmd-for-a", qos=1)
                await gw.publish("ek/north/dev-b/cmd", b"cmd-for-b", qos=1)
                got_a: list[tuple[str, bytes]] = []
                await asyncio.gather(collect(gw, seen, 2.0), collect(a, got_a, 2.0))
    payloads = {payload for _, payload in seen}
    assert {b"own", b"b-data"} <= payloads
    assert not payloads & {b"spoofed-b", b"spoofed-c", b"self-command", b"fake-alert"}
    # dev-a reads its own command topic and nothing of dev-b's (neither its data nor its commands)
    assert got_a == [("ek/north/dev-a/cmd", b"cmd-for-a")]


async def test_anonymous_and_wrong_passwords_are_refused(locked: tuple[Proc, int, Path, Path]) -> None:
    broker, _, creds, _ = locked
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client(broker.host, broker.port, identifier="anon"):
            pass
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client(broker.host, broker.port, username="dev-a", password="guess", identifier="x"):
            pass
    with pytest.raises(aiomqtt.MqttError):  # one device's password is not another's
        async with aiomqtt.Client(broker.host, broker.port, username="dev-b", password=pw(creds, "dev-a")):
            pass


async def test_tls_with_the_generated_ca(locked: tuple[Proc, int, Path, Path]) -> None:
    _, tls_port, creds, certs = locked
    ctx = ssl.create_default_context(cafile=str(certs / "ca.crt"))
    async with aiomqtt.Client("127.0.0.1", tls_port, username="gateway", password=pw(creds, "gateway"),
                              tls_context=ctx) as c:  # fmt: skip
        await c.subscribe("ek/north/dev-a/readings", qos=1)
        async with aiomqtt.Client("127.0.0.1", tls_port, username="dev-a", password=pw(creds, "dev-a"),
                                  tls_context=ctx) as a:  # fmt: skip
            await a.publish("ek/north/dev-a/readings", b"over-tls", qos=1)
        got: list[tuple[str, bytes]] = []
        await collect(c, got, 1.5)
    assert got == [("ek/north/dev-a/readings", b"over-tls")]
    # a client that does not trust the generated CA cannot connect
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client("127.0.0.1", tls_port, username="gateway", password=pw(creds, "gateway"),
                                  tls_context=ssl.create_default_context()):  # fmt: skip
            pass


SECRET_PATTERNS = {
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "AWS key": re.compile(r"AKIA[0-9A-Z]{16}"),
    "GitHub token": re.compile(r"gh[pousr]_[A-Za-z0-9]{30,}"),
    "Slack token": re.compile(r"xox[abposr]-[A-Za-z0-9-]{10,}"),
    "InfluxDB token": re.compile(r"[A-Za-z0-9_-]{70,}==\b"),
    "password assignment": re.compile(
        r"""(?i)\b(password|passwd|secret|token|api_key)\s*[:=]\s*["'](?!(\$|\{|<|unused|changeme|example|guess))[^"'\s]{6,}["']"""
    ),
    "mosquitto hash": re.compile(r"\$7\$\d+\$[A-Za-z0-9+/=]{8,}\$"),
}
# test fixtures that carry obviously fake values on purpose: file -> pattern names allowed there
ALLOWED = {
    "tests/reliability/test_security.py": {"private key", "password assignment", "mosquitto hash"},
    "tests/test_services.py": {"password assignment"},  # a throwaway broker's made-up password
    "tests/test_user_config.py": {"password assignment"},  # a made-up password that errors must never echo
}


def test_no_secrets_committed() -> None:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, check=True, capture_output=True).stdout.split(b"\0")
    found = []
    for name in filter(None, (f.decode() for f in files)):
        path = REPO / name
        if not path.is_file() or path.stat().st_size > 2_000_000:
            continue
        text = path.read_text(errors="replace")
        for what, pattern in SECRET_PATTERNS.items():
            if what not in ALLOWED.get(name, set()) and pattern.search(text):
                found.append(f"{name}: {what}")
    assert found == []


def test_the_secret_scan_finds_what_it_looks_for() -> None:
    samples = {
        "private key": "-----BEGIN RSA PRIVATE KEY-----",
        "password assignment": 'password = "hunter2hunter2"',
        "mosquitto hash": "dev:$7$101$c2FsdHNhbHQ=$aGFzaGhhc2g=",
        "GitHub token": "ghp_" + "a" * 36,
    }
    for what, sample in samples.items():
        assert SECRET_PATTERNS[what].search(sample), what
    assert not SECRET_PATTERNS["password assignment"].search('password_file = "/run/secrets/x"')
