"""The ``[devices]`` keys of site binding and metric names."""

from __future__ import annotations

import pytest

from gateway.config import parse_config
from gateway.errors import ConfigError


def test_declared_sites() -> None:
    cfg = parse_config({"devices": {"sites": {"dev-1": "north", "dev-2": "south"}}}, env={})
    assert dict(cfg.devices.sites) == {"dev-1": "north", "dev-2": "south"}
    assert dict(parse_config({}, env={}).devices.sites) == {}


@pytest.mark.parametrize("sites", [{"dev-1": "no/where"}, {"dev 1": "north"}, {"dev-1": 3}, "north"])
def test_declared_sites_are_checked(sites: object) -> None:
    with pytest.raises(ConfigError, match=r"devices\.sites"):
        parse_config({"devices": {"sites": sites}}, env={})
