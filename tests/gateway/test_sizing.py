"""``plan``'s sizing: the rules over the measured numbers (docs/performance.md and this machine), and the numbers
``plan`` prints agreeing with each other."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.cli import main
from gateway.config import Config, parse_config
from gateway.plan import run_plan
from gateway.sizing import (
    FLINK_SLOT_RATE,
    GATEWAY_READINGS_PER_CPU_S,
    PIPELINE_US,
    REST_US,
    Calibration,
    bridge_pipeline_us,
    calibrate,
    size_fleet,
)

BENCH = Calibration(pipeline_us=PIPELINE_US, encode_us=2.0)  # a machine as fast as the benchmark's


def test_on_the_benchmark_machine_the_default_gateway_takes_what_was_measured() -> None:
    s = size_fleet(readings_per_s=10_500, messages_per_s=1050, pipeline_us=PIPELINE_US, calibration=BENCH,
                   state_bytes=10 * 2**20)  # fmt: skip
    assert s.speed == 1.0 and math.isclose(s.capacity, GATEWAY_READINGS_PER_CPU_S)
    assert math.isclose(s.cpu_share, 0.5) and not s.outgrown and s.reasons == ()
    assert math.isclose(s.catch_up_s or 0, 10_500 * 3600 / 10_500)  # an hour's backlog drains in an hour
    more = size_fleet(readings_per_s=10_600, messages_per_s=1060, pipeline_us=PIPELINE_US, calibration=BENCH,
                      state_bytes=10 * 2**20)  # fmt: skip
    assert more.outgrown and more.reasons[0].startswith("CPU: 10,600 readings/s take 50%")
    never = size_fleet(readings_per_s=30_000, messages_per_s=3000, pipeline_us=PIPELINE_US, calibration=BENCH,
                       state_bytes=0, max_cpu=1.0)  # fmt: skip
    assert never.outgrown and never.catch_up_s is None


def test_checkpoints_take_their_share_whatever_the_rate() -> None:
    # 100 devices sending 525 messages a second: every device's keys in every checkpoint (every 2 s)
    s = size_fleet(readings_per_s=5_250, messages_per_s=525, pipeline_us=PIPELINE_US, calibration=BENCH,
                   state_bytes=0, checkpoint_cpu_s=0.5, devices=100, checkpoint_interval_s=2.0)  # fmt: skip
    assert s.checkpoint_share == 0.25 and math.isclose(s.cpu_share, 0.5) and not s.outgrown
    assert math.isclose(s.capacity, 0.75 * GATEWAY_READINGS_PER_CPU_S)
    assert size_fleet(readings_per_s=5_300, messages_per_s=530, pipeline_us=PIPELINE_US, calibration=BENCH,
                      state_bytes=0, checkpoint_cpu_s=0.5, devices=100, checkpoint_interval_s=2.0).outgrown  # fmt: skip
    # 10,000 devices sending 525 messages a second: 1,050 of them in a checkpoint, not all
    big = size_fleet(readings_per_s=5_250, messages_per_s=525, pipeline_us=PIPELINE_US, calibration=BENCH,
                     state_bytes=0, checkpoint_cpu_s=50.0, devices=10_000, checkpoint_interval_s=2.0)  # fmt: skip
    assert math.isclose(big.checkpoint_share, 50.0 / 10_000 * 525)


def test_a_slower_machine_scales_the_rest_of_the_gateway_and_state_counts_too() -> None:
    pi = Calibration(pipeline_us=4 * PIPELINE_US, encode_us=8.0)  # a core a quarter as fast
    s = size_fleet(readings_per_s=1000, messages_per_s=100, pipeline_us=100.0, calibration=pi,
                   state_bytes=600 * 2**20)  # fmt: skip
    assert s.speed == 0.25 and math.isclose(s.gateway_us, 100.0 + 4 * REST_US)
    assert s.outgrown and s.reasons == ("state: 600 MiB in memory, over the 512 MiB allowed",)
    assert math.isclose(s.flink.bridge_readings_per_cpu_s, 1e6 / (4 * PIPELINE_US + 8.0 + 4 * REST_US))
    measured = size_fleet(readings_per_s=1000, messages_per_s=100, pipeline_us=100.0, calibration=pi,
                          state_bytes=0, bridge_us=50.0)  # fmt: skip
    assert math.isclose(measured.flink.bridge_readings_per_cpu_s, 1e6 / (50.0 + 8.0 + 4 * REST_US))


@settings(max_examples=200, deadline=None)
@example(100.0, 1 / 3, 100.0, 1, 0)  # 100 / (100 x 1/3) is 3.0000000000000004 in floating point: 3 slots
@example(4377315.00390625, 0.05, 100.0, 1, 0)  # 875,463.00078 slots' worth: 875,464, as one fewer is not enough
@given(st.floats(1, 1e7), st.floats(0.05, 1.0), st.floats(100, 1e6), st.integers(1, 8), st.integers(0, 2**40))
def test_flink_setup_covers_the_rate(rate: float, max_cpu: float, slot: float, per_tm: int, state: int) -> None:
    s = size_fleet(readings_per_s=rate, messages_per_s=rate / 10, pipeline_us=20.0, calibration=BENCH,
                   state_bytes=state, max_cpu=max_cpu, flink_slot_rate=slot, slots_per_tm=per_tm)  # fmt: skip
    f = s.flink
    assert f.parallelism is not None and f.task_managers is not None
    # enough slots, each at most max_cpu busy (to rounding: 3.0000000000000004 slots' worth is 3), and not one more
    # than that needs: one fewer is not enough (this said "one fewer is short by over a billionth", which
    # 875,463.00078 slots' worth is not, and Hypothesis found it)
    need = rate / (slot * max_cpu)
    assert f.parallelism >= need * (1 - 1e-9) and (f.parallelism == 1 or f.parallelism - 1 < need)
    assert f.task_managers * per_tm >= f.parallelism > (f.task_managers - 1) * per_tm
    assert f.kafka_partitions == f.parallelism and f.state_per_slot_bytes == state // f.parallelism
    assert f.bridges >= rate / (f.bridge_readings_per_cpu_s * max_cpu) * (1 - 1e-9)
    assert s.outgrown == (s.cpu_share > max_cpu or state > s.memory)


def test_calibration_measures_this_machine() -> None:
    c = calibrate(rounds=1)
    assert c.pipeline_us > 0 and c.encode_us > 0 and math.isclose(c.speed, PIPELINE_US / c.pipeline_us)
    assert bridge_pipeline_us(Config(), ("temp_c",), 5, rounds=1) > 0


def _config(tmp_path: Path) -> str:
    path = tmp_path / "gateway.toml"
    path.write_text(
        '[[windows]]\nname = "t1m"\nkind = "tumbling"\nsize = "60s"\nmetrics = ["temp_c", "rh"]\n'
        'aggregates = ["count", "mean"]\n',
        encoding="utf-8",
    )
    return str(path)


def test_plan_prints_the_sizing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _config(tmp_path)
    assert main(["plan", "--config", cfg, "--devices", "20", "--interval", "30s", "--json", "--hours", "0.1"]) == 0
    doc = json.loads(capsys.readouterr().out)
    s = doc["sizing"]
    assert math.isclose(s["readings_per_s"], 20 / 30) and math.isclose(s["messages_per_s"], 20 / 30 / 10)
    assert math.isclose(s["pipeline_us"], doc["pipeline_us_per_reading"], rel_tol=0.01)
    assert math.isclose(s["gateway_us"], s["pipeline_us"] + REST_US / s["speed"])
    # 20 devices, 0.067 messages a second: each checkpoint holds the keys of those that sent since the one before
    assert math.isclose(s["checkpoint_share"], doc["checkpoint_cpu_s"] / 20 * s["messages_per_s"], abs_tol=1e-4)
    assert doc["checkpoint_bytes"] > 0
    assert math.isclose(s["capacity"], (1 - s["checkpoint_share"]) * 1e6 / s["gateway_us"]) and not s["outgrown"]
    assert s["state_bytes"] == doc["memory_bytes"] > doc["engine_state_bytes"]
    args = ["plan", "--config", cfg, "--devices", "20", "--interval", "30s", "--hours", "0.1"]
    assert main([*args, "--memory", "1KiB", "--flink-slot-rate", "1000"]) == 0
    text = capsys.readouterr().out
    assert "verdict:   OUTGROWN one gateway: state:" in text and "MiB in memory, over the 0 MiB allowed" in text
    assert "job parallelism 1 (1 TaskManager), 1 Kafka partitions" in text
    assert main([*args, "--max-cpu", "0"]) == 2 and main([*args, "--memory", "lots"]) == 2


def test_plan_takes_the_measured_slot_rate_by_default(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Without --flink-slot-rate the parallelism comes from the per-slot rate bench_flink.py measured."""
    assert FLINK_SLOT_RATE > 0
    cfg = _config(tmp_path)
    args = ["plan", "--config", cfg, "--devices", "20", "--interval", "30s", "--hours", "0.1", "--json"]
    assert main(args) == 0
    f = json.loads(capsys.readouterr().out)["sizing"]["flink"]
    assert f["slot_rate"] == FLINK_SLOT_RATE and f["parallelism"] == 1
    assert main([*args, "--flink-slot-rate", "0.01"]) == 0
    f = json.loads(capsys.readouterr().out)["sizing"]["flink"]
    assert f["slot_rate"] == 0.01 and f["parallelism"] == math.ceil(20 / 30 / (0.01 * 0.5))
    assert main(args[:-1]) == 0
    assert f"at {FLINK_SLOT_RATE:,} readings/s a slot" in capsys.readouterr().out


def test_the_plan_measures_anomaly_detection_past_its_warm_up() -> None:
    """A detector learns ``warmup`` readings before it scores (cheaper than scoring): ``plan``'s warm-up must cover
    it, or a short plan measures detectors that never score (the model was low with ``[anomaly]``: measured with
    ``--hours 0.05`` at a reading every 10 s, 20 readings a board, all in the detectors' warm-up of 30)."""
    doc = {"anomaly": {"metrics": ["temp_c", "rh"], "write": "all"}}
    cfg = parse_config(doc, env={})
    res = run_plan(cfg, devices=3, metrics=("temp_c", "rh"), interval_ms=10_000, batch=10, hours=0.05)
    assert res.readings_measured == 3 * 20  # two whole messages of 10 a board
    assert res.anomaly_points_measured >= 3 * 20 * 2  # each metric's point, and the multivariate ones
    assert res.anomaly_warming == 0, res.as_dict()
    assert res.warmup_ms >= 30 * 10_000
