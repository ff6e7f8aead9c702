"""Clock soak: the real firmware on simulated boards whose RTC runs like the ESP32's RC oscillator, for a
virtual day or more, with a lying NTP server, NTP blocked for hours, a brown-out that clears the RTC and
a power loss. Prints, per clock quality, how far the readings' event times are from the truth (the
measurement behind docs/firmware.md "Clock error bound"), and the radio-on time per board and day.

    python bench/bench_clock.py [--hours 24] [--boards 4]

Needs the MicroPython unix port, umqtt in .run/mpy-lib (scripts/fetch_umqtt.sh) and mosquitto.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import paho.mqtt.client as mqtt

from sim.board.runner import BOARD_VALUES, BoardSpec, Fleet, NtpFault, PowerLoss, Reset, host_ms

MIN = 60_000
HOUR = 60 * MIN
VALUES = BOARD_VALUES


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hours", type=float, default=24)
    ap.add_argument("--boards", type=int, default=4)
    a = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="edgekit-clock-"))
    port = free_port()
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    broker = subprocess.Popen([exe, "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    msgs: list[tuple[str, bytes]] = []
    lock = threading.Lock()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-clock", clean_session=False)
    sub.on_connect = lambda c, u, f, rc, p: c.subscribe("edgekit/#", qos=1)

    def on_message(c: object, u: object, m: mqtt.MQTTMessage) -> None:
        with lock:
            msgs.append((m.topic, bytes(m.payload)))

    sub.on_message = on_message
    sub.connect("127.0.0.1", port)
    sub.loop_start()
    dur = int(a.hours * HOUR)
    start = host_ms() - dur - 10 * MIN
    cfg = {"site": "bench", "broker": "127.0.0.1", "port": port, "wifi_ssid": "sim", "wifi_timeout_s": 1,
           "net_timeout_s": 2}  # fmt: skip
    drifts = [6000, -25000, 50000, -12000, 30000, -40000]
    boards = []
    for i in range(a.boards):
        boards.append(BoardSpec(f"ck-{i + 1}", dict(cfg), {"values": VALUES}, drift_ppm=drifts[i % len(drifts)],
                                wander_ppm=5000, wander_period_s=6 * 3600, stagger_ms=i * 13_000))  # fmt: skip
    fleet = Fleet(root / "fleet", boards, start_vt=start, heap="112K")
    # board 2 asks a server of its own that lies: a day ahead for two hours, then +20 s on every 4th answer
    liar = [NtpFault(start + 6 * HOUR, start + 8 * HOUR, "offset", offset_ms=86_400_000),
            NtpFault(start + 12 * HOUR, start + 16 * HOUR, "offset", offset_ms=20_000, every=4)]  # fmt: skip
    fleet.prepare()
    if a.boards >= 2:
        lport = fleet.add_ntp(liar)
        p = fleet.flash("ck-2") / "config_local.py"
        p.write_text(p.read_text().replace(f"'ntp_port': {fleet.ntp_port}", f"'ntp_port': {lport}"))
    # NTP blocked for 12 hours for everyone (board 3's Wi-Fi network blocks UDP 123 the whole run)
    fleet.ntp.faults.append(NtpFault(start + 2 * HOUR, start + 14 * HOUR, "drop"))
    resets = [Reset("ck-4", start + 5 * HOUR, after_ms=5, cause="brownout", rtc="zero")] if a.boards >= 4 else []
    cuts = [PowerLoss("ck-4", start + 9 * HOUR, after_ms=30, off_ms=5 * MIN)] if a.boards >= 4 else []
    t0 = time.monotonic()
    wakes = fleet.run(start + dur, power_losses=cuts, resets=resets)
    real = time.monotonic() - t0
    time.sleep(2)
    sub.loop_stop()
    sub.disconnect()
    fleet.stop_ntp()
    broker.terminate()
    broker.wait()

    truth = {(r.board, r.boot, r.seq): r.true_vt for r in fleet.readings_taken() if r.true_vt is not None}
    errs: dict[str, list[int]] = {}
    got = set()
    dropped = {}
    for topic, payload in msgs:
        if topic.endswith("/status") and payload:
            d = json.loads(payload)
            dropped[d["dev"]] = d.get("dropped", 0)
        if not topic.endswith("/readings"):
            continue
        d = json.loads(payload)
        for r in d["r"]:
            k = (d["dev"], r["b"], r["s"])
            if k in truth and k not in got:
                got.add(k)
                errs.setdefault(r["q"], []).append(abs(r["t"] - truth[k]))
    print(f"{len(wakes)} wakes of {a.boards} boards over {a.hours} h virtual in {real:.0f} s real")
    for q in sorted(errs):
        e = sorted(errs[q])
        print(f"  q={q}: {len(e)} readings, |t - truth| median {e[len(e) // 2]} ms, p99 {e[int(len(e) * 0.99)]} ms,"
              f" max {e[-1]} ms")  # fmt: skip
    taken = [k for k, t in truth.items() if t < start + dur - 30 * MIN]
    print(f"  taken {len(taken)}, arrived {len([k for k in taken if k in got])}, dropped (status) {dropped}")
    days = a.hours / 24
    for b in boards:
        on = 0
        rw = 0
        for w in wakes:
            if w.board != b.name:
                continue
            rw += any(x.startswith("radio on") for x in w.truth)
            on += w.radio_ms()
        n = sum(1 for w in wakes if w.board == b.name)
        print(
            f"  {b.name} (RTC {b.drift_ppm / 10000:+.1f} %): {n / days:.0f} wakes/day, {rw / days:.0f} with the"
            f" radio, radio on {on / 1000 / days:.1f} s/day in the simulation (association is instant here)"
        )
    print(f"  NTP requests: shared server {fleet.ntp.requests}, answered {fleet.ntp.answered}")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
