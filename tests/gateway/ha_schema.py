"""Home Assistant's MQTT discovery schema, as its documentation states it, for the tests to check payloads with.

Sources (home-assistant.io): "MQTT" (Discovery: the topic format, ``device``, ``origin``, ``availability``),
"MQTT Sensor", "MQTT Binary Sensor", "Sensor" (device classes and their units, state classes) and "Binary Sensor"
(device classes); the discovery topic's pattern is the one of ``homeassistant/components/mqtt/discovery.py``.
Only the options these entities use are modelled in full; any other key is refused, so a typo fails.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

TOPIC = re.compile(r"(?P<component>\w+)/(?:(?P<node_id>[a-zA-Z0-9_-]+)/)?(?P<object_id>[a-zA-Z0-9_-]+)/config")
"""``<component>/[<node_id>/]<object_id>/config``, after ``<discovery_prefix>/`` (Home Assistant strips it first)."""

COMMON = {
    "availability", "availability_mode", "availability_template", "availability_topic", "device", "enabled_by_default",
    "encoding", "entity_category", "entity_picture", "expire_after", "force_update", "icon",
    "json_attributes_template", "json_attributes_topic", "name", "object_id", "default_entity_id", "origin",
    "payload_available", "payload_not_available", "platform", "qos", "state_topic", "unique_id", "value_template",
}  # fmt: skip
OPTIONS = {
    "sensor": COMMON | {"device_class", "last_reset_value_template", "options", "state_class",
                        "suggested_display_precision", "unit_of_measurement"},
    "binary_sensor": COMMON | {"device_class", "off_delay", "payload_off", "payload_on"},
}  # fmt: skip
REQUIRED = {"sensor": {"state_topic"}, "binary_sensor": {"state_topic"}}

SENSOR_UNITS: dict[str, set[str] | None] = {
    # the device classes these payloads use, each with the units the Sensor page allows (None: no unit)
    "temperature": {"°C", "°F", "K"},
    "humidity": {"%"},
    "voltage": {"V", "mV", "µV", "kV", "MV"},
    "pressure": {"Pa", "kPa", "hPa", "bar", "cbar", "mbar", "mmHg", "inHg", "psi"},
    "illuminance": {"lx"},
    "enum": None,
}
STATE_CLASSES = {"measurement", "measurement_angle", "total", "total_increasing"}
BINARY_DEVICE_CLASSES = {
    "battery", "battery_charging", "carbon_monoxide", "cold", "connectivity", "door", "garage_door", "gas", "heat",
    "light", "lock", "moisture", "motion", "moving", "occupancy", "opening", "plug", "power", "presence", "problem",
    "running", "safety", "smoke", "sound", "tamper", "update", "vibration", "window",
}  # fmt: skip
ENTITY_CATEGORIES = {"sensor": {"diagnostic"}, "binary_sensor": {"diagnostic"}}
DEVICE_KEYS = {
    "configuration_url", "connections", "hw_version", "identifiers", "manufacturer", "model", "model_id", "name",
    "serial_number", "suggested_area", "sw_version", "via_device",
}  # fmt: skip
ORIGIN_KEYS = {"name", "sw_version", "support_url"}
AVAILABILITY_KEYS = {"topic", "payload_available", "payload_not_available", "value_template"}
WILDCARD = re.compile(r"[+#]")


def problems(topic: str, payload: Mapping[str, Any], discovery_prefix: str) -> list[str]:
    """What in one discovery message does not follow the documented schema (empty: nothing)."""
    out: list[str] = []
    m = TOPIC.fullmatch(topic[len(discovery_prefix) + 1 :]) if topic.startswith(f"{discovery_prefix}/") else None
    if m is None:
        return [f"{topic}: not <{discovery_prefix}>/<component>/[<node_id>/]<object_id>/config"]
    component = m["component"]
    if component not in OPTIONS:
        return [f"{topic}: component {component!r} is not one this checker knows"]
    keys = set(payload)
    out += [f"unknown option {k}" for k in sorted(keys - OPTIONS[component])]
    out += [f"missing required {k}" for k in sorted(REQUIRED[component] - keys)]
    for key in ("state_topic",):
        value = payload.get(key)
        if not isinstance(value, str) or not value or WILDCARD.search(value):
            out.append(f"{key}: {value!r} is not a topic to publish on")
    for key in ("name", "unique_id", "value_template"):
        if key in payload and not isinstance(payload[key], str):
            out.append(f"{key}: {payload[key]!r} is not a string")
    if "device" in payload:
        dev = payload["device"]
        if "unique_id" not in payload:
            out.append("device needs unique_id (the docs: it only works when unique_id is set)")
        if not isinstance(dev, dict):
            out.append("device is not an object")
        else:
            out += [f"device: unknown key {k}" for k in sorted(set(dev) - DEVICE_KEYS)]
            ids = dev.get("identifiers")
            ok = isinstance(ids, str) or (isinstance(ids, list) and ids and all(isinstance(i, str) for i in ids))
            if not ok and "connections" not in dev:
                out.append(f"device: identifiers {ids!r} is neither a string nor a list of strings")
    if "origin" in payload:
        origin = payload["origin"]
        if not isinstance(origin, dict) or not isinstance(origin.get("name"), str):
            out.append("origin needs a name")
        else:
            out += [f"origin: unknown key {k}" for k in sorted(set(origin) - ORIGIN_KEYS)]
    if "availability" in payload:
        if "availability_topic" in payload:
            out.append("availability and availability_topic together")
        av = payload["availability"]
        if not isinstance(av, list) or not av:
            out.append("availability is not a non-empty list")
        else:
            for item in av:
                if not isinstance(item, dict) or not isinstance(item.get("topic"), str):
                    out.append(f"availability item {item!r} has no topic")
                    continue
                out += [f"availability: unknown key {k}" for k in sorted(set(item) - AVAILABILITY_KEYS)]
                if WILDCARD.search(item["topic"]):
                    out.append(f"availability topic {item['topic']!r} has a wildcard")
    if "entity_category" in payload and payload["entity_category"] not in ENTITY_CATEGORIES[component]:
        out.append(f"entity_category {payload['entity_category']!r} is not allowed on a {component}")
    for key in ("off_delay", "expire_after"):
        if key in payload and (not isinstance(payload[key], int) or payload[key] <= 0):
            out.append(f"{key}: {payload[key]!r} is not a positive integer")
    if component == "sensor":
        dc, unit, sc = payload.get("device_class"), payload.get("unit_of_measurement"), payload.get("state_class")
        if dc is not None:
            if dc not in SENSOR_UNITS:
                out.append(f"sensor device_class {dc!r} is not one this checker knows")
            elif SENSOR_UNITS[dc] is None:
                if unit is not None or sc is not None:
                    out.append(f"device_class {dc}: no unit and no state_class allowed")
            elif unit not in SENSOR_UNITS[dc]:  # type: ignore[operator]
                out.append(f"device_class {dc}: unit {unit!r} not one of {sorted(SENSOR_UNITS[dc])}")  # type: ignore[arg-type]
        if dc == "enum":
            opts = payload.get("options")
            if not isinstance(opts, list) or not opts or not all(isinstance(o, str) for o in opts):
                out.append("an enum sensor needs options, a list of strings")
        elif "options" in payload:
            out.append("options only with device_class enum")
        if sc is not None and sc not in STATE_CLASSES:
            out.append(f"state_class {sc!r} not one of {sorted(STATE_CLASSES)}")
    else:
        dc = payload.get("device_class")
        if dc is not None and dc not in BINARY_DEVICE_CLASSES:
            out.append(f"binary_sensor device_class {dc!r} not one of the documented")
    return [f"{topic}: {p}" for p in out]


def fleet_problems(messages: Iterable[tuple[str, Mapping[str, Any]]], discovery_prefix: str) -> list[str]:
    """:func:`problems` of every message, and unique ids that are not unique."""
    out: list[str] = []
    seen: dict[str, str] = {}
    for topic, payload in messages:
        out += problems(topic, payload, discovery_prefix)
        uid = payload.get("unique_id")
        if isinstance(uid, str):
            if uid in seen and seen[uid] != topic:
                out.append(f"unique_id {uid} on {seen[uid]} and {topic}")
            seen[uid] = topic
    return out


def is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
