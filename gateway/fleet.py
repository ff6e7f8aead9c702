"""``edgekit-fleet`` / ``python -m gateway.fleet``: the one description of a fleet, and everything made from it.

The fleet file (TOML, safe to commit: it holds no secret) names the broker the boards use, the Wi-Fi network,
firmware settings for every board and per board, and the boards with their sites::

    prefix = "edgekit"
    gateway_user = "gateway"
    broker = "192.168.1.10"      # what the boards connect to (a name or an IPv4 address)
    port = 8883
    tls = true                   # the default: boards verify the broker against the fleet's CA
    wifi_ssid = "greenhouse-wifi"
    [settings]                   # firmware settings (firmware/config.py keys) for every board
    sleep_s = 300
    [[device]]
    id = "gh-07"
    site = "north"
    settings = { publish_every = 2 }

Secrets live only in the output directory (default ``.run/fleet``, which git ignores), each file mode 600, and
are never printed unless asked (``password USER``):

- ``passwords/<user>.txt``: one random password per board, the gateway (and ``sim_user``, when named), made
  once and kept on later runs; ``wifi.txt``: the Wi-Fi password (``wifi``);
- ``passwd`` (Mosquitto 2's ``$7$`` PBKDF2-SHA512 hashes) and ``acl``: each board may write only
  ``<prefix>/<site>/<board>/readings`` and ``.../status`` and read only its ``.../cmd`` and the firmware
  builds (``<prefix>/_gateway/ota/...``: the fleet's and its own manifest); the gateway reads
  ``<prefix>/#`` and writes the command topics, ``<prefix>/_gateway/#`` and ``homeassistant/#`` (discovery);
  ``sim_user`` writes ``<prefix>/#``;
- ``gateway-devices.toml``: the gateway's ``[devices]`` section (the known boards and their sites).

``scripts/deploy.py`` takes each board's configuration and secrets from here (:func:`board_files`).
A board without a configured id calls itself ``esp32-<unique id in hex>``; ``add`` adopts it by that id.
"""

from __future__ import annotations

import argparse
import ast
import base64
import getpass
import hashlib
import os
import re
import secrets
import sys
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .protocol import NAME_RE

__all__ = [
    "Device",
    "Fleet",
    "FleetError",
    "acl_text",
    "board_files",
    "firmware_keys",
    "load_fleet",
    "main",
    "mosquitto_hash",
    "save_fleet",
    "write_credentials",
]

ITERATIONS = 101  # what mosquitto_passwd 2.0 uses
DEFAULT_OUT = Path(".run/fleet")
FIRMWARE = Path(__file__).resolve().parent.parent / "firmware"
SECRET_KEYS = frozenset({"wifi_password", "mqtt_password", "mqtt_user"})
"""Firmware settings that are secrets (or follow from the fleet): never in the fleet file."""
FLEET_KEYS = frozenset({"device", "site", "prefix", "broker", "port", "tls", "tls_name", "ca", "wifi_ssid"})
"""Firmware settings the fleet file sets at its top level or per board, not under ``settings``."""


@dataclass(frozen=True, slots=True)
class Device:
    id: str
    site: str
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Fleet:
    prefix: str = "edgekit"
    gateway_user: str = "gateway"
    devices: tuple[Device, ...] = ()
    broker: str | None = None
    port: int | None = None
    tls: bool = True
    tls_name: str | None = None
    wifi_ssid: str = ""
    sim_user: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)


class FleetError(ValueError):
    pass


def _check_name(what: str, value: str) -> str:
    if not NAME_RE.fullmatch(value):
        raise FleetError(f"{what} {value!r} is not 1-32 of [A-Za-z0-9_-]")
    return value


def firmware_keys() -> dict[str, Any] | None:
    """The firmware's settings and their defaults, read from firmware/config.py (not imported: MicroPython);
    None where the firmware is not beside the package (an installed wheel: settings are then not checked)."""
    path = FIRMWARE / "config.py"
    if not path.is_file():
        return None
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "CFG":
            value = ast.literal_eval(node.value)
            assert isinstance(value, dict)
            return value
    raise FleetError("firmware/config.py has no CFG")


def _settings(where: str, raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise FleetError(f"{where}: settings must be a table")
    known = firmware_keys()
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key in SECRET_KEYS:
            raise FleetError(f"{where}: {key} is a secret: it never goes in the fleet file (see 'wifi', 'credentials')")
        if key in FLEET_KEYS:
            raise FleetError(f"{where}: {key} is set at the top of the fleet file or on the device, not in settings")
        if known is None:
            out[key] = value
            continue
        if key not in known:
            raise FleetError(f"{where}: {key!r} is not a firmware setting (firmware/config.py)")
        dflt = known[key]
        if (
            dflt is not None
            and not isinstance(value, type(dflt))
            and not (isinstance(dflt, (list, tuple)) and isinstance(value, list))
        ):
            raise FleetError(f"{where}: {key} = {value!r} is not of type {type(dflt).__name__} (default {dflt!r})")
        out[key] = value
    return out


def load_fleet(path: Path) -> Fleet:
    if not path.exists():
        return Fleet()
    with open(path, "rb") as f:
        doc = tomllib.load(f)
    devices = []
    for d in doc.get("device", []):
        dev = _check_name("device id", str(d["id"]))
        devices.append(Device(dev, _check_name("site", str(d["site"])), _settings(f"device {dev}", d.get("settings"))))
    sim = doc.get("sim_user")
    port = doc.get("port")
    if port is not None and (not isinstance(port, int) or not 0 < port < 65536):
        raise FleetError(f"port {port!r} is not a TCP port")
    broker = doc.get("broker")
    if broker is not None and not re.fullmatch(r"[A-Za-z0-9.:-]{1,253}", str(broker)):
        raise FleetError(f"broker {broker!r} is not a host name or address")
    return Fleet(
        prefix=_check_name("prefix", str(doc.get("prefix", "edgekit"))),
        gateway_user=_check_name("gateway_user", str(doc.get("gateway_user", "gateway"))),
        devices=tuple(devices),
        broker=None if broker is None else str(broker),
        port=port,
        tls=bool(doc.get("tls", True)),
        tls_name=doc.get("tls_name"),
        wifi_ssid=str(doc.get("wifi_ssid", "")),
        sim_user=None if sim is None else _check_name("sim_user", str(sim)),
        settings=_settings("settings", doc.get("settings")),
    )


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    raise FleetError(f"cannot write {value!r} to the fleet file")


def save_fleet(path: Path, fleet: Fleet) -> None:
    lines = [f"prefix = {_toml(fleet.prefix)}", f"gateway_user = {_toml(fleet.gateway_user)}"]
    if fleet.sim_user:
        lines.append(f"sim_user = {_toml(fleet.sim_user)}")
    if fleet.broker is not None:
        lines.append(f"broker = {_toml(fleet.broker)}")
    if fleet.port is not None:
        lines.append(f"port = {fleet.port}")
    lines.append(f"tls = {_toml(fleet.tls)}")
    if fleet.tls_name:
        lines.append(f"tls_name = {_toml(fleet.tls_name)}")
    if fleet.wifi_ssid:
        lines.append(f"wifi_ssid = {_toml(fleet.wifi_ssid)}")
    lines.append("")
    if fleet.settings:
        lines.append("[settings]")
        lines += [f"{k} = {_toml(v)}" for k, v in fleet.settings.items()]
        lines.append("")
    for d in fleet.devices:
        lines += ["[[device]]", f"id = {_toml(d.id)}", f"site = {_toml(d.site)}"]
        if d.settings:
            lines.append(f"settings = {_toml(d.settings)}")
        lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")


def mosquitto_hash(password: str, salt: bytes | None = None, iterations: int = ITERATIONS) -> str:
    """``$7$<iterations>$<salt>$<hash>`` as ``mosquitto_passwd`` 2.x writes it (PBKDF2-HMAC-SHA512)."""
    salt = salt if salt is not None else secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, dklen=64)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def acl_text(fleet: Fleet) -> str:
    p = fleet.prefix
    out = [
        "# generated by edgekit-fleet credentials: do not edit, run it again",
        f"user {fleet.gateway_user}",
        f"topic read {p}/#",
        f"topic write {p}/_gateway/#",
        f"topic write {p}/+/+/cmd",
        "topic write homeassistant/#",  # [homeassistant] discovery, when it is on (docs/homeassistant.md)
        "",
    ]
    if fleet.sim_user:  # the simulator (docker-compose's demo profile) publishes as any simulated device
        out += [f"user {fleet.sim_user}", f"topic write {p}/#", ""]
    for d in fleet.devices:
        base = f"{p}/{d.site}/{d.id}"
        out += [
            f"user {d.id}",
            f"topic write {base}/readings",
            f"topic write {base}/status",
            f"topic read {base}/cmd",
            f"topic read {p}/_gateway/ota/manifest",  # firmware updates (edgekit-ota, firmware/ota.py)
            f"topic read {p}/_gateway/ota/manifest/{d.id}",
            f"topic read {p}/_gateway/ota/f/#",
            "",
        ]
    return "\n".join(out)


def _private(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    os.chmod(out, 0o700)


def _write_private(path: Path, text: str) -> None:
    """Write text to a file only its owner may read (mode 600 from its creation, and after)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(text)


def _password(out: Path, user: str) -> str:
    path = out / "passwords" / f"{user}.txt"
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    _private(path.parent)
    password = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(password + "\n")
    return password


def gateway_devices_text(fleet: Fleet) -> str:
    """The gateway's ``[devices]`` section: the fleet's boards, each bound to its site."""
    known = ", ".join(_toml(d.id) for d in fleet.devices)
    lines = [
        "# generated by edgekit-fleet credentials: the fleet's boards, for the gateway's configuration",
        "[devices]",
        f"known = [{known}]",
        "",
        "[devices.sites]",
    ]
    lines += [f"{_toml(d.id)} = {_toml(d.site)}" for d in fleet.devices]
    return "\n".join(lines) + "\n"


def write_credentials(fleet: Fleet, out: Path, broker_dir: Path | None = None) -> tuple[Path, Path]:
    """Passwords (kept if present), the Mosquitto password file and the ACL, and the gateway's device list;
    ``(passwd, acl)``. ``broker_dir``: also put ``passwd`` and ``acl`` there (docker-compose's
    deploy/mosquitto)."""
    _private(out)
    users = [fleet.gateway_user, *([fleet.sim_user] if fleet.sim_user else []), *(d.id for d in fleet.devices)]
    if len(set(users)) != len(users):
        raise FleetError("device ids must be unique and differ from the gateway and simulator users")
    entries = [f"{u}:{mosquitto_hash(_password(out, u))}" for u in users]
    passwd, acl = out / "passwd", out / "acl"
    files = {"passwd": "\n".join(entries) + "\n", "acl": acl_text(fleet)}
    for d in (out, *([broker_dir] if broker_dir is not None else [])):
        d.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            _write_private(d / name, text)
    _write_private(out / "gateway-devices.toml", gateway_devices_text(fleet))
    return passwd, acl


def board_files(fleet: Fleet, out: Path, device: str, ca: Path | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """A board's ``config_local.py`` settings and its ``secrets.py`` (Wi-Fi and MQTT passwords), from the fleet
    file and the output directory. ``ca``: the fleet's CA certificate (PEM or DER), needed with TLS."""
    found = [d for d in fleet.devices if d.id == device]
    if not found:
        have = ", ".join(d.id for d in fleet.devices) or "none"
        raise FleetError(f"device {device!r} is not in the fleet (have: {have}); add it first")
    d = found[0]
    if fleet.broker is None:
        raise FleetError("the fleet file names no broker: edgekit-fleet init --broker HOST")
    if not (out / "passwords" / f"{d.id}.txt").exists():
        raise FleetError(f"no password for {d.id} in {out}: run 'edgekit-fleet credentials' first")
    if fleet.tls and (ca is None or not ca.exists()):
        raise FleetError(f"TLS is on but there is no CA certificate ({ca}): run scripts/make_certs.sh first")
    cfg: dict[str, Any] = {**fleet.settings, **d.settings}
    cfg.update(device=d.id, site=d.site, prefix=fleet.prefix, broker=fleet.broker, tls=fleet.tls)
    cfg["port"] = fleet.port or (8883 if fleet.tls else 1883)
    if fleet.tls:
        cfg["ca"] = "ca.der"
        if fleet.tls_name:
            cfg["tls_name"] = fleet.tls_name
    if fleet.wifi_ssid:
        cfg["wifi_ssid"] = fleet.wifi_ssid
    sec: dict[str, Any] = {"mqtt_user": d.id, "mqtt_password": _password(out, d.id)}
    wifi = out / "wifi.txt"
    if wifi.exists():
        sec["wifi_password"] = wifi.read_text(encoding="utf-8").rstrip("\n")
    return cfg, sec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edgekit-fleet", description="the fleet file and what is made from it")
    parser.add_argument("--fleet", type=Path, default=Path("fleet.toml"), help="the fleet file (TOML)")
    sub = parser.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init", help="set the broker the boards use (and create the fleet file)")
    init.add_argument("--broker", required=True, help="host name or address the boards connect to")
    init.add_argument("--port", type=int, help="default 8883 with TLS, 1883 without")
    init.add_argument("--no-tls", action="store_true", help="boards connect without TLS (a trusted LAN only)")
    init.add_argument("--tls-name", help="the name the boards check the broker's certificate for (default: broker)")
    init.add_argument("--prefix", help="the fleet's topic prefix")
    init.add_argument("--sim-user", help="a broker user for the simulator, allowed to write <prefix>/#")
    add = sub.add_parser("add", help="add (adopt) boards at a site, by their ids")
    add.add_argument("--site", required=True)
    add.add_argument("devices", nargs="+")
    add.add_argument("--prefix", help="set the fleet's topic prefix")
    move = sub.add_parser("move", help="move devices to another site (then write the credentials again)")
    move.add_argument("--site", required=True)
    move.add_argument("devices", nargs="+")
    sub.add_parser("list", help="list devices")
    wifi = sub.add_parser("wifi", help="the Wi-Fi network: its name in the fleet file, its password in --out")
    wifi.add_argument("--ssid", required=True)
    wifi.add_argument("--out", type=Path, default=DEFAULT_OUT)
    cred = sub.add_parser("credentials", help="write passwords, the Mosquitto password file, the ACL, the device list")
    cred.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"untracked directory (default {DEFAULT_OUT})")
    cred.add_argument("--broker-dir", type=Path, help="also write passwd and acl there (e.g. deploy/mosquitto)")
    pw = sub.add_parser("password", help="print one user's broker password (only when asked)")
    pw.add_argument("user")
    pw.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    try:
        fleet = load_fleet(args.fleet)
        if args.command == "init":
            fleet = replace(
                fleet,
                broker=args.broker,
                port=args.port,
                tls=not args.no_tls,
                tls_name=args.tls_name or fleet.tls_name,
                prefix=_check_name("prefix", args.prefix) if args.prefix else fleet.prefix,
                sim_user=_check_name("sim_user", args.sim_user) if args.sim_user else fleet.sim_user,
            )
            save_fleet(args.fleet, fleet)
            load_fleet(args.fleet)  # what was written reads back
            print(f"{args.fleet}: boards connect to {fleet.broker} with{'' if fleet.tls else 'out'} TLS")
        elif args.command == "add":
            known = {d.id for d in fleet.devices}
            new = [Device(_check_name("device id", d), _check_name("site", args.site)) for d in args.devices]
            dupes = [d.id for d in new if d.id in known]
            if dupes:
                raise FleetError(f"already in the fleet: {', '.join(dupes)}")
            prefix = _check_name("prefix", args.prefix) if args.prefix else fleet.prefix
            save_fleet(args.fleet, replace(fleet, prefix=prefix, devices=fleet.devices + tuple(new)))
            print(f"added {len(new)} device(s) to {args.fleet}")
        elif args.command == "move":
            site = _check_name("site", args.site)
            unknown = sorted(set(args.devices) - {d.id for d in fleet.devices})
            if unknown:
                raise FleetError(f"not in the fleet: {', '.join(unknown)}")
            moved = set(args.devices)
            devices = tuple(replace(d, site=site) if d.id in moved else d for d in fleet.devices)
            save_fleet(args.fleet, replace(fleet, devices=devices))
            print(f"moved {len(moved)} device(s) to site {site} in {args.fleet}; next: run 'credentials' again and")
            print("reload Mosquitto (the ACL), declare each under [devices.sites] in the gateway's configuration")
            print("and restart it, then set the board's site: its first message there moves it (docs/reliability.md):")
            print("[devices.sites]")
            for d in sorted(moved):
                print(f'{d} = "{site}"')
        elif args.command == "list":
            for d in fleet.devices:
                print(f"{d.site}\t{d.id}\t{fleet.prefix}/{d.site}/{d.id}/")
        elif args.command == "wifi":
            password = os.environ.get("EDGEKIT_WIFI_PASSWORD")
            if password is None:
                password = getpass.getpass(f"password of {args.ssid} (not shown): ")
            _private(args.out)
            _write_private(args.out / "wifi.txt", password + "\n")
            save_fleet(args.fleet, replace(fleet, wifi_ssid=args.ssid))
            print(f"{args.fleet}: Wi-Fi {args.ssid}; its password in {args.out / 'wifi.txt'} (mode 600)")
        elif args.command == "password":
            path = args.out / "passwords" / f"{_check_name('user', args.user)}.txt"
            if not path.exists():
                raise FleetError(f"no password for {args.user} in {args.out}: run 'credentials' first")
            print(path.read_text(encoding="utf-8").strip())
        else:
            passwd, acl = write_credentials(fleet, args.out, args.broker_dir)
            extra = f" (and passwd, acl in {args.broker_dir})" if args.broker_dir else ""
            print(f"wrote {passwd}, {acl}, {args.out / 'gateway-devices.toml'} and {args.out / 'passwords'}/{extra};")
            print("passwords are not shown: 'edgekit-fleet password USER' prints one (keep them out of git)")
    except (FleetError, OSError, KeyError, tomllib.TOMLDecodeError) as exc:
        print(f"edgekit-fleet: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
