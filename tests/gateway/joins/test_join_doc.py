"""docs/correlation.md: its configuration is valid and does what the page says, and its error messages are the
gateway's."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.config import parse_config
from gateway.errors import ConfigError

DOC = (Path(__file__).resolve().parents[3] / "docs" / "correlation.md").read_text(encoding="utf-8")


def _toml() -> str:
    (block,) = re.findall(r"```toml\n(.*?)```", DOC, re.S)
    return block


def test_the_pages_configuration_is_valid() -> None:
    import tomllib

    cfg = parse_config(tomllib.loads(_toml()), env={})
    door, pump = cfg.joins
    assert (door.key, door.lower_ms, door.upper_ms, door.alert) == ("site", 0, 120_000, "warning")
    assert (pump.key, pump.lower_ms, pump.upper_ms, pump.allowed_lateness_ms) == (
        "property:line",
        -10_000,
        10_000,
        60_000,
    )
    assert [str(c) for c in pump.b.refs] == ["lpm < 0.5 * a.amps"]
    assert cfg.devices.properties["flow-7"] == {"line": "l1"}


@pytest.mark.parametrize("n", range(3))
def test_the_pages_error_messages_are_the_gateways(n: int) -> None:
    import tomllib

    shown = re.findall(r"^configuration error: (.*)$", DOC, re.M)
    assert len(shown) == 3
    doc = tomllib.loads(_toml())
    door, pump = doc["joins"]
    broken = [
        {"joins": [{**door, "between": "b.t BETWEEN a.t + 3m AND a.t + 2m"}]},
        {"metric_types": doc["metric_types"],
         "joins": [{**door, "b": {**door["b"], "where": "temp_c < prev.temp_c"}}]},
        {"joins": [pump]},
    ]  # fmt: skip
    with pytest.raises(ConfigError) as exc:
        parse_config(broken[n], env={})
    assert str(exc.value) == shown[n]
