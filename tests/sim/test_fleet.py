"""The simulator's pure layer: every generated message against the gateway's own decoder, and the plan's
ground truth against what that decoder makes of the messages."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from collections import Counter, defaultdict
from typing import Any

import pytest

from gateway.errors import DecodeError
from gateway.model import Batch, Reading, StatusUpdate
from gateway.protocol import decode
from gateway.schema import MetricTypes
from sim.errors import SpecError
from sim.faults import InjectedAnomaly, ScriptedSequence, sequence_events
from sim.fleet import (
    MALFORMED_KINDS,
    MIN_TIME_MS,
    ExpectedReading,
    FleetSpec,
    Plan,
    WireReading,
    encode_batch,
    encode_status,
    generate,
)

NOW = 1_764_072_000_000  # 2025-11-25T12:00:00Z
M = 60_000


def fixed_now() -> int:
    return NOW


SPECS = {
    "defaults": FleetSpec(),
    "messy": FleetSpec(
        devices=7,
        sites=("site-a", "site_b", "C3"),
        readings_per_device=23,
        batch_size=4,
        interval_ms=15_000,
        metrics=("temp_c", "rh", "vib", "pressure_hpa"),
        duplicate_rate=0.3,
        malformed=25,
        nan_readings=6,
        old_readings=5,
        seed=7,
    ),
    "full_batches": FleetSpec(
        devices=2, readings_per_device=130, batch_size=64, metrics=("temp_c", "rh", "vib", "pressure_hpa"), seed=3
    ),
    "one_per_message": FleetSpec(devices=3, readings_per_device=5, batch_size=1, duplicate_rate=1.0, seed=11),
    "one_device_mismatch": FleetSpec(devices=1, readings_per_device=3, malformed=8, prefix="plant9", seed=5),
    "injected": FleetSpec(
        devices=4,
        readings_per_device=40,
        batch_size=8,
        metrics=("temp_c", "rh", "vib"),
        duplicate_rate=0.3,
        nan_readings=2,
        seed=9,
        anomalies=(
            InjectedAnomaly("spike", "dev-0001", "temp_c", 10 * M, 11 * M, {"magnitude": 3.0}),
            InjectedAnomaly("drift", "dev-0001", "vib", 30 * M, 35 * M, {"magnitude": 45.0}),
            InjectedAnomaly("level_shift", "dev-0002", "rh", 5 * M, 15 * M, {"magnitude": -8.0}),
            InjectedAnomaly("stuck", "dev-0003", "temp_c", 20 * M, 30 * M),
            InjectedAnomaly("dropout", "dev-0004", "rh", 3 * M, 8 * M),
        ),
        sequences=(
            ScriptedSequence("door_closed", "dev-0002", 2 * M),
            ScriptedSequence("door_left_open", "dev-0002", 12 * M),
            ScriptedSequence("three_failures", "dev-0003", 38 * M),  # its last event falls after the span
        ),
    ),
}


def plan_of(name: str) -> Plan:
    return generate(SPECS[name], fixed_now)


def declared(plan: Plan) -> MetricTypes:
    """The gateway's ``[metric_types]`` for the plan (the sequences' string metrics)."""
    return MetricTypes(**{kind: frozenset(names) for kind, names in plan.metric_types().items()})


def as_truth(r: Reading) -> ExpectedReading:
    return ExpectedReading(r.site, r.device, r.boot, r.seq, r.t_ms, r.quality, dict(r.metrics))


def types_of(metrics: Any) -> dict[str, type]:
    return {k: type(v) for k, v in metrics.items()}


@pytest.mark.parametrize("name", list(SPECS))
def test_every_message_decodes_to_exactly_the_ground_truth(name: str) -> None:
    plan = plan_of(name)
    prefix = plan.spec.prefix
    types = declared(plan)
    readings: list[ExpectedReading] = []
    rejected: list[tuple[str, int, str]] = []
    malformed: list[tuple[str, str]] = []
    first_payloads: dict[str, set[bytes]] = defaultdict(set)
    for msg in plan.messages:
        if msg.kind == "malformed":
            with pytest.raises(DecodeError) as info:
                decode(msg.topic, msg.payload, NOW, prefix=prefix, types=types)
            assert info.value.reason == msg.expect_reason, (msg.topic, msg.payload[:120], info.value.detail)
            malformed.append((msg.topic, info.value.reason))
            continue
        assert msg.expect_reason is None
        result = decode(msg.topic, msg.payload, NOW, prefix=prefix, types=types)
        if msg.kind == "status":
            assert isinstance(result, StatusUpdate)
            assert result.state == "online" and result.device == msg.device
            assert {"boot", "t", "sleep_s", "battery_mv", "buf", "buf_cap", "fw"} <= set(result.fields)
            continue
        assert isinstance(result, Batch)
        assert len(result.readings) == msg.readings
        assert tuple(d.reason for d in result.rejected) == msg.rejects
        if msg.kind == "duplicate":
            assert msg.payload in first_payloads[msg.topic], "a duplicate repeats an earlier batch"
            continue
        first_payloads[msg.topic].add(msg.payload)
        readings.extend(as_truth(r) for r in result.readings)
        rejected.extend((d.topic, d.index if d.index is not None else -1, d.reason) for d in result.rejected)
    assert readings == list(plan.readings)
    for got, want in zip(readings, plan.readings, strict=True):
        assert types_of(got.metrics) == types_of(want.metrics)  # 21.0 stays a float
    assert rejected == [(r.topic, r.index, r.reason) for r in plan.rejected]
    assert malformed == [(m.topic, m.reason) for m in plan.malformed]


@pytest.mark.parametrize("name", list(SPECS))
def test_counts_predict_what_the_decoder_dead_letters(name: str) -> None:
    plan = plan_of(name)
    dead: Counter[str] = Counter()
    accepted = 0
    for msg in plan.messages:
        try:
            result = decode(msg.topic, msg.payload, NOW, prefix=plan.spec.prefix, types=declared(plan))
        except DecodeError as err:
            dead[err.reason] += 1
            continue
        if isinstance(result, Batch):
            dead.update(d.reason for d in result.rejected)
            accepted += len(result.readings)
    counts = plan.counts()
    assert counts.dead_letters_by_reason == dict(sorted(dead.items()))
    assert counts.dead_letters == sum(dead.values())
    assert counts.readings + counts.duplicate_readings == accepted
    assert counts.messages == len(plan.messages)
    assert counts.statuses + counts.batches + counts.duplicates + counts.malformed == counts.messages


def test_readings_cover_every_device_sequence_without_gaps() -> None:
    spec = SPECS["messy"]
    plan = plan_of("messy")
    seqs: dict[str, list[int]] = defaultdict(list)
    for r in plan.readings:
        seqs[r.device].append(r.seq)
    for bad in plan.rejected:
        seqs[bad.device].append(bad.seq)
    assert len(plan.readings) == spec.devices * spec.readings_per_device - spec.nan_readings - spec.old_readings
    assert Counter(r.reason for r in plan.rejected) == {"non_finite": 6, "time_too_old": 5}
    for dev in plan.devices:
        got = sorted(seqs[dev.device])
        assert got == list(range(dev.first_seq, dev.first_seq + spec.readings_per_device))
    assert len({r.device for r in plan.readings}) == spec.devices
    assert {r.site for r in plan.readings} == set(spec.sites)


def test_event_times_lie_in_the_past_spaced_by_the_interval() -> None:
    spec = SPECS["messy"]
    plan = plan_of("messy")
    assert plan.start_ms == NOW - spec.readings_per_device * spec.interval_ms
    by_device: dict[str, list[int]] = defaultdict(list)
    for r in plan.readings:
        assert plan.start_ms <= r.t_ms < NOW
        by_device[r.device].append(r.t_ms)
    for times in by_device.values():
        assert all((b - a) % spec.interval_ms == 0 and b > a for a, b in itertools.pairwise(times))
    old = [bad for bad in plan.rejected if bad.reason == "time_too_old"]
    assert len(old) == spec.old_readings and all(bad.t_ms < MIN_TIME_MS for bad in old)


def test_explicit_start_is_used_and_the_clock_is_not_read() -> None:
    def no_clock() -> int:
        raise AssertionError("the clock must not be read when start_ms is given")

    start = 1_700_000_000_000
    plan = generate(FleetSpec(devices=2, readings_per_device=3, start_ms=start), no_clock)
    assert plan.start_ms == start
    assert min(r.t_ms for r in plan.readings) >= start


def test_same_seed_same_plan_other_seed_other_values() -> None:
    a = generate(SPECS["messy"], fixed_now)
    b = generate(SPECS["messy"], fixed_now)
    assert a.messages == b.messages and a.readings == b.readings and a.malformed == b.malformed
    c = generate(FleetSpec(**{**_fields(SPECS["messy"]), "seed": 8}), fixed_now)
    assert [m.payload for m in c.messages] != [m.payload for m in a.messages]


def test_duplicates_and_malformed_do_not_change_the_readings() -> None:
    plain = generate(FleetSpec(devices=4, readings_per_device=20, seed=2), fixed_now)
    noisy = generate(FleetSpec(devices=4, readings_per_device=20, seed=2, duplicate_rate=0.5, malformed=9), fixed_now)
    assert noisy.readings == plain.readings
    assert noisy.counts().duplicates > 0 and plain.counts().duplicates == 0


@pytest.mark.parametrize(("rate", "low", "high"), [(0.0, 0, 0), (1.0, 40, 40), (0.25, 4, 18)])
def test_duplicate_rate_is_the_fraction_of_batches_sent_twice(rate: float, low: int, high: int) -> None:
    plan = generate(FleetSpec(devices=4, readings_per_device=100, duplicate_rate=rate, seed=4), fixed_now)
    counts = plan.counts()
    assert counts.batches == 40
    assert low <= counts.duplicates <= high
    first_seen: dict[bytes, int] = {}
    for i, m in enumerate(plan.messages):
        if m.kind == "batch":
            first_seen[m.payload] = i
        elif m.kind == "duplicate":
            assert first_seen[m.payload] < i  # re-sent after the original, never before


def test_malformed_messages_cycle_through_every_kind_and_variant() -> None:
    plan = generate(FleetSpec(devices=3, readings_per_device=4, malformed=3 * len(MALFORMED_KINDS)), fixed_now)
    reasons = Counter(m.reason for m in plan.malformed)
    assert reasons == {kind: 3 for kind in MALFORMED_KINDS}
    defects = {m.defect for m in plan.malformed}
    assert {"version_2", "version_missing", "version_string"} <= defects
    assert {"unknown_kind", "extra_level", "bad_device_name"} <= defects
    assert {"r_not_a_list", "empty_without_flushed", "flushed_not_an_integer"} <= defects
    oversize = [m for m in plan.malformed if m.reason == "oversize"]
    assert all(m.size > 8192 for m in oversize)
    assert all(m.size <= 8192 for m in plan.malformed if m.reason != "oversize")


def test_statuses_come_first_retained_one_per_device() -> None:
    plan = plan_of("messy")
    n = plan.spec.devices
    head = plan.messages[:n]
    assert [m.kind for m in head] == ["status"] * n
    assert all(m.retain for m in head) and not any(m.retain for m in plan.messages[n:])
    assert sorted(m.topic for m in head) == sorted(f"edgekit/{d.site}/{d.device}/status" for d in plan.devices)
    assert Counter(m.kind for m in plan.messages)["status"] == n


def test_last_batch_of_each_device_carries_the_flushed_marker() -> None:
    plan = plan_of("messy")
    marked: dict[str, int] = {}
    for m in plan.messages:
        if m.kind != "batch":
            continue
        assert m.device not in marked, "a batch after the flushed marker"
        doc = json.loads(m.payload)
        if "flushed" in doc:
            marked[m.device] = doc["flushed"]
    assert marked == dict(plan.flushed)
    assert len(marked) == plan.spec.devices
    for dev, flushed in marked.items():
        assert max(r.t_ms for r in plan.readings if r.device == dev) <= flushed < NOW
    unmarked = generate(FleetSpec(devices=2, readings_per_device=5, flush_last=False), fixed_now)
    assert not unmarked.flushed
    assert not any(b'"flushed"' in m.payload for m in unmarked.messages)


def test_batches_are_in_canonical_form() -> None:
    for m in plan_of("messy").messages:
        if m.kind not in ("batch", "status"):
            continue
        doc = json.loads(m.payload)
        assert json.dumps(doc, separators=(",", ":")).encode() == m.payload
        assert list(doc)[:2] == ["v", "dev"]
        if m.kind == "batch":
            assert list(doc)[2:] in (["r"], ["r", "flushed"])
            assert all(list(r) == ["b", "s", "t", "q", "m"] for r in doc["r"])
        else:
            assert list(doc)[2] == "state"


def test_encoders_match_the_shared_vectors() -> None:
    batch = encode_batch(
        "dev-1",
        [
            WireReading(17, 121, 1764072060123, "s", {"temp_c": 21.6, "rh": 40.0}),
            WireReading(17, 122, 1764072120123, "c", {"door": "open", "vib": 3}),
            WireReading(17, 123, 1764072180123, "u", {"ok": True, "adc": -12}),
        ],
        flushed=1764072180123,
    )
    status = encode_status(
        "dev-1",
        "online",
        {"boot": 17, "t": 1764072000123, "clock": "s", "sleep_s": 300, "battery_mv": 3911, "buf": 12,
         "buf_cap": 256, "dropped": 0, "fw": "0.1.0"},
    )  # fmt: skip
    vectors = "tests/vectors/"
    with open(vectors + "valid_batch_flushed.json", encoding="utf-8") as f:
        assert batch == json.load(f)["payload"].encode()
    with open(vectors + "status_online.json", encoding="utf-8") as f:
        assert status == json.load(f)["payload"].encode()
    nan = encode_batch("d", [WireReading(1, 0, 1764072000123, "s", {"temp_c": math.nan})])
    assert b'"temp_c":NaN' in nan  # as MicroPython writes it


def test_truth_is_json_and_matches_the_plan() -> None:
    plan = plan_of("messy")
    truth = json.loads(json.dumps(plan.truth(), allow_nan=False))
    assert truth["counts"] == json.loads(json.dumps(dataclasses.asdict(plan.counts())))
    assert truth["readings"] == [r.to_json() for r in plan.readings]
    assert truth["readings"][0].keys() == {"site", "device", "boot", "seq", "t", "q", "m"}
    assert [(r["topic"], r["index"], r["reason"]) for r in truth["rejected"]] == [
        (r.topic, r.index, r.reason) for r in plan.rejected
    ]
    assert [m["reason"] for m in truth["malformed"]] == [m.reason for m in plan.malformed]
    assert truth["spec"]["sites"] == ["site-a", "site_b", "C3"]
    assert truth["start_ms"] == plan.start_ms


def _fields(spec: FleetSpec) -> dict[str, Any]:
    return {name: getattr(spec, name) for name in spec.__dataclass_fields__}


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"devices": 0}, "devices"),
        ({"sites": ()}, "site"),
        ({"sites": ("a/b",)}, "'a/b'"),
        ({"readings_per_device": 0}, "readings_per_device"),
        ({"batch_size": 65}, "batch_size"),
        ({"batch_size": 0}, "batch_size"),
        ({"interval_ms": 0}, "interval_ms"),
        ({"start_ms": 946_684_800_000}, "2020"),
        ({"metrics": ("temp_c", "co2")}, "'co2'"),
        ({"metrics": ()}, "metrics"),
        ({"metrics": ("rh", "rh")}, "repeat"),
        ({"duplicate_rate": 1.5}, "duplicate_rate"),
        ({"malformed": -1}, "malformed"),
        ({"nan_readings": 400, "old_readings": 101}, "500 readings"),
        ({"prefix": "a/b"}, "prefix"),
        ({"prefix": ""}, "prefix"),
    ],
)
def test_bad_specs_are_refused_with_the_field_named(change: dict[str, Any], words: str) -> None:
    with pytest.raises(SpecError, match=words.replace("(", r"\(")):
        FleetSpec(**{**_fields(FleetSpec()), **change})


def test_a_span_reaching_before_2020_is_refused() -> None:
    with pytest.raises(SpecError, match="before 2020"):
        generate(FleetSpec(readings_per_device=1000, interval_ms=10**9), fixed_now)


def test_injected_anomalies_change_only_their_metric_in_their_span() -> None:
    spec = SPECS["injected"]
    plan = plan_of("injected")
    plain = generate(FleetSpec(**{**_fields(spec), "anomalies": (), "sequences": ()}), fixed_now)
    regular = [r for r in plan.readings if not {"door", "status"} & set(r.metrics)]
    assert len(plain.readings) == len(regular)  # a dropout takes its metric from readings, not the readings
    changed: Counter[tuple[str, str]] = Counter()
    before = {(r.device, r.t_ms): r.metrics for r in plain.readings}
    for r in regular:
        for name in spec.metrics:
            if r.metrics.get(name) != before[r.device, r.t_ms].get(name):
                changed[r.device, name] += 1
    # stuck holds the span's first value: the 9 readings after it change, unless one happened to have it
    assert 1 <= changed.pop(("dev-0003", "temp_c")) <= 9
    assert changed == {("dev-0001", "temp_c"): 1, ("dev-0001", "vib"): 5, ("dev-0002", "rh"): 10, ("dev-0004", "rh"): 5}
    (a, labelled) = plan.anomalies[3]
    assert a.kind == "stuck" and a.start_ms == plan.start_ms + 20 * M and len(labelled) == 10
    held = {r.metrics["temp_c"] for r in regular if r.device == "dev-0003" and r.t_ms in labelled}
    assert len(held) == 1
    spike = plan.anomalies[0]
    assert len(spike[1]) == 1 and plan.start_ms + 10 * M <= spike[1][0] < plan.start_ms + 11 * M
    ramp = sorted(
        (r.t_ms, r.metrics["vib"]) for r in regular if r.device == "dev-0001" and r.t_ms in plan.anomalies[1][1]
    )
    assert len(ramp) == 5 and all(b[1] - a[1] > 0.5 for a, b in itertools.pairwise(ramp))


def test_scripted_sequences_are_extra_readings_numbered_in_event_time_order() -> None:
    plan = plan_of("injected")
    start = plan.start_ms
    assert [(q.kind, q.device, q.at_ms - start) for q in plan.sequences] == [
        ("door_closed", "dev-0002", 2 * M),
        ("door_left_open", "dev-0002", 12 * M),
        ("three_failures", "dev-0003", 38 * M),
    ]
    scripted = [r for r in plan.readings if set(r.metrics) <= {"door", "status"}]
    for q in plan.sequences:
        got = [
            (r.t_ms, dict(r.metrics)) for r in scripted if r.device == q.device and q.at_ms <= r.t_ms <= q.at_ms + 8 * M
        ]
        want = [(q.at_ms + e.offset_ms, {e.metric: e.value}) for e in sequence_events(q.kind)]
        assert got == [w for w in want if w[0] < start + 40 * M]
    assert len([r for r in plan.readings if "status" in r.metrics]) == 3  # the fourth is after the span
    for dev in plan.devices:  # identities stay gapless and follow event time
        mine = sorted(
            [(r.seq, r.t_ms) for r in plan.readings if r.device == dev.device]
            + [(r.seq, r.t_ms) for r in plan.rejected if r.device == dev.device]
        )
        assert [seq for seq, _ in mine] == list(range(dev.first_seq, dev.first_seq + len(mine)))
        assert all(a[1] <= b[1] for a, b in itertools.pairwise(mine))
    truth = json.loads(json.dumps(plan.truth(), allow_nan=False))
    assert [a["kind"] for a in truth["anomalies"]] == ["spike", "drift", "level_shift", "stuck", "dropout"]
    assert truth["anomalies"][0]["labelled"] == list(plan.anomalies[0][1])
    assert [(q["kind"], q["expect_alert"]) for q in truth["sequences"]] == [
        ("door_closed", False), ("door_left_open", True), ("three_failures", True),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"anomalies": (InjectedAnomaly("wobble", "dev-0001", "temp_c", 0, M),)}, "anomalies.0..kind"),
        ({"anomalies": (InjectedAnomaly("spike", "dev-0011", "temp_c", 0, M),)}, "'dev-0011' is not one of"),
        ({"anomalies": (InjectedAnomaly("spike", "dev-0001", "vib", 0, M),)}, "'vib' is not one of the fleet"),
        ({"anomalies": (InjectedAnomaly("spike", "dev-0001", "rh", 5 * M, 5 * M),)}, "start < end"),
        ({"anomalies": (InjectedAnomaly("spike", "dev-0001", "rh", 0, 51 * M),)}, "end <= 3000000"),
        ({"sequences": (ScriptedSequence("door_jammed", "dev-0001", 0),)}, "sequences.0..kind"),
        ({"sequences": (ScriptedSequence("door_closed", "device-1", 0),)}, "'device-1'"),
        ({"sequences": (ScriptedSequence("door_closed", "dev-0001", 50 * M),)}, "sequences.0..at_ms"),
    ],
)
def test_bad_injections_are_refused_with_the_entry_named(change: dict[str, Any], words: str) -> None:
    with pytest.raises(SpecError, match=words):
        FleetSpec(**{**_fields(FleetSpec()), **change})
