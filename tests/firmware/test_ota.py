"""Updates over the air and settings over the cmd topic, with the real firmware under the MicroPython unix
port, a real Mosquitto and the gateway's own ``edgekit-ota``: a build is published, fetched in chunks,
checked by sha256, staged and switched to; a build that cannot publish is rolled back by the board itself;
a command changes the sampling interval at the next wake and is acknowledged, a bad one refused with a
reason. Readings are counted where they land (the broker's subscribers), as the other firmware tests do."""

from __future__ import annotations

import itertools
import shutil
from collections import Counter
from pathlib import Path

import pytest

from gateway.ota import main as ota_main
from sim.board.launcher import native_micropython
from sim.board.runner import REPO, BoardSpec, Fleet, Hook, PowerLoss

from .conftest import FIRMWARE, Broker, run_mpy
from .fitl import MIN, VALUES, config, past_start, ring_ids, run


def _broken_firmware(tmp_path: Path) -> Path:
    """The firmware with an uplink that cannot publish (a build that passes its hashes and boots, then
    never gets a PUBACK): what the board must roll back by itself."""
    d = tmp_path / "broken"
    shutil.copytree(FIRMWARE, d, ignore=shutil.ignore_patterns("config_local.py", "secrets.py", "__pycache__"))
    p = d / "uplink.py"
    src = p.read_text()
    marker = "    def publish(self, topic, msg, retain=False):\n"
    assert marker in src
    p.write_text(src.replace(marker, marker + "        raise OSError('this build cannot publish')\n"))
    return d


def _wakes_of(r: object, board: str) -> list[str]:
    return [w.output for w in r.wakes if w.board == board]  # type: ignore[attr-defined]


@pytest.mark.integration
def test_update_two_boards_and_roll_back_a_third(micropython: str, broker: Broker, tmp_path: Path) -> None:
    dur = 50 * MIN
    start = past_start(dur)
    names = ["ota-1", "ota-2", "ota-3"]
    boards = [
        BoardSpec(n, config(broker, publish_every=1, ota_trials=3), {"values": VALUES}, stagger_ms=i * 1000)
        for i, n in enumerate(names)
    ]
    broken = _broken_firmware(tmp_path)
    cli = ["--broker", f"127.0.0.1:{broker.port}", "publish-build"]

    def publish(_f: Fleet) -> None:  # what a person runs on the Pi (README, "Update the boards")
        assert ota_main([*cli, "--version", "0.2.0", "--firmware", str(FIRMWARE), "--device", "ota-1",
                         "--device", "ota-2"]) == 0  # fmt: skip
        assert ota_main([*cli, "--version", "0.3.0-bad", "--firmware", str(broken), "--device", "ota-3"]) == 0

    r = run(tmp_path, broker, boards, start, start + dur, hooks=[Hook(start + 7 * MIN, publish)], fast=True)

    for w in r.wakes:
        assert w.outcome == "sleep", (w.board, w.outcome, w.output[-2000:])
        assert "EK error" not in w.output and "EK fatal" not in w.output, w.output[-2000:]
    final = {n: r.sub.status_json(n)[-1] for n in names}
    for n in ("ota-1", "ota-2"):
        out = "".join(_wakes_of(r, n))
        assert "EK ota staged 0.2.0 in fwa" in out, out[-3000:]
        assert "EK ota confirmed 0.2.0" in out
        assert final[n]["fw"] == "0.2.0", final[n]
        assert final[n]["ota"] == "", final[n]
        # the first status of the new build shows it on trial, the ones after without
        fws = [s.get("fw") for s in r.sub.status_json(n) if s["state"] == "online"]
        assert fws[0] == "0.1.0" and fws[-1] == "0.2.0" and fws.index("0.2.0") >= 2, fws
    out3 = _wakes_of(r, "ota-3")
    joined = "".join(out3)
    assert "EK ota staged 0.3.0-bad in fwa" in joined, joined[-3000:]
    assert "EK ota rollback to 0.1.0" in joined
    trial = [o for o in out3 if "this build cannot publish" in o]
    assert len(trial) == 3, len(trial)  # ota_trials wakes on the new build, then back
    assert "EK ota confirmed" not in joined
    assert final["ota-3"]["fw"] == "0.1.0", final["ota-3"]
    assert final["ota-3"]["ota"] == "rollback 0.3.0-bad", final["ota-3"]
    states = [s.get("ota") for s in r.sub.status_json("ota-3")]
    assert "rollback 0.3.0-bad" in states
    # the rolled-back build is not fetched again
    assert joined.count("EK ota staged") == 1
    # no reading lost or sent twice across the update and the rollback: every reading a board stored
    # reached the broker exactly once
    taken = Counter((x.board, x.boot, x.seq) for x in r.fleet.readings_taken())
    got = Counter(r.sub.keys())
    assert not [k for k, c in got.items() if c > 1], "sent twice"
    assert set(got) == set(taken), (sorted(set(taken) - set(got)), sorted(set(got) - set(taken)))
    per = Counter(k[0] for k in got)
    assert all(per[n] >= 9 for n in names), per
    # ota-3 buffered through its trial and sent the backlog after the rollback: one boot, nothing lost
    assert {k[1] for k in got if k[0] == "ota-3"} == {1}


@pytest.mark.integration
def test_cmd_sets_the_sampling_interval_and_refuses_a_bad_one(micropython: str, broker: Broker, tmp_path: Path) -> None:
    dur = 40 * MIN
    start = past_start(dur)
    spec = BoardSpec("cmd-1", config(broker, publish_every=1, site="lab", sync_every_s=3600), {"values": VALUES})
    base = ["--broker", f"127.0.0.1:{broker.port}", "cmd", "--site", "lab", "--device", "cmd-1"]
    hooks = [
        Hook(start + 10 * MIN, lambda _f: ota_main([*base, "--id", "c1", "--set", "sleep_s=120", "--do", "sync"])),
        Hook(start + 24 * MIN, lambda _f: ota_main([*base, "--id", "c2", "--set", "sleep_s=5"])),
    ]
    r = run(tmp_path, broker, [spec], start, start + dur, hooks=hooks, fast=True)
    for w in r.wakes:
        assert w.outcome == "sleep", (w.outcome, w.output[-2000:])
    sts = r.sub.status_json("cmd-1")
    acks = [(s.get("ack"), s.get("ack_err")) for s in sts if s["state"] == "sleeping"]
    assert ("c1", "") in acks, acks
    assert ("c2", "sleep_s: 5 not in 10..86400") in acks, acks
    assert acks[-1] == ("c2", "sleep_s: 5 not in 10..86400"), acks
    # the wake that took c1 still slept 300 s; from the next wake on the interval is 120 s, also after c2
    starts = [w.start_vt for w in r.wakes]
    took = next(i for i, w in enumerate(r.wakes) if "EK cmd c1 taken" in w.output)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert all(abs(g - 300_000) < 5_000 for g in gaps[:took]), gaps
    assert all(abs(g - 120_000) < 5_000 for g in gaps[took + 1 :]), gaps
    assert len(gaps) - took - 1 >= 8, gaps
    # sync: NTP at the next wake, though the last answer is minutes old (sync_every_s 3600); not the one after
    ntp = ["EK ntp" in w.output for w in r.wakes]
    assert ntp[took + 1] and not ntp[took + 2], ntp
    assert [s["sleep_s"] for s in sts if s["state"] == "sleeping"][-1] == 120
    refused = next(w.output for w in r.wakes if "EK cmd c2" in w.output)
    assert "refused: sleep_s: 5 not in 10..86400" in refused, refused
    # each command is handled once, though it stays retained; clear takes it off the broker
    assert sum("EK cmd c1" in w.output for w in r.wakes) == 1
    assert sum("EK cmd c2" in w.output for w in r.wakes) == 1
    topic = "edgekit/lab/cmd-1/cmd"
    assert _retained(broker.port, topic) == b'{"v":1,"id":"c2","set":{"sleep_s":5}}'
    assert ota_main([*base[:2], "clear", "--cmd", "--site", "lab", "--device", "cmd-1"]) == 0
    assert _retained(broker.port, topic) is None


def _retained(port: int, topic: str) -> bytes | None:
    """The retained message on topic, as a new subscriber gets it (None when there is none)."""
    import queue

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    got: queue.Queue[bytes] = queue.Queue()
    c = mqtt.Client(CallbackAPIVersion.VERSION2)
    c.on_message = lambda _c, _u, m: got.put(bytes(m.payload))
    c.on_connect = lambda _c, _u, _f, _rc, _p: c.subscribe(topic, qos=1)
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        return got.get(timeout=1.0)
    except queue.Empty:
        return None
    finally:
        c.disconnect()
        c.loop_stop()


def test_selector_counts_trial_starts_rolls_back_and_survives_a_damaged_file(micropython: str, tmp_path: Path) -> None:
    """otaboot.select() at each start, as main.py calls it, on a flash directory of the test's own: a build on
    trial gets ota_trials starts, then the previous one is selected and the failed one refused; a damaged or
    half-written selector runs the deployed build; a slot that vanished is not run."""
    fl = tmp_path / "flash"
    (fl / "fwa").mkdir(parents=True)
    code = (
        "import sys, otaboot; otaboot.select(); "
        "print('SEL|' + '|'.join([str(x) for x in (sys.path[0], otaboot.VERSION, otaboot.BUILD, otaboot.TRIAL, "
        "otaboot.ROLLED)]))"
    )

    mp = native_micropython(REPO / ".run" / "micropython-native") or micropython  # the console script is slow

    def start() -> list[str]:
        r = run_mpy(mp, code, fl)
        assert r.returncode == 0, r.stdout + r.stderr
        return next(line for line in r.stdout.splitlines() if line.startswith("SEL|")).split("|")[1:]

    sel = fl / "fw.sel"
    sel.write_text("fwa 0.2.0 " + "b" * 64 + " 0 - 0.1.0 - 2\n")
    assert start() == ["fwa", "0.2.0", "b" * 64, "(1, 2)", "None"]
    assert start() == ["fwa", "0.2.0", "b" * 64, "(2, 2)", "None"]
    back = start()  # the third start: two were allowed, and no confirmation came
    assert back[1:] == ["0.1.0", "-", "None", "0.2.0"] and back[0] != "fwa", back
    assert (fl / "fw.bad").read_text() == "b" * 64 + " 0.2.0 rollback\n"
    assert sel.read_text() == "- 0.1.0 - -1 - - - 2\n"
    assert start()[1:] == ["0.1.0", "-", "None", "None"]  # and it stays there
    # a confirmed build runs without counting
    sel.write_text("fwa 0.2.0 " + "c" * 64 + " -1 - 0.1.0 - 3\n")
    assert start()[:4] == ["fwa", "0.2.0", "c" * 64, "None"] and sel.read_text().split()[3] == "-1"
    # a selector cut short by a power loss (only tmp + rename write it, but a damaged flash can), or garbage
    for text in ("fwa 0.2.0 " + "c" * 10, "", "x y z w v u t s\n"):
        sel.write_text(text)
        assert start()[1:4] == ["None", "-", "None"], text
    # a build on trial whose directory is gone is rolled back at once, not imported from the root
    sel.write_text("fwb 0.3.0 " + "d" * 64 + " 0 fwa 0.2.0 " + "c" * 64 + " 3\n")
    assert start()[:3] == ["fwa", "0.2.0", "c" * 64]
    assert (fl / "fw.bad").read_text().startswith("d" * 64 + " 0.3.0")


@pytest.mark.integration
def test_power_loss_during_an_update_leaves_a_board_that_finishes_it(
    micropython: str, broker: Broker, tmp_path: Path
) -> None:
    """The power goes at different points of the wake that fetches a build (two boards counted from the moment the
    radio came on: before the download, inside it, or after the switch, as the machine's speed has it; the third
    just after its first file is whole, inside the download on any machine): each board starts again with the
    build it had or the new one whole, goes on with the files it had not finished (the ones it had are not fetched
    again), switches once, and no reading is sent twice; the only readings missing are those RTC memory held when
    the power went."""
    dur = 20 * MIN
    start = past_start(dur)
    names = ("pl-1", "pl-2", "pl-3")
    boards = [
        BoardSpec(n, config(broker, publish_every=1), {"values": VALUES}, stagger_ms=i * 1000)
        for i, n in enumerate(names)
    ]
    # small chunks: a download of a few seconds, for the cuts to fall into
    cli = ["--broker", f"127.0.0.1:{broker.port}", "publish-build", "--version", "0.2.0", "--chunk", "256"]
    cli += ["--firmware", str(FIRMWARE)]
    hooks = [Hook(start + 7 * MIN, lambda _f: ota_main(cli))]  # for the whole fleet this time
    losses = [
        PowerLoss("pl-1", start + 8 * MIN, after_ms=100, after_radio=True),
        PowerLoss("pl-2", start + 8 * MIN, after_ms=0, after_output=b"EK ota file"),  # its first file whole
        PowerLoss("pl-3", start + 8 * MIN, after_ms=800, after_radio=True),
    ]
    r = run(tmp_path, broker, boards, start, start + dur, hooks=hooks, power_losses=losses, fast=True)
    mid: set[str] = set()
    lost: set[tuple[str, int, int]] = set()
    for n in names:
        ws = [w for w in r.wakes if w.board == n]
        cut = [k for k, w in enumerate(ws) if w.outcome == "power_loss"]
        assert len(cut) <= 1 and all(w.outcome == "sleep" for k, w in enumerate(ws) if k not in cut)
        i = cut[0] if cut else len(ws) - 1  # a wake that ended before its cut leaves it for none that follow
        errs = [w.output[-3500:] for w in ws if "EK error" in w.output or "EK fatal" in w.output]
        assert not errs, errs
        out = "".join(w.output for w in ws)
        assert out.count("EK ota staged 0.2.0") == 1 and out.count("EK ota confirmed 0.2.0") == 1, out[-3000:]
        before = {x.split()[3] for x in ws[i].output.splitlines() if x.startswith("EK ota file")}
        after = {x.split()[3] for w in ws[i + 1 :] for x in w.output.splitlines() if x.startswith("EK ota file")}
        assert not before & after, (before, after)  # what was whole on flash was not fetched again
        if cut and before and "EK ota staged" not in ws[i].output:  # cut between two files
            mid.add(n)
        assert r.sub.status_json(n)[-1]["fw"] == "0.2.0"
        if cut:
            lost |= {(n, b, s) for b, s in ring_ids(ws[i].rtcmem_lost or b"")}
    assert "pl-2" in mid, ("pl-2's power loss did not fall inside the download", mid)
    taken = {(x.board, x.boot, x.seq) for x in r.fleet.readings_taken()}
    got = Counter(r.sub.keys())
    assert not [k for k, c in got.items() if c > 1], "sent twice"
    assert set(got) <= taken, sorted(set(got) - taken)
    # a batch leaves RTC memory only after its PUBACK: a cut between the two loses the ring's copy of readings
    # that arrived (QoS 1), so those may be in both
    assert taken - set(got) <= lost, sorted(taken - set(got) - lost)
