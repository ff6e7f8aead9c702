"""The four example patterns shipped in gateway/examples/gateway.toml (and docs/cep.md), each with a
scripted stream in order and with disorder inside the watermark bound: exactly the expected matches."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from cep_helpers import BOUND_MS, T0, Row, arrival_order, feed, ids, make_cep

from gateway.cep import Cep
from gateway.config import load_config

EXAMPLE = Path(__file__).resolve().parents[3] / "gateway" / "examples" / "gateway.toml"
S = 1_000
SEEDS = range(12)


def example_cep() -> Cep:
    cfg = load_config(EXAMPLE, env={})
    assert [p.name for p in cfg.patterns] == [
        "failed_3x_5m",
        "overheat_pressure_drop",
        "door_left_open",
        "vibration_rising",
    ]
    assert cfg.engine.watermark.out_of_orderness_ms == BOUND_MS
    return make_cep(cfg.patterns)


def rows_of(device: str, items: list[tuple[int, dict[str, object]]]) -> list[Row]:
    return [(device, seq, T0 + t, m) for seq, (t, m) in enumerate(items)]


FAILED = rows_of(
    "d1",
    [
        (0, {"status": "OK"}),
        (1 * S, {"status": "FAILED"}),  # 1
        (2 * S, {"status": "OK"}),
        (3 * S, {"status": "FAILED"}),  # 3
        (60 * S, {"status": "FAILED"}),  # 4: third within 5 minutes -> alert (1, 3, 4)
        (61 * S, {"status": "FAILED"}),  # 5: starts again after the match
        (200 * S, {"status": "FAILED"}),  # 6
        (362 * S, {"status": "FAILED"}),  # 7: 361 s after 5: the run from 5 times out
        (400 * S, {"status": "FAILED"}),  # 8: 6, 7, 8 within 200 s -> alert (6, 7, 8)
        (401 * S, {"status": "FAILED"}),
        (402 * S, {"temp_c": 20.0}),  # carries no status: the pattern does not see it
    ],
) + rows_of("d2", [(5 * S, {"status": "FAILED"}), (6 * S, {"status": "FAILED"}), (900 * S, {"status": "FAILED"})])

OVERHEAT = rows_of(
    "d5",
    [
        (0, {"temp_c": 85.0, "pressure_hpa": 1000.0}),  # 0 hot
        (10 * S, {"temp_c": 70.0, "pressure_hpa": 950.0}),  # -5%: not enough
        (20 * S, {"temp_c": 70.0, "pressure_hpa": 899.0}),  # 2: -10.1% within 30 s -> alert (0, 2)
        (100 * S, {"temp_c": 81.0, "pressure_hpa": 1000.0}),  # 3 hot
        (131 * S, {"temp_c": 60.0, "pressure_hpa": 800.0}),  # 31 s later: too late
        (200 * S, {"temp_c": 79.0, "pressure_hpa": 1000.0}),  # not hot
        (201 * S, {"temp_c": 60.0, "pressure_hpa": 800.0}),
        (300 * S, {"temp_c": 90.0, "pressure_hpa": 1000.0}),  # 7 hot
        (301 * S, {"temp_c": 91.0, "pressure_hpa": 1020.0}),  # 8 hot again, higher pressure
        (302 * S, {"temp_c": 70.0, "pressure_hpa": 905.0}),  # 9: -11.3% from 8 but only -9.5% from 7 -> (8, 9)
    ],
)

DOOR = rows_of(
    "d3",
    [
        (0, {"door": "closed"}),
        (10 * S, {"door": "open"}),
        (100 * S, {"door": "closed"}),  # 2: closed after 90 s: no alert
        (110 * S, {"door": "open"}),  # 3: opened, stays open past 410 s -> alert (2, 3)
        (112 * S, {"door": "open", "temp_c": 21.0}),  # sampled again: no second alert
        (300 * S, {"door": "open"}),
        (500 * S, {"door": "closed"}),  # 6
        (600 * S, {"door": "open"}),  # 7
        (899 * S, {"door": "closed"}),  # closed 299 s later: no alert
        (1_000 * S, {"door": "closed"}),
        (1_001 * S, {"door": "open"}),  # 10: open until the stream ends (and the watermark passes) -> alert (9, 10)
    ],
)

VIBRATION = rows_of(
    "d4",
    [
        (0, {"vib": 0.10}),  # 0 base
        (1 * S, {"vib": 0.70}),  # +0.6
        (2 * S, {"vib": 1.30}),  # +0.6
        (2 * S + 500, {"temp_c": 20.0}),  # no vib: not a reading of this pattern
        (3 * S, {"vib": 1.90}),  # 4: third rise of more than 0.5 -> alert (0, 1, 2, 4)
        (4 * S, {"vib": 2.50}),  # 5: base of the next match
        (5 * S, {"vib": 2.40}),  # 6: falls
        (6 * S, {"vib": 3.00}),
        (7 * S, {"vib": 3.60}),
        (8 * S, {"vib": 3.55}),  # falls: the run from 6 dies at its third rise
        (9 * S, {"vib": 3.60}),  # 10: noise rises three times in a row, by 0.05 to 0.2 each: no alert
        (10 * S, {"vib": 3.80}),
        (11 * S, {"vib": 3.85}),
        (12 * S, {"vib": 4.00}),  # 13
        (13 * S, {"vib": 4.50}),  # 14: +0.5 exactly is not more than 0.5: the run from 13 dies; 14 is a base
        (14 * S, {"vib": 5.25}),
        (15 * S, {"vib": 6.00}),
        (16 * S, {"vib": 6.75}),  # 17: three rises of 0.75 since 14 -> alert (14, 15, 16, 17)
    ],
)


def rid(device: str, *seqs: int) -> tuple[tuple[str, int, int], ...]:
    return tuple((device, 1, s) for s in seqs)


CASES = {
    "failed_3x_5m": (FAILED, [rid("d1", 1, 3, 4), rid("d1", 6, 7, 8)]),
    "overheat_pressure_drop": (OVERHEAT, [rid("d5", 0, 2), rid("d5", 8, 9)]),
    "door_left_open": (DOOR, [rid("d3", 2, 3), rid("d3", 9, 10)]),
    "vibration_rising": (VIBRATION, [rid("d4", 0, 1, 2, 4), rid("d4", 14, 15, 16, 17)]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_in_order(name: str) -> None:
    rows, want = CASES[name]
    cep = example_cep()
    matches = feed(cep, rows)
    assert [m.pattern.name for m in matches] == [name] * len(want)
    assert ids(matches) == want
    assert cep.stats["late"] == 0


@pytest.mark.parametrize("name", list(CASES))
def test_disorder_within_the_bound(name: str) -> None:
    rows, want = CASES[name]
    reordered = 0
    for seed in SEEDS:
        rng = random.Random(seed)
        reordered += arrival_order(rows, random.Random(seed)) != arrival_order(rows, None)
        cep = example_cep()
        matches = feed(cep, rows, rng)
        assert ids(matches) == want, seed
        assert cep.stats["late"] == 0
    assert reordered > 0, "the script must actually arrive out of order"


def test_all_four_at_once_on_one_fleet() -> None:
    rows = [r for rows, _ in CASES.values() for r in rows]
    # one device per case: reading identities stay unique
    cep = example_cep()
    got = sorted((m.pattern.name, m.readings) for m in feed(cep, rows, random.Random(7)))
    want = sorted((name, r) for name, (_, w) in CASES.items() for r in w)
    assert got == want


def test_alerts_carry_pattern_key_times_and_values() -> None:
    cep = example_cep()
    m = feed(cep, OVERHEAT)[0]
    alert = m.to_alert()
    assert (alert.source, alert.name, alert.site, alert.key, alert.severity) == (
        "pattern", "overheat_pressure_drop", "site-a", "d5", "critical",
    )  # fmt: skip
    assert (alert.first_ms, alert.last_ms) == (T0, T0 + 20 * S)
    assert alert.readings == rid("d5", 0, 2)
    assert alert.details == {"hot.temp_c": 85.0, "hot.pressure_hpa": 1000.0, "drop.pressure_hpa": 899.0}


def test_door_alert_waits_for_the_watermark() -> None:
    """The quiet period ends in event time: nothing is raised before the watermark passes open + 5 min."""
    cep = example_cep()
    rows = DOOR[2:5]  # closed@100 s, open@110 s, open@112 s
    assert feed(cep, rows, flush=False) == []
    # a reading at 414 s puts the watermark at 409 s: still inside the span (110 s + 300 s = 410 s)
    assert feed(cep, [("d3", 5, T0 + 414 * S, {"door": "open"})], flush=False) == []
    got = feed(cep, [("d3", 6, T0 + 416 * S, {"door": "open"})], flush=False)  # watermark 411 s > 410 s
    assert ids(got) == [rid("d3", 2, 3)]


def test_a_reading_later_than_the_bound_is_counted_not_matched() -> None:
    cep = example_cep()
    rows = FAILED[:4]  # OK, FAILED@1 s, OK, FAILED@3 s
    feed(cep, rows, flush=False)
    feed(cep, [("d1", 20, T0 + 60 * S, {"status": "OK"})], flush=False)  # watermark 55 s
    late = feed(cep, [("d1", 21, T0 + 10 * S, {"status": "FAILED"})], flush=False)  # 45 s behind
    assert late == [] and cep.stats["late"] == 1
