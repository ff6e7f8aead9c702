"""Scenarios: a fleet, its network, its faults and the gateway rules to check it against, as TOML.

A scenario file (``sim/scenarios/*.toml``) has these tables; every key is optional unless said::

    [scenario]
    name = "steady"                 # required
    description = "..."
    seed = 1
    duration = "1h"                 # event time covered
    start_ms = 1764072000000        # default: the run ends a few minutes before now

    [fleet]                         # defaults of every group
    sites = ["greenhouse"]
    metrics = ["temp_c", "rh"]
    interval = "60s"                # sampling period
    batch_size = 10                 # readings a message, at most
    publish_every = 1               # readings taken between two connections (a sleepy board: many)
    sleep = false                   # deep sleep between connections: status "sleeping" with sleep_s
    drift_ppm = [0, 0]              # each board draws its drift from this range
    skew = ["0ms", "0ms"]           # and its clock offset after a sync
    unsynced_for = "0s"             # readings before the first sync: "u", re-timed "c" if still unsent
    unsynced_offset = "-2h"         # how wrong the unsynced clock is
    rtc_unset = false               # the unsynced clock reads 2000-01-01 + uptime (dead letters)

    [[fleet.groups]]                # devices, each group overriding the [fleet] keys above
    name = "live"
    devices = 8

    [network]
    delay = { dist = "lognormal", median = "80ms", sigma = 0.6 }  # fixed|uniform|exponential|lognormal
    loss = 0.0                      # a publish lost on the way: the board re-sends after `retry`
    ack_loss = 0.0                  # the PUBACK lost: the board re-sends, the gateway sees it twice
    duplicate = 0.0                 # the broker delivers a message twice (QoS 1 redelivery)
    reorder = 0.0                   # a message held back by `reorder_delay`
    reorder_delay = "20s"
    retry = "5s"
    [[network.outages]]
    start = "20m"                   # offsets from the scenario start
    end = "30m"
    sites = ["orchard"]             # default: every site

    [[storms]]                      # every board samples `factor` times faster
    start = "30m"
    duration = "1m"
    factor = 10

    [[anomalies]]                   # see sim/faults.py
    kind = "spike"                  # spike|level_shift|drift|stuck|dropout|noise_burst
    device = "dev-0003"
    metric = "temp_c"
    start = "10m"
    end = "12m"
    magnitude = 15.0                # spike, level_shift, drift (per hour); sigma for noise_burst

    [[sequences]]                   # scripted event sequences for pattern alerts
    kind = "door_left_open"         # door_left_open|door_closed|three_failures|two_failures
    device = "dev-0001"
    at = "15m"

    [[sequences]]                   # a correlated one, seen by two boards of a group (pump-group.toml)
    kind = "pump_fault"             # pump_fault|pump_fault_apart
    device = "dev-0002"             # reads the overcurrent
    partner = "dev-0003"            # reads the flow falling
    group = "pump_1"                # the [gateway.groups] group: the key of the alert
    at = "20m"

    [[correlations]]                # correlated events on two devices, for [[joins]] (docs/correlation.md)
    kind = "door_then_cold"         # a door opens on `device`, `after` later `other` reads a cold temperature
    device = "dev-0001"
    other = "dev-0003"
    at = "10m"
    after = "90s"

    [gateway]                       # optional: the gateway's [engine], [[windows]], [metric_types],
                                    # [anomaly], [[patterns]] and [[joins]] (as in its TOML file)
    metric_types = { string = ["door", "status"] }   # needed with [[sequences]]: their metrics are strings
    [[gateway.windows]]
    name = "temp_1m"
    kind = "tumbling"
    size = "60s"
    metrics = ["temp_c"]

Durations are milliseconds (integers) or strings such as ``"250ms"``, ``"60s"``, ``"5m"``, ``"1h"``;
offsets inside the run may be negative (``"-2h"``). Every error names the key and the value.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, Literal

from gateway.engine.config import parse_duration as gateway_parse_duration
from gateway.errors import ConfigError

from .devices import METRIC_GENERATORS
from .errors import SpecError
from .faults import (
    ANOMALY_KINDS,
    CORRELATION_KINDS,
    PAIRED_KINDS,
    SEQUENCE_KINDS,
    Correlation,
    InjectedAnomaly,
    ScriptedSequence,
    sequence_metric_types,
)
from .wire import MAX_READINGS, NAME_RE

__all__ = [
    "SCENARIO_DIR",
    "DelaySpec",
    "GroupSpec",
    "NetworkSpec",
    "Outage",
    "Scenario",
    "Storm",
    "check_metric_types",
    "load_scenario",
    "parse_duration",
    "parse_scenario",
    "scenario_names",
]

SCENARIO_DIR: Final = Path(__file__).resolve().parent / "scenarios"
GATEWAY_SECTIONS: Final = frozenset({"engine", "windows", "metric_types", "anomaly", "patterns", "joins", "groups"})
"""The gateway configuration's sections a scenario's ``[gateway]`` table may hold."""
DelayDist = Literal["fixed", "uniform", "exponential", "lognormal"]
SequenceKind = str


def parse_duration(value: object, where: str, *, negative: bool = False) -> int:
    """Milliseconds from an int or ``"<number><unit>"`` (unit ms, s, m, h, d): the gateway's own parser,
    with a leading minus allowed where ``negative`` is (a skew, an offset)."""
    sign = 1
    if negative and isinstance(value, int) and not isinstance(value, bool) and value < 0:
        value, sign = -value, -1
    elif negative and isinstance(value, str) and value.strip().startswith("-"):
        value, sign = value.strip()[1:], -1
    try:
        return sign * gateway_parse_duration(value, where)
    except ConfigError as exc:
        raise SpecError(str(exc)) from exc


@dataclass(frozen=True, slots=True)
class DelaySpec:
    """A network delay distribution (ms): ``fixed`` (value), ``uniform`` (low, high), ``exponential``
    (mean) or ``lognormal`` (median, sigma)."""

    dist: DelayDist = "fixed"
    value_ms: int = 50
    low_ms: int = 0
    high_ms: int = 0
    mean_ms: int = 0
    median_ms: int = 0
    sigma: float = 0.0


@dataclass(frozen=True, slots=True)
class Outage:
    """The network is down for ``sites`` (empty: all) from ``start_ms`` to ``end_ms`` (run offsets)."""

    start_ms: int
    end_ms: int
    sites: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class NetworkSpec:
    delay: DelaySpec = DelaySpec()
    loss: float = 0.0
    ack_loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    reorder_delay_ms: int = 20_000
    retry_ms: int = 5_000
    outages: tuple[Outage, ...] = ()


@dataclass(frozen=True, slots=True)
class Storm:
    """From ``start_ms`` for ``duration_ms`` (run offsets), every board samples ``factor`` times faster."""

    start_ms: int
    duration_ms: int
    factor: int


@dataclass(frozen=True, slots=True)
class GroupSpec:
    """A group of identical boards (the ``[fleet]`` defaults overridden by one ``[[fleet.groups]]``)."""

    name: str = "fleet"
    devices: int = 10
    sites: tuple[str, ...] = ("site-a",)
    metrics: tuple[str, ...] = ("temp_c", "rh")
    interval_ms: int = 60_000
    batch_size: int = 10
    publish_every: int = 1
    sleep: bool = False
    drift_ppm: tuple[float, float] = (0.0, 0.0)
    skew_ms: tuple[int, int] = (0, 0)
    unsynced_for_ms: int = 0
    unsynced_offset_ms: int = -7_200_000
    rtc_unset: bool = False
    future_readings: int = 0
    """Readings stamped a day ahead by a glitching RTC (dead-lettered ``time_in_future``)."""


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    description: str = ""
    seed: int = 0
    duration_ms: int = 3_600_000
    start_ms: int | None = None
    prefix: str = "edgekit"
    groups: tuple[GroupSpec, ...] = (GroupSpec(),)
    network: NetworkSpec = NetworkSpec()
    storms: tuple[Storm, ...] = ()
    anomalies: tuple[InjectedAnomaly, ...] = ()
    sequences: tuple[ScriptedSequence, ...] = ()
    correlations: tuple[Correlation, ...] = ()
    gateway: Mapping[str, Any] = field(default_factory=dict)
    """The gateway configuration's sections (``GATEWAY_SECTIONS``, as in its TOML file), or empty."""

    @property
    def devices(self) -> int:
        return sum(g.devices for g in self.groups)

    @property
    def sites(self) -> tuple[str, ...]:
        out: list[str] = []
        for g in self.groups:
            out += [s for s in g.sites if s not in out]
        return tuple(out)

    def scaled(
        self,
        *,
        devices: int | None = None,
        duration_ms: int | None = None,
        seed: int | None = None,
        start_ms: int | None = None,
        prefix: str | None = None,
        sites: tuple[str, ...] | None = None,
    ) -> Scenario:
        """The same scenario with another fleet size (groups scaled in proportion), span, seed, start,
        topic prefix or site names (renamed in order)."""
        s = self
        if devices is not None:
            if devices < len(s.groups):
                raise SpecError(f"devices={devices}: at least one per group ({len(s.groups)}) is needed")
            total = s.devices
            counts = [max(1, g.devices * devices // total) for g in s.groups]
            counts[0] += devices - sum(counts)
            if counts[0] < 1:
                raise SpecError(f"devices={devices} is too few for the groups of {s.name}")
            s = replace(s, groups=tuple(replace(g, devices=n) for g, n in zip(s.groups, counts, strict=True)))
        if sites is not None:
            old = s.sites
            if len(sites) != len(old):
                raise SpecError(f"sites: {len(old)} names needed ({', '.join(old)}), got {len(sites)}")
            rename = dict(zip(old, sites, strict=True))
            s = replace(
                s,
                groups=tuple(replace(g, sites=tuple(rename[x] for x in g.sites)) for g in s.groups),
                network=replace(
                    s.network,
                    outages=tuple(replace(o, sites=tuple(rename[x] for x in o.sites)) for o in s.network.outages),
                ),
            )
        return replace(
            s,
            duration_ms=s.duration_ms if duration_ms is None else duration_ms,
            seed=s.seed if seed is None else seed,
            start_ms=s.start_ms if start_ms is None else start_ms,
            prefix=s.prefix if prefix is None else prefix,
        )


# --- parsing ------------------------------------------------------------------------------------------


class _Table:
    """A TOML table with typed getters that name the key on error, and a check for unknown keys."""

    def __init__(self, raw: object, where: str) -> None:
        if not isinstance(raw, Mapping):
            raise SpecError(f"{where}: expected a table, got {raw!r}")
        self.raw: Mapping[str, Any] = raw
        self.where = where
        self.used: set[str] = set()

    def has(self, key: str) -> bool:
        return key in self.raw

    def get(self, key: str, kind: type | tuple[type, ...], default: Any) -> Any:
        self.used.add(key)
        if key not in self.raw:
            return default
        v = self.raw[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if (isinstance(v, bool) and bool not in kinds) or not isinstance(v, kinds):
            raise SpecError(f"{self.where}.{key}: expected {' or '.join(k.__name__ for k in kinds)}, got {v!r}")
        return v

    def duration(self, key: str, default: int, *, negative: bool = False) -> int:
        self.used.add(key)
        if key not in self.raw:
            return default
        return parse_duration(self.raw[key], f"{self.where}.{key}", negative=negative)

    def rate(self, key: str) -> float:
        v = float(self.get(key, (int, float), 0.0))
        if not 0.0 <= v < 1.0:
            raise SpecError(f"{self.where}.{key}: a probability in [0, 1) is needed, got {v!r}")
        return v

    def done(self) -> None:
        unknown = sorted(set(self.raw) - self.used)
        if unknown:
            raise SpecError(f"{self.where}: unknown key(s) {', '.join(unknown)}")


_GROUP_KEYS: Final = (
    "sites", "metrics", "interval", "batch_size", "publish_every", "sleep", "drift_ppm", "skew",
    "unsynced_for", "unsynced_offset", "rtc_unset", "future_readings",
)  # fmt: skip


def _group(t: _Table, base: GroupSpec) -> GroupSpec:
    def names(key: str, default: tuple[str, ...], check: Any) -> tuple[str, ...]:
        v = t.get(key, list, list(default))
        if not v or not all(isinstance(x, str) and check(x) for x in v) or len(set(v)) != len(v):
            raise SpecError(f"{t.where}.{key}: expected a non-empty list of distinct valid names, got {v!r}")
        return tuple(v)

    def pair(key: str, default: tuple[Any, Any], conv: Any) -> tuple[Any, Any]:
        v = t.get(key, list, list(default))
        if len(v) != 2:
            raise SpecError(f"{t.where}.{key}: expected [low, high], got {v!r}")
        lo, hi = conv(v[0], f"{t.where}.{key}[0]"), conv(v[1], f"{t.where}.{key}[1]")
        if hi < lo:
            raise SpecError(f"{t.where}.{key}: low {v[0]!r} is above high {v[1]!r}")
        return lo, hi

    def num(v: object, where: str) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise SpecError(f"{where}: expected a number, got {v!r}")
        return float(v)

    def dur(v: object, where: str) -> int:
        return parse_duration(v, where, negative=True)

    g = GroupSpec(
        name=t.get("name", str, base.name),
        devices=t.get("devices", int, base.devices),
        sites=names("sites", base.sites, NAME_RE.fullmatch),
        metrics=names("metrics", base.metrics, lambda x: x in METRIC_GENERATORS),
        interval_ms=t.duration("interval", base.interval_ms),
        batch_size=t.get("batch_size", int, base.batch_size),
        publish_every=t.get("publish_every", int, base.publish_every),
        sleep=t.get("sleep", bool, base.sleep),
        drift_ppm=pair("drift_ppm", base.drift_ppm, num),
        skew_ms=pair("skew", base.skew_ms, dur),
        unsynced_for_ms=t.duration("unsynced_for", base.unsynced_for_ms),
        unsynced_offset_ms=t.duration("unsynced_offset", base.unsynced_offset_ms, negative=True),
        rtc_unset=t.get("rtc_unset", bool, base.rtc_unset),
        future_readings=t.get("future_readings", int, base.future_readings),
    )
    if g.devices < 1:
        raise SpecError(f"{t.where}.devices: at least 1, got {g.devices}")
    if not 1 <= g.batch_size <= MAX_READINGS:
        raise SpecError(f"{t.where}.batch_size: 1..{MAX_READINGS}, got {g.batch_size}")
    if g.publish_every < 1:
        raise SpecError(f"{t.where}.publish_every: at least 1, got {g.publish_every}")
    if g.interval_ms < 100:
        raise SpecError(f"{t.where}.interval: at least 100ms, got {g.interval_ms}")
    if g.future_readings < 0:
        raise SpecError(f"{t.where}.future_readings: must not be negative, got {g.future_readings}")
    unknown = set(g.metrics) - set(METRIC_GENERATORS)
    if unknown:
        raise SpecError(f"{t.where}.metrics: unknown {sorted(unknown)}; known: {', '.join(METRIC_GENERATORS)}")
    return g


def _delay(raw: object, where: str) -> DelaySpec:
    t = _Table(raw, where)
    dist = t.get("dist", str, "fixed")
    if dist not in ("fixed", "uniform", "exponential", "lognormal"):
        raise SpecError(f"{where}.dist: expected fixed, uniform, exponential or lognormal, got {dist!r}")
    d = DelaySpec(
        dist=dist,
        value_ms=t.duration("value", 50),
        low_ms=t.duration("low", 0),
        high_ms=t.duration("high", 0),
        mean_ms=t.duration("mean", 0),
        median_ms=t.duration("median", 0),
        sigma=float(t.get("sigma", (int, float), 0.0)),
    )
    t.done()
    if dist == "uniform" and d.high_ms < d.low_ms:
        raise SpecError(f"{where}: high {d.high_ms} ms is below low {d.low_ms} ms")
    if d.sigma < 0:
        raise SpecError(f"{where}.sigma: must not be negative, got {d.sigma}")
    return d


def _network(raw: object) -> NetworkSpec:
    t = _Table(raw, "network")
    outages: list[Outage] = []
    for i, o in enumerate(t.get("outages", list, [])):
        ot = _Table(o, f"network.outages[{i}]")
        out = Outage(ot.duration("start", 0), ot.duration("end", 0), tuple(ot.get("sites", list, [])))
        ot.done()
        if out.end_ms <= out.start_ms:
            raise SpecError(f"network.outages[{i}]: end must be after start")
        outages.append(out)
    spec = NetworkSpec(
        delay=_delay(t.get("delay", dict, {}), "network.delay"),
        loss=t.rate("loss"),
        ack_loss=t.rate("ack_loss"),
        duplicate=t.rate("duplicate"),
        reorder=t.rate("reorder"),
        reorder_delay_ms=t.duration("reorder_delay", 20_000),
        retry_ms=t.duration("retry", 5_000),
        outages=tuple(outages),
    )
    t.done()
    if spec.retry_ms < 1:
        raise SpecError("network.retry: must be positive")
    return spec


def parse_scenario(doc: Mapping[str, Any]) -> Scenario:
    """A :class:`Scenario` from a parsed TOML document; raises :class:`SpecError` naming the bad key."""
    tables = {"scenario", "fleet", "network", "storms", "anomalies", "sequences", "correlations", "gateway"}
    unknown = sorted(set(doc) - tables)
    if unknown:
        raise SpecError(f"unknown table(s) {', '.join(unknown)}")
    head = _Table(doc.get("scenario", {}), "scenario")
    name = head.get("name", str, "")
    if not name:
        raise SpecError("scenario.name: required")
    start = head.get("start_ms", int, None)
    scenario = Scenario(
        name=name,
        description=head.get("description", str, ""),
        seed=head.get("seed", int, 0),
        duration_ms=head.duration("duration", 3_600_000),
        start_ms=start,
        prefix=head.get("prefix", str, "edgekit"),
    )
    head.done()
    if scenario.duration_ms < 60_000:
        raise SpecError(f"scenario.duration: at least 1m, got {scenario.duration_ms} ms")

    fleet = _Table(doc.get("fleet", {}), "fleet")
    base_raw = {k: v for k, v in fleet.raw.items() if k != "groups"}
    base = _group(_Table({**base_raw, "devices": fleet.raw.get("devices", 10)}, "fleet"), GroupSpec())
    groups_raw = fleet.raw.get("groups")
    groups: list[GroupSpec] = []
    if groups_raw is None:
        groups = [base]
    else:
        if not isinstance(groups_raw, list) or not groups_raw:
            raise SpecError(f"fleet.groups: expected a list of tables, got {groups_raw!r}")
        for i, g in enumerate(groups_raw):
            gt = _Table(g, f"fleet.groups[{i}]")
            groups.append(_group(gt, replace(base, name=f"group{i}")))
            gt.get("name", str, "")
            gt.get("devices", int, 0)
            gt.done()
    fleet.used.update({"groups", "devices", "name", *_GROUP_KEYS})
    fleet.done()

    storms: list[Storm] = []
    for i, raw in enumerate(doc.get("storms", [])):
        st = _Table(raw, f"storms[{i}]")
        storm = Storm(st.duration("start", 0), st.duration("duration", 60_000), st.get("factor", int, 10))
        st.done()
        if storm.factor < 1 or storm.duration_ms < 1:
            raise SpecError(f"storms[{i}]: factor and duration must be positive")
        storms.append(storm)

    devices = sum(g.devices for g in groups)
    ids = {f"dev-{i + 1:04d}" for i in range(devices)}
    anomalies: list[InjectedAnomaly] = []
    for i, raw in enumerate(doc.get("anomalies", [])):
        at = _Table(raw, f"anomalies[{i}]")
        kind = at.get("kind", str, "")
        if kind not in ANOMALY_KINDS:
            raise SpecError(f"anomalies[{i}].kind: expected one of {', '.join(ANOMALY_KINDS)}, got {kind!r}")
        params = {k: float(v) for k, v in at.raw.items() if k not in ("kind", "device", "metric", "start", "end")}
        anomalies.append(
            InjectedAnomaly(
                kind=kind,
                device=at.get("device", str, ""),
                metric=at.get("metric", str, ""),
                start_ms=at.duration("start", 0),
                end_ms=at.duration("end", 0),
                params=params,
            )
        )
        a = anomalies[-1]
        if a.device not in ids:
            raise SpecError(f"anomalies[{i}].device: {a.device!r} is not one of dev-0001..dev-{devices:04d}")
        if a.end_ms <= a.start_ms:
            raise SpecError(f"anomalies[{i}]: end must be after start")
    sequences: list[ScriptedSequence] = []
    for i, raw in enumerate(doc.get("sequences", [])):
        qt = _Table(raw, f"sequences[{i}]")
        kind = qt.get("kind", str, "")
        if kind not in SEQUENCE_KINDS:
            raise SpecError(f"sequences[{i}].kind: expected one of {', '.join(SEQUENCE_KINDS)}, got {kind!r}")
        seq = ScriptedSequence(
            kind, qt.get("device", str, ""), qt.duration("at", 0), qt.get("partner", str, ""), qt.get("group", str, "")
        )
        qt.done()
        for what, name in (("device", seq.device), ("partner", seq.partner)):
            if (name or what == "device") and name not in ids:
                raise SpecError(f"sequences[{i}].{what}: {name!r} is not one of dev-0001..dev-{devices:04d}")
        paired = kind in PAIRED_KINDS
        if paired != bool(seq.partner) or paired != bool(seq.group) or seq.partner == seq.device:
            raise SpecError(
                f"sequences[{i}]: {kind} needs "
                + ("a partner board (not its device) and the group whose alert it is" if paired else
                   "no partner and no group")
            )  # fmt: skip
        sequences.append(seq)
    correlations: list[Correlation] = []
    for i, raw in enumerate(doc.get("correlations", [])):
        ct = _Table(raw, f"correlations[{i}]")
        kind = ct.get("kind", str, "")
        if kind not in CORRELATION_KINDS:
            raise SpecError(f"correlations[{i}].kind: expected one of {', '.join(CORRELATION_KINDS)}, got {kind!r}")
        c = Correlation(kind, ct.get("device", str, ""), ct.get("other", str, ""), ct.duration("at", 0),
                        ct.duration("after", 0))  # fmt: skip
        ct.done()
        for key in ("device", "other"):
            if getattr(c, key) not in ids:
                raise SpecError(
                    f"correlations[{i}].{key}: {getattr(c, key)!r} is not one of dev-0001..dev-{devices:04d}"
                )
        correlations.append(c)
    gateway = doc.get("gateway", {})
    if not isinstance(gateway, Mapping) or set(gateway) - GATEWAY_SECTIONS:
        known = ", ".join(repr(k) for k in sorted(GATEWAY_SECTIONS))
        raise SpecError(f"gateway: expected a table with only {known}, got {gateway!r}")
    check_metric_types(sequences, gateway, correlations)
    return replace(
        scenario,
        groups=tuple(groups),
        network=_network(doc.get("network", {})),
        storms=tuple(storms),
        anomalies=tuple(anomalies),
        sequences=tuple(sequences),
        correlations=tuple(correlations),
        gateway=dict(gateway),
    )


def check_metric_types(
    sequences: Iterable[ScriptedSequence], gateway: Mapping[str, Any], correlations: Iterable[Correlation] = ()
) -> None:
    """The sequences' (and correlations') string metrics must be declared strings in the gateway's
    ``metric_types`` (a gateway takes an undeclared metric for a float and dead-letters a string as
    ``type_mismatch``); raises :class:`SpecError`."""
    declared = gateway.get("metric_types", {})
    strings = declared.get("string", []) if isinstance(declared, Mapping) else []
    used = set(sequence_metric_types(sequences).get("string", []))
    used |= {m for c in correlations for _, _, ms in c.events() for m, v in ms.items() if isinstance(v, str)}
    for metric in sorted(used):
        if not isinstance(strings, list) or metric not in strings:
            raise SpecError(
                f"gateway.metric_types.string: the sequences send {metric!r} as a string, and the gateway takes "
                f'a metric not declared for a float; declare it: [gateway.metric_types] string = ["{metric}", ...]'
            )


def scenario_names() -> list[str]:
    """The scenarios shipped in ``sim/scenarios/``."""
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.toml"))


def load_scenario(name_or_path: str | Path) -> Scenario:
    """A shipped scenario by name (``"steady"``), or a TOML file by path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = SCENARIO_DIR / f"{name_or_path}.toml"
        if not path.exists():
            raise SpecError(f"no scenario {str(name_or_path)!r}; shipped: {', '.join(scenario_names())}")
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as exc:
        raise SpecError(f"cannot read scenario {str(path)!r}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: not valid TOML: {exc}") from exc
    return parse_scenario(doc)
