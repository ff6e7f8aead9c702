"""The synchronous heart of ingest: decode, check the device, remove duplicates, and say what to write.

``Pipeline.handle(topic, payload, received_ms)`` never raises on bad input: a message that breaks the
contract becomes a dead-letter point and a log line, and the gateway goes on.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .alerts import Alert, alert_topic
from .anomaly import AnomalyEngine
from .cep import Cep, CepSpec
from .cep import Match as CepMatch
from .config import Config
from .dedup import Dedup, DedupSpec
from .engine import Engine
from .engine.outputs import LateReading, WindowResult
from .engine.outputs import Output as EngineOutput
from .errors import DecodeError
from .model import Batch, DeadLetter, Reading
from .points import dead_letter_line, reading_line, status_line
from .protocol import dead_letter_for, decode, excerpt, parse_topic

__all__ = ["Pipeline", "Stats"]

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
    late_readings: int = 0
    alerts: int = 0
    flush_markers: int = 0
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
            "late_readings": self.late_readings,
            "alerts": self.alerts,
            "flush_markers": self.flush_markers,
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


class Pipeline:
    """Decode -> device check -> dedup -> raw points, then the event-time engine on what is new."""

    def __init__(self, config: Config, dedup: Dedup | None = None) -> None:
        self.config = config
        self.dedup = dedup or DedupSpec().build()
        self.engine = Engine(config.engine)
        self.anomaly = (  # anomaly detection (gateway/anomaly), off without an [anomaly] section
            AnomalyEngine(
                config.anomaly, max_future_ms=config.engine.max_future_ms, min_time_ms=config.engine.min_time_ms
            )
            if config.anomaly.enabled
            else None
        )
        self.cep = Cep(CepSpec(config.patterns, config.engine))
        self.stats = Stats()
        self.devices: set[str] = set()
        """The devices admitted so far (at most ``devices.max_devices``): only these get state."""
        self._unique = 0
        self._own = (f"{config.mqtt.prefix}/_gateway/", "/cmd")

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
            msg = decode(topic, payload, received_ms, limits=cfg.limits, prefix=cfg.mqtt.prefix)
            if not cfg.devices.allow_unknown and msg.device not in cfg.devices.known:
                raise DecodeError("unknown_device", f"device {msg.device!r} is not in devices.known")
            # a new device is admitted by a message that leaves state: a status, or a batch with a valid
            # reading or a flushed marker (one whose every reading is rejected only brings its dead letters)
            keeps = not isinstance(msg, Batch) or bool(msg.readings) or msg.flushed_ms is not None
            if keeps and msg.device not in self.devices:
                if len(self.devices) >= cfg.devices.max_devices:
                    raise DecodeError(
                        "too_many_devices",
                        f"device {msg.device!r} is new and the gateway already keeps state for "
                        f"devices.max_devices = {cfg.devices.max_devices} devices",
                    )
                self.devices.add(msg.device)
        except DecodeError as err:
            self._dead(dead_letter_for(err, topic, payload, received_ms, cfg.mqtt.prefix), out)
            return out
        if not isinstance(msg, Batch):
            self.stats.status_updates += 1
            out.lines.append(status_line(msg))
            self._engine_out(self.engine.process_status(msg), out)
            self._cep_out(self.cep.process_status(msg), out)
            return out
        if msg.flushed_ms is not None:
            self.stats.flush_markers += 1
        self.stats.readings_in += len(msg.readings) + len(msg.rejected)
        for dead in msg.rejected:
            self._dead(dead, out)
        for reading in msg.readings:
            if not self.dedup.check_and_add(reading.device, reading.boot, reading.seq):
                self.stats.duplicates += 1
                continue
            self.stats.readings_accepted += 1
            out.readings.append(reading)
            out.lines.append(reading_line(reading))
        # the engine sees each reading once: duplicates and rejected readings are already accounted for
        out.batch = dataclasses.replace(msg, readings=tuple(out.readings), rejected=())
        if out.readings or msg.flushed_ms is not None:
            self._engine_out(self.engine.process_batch(out.batch, received_ms), out)
            self._cep_out(self.cep.process_batch(out.batch, received_ms), out)
        if self.anomaly is not None and out.readings:  # anomaly detection: new readings, event-time order per device
            found = self.anomaly.process(out.readings, received_ms)
            out.lines.extend(found.lines)
            for alert in found.alerts:
                self._alert(alert, out)
        return out

    def tick(self, now_ms: int) -> Handled:
        """Time-driven progress (devices turning idle release site windows). Never raises, like :meth:`handle`."""
        out = Handled()
        try:
            self._engine_out(self.engine.advance(now_ms), out)
            self._cep_out(self.cep.advance(now_ms), out)
        except Exception:
            log.exception("internal error in a tick", extra={"event": "internal_error"})
        return out

    def snapshot(self) -> dict[str, Any]:
        """All state that decides future output: devices, dedup, windows, patterns, detectors, counters, stats."""
        return {
            "devices": sorted(self.devices),
            "dedup": self.dedup.snapshot(),
            "engine": self.engine.snapshot(),
            "cep": self.cep.snapshot(),
            "anomaly": self.anomaly.snapshot() if self.anomaly is not None else None,
            "unique": self._unique,
            "stats": self.stats.as_dict(),
        }

    def restore(self, snap: dict[str, Any]) -> None:
        """Take back a :meth:`snapshot` (of a pipeline with the same configuration)."""
        self.dedup.restore(snap["dedup"])
        self.engine.restore(snap["engine"])
        self.cep.restore(snap["cep"])
        if self.anomaly is not None:
            self.anomaly.restore(snap["anomaly"])
        if "devices" in snap:
            self.devices = {str(d) for d in snap["devices"]}
        else:  # a checkpoint from before devices.max_devices: the devices that have state are admitted
            self.devices = set(self.dedup.state) | set(self.engine.tracker.state)
        self._unique = int(snap["unique"])
        stats = dict(snap["stats"])
        by_reason = Counter({str(k): int(v) for k, v in stats.pop("dead_by_reason").items()})
        self.stats = Stats(**{k: int(v) for k, v in stats.items()}, dead_by_reason=by_reason)

    def _alert(self, alert: Alert, out: Handled) -> None:
        self.stats.alerts += 1
        out.alerts.append(alert)
        out.lines.append(alert.to_line())
        out.publish.append((alert_topic(self.config.mqtt.prefix, alert.site, alert.source), alert.to_json()))

    def _cep_out(self, matches: list[CepMatch], out: Handled) -> None:
        for m in matches:
            self._alert(m.to_alert(), out)

    def _engine_out(self, outputs: list[EngineOutput], out: Handled) -> None:
        for o in outputs:
            if isinstance(o, WindowResult):
                self.stats.window_results += 1
            elif isinstance(o, LateReading):
                self.stats.late_readings += 1
            out.outputs.append(o)
            out.lines.append(o.to_line())

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
