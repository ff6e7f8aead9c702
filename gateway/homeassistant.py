"""Home Assistant MQTT discovery (``[homeassistant]``, docs/homeassistant.md): the boards appear by themselves.

Boards send batches of readings, not one value a topic, so the gateway publishes for each device one retained
JSON state on ``<prefix>/_gateway/state/<site>/<device>``: the latest accepted value of every metric (by event
time, after validation and de-duplication), the latest reading's clock quality and the figures of its status.
Each entity's ``value_template`` picks its value out of that state. Availability comes straight from the board's
retained status topic and last will (``online``/``sleeping`` is available, ``offline`` is not). An alert rule is a
``binary_sensor`` per key on the gateway's alert topic ``<prefix>/_gateway/alerts/<site>/<source>``: its template
renders ``ON`` for an alert of its rule and key (``OFF`` for a retraction) and nothing for the others, which Home
Assistant ignores; ``off_delay`` turns it off again.

A discovery message (retained, ``<discovery_prefix>/<component>/<node_id>/<object_id>/config``) is published when
the gateway first sees a device's metric, status figure or alert rule. :meth:`Discovery.snapshot` goes into the
gateway's checkpoint, so a restart goes on with the states and the rules announced.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Final

from . import __version__
from .alerts import Alert, alert_topic
from .config import Config
from .model import MetricValue, Reading, StatusUpdate

__all__ = [
    "CLOCK_STATES",
    "STATUS_ENTITIES",
    "Discovery",
    "Entity",
    "availability_template",
    "metric_class",
    "object_id",
    "state_topic",
]

CLOCK_STATES: Final = {"s": "synced", "c": "corrected", "u": "unsynced"}
"""A reading's clock quality ``q`` (docs/protocol.md) as the ``clock`` enum sensor shows it."""

STATUS_ENTITIES: Final[dict[str, dict[str, Any]]] = {
    "battery_mv": {"name": "Battery", "device_class": "voltage", "unit_of_measurement": "mV",
                   "state_class": "measurement", "entity_category": "diagnostic"},
    "buf": {"name": "Buffered readings", "state_class": "measurement", "entity_category": "diagnostic"},
    "buf_fill": {"name": "Buffer fill", "unit_of_measurement": "%", "state_class": "measurement",
                 "entity_category": "diagnostic", "suggested_display_precision": 0},
    "dropped": {"name": "Dropped readings", "state_class": "measurement", "entity_category": "diagnostic"},
}  # fmt: skip
"""Status figures shown as sensors (from the board's status, docs/protocol.md); ``buf_fill`` is ``buf / buf_cap``
in percent."""

_OBJECT_ID: Final = re.compile(r"[A-Za-z0-9_-]+")


def object_id(text: str) -> str:
    """``text`` as a Home Assistant ``object_id``/``node_id`` (``[a-zA-Z0-9_-]+``): other characters become ``_``,
    and then a short hash of the original keeps two names that differ only there apart."""
    if _OBJECT_ID.fullmatch(text):
        return text
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", text)
    return f"{safe}_{hashlib.blake2b(text.encode(), digest_size=3).hexdigest()}"


def state_topic(prefix: str, site: str, device: str) -> str:
    return f"{prefix}/_gateway/state/{site}/{device}"


def availability_template() -> str:
    """From a board's status payload: ``online`` while it is online or sleeping (a sleeping board's last values
    stand), ``offline`` for its last will, an ``offline`` status, or a payload that is not a status."""
    return (
        "{{ 'online' if value_json is defined and value_json.state is defined"
        " and value_json.state in ('online', 'sleeping') else 'offline' }}"
    )


def metric_class(name: str) -> dict[str, str]:
    """The ``device_class`` and unit a numeric metric's name implies (by suffix), or none."""
    if name.endswith("_c") and "temp" in name:
        return {"device_class": "temperature", "unit_of_measurement": "°C"}
    if name in ("rh", "humidity") or name.endswith(("_rh", "_humidity")):
        return {"device_class": "humidity", "unit_of_measurement": "%"}
    if name.endswith("_mv"):
        return {"device_class": "voltage", "unit_of_measurement": "mV"}
    if name.endswith("_hpa"):
        return {"device_class": "pressure", "unit_of_measurement": "hPa"}
    if name.endswith("_lux"):
        return {"device_class": "illuminance", "unit_of_measurement": "lx"}
    if name.endswith("_pct"):
        return {"unit_of_measurement": "%"}
    return {}


@dataclass(frozen=True, slots=True)
class Entity:
    """One discovery message: its topic and its payload (a JSON object)."""

    component: str
    node_id: str
    object_id: str
    config: Mapping[str, Any]

    def topic(self, discovery_prefix: str) -> str:
        return f"{discovery_prefix}/{self.component}/{self.node_id}/{self.object_id}/config"


@dataclass(slots=True)
class _Device:
    site: str
    state: dict[str, Any]
    """What its state topic carries: ``m`` (metric -> latest value), ``t``, ``clock`` and the status figures."""
    metric_t: dict[str, int]
    """The event time of each metric's value in ``state``."""


class Discovery:
    """What to publish (retained) for Home Assistant after one input: :meth:`observe` returns the discovery
    messages of entities seen for the first time, then the device states that changed."""

    def __init__(self, config: Config) -> None:
        self.prefix = config.mqtt.prefix
        self.ha = config.homeassistant
        self.types = config.metric_types
        self.patterns = config.patterns
        self.anomaly = config.anomaly
        self._node = object_id(f"edgekit_{self.prefix}")
        self.devices: dict[str, _Device] = {}
        self._rules: set[tuple[str, str, str, str]] = set()
        """(site, source, name, key) of the alert rules announced."""
        self.announced = 0

    # ------------------------------------------------------------------------------------------- payloads

    def _device_block(self, device: str, site: str) -> dict[str, Any]:
        return {
            "identifiers": [f"edgekit:{self.prefix}:device:{device}"],
            "name": device,
            "manufacturer": "edgekit",
            "model": f"edgekit board ({site})",
        }

    def _site_block(self, site: str) -> dict[str, Any]:
        return {"identifiers": [f"edgekit:{self.prefix}:site:{site}"], "name": f"edgekit {site}",
                "manufacturer": "edgekit", "model": "edgekit site"}  # fmt: skip

    def _common(self, uid: str, device: dict[str, Any]) -> dict[str, Any]:
        return {"unique_id": uid, "device": device, "origin": {"name": "edgekit", "sw_version": __version__}}

    def _availability(self, site: str, device: str) -> dict[str, Any]:
        return {
            "availability": [{
                "topic": f"{self.prefix}/{site}/{device}/status",
                "payload_available": "online",
                "payload_not_available": "offline",
                "value_template": availability_template(),
            }],
        }  # fmt: skip

    def _entity(self, component: str, device: str, site: str, oid: str, body: dict[str, Any]) -> Entity:
        node = object_id(f"{self._node}_{device}")
        uid = f"{node}_{oid}"
        config = {**body, **self._common(uid, self._device_block(device, site)), **self._availability(site, device)}
        config["state_topic"] = state_topic(self.prefix, site, device)
        return Entity(component, node, oid, config)

    def metric_entity(self, device: str, site: str, metric: str) -> Entity:
        kind = self.types.of(metric)
        oid = f"m_{metric}"
        if kind == "boolean":
            tpl = f"{{{{ 'ON' if value_json['m']['{metric}'] else 'OFF' }}}}"
            body: dict[str, Any] = {"name": metric, "payload_on": "ON", "payload_off": "OFF", "value_template": tpl}
            return self._entity("binary_sensor", device, site, oid, body)
        body = {"name": metric, "value_template": f"{{{{ value_json['m']['{metric}'] }}}}"}
        if kind != "string":
            body.update(metric_class(metric))
            body["state_class"] = "measurement"
        return self._entity("sensor", device, site, oid, body)

    def status_entity(self, device: str, site: str, key: str) -> Entity:
        body = {**STATUS_ENTITIES[key], "value_template": f"{{{{ value_json['{key}'] }}}}"}
        return self._entity("sensor", device, site, key, body)

    def clock_entity(self, device: str, site: str) -> Entity:
        body = {"name": "Clock", "device_class": "enum", "options": list(CLOCK_STATES.values()),
                "entity_category": "diagnostic", "value_template": "{{ value_json['clock'] }}"}  # fmt: skip
        return self._entity("sensor", device, site, "clock", body)

    def rule_entity(self, site: str, source: str, name: str, key: str, device: bool) -> Entity:
        """A binary sensor on the alert topic: ``ON`` for an alert of this rule and key, ``OFF`` for its
        retraction, nothing (ignored by Home Assistant) for any other alert on the topic."""
        oid = object_id(f"alert_{source}_{name}")
        template = (
            f"{{% if value_json.name == {json.dumps(name)} and value_json.key == {json.dumps(key)} %}}"
            "{{ 'OFF' if value_json.verdict is defined and value_json.verdict == 'retracted' else 'ON' }}"
            "{% endif %}"
        )
        body: dict[str, Any] = {
            "name": f"Alert {name}",
            "device_class": "problem",
            "state_topic": alert_topic(self.prefix, site, source),
            "value_template": template,
            "payload_on": "ON",
            "payload_off": "OFF",
            "off_delay": self.ha.alert_off_delay_s,
        }
        if device:
            node = object_id(f"{self._node}_{key}")
            return Entity("binary_sensor", node, oid, {
                **body, **self._common(f"{node}_{oid}", self._device_block(key, site)), **self._availability(site, key),
            })  # fmt: skip
        node = object_id(f"{self._node}_site_{site}_{key}")
        return Entity("binary_sensor", node, oid, {**body, **self._common(f"{node}_{oid}", self._site_block(site))})

    # ------------------------------------------------------------------------------------------- state

    def snapshot(self) -> dict[str, Any]:
        """Plain JSON values (copies): each device's state and the rules announced, for the checkpoint. Restored,
        the states go on from where they were, so a restart never publishes a state without a metric announced."""
        return {
            "devices": {d: [v.site, {**v.state, "m": dict(v.state["m"])}, dict(v.metric_t)]
                        for d, v in self.devices.items()},
            "rules": sorted(list(r) for r in self._rules),
        }  # fmt: skip

    def restore(self, snap: Mapping[str, Any]) -> None:
        self.devices = {d: _Device(site, state, metric_t) for d, (site, state, metric_t) in snap["devices"].items()}
        self._rules = {(a, b, c, d) for a, b, c, d in snap["rules"]}

    # ------------------------------------------------------------------------------------------- input

    def observe(
        self, readings: Iterable[Reading], status: StatusUpdate | None, alerts: Iterable[Alert]
    ) -> list[tuple[str, bytes]]:
        """The retained messages one input gives: new entities' discovery messages, then the states changed."""
        new: list[Entity] = []
        changed: dict[str, _Device] = {}
        for r in readings:
            dev = self._device(r.device, r.site, new)
            t = r.t_ms
            for metric, value in r.metrics.items():
                if metric not in dev.state["m"]:
                    new.append(self.metric_entity(r.device, r.site, metric))
                    self._device_rules(r.device, r.site, metric, new)
                if t >= dev.metric_t.get(metric, t):
                    dev.state["m"][metric] = value
                    dev.metric_t[metric] = t
            if t >= dev.state.get("t", t):
                dev.state["t"] = t
                if "clock" not in dev.state:
                    new.append(self.clock_entity(r.device, r.site))
                dev.state["clock"] = CLOCK_STATES[r.quality]
            changed[r.device] = dev
        if status is not None:
            dev = self._device(status.device, status.site, new)
            figures: dict[str, MetricValue] = dict(status.fields)
            buf, cap = figures.get("buf"), figures.get("buf_cap")
            if isinstance(buf, int) and isinstance(cap, int) and cap > 0:
                figures["buf_fill"] = round(100.0 * buf / cap, 1)
            for key in STATUS_ENTITIES:
                got = figures.get(key)
                if isinstance(got, (int, float)) and not isinstance(got, bool):
                    if key not in dev.state:
                        new.append(self.status_entity(status.device, status.site, key))
                    dev.state[key] = got
                    changed[status.device] = dev
        for a in alerts:
            self._rule(a.site, a.source, a.name, a.key, a.key in self.devices, new)
        out = [(e.topic(self.ha.discovery_prefix), _dumps(e.config)) for e in new]
        self.announced += len(new)
        for name, dev in changed.items():
            out.append((state_topic(self.prefix, dev.site, name), _dumps(dev.state)))
        return out

    def _device(self, device: str, site: str, new: list[Entity]) -> _Device:
        dev = self.devices.get(device)
        if dev is None:
            dev = self.devices[device] = _Device(site, {"m": {}}, {})
            for p in self.patterns:  # its patterns' binary sensors from the start: off until an alert
                if p.devices and not any(fnmatchcase(device, g) for g in p.devices):
                    continue
                if p.key == "device":
                    self._rule(site, "pattern", p.name, device, True, new)
                else:
                    self._rule(site, "pattern", p.name, site, False, new)
        elif dev.site != site:  # moved (docs/reliability.md): its entities follow it to the new topics
            dev.site = site
            dev.state = {"m": {}}
            dev.metric_t = {}
        return dev

    def _device_rules(self, device: str, site: str, metric: str, new: list[Entity]) -> None:
        spec = self.anomaly
        if not spec.enabled or self.types.of(metric) in ("string", "boolean"):
            return
        if spec.metrics and metric not in spec.metrics:
            return
        self._rule(site, "anomaly", f"zscore.{metric}", device, True, new)
        if spec.detector.stuck_points:
            self._rule(site, "anomaly", f"stuck.{metric}", device, True, new)

    def _rule(self, site: str, source: str, name: str, key: str, device: bool, new: list[Entity]) -> None:
        ident = (site, source, name, key)
        if ident not in self._rules:
            self._rules.add(ident)
            new.append(self.rule_entity(site, source, name, key, device))


def _dumps(doc: Mapping[str, Any] | dict[str, MetricValue]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
