"""The network side of a wake under the real MicroPython unix port, with the ESP32's socket semantics
(sim/board/mpy/_espnet.py: setblocking(True) waits forever, a name lookup can hang):

- a half-open broker connection: sim/board/proxy.py's proxy on loopback passes the board's traffic to a real
  Mosquitto until the first PUBACK has gone back to the board, then goes silent with the connection left open
  (as a connection at the edge of Wi-Fi range does). Every wake must still end in deep sleep before the watchdog,
  keep the unacknowledged readings, and deliver each exactly once after the connection heals.
"""

from __future__ import annotations

import time
from pathlib import Path

from sim.board.dns import DnsServer
from sim.board.proxy import BrokerProxy
from sim.board.runner import BoardSpec, Fleet, Hook, WakeRecord, host_ms

from .conftest import Broker
from .fitl import Collector

MIN = 60_000
VALUES = {"values": {"temp_c": {"base": 21.0, "amp": 2.0, "period_s": 3600}, "adc35": 1.9, "adc34": 1.0}}


def no_watchdog(w: WakeRecord) -> None:
    """Stop the run at the first wake that did not end in deep sleep (a hung board would otherwise be reset
    into the same hang for every remaining wake)."""
    assert w.outcome == "sleep", f"{w.board}: wake at {w.start_vt} ended by {w.outcome}:\n{w.output[-1500:]}"


def test_half_open_broker_ends_every_wake_in_sleep_and_loses_nothing(
    micropython: str, broker: Broker, tmp_path: Path
) -> None:
    wake_s = 20
    start = host_ms() - 3 * 3_600_000
    proxy = BrokerProxy(broker.port, half_open="silent")
    cfg = {
        "site": "lab",
        "broker": "127.0.0.1",
        "port": proxy.port,
        "wifi_ssid": "sim",
        "publish_every": 1,
        "sleep_s": 300,
        "wake_timeout_s": wake_s,
        "wifi_timeout_s": 2,
        "net_timeout_s": 2,
    }
    heal_at = start + 40 * MIN
    fleet = Fleet(tmp_path / "fleet", [BoardSpec("fw-ho", cfg, VALUES)], start_vt=start, wdt_ms=(wake_s + 5) * 1000)
    fleet.prepare()
    sub = Collector(broker.port)
    try:
        heal = Hook(heal_at, lambda f: setattr(proxy, "half_open", None))  # new connections pass everything
        wakes = fleet.run(heal_at + 90 * MIN, hooks=[heal], on_wake=no_watchdog)
        time.sleep(1.0)
    finally:
        sub.close()
        fleet.stop_ntp()
        proxy.close()
    assert proxy.stalls >= 2, "the proxy never stalled a connection: the test did not exercise the fault"
    for w in wakes:
        assert "Traceback" not in w.output, w.output

    taken = {(r.board, r.boot, r.seq) for r in fleet.readings_taken()}
    got = sub.keys()
    assert len(got) == len(set(got)), "a reading arrived twice"
    assert set(got) == taken, f"not delivered: {sorted(taken - set(got))}"

    during = [w for w in wakes if w.start_vt < heal_at]
    after = [w for w in wakes if w.start_vt >= heal_at]
    print(
        f"\nhalf-open: {len(wakes)} wakes ({len(during)} before the heal), {proxy.connections} connections,"
        f" {proxy.stalls} stalled; radio-on ms per wake before the heal {[w.radio_ms() for w in during]},"
        f" after {[w.radio_ms() for w in after]}; {len(got)} readings delivered once"
    )


def attempts(wakes: list[WakeRecord]) -> list[WakeRecord]:
    """The wakes that turned the radio on."""
    return [w for w in wakes if w.radio_ms() > 0]


def test_backoff_keeps_the_radio_off_in_an_outage_and_delivers_soon_after(
    micropython: str, broker: Broker, tmp_path: Path
) -> None:
    """A 4-hour outage, of the broker (fw-b: connection refused) and of the Wi-Fi (fw-w). The firmware's
    backoff (default backoff_max_s 3600 with sleep_s 300: at most 12 wakes apart) must keep the radio off on
    most wakes, and each board must deliver everything within backoff_max_s + publish_every sleeps after the
    outage."""
    sleep_s, cap_s = 300, 3600
    start = host_ms() - 8 * 3_600_000
    out_end = start + 4 * 3_600_000
    common = {
        "site": "lab",
        "broker": "127.0.0.1",
        "port": broker.port,
        "wifi_ssid": "sim",
        "publish_every": 3,
        "sleep_s": sleep_s,
        "backoff_max_s": cap_s,
        "wake_timeout_s": 20,
        "wifi_timeout_s": 1,
        "net_timeout_s": 2,
    }
    boards = [
        BoardSpec("fw-b", common, VALUES),
        BoardSpec("fw-w", common, {**VALUES, "wifi_down": [[start - MIN, out_end]]}, stagger_ms=20_000),
    ]
    fleet = Fleet(tmp_path / "fleet", boards, start_vt=start, wdt_ms=25_000)
    broker.stop()
    subs: list[Collector] = []

    def back(f: Fleet) -> None:
        broker.start()
        subs.append(Collector(broker.port))

    fleet.prepare()
    try:
        wakes = fleet.run(out_end + 2 * 3_600_000, hooks=[Hook(out_end, back)], on_wake=no_watchdog)
        time.sleep(1.0)
    finally:
        for s in subs:
            s.close()
        fleet.stop_ntp()
    assert subs, "the broker never came back"
    got = subs[0].keys()
    taken = {(r.board, r.boot, r.seq) for r in fleet.readings_taken()}
    assert len(got) == len(set(got)) and set(got) == taken, sorted(taken - set(got))

    cap_wakes = cap_s // sleep_s
    for name in ("fw-b", "fw-w"):
        mine = [w for w in wakes if w.board == name]
        during = [w for w in mine if w.start_vt < out_end]
        tried = attempts(during)
        # 0, 1, 3, 7, 11, 11, ... wakes off after the 1st, 2nd, ... failure: 1 + log2(cap) ramp + one per cap
        bound = 1 + cap_wakes.bit_length() + len(during) // (cap_wakes + 1)
        assert len(tried) <= bound, f"{name}: radio on in {len(tried)} of {len(during)} outage wakes (bound {bound})"
        after = [w for w in mine if w.start_vt >= out_end]
        first_ok = next(i for i, w in enumerate(after) if w.lines("sent"))
        # the documented bound: backoff_max_s, then the next due wake (at most publish_every later)
        assert first_ok + 1 <= cap_wakes + 3, f"{name}: first delivery {first_ok + 1} wakes after the outage"
        per_day = sum(w.radio_ms() for w in during) * 24 / 4 / 1000
        print(
            f"\n{name}: outage 4 h, {len(during)} wakes, radio on in {len(tried)}"
            f" ({[w.radio_ms() for w in tried]} ms), {per_day:.0f} s/day at this rate;"
            f" first delivery in wake {first_ok + 1} after the outage;"
            f" publishing wakes after it: radio {[w.radio_ms() for w in attempts(after)][:8]} ms"
        )


def test_dns_that_does_not_answer_costs_one_timeout_and_the_answer_is_kept(
    micropython: str, broker: Broker, tmp_path: Path
) -> None:
    """The broker by name, and the Wi-Fi's DNS server silent for the first 30 minutes (lwIP's getaddrinfo on
    the ESP32 would block in it: the socket shim hangs there). Every wake must end in deep sleep, everything
    must arrive once the name resolves, and the answer must be kept: one answered query for the whole run."""
    start = host_ms() - 4 * 3_600_000
    dns_down = (start - MIN, start + 30 * MIN)
    fleet_holder: list[Fleet] = []
    dns = DnsServer({"broker.lab": "127.0.0.1"}, clock=lambda: fleet_holder[0].vt(), down=[dns_down])
    cfg = {
        "site": "lab",
        "broker": "broker.lab",
        "port": broker.port,
        "dns_port": dns.port,
        "wifi_ssid": "sim",
        "publish_every": 1,
        "sleep_s": 300,
        "wake_timeout_s": 20,
        "wifi_timeout_s": 1,
        "net_timeout_s": 2,
    }
    scenario = {**VALUES, "dns": {"broker.lab": "127.0.0.1"}, "dns_down": [list(dns_down)]}
    fleet = Fleet(tmp_path / "fleet", [BoardSpec("fw-dns", cfg, scenario)], start_vt=start, wdt_ms=25_000)
    fleet_holder.append(fleet)
    fleet.prepare()
    sub = Collector(broker.port)
    try:
        wakes = fleet.run(start + 3 * 3_600_000, on_wake=no_watchdog)
        time.sleep(1.0)
    finally:
        sub.close()
        fleet.stop_ntp()
        dns.close()
    got = sub.keys()
    taken = {(r.board, r.boot, r.seq) for r in fleet.readings_taken()}
    assert len(got) == len(set(got)) and set(got) == taken, sorted(taken - set(got))
    unanswered = [q for q in dns.queries if not q[2]]
    answered = [q for q in dns.queries if q[2]]
    assert unanswered, "the board never asked the silent DNS server: the test did not exercise the fault"
    assert len(answered) == 1, f"the address was not kept: {len(answered)} answered queries"
    print(
        f"\ndns: {len(wakes)} wakes, {len(unanswered)} unanswered and {len(answered)} answered queries;"
        f" radio-on ms of the wakes that met the silent server"
        f" {[w.radio_ms() for w in attempts(wakes) if w.start_vt < dns_down[1]]}"
    )


def test_a_reading_sent_again_carries_the_time_it_was_first_sent_with(
    micropython: str, broker: Broker, tmp_path: Path
) -> None:
    """docs/protocol.md: the board re-sends a reading until the broker acknowledged it, "always with the t it
    had the first time" (the gateway tells a re-send from a board whose boot counter restarted by that time,
    docs/reliability.md). For an hour the board's messages reach the broker but the PUBACKs are lost (the
    link back to the board dies, sim/board/proxy.py "acks"): every reading of those messages is sent again
    later, after several NTP syncs have moved the sync points it was timed by. Each identity must arrive with
    one (t, q) only. Found by bench/soak_fleet.py: a reading sent as 's' came again as 'c' 1 ms later, so the
    gateway took it for a new reading and InfluxDB held it twice."""
    start = host_ms() - 4 * 3_600_000
    holder: list[Fleet] = []
    proxy = BrokerProxy(broker.port, clock=lambda: holder[0].vt())
    cfg = {
        "site": "lab",
        "broker": "127.0.0.1",
        "port": proxy.port,
        "wifi_ssid": "sim",
        "publish_every": 1,
        "sleep_s": 300,
        "sync_every_s": 300,
        "wake_timeout_s": 20,
        "wifi_timeout_s": 1,
        "net_timeout_s": 2,
    }
    lossy = (start + 30 * MIN, start + 90 * MIN)
    fleet = Fleet(tmp_path / "fleet", [BoardSpec("fw-ack", cfg, VALUES, drift_ppm=20000)], start_vt=start,
                  wdt_ms=25_000)  # fmt: skip
    holder.append(fleet)
    fleet.prepare()
    sub = Collector(broker.port)
    hooks = [Hook(lossy[0], lambda f: setattr(proxy, "half_open", "acks")),
             Hook(lossy[1], lambda f: setattr(proxy, "half_open", None))]  # fmt: skip
    try:
        fleet.run(lossy[1] + 60 * MIN, hooks=hooks, on_wake=no_watchdog)
        time.sleep(1.0)
    finally:
        sub.close()
        fleet.stop_ntp()
        proxy.close()
    assert proxy.stalls >= 2, "no PUBACK was lost: the test did not exercise the fault"
    sent: dict[tuple[str, int, int], set[tuple[int, str]]] = {}
    copies: dict[tuple[str, int, int], int] = {}
    for b in sub.decoded()[0]:
        for r in b.readings:
            sent.setdefault(r.key, set()).add((r.t_ms, r.quality))
            copies[r.key] = copies.get(r.key, 0) + 1
    again = [k for k, n in copies.items() if n > 1]
    assert again, "no reading was sent twice: the test did not exercise the fault"
    moved = {k: sorted(v) for k, v in sent.items() if len(v) > 1}
    assert not moved, f"{len(moved)} of {len(again)} readings sent again with another time: {list(moved.items())[:3]}"
    taken = {(r.board, r.boot, r.seq) for r in fleet.readings_taken()}
    assert set(sent) == taken, sorted(taken - set(sent))
