"""``edgekit-ota`` without a broker: what a build holds, how it is cut into chunks, what a command looks like,
and the fleet view's firmware column. The path through the broker to the boards is
tests/firmware/test_ota.py."""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.config import parse_config
from gateway.live import LiveView
from gateway.ota import KEEP_ON_BOARD, OtaError, build_files, chunks, command_payload, main
from gateway.pipeline import Pipeline
from gateway.top import render

REPO = Path(__file__).resolve().parents[2]


def test_build_is_the_firmware_modules_compiled_with_an_index_of_their_hashes() -> None:
    b = build_files(REPO / "firmware", "0.2.0")
    modules = {p.stem for p in (REPO / "firmware").glob("*.py")} - {Path(n).stem for n in KEEP_ON_BOARD}
    modules -= {"secrets_example"}
    assert {Path(n).stem for n in b.files} == modules
    assert all(n.endswith(".mpy") and data[:1] == b"M" for n, data in b.files.items())  # MicroPython bytecode
    lines = b.index.decode().splitlines()
    assert len(lines) == len(b.files)
    for line in lines:
        name, size, sha = line.split()
        assert int(size) == len(b.files[name]) and sha == hashlib.sha256(b.files[name]).hexdigest()
    assert b.id == hashlib.sha256(b.index).hexdigest()
    assert b'"build":"' + b.id.encode() + b'"' in b.manifest()
    src = build_files(REPO / "firmware", "0.2.0", compiled=False)
    assert "app.py" in src.files and src.id != b.id


@given(st.binary(max_size=5000), st.integers(64, 4096))
def test_chunks_put_back_together_give_the_file(data: bytes, size: int) -> None:
    parts = chunks(data, size)
    assert b"".join(parts) == data
    assert all(len(p) == size for p in parts[:-1]) and (not parts or 0 < len(parts[-1]) <= size)
    assert len(parts) == -(-len(data) // size)


def test_commands_are_checked_before_they_go_out() -> None:
    assert command_payload("c1", {"sleep_s": 60}, ["sync"]) == b'{"v":1,"id":"c1","set":{"sleep_s":60},"do":["sync"]}'
    with pytest.raises(OtaError, match="unknown action"):
        command_payload("c1", {}, ["reboot"])
    with pytest.raises(OtaError, match="command id"):
        command_payload("has space", {}, [])
    with pytest.raises(OtaError, match="version"):
        build_files(REPO / "firmware", "1 2")
    with pytest.raises(SystemExit):
        main(["--broker", "127.0.0.1:1", "cmd", "--site", "s", "--device", "d", "--set", "sleep_s=abc"])
    assert main(["--broker", "127.0.0.1:1", "cmd", "--site", "s", "--device", "d", "--set", "sleep_s=60"]) == 2


def test_top_shows_each_boards_firmware_and_update() -> None:
    """Statuses through the real pipeline into the live view, drawn by top."""
    pipe = Pipeline(parse_config({}, {}))
    now = 1_764_072_060_000
    live = LiveView(pipe.engine, "gw", now)
    for dev, extra in (("b1", ',"fw":"0.2.0","ota":""'), ("b2", ',"fw":"0.1.0","ota":"rollback 0.3.0"')):
        payload = b'{"v":1,"dev":"' + dev.encode() + b'","state":"sleeping","boot":1' + extra.encode() + b"}"
        out = pipe.handle(f"edgekit/lab/{dev}/status", payload, now)
        assert out.status is not None, out.lines
        live.observe(out.readings, out.outputs, out.alerts, out.status)
    out = pipe.handle("edgekit/lab/b1/status", b'{"v":1,"dev":"b1","state":"offline"}', now + 1)  # the will
    live.observe(out.readings, out.outputs, out.alerts, out.status)
    rows = live.device_rows(now)
    assert rows["b1"]["fw"] == "0.2.0" and rows["b1"]["ota"] == ""
    assert rows["b2"]["fw"] == "0.1.0" and rows["b2"]["ota"] == "rollback 0.3.0"
    screen = render({"live": live.as_dict(now)}, None, width=140)
    assert "FW" in screen[4], screen
    b1 = next(line for line in screen if line.startswith("b1"))
    b2 = next(line for line in screen if line.startswith("b2"))
    assert "0.2.0" in b1 and "ota:" not in b1, b1
    assert "0.1.0" in b2 and "ota: rollback 0.3.0" in b2, b2


@pytest.mark.integration
def test_fleet_acl_lets_a_board_read_builds_and_only_its_own_manifest(tmp_path: Path) -> None:
    """edgekit-fleet's ACL in a real Mosquitto: the gateway's user publishes a build for one board; that
    board reads the fleet's manifest, its own and the chunks, another board's manifest never reaches it."""
    import queue

    import paho.mqtt.client as mqtt
    import services
    from paho.mqtt.enums import CallbackAPIVersion

    from gateway.config import MqttConfig
    from gateway.fleet import main as fleet_main
    from gateway.ota import chunk_topic, manifest_topic, publish_build

    run_dir = Path(tempfile.mkdtemp(prefix="edgekit-ota-acl-"))
    run_dir.chmod(0o755)  # so that mosquitto can drop root and still read it
    fleet, out = run_dir / "fleet.toml", run_dir / "creds"
    assert fleet_main(["--fleet", str(fleet), "add", "--site", "north", "b1", "b2"]) == 0
    assert fleet_main(["--fleet", str(fleet), "credentials", "--out", str(out)]) == 0
    pw = {u: (out / "passwords" / f"{u}.txt").read_text().strip() for u in ("gateway", "b1")}
    proc = services.start_mosquitto(run_dir, services.free_port(), password_file=out / "passwd", acl_file=out / "acl")
    try:
        build = build_files(REPO / "firmware", "0.2.0", compiled=False)
        gw = MqttConfig(host=proc.host, port=proc.port, username="gateway", password=pw["gateway"])
        publish_build(gw, build, ["b1", "b2"])
        got: queue.Queue[str] = queue.Queue()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="b1")
        c.username_pw_set("b1", pw["b1"])
        c.on_message = lambda _c, _u, m: got.put(m.topic)
        c.connect(proc.host, proc.port)
        c.loop_start()
        try:
            index_sha = build.id
            for t in (
                manifest_topic("edgekit", "b1"),
                manifest_topic("edgekit", "b2"),
                chunk_topic("edgekit", index_sha, 0),
            ):
                c.subscribe(t, qos=0)
            seen = set()
            with contextlib.suppress(queue.Empty):
                while True:
                    seen.add(got.get(timeout=1.5))
        finally:
            c.disconnect()
            c.loop_stop()
    finally:
        proc.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
    assert seen == {manifest_topic("edgekit", "b1"), chunk_topic("edgekit", index_sha, 0)}
