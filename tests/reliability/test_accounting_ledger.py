"""The accounting property's own parts, without services: the judge agrees with the shared vectors, and the
ledger passes a gateway that keeps the contract and catches each way of breaking it.

The "ideal gateway" here is a reference written from docs/protocol.md and docs/measurements.md (each message
rejected whole with a reason the contract gives, or each reading accepted once, a duplicate or dead with its
reason; numbers written as floats; a second kind for a metric refused as ``type_mismatch``). It is what
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
    STATE_READING,
    JStr,
    Observed,
    Planned,
    Row,
    Sent,
    Verdict,
    check,
    judge,
    kind_of,
    materialize,
    num,
    obj,
    parse_line,
)
from hypothesis import given, seed
from traffic import SEED, known_holes, property_settings, runs

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
NOW = 1_764_072_100_000


def _excerpt(sent: Sent) -> str:
    try:
        return sent.payload.decode("utf-8")[:200]
    except UnicodeDecodeError:
        return sent.payload[:200].decode("latin-1")


def _first(reasons: frozenset[str], avoid: frozenset[str] = frozenset()) -> str:
    return sorted(reasons - avoid or reasons)[0]


def ideal(verdicts: list[Verdict]) -> Observed:
    """What a gateway that keeps every documented promise leaves behind for this run."""
    rows: dict[str, list[Row]] = defaultdict(list)
    p: Counter[str] = Counter()
    dead: Counter[str] = Counter()
    seen: set[tuple[Any, ...]] = set()
    kinds: dict[tuple[str, str], str] = {}
    clock = [0]

    def dead_letter(vd: Verdict, index: int, reason: str) -> None:
        clock[0] += 1
        tags = {"reason": reason} | ({"site": vd.site, "device": vd.device} if vd.site is not None else {})  # type: ignore[dict-item]
        fields = {"topic": vd.sent.topic, "payload": _excerpt(vd.sent), "size": len(vd.sent.payload), "index": index}
        rows["dead_letter"].append(Row("dead_letter", tags, clock[0], fields))
        dead[reason] += 1

    def conflict(measurement: str, values: dict[str, Any]) -> bool:
        return any(kinds.get((measurement, k), kind_of(x)) != kind_of(x) for k, x in values.items())

    for vd in verdicts:
        if vd.ignored:
            p["ignored"] += 1
            continue
        p["messages"] += 1
        if vd.accept == "never":
            dead_letter(vd, -1, _first(vd.reasons))
            continue
        if vd.kind == "status":
            fields = {k: vs[-1] for k, vs in vd.status.items()}
            if conflict("device_status", fields):
                dead_letter(vd, -1, "type_mismatch")
                continue
            kinds.update({("device_status", k): kind_of(x) for k, x in fields.items()})
            clock[0] += 1
            rows["device_status"].append(
                Row(
                    "device_status",
                    {"site": vd.site, "device": vd.device},
                    clock[0],  # type: ignore[dict-item]
                    {k: _stored(x) for k, x in fields.items()},
                )
            )
            p["status_updates"] += 1
            continue
        p["readings_in"] += len(vd.readings)
        for rv in vd.readings:
            if rv.accept == "never":
                dead_letter(vd, rv.index, _first(rv.reasons, STATE_READING))
                continue
            assert rv.identity is not None and rv.t is not None
            ident = (vd.site, vd.device, *rv.identity)
            metrics = {k: vs[-1] for k, vs in rv.metrics.items()}
            if ident in seen:
                p["duplicates"] += 1
                continue
            if conflict("reading", metrics):
                dead_letter(vd, rv.index, "type_mismatch")
                continue
            kinds.update({("reading", k): kind_of(x) for k, x in metrics.items()})
            seen.add(ident)
            p["readings_accepted"] += 1
            fields = {"boot": rv.identity[0], "seq": rv.identity[1], "q": rv.q} | {
                k: _stored(x) for k, x in metrics.items()
            }
            rows["reading"].append(Row("reading", {"site": vd.site, "device": vd.device}, rv.t * 1_000_000, fields))  # type: ignore[dict-item]
    p["dead_letters"] = sum(dead.values())
    types: dict[str, dict[str, set[str]]] = defaultdict(dict)
    for (measurement, name), kind in kinds.items():
        types[measurement][name] = {kind}
    if rows["reading"]:
        types["reading"] |= {"boot": {"integer"}, "seq": {"integer"}, "q": {"string"}}
    stats = {
        "pipeline": dict(p) | {"dead_by_reason": dict(dead)},
        "sink": {
            "points_written": sum(len(r) for r in rows.values()),
            "points_refused": 0,
            "pending": 0,
            "spool_lines": 0,
        },
    }
    for name in ("messages", "readings_in", "readings_accepted", "duplicates", "status_updates", "ignored"):
        stats["pipeline"].setdefault(name, 0)
    per_device = Counter(str(ident[1]) for ident in seen)
    return Observed(stats, dict(rows), dict(types), per_device=dict(per_device))


def _stored(x: Any) -> Any:
    """As InfluxDB answers: a float field comes back as a JSON number (an integral one without a point)."""
    if isinstance(x, bool) or isinstance(x, str):
        return x
    f = float(x)
    return int(f) if f.is_integer() and abs(f) < 2**53 else f


def verdicts_of(plan: list[Planned]) -> list[Verdict]:
    return [judge(s, "pfx", NOW) for s in materialize(plan, "pfx", NOW)]


# ------------------------------------------------------------------------------------------- the judge


@pytest.mark.parametrize("path", sorted(VECTORS.glob("*.json")), ids=lambda p: p.stem)
def test_judge_agrees_with_the_shared_vectors(path: Path) -> None:
    case = json.loads(path.read_text())
    payload = bytes.fromhex(case["payload_hex"]) if "payload_hex" in case else case["payload"].encode()
    sent = Sent(0, case["topic"], payload, "hostile", frozenset(), False)
    vd = judge(sent, "edgekit", case["received_ms"], exact=True)
    expect = case["expect"]
    if expect["kind"] == "error":
        assert vd.accept == "never" and expect["reason"] in vd.reasons, (vd.accept, vd.reasons, vd.why)
        return
    assert vd.accept != "never", vd.why
    assert vd.kind == expect["kind"]
    if expect["kind"] == "status":
        assert vd.status["state"][-1] == expect["state"]
        return
    rejected = {r["index"]: r["reason"] for r in expect.get("rejected", [])}
    for rv in vd.readings:
        if rv.index in rejected:
            assert rv.accept == "never" and rejected[rv.index] in rv.reasons, (rv.index, rv.reasons, rv.why)
        else:
            assert rv.accept != "never", (rv.index, rv.why)
    accepted = [rv for rv in vd.readings if rv.index not in rejected]
    assert [(rv.identity, rv.t) for rv in accepted] == [((r["boot"], r["seq"]), r["t"]) for r in expect["readings"]]


@pytest.mark.parametrize(
    ("value", "reasons"),
    [
        ('"\\ud800"', {"bad_string", "schema"}),
        ("1e400", {"non_finite"}),
        ("NaN", {"non_finite"}),
        ("123456789012345678901234567890", {"schema"}),
        ("null", {"schema"}),
        ("[1]", {"schema"}),
        ('"' + "x" * 65 + '"', {"schema"}),
    ],
)
def test_judge_rejects_what_the_contract_rejects(value: str, reasons: set[str]) -> None:
    payload = '{"v":1,"dev":"d","r":[{"b":1,"s":2,"t":1764072000000,"q":"s","m":{"x":VALUE}}]}'.replace("VALUE", value)
    vd = judge(Sent(0, "pfx/s/d/readings", payload.encode(), "hostile", frozenset(), False), "pfx", NOW)
    assert vd.accept != "never"
    assert vd.readings[0].accept == "never" and reasons <= vd.readings[0].reasons


@pytest.mark.parametrize(
    "value",
    ['"a\\nb"', '"\\u0000"', '"\\ud83d\\ude00"', "-0.0", "1e308", "9223372036854775807", "true", '"' + "😀" * 32 + '"'],
)
def test_judge_accepts_what_the_contract_accepts(value: str) -> None:
    payload = '{"v":1,"dev":"d","r":[{"b":1,"s":2,"t":1764072000000,"q":"s","m":{"device":V}}]}'.replace("V", value)
    vd = judge(Sent(0, "pfx/s/d/readings", payload.encode(), "hostile", frozenset(), False), "pfx", NOW)
    assert vd.readings[0].accept == "may" and not vd.readings[0].why


def test_judge_of_a_status_named_time_and_a_cleared_status() -> None:
    vd = judge(
        Sent(0, "pfx/s/d/status", b'{"v":1,"dev":"d","state":"online","time":5}', "hostile", frozenset(), True),
        "pfx",
        NOW,
    )
    assert vd.accept == "never" and "schema" in vd.reasons
    cleared = judge(Sent(0, "pfx/s/d/status", b"", "hostile", frozenset(), True), "pfx", NOW)
    assert cleared.ignored


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
    assert check(verdicts, ideal(verdicts)) == []


def test_ledger_passes_the_known_holes_run_when_kept() -> None:
    verdicts = verdicts_of(known_holes())
    obs = ideal(verdicts)
    assert check(verdicts, obs) == []
    assert obs.stats["pipeline"]["duplicates"] == 1  # the old boot's re-send
    assert {"bad_string", "oversize", "non_finite", "schema"} <= set(obs.stats["pipeline"]["dead_by_reason"])


def _mutated(change: Any) -> list[str]:
    verdicts = verdicts_of(known_holes())
    obs = ideal(verdicts)
    obs = copy.deepcopy(obs)
    change(obs)
    return check(verdicts, obs)


def _reading(obs: Observed, device: str, seq: int) -> Row:
    return next(r for r in obs.rows["reading"] if r.tags["device"] == device and r.fields["seq"] == seq)


def _categories(found: list[str]) -> set[str]:
    return {v.split("]")[0].lstrip("[") for v in found}


def test_ledger_finds_a_lost_reading() -> None:
    def lose(obs: Observed) -> None:
        obs.rows["reading"].remove(_reading(obs, "d-one", 1))  # the same millisecond as seq 2: overwritten

    found = _mutated(lose)
    assert any("[lost] reading ('north', 'd-one', 3, 1)" in v for v in found), found
    assert "points_written" in " ".join(found)


def test_ledger_finds_an_integer_field_and_a_changed_string() -> None:
    def retype(obs: Observed) -> None:
        obs.field_types["reading"]["temp_c"] = {"integer"}
        _reading(obs, "h-nl", 0).fields["note"] = "a\\nb"

    found = _mutated(retype)
    assert _categories(found) == {"field-type", "stored-wrongly"}, found


def test_ledger_finds_a_message_taken_without_its_dead_letter() -> None:
    def accept_time(obs: Observed) -> None:  # the status named `time`: taken, and the field dropped
        row = next(r for r in obs.rows["dead_letter"] if "h-time" in r.fields["topic"])
        obs.rows["dead_letter"].remove(row)
        obs.rows["device_status"].append(
            Row("device_status", {"site": "south-1", "device": "h-time"}, 1, {"state": "online"})
        )
        obs.stats["pipeline"]["dead_by_reason"]["schema"] -= 1
        obs.stats["pipeline"]["dead_letters"] -= 1
        obs.stats["pipeline"]["status_updates"] += 1

    found = _mutated(accept_time)
    assert "no-dead-letter" in _categories(found) and "h-time" in " ".join(found), found


def test_ledger_finds_a_reading_counted_as_a_duplicate_of_another_site() -> None:
    def swallow(obs: Observed) -> None:  # defect 5: d-one under south-1 dropped as a duplicate
        row = next(r for r in obs.rows["reading"] if r.tags == {"site": "south-1", "device": "d-one"})
        obs.rows["reading"].remove(row)
        obs.stats["pipeline"]["readings_accepted"] -= 1
        obs.stats["pipeline"]["duplicates"] += 1

    found = _mutated(swallow)
    assert any("[lost] reading ('south-1', 'd-one', 3, 0)" in v for v in found), found


def test_ledger_finds_a_reading_accepted_twice() -> None:
    def twice(obs: Observed) -> None:  # defect 7: the old boot's re-send accepted again (its point overwritten)
        obs.stats["pipeline"]["readings_accepted"] += 1
        obs.stats["pipeline"]["duplicates"] -= 1
        assert obs.per_device is not None
        obs.per_device["d-old"] += 1

    found = _mutated(twice)
    assert _categories(found) == {"counters"} and "device 'd-old'" in " ".join(found), found


def test_ledger_finds_two_faults_whose_totals_cancel() -> None:
    def both(obs: Observed) -> None:  # defects 5 and 7 together: the totals agree, the boards do not
        assert obs.per_device is not None
        obs.per_device["d-old"] += 1
        obs.per_device["d-one"] -= 1
        obs.rows["reading"].remove(
            next(r for r in obs.rows["reading"] if r.tags["site"] == "south-1" and r.tags["device"] == "d-one")
        )

    found = _mutated(both)
    assert "device 'd-old'" in " ".join(found) and "[lost] reading ('south-1', 'd-one', 3, 0)" in " ".join(found)


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
            {"reason": "influx_refused"},
            7,
            {"payload": _line(row), "detail": "field type conflict", "index": -1},
        )
    )
    obs.stats["sink"]["points_refused"] += 1


def test_ledger_accepts_a_refused_line_of_hostile_traffic() -> None:
    def refuse(obs: Observed) -> None:
        _refuse(obs, _reading(obs, "h-nl", 0))

    assert _mutated(refuse) == []


def test_ledger_finds_a_refused_honest_line_and_a_refusal_dead_lettered_twice() -> None:
    def refuse(obs: Observed) -> None:
        _refuse(obs, _reading(obs, "d-two", 1))
        obs.rows["dead_letter"].append(copy.deepcopy(obs.rows["dead_letter"][-1]))
        obs.stats["sink"]["points_refused"] += 1

    assert {"honest-refused", "refused-twice", "unexplained-refusal"} <= _categories(_mutated(refuse))


def test_judge_flags_an_honest_message_the_strategies_got_wrong() -> None:
    bad = Planned("{p}/s/d/readings", obj(v=num(2), dev=JStr("d")), "honest")
    with pytest.raises(AssertionError, match="honest"):
        verdicts_of([bad])


def test_materialize_renders_surrogates_as_escapes_and_pads_exactly() -> None:
    plan = [Planned("{p}/s/d/readings", obj(v=num(1), dev=JStr("\ud800")), "hostile", pad_to=8192)]
    (sent,) = materialize(plan, "x", int(time.time() * 1000))
    assert sent.topic == "x/s/d/readings" and len(sent.payload) == 8192
    assert sent.payload.startswith(b'{"v":1,"dev":"\\ud800"') and sent.payload.endswith(b" }")
