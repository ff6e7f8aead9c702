"""``[groups]``: parsing, validation (also through ``edgekit-gateway check``) and the device -> groups look-up."""

from __future__ import annotations

from fnmatch import fnmatchcase
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.cli import main
from gateway.config import parse_config
from gateway.errors import ConfigError
from gateway.groups import GroupsSpec, parse_groups


def test_members_by_glob_and_by_site_and_several_groups() -> None:
    cfg = parse_config(
        {"groups": {"greenhouse": ["gh-*", "dev-7"], "pumps": ["site:plant-*"], "all_gh": ["gh-?", "site:farm"]}},
        env={},
    )
    idx = cfg.groups.index()
    assert cfg.groups.names == ("greenhouse", "pumps", "all_gh")
    assert idx.groups_of("gh-1", "farm") == ("greenhouse", "all_gh")
    assert idx.groups_of("gh-12", "x") == ("greenhouse",)
    assert idx.groups_of("dev-7", "plant-3") == ("greenhouse", "pumps")
    assert idx.groups_of("dev-8", "plant-3") == ("pumps",)
    assert idx.groups_of("dev-8", None) == ()  # site members need the site
    assert idx.groups_of("other", "farm") == ("all_gh",)
    assert idx.groups_of("other", "elsewhere") == ()  # in no group
    assert idx.members("greenhouse", [("gh-1", "a"), ("x", "a"), ("dev-7", "b")]) == ["gh-1", "dev-7"]


def test_no_section_no_groups() -> None:
    cfg = parse_config({}, env={})
    assert cfg.groups == GroupsSpec()
    assert cfg.groups.index().groups_of("gh-1", "farm") == ()


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"bad name!": ["a"]}, "'bad name!' is not a group name"),
        ({"g": "gh-*"}, 'write g = ["gh-*"]'),
        ({"g": []}, "groups.g: expected a non-empty list"),
        ({"g": [3]}, "groups.g: 3 is not a string"),
        ({"g": ["gh *"]}, "groups.g: 'gh *' is not a device glob"),
        ({"g": ["site:"]}, "groups.g: 'site:' is not a device glob"),
        ({"g": ["gh-[ab"]}, "groups.g: 'gh-[ab' is not a device glob"),
        ({"g": ["a", "a"]}, "groups.g: 'a' is listed twice"),
        ("x", "groups: expected a table"),
    ],
)
def test_malformed_groups_are_refused_naming_the_group(section: object, message: str) -> None:
    with pytest.raises(ConfigError, match=None) as exc:
        parse_config({"groups": section}, env={})
    assert message in str(exc.value)


def test_closed_fleet_group_without_a_known_member_is_refused() -> None:
    devices = {"allow_unknown": False, "known": ["gh-1", "p-1"], "sites": {"p-1": "plant"}}
    ok = parse_config({"devices": devices, "groups": {"g": ["gh-*"], "p": ["site:plant"]}}, env={})
    assert ok.groups.names == ("g", "p")
    with pytest.raises(ConfigError, match=r"groups.typo: \['hg-\*'\] matches none of the 2 devices"):
        parse_config({"devices": devices, "groups": {"typo": ["hg-*"]}}, env={})
    # an open fleet may get its members later
    assert parse_config({"groups": {"typo": ["hg-*"]}}, env={}).groups.names == ("typo",)


def test_check_prints_groups_and_refuses_a_bad_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.toml"
    good.write_text(
        '[devices]\nknown = ["gh-1", "gh-2", "dev-7", "p-1"]\n[devices.sites]\np-1 = "plant"\n'
        '[groups]\ngreenhouse = ["gh-*", "dev-7"]\npumps = ["site:plant"]\n'
        '[[windows]]\nname = "t5m"\nkind = "tumbling"\nsize = "5m"\nmetrics = ["temp_c"]\n'
        '[windows.relative]\ngroups = ["greenhouse"]\nalert_above = 3\n'
    )
    assert main(["check", "--config", str(good)]) == 0
    out = capsys.readouterr().out
    assert "group:     greenhouse = gh-*, dev-7 (declared devices in it: dev-7, gh-1, gh-2)" in out
    assert "group:     pumps = site:plant (declared devices in it: p-1)" in out
    assert "each device's mean against the median of the others in greenhouse (window_relative), alert above 3" in out
    bad = tmp_path / "bad.toml"
    bad.write_text('[groups]\ngreenhouse = "gh-*"\n')
    assert main(["check", "--config", str(bad)]) == 2
    assert "groups.greenhouse: expected a list of members, got the string" in capsys.readouterr().err


def test_check_names_devices_in_no_group(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "g.toml"
    path.write_text('[devices]\nknown = ["gh-1", "lone"]\n[groups]\ngreenhouse = ["gh-*"]\n')
    assert main(["check", "--config", str(path)]) == 0
    assert "in no group (group operators ignore them): lone" in capsys.readouterr().out


ids = st.text(alphabet="abg-1", min_size=1, max_size=5)
globs = st.text(alphabet="abg-1*?", min_size=1, max_size=5)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.text(alphabet="xyz", min_size=1, max_size=3),
        st.lists(st.one_of(globs, globs.map(lambda g: "site:" + g)), min_size=1, max_size=3, unique=True),
        max_size=4,
    ),
    st.lists(st.tuples(ids, st.one_of(st.none(), ids)), max_size=20),
)
def test_lookup_equals_the_definition(section: dict[str, list[str]], devices: list[tuple[str, str | None]]) -> None:
    """groups_of(d, s) = the declared groups, in order, with a member glob matching d, or s for site: members;
    asked twice (cached) the same."""
    idx = parse_groups(section).index()
    for d, s in devices * 2:
        expected = tuple(
            name
            for name, members in section.items()
            if any(
                fnmatchcase(d, m) if not m.startswith("site:") else (s is not None and fnmatchcase(s, m[5:]))
                for m in members
            )
        )
        assert idx.groups_of(d, s) == expected
