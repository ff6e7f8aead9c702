"""Configuration checked on the board at start, brown-outs and a low battery, under the real MicroPython
unix port against a real Mosquitto: a configuration that cannot work is fixed and reported (on the REPL,
i.e. the wake's output, and in the retained status), never a silent board; a brown-out reset is recognised
and, like a battery below batt_low_mv, keeps the radio off while the readings stay buffered."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from sim.board.runner import BoardSpec, Fleet, Hook, Reset

from .conftest import Broker
from .fitl import MIN, VALUES, config, past_start, run, state_hdr


def _out(r: Any, board: str) -> str:
    return "".join(w.output for w in r.wakes if w.board == board)


def test_rtc_mem_over_2048_is_fixed_and_reported(micropython: str, broker: Broker, tmp_path: Path) -> None:
    dur = 40 * MIN
    start = past_start(dur)
    spec = BoardSpec("cfg-m", config(broker, rtc_mem=4096, publish_every=1), {"values": VALUES}, drift_ppm=8000)
    r = run(tmp_path, broker, [spec], start, start + dur)
    out = _out(r, "cfg-m")
    assert "EK config rtc_mem 4096 > 2048" in out, out[-1500:]
    assert "rtc_mem" in r.sub.status_json("cfg-m")[-1].get("cfg", ""), r.sub.status_json("cfg-m")[-1]
    assert len(r.readings("cfg-m")) >= 5


def test_wake_timeout_too_short_to_publish_is_fixed_and_reported(
    micropython: str, broker: Broker, tmp_path: Path
) -> None:
    dur = 40 * MIN
    start = past_start(dur)
    spec = BoardSpec("cfg-w", config(broker, wake_timeout_s=3, publish_every=1), {"values": VALUES})
    r = run(tmp_path, broker, [spec], start, start + dur)
    out = _out(r, "cfg-w")
    assert "EK config wake_timeout_s 3 leaves no time to publish" in out, out[-1500:]
    assert "wake_timeout_s" in r.sub.status_json("cfg-w")[-1].get("cfg", "")
    assert len(r.readings("cfg-w")) >= 5


def _set_local(fleet: Fleet, board: str, **kw: Any) -> None:
    p = fleet.flash(board) / "config_local.py"
    cfg = ast.literal_eval(p.read_text().split("=", 1)[1].strip())
    cfg.update(kw)
    p.write_text(f"CFG = {cfg!r}\n")


def test_changed_metric_count_is_counted_and_reported(micropython: str, broker: Broker, tmp_path: Path) -> None:
    """Readings buffered (ring and flash) with 4 metrics, then the configuration drops an ADC input: the
    old records cannot be read with the new size. The board says so, counts them in `dropped`, and goes on
    with the new size."""
    dur = 90 * MIN
    start = past_start(dur)
    nm = 4
    rtc_mem = state_hdr(micropython, tmp_path) + 4 * (17 + 4 * nm)  # a 4-slot ring: the rest spills to flash
    spec = BoardSpec("cfg-a", config(broker, rtc_mem=rtc_mem), {"values": VALUES,
                     "wifi_down": [[start - MIN, start + 50 * MIN]]})  # fmt: skip
    change = Hook(start + 47 * MIN, lambda f: _set_local(f, "cfg-a", adc=[["batt_mv", 35, 2.0]]))
    r = run(tmp_path, broker, [spec], start, start + dur, hooks=[change])
    before = [k for k, t in r.truth().items() if t < change.at_vt]
    assert len(before) >= 8
    out = _out(r, "cfg-a")
    assert "EK config the metric count changed" in out, out[-1500:]
    st = r.sub.status_json("cfg-a")[-1]
    assert "adc" in st.get("cfg", ""), st
    notes = [ln for ln in out.splitlines() if "config" in ln or "boot" in ln][:6]
    assert st["dropped"] == len(before), (st["dropped"], len(before), notes)
    after = [k for k, t in r.truth().items() if change.at_vt + 6 * MIN < t < start + dur - 20 * MIN]
    got = r.readings("cfg-a")
    assert after and all(k in got for k in after)
    assert all(set(got[k].metrics) == {"temp_c", "rh", "batt_mv"} for k in after)


def test_brownout_and_low_battery_keep_the_radio_off(micropython: str, broker: Broker, tmp_path: Path) -> None:
    """The battery (batt_mv = 2 x the divider's voltage) sags below batt_low_mv for 40 minutes, later a
    brown-out resets the board (RTC and RTC memory kept). No wake in either stretch uses the radio; every
    reading is kept and arrives once the radio is allowed again; the status counts the brown-out."""
    dur = 210 * MIN
    start = past_start(dur)
    low = (start + 40 * MIN, start + 80 * MIN)
    values = dict(VALUES, adc35={"base": 1.95, "steps": [[low[0], 1.6], [low[1], 1.95]]})
    spec = BoardSpec("pwr-1", config(broker, batt_low_mv=3300), {"values": values}, drift_ppm=-12000)
    brown = Reset("pwr-1", start + 100 * MIN, after_ms=5, cause="brownout", rtc="keep", rtcmem="keep")
    r = run(tmp_path, broker, [spec], start, start + dur, resets=[brown])
    assert brown.done
    wakes = [w for w in r.wakes if w.board == "pwr-1"]
    radio_low = [w.start_vt for w in wakes if low[0] + MIN < w.start_vt < low[1] and any(
        x.startswith("radio on") for x in w.truth)]  # fmt: skip
    assert not radio_low, f"radio used on a low battery at {radio_low}"
    after_brown = [w for w in wakes if w.start_vt > brown.at_vt][:8]
    assert any("brownout True" in w.output for w in after_brown), [w.output[-300:] for w in after_brown[:2]]
    assert not [w.start_vt for w in after_brown if any(x.startswith("radio on") for x in w.truth)]
    assert r.sub.status_json("pwr-1")[-1].get("brownouts") == 1
    got = r.readings("pwr-1")
    taken = [k for k, t in r.truth().items() if t < start + dur - 20 * MIN]
    assert all(k in got for k in taken), [k for k in taken if k not in got][:5]
    assert not r.rejected()
