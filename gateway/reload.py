"""Hot reload: what a new configuration changes in a running gateway, and the pipeline that carries on.

``edgekit-gateway reload`` (or SIGHUP) makes the gateway read its file again; :func:`restart_only` says which
settings cannot change while it runs (the broker, the database, the state file, ...), :func:`plan_reload` which
windows, patterns, anomaly detection and notification targets are kept, restarted, added or dropped, and
:func:`reloaded_pipeline` builds the pipeline of the new configuration with the kept operators' state.

Only the operators' public snapshots are used: the new pipeline restores a snapshot made of the old pipeline's
(devices, deduplication, the watermark tracker, the kept operators) and a fresh pipeline's (the new and
restarted operators: empty). An operator is kept when its definition and everything it depends on is unchanged:

- a window, when its ``[[windows]]`` entry is the same and so are the engine-wide settings (``[engine]``:
  watermark, ``unsynced``, ``max_future``, ``min_time_ms``); a change of only its triggers or ``publish``
  keeps its windows and starts its trigger state afresh (as a restart with such a change would);
- a pattern, when its ``[[patterns]]`` entry and the engine-wide settings are the same;
- the anomaly detectors, when ``[anomaly]`` and the engine-wide settings are the same (a change anywhere in
  ``[anomaly]`` restarts every detector: their baselines learn again).

Interval joins (``[[joins]]``) and ``[groups]`` need a restart to change; their state carries on, unless the
engine-wide settings change, which restarts the joins too.

The durable log holds a reload record at the position where the new configuration took over (its state
sections and fingerprint, :func:`reload_payload`), and each checkpoint its own configuration's, so that a restart
after a crash restores the checkpoint with the configuration that wrote it and replays the reload where it was.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .config import Config, parse_config
from .pipeline import Pipeline

__all__ = [
    "RELOADABLE",
    "STATE_SECTIONS",
    "Change",
    "ReloadPlan",
    "plan_reload",
    "read_payload",
    "reload_payload",
    "reloaded_pipeline",
    "restart_only",
    "state_sections",
    "with_sections",
]

STATE_SECTIONS = ("engine", "windows", "patterns", "anomaly")
"""The file's tables the pipeline's state depends on (besides ``mqtt.prefix``, which needs a restart)."""

RELOADABLE = frozenset({"engine", "patterns", "anomaly", "notify"})
"""The :class:`~gateway.config.Config` fields a reload applies; a change to any other needs a restart."""

_NOT_COMPARED = frozenset({"raw", "from_env"})


@dataclass(frozen=True, slots=True)
class Change:
    """Names of one kind of operator (windows, patterns, ...) by what a reload does with them."""

    kept: tuple[str, ...] = ()
    restarted: tuple[str, ...] = ()
    added: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.restarted or self.added or self.dropped)

    def as_dict(self) -> dict[str, list[str]]:
        return {k: list(getattr(self, k)) for k in ("kept", "restarted", "added", "dropped")}

    def describe(self, what: str) -> str:
        parts = [f"{k} {', '.join(v)}" for k, v in self.as_dict().items() if v]
        return f"{what}: {'; '.join(parts) or 'none'}"


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    """What a reload from one configuration to another does, with the reason of each restart."""

    windows: Change = Change()
    patterns: Change = Change()
    anomaly: Change = Change()
    """``anomaly`` names the detectors of ``[anomaly]`` as one (a change in the section restarts them all)."""
    notify: Change = Change()
    reasons: Mapping[str, str] = field(default_factory=dict)
    """``"window <name>"`` (``pattern``, ``anomaly``) -> why it is restarted."""
    retriggered: tuple[str, ...] = ()
    """Kept windows whose triggers or ``publish`` changed: their trigger state starts afresh."""
    reordered: bool = False
    """The kept patterns are declared in another order: the operator, whose state follows the declaration order
    (a snapshot restores only into the same order), is rebuilt with the kept state moved by name."""

    @property
    def changes_state(self) -> bool:
        """Whether the pipeline changes (else only notification targets, or nothing, change)."""
        return (
            self.windows.changed
            or self.patterns.changed
            or self.anomaly.changed
            or bool(self.retriggered)
            or self.reordered
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "windows": self.windows.as_dict(),
            "patterns": self.patterns.as_dict(),
            "anomaly": self.anomaly.as_dict(),
            "notify": self.notify.as_dict(),
            "reasons": dict(self.reasons),
            "retriggered": list(self.retriggered),
            "reordered": self.reordered,
        }

    def lines(self) -> list[str]:
        return [
            self.windows.describe("windows"),
            self.patterns.describe("patterns"),
            self.anomaly.describe("anomaly"),
            self.notify.describe("notify"),
            *(f"{what} restarted: {why}" for what, why in self.reasons.items()),
            *(f"window {w}: triggers changed, its trigger state starts afresh" for w in self.retriggered),
        ]


def restart_only(old: Config, new: Config) -> list[str]:
    """The settings that differ between ``old`` and ``new`` and that a reload cannot apply (``mqtt.url``: the
    broker's ``host`` and ``port``, ``state.dir``, ...), as ``table.key``; empty when the reload may go ahead."""
    out: list[str] = []
    for f in dataclasses.fields(Config):
        if f.name in RELOADABLE or f.name in _NOT_COMPARED:
            continue
        a, b = getattr(old, f.name), getattr(new, f.name)
        if a == b:
            continue
        if dataclasses.is_dataclass(a) and not isinstance(a, type):
            out += [f"{f.name}.{g.name}" for g in dataclasses.fields(a) if getattr(a, g.name) != getattr(b, g.name)]
        else:
            out.append(f.name)
    return out


def _engine_wide(cfg: Config) -> tuple[Any, ...]:
    e = cfg.engine
    return (e.watermark, e.unsynced, e.max_future_ms, e.min_time_ms)


def _diff(
    old: Mapping[str, Any], new: Mapping[str, Any], all_restart: str | None, what: str, reasons: dict[str, str]
) -> Change:
    kept, restarted = [], []
    for name in new:
        if name not in old:
            continue
        if all_restart is not None:
            restarted.append(name)
            reasons[f"{what} {name}"] = all_restart
        elif old[name] == new[name]:
            kept.append(name)
        else:
            restarted.append(name)
            reasons[f"{what} {name}"] = "its definition changed"
    return Change(
        kept=tuple(kept),
        restarted=tuple(restarted),
        added=tuple(n for n in new if n not in old),
        dropped=tuple(n for n in old if n not in new),
    )


def plan_reload(old: Config, new: Config) -> ReloadPlan:
    """Which windows, patterns, anomaly detectors and notification targets a reload from ``old`` to ``new`` keeps,
    restarts, adds and drops (by name, in the new configuration's order; the dropped in the old one's)."""
    reasons: dict[str, str] = {}
    engine_changed = _engine_wide(old) != _engine_wide(new)
    everything = "the engine-wide settings ([engine]: watermark, unsynced, max_future, min_time_ms) changed"
    why = everything if engine_changed else None
    # a window's operator depends on its repr's fields; triggers and publish only on when results go out
    old_w = {w.name: repr(w) for w in old.engine.windows}
    new_w = {w.name: repr(w) for w in new.engine.windows}
    windows = _diff(old_w, new_w, why, "window", reasons)
    old_specs = {w.name: w for w in old.engine.windows}
    retriggered = tuple(w.name for w in new.engine.windows if w.name in windows.kept and old_specs[w.name] != w)
    patterns = _diff({p.name: p for p in old.patterns}, {p.name: p for p in new.patterns}, why, "pattern", reasons)
    a_old = {"anomaly": old.anomaly} if old.anomaly.enabled else {}
    a_new = {"anomaly": new.anomaly} if new.anomaly.enabled else {}
    anomaly = _diff(a_old, a_new, why, "detectors", reasons)
    if "detectors anomaly" in reasons:
        reasons["detectors anomaly"] = reasons["detectors anomaly"].replace("its definition", "[anomaly]")
    notify = _diff({n.name: n for n in old.notify}, {n.name: n for n in new.notify}, None, "notify", reasons)
    kept = set(patterns.kept)
    reordered = [p.name for p in old.patterns if p.name in kept] != [p.name for p in new.patterns if p.name in kept]
    return ReloadPlan(windows, patterns, anomaly, notify, reasons, retriggered, reordered)


def reloaded_pipeline(old: Pipeline, config: Config, plan: ReloadPlan) -> Pipeline:
    """The pipeline of ``config``: the devices, deduplication, counters, watermark tracker and kept operators of
    ``old`` (through its snapshot), the new and restarted operators empty. ``old`` is left as it was."""
    snap = old.snapshot()
    new = Pipeline(config)
    fresh = new.snapshot()
    merged = dict(snap)
    merged["engine"] = _engine(snap["engine"], fresh["engine"], set(plan.windows.kept), set(plan.retriggered))
    merged["cep"] = _cep(snap["cep"], fresh["cep"], set(plan.patterns.kept), config)
    merged["anomaly"] = snap["anomaly"] if plan.anomaly.kept else fresh["anomaly"]
    if "relative" in fresh and "relative" in snap:  # a restarted window's open comparisons start empty with it
        kept, rel = set(plan.windows.kept), dict(snap["relative"])
        for part in ("open", "wm", "global_wm"):
            rel[part] = {w: v for w, v in rel[part].items() if w in kept}
        merged["relative"] = rel
    if "joins" in fresh and _engine_wide(old.config) != _engine_wide(config):
        merged["joins"] = fresh["joins"]  # [[joins]] need a restart to change, but they wait on the watermark too
    new.restore(merged)
    return new


def _engine(old: dict[str, Any], fresh: dict[str, Any], kept: set[str], retriggered: set[str]) -> dict[str, Any]:
    out = dict(fresh)
    out["tracker"] = old["tracker"]  # each device's event time, flushed marker, activity: facts, not definitions
    out["stats"] = old["stats"]
    out["windows"] = {name: old["windows"][name] if name in kept else op for name, op in fresh["windows"].items()}
    if "early" in fresh:
        before = old.get("early", {})
        out["early"] = {
            name: before[name] if name in kept and name not in retriggered and name in before else e
            for name, e in fresh["early"].items()
        }
    return out


def _cep(old: dict[str, Any], fresh: dict[str, Any], kept: set[str], config: Config) -> dict[str, Any]:
    kinds = set()  # the keys the patterns left run on: "d:" and "s:" (every device, site), "g:<name>" (a group)
    for p in config.patterns:
        if p.key in ("device", "site"):
            kinds.add(p.key[0] + ":")
        else:  # key = "group" runs in every declared group, key = "group:<name>" in that one
            kinds.update(f"g:{g}" for g in (config.groups.names if p.key == "group" else (p.key[6:],)))
    keys = {}
    for name, doc in old["keys"].items():
        if name[:2] not in kinds and name not in kinds:
            continue  # no pattern of this kind of key (or of this group) is left
        d = dict(doc)
        for part in ("runs", "fast", "open"):
            if part in d:
                d[part] = {p: v for p, v in d[part].items() if p in kept}
        keys[name] = d
    out = {
        **fresh,
        "tracker": old["tracker"],
        "stats": {k: old["stats"].get(k, 0) for k in fresh["stats"]},
        "keys": keys,
    }
    if "global_wm" in fresh and "global_wm" in old:  # the one watermark of global mode: a fact, as the tracker's
        out["global_wm"] = old["global_wm"]
    if "members" in old:  # who is in each keyed group, moved devices too: facts (restore keeps the groups it keys)
        out["members"] = old["members"]
    return out


# --- what the log and the checkpoints keep of a configuration ----------------------------------------------


def state_sections(config: Config) -> dict[str, Any]:
    """The file's tables (with the environment's values) that the pipeline's state depends on: stored with each
    checkpoint and reload record. They hold no secret."""
    return {k: config.raw[k] for k in STATE_SECTIONS if k in config.raw}


def with_sections(base: Config, sections: Mapping[str, Any]) -> Config:
    """``base`` with the windows, patterns and anomaly detection that ``sections`` (:func:`state_sections`)
    declare. Raises :class:`~gateway.errors.ConfigError` if they no longer parse."""
    raw = {k: v for k, v in base.raw.items() if k not in STATE_SECTIONS}
    raw.update(sections)
    # with the tables they are checked against (metric types, groups, devices and their properties, joins), which a
    # reload does not change; none holds a secret
    doc = {k: raw[k] for k in (*STATE_SECTIONS, "metric_types", "groups", "devices", "joins") if k in raw}
    part = parse_config(doc, env={})
    return dataclasses.replace(base, engine=part.engine, patterns=part.patterns, anomaly=part.anomaly, raw=raw)


def reload_payload(fingerprint: str, previous: str, sections: Mapping[str, Any], plan: ReloadPlan) -> bytes:
    """A reload record's payload in the durable log: the new configuration's state sections and fingerprint."""
    doc = {"fingerprint": fingerprint, "previous": previous, "sections": sections, "plan": plan.as_dict()}
    return json.dumps(doc, separators=(",", ":"), sort_keys=True, default=str).encode()


def read_payload(payload: bytes) -> tuple[str, dict[str, Any]]:
    """``(fingerprint, sections)`` of a reload record."""
    doc = json.loads(payload)
    return str(doc["fingerprint"]), dict(doc["sections"])
