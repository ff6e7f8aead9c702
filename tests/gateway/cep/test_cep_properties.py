"""The automaton against the brute-force matcher on random streams and random patterns.

Patterns mix sequences (next / followed_by), quantifiers (times, at_least), negations (in the middle and
at the end with a span), ``within`` and both skip strategies; streams come in order or with disorder inside
the watermark bound, over one device or two devices of a site key.
"""

from __future__ import annotations

import random
from typing import Any

from cep_helpers import T0, Row, events, feed, ids, make_cep
from cep_reference import reference_matches
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gateway.cep import Pattern, PatternError, PatternSpec

CONDITIONS = ["a > 1", "a <= 1", "a == 2", 'k == "x"', 'k != "x"', "a > prev.a", "a in [1, 2]", "a >= s0.a"]


@st.composite
def patterns(draw: st.DrawFn) -> PatternSpec:
    n = draw(st.integers(1, 3))
    p = Pattern.begin("s0").where(draw(st.sampled_from(CONDITIONS[:5] + CONDITIONS[6:7])))
    fixed = True
    for i in range(1, n):
        if fixed and draw(st.integers(0, 3)) == 0:
            p = p.not_followed_by(f"n{i}").where(draw(st.sampled_from(CONDITIONS[:5])))
        p = p.next(f"s{i}") if draw(st.booleans()) else p.followed_by(f"s{i}")
        p = p.where(draw(st.sampled_from(CONDITIONS)))
        q = draw(st.integers(0, 4))
        if q == 1:
            p = p.times(2)
        elif q == 2:
            p = p.at_least(draw(st.integers(1, 2)))
        fixed = q != 2
    if n == 1:
        q = draw(st.integers(0, 2))
        p = p.times(2) if q == 1 else p.at_least(2) if q == 2 else p
        fixed = q != 2
    if fixed and draw(st.booleans()):
        p = p.not_followed_by("quiet", within=draw(st.sampled_from([0, 2_000, 6_000]))).where(
            draw(st.sampled_from(CONDITIONS[:5]))
        )
    if draw(st.booleans()):
        p = p.within(draw(st.sampled_from([3_000, 8_000, 20_000])))
    skip = draw(st.sampled_from(["skip_past_last_event", "no_skip"]))
    key = draw(st.sampled_from(["device", "site"]))
    try:
        return p.build("p", skip=skip, key=key)
    except PatternError:
        assume(False)
        raise


@st.composite
def streams(draw: st.DrawFn, devices: int) -> list[Row]:
    n = draw(st.integers(0, 11))
    t = T0
    rows: list[Row] = []
    seqs = dict.fromkeys(range(devices), 0)
    for _ in range(n):
        t += draw(st.sampled_from([0, 500, 1_000, 2_000, 4_000]))
        d = draw(st.integers(0, devices - 1))
        m: dict[str, Any] = {}
        if draw(st.integers(0, 5)):
            m["a"] = draw(st.integers(0, 3))
        if draw(st.booleans()):
            m["k"] = draw(st.sampled_from(["x", "y"]))
        if not m:
            m["other"] = 1
        rows.append((f"d{d}", seqs[d], t, m))
        seqs[d] += 1
    return rows


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(patterns(), st.data(), st.integers(0, 2**32 - 1), st.booleans())
def test_automaton_equals_brute_force(spec: PatternSpec, data: st.DataObject, seed: int, disorder: bool) -> None:
    rows = data.draw(streams(2 if spec.key == "site" else 1))
    cep = make_cep([spec])
    got = ids(feed(cep, rows, random.Random(seed) if disorder else None))
    want = reference_matches(spec, events(rows))  # a site key sees both devices' readings, merged in order
    assert got == want
    assert cep.stats["late"] == 0
    assert cep.partial_matches() == 0 or spec.within_ms is None  # the final watermark timed out every run
