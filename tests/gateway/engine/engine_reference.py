"""A brute-force model of the engine's semantics, for property tests.

The windows are the simulator's brute-force reference (:class:`sim.reference.WindowRef`: every accepted
reading kept in explicit per-window lists, every aggregate recomputed with :mod:`statistics`; no panes,
stacks, heaps or incremental updates). This adds the watermark rules for one window spec, site-keyed
windows included: a batch's readings meet the watermark as it was before the batch; then the watermark
advances; then windows whose end it reached and that changed are emitted; windows past end + lateness are
dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.engine.config import EngineSpec, WindowSpec
from gateway.engine.watermark import WatermarkSpec
from sim.reference import Event, WindowRef, device_watermark


@dataclass
class Reference:
    spec: WindowSpec
    mode: str  # "device" | "global"
    bound: int
    max_t: dict[str, int] = field(default_factory=dict)
    flushed: dict[str, int] = field(default_factory=dict)
    sites: dict[str, list[str]] = field(default_factory=dict)
    ref: WindowRef = field(init=False)

    def __post_init__(self) -> None:
        watermark = WatermarkSpec(mode="global" if self.mode == "global" else "device")
        self.ref = WindowRef(self.spec, EngineSpec(windows=(self.spec,), watermark=watermark))

    def batch(
        self, site: str, device: str, readings: list[Event], flushed: int | None
    ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """Returns (window emissions, late records) for this batch."""
        key = site if self.spec.key == "site" else device
        if device not in self.sites.setdefault(site, []):
            self.sites[site].append(device)
        late = [x[:6] for x in self.ref.add(key, device, readings)]  # without the reason: always too_late here
        # advance watermarks
        ts = [r[0] for r in readings]
        if ts:
            self.max_t[device] = max(self.max_t.get(device, ts[0]), max(ts))
        if flushed is not None:
            self.flushed[device] = max(self.flushed.get(device, flushed), flushed)
        wm: int | None
        if self.mode == "global":
            key, wm = "", self.ref.wm.get("")
            if ts:
                cand = max(ts) - self.bound
                wm = cand if wm is None else max(wm, cand)
        elif self.spec.key == "device":
            wm = device_watermark(device, self.bound, self.max_t, self.flushed)
        else:
            marks = [device_watermark(d, self.bound, self.max_t, self.flushed) for d in self.sites[site]]
            dwms = [w for w in marks if w is not None]
            wm = max(self.ref.wm.get(site, min(dwms)), min(dwms)) if dwms else None
        if wm is None:
            return [], late
        return [(self.spec.name, *row) for row in self.ref.advance(key, wm)], late
