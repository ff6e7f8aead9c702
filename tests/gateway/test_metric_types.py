"""``[metric_types]``: one type per metric, declared in the configuration and kept by the decoder."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.config import load_config, parse_config
from gateway.errors import ConfigError, DecodeError
from gateway.model import Batch
from gateway.protocol import decode
from gateway.schema import MetricTypes

NOW = 1_764_072_100_000


def one(m: dict[str, Any], types: MetricTypes) -> tuple[dict[str, Any], str]:
    """The decoded metrics of a one-reading batch, or ``reason: detail`` of its dead letter."""
    payload = json.dumps({"v": 1, "dev": "d", "r": [{"b": 1, "s": 1, "t": NOW, "q": "s", "m": m}]}).encode()
    b = decode("edgekit/s/d/readings", payload, NOW, types=types)
    assert isinstance(b, Batch)
    if b.rejected:
        return {}, f"{b.rejected[0].reason}: {b.rejected[0].detail}"
    return dict(b.readings[0].metrics), ""


def test_the_section_declares_types_and_every_other_metric_is_a_float() -> None:
    cfg = parse_config({"metric_types": {"integer": ["count"], "boolean": ["ok"], "string": ["door"]}}, env={})
    t = cfg.metric_types
    assert (t.of("count"), t.of("ok"), t.of("door"), t.of("temp_c")) == ("integer", "boolean", "string", "float")
    assert parse_config({}, env={}).metric_types == MetricTypes()


def test_the_environment_replaces_a_list() -> None:
    doc = {"metric_types": {"string": ["door"], "integer": ["count"]}}
    env = {"EDGEKIT_METRIC_TYPES_STRING": "door, status", "EDGEKIT_METRIC_TYPES_INTEGER": "[]"}
    t = parse_config(doc, env=env).metric_types
    assert t.string == {"door", "status"} and t.integer == frozenset()
    # an empty value is "", refused as the file refuses it: an empty list is written []
    with pytest.raises(ConfigError, match=r"metric_types\.integer.*EDGEKIT_METRIC_TYPES_INTEGER"):
        parse_config(doc, env={"EDGEKIT_METRIC_TYPES_INTEGER": ""})


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"string": "door"}, "metric_types.string: expected a list of metric names, got 'door'"),
        ({"string": [1]}, "metric_types.string: expected a list of metric names"),
        ({"string": ["Door"]}, "metric_types.string: 'Door' is not a metric name"),
        ({"integer": ["seq"]}, "metric_types.integer: 'seq' is a reserved name, not a metric"),
        ({"string": ["x"], "boolean": ["x"]}, "metric_types: 'x' is declared both boolean and string"),
        ({"float": ["x"]}, "[metric_types]: unknown key(s) float; known: boolean, integer, string"),
    ],
)
def test_bad_declarations_name_the_key(section: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"metric_types": section}, env={})
    assert message in str(info.value)


def pattern(where: str, second: str | None = None) -> dict[str, Any]:
    steps = [{"name": "a", "where": where}]
    if second is not None:
        steps.append({"name": "b", "where": second})
    return {"name": "p", "steps": steps}


@pytest.mark.parametrize(
    ("where", "types", "message"),
    [
        ('status == "FAILED"', {}, 'status is a float metric, compared with a string; declare it in '
                                   '[metric_types]: string = ["status"]'),
        ("ok == true", {}, 'ok is a float metric, compared with a boolean; declare it in [metric_types]: '
                           'boolean = ["ok"]'),
        ('ok == "yes"', {"boolean": ["ok"]}, "ok is a boolean metric, compared with a string"),
        ("door > 1", {"string": ["door"]}, "door is a string metric, compared as a number"),
        ("ok in [0, 1]", {"boolean": ["ok"]}, "ok is a boolean metric, compared as a number"),
    ],
)  # fmt: skip
def test_a_pattern_that_could_never_match_is_a_config_error(
    where: str, types: dict[str, list[str]], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"metric_types": types, "patterns": [pattern(where)]}, env={})
    assert str(info.value).startswith("patterns[p].steps[a].where: ")
    assert message in str(info.value)


def test_a_reference_to_a_string_metric_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="door is a string metric, compared as a number"):
        parse_config({"metric_types": {"string": ["door"]}, "patterns": [pattern("x > 1", "x > a.door")]}, env={})
    ok = {"metric_types": {"string": ["door"], "integer": ["n"]}, "patterns": [pattern('door == "open"', "n > a.n")]}
    assert len(parse_config(ok, env={}).patterns) == 1


def test_windows_and_anomaly_detection_on_non_numbers_are_config_errors() -> None:
    w = {"name": "w", "kind": "tumbling", "size": "1m", "metrics": ["door"]}
    with pytest.raises(ConfigError, match=r"windows\[w\].metrics: door is a string metric"):
        parse_config({"metric_types": {"string": ["door"]}, "windows": [w]}, env={})
    with pytest.raises(ConfigError, match=r"anomaly\.metrics: ok is a boolean metric"):
        parse_config({"metric_types": {"boolean": ["ok"]}, "anomaly": {"metrics": ["ok"]}}, env={})
    w["metrics"] = ["ok"]  # a boolean in a window counts as 1.0 or 0.0
    assert parse_config({"metric_types": {"boolean": ["ok"]}, "windows": [w]}, env={}).engine.windows


def test_the_shipped_example_declares_its_string_metrics() -> None:
    from pathlib import Path

    cfg = load_config(Path(__file__).resolve().parents[2] / "gateway" / "examples" / "gateway.toml", env={})
    assert cfg.metric_types.string == {"door", "status"}


TYPES = MetricTypes(integer=frozenset({"n"}), boolean=frozenset({"ok"}), string=frozenset({"note"}))


@pytest.mark.parametrize(
    ("m", "want"),
    [
        ({"temp_c": 21}, {"temp_c": 21.0}),
        ({"temp_c": -(2**53)}, {"temp_c": -(2.0**53)}),
        ({"n": 21.0, "ok": False, "note": "é"}, {"n": 21, "ok": False, "note": "é"}),
        ({"n": 2**63 - 1}, {"n": 2**63 - 1}),
    ],
)
def test_values_come_out_with_their_declared_type(m: dict[str, Any], want: dict[str, Any]) -> None:
    got, dead = one(m, TYPES)
    assert not dead and got == want
    assert {k: type(v) for k, v in got.items()} == {k: type(v) for k, v in want.items()}


@pytest.mark.parametrize(
    ("m", "detail"),
    [
        ({"temp_c": "21.5"}, "type_mismatch: r[0].m.temp_c='21.5' is a string, not a float; to store it, declare "
                             'temp_c in [metric_types]: string = ["temp_c"] (a metric declared nowhere there is a '
                             "float)"),
        ({"temp_c": True}, 'type_mismatch: r[0].m.temp_c=True is a boolean, not a float; to store it, declare '
                           'temp_c in [metric_types]: boolean = ["temp_c"]'),
        ({"temp_c": 2**53 + 1}, "type_mismatch: r[0].m.temp_c=9007199254740993 is an integer with no exact float "
                                "(the nearest is 9007199254740992.0), not a float; to store it, declare temp_c in "
                                '[metric_types]: integer = ["temp_c"]'),
        ({"n": 21.5}, "type_mismatch: r[0].m.n=21.5 is a float, not an integer; n is declared integer in "
                      "[metric_types]; a metric declared nowhere there is a float"),
        ({"n": 1e300}, "schema: r[0].m.n=1e+300 does not fit in 64 bits"),
        ({"ok": 1}, 'type_mismatch: r[0].m.ok=1 is an integer, not a boolean; to store it, declare ok in '
                    '[metric_types]: integer = ["ok"]'),
        ({"note": "\ud800"}, "bad_string: r[0].m.note: '\\ud800' holds a lone surrogate (not UTF-8), U+D800 at "
                             "index 0"),
        ({"temp_c": "a\nb"}, "bad_string: r[0].m.temp_c: 'a\\nb' holds a control character, U+000A at index 1"),
        ({"note": "x" * 65}, "schema: r[0].m.note is a string of 65 > 64"),
        ({"device": 1.0}, "schema: r[0].m: the metric name 'device' is reserved"),
    ],
)  # fmt: skip
def test_a_value_of_another_kind_is_a_dead_letter_that_says_how_to_declare_it(m: dict[str, Any], detail: str) -> None:
    got, dead = one(m, TYPES)
    assert got == {} and dead.startswith(detail), dead


def status(fields: dict[str, Any], types: MetricTypes = TYPES) -> Any:
    payload = json.dumps({"v": 1, "dev": "d", "state": "online", **fields}).encode()
    return decode("edgekit/s/d/status", payload, NOW, types=types)


def test_status_fields_have_one_type_each() -> None:
    st = status({"battery_mv": 3911.0, "sleep_s": 300, "fw": "0.1", "rssi": -70, "n": 3.0, "note": "x"})
    assert dict(st.fields) == {"battery_mv": 3911, "sleep_s": 300, "fw": "0.1", "rssi": -70.0, "n": 3, "note": "x"}
    assert [type(v) for v in st.fields.values()] == [int, int, str, float, int, str]
    for fields, reason, detail in [
        ({"battery_mv": 3911.5}, "type_mismatch", "battery_mv is a documented status field, an integer"),
        ({"fw": 1}, "type_mismatch", "fw is a documented status field, a string"),
        ({"ssid": "x"}, "type_mismatch", 'declare ssid in [metric_types]: string = ["ssid"]'),
        ({"fw": "\udc80"}, "bad_string", "lone surrogate"),
        ({"time": 1}, "schema", "the field name 'time' is reserved"),
        ({"device": "x"}, "schema", "the field name 'device' is reserved"),
    ]:
        with pytest.raises(DecodeError) as info:
            status(fields)
        assert info.value.reason == reason and detail in info.value.detail, (fields, info.value.detail)
