"""The ground truth of the gateway's interval joins (``[[joins]]``) for a simulated run, by brute force.

Every pair of accepted readings (an ``a`` reading and a ``b`` reading of the same site, each meeting its side's
devices, metrics and condition, ``a.t + lower <= b.t <= a.t + upper``, the ``a.``/``b.`` references met) is a
joined record, except the pairs the run's last watermark has not passed yet: the gateway emits a pair once the
key's watermark passes both readings, and a run that ends leaves its last ones open. The key's final watermark
is that of its devices (those the sides' globs take) at the end: the smallest of ``max(last t - bound,
flushed + 1)``; in ``global`` mode the largest ``last t - bound`` of every device. The reference assumes no
reading is late for a join (a board idle past its timeout, then back): the scenarios that check joins keep
their boards live or announce their sleep.
"""

from __future__ import annotations

from collections.abc import Mapping
from fnmatch import fnmatchcase
from typing import Any

from gateway.cep.expr import compile_condition
from gateway.engine.config import EngineSpec
from gateway.errors import ConfigError
from gateway.joins.config import JoinSpec, parse_joins

from .errors import SpecError
from .world import Run, SentReading

__all__ = ["expected_joins", "join_specs"]


def join_specs(gateway: Mapping[str, Any]) -> tuple[JoinSpec, ...]:
    try:
        return parse_joins(gateway.get("joins"))
    except ConfigError as exc:
        raise SpecError(f"gateway configuration: {exc}") from exc


def _takes(spec: JoinSpec, side: int, r: SentReading) -> bool:
    s = spec.a if side == 0 else spec.b
    if s.devices and not any(fnmatchcase(r.device, g) for g in s.devices):
        return False
    if not set(s.metrics) & set(r.metrics):
        return False
    cond = compile_condition(s.filters, {}) if s.filters else None
    return cond is None or cond(r.metrics, (), None)


def expected_joins(run: Run, accepted: list[int], gateway: Mapping[str, Any], engine: EngineSpec) -> list[list[Any]]:
    """``[join, key, a_reading, b_reading, a_ms, b_ms]`` of every pair the gateway must write, in a stable order.

    ``accepted``: the indexes of the readings the gateway takes (``Expected.readings``)."""
    specs = join_specs(gateway)
    if not specs:
        return []
    wm_spec = engine.watermark
    readings = [run.readings[i] for i in accepted if run.readings[i].quality != "u"]
    # each device's final watermark
    last: dict[str, int] = {}
    for r in readings:
        last[r.device] = max(last.get(r.device, r.t_ms), r.t_ms)
    flushed: dict[str, int] = {}
    for d in run.deliveries:
        if d.flushed is not None:
            flushed[d.device] = max(flushed.get(d.device, d.flushed), d.flushed)
    device_wm = {dev: t - wm_spec.bound_for(dev) for dev, t in last.items()}
    if wm_spec.mode == "global":
        top = max(device_wm.values(), default=None)
        device_wm = dict.fromkeys(device_wm, top) if top is not None else {}
    else:
        for dev, f in flushed.items():
            device_wm[dev] = max(device_wm.get(dev, f + 1), f + 1)
    out: list[list[Any]] = []
    for spec in specs:
        if spec.key != "site":
            raise SpecError(f"joins[{spec.name}].key: the simulator's reference models joins on the site only")
        refs = [
            compile_condition(s.refs, {o: 0}) if s.refs else None
            for s, o in ((spec.a, "b"), (spec.b, "a"))
        ]  # fmt: skip
        by_site: dict[str, tuple[list[SentReading], list[SentReading]]] = {}
        members: dict[str, set[str]] = {}
        for r in readings:
            for side in (0, 1):
                s = spec.a if side == 0 else spec.b
                if not s.devices or any(fnmatchcase(r.device, g) for g in s.devices):
                    members.setdefault(r.site, set()).add(r.device)
                if _takes(spec, side, r):
                    by_site.setdefault(r.site, ([], []))[side].append(r)
        for site, (a_side, b_side) in sorted(by_site.items()):
            wms = [device_wm[d] for d in members.get(site, ()) if d in device_wm]
            key_wm = min(wms) if wms and wm_spec.mode != "global" else max(wms, default=None)
            for a in a_side:
                for b in b_side:
                    if not (a.t_ms + spec.lower_ms <= b.t_ms <= a.t_ms + spec.upper_ms):
                        continue
                    if refs[0] is not None and not refs[0](a.metrics, (b.metrics,), None):
                        continue
                    if refs[1] is not None and not refs[1](b.metrics, (a.metrics,), None):
                        continue
                    if key_wm is None or max(a.t_ms, b.t_ms) >= key_wm:
                        continue  # not passed by the watermark when the run ends: still open
                    out.append([
                        spec.name, site, f"{a.device}/{a.boot}/{a.seq}", f"{b.device}/{b.boot}/{b.seq}", a.t_ms, b.t_ms,
                    ])  # fmt: skip
    out.sort(key=lambda p: (p[0], p[1], p[4], p[5], p[2], p[3]))
    return out
