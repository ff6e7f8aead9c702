"""Crash test: 100,000 readings while the gateway is killed with SIGKILL at five random moments.

The gateway runs as ``python -m gateway run``; a seeded random schedule kills it once in each fifth of the
publishing time and starts it again at once. Afterwards InfluxDB must hold every reading exactly once with
its values, and every window result must equal the one an uninterrupted run of the same pipeline gives.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from harness import PROCESSING_TIME_FIELDS, GatewayProcess, reference_outputs, toml_value, wait_until, write_config
from helpers import influx_query
from services import Proc

from sim.fleet import FleetSpec, Plan, generate
from sim.publish import BrokerConfig, publish

DEVICES = 100
READINGS_PER_DEVICE = 1000
INTERVAL_MS = 60_000
WINDOW_MS = 600_000  # the t10m window of _windows(), and the s31m window's slide
RATE = 350.0  # messages per second: publishing lasts ~15 s, long enough for five kills and restarts
SEED = 20240611


def crash_plan(prefix: str, now_ms: int) -> Plan:
    """The fleet's traffic, ending about ``now_ms``, laid on the window grid the same way whatever the clock.

    Each device reads once a minute for 1,000 minutes from ``start + phase`` (phase < 1 minute), so how many
    10-minute windows close by its last batch (watermark and flush marker at its last reading) depends on
    where its first reading falls in a window: 100 when at least a minute past the window's start, 99 when
    within the first minute (the last reading then opens no new window and the one it is in stays open).
    Left to the wall clock (``now - span``), some devices fall so in about one run in five, and the
    uninterrupted reference itself has fewer windows than the test asserts. So the start is one minute past
    a window boundary: every device has exactly 100 closed windows, and every reading is before ``now_ms``.
    """
    span = READINGS_PER_DEVICE * INTERVAL_MS
    start = now_ms - span - (now_ms - span) % WINDOW_MS + INTERVAL_MS
    if start + span > now_ms:
        start -= WINDOW_MS
    return generate(
        FleetSpec(
            devices=DEVICES,
            readings_per_device=READINGS_PER_DEVICE,
            interval_ms=INTERVAL_MS,
            batch_size=20,
            sites=("north", "south"),
            metrics=("temp_c", "rh"),
            duplicate_rate=0.05,
            seed=SEED,
            prefix=prefix,
            start_ms=start,
        )
    )


@pytest.mark.parametrize("past_boundary_s", [0, 570])
def test_crash_plan_has_every_window_whatever_the_clock(past_boundary_s: int) -> None:
    """The uninterrupted reference has 100 windows per device and metric at any wall-clock time (no services)."""
    now = 1_795_557_000_000 - 1_795_557_000_000 % WINDOW_MS + past_boundary_s * 1000
    plan = crash_plan("c0", now)
    assert max(r.t_ms for r in plan.readings) <= now
    doc = {"mqtt": {"prefix": "c0"}, "windows": _windows()}
    reference = reference_outputs(doc, plan.messages, "window", now)
    assert _per_window(reference) == EXPECTED


@pytest.mark.integration
@pytest.mark.slow
async def test_sigkill_five_times_loses_and_duplicates_nothing(
    broker: Proc, influxdb_v1: Proc, influx_db: str, tmp_path: Path
) -> None:
    prefix = f"c{uuid.uuid4().hex[:6]}"
    plan = crash_plan(prefix, int(time.time() * 1000))
    assert len(plan.readings) == 100_000
    sections: dict[str, dict[str, object]] = {
        "mqtt": {"url": f"mqtt://{broker.host}:{broker.port}", "prefix": prefix, "client_id": f"gw-{prefix}"},
        "influx": {"target": "v1", "url": influxdb_v1.url, "database": influx_db, "batch_size": 2000},
        "state": {"dir": str(tmp_path / "state"), "checkpoint_interval_s": 1.0},
        "log": {"format": "json", "level": "INFO"},
    }
    config = write_config(tmp_path / "gateway.toml", sections, _windows_toml())
    gw = GatewayProcess(config, tmp_path)
    gw.start()
    wait_until(lambda: gw.stats().get("mqtt", {}).get("connected"), "gateway connected", 30, gw)

    rng = random.Random(SEED)
    duration = len(plan.messages) / RATE
    kill_at = [duration * (i + rng.uniform(0.1, 0.9)) / 5 for i in range(5)]
    publisher = asyncio.create_task(
        publish(plan.messages, BrokerConfig(broker.host, broker.port), client_id=f"sim-{prefix}", rate=RATE)
    )
    started = time.monotonic()
    logged_positions = []
    for at in kill_at:
        await asyncio.sleep(max(0.0, started + at - time.monotonic()))
        logged_positions.append(gw.stats().get("state", {}).get("log_pos"))
        gw.kill()
        await asyncio.sleep(rng.uniform(0.0, 0.5))
        gw.start()
    result = await publisher
    assert result.messages == len(plan.messages)
    assert gw.kills == 5 and gw.starts == 6

    counts = plan.counts()

    def done() -> bool:
        s = gw.stats()
        p = s.get("pipeline", {})
        return (
            p.get("readings_accepted") == counts.readings
            and p.get("status_updates") == 100
            and s["sink"]["pending"] == 0
        )

    wait_until(done, "every message processed and written", 240, gw)
    assert gw.stop() == 0, gw.logs()
    stats = gw.stats()
    # the counters are part of the checkpoint, so they too count each reading once across the crashes; a
    # byte-identical copy the broker re-sends (DUP) after a crash is skipped when a copy was logged, which
    # may take one of the board's own re-sent duplicates with it: between "every distinct" and "every"
    assert stats["pipeline"]["readings_accepted"] == counts.readings
    assert stats["pipeline"]["status_updates"] == 100
    assert counts.messages - counts.duplicates <= stats["pipeline"]["messages"] <= counts.messages
    assert stats["sink"]["points_refused"] == 0
    assert stats["sink"]["spool_lines"] == 0
    print(f"kills at {[round(k, 1) for k in kill_at]} s; stats {stats}")

    # every reading exactly once, with its time and values
    want: dict[str, dict[int, Any]] = {}
    for r in plan.readings:
        want.setdefault(r.device, {})[r.seq] = r
    total = 0
    for device, by_seq in want.items():
        rows = influx_query(influxdb_v1.url, influx_db, f"SELECT * FROM reading WHERE device = '{device}'", epoch="ms")
        total += len(rows)
        assert sorted(row["seq"] for row in rows) == sorted(by_seq), device
        for row in rows:
            r = by_seq[row["seq"]]
            assert (row["time"], row["boot"], row["temp_c"], row["rh"]) == (
                r.t_ms,
                r.boot,
                r.metrics["temp_c"],
                r.metrics["rh"],
            )
    assert total == 100_000

    # every window result equals the uninterrupted run's
    doc = {"mqtt": {"prefix": prefix}, "windows": _windows()}
    reference = reference_outputs(doc, plan.messages, "window", int(time.time() * 1000))
    assert _per_window(reference) == EXPECTED
    rows = influx_query(influxdb_v1.url, influx_db, 'SELECT * FROM "window"', epoch="ns")
    got = {}
    for row in rows:
        tags = tuple(sorted((k, row[k]) for k in ("device", "metric", "site", "window")))
        skip = {k for k, _ in tags} | {"time"} | PROCESSING_TIME_FIELDS
        got[(tags, row["time"])] = {k: v for k, v in row.items() if v is not None and k not in skip}
    assert len(rows) == len(got) == len(reference)
    assert got == reference


def _windows() -> list[dict[str, object]]:
    """A tumbling window, and a sliding one whose panes (1 minute: the gcd of 31 and 10) hold one reading each, as a
    board read once a minute fills them: the checkpoint holds them as readings and the front stack as the pane it
    starts from, which a restart makes again (docs/semantics.md, State). Its windows span three slides and a pane,
    so that after a message (20 minutes of a board's readings) the front often holds panes the next window needs:
    with 11 minutes every 10, a restart that made no front at all went unnoticed."""
    return [
        {
            "name": "t10m",
            "kind": "tumbling",
            "size": "10m",
            "metrics": ["temp_c", "rh"],
            "aggregates": ["count", "sum", "min", "max", "first", "last"],
            "allowed_lateness": "0s",
            "key": "device",
        },
        {
            "name": "s31m",
            "kind": "sliding",
            "size": "31m",
            "slide": "10m",
            "metrics": ["temp_c"],
            "aggregates": ["count", "sum", "mean", "min", "max", "stddev", "first", "last"],
            "key": "device",
        },
    ]


EXPECTED = {"t10m": DEVICES * 2 * (READINGS_PER_DEVICE // 10), "s31m": DEVICES * (READINGS_PER_DEVICE // 10 - 1)}
"""Window results of the uninterrupted run, a device: 100 tumbling windows of each metric (see crash_plan), and 99
sliding ones (from the one starting 20 minutes before the first reading's window to the last that ends by the last
reading)."""


def _windows_toml() -> str:
    lines = []
    for w in _windows():
        lines += ["", "[[windows]]", *(f"{k} = {toml_value(v)}" for k, v in w.items())]
    return "\n".join(lines) + "\n"


def _per_window(reference: dict[Any, Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for tags, _ in reference:
        name = dict(tags)["window"]
        counts[name] = counts.get(name, 0) + 1
    return counts
