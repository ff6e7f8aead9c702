"""The accounting property's own parts, without services: the judge agrees with the shared vectors, and the
ledger passes a gateway that keeps the contract and catches each way of breaking it.

The "ideal gateway" here is a reference written from docs/protocol.md and docs/measurements.md (each message
rejected whole with a reason the contract gives, or each reading accepted once, a duplicate or dead with its
reason; each value in its metric's type, each reading at its nanosecond time; a device bound to its first
site, its metric names capped, the dedup's bounds as ``accounting.DedupModel`` states them). It is what
``accounting.check`` must find nothing wrong with, for any run the strategies make.
"""

from __future__ import annotations

import copy
import json
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
from accounting import (
    MAX_METRIC_NAMES,
    STALE,
    STATUS_TYPES,
    DedupModel,
    JStr,
    Observed,
    Planned,
    Row,
    Sent,
    Verdict,
    check,
    judge,
    materialize,
    num,
    obj,
    parse_line,
    point_time_ns,
    visible,
)
from hypothesis import given, seed
from traffic import METRIC_TYPES, SEED, known_holes, property_settings, runs

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
NOW = 1_764_072_100_000


def _excerpt(sent: Sent) -> str:
    head = sent.payload[:200].decode("utf-8", errors="backslashreplace")
    return visible(head) + ("…" if len(sent.payload) > 200 else "")


def _first(reasons: frozenset[str]) -> str:
    return sorted(reasons)[0]


def ideal(verdicts: list[Verdict]) -> Observed:
    """What a gateway that keeps every documented promise leaves behind for this run."""
    rows: dict[str, list[Row]] = defaultdict(list)
    p: Counter[str] = Counter()
    dead: Counter[str] = Counter()
    bound: dict[str, str] = {}
    names: dict[str, set[str]] = defaultdict(set)
    dedup = DedupModel()
    per_device: Counter[str] = Counter()
    used: dict[str, set[str]] = defaultdict(set)
    clock = [0]

    def dead_letter(vd: Verdict, index: int, reason: str, excerpt: str | None = None) -> None:
        clock[0] += 1
        tags = {"reason": reason} | ({"site": vd.site, "device": vd.device} if vd.site is not None else {})  # type: ignore[dict-item]
        payload = _excerpt(vd.sent) if excerpt is None else excerpt
        fields = {"topic": vd.sent.topic, "payload": payload, "size": len(vd.sent.payload), "index": index}
        rows["dead_letter"].append(Row("dead_letter", tags, clock[0], fields))
        dead[reason] += 1

    for vd in verdicts:
        if vd.ignored:
            p["ignored"] += 1
            continue
        p["messages"] += 1
        if vd.accept == "never":
            dead_letter(vd, -1, _first(vd.reasons))
            continue
        dev, site = vd.device or "", vd.site or ""
        if bound.get(dev, site) != site:
            dead_letter(vd, -1, "site_mismatch")
            continue
        if vd.kind == "status":
            bound.setdefault(dev, site)
            fields = {k: vs[-1][1] for k, vs in vd.status.items()}
            for k in fields:
                used["device_status"].add(k)
            clock[0] += 1
            rows["device_status"].append(
                Row(
                    "device_status", {"site": site, "device": dev}, clock[0], {k: _stored(x) for k, x in fields.items()}
                )
            )
            p["status_updates"] += 1
            continue
        p["readings_in"] += len(vd.readings)
        keeps = vd.flushed
        for rv in vd.readings:
            raw = json.dumps(rv.raw, separators=(",", ":"), allow_nan=True)[:200]
            if rv.accept == "never":
                dead_letter(vd, rv.index, _first(rv.reasons), raw)
                continue
            keeps = True
            assert rv.identity is not None and rv.t is not None
            fresh = set(rv.metrics) - names[dev]
            if fresh and len(names[dev]) + len(fresh) > MAX_METRIC_NAMES:
                dead_letter(vd, rv.index, "too_many_metrics", raw)
                continue
            outcome = dedup.check(dev, *rv.identity, rv.t)
            if outcome in STALE:
                dead_letter(vd, rv.index, outcome, raw)
                continue
            if outcome == "duplicate":
                p["duplicates"] += 1
                continue
            names[dev] |= fresh
            p["readings_accepted"] += 1
            per_device[dev] += 1
            metrics = {k: vs[-1][1] for k, vs in rv.metrics.items()}
            used["reading"] |= set(metrics)
            fields = {"boot": rv.identity[0], "seq": rv.identity[1], "q": rv.q} | {
                k: _stored(x) for k, x in metrics.items()
            }
            at = point_time_ns(rv.t, *rv.identity)
            rows["reading"].append(Row("reading", {"site": site, "device": dev}, at, fields))
        if keeps:
            bound.setdefault(dev, site)
    p["dead_letters"] = sum(dead.values())
    types: dict[str, dict[str, set[str]]] = defaultdict(dict)
    for name in used["reading"]:
        types["reading"][name] = {METRIC_TYPES.get(name, "float")}
    for name in used["device_status"]:
        types["device_status"][name] = {STATUS_TYPES.get(name) or METRIC_TYPES.get(name, "float")}
    if rows["reading"]:
        types["reading"] |= {"boot": {"integer"}, "seq": {"integer"}, "q": {"string"}}
    stats = {
        "pipeline": dict(p) | {"dead_by_reason": dict(dead)},
        "sink": {
            "points_written": sum(len(r) for r in rows.values()),
            "points_refused": 0,
            "points_unwritable": 0,
            "dead_letters_written": 0,
            "dead_letters_lost": 0,
            "pending": 0,
            "spool_lines": 0,
        },
    }
    for name in ("messages", "readings_in", "readings_accepted", "duplicates", "status_updates", "ignored"):
        stats["pipeline"].setdefault(name, 0)
    return Observed(stats, dict(rows), dict(types), per_device=dict(per_device))


def _stored(x: Any) -> Any:
    """As InfluxDB answers: a float field comes back as a JSON number (an integral one without a point)."""
    if isinstance(x, bool | str | int):
        return x
    f = float(x)
    return int(f) if f.is_integer() and abs(f) < 2**53 else f


def verdicts_of(plan: list[Planned]) -> list[Verdict]:
    return [judge(s, "pfx", NOW, types=METRIC_TYPES) for s in materialize(plan, "pfx", NOW)]


def _check(verdicts: list[Verdict], obs: Observed) -> list[str]:
    return check(verdicts, obs, METRIC_TYPES)


# ------------------------------------------------------------------------------------------- the judge


@pytest.mark.parametrize("path", sorted(VECTORS.glob("*.json")), ids=lambda p: p.stem)
def test_judge_agrees_with_the_shared_vectors(path: Path) -> None:
    case = json.loads(path.read_text())
    payload = bytes.fromhex(case["payload_hex"]) if "payload_hex" in case else case["payload"].encode()
    sent = Sent(0, case["topic"], payload, "hostile", frozenset(), False)
    types = {name: kind for kind, names in case.get("metric_types", {}).items() for name in names}
    vd = judge(sent, "edgekit", case["received_ms"], exact=True, types=types)
    expect = case["expect"]
    if expect["kind"] == "error":
        assert vd.accept == "never" and expect["reason"] in vd.reasons, (vd.accept, vd.reasons, vd.why)
        return
    assert vd.accept != "never", vd.why
    assert vd.kind == expect["kind"]
    if expect["kind"] == "status":
        assert vd.status["state"][-1][1] == expect["state"]
        got = {k: vs[-1][1] for k, vs in vd.status.items() if k != "state"}
        assert got == expect.get("fields", got) and all(
            type(got[k]) is type(x) for k, x in expect.get("fields", {}).items()
        )
        return
    rejected = {r["index"]: r["reason"] for r in expect.get("rejected", [])}
    for rv in vd.readings:
        if rv.index in rejected:
            assert rv.accept == "never" and rejected[rv.index] in rv.reasons, (rv.index, rv.reasons, rv.why)
        else:
            assert rv.accept != "never", (rv.index, rv.why)
    accepted = [rv for rv in vd.readings if rv.index not in rejected]
    assert [(rv.identity, rv.t) for rv in accepted] == [((r["boot"], r["seq"]), r["t"]) for r in expect["readings"]]
    for rv, r in zip(accepted, expect["readings"], strict=True):  # the decoded value, of its type
        got = {k: vs[-1][1] for k, vs in rv.metrics.items()}
        assert got == r["m"] and all(type(got[k]) is type(x) for k, x in r["m"].items()), (got, r["m"])


def _one(value: str, name: str) -> Verdict:
    payload = '{"v":1,"dev":"d","r":[{"b":1,"s":2,"t":1764072000000,"q":"s","m":{"NAME":VALUE}}]}'
    payload = payload.replace("NAME", name).replace("VALUE", value)
    types = {"n": "integer", "ok": "boolean", "label": "string"}
    return judge(Sent(0, "pfx/s/d/readings", payload.encode(), "hostile", frozenset(), False), "pfx", NOW, types=types)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "value", "reasons"),
    [
        ("x", '"\\ud800"', {"type_mismatch"}),
        ("label", '"\\ud800"', {"bad_string"}),
        ("label", '"a\\nb"', {"bad_string"}),
        ("label", '"\\u0085"', {"bad_string"}),
        ("label", '"' + "x" * 65 + '"', {"schema"}),
        ("label", "5", {"type_mismatch"}),
        ("x", "1e400", {"non_finite"}),
        ("x", "NaN", {"non_finite"}),
        ("x", "true", {"type_mismatch"}),
        ("x", "9007199254740993", {"type_mismatch"}),
        ("x", "123456789012345678901234567890", {"schema"}),
        ("n", "21.5", {"type_mismatch"}),
        ("n", "1e19", {"schema"}),
        ("ok", "1", {"type_mismatch"}),
        ("x", "null", {"schema"}),
        ("x", "[1]", {"schema"}),
        ("device", "1.5", {"schema"}),
        ("time", "1.5", {"schema"}),
    ],
)
def test_judge_rejects_what_the_contract_rejects(name: str, value: str, reasons: set[str]) -> None:
    vd = _one(value, name)
    assert vd.accept != "never"
    assert vd.readings[0].accept == "never" and reasons <= vd.readings[0].reasons, vd.readings[0].reasons


@pytest.mark.parametrize(
    ("name", "value", "stored"),
    [
        ("label", '"\\ud83d\\ude00"', ("string", "\U0001f600")),
        ("label", '"' + "\U0001f600" * 32 + '"', ("string", "\U0001f600" * 32)),
        ("label", '"a\\\\nb\\u2028"', ("string", "a\\nb\u2028")),
        ("x", "-0.0", ("float", -0.0)),
        ("x", "21", ("float", 21.0)),
        ("x", "1e308", ("float", 1e308)),
        ("x", "9007199254740992", ("float", 2.0**53)),
        ("n", "9223372036854775807", ("integer", 2**63 - 1)),
        ("n", "21.0", ("integer", 21)),
        ("n", "-0.0", ("integer", 0)),
        ("ok", "true", ("boolean", True)),
    ],
)
def test_judge_accepts_what_the_contract_accepts(name: str, value: str, stored: tuple[str, object]) -> None:
    rv = _one(value, name).readings[0]
    assert rv.accept == "may" and not rv.why and rv.metrics[name] == [stored], (rv.why, rv.metrics)


def test_judge_of_statuses() -> None:
    def status(payload: bytes) -> Verdict:
        return judge(
            Sent(0, "pfx/s/d/status", payload, "hostile", frozenset(), True), "pfx", NOW, types={"ssid": "string"}
        )

    named_time = status(b'{"v":1,"dev":"d","state":"online","time":5}')
    assert named_time.accept == "never" and "schema" in named_time.reasons
    assert status(b'{"v":1,"dev":"d","state":"online","battery_mv":3911.5}').reasons == {"type_mismatch"}
    assert status(b'{"v":1,"dev":"d","state":"online","wifi":"x"}').reasons == {"type_mismatch"}
    assert status(b'{"v":1,"dev":"d","state":"online","fw":"a\\u0000"}').reasons == {"bad_string"}
    assert "schema" in status(b'{"v":1,"dev":"d","state":"online","sleep_s":0}').reasons
    ok = status(b'{"v":1,"dev":"d","state":"online","sleep_s":300.0,"rssi":-70,"ssid":"x"}')
    assert ok.accept == "may" and ok.status["rssi"] == [("float", -70.0)] and ok.status["sleep_s"] == [("integer", 300)]
    cleared = status(b"")
    assert cleared.ignored


def test_judge_takes_a_negative_flush_marker_as_a_marker() -> None:
    payload = b'{"v":1,"dev":"d","r":[],"flushed":-5}'
    vd = judge(Sent(0, "pfx/s/d/readings", payload, "hostile", frozenset(), False), "pfx", NOW)
    assert vd.accept == "may" and vd.flushed


def test_dedup_model_keeps_the_documented_rules() -> None:
    d = DedupModel()
    t0 = 1_764_000_000_000
    assert d.check("a", 0, 0, t0) == "new"
    for b in range(1, 9):  # the ninth boot: boot 0 (the oldest latest reading) is forgotten
        assert d.check("a", b, 0, t0 + 1000 * b) == "new"
    assert d.check("a", 0, 0, t0) == "stale_boot"  # at or before the horizon
    assert d.check("a", 8, 0, t0 + 8000) == "duplicate"
    assert d.check("a", 0, 1, t0 + 9000) == "new"  # after the horizon: a new boot
    # a counter that started again: a taken identity with a later time is a new reading; what came before
    # the restart cannot be judged any more
    assert d.check("f", 1, 0, t0) == "new" and d.check("f", 1, 1, t0 + 1) == "new"
    assert d.check("f", 1, 0, t0 + 100) == "new"
    assert d.check("f", 1, 1, t0 + 1) == "stale_boot" and d.check("f", 1, 0, t0 + 100) == "duplicate"
    # 256 ranges a boot: a gap more, and the lowest range is forgotten
    for s in range(0, 2 * 257, 2):
        assert d.check("g", 1, s, t0 + s) == "new"
    assert d.check("g", 1, 0, t0) == "stale_seq"  # below the floor (1, the end of the forgotten range)
    assert d.check("g", 1, 2, t0 + 2) == "duplicate" and d.check("g", 1, 1, t0 + 1) == "new"


def test_parse_line_reads_escapes_and_cut_lines() -> None:
    line = 'reading,site=a\\ b,device=d x="a\\"b\\\\ c\nd",boot=3i,seq=4i,f=1.5,t=true 1000'
    assert parse_line(line) == (
        "reading",
        {"site": "a b", "device": "d"},
        {"x": 'a"b\\ c\nd', "boot": 3, "seq": 4, "f": 1.5, "t": True},
        1000,
    )
    m, tags, fields, ts = parse_line(line[:40])
    assert (m, tags, ts) == ("reading", {"site": "a b", "device": "d"}, None) and "boot" not in fields


# ------------------------------------------------------------------------------------------ the ledger


@seed(SEED)
@property_settings(ci_examples=20)
@given(runs())
def test_ledger_passes_a_gateway_that_keeps_the_contract(plan: list[Planned]) -> None:
    verdicts = verdicts_of(plan)
    assert _check(verdicts, ideal(verdicts)) == []


def test_ledger_passes_the_known_holes_run_when_kept() -> None:
    verdicts = verdicts_of(known_holes())
    obs = ideal(verdicts)
    assert _check(verdicts, obs) == []
    dead = obs.stats["pipeline"]["dead_by_reason"]
    assert dead["stale_boot"] == 3 and dead["too_many_metrics"] == 1 and dead["site_mismatch"] == 2, dead
    assert {"bad_string", "oversize", "non_finite", "schema", "type_mismatch"} <= set(dead), dead
    flash = sorted((r.fields["seq"], r.time_ns) for r in obs.rows["reading"] if r.tags["device"] == "d-flash")
    assert [s for s, _ in flash] == [0, 0, 1, 1, 2]  # a restarted counter's readings are new points


def _mutated(change: Any) -> list[str]:
    verdicts = verdicts_of(known_holes())
    obs = ideal(verdicts)
    obs = copy.deepcopy(obs)
    change(obs)
    return _check(verdicts, obs)


def _reading(obs: Observed, device: str, seq: int) -> Row:
    return next(r for r in obs.rows["reading"] if r.tags["device"] == device and r.fields["seq"] == seq)


def _categories(found: list[str]) -> set[str]:
    return {v.split("]")[0].lstrip("[") for v in found}


def _drop_dead_letter(obs: Observed, device: str, reason: str) -> None:
    row = next(r for r in obs.rows["dead_letter"] if r.tags.get("device") == device and r.tags["reason"] == reason)
    obs.rows["dead_letter"].remove(row)
    obs.stats["pipeline"]["dead_by_reason"][reason] -= 1
    obs.stats["pipeline"]["dead_letters"] -= 1
    obs.stats["sink"]["points_written"] -= 1


def test_ledger_finds_a_lost_reading() -> None:
    def lose(obs: Observed) -> None:  # the same millisecond as seq 2: overwritten
        obs.rows["reading"].remove(_reading(obs, "d-one", 1))

    found = _mutated(lose)
    assert any(v.startswith("[lost] reading (3, 1)") for v in found), found
    assert "points_written" in " ".join(found)


def test_ledger_finds_a_reading_at_the_millisecond_without_its_offset() -> None:
    def at_ms(obs: Observed) -> None:  # before the offset: the point at the millisecond itself
        row = _reading(obs, "d-one", 2)
        row.time_ns -= row.time_ns % 1_000_000

    assert _categories(_mutated(at_ms)) == {"lost", "unexplained-point"}


def test_ledger_finds_a_wrong_type_and_a_changed_string() -> None:
    def retype(obs: Observed) -> None:
        obs.field_types["reading"]["temp_c"] = {"integer"}
        _reading(obs, "h-types", 5).fields["door"] = "OK"

    found = _mutated(retype)
    assert _categories(found) == {"field-type", "stored-wrongly"}, found


def test_ledger_finds_an_integer_metric_stored_as_a_float() -> None:
    def as_float(obs: Observed) -> None:
        _reading(obs, "h-types", 5).fields["pulses"] = 21.5
        obs.field_types["reading"]["pulses"] = {"float"}

    assert _categories(_mutated(as_float)) == {"field-type", "stored-wrongly"}


def test_ledger_finds_a_message_taken_without_its_dead_letter() -> None:
    def accept_time(obs: Observed) -> None:  # the status named `time`: taken, and the field dropped
        _drop_dead_letter(obs, "h-time", "schema")
        obs.rows["device_status"].append(
            Row("device_status", {"site": "south-1", "device": "h-time"}, 1, {"state": "online"})
        )
        obs.stats["pipeline"]["status_updates"] += 1
        obs.stats["sink"]["points_written"] += 1

    found = _mutated(accept_time)
    assert "no-dead-letter" in _categories(found) and "h-time" in " ".join(found), found


def test_ledger_finds_a_reading_counted_as_a_duplicate_of_another_site() -> None:
    def swallow(obs: Observed) -> None:  # defect 5: d-one under south-1 dropped as a duplicate, no dead letter
        _drop_dead_letter(obs, "d-one", "site_mismatch")
        obs.stats["pipeline"]["readings_in"] += 1
        obs.stats["pipeline"]["duplicates"] += 1

    found = _mutated(swallow)
    assert any("[no-dead-letter] device 'd-one' is bound to site 'north'" in v for v in found), found


def test_ledger_finds_an_unjustified_site_mismatch_and_cap() -> None:
    def refuse(obs: Observed) -> None:
        row = next(r for r in obs.rows["dead_letter"] if r.tags.get("device") == "h-cap")
        row.fields["index"] = 1  # the 17th to 32nd names: within the cap

    found = _mutated(refuse)
    assert "[unjustified-dead-letter] reading 1 dead-lettered `too_many_metrics`" in " ".join(found), found


def test_ledger_finds_a_reading_accepted_twice() -> None:
    def twice(obs: Observed) -> None:  # defect 7: the old boot's re-send accepted again (its point overwritten)
        _drop_dead_letter(obs, "d-old", "stale_boot")
        obs.stats["pipeline"]["readings_accepted"] += 1
        assert obs.per_device is not None
        obs.per_device["d-old"] += 1

    found = _mutated(twice)
    assert {"no-dead-letter", "counters"} <= _categories(found) and "device 'd-old'" in " ".join(found), found


def test_ledger_finds_two_faults_whose_totals_cancel() -> None:
    def both(obs: Observed) -> None:  # the totals agree, the boards do not
        assert obs.per_device is not None
        obs.per_device["d-old"] += 1
        obs.per_device["d-one"] -= 1

    found = _mutated(both)
    assert "device 'd-old'" in " ".join(found) and "device 'd-one'" in " ".join(found), found


def test_ledger_finds_stray_and_wrong_dead_letters() -> None:
    def stray(obs: Observed) -> None:
        row = copy.deepcopy(obs.rows["dead_letter"][0])
        row.time_ns += 10**6
        obs.rows["dead_letter"].append(row)
        honest = _reading(obs, "d-two", 0)
        obs.rows["reading"].remove(honest)
        obs.rows["dead_letter"].append(
            Row(
                "dead_letter",
                {"reason": "internal", "site": "south-1", "device": "d-two"},
                5,
                {"topic": "pfx/south-1/d-two/readings", "index": 0, "size": 1},
            )
        )

    found = _categories(_mutated(stray))
    assert {"unexplained-dead-letter", "internal", "honest-rejected", "counters"} <= found, found


def test_ledger_finds_a_wrong_excerpt() -> None:
    def cut(obs: Observed) -> None:
        row = next(r for r in obs.rows["dead_letter"] if r.tags.get("device") == "h-big")
        row.fields["payload"] = row.fields["payload"][:150]

    assert _categories(_mutated(cut)) == {"dead-letter-excerpt"}


def _line(row: Row) -> str:
    tags = ",".join(f"{k}={v}" for k, v in sorted(row.tags.items()))

    def value(x: Any) -> str:
        if isinstance(x, bool):
            return "true" if x else "false"
        if isinstance(x, str):
            return '"' + x.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return f"{x}i" if isinstance(x, int) else repr(x)

    fields = ",".join(f"{k}={value(x)}" for k, x in row.fields.items())
    return f"{row.measurement},{tags} {fields} {row.time_ns}"


def _refuse(obs: Observed, row: Row) -> None:
    """InfluxDB refused this point: the sink dead-lettered its line instead."""
    obs.rows[row.measurement].remove(row)
    obs.rows["dead_letter"].append(
        Row(
            "dead_letter",
            {"reason": "influx_refused"} | row.tags,
            7,
            {"payload": _line(row), "detail": "field type conflict", "index": -1, "topic": "", "size": 1},
        )
    )
    obs.stats["sink"]["points_refused"] += 1
    obs.stats["sink"]["dead_letters_written"] += 1
    obs.stats["sink"]["points_written"] -= 1


def test_ledger_accepts_a_refused_line_of_hostile_traffic() -> None:
    def refuse(obs: Observed) -> None:
        _refuse(obs, _reading(obs, "h-types", 5))

    assert _mutated(refuse) == []


def test_ledger_finds_a_refused_honest_line_and_a_refusal_dead_lettered_twice() -> None:
    def refuse(obs: Observed) -> None:
        _refuse(obs, _reading(obs, "d-two", 1))
        obs.rows["dead_letter"].append(copy.deepcopy(obs.rows["dead_letter"][-1]))
        obs.stats["sink"]["points_refused"] += 1
        obs.stats["sink"]["dead_letters_written"] += 1

    assert {"honest-refused", "refused-twice", "unexplained-refusal"} <= _categories(_mutated(refuse))


def test_ledger_finds_sink_counters_that_disagree() -> None:
    def lost(obs: Observed) -> None:
        _refuse(obs, _reading(obs, "h-types", 5))
        obs.stats["sink"]["dead_letters_lost"] = 1

    assert _categories(_mutated(lost)) == {"counters"}


def test_judge_flags_an_honest_message_the_strategies_got_wrong() -> None:
    bad = Planned("{p}/s/d/readings", obj(v=num(2), dev=JStr("d")), "honest")
    with pytest.raises(AssertionError, match="honest"):
        verdicts_of([bad])


def test_materialize_renders_surrogates_as_escapes_and_pads_exactly() -> None:
    plan = [Planned("{p}/s/d/readings", obj(v=num(1), dev=JStr("\ud800")), "hostile", pad_to=8192)]
    (sent,) = materialize(plan, "x", int(time.time() * 1000))
    assert sent.topic == "x/s/d/readings" and len(sent.payload) == 8192
    assert sent.payload.startswith(b'{"v":1,"dev":"\\ud800"') and sent.payload.endswith(b" }")
