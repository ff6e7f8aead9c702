"""Parsing the [engine] table and [[windows]] list, with errors that name the window and the key."""

from __future__ import annotations

import tomllib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.engine import parse_duration, parse_engine, parse_windows
from gateway.errors import ConfigError

TOML = """
[engine]
unsynced = "window"
max_future = "2m"

[engine.watermark]
mode = "global"
out_of_orderness = "5s"
idle_timeout = "10m"

[[engine.watermark.classes]]
name = "sleepy"
devices = ["gh-*"]
out_of_orderness = "30s"

[[windows]]
name = "temp_1m"
kind = "tumbling"
size = "60s"
metrics = ["temp_c", "rh"]
aggregates = ["count", "mean"]
allowed_lateness = "2m"

[[windows]]
name = "temp_slide"
kind = "sliding"
size = "10m"
slide = "1m"
metrics = ["temp_c"]
key = "site"

[[windows]]
name = "door"
kind = "session"
gap = 30000
metrics = ["door_open"]
"""


def test_full_example() -> None:
    spec = parse_engine(tomllib.loads(TOML))
    assert spec.unsynced == "window" and spec.max_future_ms == 120_000
    assert spec.watermark.mode == "global" and spec.watermark.bound_for("gh-07") == 30_000
    assert spec.watermark.bound_for("x") == 5_000
    t, s, g = spec.windows
    assert (t.kind, t.size_ms, t.slide_ms, t.allowed_lateness_ms, t.aggregates) == (
        "tumbling",
        60_000,
        60_000,
        120_000,
        ("count", "mean"),
    )
    assert (s.size_ms, s.slide_ms, s.key) == (600_000, 60_000, "site")
    assert (g.kind, g.gap_ms, len(g.aggregates)) == ("session", 30_000, 8)


@pytest.mark.parametrize(
    ("text", "value"), [("250ms", 250), ("60s", 60_000), ("5m", 300_000), ("1.5h", 5_400_000), (42, 42)]
)
def test_durations(text: object, value: int) -> None:
    assert parse_duration(text, "x") == value


UNITS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


@settings(max_examples=2000)
@given(st.integers(0, 10**12), st.integers(0, 6), st.sampled_from(sorted(UNITS)), st.integers(0, 3))
def test_a_decimal_duration_is_exactly_its_milliseconds(k: int, decimals: int, unit: str, zeros: int) -> None:
    """``k / 10**decimals`` units, written with its decimals (and trailing zeros): a whole number of milliseconds is
    that number, exactly (1.001 s is 1001 ms: as floats 1.001 * 1000 is 1000.9999999999999, and 2,945 of the
    200,000 values from 0.000 s to 199.999 s with three decimals were refused); anything else, or more than 2**53
    ms, is refused."""
    whole, frac = divmod(k, 10**decimals)
    text = f"{whole}.{frac:0{decimals}d}{'0' * zeros}{unit}" if decimals else f"{whole}{unit}"
    ms, rest = divmod(k * UNITS[unit], 10**decimals)
    if rest:
        with pytest.raises(ConfigError, match="not a whole number of milliseconds"):
            parse_duration(text, "x")
    elif ms > 2**53:
        with pytest.raises(ConfigError, match="longer than"):
            parse_duration(text, "x")
    else:
        assert parse_duration(text, "x") == ms


def test_every_second_with_three_decimals_is_its_milliseconds() -> None:
    assert [parse_duration(f"{i // 1000}.{i % 1000:03d}s", "x") for i in range(200_000)] == list(range(200_000))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("9" * 400 + "h", "too many digits"),  # raised OverflowError (a float's infinity) before
        ("0." + "0" * 60 + "1s", "too many digits"),
        (2**53 + 1, "longer than"),
        ("104249991375d", "longer than"),  # 2**53 ms is 104,249,991,374.7 days
        (10**30, "longer than"),
    ],
)
def test_a_duration_beyond_the_limit_is_a_clear_error(text: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_duration(text, "x")
    assert parse_duration(2**53, "x") == 2**53
    assert parse_duration("1." + "0" * 60 + "s", "x") == 1000  # trailing zeros are not digits that count


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0" * 5000 + "1s", 1000),  # ValueError (int's 4,300-digit limit) in 8b2d72a: an outside review's find
        ("1." + "0" * 5000 + "s", 1000),
        ("0" * 5000 + "." + "5" + "0" * 5000 + "s", 500),
        ("1." + "\u0660" * 41 + "s", 1000),  # ARABIC-INDIC zeros: zeros all the same
        ("\u0661\u0662s", 12_000),
        ("\uff11.\uff15s", 1500),
    ],
)
def test_zeros_before_or_after_the_digits_that_count_are_no_digits(text: str, value: int) -> None:
    assert parse_duration(text, "x") == value


def test_an_integer_too_long_to_print_is_still_a_clear_error() -> None:
    for where in ("x", "engine.min_time_ms"):
        with pytest.raises(ConfigError, match="an integer of 16610 bits"):
            if where == "x":
                parse_duration(10**5000, where)
            else:
                parse_engine({"engine": {"min_time_ms": 10**5000}, "windows": []})


@pytest.mark.parametrize("min_time", [-(2**53) - 1, 2**53 + 1, -(2**62), -(2**63)])
def test_a_min_time_beyond_the_limit_is_refused(min_time: int) -> None:
    """With event times down to -2**62 (``min_time_ms`` below it), a device's watermark could equal the operators'
    sentinel for "none yet" (``NO_WM``) and count as none in a site's fleet heap where the walk over the devices
    counts it: the setting is bounded instead (to about 285,000 years either side of 1970)."""
    with pytest.raises(ConfigError, match=r"engine\.min_time_ms: .* is beyond"):
        parse_engine({"engine": {"min_time_ms": min_time}, "windows": []})
    assert parse_engine({"engine": {"min_time_ms": -(2**53)}, "windows": []}).min_time_ms == -(2**53)


@pytest.mark.parametrize(
    ("window", "message"),
    [
        ({"name": "a", "kind": "hopping", "size": "1m", "metrics": ["t"]}, "windows[a].kind"),
        ({"name": "a", "kind": "tumbling", "metrics": ["t"]}, "windows[a].size: required"),
        (
            {"name": "a", "kind": "tumbling", "size": "0s", "metrics": ["t"]},
            "windows[a].size: must be positive",
        ),
        ({"name": "a", "kind": "tumbling", "size": "1 minute", "metrics": ["t"]}, "windows[a].size"),
        ({"name": "a", "kind": "sliding", "size": "1m", "slide": "2m", "metrics": ["t"]}, "windows[a].slide"),
        (
            {"name": "a", "kind": "tumbling", "size": "1m", "gap": "1m", "metrics": ["t"]},
            "unknown key(s) gap",
        ),
        ({"name": "a", "kind": "tumbling", "size": "1m", "metrics": []}, "windows[a].metrics"),
        ({"name": "a", "kind": "tumbling", "size": "1m", "metrics": ["Temp"]}, "windows[a].metrics"),
        (
            {"name": "a", "kind": "tumbling", "size": "1m", "metrics": ["t"], "aggregates": ["p99"]},
            "unknown 'p99'",
        ),
        ({"name": "a", "kind": "tumbling", "size": "1m", "metrics": ["t"], "key": "fleet"}, "windows[a].key"),
        (
            {"name": "a", "kind": "tumbling", "size": "1m", "offset": "1m", "metrics": ["t"]},
            "windows[a].offset",
        ),
        ({"name": "a", "kind": "session", "gap": -1, "metrics": ["t"]}, "windows[a].gap"),
        ({"kind": "session", "gap": 1, "metrics": ["t"]}, "windows[0].name"),
    ],
)
def test_errors_name_the_window_and_key(window: dict[str, object], message: str) -> None:
    with pytest.raises(
        ConfigError,
        match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(").replace(")", r"\)"),
    ):
        parse_windows([window])


def test_duplicate_names_and_bad_engine_keys() -> None:
    w = {"name": "a", "kind": "session", "gap": "1s", "metrics": ["t"]}
    with pytest.raises(ConfigError, match="declared twice"):
        parse_windows([w, w])
    with pytest.raises(ConfigError, match=r"engine\.unsynced"):
        parse_engine({"engine": {"unsynced": "maybe"}})
    with pytest.raises(ConfigError, match=r"engine\.watermark\.mode"):
        parse_engine({"engine": {"watermark": {"mode": "partition"}}})
    assert parse_windows(None) == ()
