"""Timebase under MicroPython: epoch from gmtime(0), unsynced readings corrected at the first sync and
marked 'c', drift estimated between syncs, quality marks."""

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
    def rtc_set(self, tp):
        self.base = tuple_to_ms(tp); self.at = self.true

TRUE0 = 1764072000000
hw = FakeRTC(946684800000, 100)       # power-on: the RTC says 2000-01-01, and runs 100 ppm fast
hw.true = TRUE0; hw.at = TRUE0
st = State(2048, 29); st.boot = 3; st.era_boot = 3
clk = Clock(st, hw, 3600 * 1000)
print('EPOCH', timebase.EPOCH_S)
taken = []
for i in range(3):                   # three readings before any sync, 5 minutes apart
    hw.true = TRUE0 + i * 300000
    t, q = clk.now()
    taken.append((3, i, t, q, []))
    print('HELD', clk.fix(taken[-1]))
hw.true = TRUE0 + 900000
step = clk.sync(hw.true)             # NTP arrives
print('STEP', step)
for r in taken:
    f = clk.fix(r)
    print('FIX', f[1], f[2], f[3], f[2] - (TRUE0 + f[1] * 300000))
t, q = clk.now(); print('NOW', q, t - hw.true)
hw.true += 1800000                   # 30 min later, second sync: drift becomes known
t, q = clk.now(); print('BEFORE2', q, t - hw.true)
clk.sync(hw.true)
print('DRIFT', st.drift_ppb)
hw.true += 1800000
t, q = clk.now(); print('AFTER2', q, t - hw.true)
hw.true += 7200000                    # beyond max age: untrusted
t, q = clk.now(); print('STALE', q)
clk2 = Clock(st, hw, 3600 * 1000)     # the correction survives on flash for a later wake
print('COR', clk2.fix((3, 0, taken[0][2], 'n', []))[3])
"""


def test_correction_drift_and_quality(micropython: str, tmp_path: Path) -> None:
    r = run_mpy(micropython, SCRIPT, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    out = {}
    fixes = []
    for ln in r.stdout.splitlines():
        k, _, rest = ln.partition(" ")
        if k == "FIX":
            fixes.append(rest.split())
        else:
            out.setdefault(k, []).append(rest)
    assert out["EPOCH"] == ["0"]  # the unix port's epoch is 1970; on an ESP32 it is 946684800
    assert out["HELD"] == ["None"] * 3  # year-2000 times are held back until a sync can correct them
    assert len(fixes) == 3
    for seq, _t, q, err in fixes:
        assert q == "c"
        # the correction assumes no drift before the first sync: 100 ppm over <= 15 min is <= 90 ms
        assert abs(int(err)) <= 90 + 1, (seq, err)
    assert out["NOW"][0].split()[0] == "s" and abs(int(out["NOW"][0].split()[1])) <= 1
    before2 = int(out["BEFORE2"][0].split()[1])
    assert 170 <= before2 <= 190  # 100 ppm over 30 minutes, not yet known
    assert -110_000 <= int(out["DRIFT"][0]) <= -90_000  # ppb: the RTC runs 100 ppm fast
    assert abs(int(out["AFTER2"][0].split()[1])) <= 10  # compensated
    assert out["STALE"] == ["u"]
    assert out["COR"] == ["c"]
