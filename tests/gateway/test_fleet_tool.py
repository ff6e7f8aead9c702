from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from gateway.config import parse_config
from gateway.fleet import acl_text, load_fleet, main


def test_move_changes_the_site_and_prints_what_the_gateway_needs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet = tmp_path / "fleet.toml"
    assert main(["--fleet", str(fleet), "add", "--site", "north", "dev-1", "dev-2"]) == 0
    capsys.readouterr()
    assert main(["--fleet", str(fleet), "move", "--site", "south", "dev-2"]) == 0
    printed = capsys.readouterr().out
    assert [(d.id, d.site) for d in load_fleet(fleet).devices] == [("dev-1", "north"), ("dev-2", "south")]
    assert "topic write edgekit/south/dev-2/readings" in acl_text(load_fleet(fleet))
    section = printed[printed.rindex("[devices.sites]") :]
    cfg = parse_config({"devices": tomllib.loads(section)["devices"]}, env={})
    assert dict(cfg.devices.sites) == {"dev-2": "south"}


def test_move_refuses_unknown_devices_and_bad_sites(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fleet = tmp_path / "fleet.toml"
    main(["--fleet", str(fleet), "add", "--site", "north", "dev-1"])
    assert main(["--fleet", str(fleet), "move", "--site", "south", "dev-9"]) == 2
    assert "not in the fleet: dev-9" in capsys.readouterr().err
    assert main(["--fleet", str(fleet), "move", "--site", "no/where", "dev-1"]) == 2
    assert [d.site for d in load_fleet(fleet).devices] == ["north"]
