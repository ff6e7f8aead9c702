"""Parsing the [engine] table and [[windows]] list, with errors that name the window and the key."""

from __future__ import annotations

import tomllib

import pytest

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
