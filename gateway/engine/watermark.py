"""Watermarks: how far each device's (and each site's) event time is known to be complete.

A watermark ``W`` says: every reading with event time ``t < W`` has been seen. A window ``[start, end)``
fires when its watermark reaches ``end``.

- Per device: ``max event time seen - out_of_orderness`` (bound per device class), raised at once to
  ``flushed + 1`` by the board's "flushed up to t" marker.
- Fleet (per site): the minimum over the site's *active* devices; a device is idle when it has not been
  heard from for ``idle_factor * sleep_s + idle_grace`` (``sleep_s`` from its status) or, without an
  announced sleep, for ``idle_timeout``; a device whose status says ``offline`` is idle at once. When every
  device of the site is idle, the fleet watermark is the largest device watermark (nothing is awaited).
  It never goes backwards: a device that wakes up again cannot pull it back, its old readings are late.
- Global mode (as Flink and Kafka Streams do with one stream): one watermark, the maximum over all devices
  of ``max event time - bound``; flushed markers carry no information there.

The tracker holds only what the readings and status said; the window operators keep the watermark they
last acted on per key and assert it never decreases.
"""

from __future__ import annotations

from collections.abc import Iterable, Set
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Literal

__all__ = ["DeviceClass", "DeviceTracker", "WatermarkMode", "WatermarkSpec"]

WatermarkMode = Literal["device", "global"]


@dataclass(frozen=True, slots=True)
class DeviceClass:
    """Devices whose id matches one of ``devices`` (glob patterns) get this out-of-orderness bound."""

    name: str
    devices: tuple[str, ...]
    out_of_orderness_ms: int


@dataclass(frozen=True, slots=True)
class WatermarkSpec:
    mode: WatermarkMode = "device"
    out_of_orderness_ms: int = 5_000
    classes: tuple[DeviceClass, ...] = ()
    idle_timeout_ms: int = 600_000
    idle_factor: float = 2.0
    idle_grace_ms: int = 30_000

    def bound_for(self, device: str) -> int:
        """The out-of-orderness bound of a device: its first matching class, else the default."""
        for cls in self.classes:
            if any(fnmatchcase(device, pat) for pat in cls.devices):
                return cls.out_of_orderness_ms
        return self.out_of_orderness_ms


@dataclass(slots=True)
class DeviceTracker:
    """What the gateway knows of each device's event time and liveness (explicit, JSON-able state).

    ``state[device] = [site, max_t, flushed, last_seen_ms, sleep_ms, offline]``.
    """

    spec: WatermarkSpec
    state: dict[str, list[Any]] = field(default_factory=dict)
    sites: dict[str, list[str]] = field(default_factory=dict)

    def entry(self, site: str, device: str) -> list[Any]:
        entry = self.state.get(device)
        if entry is None:
            entry = self.state[device] = [site, None, None, None, None, False]
            self.sites.setdefault(site, []).append(device)
        return entry

    def move(self, device: str, site: str) -> None:
        """The device now belongs to ``site`` too. It still counts for its old site's fleet watermark, so the
        old site's windows holding its earlier readings close on its event time as before."""
        e = self.state.get(device)
        if e is None or e[0] == site:
            return
        e[0] = site
        devices = self.sites.setdefault(site, [])
        if device not in devices:
            devices.append(device)

    def seen(self, site: str, device: str, now_ms: int, max_t: int | None, flushed: int | None) -> None:
        """A batch arrived: the device lives; its event time reached ``max_t``, flushed up to ``flushed``."""
        e = self.entry(site, device)
        e[3] = now_ms if e[3] is None else max(e[3], now_ms)
        e[5] = False
        if max_t is not None and (e[1] is None or max_t > e[1]):
            e[1] = max_t
        if flushed is not None and (e[2] is None or flushed > e[2]):
            e[2] = flushed

    def status(self, site: str, device: str, now_ms: int, state: str, sleep_s: float | None) -> None:
        """A status message: ``offline`` makes the device idle at once; ``sleep_s`` sets its idle timeout."""
        e = self.entry(site, device)
        e[3] = now_ms if e[3] is None else max(e[3], now_ms)
        e[5] = state == "offline"
        if sleep_s is not None:
            e[4] = int(sleep_s * 1000)

    def device_wm(self, device: str, bound: int) -> int | None:
        """``max(max_t - bound, flushed + 1)``, or ``None`` before the device sent anything."""
        e = self.state.get(device)
        if e is None:
            return None
        wm: int | None = None if e[1] is None else e[1] - bound
        if e[2] is not None and (wm is None or e[2] + 1 > wm):
            wm = e[2] + 1
        return wm

    def is_active(self, device: str, now_ms: int) -> bool:
        """Heard from within its idle time and not offline (a device never heard from is not active)."""
        e = self.state.get(device)
        if e is None or e[5] or e[3] is None:
            return False
        timeout = (
            self.spec.idle_timeout_ms if e[4] is None else int(self.spec.idle_factor * e[4] + self.spec.idle_grace_ms)
        )
        return bool(now_ms - e[3] <= timeout)

    def fleet_wm(self, site: str, bound_of: Any, now_ms: int) -> int | None:
        """Minimum device watermark over the site's active devices (largest if all are idle).

        ``bound_of(device)`` gives the bound to use. Devices that never sent a reading are ignored.
        """
        return self.members_wm(self.sites.get(site, ()), bound_of, now_ms)

    def members_wm(
        self, devices: Iterable[str], bound_of: Any, now_ms: int, *, hold_unread: bool = False
    ) -> int | None:
        """The fleet rule over ``devices``: the minimum device watermark of the active ones (the largest if every
        one is idle; ``None`` if none has sent a reading). ``bound_of(device)`` gives the bound to use.

        A device that never sent a reading is ignored, except with ``hold_unread``: then one that is active (it
        said it is online, a status) holds the result (``None``) until its first reading or until it is idle, so
        that a sleepy board's first flush is not late for the group it belongs to (groups, docs/cep.md)."""
        active: int | None = None
        idle: int | None = None
        for device in devices:
            wm = self.device_wm(device, bound_of(device))
            if wm is None:
                if hold_unread and self.is_active(device, now_ms):
                    return None
                continue
            if self.is_active(device, now_ms):
                active = wm if active is None else min(active, wm)
            else:
                idle = wm if idle is None else max(idle, wm)
        return active if active is not None else idle

    def snapshot(self, keys: Set[str] | None = None, order: bool = False) -> dict[str, Any]:
        """``keys`` and ``order`` select the per-key entries as in :meth:`Engine.snapshot`."""
        if order:
            return {"state": dict.fromkeys(self.state), "sites": dict.fromkeys(self.sites)}
        if keys is None:
            return {
                "state": {k: list(v) for k, v in self.state.items()},
                "sites": {k: list(v) for k, v in self.sites.items()},
            }
        return {
            "state": {k: list(self.state[k]) for k in keys if k in self.state},
            "sites": {k: list(self.sites[k]) for k in keys if k in self.sites},
        }

    def restore(self, snap: dict[str, Any]) -> None:
        # one string a site and a device, as when running (a snapshot's JSON gives one for each place it is written:
        # 64 bytes a device each, twice)
        names: dict[str, str] = {}
        state: dict[str, list[Any]] = {}
        for k, v in snap["state"].items():
            e = list(v)
            if isinstance(e[0], str):
                e[0] = names.setdefault(e[0], e[0])
            state[names.setdefault(k, k)] = e
        self.state = state
        self.sites = {names.setdefault(k, k): [names.setdefault(d, d) for d in v] for k, v in snap["sites"].items()}
