"""Checkpoints paced by their cost: ``state.checkpoint_max_share`` bounds the share of the time they take.

A checkpoint's cost grows with the keys changed since the one before (each device sending in between), not with
the interval: with 1,000 boards sending every few seconds, every checkpoint rewrites every row, and at the
default 2 s the checkpoints took about a fifth of the gateway's core (docs/semantics.md). The tick now waits
``max(checkpoint_interval_s, cost / checkpoint_max_share - duration)`` after a checkpoint, so their share stays
under the bound whatever the fleet; the log's size (``checkpoint_max_log_rows``) still forces one.

The gateway runs in this process (no broker: its input is handed to it as the ingest would), its tick loop on
its own schedule.
"""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

import pytest

from gateway.app import Gateway
from gateway.config import ConfigError, parse_config

T0 = 1_764_072_000_000
DEVICES = 200


def _doc(tmp_path: Path, **state: Any) -> dict[str, Any]:
    return {
        "influx": {"url": "http://127.0.0.1:9", "max_buffered": 1_000_000},  # nothing listens: lines stay in memory
        "state": {"dir": str(tmp_path / "state"), **state},
    }


def _message(device: int, k: int) -> tuple[str, bytes, bool]:
    rows = [{"b": 1, "s": k * 5 + i, "t": T0 + (k * 5 + i) * 1000, "q": "s", "m": {"x": i + 0.5, "y": 1.25 * k}}
            for i in range(5)]  # fmt: skip
    return f"edgekit/s/d{device:03d}/readings", json.dumps({"v": 1, "dev": f"d{device:03d}", "r": rows}).encode(), False


async def _feed(gw: Gateway, k: int) -> None:
    """One message from every device (each key changes: the next checkpoint has every row to write)."""
    await gw._process(gw._accept([_message(d, k) for d in range(DEVICES)]))


async def _checkpoints_over_ticks(gw: Gateway, ticks: int) -> int:
    """Run the gateway's tick loop for ``ticks`` ticks, every device sending before each; checkpoints it took."""
    done = asyncio.Event()
    stop = asyncio.Event()
    count = [0]
    tick = gw._tick

    async def counted() -> None:
        await _feed(gw, 100 + count[0])
        await tick()
        count[0] += 1
        if count[0] >= ticks:
            stop.set()
            done.set()

    gw._tick = counted  # type: ignore[method-assign]
    before = gw.checkpoints
    await asyncio.wait_for(gw._tick_loop(stop), 60)
    assert done.is_set()
    return gw.checkpoints - before


@pytest.mark.parametrize("bad", [0, -0.5, 1.5, math.nan, math.inf])
def test_the_share_is_checked(tmp_path: Path, bad: float) -> None:
    with pytest.raises(ConfigError, match=r"checkpoint_max_share: .* is not a share of the time|must be > 0"):
        parse_config(_doc(tmp_path, checkpoint_max_share=bad), env={})


def test_the_default_bounds_checkpoints_to_a_tenth() -> None:
    cfg = parse_config({}, env={})
    assert cfg.state.checkpoint_max_share == 0.1 and cfg.state.checkpoint_interval_s == 2.0


@pytest.mark.parametrize("share", [1.0, 1e-6])
async def test_the_tick_waits_as_long_as_the_last_checkpoint_cost_asks(tmp_path: Path, share: float) -> None:
    """Ticks every 10 ms, a checkpoint due every 10 ms by the interval: unpaced (share 1) most ticks take one;
    at a share of a millionth the first checkpoint's cost (milliseconds of CPU) puts the next one thousands of
    seconds away, so no second one is taken."""
    cfg = parse_config(_doc(tmp_path, checkpoint_interval_s=0.01, checkpoint_max_share=share), env={})
    gw = Gateway(cfg, stats_interval_s=0.01)
    try:
        await gw.recover()
        await _feed(gw, 0)
        taken = await _checkpoints_over_ticks(gw, 20)
        last = gw.last_checkpoint
        assert last["cost_s"] > 0 and last["encode_cpu_s"] > 0, last
        assert last["cost_s"] <= last["total_s"] + 1e-3, last  # its own work is part of its time
        # the bound: the last checkpoint's cost over its time and the gap after it
        assert last["cost_s"] / (last["total_s"] + gw.checkpoint_gap_s) <= share + 1e-9, last
        if share == 1.0:
            assert gw.checkpoint_gap_s == 0.01
            assert taken >= 5, f"{taken} checkpoints in 20 ticks with a 10 ms interval and no pacing"
        else:
            assert gw.checkpoint_gap_s > 100, last
            assert taken == 1, f"{taken} checkpoints in 20 ticks; the first one's cost asks {gw.checkpoint_gap_s} s"
        stats = gw.snapshot_stats(live=False)["state"]
        assert stats["checkpoint_gap_s"] == round(gw.checkpoint_gap_s, 3)
        assert stats["checkpoint_cost_s"] == round(last["cost_s"], 4)
    finally:
        gw.store.close()


async def test_the_logs_size_still_forces_a_checkpoint_while_paced(tmp_path: Path) -> None:
    """Pacing stretches the interval, never the log: at ``checkpoint_max_log_rows`` a checkpoint is taken and the
    log cut, however long the tick would wait."""
    cfg = parse_config(
        _doc(tmp_path, checkpoint_interval_s=0.01, checkpoint_max_share=1e-6, checkpoint_max_log_rows=3 * DEVICES),
        env={},
    )
    gw = Gateway(cfg, stats_interval_s=0.01)
    try:
        await gw.recover()
        await _feed(gw, 0)
        await gw.checkpoint()
        assert gw.checkpoint_gap_s > 100
        taken = gw.checkpoints
        for k in range(1, 8):
            await _feed(gw, k)
            assert gw.store.log_rows < 3 * DEVICES + DEVICES, f"the log holds {gw.store.log_rows} rows"
        assert gw.checkpoints - taken >= 2, "the log's size took no checkpoint while the tick was paced"
    finally:
        gw.store.close()
