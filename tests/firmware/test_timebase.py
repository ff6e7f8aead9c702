"""Timebase under MicroPython, driven by hand on an RTC that runs 2 % fast (an RC oscillator): readings held
until a clock era has a time and a rate (two syncs), then re-timed ('c' before the first sync, 's' between
syncs), the rate
estimate, quality marks, and NTP answers the RTC cannot have produced (refused; one bad answer that was
accepted is undone by the next; answers that keep agreeing with each other win after six hours)."""

from __future__ import annotations

from pathlib import Path

from .conftest import run_mpy

SCRIPT = """
import timebase
from timebase import Clock, tuple_to_ms, ms_to_tuple
from state import State

class FakeRTC:  # a drifting RTC on a hand-driven true clock
    def __init__(self, start_ms, ppm):
        self.true = 0; self.base = start_ms; self.at = 0; self.ppm = ppm
    def rtc_tuple(self):
        el = self.true - self.at
        return ms_to_tuple(self.base + el + el * self.ppm // 1000000)

TRUE0 = 1764072000000
hw = FakeRTC(946684800000, 20000)    # power-on: the RTC says 2000-01-01, and runs 2 % fast
hw.true = TRUE0; hw.at = TRUE0
st = State(2048, 33); st.boot = 3; st.era_boot = 3
clk = Clock(st, hw, 3600 * 1000)
print('EPOCH', timebase.EPOCH_S)
taken = []
def take(seq):
    raw = clk.stamp()
    taken.append(((3, seq, raw, 'n', []), hw.true))
for i in range(3):                   # three readings before any sync, 5 minutes apart
    hw.true = TRUE0 + i * 300000
    take(i)
    print('HELD', clk.fix(taken[-1][0]))
def err(r, true):
    f = clk.fix(r)
    return '%s %d' % (f[3], f[2] - true)
hw.true = TRUE0 + 900000
print('FIRST', clk.sync(hw.true, clk.raw()))
for r, true in taken:
    print('WAIT', clk.fix(r))        # one point: the rate is unknown, so they wait for the second
for i in range(3, 6):                 # readings between the first and the second sync
    hw.true = TRUE0 + 900000 + (i - 2) * 300000
    take(i)
hw.true = TRUE0 + 1800000 + 600000
print('SECOND', clk.sync(hw.true, clk.raw()), st.drift_ppb)
for r, true in taken:
    print('FIX2', err(r, true))
t, q = clk.now(); print('NOW', q, t - hw.true)
hw.true += 1800000
t, q = clk.now(); print('LATER', q, t - hw.true)   # extrapolated at the known rate
hw.true += 3600000
t, q = clk.now(); print('STALE', q)
print('LIE', clk.sync(hw.true + 86400000, clk.raw()), st.npts)   # a day ahead: refused
print('LIE_PAST', clk.sync(1500000000000, clk.raw()))              # before 2020: refused
t, q = clk.now(); print('AFTERLIE', t - hw.true)
hw.true += 600000
print('SMALL', clk.sync(hw.true + 9000, clk.raw()))  # 9 s off: inside what the RTC could do, taken
hw.true += 600000
take(100)
hw.true += 600000
print('GOOD', clk.sync(hw.true, clk.raw()))
print('FIX3', err(taken[-1][0], taken[-1][1]))     # undone by the next good answer, up to a share of 9 s
print('RATE', st.drift_ppb)
# an answer that keeps disagreeing, but agrees with itself: it wins after six over six hours
hw2 = FakeRTC(946684800000, 20000); hw2.true = TRUE0; hw2.at = TRUE0
st2 = State(2048, 33); st2.boot = 1; st2.era_boot = 1
c2 = Clock(st2, hw2, 3600000)
print('C2FIRST', c2.sync(TRUE0 + 7200000, c2.raw()))    # the era began with a lie (2 h ahead)
out = []
for k in range(1, 10):
    hw2.true = TRUE0 + k * 3600000
    out.append(c2.sync(hw2.true, c2.raw()))
print('C2', ' '.join(out))
t, q = c2.now(); print('C2NOW', t - hw2.true)
clk2 = Clock(st, hw, 3600 * 1000)     # the era's points survive on flash for a later wake
st.era_boot = 7                       # (as after a power loss: boot 3 is an earlier era now)
print('COR', clk2.fix(taken[0][0])[3], clk2.fix((2, 0, 5, 'n', [])))
print('CLAMP', timebase.rate_ppb(0, 0, 3 * 86400000, 86400000))
"""


def test_clock_model(micropython: str, tmp_path: Path) -> None:
    r = run_mpy(micropython, SCRIPT, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    out: dict[str, list[str]] = {}
    for ln in r.stdout.splitlines():
        k, _, rest = ln.partition(" ")
        out.setdefault(k, []).append(rest)
    assert out["EPOCH"] == ["0"]  # the unix port's epoch is 1970; on an ESP32 it is 946684800
    assert out["HELD"] == ["None"] * 3  # year-2000 times are held back until the era has a time
    assert out["FIRST"] == ["first"]
    assert out["WAIT"] == ["None"] * 3
    second, ppb = out["SECOND"][0].split()
    assert second == "ok" and 19_900_000 <= int(ppb) <= 20_100_000  # ppb: the RTC runs 2 % fast
    fix2 = [x.split() for x in out["FIX2"]]
    assert [q for q, _ in fix2] == ["c"] * 3 + ["s"] * 3
    assert all(abs(int(e)) <= 2 for _, e in fix2), fix2  # the rate known: re-timed, or interpolated
    assert out["NOW"][0].split()[0] == "s" and abs(int(out["NOW"][0].split()[1])) <= 2
    later = out["LATER"][0].split()
    assert later[0] == "s" and abs(int(later[1])) <= 2
    assert out["STALE"] == ["u"]
    assert out["LIE"][0].split()[0] == "conflict" and out["LIE_PAST"] == ["implausible"]
    assert abs(int(out["AFTERLIE"][0])) <= 2  # the refused answer changed nothing
    assert out["SMALL"] == ["ok"] and out["GOOD"] == ["ok"]
    q3, e3 = out["FIX3"][0].split()
    assert q3 == "s" and abs(int(e3)) <= 9000
    assert 19_000_000 <= int(out["RATE"][0]) <= 21_000_000  # the rate is the RTC's again
    assert out["C2FIRST"] == ["first"]
    c2 = out["C2"][0].split()
    assert c2[:6] == ["conflict"] * 6 and c2[6] == "adopted", c2  # not before 6 answers over 6 h
    assert abs(int(out["C2NOW"][0])) <= 2
    cor = out["COR"][0].split()
    assert cor[0] == "c" and cor[1] == "False"  # an era on flash still maps; one without points never will
    assert int(out["CLAMP"][0]) == 100_000_000  # a rate beyond 10 % is clamped (no int32 wrap)
