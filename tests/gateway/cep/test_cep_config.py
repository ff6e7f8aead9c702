"""Malformed patterns fail at start, and the message names the pattern, the step and the problem."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.cep import Pattern, PatternError, parse_condition
from gateway.cep.expr import Comparison, Ref
from gateway.config import parse_config
from gateway.errors import ConfigError


def pattern(*steps: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"patterns": [{"name": "p1", "steps": list(steps), **extra}]}


A = {"name": "a", "where": "x > 1"}


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (pattern({"name": "a", "where": "temp_c >"}), "patterns[p1].steps[a].where: expected a number"),
        (pattern({"name": "a", "where": "temp_c 80"}), "patterns[p1].steps[a].where: expected a comparison operator"),
        (pattern({"name": "a", "where": 'status < "FAILED"'}), "steps[a].where: strings compare only with == and !="),
        (pattern({"name": "a", "where": "x in [5, 1]"}), "steps[a].where: empty range"),
        (pattern({"name": "a", "where": "x > 1 or y > 2"}), "steps[a].where: expected 'and' or the end"),
        (pattern({"name": "a", "where": "x > 1 # y"}), "steps[a].where: unexpected '#' at column 7"),
        (pattern({"name": "a"}), "patterns[p1].steps[a].where: required"),
        (
            pattern(A, {"name": "b", "where": "y < 0.9 * c.y"}),
            "steps[b].where: '0.9 * c.y' refers to an unknown step 'c'",
        ),
        (
            pattern(A, {"name": "b", "where": "y < c.y"}, {"name": "c", "where": "y > 0"}),
            "steps[b].where: 'c.y' refers to a later step; earlier steps: a",
        ),
        (pattern({"name": "a", "where": "x > prev.x"}), "steps[a].where: 'prev.x': the first step has no earlier"),
        (pattern(A, {"name": "b", "where": "x > b.x"}), "steps[b].where: 'b.x' refers to the step itself; use prev.x"),
        (pattern({"name": "a", "where": "x > 1", "follow": "next"}), "steps[a].follow: the first step follows nothing"),
        (pattern(A, {"name": "b", "where": "x > 1", "follow": "after"}), "steps[b].follow: expected next, followed_by"),
        (pattern(A, {"name": "b", "where": "x > 1", "times": 2, "at_least": 3}), "steps[b]: choose one quantifier"),
        (pattern(A, {"name": "b", "where": "x > 1", "times": 0}), "steps[b].times: expected a positive integer"),
        (pattern(A, {"name": "b", "where": "x > 1", "one_or_more": 1}), "steps[b].one_or_more: expected true"),
        (
            pattern(A, {"name": "n", "where": "x > 1", "follow": "not_followed_by"}),
            "steps[n].within: a negation at the end of a pattern needs a 'within' span",
        ),
        (
            pattern({**A, "at_least": 2}, {"name": "n", "where": "x > 1", "follow": "not_followed_by", "within": "1m"}),
            "steps[n]: a negation must follow a step with a fixed count (times), but 'a' takes at least 2",
        ),
        (
            pattern(A, {"name": "n", "where": "x > 1", "follow": "not_followed_by", "times": 2, "within": "1m"}),
            "steps[n]: a negation (not_followed_by) takes no quantifier",
        ),
        (
            pattern(A, {"name": "n", "where": "x", "follow": "not_followed_by"}),
            "steps[n].where: expected a comparison operator",
        ),
        (
            pattern(
                A,
                {"name": "n", "where": "x > 1", "follow": "not_followed_by", "within": "1m"},
                {"name": "c", "where": "x > n.x"},
            ),
            "steps[n].within: only a negation at the end of a pattern takes a span",
        ),
        (
            pattern(A, {"name": "n", "where": "x > 1", "follow": "not_followed_by"}, {"name": "c", "where": "x > n.x"}),
            "steps[c].where: 'n.x' refers to a negation",
        ),
        (pattern(A, {"name": "b", "where": "x > 1", "within": "1m"}), "steps[b].within: only a not_followed_by step"),
        (pattern(A, {"name": "a", "where": "x > 2"}), "steps[a].name: two steps are named 'a'"),
        (pattern({"name": "Bad Name", "where": "x > 1"}), "patterns[p1].steps[0].name: 'Bad Name' is not a step name"),
        (pattern({"name": "a", "where": "x > 1", "colour": 1}), "patterns[p1].steps[a]: unknown key(s) colour"),
        (pattern(A, within="soon"), "patterns[p1].within: expected milliseconds or a string"),
        (pattern(A, within=0), "patterns[p1].within: must be positive"),
        (pattern(A, key="fleet"), "patterns[p1].key: expected 'device', 'site', 'group' or 'group:<name>'"),
        (pattern(A, key="group:"), "patterns[p1].key: expected 'device', 'site', 'group' or 'group:<name>', got 'g"),
        (pattern(A, key="group:a b"), "patterns[p1].key: expected 'device', 'site', 'group' or 'group:<name>'"),
        (pattern(A, severity="loud"), "patterns[p1].severity: expected one of info, warning, critical"),
        (pattern(A, skip="skip_to_first"), "patterns[p1].skip: expected one of skip_past_last_event, no_skip"),
        ({"patterns": [{"name": "p1", "steps": []}]}, "patterns[p1].steps: expected one or more"),
        (
            {"patterns": [{"name": "p1", "steps": [A]}, {"name": "p1", "steps": [A]}]},
            "patterns[p1].name: declared twice",
        ),
        ({"patterns": {"name": "p1"}}, "patterns: expected a list"),
    ],
)
def test_malformed_pattern_fails_at_start_naming_step_and_problem(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(doc, env={})
    assert message in str(err.value)


def test_builder_errors_name_the_step() -> None:
    with pytest.raises(PatternError, match=r"steps\[b\].where: expected a metric name"):
        Pattern.begin("a").where("x > 1").followed_by("b").where("> 3")
    with pytest.raises(PatternError, match=r"patterns\[p\].steps\[b\]: at most 1 is below at least 2"):
        Pattern.begin("a").where("x > 1").followed_by("b").where("x > 2").times(1)._last(min_count=2).build("p")
    with pytest.raises(PatternError, match=r"patterns\[p\].steps\[b\].where: a step needs a condition"):
        Pattern.begin("a").where("x > 1").followed_by("b").build("p")


def test_conditions_parse_into_comparisons() -> None:
    assert parse_condition('status == "FAILED" and rh in [20, 60.5]') == (
        Comparison("status", "==", "FAILED"),
        Comparison("rh", "in", (20.0, 60.5)),
    )
    assert parse_condition("p < 0.9 * hot.p - 2") == (Comparison("p", "<", Ref("hot", "p", 0.9, -2.0)),)
    assert parse_condition("v > prev.v+1") == (Comparison("v", ">", Ref("prev", "v", 1.0, 1.0)),)
    assert parse_condition("t >= -5 and ok == true") == (Comparison("t", ">=", -5.0), Comparison("ok", "==", True))


def test_good_patterns_parse_into_config() -> None:
    cfg = parse_config(
        pattern(A, {"name": "b", "where": "x > a.x", "follow": "next", "at_least": 2}, within="90s"), env={}
    )
    (p,) = cfg.patterns
    assert (p.name, p.within_ms, p.key, p.skip) == ("p1", 90_000, "device", "skip_past_last_event")
    assert [(s.name, s.follow, s.min_count, s.max_count) for s in p.steps] == [
        ("a", "begin", 1, 1),
        ("b", "next", 2, None),
    ]
