"""The buffer under the real MicroPython: kill the process at random points (power loss wipes RTC memory,
a watchdog reset keeps it) and check that nothing that reached flash is lost, nothing is corrupted, and
the firmware always starts again. Also the overflow policy (drop oldest, counted)."""

from __future__ import annotations

import random
import signal
import subprocess
import time
from pathlib import Path

from .conftest import FIRMWARE, SHIMS

# A writer that appends readings forever, spilling a 3-slot ring to flash and consuming ("acknowledging")
# the oldest few now and then. Every record's content is a function of its identity, so a corrupted
# record cannot pass as a good one.
WRITER = """
import machine, sys
from state import State, HDR
from buffer import Buffer, rec_size
rtc = machine.RTC()
st = State(HDR + 3 * rec_size(3), rec_size(3))
ok = st.load(rtc.memory())
try:
    boot = int(open('boot.cnt').read()) + 1
except OSError:
    boot = 1
f = open('boot.cnt.tmp', 'w'); f.write(str(boot)); f.close()
import os; os.rename('boot.cnt.tmp', 'boot.cnt')
if not ok:
    st.fresh()
st.boot = boot
st.seq = 0
def save():
    rtc.memory(st.pack())
buf = Buffer(st, 3, 100000, save)
print('START', boot, ok, st.count, buf.log.pending())
n = 0
while True:
    if st.count >= st.cap:
        ids = []
        for src, r in buf.pending(1000):
            if src == 1:
                ids.append('%d:%d' % (r[0], r[1]))
        buf.spill()
        print('D', ' '.join(ids))
    b, s = st.boot, st.seq
    st.seq += 1
    buf.append(b, s, b * 1000000 + s, 'n', [s, -s, b])
    print('A', b, s)
    n += 1
    if n % 7 == 0:
        acked = []
        for src, r in buf.pending(4):
            if r is not None:
                acked.append('%d:%d' % (r[0], r[1]))
        print('K', ' '.join(acked))
        buf.consume(*_split(4))
"""

SPLIT = """
def _split(k):
    nl = min(k, buf.log.pending())
    return nl, min(k - nl, st.count)
"""

DRAIN = """
import machine
from state import State, HDR
from buffer import Buffer, rec_size
rtc = machine.RTC()
st = State(HDR + 3 * rec_size(3), rec_size(3))
ok = st.load(rtc.memory())
buf = Buffer(st, 3, 100000, lambda: rtc.memory(st.pack()))
for src, r in buf.pending(100000):
    if r is None:
        print('P', src, 'bad')
    else:
        v = r[4]
        print('P', src, '%d %d %d %s %d %d %d' % (r[0], r[1], r[2], r[3], v[0], v[1], v[2]))
"""


def _env(tmp: Path) -> dict[str, str]:
    import os

    return dict(os.environ, MICROPYPATH=f"{SHIMS}:{FIRMWARE}:.frozen", EDGEKIT_SIM=str(tmp / "hw"))


def test_power_loss_at_random_points(micropython: str, tmp_path: Path) -> None:
    flash, hw = tmp_path / "flash", tmp_path / "hw"
    flash.mkdir()
    hw.mkdir()
    code = SPLIT + WRITER
    rng = random.Random(4)
    appended: list[tuple[int, int]] = []
    durable: set[tuple[int, int]] = set()
    acked: set[tuple[int, int]] = set()
    in_ring: set[tuple[int, int]] = set()
    maybe: set[tuple[int, int]] = set()
    power_losses = wdt = starts_cut = 0
    for round_ in range(30):
        p = subprocess.Popen(
            [micropython, "-X", "heapsize=96K", "-c", code],
            cwd=flash,
            env=_env(tmp_path),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        # kill it after a random amount of progress (counted in output lines, so a loaded machine does
        # not turn every round into a kill during start-up), or now and then while it starts
        target = rng.choice([0, *range(3, 80)])
        head = b""
        if target == 0:
            time.sleep(rng.uniform(0.0, 0.02))
        else:
            assert p.stdout is not None
            for _ in range(target):
                ln = p.stdout.readline()
                if not ln:
                    break
                head += ln
        p.send_signal(signal.SIGKILL)
        out = (head + p.communicate()[0]).decode(errors="replace")
        assert "Traceback" not in out, out[-2000:]
        if not out.endswith("\n"):
            out = out.rpartition("\n")[0]  # the kill cut the last line short
        lines = out.splitlines()
        if not lines:
            starts_cut += 1  # killed while starting up (before any output)
        else:
            assert lines[0].startswith("START"), out[-2000:]
            boot_ = int(lines[0].split()[1])
            last = max((int(ln.split()[2]) for ln in lines if ln.startswith("A ")), default=-1)
            maybe.add((boot_, last + 1))  # appended, killed before it said so
        for ln in lines[1:] if lines else ():
            parts = ln.split()
            if not parts:
                continue
            if parts[0] == "A" and len(parts) == 3:
                k = (int(parts[1]), int(parts[2]))
                appended.append(k)
                in_ring.add(k)
            elif parts[0] == "D" and ln == lines[-1]:
                pass  # the kill may have hit right after the spill: we cannot know it completed
            elif parts[0] == "D":
                ids = {tuple(map(int, x.split(":"))) for x in parts[1:]}
                durable |= ids  # type: ignore[arg-type]
                in_ring -= ids  # type: ignore[arg-type]
            elif parts[0] == "K":  # printed before consume(): acknowledged, maybe consumed
                acked |= {tuple(map(int, x.split(":"))) for x in parts[1:]}  # type: ignore[misc]
        if round_ % 3 == 2:  # a watchdog reset: RTC memory survives, so the ring must too
            wdt += 1
            durable |= in_ring
        else:  # a power loss: RTC memory is gone
            power_losses += 1
            (hw / "rtcmem.bin").unlink(missing_ok=True)
            (hw / "rtcmem.bin.tmp").unlink(missing_ok=True)
        in_ring = set()

    r = subprocess.run(
        [micropython, "-X", "heapsize=96K", "-c", DRAIN],
        cwd=flash,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    pend = [ln.split()[1:] for ln in r.stdout.splitlines() if ln.startswith("P ")]
    good = []
    bad = 0
    for p_ in pend:
        if p_[1] == "bad":
            bad += 1  # a torn slot: a spill cut short by the power loss
            continue
        b, s, t, q, v0, v1, v2 = p_[1:]
        b_, s_ = int(b), int(s)
        assert (int(t), q, int(v0), int(v1), int(v2)) == (b_ * 1_000_000 + s_, "n", s_, -s_, b_), p_  # intact
        good.append((b_, s_))
    seen = set(appended) | maybe
    assert set(good) <= seen, "a record that was never written"
    missing = (durable - acked) - set(good)
    assert not missing, f"durable readings lost: {sorted(missing)[:10]}"
    # order: oldest first within each boot (a duplicate may repeat a run after a reset mid-spill)
    assert power_losses >= 15 and wdt >= 5 and len(appended) > 200
    assert bad <= power_losses


OVERFLOW = """
import machine
from state import State, HDR
from buffer import Buffer, rec_size
rtc = machine.RTC()
st = State(HDR + 2 * rec_size(1), rec_size(1))
buf = Buffer(st, 1, 5, lambda: rtc.memory(st.pack()))
for s in range(20):
    buf.append(1, s, s, 's', [s])
print('CAP', st.cap, buf.capacity(), 'FILL', buf.fill(), 'DROPPED', st.dropped)
print('IDS', ' '.join(str(r[1]) for _, r in buf.pending(100)))
"""


def test_overflow_drops_oldest_and_counts(micropython: str, tmp_path: Path) -> None:
    (tmp_path / "hw").mkdir()
    r = subprocess.run(
        [micropython, "-X", "heapsize=96K", "-c", OVERFLOW],
        cwd=tmp_path,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    cap = r.stdout.split("\n")[0].split()
    ids = [int(x) for x in r.stdout.split("IDS")[1].split()]
    assert cap[1:3] == ["2", "7"]
    # the newest readings are kept, in order; every discarded one is counted
    assert ids == sorted(ids) and ids[-1] == 19
    assert int(cap[6]) == 20 - len(ids)
    assert len(ids) <= 7


SMALL_LOG = """
import machine
from state import State, HDR
from buffer import Buffer, rec_size
rtc = machine.RTC()
st = State(HDR + 4 * rec_size(1), rec_size(1))   # a 4-slot ring ...
buf = Buffer(st, 1, 3, lambda: rtc.memory(st.pack()))  # ... and log_max 3, smaller than the ring
for s in range(30):
    buf.append(1, s, s, 's', [s])
    if buf.log.pending() > 3:
        print('OVER', s, buf.log.pending())
print('CAP', st.cap, 'FILL', buf.fill(), 'LOG', buf.log.pending(), 'DROPPED', st.dropped)
print('IDS', ' '.join(str(r[1]) for _, r in buf.pending(100)))
"""


def test_log_max_smaller_than_the_ring(micropython: str, tmp_path: Path) -> None:
    """log_max is enforced even when it is smaller than the ring, and `dropped` counts exactly the
    readings that were discarded: kept + dropped == appended."""
    (tmp_path / "hw").mkdir()
    r = subprocess.run(
        [micropython, "-X", "heapsize=96K", "-c", SMALL_LOG],
        cwd=tmp_path,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "OVER" not in r.stdout, r.stdout
    head = r.stdout.split("IDS")[0].split()
    ids = [int(x) for x in r.stdout.split("IDS")[1].split()]
    dropped = int(head[head.index("DROPPED") + 1])
    assert ids == sorted(ids) and ids[-1] == 29  # the newest are kept, in order
    assert len(ids) + dropped == 30, (ids, dropped)
