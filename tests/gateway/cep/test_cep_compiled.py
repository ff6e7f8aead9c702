"""The optional compiled pattern matcher (scripts/build_compiled.py) against the pure-Python reference.

Both builds run in their own process (``EDGEKIT_ENGINE=pure`` and ``compiled``), serving the same requests; their
answers must be the same text: every match's repr (its readings, times, details, path and verdict), what each
call refused or raised, the operator's counters, its partial matches and buffered readings, and its snapshot as
JSON (through a restore from a JSON snapshot part-way, as a gateway's restart does). The inputs cover the whole
input space a pattern sees: floats (huge, subnormal, negative zero, infinities, NaN), the decoder's 64-bit
integers, booleans where numbers are compared and 0/1 where booleans are, strings with any character,
missing metrics; times in order, inside and beyond the disorder bound, far jumps, unsynced readings, readings
from the future, flushed markers, status updates and wall-clock advances; device, site and group keys, both
watermark modes, both skip strategies, the arrival path and its verdicts, and limits small enough to evict.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from helpers import SERVE_HELPERS, Builds, build_pair, check_loaded_build, same_answer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gateway.cep
from gateway.cep import CEP_BUILD, COMPILED_MODULES, parse_patterns
from gateway.protocol import MAX_SLEEP_S

SERVE = (
    SERVE_HELPERS
    + r"""
from gateway.cep import CEP_BUILD, Cep, CepSpec, parse_patterns
from gateway.engine import parse_engine
from gateway.groups import parse_groups
from gateway.model import Batch, Reading, StatusUpdate


def outputs(fn, *args):  # the repr of each output of fn(*args), or its error as text (guarded)
    return guarded(lambda: [repr(m) for m in fn(*args)])


def run(req):
    spec = CepSpec(parse_patterns(req["patterns"]), parse_engine({"engine": {"watermark": req["watermark"]}}),
                   max_runs=req["max_runs"], max_run_readings=req["max_run_readings"],
                   max_buffered=req["max_buffered"], groups=parse_groups(req["groups"]))
    cep = Cep(spec)
    out = []
    for i, step in enumerate(req["steps"]):
        if i == req["restore_at"]:  # a restart: the state goes on through its JSON snapshot
            snap = json.loads(json.dumps(cep.snapshot(), allow_nan=True))
            cep = Cep(spec)
            cep.restore(snap)
        kind, now, site, device = step[:4]
        if kind == "batch":
            rows, flushed = step[4:]
            readings = tuple(Reading(site, device, b, s, t, q, m) for b, s, t, q, m in rows)
            out.append(outputs(cep.process_batch, Batch(site, device, "t", now, readings, (), flushed), now))
        elif kind == "status":
            state, fields = step[4:]
            out.append(outputs(cep.process_status, StatusUpdate(site, device, "t", now, state, fields)))
        else:
            out.append(outputs(cep.advance, now))
    return {"out": out, "stats": cep.stats, "partial": cep.partial_matches(), "buffered": cep.buffered(),
            "snapshot": cep.snapshot()}


serve(CEP_BUILD, run)  # json.dumps writes NaN and infinities by default (allow_nan)
"""
)


@pytest.fixture(scope="module")
def builds() -> Iterator[Builds]:
    """The pure and the compiled build, each in its own process; None where set-up did not build it."""
    yield from build_pair(SERVE)


def same(builds: Builds, request: dict[str, Any]) -> Any:
    """Both builds' answer to ``request``, which must be the same text; the pure one, parsed."""
    return same_answer(builds, request, CEP_BUILD)


def test_loaded_modules_are_the_reported_build() -> None:
    check_loaded_build("gateway.cep", COMPILED_MODULES, CEP_BUILD)
    assert gateway.cep.Cep.__module__ == "gateway.cep.operator"


def step(name: str, where: str, follow: str | None = None, **more: Any) -> dict[str, Any]:
    return {"name": name, "where": where, **({"follow": follow} if follow else {}), **more}


POOL: list[dict[str, Any]] = [
    # the example configuration's four, on this test's metrics
    {"name": "failed", "within": "20s", "steps": [step("f", 'status == "FAILED"', at_least=3)]},
    {"name": "hot_drop", "within": "10s",
     "steps": [step("hot", "a > 1"), step("drop", "b < 0.9 * hot.b", "followed_by")]},
    {"name": "left_open", "steps": [step("closed", 'k == "x"'), step("open", 'k == "y"', "next"),
                                    step("shut", 'k == "x"', "not_followed_by", within="5s")]},
    {"name": "rising", "steps": [step("base", "a >= 0"), step("rise", "a > prev.a + 0.5", "next", times=3)]},
    # ranges and conjunctions, a quantifier without bound, a site key, no skip
    {"name": "band", "key": "site", "skip": "no_skip", "within": "8s",
     "steps": [step("inside", "a in [0, 2] and b != 1", one_or_more=True),
               step("out", "a > inside.a - 1e-9", "followed_by")]},
    # booleans (1 is not true), the arrival path with its verdicts, negative offsets
    {"name": "toggle", "on": "both", "within": "6s",
     "steps": [step("on", "f == true"), step("off", "f == false and a <= on.a -0.5", "next")]},
    {"name": "spike", "on": "arrival", "steps": [step("s", "a > 2", times=2)]},
    # a declared group's key, and a pattern for some devices only
    {"name": "grouped", "key": "group:g", "within": "15s",
     "steps": [step("x", "a < 1"), step("y", "a > 2 * x.a + 1", "followed_by")]},
    {"name": "one_device", "devices": ["d1"], "skip": "no_skip",
     "steps": [step("lo", "b >= -1e300 and b <= 1e300 and k != \"x\""), step("hi", "b > lo.b", "next", at_least=2)]},
    {"name": "middle_not", "within": "12s",
     "steps": [step("p", "a > 0"), step("q", "b > 0", "not_followed_by"), step("r", "a < p.a", "followed_by")]},
]  # fmt: skip

DEVICES = {"d1": "s1", "d2": "s1", "e1": "s2"}
T0 = 1_764_072_000_000
EDGE = [0.0, -0.0, 5e-324, 1e-300, 0.5, 1.0, 2.0, 2.5, 1e15, 1e300, -1e300, 1.7976931348623157e308,
        float("inf"), float("-inf"), float("nan")]  # fmt: skip
near = st.one_of(st.floats(-3.0, 4.0), st.integers(-3, 4), st.sampled_from([0.5, 1.0, 2.0, 2.5]))
numbers = st.one_of(
    near,
    near,
    st.sampled_from(EDGE),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(2**63), 2**63 - 1),  # the decoder's integers (it refuses any beyond 64 bits)
)
values = st.one_of(numbers, numbers, numbers, st.booleans(), st.text(max_size=4), st.sampled_from(["x", "y", "FAILED"]))
metrics = st.fixed_dictionaries(
    {},
    optional={
        "a": st.one_of(near, near, values),
        "b": st.one_of(near, values),
        "k": st.one_of(st.sampled_from(["x", "y"]), values),
        "f": st.one_of(st.booleans(), values),
        "status": st.one_of(st.sampled_from(["FAILED", "OK"]), values),
    },
)  # each metric present or missing, mostly near the patterns' thresholds


def test_the_pool_parses() -> None:
    assert [p.name for p in parse_patterns(POOL)] == [p["name"] for p in POOL]


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    """Steps of up to three devices on two sites: batches (times stepping on, back inside and beyond the bound, or
    far), status updates and advances of the wall clock."""
    t = dict.fromkeys(DEVICES, T0)
    seq = dict.fromkeys(DEVICES, 0)
    now = T0
    forward = st.integers(0, 3_000)
    steps: list[list[Any]] = []
    for _ in range(draw(st.integers(1, 30))):
        device = draw(st.sampled_from(sorted(DEVICES)))
        site = DEVICES[device]
        now += draw(st.sampled_from([0, 500, 2_000, 10_000, 600_000]))
        kind = draw(st.sampled_from(["batch"] * 6 + ["status", "advance"]))
        if kind == "batch":
            rows = []
            for _ in range(draw(st.integers(0, 6))):
                t[device] += draw(st.one_of(forward, forward, forward, st.integers(-9_000, -1), st.just(10**7)))
                seq[device] += 1
                rows.append([1, seq[device], t[device], draw(st.sampled_from("ssssu")), draw(metrics)])
            flushed = draw(st.one_of(st.none(), st.just(t[device] + 1), st.just(t[device] + 60_000)))
            when = max(now, t[device] - draw(st.sampled_from([0, 0, 400_000])))  # some readings from the future
            steps.append(["batch", when, site, device, rows, flushed])
        elif kind == "status":
            state = draw(st.sampled_from(["online", "sleeping", "offline"]))
            fields = draw(st.dictionaries(st.just("sleep_s"), st.integers(1, MAX_SLEEP_S), max_size=1))  # as decoded
            steps.append(["status", now, site, device, state, fields])
        else:
            steps.append(["advance", now, site, device])
    chosen = draw(st.lists(st.sampled_from(range(len(POOL))), min_size=1, max_size=4, unique=True))
    return {
        "patterns": [POOL[i] for i in chosen],
        "watermark": {"mode": draw(st.sampled_from(["device", "device", "global"])),
                      "out_of_orderness": draw(st.sampled_from(["0s", "2s", "5s"]))},
        "groups": {"g": draw(st.sampled_from([["d*"], ["site:s2", "d2"], ["*"]]))},
        "max_runs": draw(st.sampled_from([2, 5, 1_000])),
        "max_run_readings": draw(st.sampled_from([3, 1_000])),
        "max_buffered": draw(st.sampled_from([4, 10_000])),
        "restore_at": draw(st.integers(0, len(steps))),
        "steps": steps,
    }  # fmt: skip


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(req=requests())
def test_patterns_give_identical_outputs(builds: Builds, req: dict[str, Any]) -> None:
    same(builds, req)


def test_a_long_stream_matches_alike(builds: Builds) -> None:
    """Every pattern of the pool at once over 3,000 readings of noise around the thresholds, with disorder: many
    matches, evictions and verdicts, the same in both builds."""
    import random

    rng = random.Random(7)
    t = dict.fromkeys(DEVICES, T0)
    steps: list[list[Any]] = []
    for i in range(600):
        device = rng.choice(sorted(DEVICES))
        rows = []
        for _ in range(5):
            t[device] += rng.randint(200, 1_500)
            m = {"a": round(rng.gauss(1.0, 1.2), 1), "b": rng.choice([0.5, 1, 2.0, -0.0, rng.random()]),
                 "k": rng.choice("xyz"), "f": rng.random() < 0.5,
                 "status": rng.choice(["OK", "OK", "FAILED"])}  # fmt: skip
            rows.append([1, i * 10 + len(rows), t[device] - rng.randint(0, 4_000), "s", m])
        steps.append(["batch", max(t.values()), DEVICES[device], device, rows, None])
        if i % 50 == 49:
            steps.append(["advance", max(t.values()) + 30_000, "", ""])
    req = {"patterns": POOL, "watermark": {"mode": "device", "out_of_orderness": "5s"}, "groups": {"g": ["d*"]},
           "max_runs": 20, "max_run_readings": 1_000, "max_buffered": 10_000, "restore_at": 300,
           "steps": steps}  # fmt: skip
    answer = same(builds, req)
    if answer is not None:
        matches = [m for out in answer["out"] for m in out]
        assert len(matches) > 100
        assert {"arrival", "event_time"} <= {m.split("path='")[1].split("'")[0] for m in matches if "path='" in m}


OPS: dict[str, Any] = {"<": float.__lt__, "<=": float.__le__, ">": float.__gt__, ">=": float.__ge__,
                       "==": float.__eq__, "!=": float.__ne__}  # fmt: skip
CONSTANTS = ["2", "2.0", "0", "-0.0", "0.5", "-1.5", "1e300", "5e-324", "9007199254740992"]
TIE_VALUES: list[Any] = [2.0, 2, 0.0, -0.0, 0.5, -1.5, 1e300, 5e-324, 2**53, 2**53 + 1, float("nan"), float("inf")]


def _matched(answer: dict[str, Any]) -> set[tuple[str, int]]:
    """(pattern, sequence number of its last reading) of every match in an answer."""
    found = set()
    for out in answer["out"]:
        for m in out:
            name = m.split("PatternSpec(name='", 1)[1].split("'", 1)[0]
            readings = m.split(" readings=(", 1)[1].split("), times=", 1)[0]
            found.add((name, int(readings.rsplit(", ", 1)[1].rstrip(",)"))))
    return found


def _one_by_one(values: list[Any]) -> list[list[Any]]:
    """A batch a reading, each released at once (its flushed marker)."""
    return [["batch", T0 + i * 1_000, "s1", "d1", [[1, i + 1, T0 + i * 1_000, "s", {"a": v}]], T0 + i * 1_000 + 1]
            for i, v in enumerate(values)]  # fmt: skip


def _request(patterns: list[dict[str, Any]], steps: list[list[Any]]) -> dict[str, Any]:
    return {"patterns": patterns, "watermark": {"mode": "device", "out_of_orderness": "0s"}, "groups": {"g": ["d*"]},
            "max_runs": 1_000, "max_run_readings": 1_000, "max_buffered": 10_000, "restore_at": -1,
            "steps": steps}  # fmt: skip


def test_comparisons_at_ties_are_pythons(builds: Builds) -> None:
    """Every comparison at and around exact ties (an integer against the same float, 0 against -0.0, 2**53 + 1,
    which is 2**53 as a float, NaN, the smallest subnormal), against a constant and against an earlier step's value:
    both builds match exactly where Python's own float comparison holds (the outside reference)."""
    patterns = [{"name": f"c{i}", "steps": [step("x", f"a {op} {c}")]}
                for i, (op, c) in enumerate((op, c) for op in OPS for c in CONSTANTS)]  # fmt: skip
    answer = same(builds, _request(patterns, _one_by_one(TIE_VALUES)))
    if answer is not None:
        expected = {(f"c{i}", seq)
                    for i, (op, c) in enumerate((op, c) for op in OPS for c in CONSTANTS)
                    for seq, v in enumerate(TIE_VALUES, start=1) if OPS[op](float(v), float(c))}  # fmt: skip
        assert _matched(answer) == expected
        assert len(expected) > 150
    relative = [{"name": f"r{i}", "steps": [step("on", "a > -1e308"), step("off", f"a {op} on.a - 0.5", "next")]}
                for i, op in enumerate(OPS)]  # fmt: skip
    answer = same(builds, _request(relative, _one_by_one([2.5, 2.0])))  # 2.0 against 2.5 - 0.5: a tie
    if answer is not None:
        assert _matched(answer) == {(f"r{i}", 2) for i, op in enumerate(OPS) if OPS[op](2.0, 2.0)}
