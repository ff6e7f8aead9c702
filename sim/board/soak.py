"""Fleet soak: the real firmware on many simulated boards for days of virtual time, through a real Mosquitto
and the real gateway into a real InfluxDB 1.x, under a plan of faults (a half-open broker, NTP blocked, a
lying NTP server, a broker outage, brown-outs, watchdog resets, power losses, a low battery, a small flash
log), with an exact account of every reading.

The ground truth is the simulated world's, never the firmware's: the scenario's ``tag_pin`` ADC reads the
world's measurement counter (``sim/board/mpy/_simboard.py`` ``tag``), so every reading carries in its
``light_mv`` value which measurement it is, and the world logs the true time and the sensor values of each
measurement. A reading in InfluxDB is matched to its measurement by that number, not by the identity the
firmware gave it. What did not arrive is looked up in the hardware: the RTC memory a power loss wiped, the
RTC memory and flash log left at the end (still buffered), a wake cut before it stored its reading; the
rest must equal what the boards counted as dropped in their statuses (through the gateway, in InfluxDB).

``bench/soak_fleet.py`` runs the full size and prints the tables; ``tests/firmware/test_soak.py`` runs a
small plan and asserts the account exactly.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import math
import os
import random
import shutil
import socket
import struct
import subprocess
import threading
import time
import urllib.parse
import urllib.request
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from gateway.app import Gateway
from gateway.config import parse_config
from sim.board.launcher import native_micropython
from sim.board.proxy import BrokerProxy
from sim.board.runner import (
    REPO,
    BoardSpec,
    Fleet,
    Hook,
    NtpFault,
    NtpServer,
    PowerLoss,
    Reset,
    WakeRecord,
    find_micropython,
    host_ms,
)

__all__ = [
    "BoardAccount",
    "BrokerControl",
    "Event",
    "GatewayThread",
    "Lie",
    "Mosquitto",
    "Plan",
    "Soak",
    "SoakResult",
    "TimeSources",
    "ci_plan",
    "report",
]

MIN = 60_000
HOUR = 60 * MIN
DAY = 24 * HOUR
TAG_PIN = 34  # light_mv: the 4th metric (temp_c, rh, batt_mv, light_mv with the default `adc` list)
TAG_INDEX = 3
ABSENT = -(2**31)
ASSOC_S = 2.0  # Wi-Fi association and DHCP on a real access point, which the host cannot show (docs/firmware.md)
# docs/firmware.md "Power budget": a normal day is 96 publishing wakes of ~2.5 s radio on a board (288 wakes
# of 300 s, K=3), NTP blocked adds ~6 attempts of 2 x ntp_timeout_s
PUBLISH_RADIO_S = 2.5
NTP_BLOCKED_RADIO_S = 6 * 4.0
VALUES: dict[str, Any] = {
    "temp_c": {"base": 21.0, "amp": 3.0, "period_s": 5400},
    "rh": {"base": 45.0, "amp": 8.0, "period_s": 3600},
    "adc35": 1.95,  # battery 3.9 V through the 2:1 divider
}


# -- the plan ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Lie:
    """What the lying NTP server answers between start_h and end_h (hours from the start): an NtpFault kind
    ("offset" with offset_ms, or a malformed one), on every `every`-th request."""

    start_h: float
    end_h: float
    kind: str
    offset_ms: int = 0
    every: int = 1


@dataclass(frozen=True)
class Event:
    """A brown-out, watchdog reset or power loss of board `board` (index) at its first wake from at_h on,
    `after_ms` (real time) into that wake. rtc: "keep" or "zero" (a reset that clears the RTC)."""

    board: int
    at_h: float
    after_ms: int = 20
    rtc: str = "keep"
    off_s: int = 60
    radio: bool = False
    """A power loss `after_ms` after the radio came on (while connected)."""


@dataclass(frozen=True)
class Plan:
    boards: int
    days: float
    sleep_s: int = 300
    drain_h: float = 2.0
    """Fault-free hours after `days`: the boards deliver their backlog (measurements then count too)."""
    half_open_h: tuple[float, float] | None = None
    ntp_blocked_h: tuple[float, float] | None = None
    broker_down_h: tuple[float, float] | None = None
    liars: tuple[int, ...] = ()
    """Boards (indices) whose NTP server is the lying one."""
    lies: tuple[Lie, ...] = ()
    brownouts: tuple[Event, ...] = ()
    watchdogs: tuple[Event, ...] = ()
    power_losses: tuple[Event, ...] = ()
    low_battery: tuple[tuple[int, float, float], ...] = ()
    """(board, from_h, to_h): the battery reads 3.1 V (below batt_low_mv 3300)."""
    buffers: tuple[tuple[int, int, int], ...] = ()
    """(board, rtc_mem bytes, log_max): a small buffer, so an outage overflows it."""
    config: tuple[tuple[str, Any], ...] = ()
    """Firmware settings for every board (over firmware/config.py's defaults)."""
    seed: int = 1

    @property
    def hours(self) -> float:
        return self.days * 24 + self.drain_h

    @staticmethod
    def standard(boards: int = 20, days: float = 7, seed: int = 1) -> Plan:
        """The issue's soak: a half-open broker for an hour, NTP blocked for a day, one lying NTP server, a
        broker outage of six hours, brown-outs (two of them clearing the RTC), watchdog resets and power
        losses (one while NTP is blocked, one in the outage, one mid-publish), a low battery, a flash log
        too small for the outage. Placed at fixed fractions of the run, so fewer days keep every fault."""
        f = days * 24 / 168  # 1.0 for a week
        n = boards

        def b(i: int) -> int:
            return i % n

        return Plan(
            boards=boards,
            days=days,
            half_open_h=(26 * f, 26 * f + 1),
            ntp_blocked_h=(40 * f, 40 * f + min(24, 24 * f)),  # a day
            broker_down_h=(100 * f, 100 * f + min(6, 12 * f)),
            liars=tuple(sorted({b(4), b(9), b(14), b(19)})),
            lies=(
                Lie(8 * f, 8 * f + 2, "offset", offset_ms=86_400_000),  # a day ahead for two hours
                Lie(80 * f, 80 * f + min(12, 10 * f), "offset", offset_ms=20_000, every=4),  # +20 s now and then
                Lie(120 * f, 120 * f + 2, "li3", every=3),
                Lie(122 * f, 122 * f + 2, "stratum0", every=2),
            ),
            brownouts=(
                Event(b(1), 30 * f, after_ms=10),
                Event(b(6), 60 * f, after_ms=10, rtc="zero"),  # clears the RTC while NTP is blocked
                Event(b(11), 140 * f, after_ms=10, rtc="zero"),
            ),
            watchdogs=(Event(b(2), 15 * f, after_ms=150), Event(b(12), 110 * f, after_ms=150)),
            power_losses=(
                Event(b(3), 20 * f, after_ms=30, off_s=600),
                Event(b(7), 50 * f, after_ms=30, off_s=1800),  # while NTP is blocked: a fresh era without NTP
                Event(b(8), 103 * f, after_ms=30, off_s=300),  # in the broker outage: its ring is lost
                Event(b(13), 130 * f, after_ms=0, radio=True),  # in a publishing wake
            ),
            low_battery=((b(5), 70 * f, 70 * f + 6),),
            buffers=((b(8), 2048, 8), (b(10), 2048, 8)),  # 57 in RTC memory + 8 on flash: 5.4 h at 300 s
            seed=seed,
        )


def ci_plan() -> Plan:
    """A small plan for `make test` (tests/firmware/test_soak.py): 3 boards for a day plus 3 hours to drain,
    20-minute sleeps, every fault of Plan.standard at least once (shorter), and the boards' network waits cut
    to what loopback needs."""
    return Plan(
        boards=3,
        days=1,
        sleep_s=1200,
        drain_h=3,
        half_open_h=(3, 5),
        ntp_blocked_h=(8, 13),
        broker_down_h=(15, 18),
        liars=(2,),
        lies=(
            Lie(-1, 1.5, "offset", offset_ms=86_400_000),  # at power-on: the era's first answer is a lie
            Lie(6, 7, "li3"),
            Lie(19, 23, "offset", offset_ms=20_000, every=4),
        ),
        brownouts=(Event(1, 10, after_ms=10, rtc="zero"),),  # while NTP is blocked
        watchdogs=(Event(2, 12, after_ms=40),),
        power_losses=(Event(0, 16, after_ms=30, off_s=600), Event(1, 20, after_ms=0, radio=True)),
        low_battery=((1, 5.5, 8),),
        buffers=((0, 400, 3),),  # 7 readings in RTC memory, 3 on flash: the broker outage overflows it
        config=(("net_timeout_s", 2), ("ntp_timeout_s", 1), ("wifi_timeout_s", 1)),
    )


class BrokerControl(Protocol):
    port: int

    def start(self) -> None: ...

    def stop(self) -> None: ...


class Mosquitto:
    """A Mosquitto of the soak's own on a free loopback port (persistent, so a restart keeps sessions)."""

    def __init__(self, workdir: Path, exe: str | None = None) -> None:
        self.exe = exe or shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.proc: subprocess.Popen[bytes] | None = None
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
            f"persistence true\npersistence_location {workdir}/\nautosave_interval 1\n"
            f"log_dest file {workdir}/mosquitto.log\nmax_inflight_messages 0\n"
            + ("user root\n" if os.geteuid() == 0 else "")
        )

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.exe, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not start on {self.port}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


class GatewayThread:
    """The gateway on its own event loop in a thread (the fleet runner blocks the caller's thread), on the
    fleet's virtual clock (``now_ms``; None: the host's), writing to InfluxDB 1.x. Also the firmware tests'
    gateway (tests/firmware/test_fleet.py)."""

    def __init__(
        self,
        broker_port: int,
        influx_url: str,
        database: str,
        state_dir: Path,
        now_ms: Callable[[], int] | None,
        *,
        client_id: str = "soak-gateway",
        flush_interval_ms: int = 200,
    ) -> None:
        self.cfg = parse_config(
            {
                "mqtt": {"url": f"mqtt://127.0.0.1:{broker_port}", "client_id": client_id,
                         "reconnect_min_s": 0.1, "reconnect_max_s": 1.0},
                "influx": {"target": "v1", "url": influx_url, "database": database,
                           "flush_interval_ms": flush_interval_ms},
                "state": {"dir": str(state_dir)},
            },
            env={},
        )  # fmt: skip
        self.now_ms = now_ms
        self.gw: Gateway | None = None
        self.loop = asyncio.new_event_loop()
        self.stop_event = asyncio.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not (self.gw and self.gw.ingest_stats.connected) and time.monotonic() < deadline:
            time.sleep(0.02)
        if not (self.gw and self.gw.ingest_stats.connected):
            raise RuntimeError("the gateway did not connect to the broker")

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.gw = Gateway(self.cfg) if self.now_ms is None else Gateway(self.cfg, now_ms=self.now_ms)
        self.loop.run_until_complete(self.gw.run(self.stop_event))

    def settle(self, quiet_s: float = 1.0, limit_s: float = 60) -> None:
        """Wait until the gateway has taken no message for quiet_s (at most limit_s)."""
        assert self.gw is not None
        t0, n = time.monotonic(), -1
        while time.monotonic() - t0 < limit_s:
            m = self.gw.pipeline.stats.messages
            if m == n and self.gw.ingest_stats.queued == 0:
                return
            n = m
            time.sleep(quiet_s)

    def close(self) -> Gateway:
        self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(120)
        if self.thread.is_alive() or self.gw is None:
            raise RuntimeError("the gateway did not stop")
        return self.gw


def influx_rows(url: str, db: str, q: str) -> list[dict[str, Any]]:
    """InfluxQL through POST /query (epoch ms): one dict per row, GROUP BY tags included."""
    data = urllib.parse.urlencode({"db": db, "q": q, "epoch": "ms"}).encode()
    with urllib.request.urlopen(f"{url}/query", data=data, timeout=120) as resp:
        payload = json.loads(resp.read())
    rows: list[dict[str, Any]] = []
    for result in payload.get("results", []):
        if "error" in result:
            raise RuntimeError(f"InfluxDB error for {q!r}: {result['error']}")
        for series in result.get("series", []):
            tags = series.get("tags") or {}
            for values in series.get("values", []):
                rows.append({**tags, **dict(zip(series["columns"], values, strict=True))})
    return rows


# -- the hardware, as the world sees it ---------------------------------------------------------------------


def ring_records(raw: bytes | None) -> list[tuple[int, ...]]:
    """The records in an RTC-memory image (firmware/state.py): (boot, seq, t, q, *values) each. The
    header's first 12 bytes say where the ring starts, its head, count and capacity, and the record size."""
    if not raw or len(raw) < 12:
        return []
    _, _, rec, hdr, head, count, cap = struct.unpack_from("<HBBHHHH", raw, 0)
    nm = (rec - 17) // 4
    fmt = "<IIqB" + "i" * nm
    out = []
    for k in range(min(count, cap)):
        o = hdr + ((head + k) % cap) * rec
        if o + rec <= len(raw):
            out.append(struct.unpack_from(fmt, raw, o))
    return out


def flash_records(flash: Path) -> list[tuple[int, ...]]:
    """The records still pending in a board's flash log (firmware/buffer.py): buf.ack says which log and how
    far it was acknowledged; each slot is a record and its CRC32 (a damaged slot is skipped)."""
    try:
        p = (flash / "buf.ack").read_text().split()
        gen, off, rec = int(p[0]), int(p[1]), int(p[2])
        data = (flash / f"buf.{gen}.log").read_bytes()
    except (OSError, ValueError, IndexError):
        return []
    nm = (rec - 17) // 4
    fmt = "<IIqB" + "i" * nm
    out = []
    for o in range(off, len(data) - rec - 3, rec + 4):
        body = data[o : o + rec]
        if struct.unpack_from("<I", data, o + rec)[0] == zlib.crc32(body) & 0xFFFFFFFF:
            out.append(struct.unpack_from(fmt, body, 0))
    return out


def tags_of(records: Sequence[tuple[int, ...]]) -> set[int]:
    """The world's measurement numbers in records (the tag ADC's value)."""
    return {int(r[4 + TAG_INDEX]) for r in records if len(r) > 4 + TAG_INDEX and r[4 + TAG_INDEX] != ABSENT}


# -- the clock error bound -----------------------------------------------------------------------------------

TOL_MS = 2_000  # firmware/timebase.py TOL_MS: NTP error and reading latency
RATE_CHANGE = 0.015  # firmware/timebase.py MAX_CHANGE_PPM: how far an RC clock's rate can move (1.5 %)
GW_RTT_MS = 1_500  # half the longest wait for the gateway's answer (3 s): its time is somewhere in the round trip
MAX_AGE_MS = 3_600_000  # clock_max_age_s (firmware default)
LIE_REACH_MS = 2 * HOUR  # a lie taken into the points moves the readings around it, until outweighed


@dataclass
class TimeSources:
    """What the world knows about when a board was told the time, per clock era of its RTC."""

    edges: list[int] = field(default_factory=list)
    """Virtual times at which the board's RTC restarted (power loss, a reset that cleared it)."""
    ntp: list[int] = field(default_factory=list)
    """True NTP answers the board's server sent it."""
    gateway: list[int] = field(default_factory=list)
    """Time replies of the gateway that reached it (on its cmd topic; the gateway's clock is the true one)."""
    lies: list[tuple[int, int]] = field(default_factory=list)
    """(virtual ms, offset ms) of the well-formed wrong answers its server sent it."""

    def era(self, t: int) -> int:
        return bisect.bisect_right(self.edges, t)

    def _nearest(self, xs: list[int], t: int, until: int) -> int | None:
        e = self.era(t)
        best = None
        i = bisect.bisect_left(xs, t)
        for j in (i - 1, i):
            if 0 <= j < len(xs) and self.era(xs[j]) == e and xs[j] <= until:
                d = abs(xs[j] - t)
                best = d if best is None or d < best else best
        return best

    def ntp_distance(self, t: int, sent: int) -> int | None:
        return self._nearest(self.ntp, t, sent)

    def bound(self, t: int, q: str, sent: int) -> int | None:
        """The documented bound (docs/firmware.md "Clock error bound") for a reading of quality q taken at
        true time t and first sent at `sent`: TOL_MS + 1.5 % of the time to the nearest true answer the board
        had got by then in the same clock era (NTP; for a `u` reading of an era without NTP by then, the
        gateway's, + half the round trip), + the largest lie it was told within LIE_REACH_MS that the sync
        check could take (a lie beyond the check's reach, e.g. a day, must never be taken). None when the era
        had no true time by then: no reading of it may arrive."""
        out = []
        dn = self._nearest(self.ntp, t, sent)
        if dn is not None:
            out.append(TOL_MS + int(RATE_CHANGE * dn))
        # the gateway's time times the readings of an era without NTP; an NTP answer overrules it (so a
        # reading sent once the era has NTP time is held to that, docs/firmware.md)
        dg = self._nearest(self.gateway, t, sent) if q == "u" and dn is None else None
        if dg is not None:
            out.append(TOL_MS + GW_RTT_MS + int(RATE_CHANGE * dg))
        if not out:
            return None
        e = self.era(t)
        lie = max((abs(o) for v, o in self.lies if abs(v - t) <= LIE_REACH_MS and self.era(v) == e
                   and abs(o) <= TOL_MS + RATE_CHANGE * MAX_AGE_MS), default=0)  # fmt: skip
        return min(out) + lie


# -- the account ---------------------------------------------------------------------------------------------


@dataclass
class Measurement:
    n: int
    vt: int
    temp_c: float | None
    wake: int  # index into the fleet's wakes


@dataclass
class BoardAccount:
    name: str
    drift_ppm: int
    wander_ppm: int
    publish_every: int = 3
    taken: int = 0
    arrived: int = 0
    duplicated: list[int] = field(default_factory=list)
    phantom: list[int] = field(default_factory=list)
    wrong_value: list[int] = field(default_factory=list)
    destroyed: int = 0
    """In RTC memory when the power was lost (not yet on flash nor acknowledged)."""
    cut: int = 0
    """Measured in a wake that a power loss or reset cut short, before the reading was stored."""
    buffered: int = 0
    """Still in RTC memory or on flash at the end."""
    dropped: int = 0
    """Not arrived and none of the above: what the board must have counted."""
    arrived_unacked: int = 0
    """Arrived, but every copy went out on a connection gone half-open (the broker got it, its PUBACK never
    reached the board), and the board no longer holds it: its overflow policy dropped it (and counted it)."""
    reported_dropped: int = 0
    reported_untimed: int = 0
    errors: dict[str, list[int]] = field(default_factory=dict)
    """Quality -> signed t - true time (ms) of each reading that arrived."""
    bounds: dict[str, list[int]] = field(default_factory=dict)
    """Quality -> the documented bound of each reading that arrived (ms, from the world's time sources)."""
    over_bound: list[tuple[int, str, int, int]] = field(default_factory=list)
    mislabelled: list[tuple[int, str, int | None]] = field(default_factory=list)
    wakes: int = 0
    radio_wakes: int = 0
    radio_ms: int = 0
    awake_ms: int = 0
    radio_day_ms: list[int] = field(default_factory=list)
    radio_day_wakes: list[int] = field(default_factory=list)
    wakes_day: list[int] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    boots: Counter[str] = field(default_factory=Counter)
    injected: Counter[str] = field(default_factory=Counter)
    errors_logged: int = 0
    longest_wake_ms: int = 0

    @property
    def unexplained(self) -> int:
        """Readings the board counted as dropped that the world cannot find dropped (or the other way)."""
        return self.reported_dropped - self.dropped - self.arrived_unacked

    def budget_s(self) -> float:
        """The documented radio-on time of a day for this board (docs/firmware.md "Power budget"): 2.5 s per
        publishing wake (every publish_every-th of the most wakes it had in a day: an RC clock that runs fast
        wakes more often) plus the NTP-blocked allowance."""
        per_day = max(self.wakes_day) if self.wakes_day else 288
        return PUBLISH_RADIO_S * per_day / self.publish_every + NTP_BLOCKED_RADIO_S


@dataclass
class SoakResult:
    plan: Plan
    boards: list[BoardAccount]
    wall_s: float
    wakes: int
    rows: int
    dead_letters: dict[str, int]
    gateway: dict[str, Any]
    violations: list[str]
    proxy: dict[str, int]
    ntp: dict[str, int]


def _boot_cause(p: list[str]) -> str:
    """'EK boot N cause C rtcmem OK brownout B' -> a name."""
    d = dict(zip(p[1::2], p[2::2], strict=False))
    if d.get("brownout") == "True":
        return "brownout"
    return {"1": "power-on", "2": "reset", "3": "watchdog", "4": "deepsleep", "5": "soft"}.get(d.get("cause", ""), "?")


class Soak:
    """Set up with a plan and the services, then `run()`."""

    def __init__(
        self,
        root: Path,
        plan: Plan,
        broker: BrokerControl,
        influx_url: str,
        database: str,
        *,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.root = Path(root)
        self.plan = plan
        self.broker = broker
        self.influx_url = influx_url
        self.database = database
        self.progress = progress
        rnd = random.Random(plan.seed)
        self.start = host_ms() - int(plan.hours * HOUR) - 10 * MIN  # the run lies in the past
        self.proxy = BrokerProxy(broker.port, clock=lambda: self.fleet.vt())
        self.specs = []
        bufs = {i: (mem, lm) for i, mem, lm in plan.buffers}
        for i in range(plan.boards):
            cfg: dict[str, Any] = {"site": "soak", "broker": "127.0.0.1", "port": self.proxy.port, "wifi_ssid": "sim",
                                   "sleep_s": plan.sleep_s, **dict(plan.config)}  # fmt: skip
            if i in bufs:
                cfg["rtc_mem"], cfg["log_max"] = bufs[i]
            scenario: dict[str, Any] = {
                "values": {**VALUES, "temp_c": {**VALUES["temp_c"], "base": 18.0 + i % 7}},
                "tag_pin": TAG_PIN,
            }
            for bi, a, b in plan.low_battery:
                if bi == i:
                    scenario["values"]["adc35"] = {
                        "base": 1.95,
                        "steps": [[self.at(a), 1.55], [self.at(b), 1.95]],
                    }
            drift = rnd.choice([1, -1]) * rnd.randint(6_000, 50_000)  # an RC oscillator: 0.6-5 %
            self.specs.append(
                BoardSpec(
                    f"sk-{i + 1:02d}",
                    cfg,
                    scenario,
                    drift_ppm=drift,
                    wander_ppm=rnd.randint(2_000, 5_000),
                    wander_period_s=rnd.choice([4, 6, 8, 12, 24]) * 3600,
                    stagger_ms=i * plan.sleep_s * 1000 // max(1, plan.boards) + rnd.randint(0, 999),
                )
            )
        # the same MicroPython, started without a CPython interpreter around it (sim/board/launcher.py): tens of
        # thousands of wakes ($EDGEKIT_MICROPYTHON, a binary of one's own, wins)
        native = None
        if not os.environ.get("EDGEKIT_MICROPYTHON") and find_micropython():
            native = native_micropython(REPO / ".run" / "micropython-native")
        self.fleet = Fleet(self.root / "fleet", self.specs, start_vt=self.start, heap="112K", wdt_ms=45_000,
                           micropython=native, compiled_shims=True)  # fmt: skip
        self.cut_images: dict[int, set[int]] = {}
        """Wake index -> the measurement numbers in RTC memory and on flash right after a reset cut it."""
        self.gateway: GatewayThread | None = None
        self.ntp_of: dict[str, NtpServer] = {}
        self._rsts: list[Reset] = []
        self._linked: set[int] = set()
        self.rtc_restarts: dict[str, list[int]] = {}
        self.resets_done: dict[str, list[Reset]] = {}
        self.root.mkdir(parents=True, exist_ok=True)
        self._wake_log = (self.root / "wakes.log").open("w")
        self._next_report = self.start
        self._t0 = time.monotonic()

    def at(self, h: float) -> int:
        return self.start + int(h * HOUR)

    def name(self, i: int) -> str:
        return self.specs[i].name

    def _faults(self) -> tuple[list[Hook], list[PowerLoss], list[Reset]]:
        p = self.plan
        hooks: list[Hook] = []
        if p.half_open_h:  # the first half with the board's messages arriving and their PUBACKs lost, then silent
            a, b = p.half_open_h
            hooks += [Hook(self.at(a), lambda f: setattr(self.proxy, "half_open", "acks")),
                      Hook(self.at((a + b) / 2), lambda f: setattr(self.proxy, "half_open", "silent")),
                      Hook(self.at(b), lambda f: setattr(self.proxy, "half_open", None))]  # fmt: skip
        if p.broker_down_h:
            a, b = p.broker_down_h
            hooks += [Hook(self.at(a), lambda f: self.broker.stop()), Hook(self.at(b), lambda f: self.broker.start())]
        cuts = [
            PowerLoss(self.name(e.board), self.at(e.at_h), e.after_ms, off_ms=e.off_s * 1000, after_radio=e.radio)
            for e in p.power_losses
        ]
        rsts = []
        for cause, events in (("brownout", p.brownouts), ("wdt", p.watchdogs)):
            for e in events:
                at = self.at(e.at_h)
                rsts.append(Reset(self.name(e.board), at, e.after_ms, cause=cause, rtc=e.rtc, off_ms=e.off_s * 1000))
        self._rsts = rsts
        return hooks, cuts, rsts

    def _on_wake(self, w: WakeRecord) -> None:
        h = (w.start_vt - self.start) / HOUR
        self._wake_log.write(f"=== {w.board} {w.start_vt} {w.end_vt} {w.outcome} {h:.3f} h\n")
        self._wake_log.write(w.output)
        self._wake_log.write("".join(f"  | {x}\n" for x in w.truth))
        if w.outcome == "power_loss":  # the RTC restarts: a new clock era
            self.rtc_restarts.setdefault(w.board, []).append(w.end_vt)
        elif w.outcome == "reset":
            r = next(x for x in self._rsts if x.board == w.board and x.done and id(x) not in self._linked)
            self._linked.add(id(r))
            self.resets_done.setdefault(w.board, []).append(r)
            if r.rtc != "keep":
                self.rtc_restarts.setdefault(w.board, []).append(w.end_vt)
        if w.outcome != "sleep":  # what the cut left stored: RTC memory (unless the power went) and flash
            p = self.fleet.hwdir(w.board) / "rtcmem.bin"
            kept = tags_of(flash_records(self.fleet.flash(w.board)))
            if p.exists():
                kept |= tags_of(ring_records(p.read_bytes()))
            self.cut_images[len(self.fleet.wakes) - 1] = kept
        if self.progress is not None and w.end_vt >= self._next_report:
            h = (w.end_vt - self.start) / HOUR
            self.progress(f"  {h:6.1f} h virtual, {len(self.fleet.wakes)} wakes, {time.monotonic() - self._t0:.0f} s")
            self._next_report += 6 * HOUR

    def run(self) -> SoakResult:
        p = self.plan
        fl = self.fleet
        # each board asks an SNTP server of its own (so the world knows which answers each board got); the
        # boards in `liars` ask copies of the one lying server
        blocked = (
            [NtpFault(self.at(p.ntp_blocked_h[0]), self.at(p.ntp_blocked_h[1]), "drop")] if p.ntp_blocked_h else []
        )
        for i, spec in enumerate(self.specs):
            lies = [NtpFault(self.at(x.start_h), self.at(x.end_h), x.kind, offset_ms=x.offset_ms, every=x.every)
                    for x in p.lies] if i in p.liars else []  # fmt: skip
            port = fl.add_ntp([replace(f) for f in blocked] + lies)
            spec.config["ntp_port"] = port
            self.ntp_of[spec.name] = fl.ntp_extra[-1]
        fl.prepare()
        hooks, cuts, rsts = self._faults()
        self.gateway = GatewayThread(self.broker.port, self.influx_url, self.database, self.root / "gateway", fl.vt)
        self._t0 = time.monotonic()
        try:
            fl.run(self.at(p.hours), hooks=hooks, power_losses=cuts, resets=rsts, on_wake=self._on_wake)
            wall = time.monotonic() - self._t0
            if p.broker_down_h and self.broker_down():
                self.broker.start()
            self.gateway.settle()
        finally:
            gw = self.gateway.close()
            fl.stop_ntp()
            self.proxy.close()
            self._wake_log.close()
        return self._account(gw, wall, cuts, rsts)

    def broker_down(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.broker.port), timeout=0.5).close()
            return False
        except OSError:
            return True

    # -- the account ------------------------------------------------------------------------------------

    def _account(self, gw: Gateway, wall: float, cuts: list[PowerLoss], rsts: list[Reset]) -> SoakResult:
        p, fl = self.plan, self.fleet
        violations: list[str] = []
        rows = influx_rows(self.influx_url, self.database,
                           'SELECT "device", "boot", "seq", "q", "light_mv", "temp_c" FROM "reading"')  # fmt: skip
        statuses = influx_rows(self.influx_url, self.database,
                               'SELECT "device", "state", "dropped", "untimed" FROM "device_status"')  # fmt: skip
        dead = influx_rows(self.influx_url, self.database, 'SELECT "reason", "device", "detail" FROM "dead_letter"')
        by_dev: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            by_dev.setdefault(r["device"], []).append(r)
        st_dev: dict[str, list[dict[str, Any]]] = {}
        for r in sorted(statuses, key=lambda r: r["time"]):
            st_dev.setdefault(r["device"], []).append(r)
        end_day = self.at(p.days * 24)
        ndays = math.ceil(p.hours / 24)
        accounts = []
        for spec in self.specs:
            name = spec.name
            acc = BoardAccount(name, spec.drift_ppm, spec.wander_ppm, int(spec.config.get("publish_every", 3)))
            acc.radio_day_ms = [0] * ndays
            acc.radio_day_wakes = [0] * ndays
            acc.wakes_day = [0] * ndays
            srv = self.ntp_of[name]
            src = TimeSources(
                edges=sorted(self.rtc_restarts.get(name, [])),
                ntp=sorted(v for v, kind, _ in srv.log if not kind),
                gateway=sorted(v for c, topic, v in self.proxy.delivered if c == name and topic.endswith("/cmd")),
                lies=[(v, o) for v, kind, o in srv.log if kind == "offset"],
            )
            meas: dict[int, Measurement] = {}
            wiped: set[int] = set()
            cut_tags: set[int] = set()
            power_off: list[int] = []
            for wi, w in enumerate(fl.wakes):
                if w.board != name:
                    continue
                acc.wakes += 1
                acc.outcomes[w.outcome] += 1
                d = min(ndays - 1, (w.start_vt - self.start) // DAY)
                acc.wakes_day[d] += 1
                r_ms = w.radio_ms()
                acc.radio_ms += r_ms
                acc.radio_day_ms[d] += r_ms
                if any(x.startswith("radio on") for x in w.truth):
                    acc.radio_wakes += 1
                    acc.radio_day_wakes[d] += 1
                acc.awake_ms += w.end_vt - w.start_vt
                if w.outcome == "sleep":
                    acc.longest_wake_ms = max(acc.longest_wake_ms, w.end_vt - w.start_vt)
                acc.errors_logged += len(w.lines("error")) + w.output.count("Traceback")
                for b in w.lines("boot"):
                    acc.boots[_boot_cause(b)] += 1
                temp = None
                for ln in w.truth:
                    x = ln.split()
                    if x[0] == "meas":
                        temp = float(x[2])
                    elif x[0] == "tag":
                        meas[int(x[1])] = Measurement(int(x[1]), int(x[2]), temp, wi)
                        temp = None
                if w.outcome == "power_loss":
                    acc.injected["power loss"] += 1
                    power_off.append(w.end_vt)
                    wiped |= tags_of(ring_records(w.rtcmem_lost))
                if w.outcome != "sleep":  # a reading measured in the cut wake and stored nowhere: cut
                    kept = self.cut_images.get(wi, set()) | tags_of(ring_records(w.rtcmem_lost))
                    cut_tags |= {m.n for m in meas.values() if m.wake == wi and m.n not in kept}
            for rs in self.resets_done.get(name, []):
                acc.injected[f"{rs.cause} reset" + (" (RTC cleared)" if rs.rtc != "keep" else "")] += 1
            acc.taken = len(meas)
            # when each reading first left the board (the proxy saw it; it keeps that time from then on)
            first_sent: dict[int, int] = {}
            unacked: dict[int, bool] = {}  # every copy sent on a stalled connection
            for c, topic, v, payload, stalled in self.proxy.published:
                if c == name and topic.endswith("/readings"):
                    for rd in json.loads(payload).get("r", []):
                        tag = rd.get("m", {}).get("light_mv")
                        if isinstance(tag, int):
                            first_sent.setdefault(tag, v)
                            unacked[tag] = unacked.get(tag, True) and stalled
            # what arrived, matched by the world's number
            seen: Counter[int] = Counter()
            for r in by_dev.get(name, []):
                n = r.get("light_mv")
                if n is None or int(n) not in meas:
                    acc.phantom.append(int(n) if n is not None else -1)
                    continue
                n = int(n)
                seen[n] += 1
                m = meas[n]
                if m.temp_c is not None and r.get("temp_c") is not None and abs(float(r["temp_c"]) - m.temp_c) > 0.02:
                    acc.wrong_value.append(n)
                err = int(r["time"]) - m.vt
                q = str(r["q"])
                acc.errors.setdefault(q, []).append(err)
                sent = first_sent.get(n, int(r["time"]))
                bound = src.bound(m.vt, q, sent)
                acc.bounds.setdefault(q, []).append(bound or 0)
                if bound is None or abs(err) > bound:
                    acc.over_bound.append((n, q, err, bound or 0))
                dn = src.ntp_distance(m.vt, sent)
                if q in ("s", "c") and (dn is None or dn > MAX_AGE_MS + 5 * MIN):
                    acc.mislabelled.append((n, q, dn))
            acc.duplicated = sorted(n for n, k in seen.items() if k > 1)
            acc.arrived = len(seen)
            mem = fl.hwdir(name) / "rtcmem.bin"
            still = tags_of(ring_records(mem.read_bytes() if mem.exists() else None)) | tags_of(
                flash_records(fl.flash(name))
            )
            acc.arrived_unacked = sum(1 for n in seen if unacked.get(n) and n not in still and n not in wiped)
            for n in meas:
                if n in seen:
                    continue
                if n in wiped:
                    acc.destroyed += 1
                elif n in cut_tags:
                    acc.cut += 1
                elif n in still:
                    acc.buffered += 1
                else:
                    acc.dropped += 1
            # what the board counted: its counters live in RTC memory and start again at a power-on, so
            # sum the largest value reported between two power losses
            seg_drop: dict[int, int] = {}
            seg_untimed: dict[int, int] = {}
            for s in st_dev.get(name, []):
                k = bisect.bisect_right(power_off, s["time"])
                seg_drop[k] = max(seg_drop.get(k, 0), int(s.get("dropped") or 0))
                seg_untimed[k] = max(seg_untimed.get(k, 0), int(s.get("untimed") or 0))
            acc.reported_dropped = sum(seg_drop.values())
            acc.reported_untimed = sum(seg_untimed.values())
            accounts.append(acc)

            # what must hold
            if acc.duplicated:
                violations.append(f"{name}: arrived more than once: {acc.duplicated[:10]}")
            if acc.phantom:
                violations.append(f"{name}: readings the world never measured: {acc.phantom[:10]}")
            if acc.wrong_value:
                violations.append(f"{name}: readings carrying another measurement's values: {acc.wrong_value[:10]}")
            if acc.dropped + acc.arrived_unacked != acc.reported_dropped:
                violations.append(
                    f"{name}: {acc.dropped} readings neither arrived nor were lost to a power loss or still buffered"
                    f" (and {acc.arrived_unacked} arrived unacknowledged and left the board),"
                    f" the board counted {acc.reported_dropped} dropped"
                )
            if acc.over_bound:
                worst = sorted(acc.over_bound, key=lambda x: -abs(x[2]))[:4]
                violations.append(f"{name}: {len(acc.over_bound)} readings outside the clock error bound"
                                  f" (n, q, error ms, bound ms): {worst}")  # fmt: skip
            if acc.mislabelled:
                violations.append(f"{name}: {len(acc.mislabelled)} readings marked s/c without an NTP answer within"
                                  f" clock_max_age_s (n, q, ms to the nearest): {acc.mislabelled[:4]}")  # fmt: skip
            bad = {k: v for k, v in acc.outcomes.items() if k in ("watchdog", "crash")}
            if bad:
                violations.append(f"{name}: wakes that did not end in deep sleep: {dict(bad)}")
            if acc.errors_logged:
                violations.append(f"{name}: {acc.errors_logged} errors logged in wakes")
            expected_boots = 1 + sum(acc.injected.values())
            if sum(acc.boots.values()) != expected_boots:
                n_boots = sum(acc.boots.values())
                violations.append(f"{name}: {n_boots} boots, {expected_boots} expected: {dict(acc.boots)}")
            for d, ms in enumerate(acc.radio_day_ms):
                if self.at(d * 24) >= end_day:
                    break
                est = ms / 1000 + ASSOC_S * acc.radio_day_wakes[d]
                if est > acc.budget_s():
                    violations.append(f"{name}: day {d + 1}: radio on ~{est:.0f} s, budget {acc.budget_s():.0f} s")
        for cut in cuts:
            if not cut.done:
                h = (cut.at_vt - self.start) / HOUR
                violations.append(f"power loss of {cut.board} at {h:.1f} h never happened")
        for rst in rsts:
            if not rst.done:
                h = (rst.at_vt - self.start) / HOUR
                violations.append(f"{rst.cause} reset of {rst.board} at {h:.1f} h never happened")
        dl = Counter(str(r["reason"]) for r in dead)
        if dl:
            violations.append(f"dead letters: {dict(dl)}; e.g. {[r['detail'] for r in dead[:3]]}")
        if p.half_open_h and not self.proxy.stalls:
            violations.append("no connection went half-open: the fault was not exercised")
        lies = sum(1 for s in self.ntp_of.values() for _, kind, _ in s.log if kind)
        if p.lies and not lies:
            violations.append("the lying NTP server never lied to a board: the fault was not exercised")
        return SoakResult(
            plan=p,
            boards=accounts,
            wall_s=wall,
            wakes=len(fl.wakes),
            rows=len(rows),
            dead_letters=dict(dl),
            gateway=gw.pipeline.stats.as_dict() | {"connects": gw.ingest_stats.connects},
            violations=violations,
            proxy={"connections": self.proxy.connections, "stalled": self.proxy.stalls, "refused": self.proxy.refused},
            ntp={
                "answers": sum(len(s.log) for s in self.ntp_of.values()),
                "lies_told": lies,
                "requests": sum(s.requests for s in self.ntp_of.values()),
                "gateway_time_replies": sum(1 for _, topic, _ in self.proxy.delivered if topic.endswith("/cmd")),
            },
        )


# -- the report ---------------------------------------------------------------------------------------------


def _pct(xs: list[int], q: float) -> int:
    s = sorted(abs(x) for x in xs)
    return s[min(len(s) - 1, int(len(s) * q))] if s else 0


def _day_faults(p: Plan, d: int) -> str:
    """What the plan did on day d (0-based) of the run."""
    lo, hi = d * 24, (d + 1) * 24
    names = []
    for label, span in (("half-open broker", p.half_open_h), ("NTP blocked", p.ntp_blocked_h),
                        ("broker down", p.broker_down_h)):  # fmt: skip
        if span and span[0] < hi and span[1] > lo:
            names.append(f"{label} {max(lo, span[0]) - lo:g}-{min(hi, span[1]) - lo:g} h")
    names += [f"NTP lies ({x.kind})" for x in p.lies if x.start_h < hi and x.end_h > lo]
    names += ["low battery" for _, a, b in p.low_battery if a < hi and b > lo]
    for label, evs in (("brown-out", p.brownouts), ("watchdog", p.watchdogs), ("power loss", p.power_losses)):
        n = sum(1 for e in evs if lo <= e.at_h < hi)
        if n:
            names.append(f"{n} {label}")
    if d * 24 >= p.days * 24:
        names.append("drain")
    return ", ".join(names) or "normal"


def radio_days(res: SoakResult) -> list[str]:
    """Radio-on time per board and day: measured on the host (the network shim's radio on/off), and with
    ASSOC_S of Wi-Fi association and DHCP per radio wake added (what a board on a real access point spends),
    against the documented budget (docs/firmware.md "Power budget")."""
    p = res.plan
    ndays = math.ceil(p.hours / 24)
    out = ["radio on per board and day (median / max over the boards): host-measured s, with association"
           f" (+{ASSOC_S:g} s per radio wake), radio wakes; budget = the smallest of the boards' budgets",
           "day  radio s (host)   with assoc   radio wakes   budget  what happened"]  # fmt: skip
    for d in range(ndays):
        ms = sorted(a.radio_day_ms[d] / 1000 for a in res.boards)
        wk = sorted(a.radio_day_wakes[d] for a in res.boards)
        est = sorted(a.radio_day_ms[d] / 1000 + ASSOC_S * a.radio_day_wakes[d] for a in res.boards)
        hours = min(24.0, p.hours - d * 24)
        part = f" ({hours:g} h)" if hours < 24 else ""
        out.append(
            f"{d + 1:3d}  {ms[len(ms) // 2]:6.1f} / {ms[-1]:5.1f}  {est[len(est) // 2]:5.0f} / {est[-1]:4.0f}"
            f"  {wk[len(wk) // 2]:5d} / {wk[-1]:3d}  {min(a.budget_s() for a in res.boards):6.0f}  "
            f"{_day_faults(p, d)}{part}"
        )
    return out


def report(res: SoakResult) -> str:
    p = res.plan
    days = p.hours / 24
    out = [
        f"soak: {p.boards} boards x {p.days:g} days (+{p.drain_h:g} h to drain), {res.wakes} wakes in"
        f" {res.wall_s:.0f} s wall time ({res.wall_s / 60:.1f} min)",
        "",
        "board  RTC%   taken arrived lost-pwr cut buffered dropped(ovf/untimed) counted(+arrived-unacked)  dup  wakes"
        "  radio-wakes  radio s/day (+assoc) max-day budget  resets",
    ]
    tot: Counter[str] = Counter()
    for a in res.boards:
        rd = a.radio_ms / 1000 / days
        est = [ms / 1000 + ASSOC_S * w for ms, w in zip(a.radio_day_ms, a.radio_day_wakes, strict=True)]
        resets = ", ".join(f"{k} {v}" for k, v in sorted(a.injected.items())) or "-"
        out.append(
            f"{a.name}  {a.drift_ppm / 10000:+5.1f} {a.taken:7d} {a.arrived:7d} {a.destroyed:8d} {a.cut:3d}"
            f" {a.buffered:8d}"
            f" {a.dropped:7d}({a.reported_dropped - a.reported_untimed}/{a.reported_untimed})"
            f" {a.reported_dropped:7d} (+{a.arrived_unacked:2d})         {len(a.duplicated):4d} {a.wakes:6d}"
            f" {a.radio_wakes:11d}"
            f" {rd:8.1f} ({rd + ASSOC_S * a.radio_wakes / days:5.0f}) {max(est):7.0f} {a.budget_s():6.0f}  {resets}"
        )
        for k, v in (("taken", a.taken), ("arrived", a.arrived), ("destroyed", a.destroyed), ("cut", a.cut),
                     ("buffered", a.buffered), ("dropped", a.dropped), ("counted", a.reported_dropped),
                     ("unacked", a.arrived_unacked),
                     ("untimed", a.reported_untimed), ("wakes", a.wakes), ("radio_wakes", a.radio_wakes),
                     ("dup", len(a.duplicated))):  # fmt: skip
            tot[k] += v
    out.append(
        f"fleet  taken {tot['taken']}, arrived {tot['arrived']} (each once: {tot['dup'] == 0}), lost in power losses"
        f" {tot['destroyed']}, cut {tot['cut']}, still buffered {tot['buffered']}, dropped {tot['dropped']} (counted"
        f" {tot['counted']}: untimed {tot['untimed']}, and {tot['unacked']} that had arrived unacknowledged);"
        f" {tot['wakes']} wakes, {tot['radio_wakes']} with the radio"
    )
    out += ["", "event-time error |t - truth| per quality (all boards), against each reading's documented bound:",
            "q   readings     p50      p90      p99      max   bound p50/min   over   worst error/bound"]  # fmt: skip
    allq: dict[str, list[int]] = {}
    allb: dict[str, list[int]] = {}
    for a in res.boards:
        for q, xs in a.errors.items():
            allq.setdefault(q, []).extend(xs)
            allb.setdefault(q, []).extend(a.bounds.get(q, []))
    for q in sorted(allq):
        xs, bs = allq[q], allb[q]
        ratio = max((abs(x) / b if b else math.inf) for x, b in zip(xs, bs, strict=True))
        over = sum(1 for x, b in zip(xs, bs, strict=True) if not b or abs(x) > b)
        out.append(
            f"{q} {len(xs):10d} {_pct(xs, 0.5):6d}ms {_pct(xs, 0.9):6d}ms {_pct(xs, 0.99):6d}ms {_pct(xs, 1.0):6d}ms"
            f" {sorted(bs)[len(bs) // 2]:6d}/{min(bs):5d}ms {over:5d}   {ratio:.2f}"
        )
    out += ["", *radio_days(res)]
    out += ["", "per board, max |error| by quality (ms):"]
    for a in res.boards:
        qs = "  ".join(f"{q}: {len(xs)} max {_pct(xs, 1.0)}" for q, xs in sorted(a.errors.items()))
        boots = ", ".join(f"{k} {v}" for k, v in sorted(a.boots.items()))
        out.append(f"{a.name}  {qs}   boots: {boots}; longest wake {a.longest_wake_ms / 1000:.1f} s")
    out += [
        "",
        f"gateway: {res.gateway}",
        f"InfluxDB: {res.rows} reading rows; dead letters {res.dead_letters or 0}",
        f"proxy: {res.proxy}; NTP: {res.ntp}",
        "",
        ("OK: every reading arrived once within the bound, or is accounted for" if not res.violations else
         f"VIOLATIONS ({len(res.violations)}):"),
    ]  # fmt: skip
    out += [f"  {v}" for v in res.violations]
    return "\n".join(out)


def replace_plan(plan: Plan, **kw: Any) -> Plan:
    return replace(plan, **kw)
