"""The board's clock under the real MicroPython unix port, against NTP servers that lie or fall silent, an
RTC that runs like the ESP32's RC oscillator (percent, not ppm) and resets that rewind it while RTC memory
survives. Every message goes through the gateway's decoder (gateway.protocol.decode): a reading with an
impossible time would be dead-lettered there."""

from __future__ import annotations

import textwrap
from pathlib import Path

from helpers import influx_query
from services import Proc

from sim.board.runner import BoardSpec, Fleet, Hook, NtpFault, NtpServer, PowerLoss, Reset, host_ms
from sim.board.soak import GatewayThread

from .conftest import Broker, run_mpy
from .fitl import FW_GATEWAY, HOUR, MIN, VALUES, Run, config, past_start, ring_ids, run

# Event-time error bound for readings timed between two NTP syncs (interpolated on the RC clock): see
# docs/firmware.md "Clock error bound". Loopback NTP, so the round trip adds next to nothing here.
BOUND_MS = 1000


def errors(r: Run, board: str) -> list[tuple[int, str, int]]:
    """(seq, quality, |t - truth|) of every reading of the board that arrived."""
    truth = r.truth()
    out = []
    for k, rd in r.readings(board).items():
        if k in truth:
            out.append((rd.seq, rd.quality, abs(rd.t_ms - truth[k])))
    return out


# -- SNTP replies (defect 3) ------------------------------------------------------------------------

KINDS = ["good", "li3", "stratum0", "stratum16", "zero_tx", "bad_origin", "client", "era1"]


def test_sntp_rejects_unsynchronised_and_forged_replies(micropython: str, tmp_path: Path) -> None:
    """sntp.query against a server on loopback: a reply with leap indicator 3, stratum 0 or 16, a zero
    transmit time, an originate time that is not our request's, or a client's mode is refused (OSError);
    a good reply, including one after the NTP era rollover of 2036, gives the right time."""
    servers = []
    ports = {}
    try:
        for k in KINDS:
            if k == "good":
                faults: list[NtpFault] = []
            elif k == "era1":  # 2040-01-01: NTP seconds have wrapped past 2^32 (era 1)
                faults = [NtpFault(0, 2**62, "offset", offset_ms=2_208_988_800_000 - host_ms())]
            else:
                faults = [NtpFault(0, 2**62, k)]
            srv = NtpServer(host_ms, faults)
            ports[k] = srv.start()
            servers.append(srv)
        code = "import sntp\n" + "".join(
            textwrap.dedent(f"""
            try:
                r = sntp.query('127.0.0.1', {ports[k]}, 2)
                print('OK', '{k}', r[0] if isinstance(r, tuple) else r)
            except OSError as e:
                print('ERR', '{k}', e)
            """)
            for k in KINDS
        )
        res = run_mpy(micropython, code, tmp_path)
    finally:
        for srv in servers:
            srv.stop()
    assert res.returncode == 0, res.stdout + res.stderr
    got = {ln.split()[1]: ln.split() for ln in res.stdout.splitlines() if ln.startswith(("OK", "ERR"))}
    now = host_ms()
    assert got["good"][0] == "OK" and abs(int(got["good"][2]) - now) < 5000, got["good"]
    assert got["era1"][0] == "OK" and abs(int(got["era1"][2]) - 2_208_988_800_000) < 5000, got["era1"]
    for k in ("li3", "stratum0", "stratum16", "zero_tx", "bad_origin", "client"):
        assert got[k][0] == "ERR", f"a {k} reply was accepted: {got[k]}"


# -- status drift (defect 6) --------------------------------------------------------------------------


def test_status_drift_ppm_is_the_rtc_rate(micropython: str, broker: Broker, tmp_path: Path) -> None:
    """An RTC running 2 % fast (an RC oscillator) reports drift_ppm ~ +20000 in its status."""
    dur = 50 * MIN
    start = past_start(dur)
    spec = BoardSpec("clk-d", config(broker, publish_every=1, sync_every_s=600), {"values": VALUES}, drift_ppm=20000)
    r = run(tmp_path, broker, [spec], start, start + dur)
    st = [s for s in r.sub.status_json("clk-d") if "drift_ppm" in s]
    assert st, r.wakes[-1].output
    assert 19_000 <= st[-1]["drift_ppm"] <= 21_000, [s["drift_ppm"] for s in st]


# -- one lying NTP answer (defect 3) ------------------------------------------------------------------


def test_one_lying_ntp_answer_does_not_poison_the_clock(micropython: str, broker: Broker, tmp_path: Path) -> None:
    """A well-formed NTP reply one day ahead, once: the board must not adopt it. Every reading arrives
    (none dead-lettered), within the bound, and the drift estimate stays that of the RTC."""
    dur = 2 * HOUR
    start = past_start(dur)
    lie = NtpFault(start + 40 * MIN, start + 60 * MIN, "offset", offset_ms=86_400_000, limit=1)
    spec = BoardSpec("clk-l", config(broker, publish_every=1, sync_every_s=600), {"values": VALUES}, drift_ppm=20000)
    r = run(tmp_path, broker, [spec], start, start + dur, prepare=lambda f: f.ntp.faults.append(lie))
    assert lie.applied == 1, "the lying answer was never asked for"
    assert not r.rejected(), r.rejected()[:5]
    errs = errors(r, "clk-l")
    assert len(errs) >= 20
    worst = max(e for _, _, e in errs)
    assert worst <= BOUND_MS, sorted(errs, key=lambda x: -x[2])[:5]
    st = [s for s in r.sub.status_json("clk-l") if "drift_ppm" in s]
    assert 19_000 <= st[-1]["drift_ppm"] <= 21_000, [s["drift_ppm"] for s in st]


# -- RTC rewound, RTC memory kept (defect 4) -----------------------------------------------------------


def test_rtc_rewound_while_rtc_memory_survives(micropython: str, broker: Broker, tmp_path: Path) -> None:
    """A reset that restarts the RTC at 2000-01-01 but keeps RTC memory (which says 'synced'): no reading
    goes out with a year-2000 time (or marked 's' on one), the board notices and re-syncs, and the readings
    after the reset arrive with correct times."""
    dur = 2 * HOUR
    start = past_start(dur)
    spec = BoardSpec("clk-r", config(broker, sync_every_s=600), {"values": VALUES}, drift_ppm=20000)
    rst = Reset("clk-r", start + 41 * MIN, after_ms=5, cause="wdt", rtc="zero", rtcmem="keep")
    r = run(tmp_path, broker, [spec], start, start + dur, resets=[rst])
    assert rst.done
    assert not r.rejected(), r.rejected()[:5]
    after = [w for w in r.wakes if w.start_vt > rst.at_vt and w.board == "clk-r"]
    assert any(w.lines("ntp") for w in after), "no NTP sync after the RTC was rewound"
    truth = r.truth()
    late = [k for k in truth if truth[k] > rst.at_vt + 2 * MIN and truth[k] < start + dur - 20 * MIN]
    got = r.readings("clk-r")
    assert late and all(k in got for k in late), "readings after the rewind did not arrive"
    errs = errors(r, "clk-r")
    assert max(e for _, _, e in errs) <= BOUND_MS, sorted(errs, key=lambda x: -x[2])[:5]


# -- a reading that cannot be re-timed (defect 2) -------------------------------------------------------


def test_uncorrectable_readings_do_not_block_publishing(micropython: str, broker: Broker, tmp_path: Path) -> None:
    """Readings spilled to flash before any NTP sync, then a power loss: their clock era can never be
    corrected. They must not block the readings after them: those arrive, and every missing reading is
    either one the power loss destroyed (RTC memory) or counted in the status's `dropped`."""
    dur = 3 * HOUR
    start = past_start(dur)
    blocked = NtpFault(start - MIN, start + 90 * MIN, "drop")
    spec = BoardSpec("clk-u", config(broker, rtc_mem=400, publish_every=1), {"values": VALUES}, drift_ppm=20000)
    cut = PowerLoss("clk-u", start + 70 * MIN, after_ms=0, off_ms=2 * MIN)  # at the wake's start, on any machine
    r = run(tmp_path, broker, [spec], start, start + dur, power_losses=[cut],
            prepare=lambda f: f.ntp.faults.append(blocked))  # fmt: skip
    assert cut.done
    assert not r.rejected(), r.rejected()[:5]
    truth = r.truth()
    got = r.readings("clk-u")
    recent = [k for k, t in truth.items() if start + 100 * MIN < t < start + dur - 20 * MIN]
    assert recent and all(k in got for k in recent), f"{sum(k in got for k in recent)} of {len(recent)} arrived"
    lost_wake = next(w for w in r.wakes if w.outcome == "power_loss")
    destroyed = ring_ids(lost_wake.rtcmem_lost or b"")
    missing = {k for k, t in truth.items() if t < start + dur - 20 * MIN and k not in got}
    dropped = r.sub.status_json("clk-u")[-1]["dropped"]
    unexplained = {k for k in missing if (k[1], k[2]) not in destroyed}
    assert len(unexplained) <= dropped, (len(unexplained), dropped)
    assert dropped >= 1  # the uncorrectable era was counted, not silently kept or silently lost


# -- NTP unreachable (defect 5) -----------------------------------------------------------------------


def test_ntp_blocked_backs_off_the_radio(micropython: str, broker: Broker, tmp_path: Path) -> None:
    """UDP 123 blocked from power-on for 6 hours: the board keeps its publishing schedule (every
    publish_every-th wake), not a radio wake every time, and asks NTP less and less often."""
    dur = 6 * HOUR
    start = past_start(dur)
    blocked = NtpFault(start - MIN, start + dur + HOUR, "drop")
    spec = BoardSpec("clk-b", config(broker), {"values": VALUES}, drift_ppm=-15000)
    r = run(tmp_path, broker, [spec], start, start + dur, prepare=lambda f: f.ntp.faults.append(blocked))
    wakes = [w for w in r.wakes if w.board == "clk-b"]
    radio = r.radio_wakes("clk-b")
    assert radio <= len(wakes) // 3 + 2, (radio, len(wakes))
    requests = r.fleet.ntp.requests
    assert requests <= 16, requests  # backoff: 6 h of 5-minute wakes would be 72 wakes, 144 requests
    assert not r.rejected(), r.rejected()[:5]


GW_BOUND_MS = 2000  # readings timed by the gateway's clock (a round trip through the broker, loopback)


def test_ntp_blocked_readings_are_timed_by_the_gateway(
    micropython: str, broker: Broker, tmp_path: Path, influxdb_v1: Proc, influx_db: str
) -> None:
    """UDP 123 blocked from power-on for 8 hours, with the real gateway running (on the virtual clock):
    after two failed NTP attempts the board takes the gateway's answer to its 'online' status as its time,
    and its readings arrive as 'u' with times the gateway accepts and close to the truth, into InfluxDB;
    the radio keeps the publishing schedule."""
    dur = 8 * HOUR
    start = past_start(dur)
    blocked = NtpFault(start - MIN, start + dur + HOUR, "drop")
    spec = BoardSpec("clk-g", config(broker), {"values": VALUES}, drift_ppm=30000, wander_ppm=3000,
                     wander_period_s=6 * 3600)  # fmt: skip
    gws: list[GatewayThread] = []

    def prepare(f: Fleet) -> None:
        f.ntp.faults.append(blocked)
        gws.append(GatewayThread(broker.port, influxdb_v1.url, influx_db, tmp_path / "gw", now_ms=f.vt, **FW_GATEWAY))

    try:
        r = run(tmp_path, broker, [spec], start, start + dur, prepare=prepare)
    finally:
        gw = gws[0].close() if gws else None
    assert gw is not None
    assert not r.rejected(), r.rejected()[:5]
    got = r.readings("clk-g")
    truth = r.truth()
    taken = [k for k, t in truth.items() if t < start + dur - HOUR]
    missing = [k for k in taken if k not in got]
    assert not missing, f"{len(missing)} of {len(taken)} never delivered: {missing[:5]}"
    errs = errors(r, "clk-g")
    assert {q for _, q, _ in errs} == {"u"}
    worst = max(e for _, _, e in errs)
    assert worst <= GW_BOUND_MS, sorted(errs, key=lambda x: -x[2])[:5]
    assert gw.pipeline.stats.dead_letters == 0
    rows = influx_query(influxdb_v1.url, influx_db, "SELECT * FROM reading WHERE device = 'clk-g'", epoch="ms")
    assert len(rows) == len(got)
    wakes = [w for w in r.wakes if w.board == "clk-g"]
    assert r.radio_wakes("clk-g") <= len(wakes) // 3 + 2
    print(f"\n{len(got)} readings timed by the gateway, worst |t - truth| {worst} ms")


# -- a long gap between two syncs (clock_max_age_s) ------------------------------------------------------


def test_readings_far_from_every_sync_are_not_marked_synced(micropython: str, broker: Broker, tmp_path: Path) -> None:
    """The battery below batt_low_mv for 4 hours keeps the radio off: no NTP. The readings of the gap are
    interpolated between the syncs before and after it, but those more than clock_max_age_s (1 h) from both
    are not "synced": their error grows with the RC clock's rate change over hours (29 s in
    bench/soak_fleet.py, marked 's'). docs/firmware.md: readings further than clock_max_age_s from a sync
    are 'u'. Every reading still arrives, and 's'/'c' ones lie within clock_max_age_s of an NTP answer (the
    server's own log)."""
    dur = 7 * HOUR
    start = past_start(dur)
    low = [start + HOUR, start + 5 * HOUR]
    values = {**VALUES, "adc35": {"base": 1.95, "steps": [[low[0], 1.55], [low[1], 1.95]]}}  # 3.1 V, then 3.9 V
    spec = BoardSpec("clk-gap", config(broker), {"values": values}, drift_ppm=20000, wander_ppm=5000,
                     wander_period_s=4 * 3600)  # fmt: skip
    r = run(tmp_path, broker, [spec], start, start + dur)
    assert not r.rejected(), r.rejected()[:5]
    truth = r.truth()
    got = r.readings("clk-gap")
    taken = [k for k, t in truth.items() if t < start + dur - 30 * MIN]
    assert taken and all(k in got for k in taken), f"{sum(k in got for k in taken)} of {len(taken)} arrived"
    answers = sorted(v for v, kind, _ in r.fleet.ntp.log if not kind)
    assert not [v for v in answers if low[0] + 10 * MIN < v < low[1]], "NTP was asked with the battery low"
    far = []
    for k, rd in got.items():
        d = min(abs(truth[k] - v) for v in answers)
        if rd.quality in ("s", "c") and d > HOUR + 5 * MIN:
            far.append((k[2], rd.quality, d // MIN, abs(rd.t_ms - truth[k])))
    in_gap = [k for k in got if low[0] + 2 * HOUR < truth[k] < low[1] - 2 * HOUR + 10 * MIN]
    assert in_gap, "no reading in the middle of the gap"
    assert not far, f"{len(far)} readings s/c over an hour from any NTP answer (seq, q, min, |err| ms): {far[:6]}"


# -- the first answer of a clock era (defect 3, found by bench/soak_fleet.py) ----------------------------


def test_a_lying_ntp_server_at_power_on_is_caught_by_the_gateways_time(
    micropython: str, broker: Broker, tmp_path: Path, influxdb_v1: Proc, influx_db: str
) -> None:
    """A board powers on while its NTP server answers a day ahead (for 70 minutes). The first answer of a
    clock era has nothing to be checked against on the board (the RTC restarted at 2000-01-01), so it became
    the era's time and every reading went out a day ahead: the gateway dead-lettered them all
    (time_in_future; 48 readings of one board in bench/soak_fleet.py). The gateway's time (its answer to the
    board's 'online', already used when NTP is unreachable) checks an era's NTP time before any reading is
    sent with it: readings wait until NTP and the gateway agree, then arrive, none dead-lettered."""
    dur = 4 * HOUR
    start = past_start(dur)
    lie = NtpFault(start - MIN, start + 70 * MIN, "offset", offset_ms=86_400_000)
    spec = BoardSpec("clk-p", config(broker), {"values": VALUES}, drift_ppm=-30000, wander_ppm=3000,
                     wander_period_s=6 * 3600)  # fmt: skip
    gws: list[GatewayThread] = []

    def prepare(f: Fleet) -> None:
        f.ntp.faults.append(lie)
        gws.append(GatewayThread(broker.port, influxdb_v1.url, influx_db, tmp_path / "gw", now_ms=f.vt, **FW_GATEWAY))

    try:
        r = run(tmp_path, broker, [spec], start, start + dur, prepare=prepare)
    finally:
        gw = gws[0].close() if gws else None
    assert gw is not None
    assert lie.applied >= 2, "the server never lied: the test did not exercise the fault"
    assert not r.rejected(), f"{len(r.rejected())} readings refused by the decoder: {r.rejected()[:2]}"
    assert gw.pipeline.stats.dead_letters == 0, gw.pipeline.stats.dead_by_reason
    got = r.readings("clk-p")
    truth = r.truth()
    taken = [k for k, t in truth.items() if t < start + dur - 30 * MIN]
    assert taken and all(k in got for k in taken), f"{sum(k in got for k in taken)} of {len(taken)} arrived"
    worst = max(abs(got[k].t_ms - truth[k]) for k in taken)
    assert worst <= 60_000, worst
    rows = influx_query(influxdb_v1.url, influx_db, "SELECT * FROM reading WHERE device = 'clk-p'", epoch="ms")
    assert len(rows) == len(got)


# -- readings buffered for longer than the sync points kept span (found by bench/soak_fleet.py) ----------


def test_readings_buffered_through_an_outage_keep_their_sync_points(
    micropython: str, broker: Broker, tmp_path: Path
) -> None:
    """The broker is down for 3 hours while NTP answers: the board keeps syncing on the wakes its backoff
    lets the radio on, and buffers its readings (raw RTC time, mapped when sent). RTC memory keeps 4 sync
    points, so by the time the broker is back the points around the outage's first readings are gone, and
    those readings were extrapolated from points hours away: 'u', 9 s off although NTP had answered within
    minutes of them (bench/soak_fleet.py). The time of a reading must come from the points around it:
    every reading within clock_max_age_s of an NTP answer is 's' or 'c' and within 2 s + 1.5 % of the
    distance to that answer (docs/firmware.md "Clock error bound")."""
    dur = 5 * HOUR
    start = past_start(dur)
    down = (start + 30 * MIN, start + 3 * HOUR + 30 * MIN)
    spec = BoardSpec("clk-o", config(broker), {"values": VALUES}, drift_ppm=-35000, wander_ppm=5000,
                     wander_period_s=3 * 3600)  # fmt: skip
    hooks = [Hook(down[0], lambda f: broker.stop()), Hook(down[1], lambda f: broker.start())]
    r = run(tmp_path, broker, [spec], start, start + dur, hooks=hooks)
    assert not r.rejected(), r.rejected()[:5]
    truth = r.truth()
    got = r.readings("clk-o")
    taken = [k for k, t in truth.items() if t < start + dur - 30 * MIN]
    assert taken and all(k in got for k in taken), f"{sum(k in got for k in taken)} of {len(taken)} arrived"
    answers = sorted(v for v, kind, _ in r.fleet.ntp.log if not kind)
    assert len([v for v in answers if down[0] < v < down[1]]) >= 5, "too few syncs in the outage to drop points"
    bad = []
    outage = 0
    for k in taken:
        d = min(abs(truth[k] - v) for v in answers)
        if d > HOUR:
            continue
        outage += down[0] <= truth[k] < down[1]
        err = abs(got[k].t_ms - truth[k])
        if got[k].quality not in ("s", "c") or err > 2000 + d * 15 // 1000:
            bad.append((k[2], got[k].quality, d // 1000, err))
    assert outage >= 30, outage
    assert not bad, f"{len(bad)} readings near an NTP answer mistimed (seq, q, s to the answer, |err| ms): {bad[:8]}"
