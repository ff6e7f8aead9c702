"""The synchronous heart of ingest: decode, check the device, remove duplicates, and say what to write.

The device check: a device id is admitted (at most ``devices.max_devices``) and bound to one site, so the id
alone keys all state; a device uses at most ``devices.max_metric_names`` metric names. Dedup then accepts each
reading at most once (``gateway/dedup.py``); what it can no longer judge is a dead letter.

``Pipeline.handle(topic, payload, received_ms)`` never raises on bad input: a message that breaks the
contract becomes a dead-letter point and a log line, and the gateway goes on.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from collections import Counter
from collections.abc import Sequence, Set
from dataclasses import dataclass, field
from typing import Any

from .alerts import Alert, alert_topic
from .anomaly.paths import AnomalyPaths
from .cep import Cep, CepSpec
from .cep import Match as CepMatch
from .config import Config
from .dedup import Dedup, DedupSpec
from .engine import Engine
from .engine.outputs import LateReading, WindowResult
from .engine.outputs import Output as EngineOutput
from .errors import DecodeError
from .joins import Joined, Joins, JoinsSpec
from .model import Batch, DeadLetter, Reading, StatusUpdate
from .points import READING, dead_letter_line, reading_line, status_line
from .protocol import dead_letter_for, decode, excerpt, parse_topic
from .relative import GroupRelative, RelativeResult
from .schema import get as measurement

__all__ = ["Pipeline", "Stats", "reading_field_bound", "window_topic"]

log = logging.getLogger("gateway.pipeline")


@dataclass(slots=True)
class Stats:
    """Counters a person can read: what came in and where it went."""

    messages: int = 0
    readings_in: int = 0
    readings_accepted: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    status_updates: int = 0
    window_results: int = 0
    provisional_results: int = 0
    """Of ``window_results``, the provisional ones (windows with early triggers)."""
    late_readings: int = 0
    alerts: int = 0
    """Alert records published (fast alerts and retraction records included)."""
    fast_alerts: int = 0
    """Alerts of the fast path (``path = arrival``: rules with ``on`` = ``arrival`` or ``both``)."""
    alerts_confirmed: int = 0
    """Event-time alerts that confirmed an earlier fast alert (``on = "both"``)."""
    alerts_retracted: int = 0
    """Fast alerts the event-time path did not confirm once its watermark passed them: the fast path was wrong."""
    alerts_missed_fast: int = 0
    """Event-time alerts with no fast alert to confirm: the fast path missed them."""
    flush_markers: int = 0
    joined: int = 0
    """Joined records (``[[joins]]``) written to the ``join`` measurement."""
    relative_values: int = 0
    """Group-relative values (``[windows.relative]``) written to the ``window_relative`` measurement."""
    moved: int = 0
    """Devices moved to the site ``devices.sites`` declares for them."""
    ignored: int = 0
    """Messages on topics the gateway publishes itself (commands, ``<prefix>/_gateway/...``), and cleared
    retained statuses (an empty payload)."""
    dead_by_reason: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, object]:
        return {
            "messages": self.messages,
            "readings_in": self.readings_in,
            "readings_accepted": self.readings_accepted,
            "duplicates": self.duplicates,
            "dead_letters": self.dead_letters,
            "status_updates": self.status_updates,
            "window_results": self.window_results,
            "provisional_results": self.provisional_results,
            "late_readings": self.late_readings,
            "alerts": self.alerts,
            "fast_alerts": self.fast_alerts,
            "alerts_confirmed": self.alerts_confirmed,
            "alerts_retracted": self.alerts_retracted,
            "alerts_missed_fast": self.alerts_missed_fast,
            "flush_markers": self.flush_markers,
            "joined": self.joined,
            "relative_values": self.relative_values,
            "moved": self.moved,
            "ignored": self.ignored,
            "dead_by_reason": dict(sorted(self.dead_by_reason.items())),
        }


@dataclass(slots=True)
class Handled:
    """What one message (or one tick) produced: accepted readings, lines to write, messages to publish."""

    readings: list[Reading] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    publish: list[tuple[str, bytes]] = field(default_factory=list)
    batch: Batch | None = None
    # deploy: the engine's outputs and the alerts as values, for the live view (gateway/live.py)
    outputs: list[EngineOutput] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    status: StatusUpdate | None = None  # a device's status (the live view shows its firmware version)


class Pipeline:
    """Decode -> device check (admission, site, metric names) -> dedup -> raw points, then the event-time
    engine, CEP and anomaly detection on what is new."""

    def __init__(self, config: Config, dedup: Dedup | None = None) -> None:
        self.config = config
        self.dedup = dedup or DedupSpec().build()
        self.engine = Engine(config.engine)
        self.anomaly = (  # anomaly detection (gateway/anomaly), off without an [anomaly] section
            AnomalyPaths(
                config.anomaly,
                config.engine.watermark,
                max_future_ms=config.engine.max_future_ms,
                min_time_ms=config.engine.min_time_ms,
            )
            if config.anomaly.enabled
            else None
        )
        self.cep = Cep(CepSpec(config.patterns, config.engine, groups=config.groups))
        self.relative = GroupRelative(config.engine, config.groups)
        """Group-relative values of the windows with ``[windows.relative]`` (gateway/relative.py)."""
        self.joins = Joins(JoinsSpec(config.joins, config.engine, config.devices.properties, config.groups))
        self.stats = Stats()
        self.devices: dict[str, str] = {}
        """The devices admitted so far (at most ``devices.max_devices``), each with the site it is bound to:
        only these get state, and the device id alone keys it."""
        self.metric_names: dict[str, set[str]] = {}
        """Per device, the metric names of its accepted readings (at most ``devices.max_metric_names``)."""
        self._unique = 0
        self._own = (f"{config.mqtt.prefix}/_gateway/", "/cmd")
        windows = config.engine.windows
        self._audit = frozenset(w.name for w in windows if w.early and w.provisional == "audit")
        self._publish = frozenset(w.name for w in windows if w.publish)
        self.dirty: set[str] = self.engine.touched
        """The keys (``gateway.ckpt_rows``: devices, sites, pattern keys ``d:<device>`` and ``s:<site>``, ``""``
        for a shared watermark) whose state may have changed since the owner (the gateway's checkpoint) last
        emptied it. A message notes its device's and site's keys before it is taken, a tick its sites'; the
        engine and the anomaly detectors add the keys they change on their own (a shared watermark's advance, a
        series taken by ``max_series``)."""
        if self.anomaly is not None:
            for e in self.anomaly.engines:
                e.touched = self.dirty
        self.cep.touched = self.dirty  # in global mode an advance changes any key
        self.joins.touched = self.dirty
        self._site_ticks = (
            any(w.key_site for w in self.engine.windows) or bool(self.cep.by_kind["site"]) or bool(self.cep.members)
        )

    def is_own_topic(self, topic: str) -> bool:
        """Topics the gateway publishes to (commands to boards, its own outputs) are not ingested."""
        return topic.startswith(self._own[0]) or (topic.endswith(self._own[1]) and topic.count("/") == 3)

    def handle(self, topic: str, payload: bytes, received_ms: int) -> Handled:
        """Never raises: bad input becomes a dead letter, and so does a failure of the gateway's own code.

        A bug must not stop the gateway, nor block the replay of its log after a restart (the message that
        triggered it would be replayed first, every time); what the message had produced before the
        failure is kept, the rest is a dead letter with reason ``internal``.
        """
        out = Handled()
        try:
            self._handle(out, topic, payload, received_ms)
        except Exception as exc:
            log.exception("internal error while handling a message", extra={"event": "internal_error", "topic": topic})
            dead = DeadLetter(
                reason="internal",
                detail=f"{type(exc).__name__}: {exc}"[:500],
                topic=topic,
                received_ms=received_ms,
                size=len(payload),
                excerpt=excerpt(payload),
            )
            self._dead(dead, out)
        return out

    def handle_oversize(self, topic: str, size: int, head: bytes, received_ms: int) -> Handled:
        """A message over ``limits.max_bytes`` of which only the first bytes were kept (``head``, at least
        the dead letter's excerpt): the dead letter :meth:`handle` gives the whole message, with its size."""
        out = Handled()
        if self.is_own_topic(topic):
            self.stats.ignored += 1
            return out
        self.stats.messages += 1
        prefix = self.config.mqtt.prefix
        try:
            parse_topic(topic, prefix)  # decode judges the topic first
            err = DecodeError("oversize", f"{size} bytes > {self.config.limits.max_bytes}")
        except DecodeError as bad_topic:
            err = bad_topic
        dead = dead_letter_for(err, topic, head, received_ms, prefix)
        self._dead(dataclasses.replace(dead, size=size), out)
        return out

    def _handle(self, out: Handled, topic: str, payload: bytes, received_ms: int) -> Handled:
        if self.is_own_topic(topic) or (not payload and topic.endswith("/status")):
            # an empty payload on a status topic is MQTT's way of clearing a retained message, not a status
            self.stats.ignored += 1
            return out
        self.stats.messages += 1
        cfg = self.config
        try:
            msg = decode(topic, payload, received_ms, limits=cfg.limits, prefix=cfg.mqtt.prefix, types=cfg.metric_types)
            if not cfg.devices.allow_unknown and msg.device not in cfg.devices.known:
                raise DecodeError("unknown_device", f"device {msg.device!r} is not in devices.known")
            # a new device is admitted by a message that leaves state: a status, or a batch with a valid
            # reading or a flushed marker (one whose every reading is rejected only brings its dead letters)
            keeps = not isinstance(msg, Batch) or bool(msg.readings) or msg.flushed_ms is not None
            self._touch(msg.device, msg.site)
            if self.devices.get(msg.device) != msg.site:  # not admitted yet, or bound elsewhere
                self._admit(msg.device, msg.site, keeps)
        except DecodeError as err:
            self._dead(dead_letter_for(err, topic, payload, received_ms, cfg.mqtt.prefix), out)
            return out
        if not isinstance(msg, Batch):
            self.stats.status_updates += 1
            self._unique += 1
            out.lines.append(status_line(msg, self._unique))
            out.status = msg
            results = self.engine.process_status(msg)
            self._engine_out(results, out)
            if self.relative:
                self._relative_out(self.relative.process_status(msg, results), out)
            self._cep_out(self.cep.process_status(msg), out)
            self._join_out(self.joins.process_status(msg), out)
            return out
        if msg.flushed_ms is not None:
            self.stats.flush_markers += 1
        self.stats.readings_in += len(msg.readings) + len(msg.rejected)
        for dead in msg.rejected:
            self._dead(dead, out)
        positions: list[int] | None = None
        names = self.metric_names.get(msg.device)
        cap = cfg.devices.max_metric_names
        for n, reading in enumerate(msg.readings):
            fresh = () if names is not None and names.issuperset(reading.metrics) else _fresh(reading, names)
            if fresh and (0 if names is None else len(names)) + len(fresh) > cap:
                reason, detail = "too_many_metrics", self._too_many(msg.device, names, fresh, cap)
            else:
                verdict = self.dedup.check(reading.device, reading.boot, reading.seq, reading.t_ms)
                if verdict == "duplicate":
                    self.stats.duplicates += 1
                    continue
                if verdict == "new":
                    if fresh:
                        if names is None:
                            names = self.metric_names[msg.device] = set()
                        names.update(sys.intern(m) for m in fresh)
                    self.stats.readings_accepted += 1
                    out.readings.append(reading)
                    out.lines.append(reading_line(reading))
                    continue
                # the dedup state can no longer tell: it may have been accepted before
                reason = verdict
                detail = self.dedup.explain(reading.device, reading.boot, reading.seq, reading.t_ms, verdict)
            if positions is None:
                positions = _positions(msg)
            self._dead(_reading_dead_letter(msg, reading, positions[n], reason, detail, len(payload)), out)
        # the engine sees each reading once: duplicates and rejected readings are already accounted for
        if msg.rejected or len(out.readings) != len(msg.readings):
            out.batch = dataclasses.replace(msg, readings=tuple(out.readings), rejected=())
        else:  # every reading taken, in order: the message as it is (replace() was about 1 % of the CPU)
            out.batch = msg
        if out.readings or msg.flushed_ms is not None:
            results = self.engine.process_batch(out.batch, received_ms)
            self._engine_out(results, out)
            if self.relative:
                self._relative_out(self.relative.process_batch(out.batch, results, received_ms), out)
            self._cep_out(self.cep.process_batch(out.batch, received_ms), out)
            self._join_out(self.joins.process_batch(out.batch, received_ms), out)
        if self.anomaly is not None and (out.readings or msg.flushed_ms is not None):
            # anomaly detection: new readings, event-time order per device (on arrival, or after the watermark)
            found = self.anomaly.process(out.readings, received_ms, device=msg.device, flushed_ms=msg.flushed_ms)
            out.lines.extend(found.lines)
            for alert in found.alerts:
                self._alert(alert, out)
        return out

    def _too_many(self, device: str, names: set[str] | None, fresh: Sequence[str], cap: int) -> str:
        have = 0 if names is None else len(names)
        listed = ", ".join(sorted(fresh)[:5]) + (", ..." if len(fresh) > 5 else "")
        return (
            f"{len(fresh)} new metric name(s) ({listed}) would give device {device!r} {have + len(fresh)} names, "
            f"over devices.max_metric_names = {cap}"
        )

    def _admit(self, device: str, site: str, keeps: bool) -> None:
        """Bind a new device to its site (if the message leaves state), or check a known one's site.

        Raises ``too_many_devices`` or ``site_mismatch``. A message under the device's declared site
        (``devices.sites``) while it is bound to another moves it there.
        """
        cfg = self.config.devices
        bound = self.devices.get(device)
        declared = cfg.sites.get(device)
        if bound is None:
            if declared is not None and declared != site:
                raise DecodeError(
                    "site_mismatch",
                    f"device {device!r} is declared under site {declared!r} (devices.sites), "
                    f"this message came under site {site!r}",
                )
            if keeps:
                if len(self.devices) >= cfg.max_devices:
                    raise DecodeError(
                        "too_many_devices",
                        f"device {device!r} is new and the gateway already keeps state for "
                        f"devices.max_devices = {cfg.max_devices} devices",
                    )
                self.devices[device] = site
        elif bound != site:
            if declared != site:
                raise DecodeError(
                    "site_mismatch",
                    f"device {device!r} is bound to site {bound!r} (where it was first admitted), this message "
                    f"came under site {site!r}; to move it there, declare devices.sites.{device} = {site!r}",
                )
            if keeps:
                self._move(device, bound, site)

    def _touch(self, device: str, site: str) -> None:
        """Note the keys a message of ``device`` under ``site`` may change (:attr:`dirty`)."""
        dirty = self.dirty
        dirty.add(device)
        dirty.add(site)
        dirty.add("d:" + device)
        dirty.add("s:" + site)
        if self.cep.members:
            for g in self.cep.index.groups_of(device, site):
                if g in self.cep.members:
                    dirty.add("g:" + g)
        if self.engine.global_mode:
            dirty.add("")

    def reach(self, topic: str) -> Sequence[str] | None:
        """The keys that taking a message on ``topic`` may change (what :meth:`handle` notes in :attr:`dirty`),
        or None when that is not known beforehand: the windows' watermark is shared (an advance visits any key
        due), or the anomaly detectors are at ``max_series`` (a series may be taken from another device)."""
        if self.engine.global_mode:
            return None
        anomaly = self.anomaly
        if (
            anomaly is not None
            and max(len(e.detectors) for e in anomaly.engines) + self.config.devices.max_metric_names
            >= anomaly.spec.max_series
        ):
            return None
        parts = topic.split("/")
        if len(parts) != 4:
            return ()  # not a device's topic: a dead letter, or ignored
        site, device = parts[1], parts[2]
        keys = [device, site, "d:" + device, "s:" + site]
        bound = self.devices.get(device)
        if bound is not None and bound != site:  # a move: the old site's keys change too
            keys += [bound, "s:" + bound]
        if self.cep.members:
            keys += ["g:" + g for g in self.cep.index.groups_of(device, site) if g in self.cep.members]
        if self.joins.joins:
            # the join keys it feeds now, and those it fed before (a status can release any of them)
            keys += self.joins.key_names(device, site)
            keys += [k.name for k in self.joins.member_of.get(device, ())]
        return keys

    def tick_reach(self, now_ms: int | None = None) -> Sequence[str]:
        """The keys a :meth:`tick` (at ``now_ms``) may change: every site's, when there are windows or patterns keyed
        by site, those of the windows with early triggers that have pending or provisional results, and the join
        keys whose watermark the tick moves (every join key when ``now_ms`` is not given)."""
        keys = self.engine.early_keys()
        if self.joins.joins:
            keys = [*keys, *(self.joins.keys if now_ms is None else self.joins.due(now_ms))]
        if not self._site_ticks:
            return keys
        sites = set(self.engine.tracker.sites) | set(self.cep.tracker.sites)
        return [*keys, *sites, *("s:" + s for s in sites), *("g:" + g for g in self.cep.group_names)]

    def _move(self, device: str, old: str, new: str) -> None:
        """The device's first message under its declared site: its state follows it there."""
        self._touch(device, old)
        self.devices[device] = new
        self.engine.move_device(device, new)
        if self.relative:
            self.relative.move_device(device, new)
        self.cep.move_device(device, new)
        self.joins.move_device(device, new)
        self.stats.moved += 1
        log.info(
            "device %s moved from site %s to %s",
            device,
            old,
            new,
            extra={"event": "device_moved", "device": device, "from_site": old, "to_site": new},
        )

    def tick(self, now_ms: int) -> Handled:
        """Time-driven progress (devices turning idle release site windows, early results of windows with
        ``early_every``). Never raises, like :meth:`handle`."""
        out = Handled()
        self.dirty.update(self.tick_reach(now_ms))
        try:
            results = self.engine.advance(now_ms)
            self._engine_out(results, out)
            if self.relative:
                self._relative_out(self.relative.advance(now_ms, results), out)
            self._engine_out(self.engine.on_processing_time(now_ms), out)
            self._cep_out(self.cep.advance(now_ms), out)
            self._join_out(self.joins.advance(now_ms), out)
        except Exception:
            log.exception("internal error in a tick", extra={"event": "internal_error"})
        return out

    def snapshot(self, keys: Set[str] | None = None, order: bool = False, rows: int = 0) -> dict[str, Any]:
        """All state that decides future output: devices, dedup, windows, patterns, detectors, counters, stats.

        In fresh containers (nothing in it changes when the pipeline takes more input). With ``keys``, the
        per-key maps hold only those keys' entries; with ``order``, every key with the value None
        (``Engine.snapshot``; ``gateway.ckpt_rows`` files them). ``rows``: a checkpoint's, with a sliding window's
        panes in chunks (``Engine.snapshot``)."""
        if order:
            devices: dict[str, Any] = dict.fromkeys(sorted(self.devices))
            names: dict[str, Any] = dict.fromkeys(sorted(self.metric_names))
        elif keys is None:
            devices = dict(sorted(self.devices.items()))
            names = {d: sorted(ms) for d, ms in sorted(self.metric_names.items())}
        else:
            devices = {d: self.devices[d] for d in keys if d in self.devices}
            names = {d: sorted(self.metric_names[d]) for d in keys if d in self.metric_names}
        return {
            "devices": devices,
            "dedup": self.dedup.snapshot(keys, order),
            "metric_names": names,
            "engine": self.engine.snapshot(keys, order, rows),
            "cep": self.cep.snapshot(keys, order),
            "anomaly": self.anomaly.snapshot(keys, order) if self.anomaly is not None else None,
            **({"relative": self.relative.snapshot()} if self.relative else {}),
            "joins": self.joins.snapshot(keys, order),
            "unique": self._unique,
            "stats": self.stats.as_dict(),
        }

    def mark_changed(self, keys: Set[str] | None) -> None:
        """``Engine.mark_changed``: a checkpoint that took these keys failed."""
        self.engine.mark_changed(keys)

    def mark_stored(self, keys: Set[str]) -> None:
        """``Engine.mark_stored``: the state was just restored from a checkpoint whose rows hold these keys' panes in
        chunks."""
        self.engine.mark_stored(keys)

    def restore(self, snap: dict[str, Any]) -> None:
        """Take back a :meth:`snapshot` (of a pipeline with the same configuration)."""
        self.engine.restore(snap["engine"])
        # an old dedup snapshot has no event times: a device's latest one (the watermark tracker's) stands in
        self.dedup.restore(snap["dedup"], {d: e[1] for d, e in self.engine.tracker.state.items()})
        self.cep.restore(snap["cep"])
        if self.relative and "relative" in snap:
            self.relative.restore(snap["relative"])
        if "joins" in snap:  # a checkpoint from before joins has none: they start empty
            self.joins.restore(snap["joins"])
        if self.anomaly is not None:
            self.anomaly.restore(snap["anomaly"])
        devices = snap.get("devices")
        if isinstance(devices, dict):
            self.devices = {str(d): str(site) for d, site in devices.items()}
        else:
            # an older checkpoint: the devices listed (before devices.max_devices: those that have state) are
            # admitted and bound to the site the watermark tracker has for them (where they were first seen)
            names = set(self.dedup.state) | set(self.engine.tracker.state) if devices is None else set(devices)
            tracker = self.engine.tracker.state
            self.devices = {str(d): str(tracker[d][0]) for d in sorted(names) if d in tracker}
        # an older checkpoint has no metric names: each device's are counted again from its next readings
        self.metric_names = {str(d): {sys.intern(str(m)) for m in ms} for d, ms in snap.get("metric_names", {}).items()}
        self._unique = int(snap["unique"])
        stats = dict(snap["stats"])
        by_reason = Counter({str(k): int(v) for k, v in stats.pop("dead_by_reason").items()})
        self.stats = Stats(**{k: int(v) for k, v in stats.items()}, dead_by_reason=by_reason)

    def _alert(self, alert: Alert, out: Handled) -> None:
        self.stats.alerts += 1
        if alert.path:
            verdict = alert.verdict
            if verdict == "retracted":
                self.stats.alerts_retracted += 1
            elif alert.path == "arrival":
                self.stats.fast_alerts += 1
            elif verdict == "confirmed":
                self.stats.alerts_confirmed += 1
            elif verdict == "missed_fast":
                self.stats.alerts_missed_fast += 1
        out.alerts.append(alert)
        out.lines.append(alert.to_line())
        out.publish.append((alert_topic(self.config.mqtt.prefix, alert.site, alert.source), alert.to_json()))

    def _relative_out(self, results: list[RelativeResult], out: Handled) -> None:
        for r in results:
            out.lines.append(r.to_line())
        self.stats.relative_values += len(results)
        for alert in self.relative.alerts(results):
            self._alert(alert, out)

    def _cep_out(self, matches: list[CepMatch], out: Handled) -> None:
        for m in matches:
            self._alert(m.to_alert(), out)

    def _join_out(self, joined: list[Joined], out: Handled) -> None:
        for r in joined:
            self.stats.joined += 1
            out.lines.append(r.to_line())
            if r.join.alert:
                self._alert(r.to_alert(), out)

    def _engine_out(self, outputs: list[EngineOutput], out: Handled) -> None:
        for o in outputs:
            out.outputs.append(o)
            out.lines.append(o.to_line())
            if isinstance(o, WindowResult):
                self.stats.window_results += 1
                if o.revision == 0:
                    self.stats.provisional_results += 1
                    if o.window in self._audit:
                        out.lines.append(o.to_audit_line())
                if o.window in self._publish:
                    topic = window_topic(self.config.mqtt.prefix, o.site, o.window)
                    out.publish.append((topic, o.to_payload()))
            elif isinstance(o, LateReading):
                self.stats.late_readings += 1

    def _dead(self, dead: DeadLetter, out: Handled) -> None:
        self.stats.dead_letters += 1
        self.stats.dead_by_reason[dead.reason] += 1
        self._unique += 1
        out.lines.append(dead_letter_line(dead, self._unique))
        log.warning(
            "dead letter %s: %s",
            dead.reason,
            dead.detail,
            extra={
                "event": "dead_letter",
                "reason": dead.reason,
                "detail": dead.detail,
                "topic": dead.topic,
                "device": dead.device,
                "index": dead.index,
                "size": dead.size,
            },
        )


def window_topic(prefix: str, site: str, window: str) -> str:
    """Where a window with ``publish = true`` publishes its results (JSON, ``WindowResult.to_payload``)."""
    return f"{prefix}/_gateway/windows/{site}/{window}"


def reading_field_bound(config: Config) -> int:
    """The most field keys the gateway can give the ``reading`` measurement: its own (``boot``, ``seq``, ``q``)
    and each admitted device's metric names."""
    return len(measurement(READING).fields) + config.devices.max_devices * config.devices.max_metric_names


def _fresh(r: Reading, names: set[str] | None) -> list[str]:
    """The reading's metric names its device has not used yet."""
    return list(r.metrics) if names is None else [m for m in r.metrics if m not in names]


def _positions(batch: Batch) -> list[int]:
    """Each valid reading's index in the message (the rejected ones keep theirs in their dead letters)."""
    rejected = {d.index for d in batch.rejected}
    return [i for i in range(len(batch.readings) + len(batch.rejected)) if i not in rejected]


def _reading_dead_letter(batch: Batch, r: Reading, index: int, reason: str, detail: str, size: int) -> DeadLetter:
    """The dead letter of one valid reading the pipeline turns away (its excerpt: the reading as sent)."""
    doc = {"b": r.boot, "s": r.seq, "t": r.t_ms, "q": r.quality, "m": dict(r.metrics)}
    return DeadLetter(
        reason=reason,
        detail=detail,
        topic=batch.topic,
        received_ms=batch.received_ms,
        size=size,
        excerpt=json.dumps(doc, separators=(",", ":"))[:200],
        site=batch.site,
        device=batch.device,
        index=index,
    )
