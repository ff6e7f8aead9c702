"""Declared device groups (``[groups]``): names for sets of devices, beyond the site.

```toml
[groups]
greenhouse = ["gh-*", "dev-7"]      # device id globs (fnmatch, case-sensitive)
pumps = ["site:plant-*"]            # every device of a matching site
boilers = ["boiler-?", "site:farm"] # both kinds mixed
```

A member is a glob on the device id (``gh-*``, ``dev-7``, ``pump-[ab]``) or ``site:<glob>``, a glob on the
device's site (the site it is bound to, docs/reliability.md). A device belongs to every group one of whose
members it matches (several groups, in the order they are declared); a device that matches none belongs to
no group: operators keyed by a group (group patterns, group-relative windows, joins on a group) do not see
its readings, and everything else (its windows, device and site patterns, anomaly detection) is unchanged.

:class:`GroupIndex` is the look-up other operators use: ``groups_of(device, site)``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Final

from .errors import ConfigError
from .protocol import NAME_RE

__all__ = ["GroupIndex", "GroupSpec", "GroupsSpec", "check_groups", "parse_groups"]

SITE_PREFIX: Final = "site:"
_GLOB_RE: Final = re.compile(r"[A-Za-z0-9_*?\[\]!-]{1,64}")
"""A member's glob: the characters of a device or site id (``[A-Za-z0-9_-]``) and ``* ? [ ] !``."""


@dataclass(frozen=True, slots=True)
class GroupSpec:
    name: str
    devices: tuple[str, ...] = ()
    """Globs on the device id."""
    sites: tuple[str, ...] = ()
    """Globs on the device's site (the members written ``site:<glob>``)."""

    def matches(self, device: str, site: str | None) -> bool:
        if any(fnmatchcase(device, g) for g in self.devices):
            return True
        return site is not None and any(fnmatchcase(site, g) for g in self.sites)

    @property
    def members(self) -> tuple[str, ...]:
        """The members as written in the file."""
        return self.devices + tuple(SITE_PREFIX + s for s in self.sites)


@dataclass(frozen=True, slots=True)
class GroupsSpec:
    """Every declared group, in the file's order."""

    groups: tuple[GroupSpec, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(g.name for g in self.groups)

    def get(self, name: str) -> GroupSpec | None:
        return next((g for g in self.groups if g.name == name), None)

    def index(self) -> GroupIndex:
        return GroupIndex(self)


class GroupIndex:
    """device (and its site) -> the names of its groups, in declaration order; cached per (device, site)."""

    __slots__ = ("_cache", "spec")

    MAX_CACHED: Final = 100_000

    def __init__(self, spec: GroupsSpec) -> None:
        self.spec = spec
        self._cache: dict[tuple[str, str | None], tuple[str, ...]] = {}

    def groups_of(self, device: str, site: str | None = None) -> tuple[str, ...]:
        """The groups ``device`` belongs to (empty: none). ``site`` is the site it is bound to; ``None`` leaves
        out the ``site:`` members."""
        key = (device, site)
        found = self._cache.get(key)
        if found is None:
            found = tuple(g.name for g in self.spec.groups if g.matches(device, site))
            if len(self._cache) >= self.MAX_CACHED:
                self._cache.clear()
            self._cache[key] = found
        return found

    def members(self, name: str, devices: Iterable[tuple[str, str | None]]) -> list[str]:
        """Of ``(device, site)`` pairs, the devices in group ``name`` (in the given order)."""
        return [d for d, s in devices if name in self.groups_of(d, s)]


def parse_groups(section: object) -> GroupsSpec:
    """``[groups]``: ``name = [member, ...]``; every error names the group and the member."""
    if section is None:
        return GroupsSpec()
    if not isinstance(section, Mapping):
        raise ConfigError(f"groups: expected a table of name = [members], got {section!r}")
    groups = []
    for name, raw in section.items():
        if not NAME_RE.fullmatch(name):
            raise ConfigError(f"groups: {name!r} is not a group name (1-32 of [A-Za-z0-9_-])")
        groups.append(_group(name, raw))
    return GroupsSpec(tuple(groups))


def _group(name: str, raw: Any) -> GroupSpec:
    at = f"groups.{name}"
    if isinstance(raw, str):
        raise ConfigError(f'{at}: expected a list of members, got the string {raw!r}; write {name} = ["{raw}"]')
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f'{at}: expected a non-empty list of device globs or "site:<glob>", got {raw!r}')
    devices: list[str] = []
    sites: list[str] = []
    for m in raw:
        if not isinstance(m, str):
            raise ConfigError(f"{at}: {m!r} is not a string (a device glob such as 'gh-*', or 'site:<glob>')")
        glob, into = (m[len(SITE_PREFIX) :], sites) if m.startswith(SITE_PREFIX) else (m, devices)
        if not _GLOB_RE.fullmatch(glob) or glob.count("[") != glob.count("]"):
            raise ConfigError(
                f"{at}: {m!r} is not a device glob or 'site:<glob>' (ids are [A-Za-z0-9_-]; globs add * ? [...])"
            )
        if glob in into:
            raise ConfigError(f"{at}: {m!r} is listed twice")
        into.append(glob)
    return GroupSpec(name, tuple(devices), tuple(sites))


def check_groups(groups: GroupsSpec, known: Iterable[str], sites: Mapping[str, str], closed: bool) -> None:
    """With a closed fleet (``devices.allow_unknown = false``) every group must take at least one known device:
    a group that can never have a member is a typo."""
    if not closed:
        return
    known = sorted(known)
    for g in groups.groups:
        if not any(g.matches(d, sites.get(d)) for d in known):
            raise ConfigError(
                f"groups.{g.name}: {list(g.members)!r} matches none of the {len(known)} devices of devices.known "
                "(with their devices.sites)"
            )
