"""Home Assistant discovery (gateway/homeassistant.py): the payloads for a simulated fleet follow Home Assistant's
documented schema (tests/gateway/ha_schema.py), every entity's template renders a value from the state the
gateway publishes (rendered with Jinja2, as Home Assistant renders it), and the availability template reads a
board's status and last will."""

from __future__ import annotations

import json
import time
from typing import Any

import jinja2
import jinja2.sandbox
import pytest
from ha_schema import fleet_problems, is_number, problems
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.alerts import Alert
from gateway.config import parse_config
from gateway.errors import ConfigError
from gateway.homeassistant import Discovery, availability_template, object_id
from gateway.model import Reading
from gateway.pipeline import Pipeline
from gateway.protocol import RESERVED_METRICS
from sim.fleet import FleetSpec, generate

ENV = jinja2.sandbox.ImmutableSandboxedEnvironment()


def render(template: str, payload: bytes) -> str:
    """As Home Assistant's ``async_render_with_possible_json_value``: ``value`` is the payload, ``value_json`` its
    JSON when it parses; the output stripped."""
    variables: dict[str, Any] = {"value": payload.decode()}
    try:
        variables["value_json"] = json.loads(payload)
    except ValueError:
        pass
    return ENV.from_string(template).render(variables).strip()


def config(**sections: Any) -> Any:
    doc: dict[str, Any] = {"homeassistant": {"enabled": True}, "mqtt": {"prefix": "ek"}}
    doc.update(sections)
    return parse_config(doc, env={})


PATTERNS = [
    {"name": "hot", "steps": [{"name": "hot", "where": "temp_c > 30"}]},
    {"name": "humid_site", "key": "site", "steps": [{"name": "wet", "where": "rh > 90"}]},
]


def simulated(cfg: Any, devices: int = 4) -> tuple[list[tuple[str, dict[str, Any]]], dict[str, bytes]]:
    """A simulated fleet (statuses and batches) through the pipeline and :class:`Discovery`: the discovery
    messages in order, and the last payload of every other retained topic."""
    plan = generate(FleetSpec(devices=devices, sites=("north", "south"), readings_per_device=12, batch_size=4,
                              metrics=("temp_c", "rh", "pressure_hpa"), prefix="ek", seed=3))  # fmt: skip
    pipeline, disc = Pipeline(cfg), Discovery(cfg)
    configs: list[tuple[str, dict[str, Any]]] = []
    states: dict[str, bytes] = {}
    now = time.time_ns() // 1_000_000
    for i, msg in enumerate(plan.messages):
        out = pipeline.handle(msg.topic, msg.payload, now + i)
        if msg.retain:
            states[msg.topic] = msg.payload
        for topic, payload in disc.observe(out.readings, out.status, out.alerts):
            if topic.startswith("homeassistant/"):
                configs.append((topic, json.loads(payload)))
            else:
                states[topic] = payload
    return configs, states


def test_a_simulated_fleets_discovery_follows_the_schema_and_every_template_renders() -> None:
    cfg = config(patterns=PATTERNS, anomaly={"enabled": True})
    configs, states = simulated(cfg)
    assert fleet_problems(configs, "homeassistant") == []
    latest = dict(configs)
    assert len(latest) == len(configs)  # each entity announced once
    by_device: dict[str, set[str]] = {}
    for topic, c in latest.items():
        ENV.parse(c["value_template"])
        for av in c.get("availability", []):
            assert av["topic"] in states  # the board's retained status
            assert render(av["value_template"], states[av["topic"]]) == "online"
        by_device.setdefault(c["device"]["name"], set()).add(topic.rsplit("/", 2)[1])
        if c["state_topic"].startswith("ek/_gateway/alerts/"):
            assert topic.startswith("homeassistant/binary_sensor/")
            continue
        assert c["state_topic"] in states, topic
        value = render(c["value_template"], states[c["state_topic"]])
        if topic.startswith("homeassistant/binary_sensor/"):
            assert value in (c["payload_on"], c["payload_off"])
        elif "state_class" in c:
            assert is_number(value), (topic, value)
        else:
            assert value in c["options"]  # the clock
    assert len(by_device) == 4 + 2  # the boards and the two sites
    for name, oids in by_device.items():
        if name.startswith("edgekit "):
            assert oids == {"alert_pattern_humid_site"}
            continue  # every board: its metrics, battery, buffer, clock quality, rules
        assert {"m_temp_c", "m_rh", "m_pressure_hpa", "battery_mv", "buf", "buf_fill", "dropped", "clock",
                "alert_pattern_hot", object_id("alert_anomaly_zscore.temp_c")} <= oids  # fmt: skip
    temp = next(c for t, c in latest.items() if t.endswith("/m_temp_c/config"))
    assert (temp["device_class"], temp["unit_of_measurement"]) == ("temperature", "°C")
    assert temp["state_class"] == "measurement"
    sites = {c["device"]["name"] for c in latest.values() if "humid_site" in c["name"]}
    assert sites == {"edgekit north", "edgekit south"}  # a site-keyed rule: one sensor per site, on a site device


def test_an_alert_turns_on_its_own_rule_only_and_a_retraction_turns_it_off() -> None:
    cfg = config(patterns=PATTERNS)
    disc = Discovery(cfg)
    r = Reading("north", "gh-1", 1, 0, 1_764_072_000_000, "s", {"temp_c": 31.0})
    disc.observe([r, Reading("north", "gh-2", 1, 0, 1_764_072_000_000, "s", {"temp_c": 20.0})], None, [])
    alert = Alert("pattern", "hot", "north", "gh-1", "warning", r.t_ms, r.t_ms, (r.key,))
    out = disc.observe([], None, [alert])
    assert out == []  # its binary sensor was announced with the device
    announced = [json.loads(p) for _, p in _announce(cfg)]
    sensors = {c["device"]["name"]: c for c in announced if c.get("name") == "Alert hot"}
    assert set(sensors) == {"gh-1", "gh-2"}
    for device, c in sensors.items():
        assert c["state_topic"] == "ek/_gateway/alerts/north/pattern"
        got = render(c["value_template"], alert.to_json())
        assert got == ("ON" if device == "gh-1" else "")  # an empty output is ignored by Home Assistant
    retracted = Alert("pattern", "hot", "north", "gh-1", "warning", r.t_ms, r.t_ms, (r.key,), path="arrival",
                      verdict="retracted")  # fmt: skip
    assert render(sensors["gh-1"]["value_template"], retracted.to_json()) == "OFF"
    other = Alert("anomaly", "zscore.temp_c", "north", "gh-1", "warning", r.t_ms, r.t_ms, (r.key,))
    new = disc.observe([], None, [other])  # a rule first seen in an alert is announced then
    assert [t for t, _ in new] == ["homeassistant/binary_sensor/edgekit_ek_gh-1/alert_anomaly_zscore_temp_c_" +
                                   object_id("alert_anomaly_zscore.temp_c").rsplit("_", 1)[1] + "/config"]  # fmt: skip


def _announce(cfg: Any) -> list[tuple[str, bytes]]:
    disc = Discovery(cfg)
    return disc.observe(
        [Reading("north", d, 1, 0, 1_764_072_000_000, "s", {"temp_c": 20.0}) for d in ("gh-1", "gh-2")], None, []
    )


@pytest.mark.parametrize(
    ("payload", "available"),
    [
        (b'{"v":1,"dev":"a","state":"online","battery_mv":3900}', "online"),
        (b'{"v":1,"dev":"a","state":"sleeping","sleep_s":300}', "online"),
        (b'{"v":1,"dev":"a","state":"offline"}', "offline"),  # the last will
        (b"", "offline"),  # a cleared retained status
        (b"[1,2]", "offline"),
        (b'"online"', "offline"),
    ],
)
def test_availability_follows_the_boards_status_and_last_will(payload: bytes, available: str) -> None:
    assert render(availability_template(), payload) == available


NAMES = st.from_regex(r"[a-z][a-z0-9_]{0,31}", fullmatch=True).filter(lambda n: n not in RESERVED_METRICS)
KINDS = st.sampled_from(["float", "integer", "boolean", "string"])
VALUE = {
    "float": st.floats(allow_nan=False, allow_infinity=False, width=64),
    "integer": st.integers(-(2**63), 2**63 - 1),
    "boolean": st.booleans(),
    "string": st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), max_size=64),
}


@settings(max_examples=60, deadline=None)
@given(
    metrics=st.dictionaries(NAMES, KINDS, min_size=1, max_size=16),
    device=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}", fullmatch=True),
    data=st.data(),
)
def test_any_metric_of_any_type_gets_a_valid_entity_whose_template_gives_its_value(
    metrics: dict[str, str], device: str, data: st.DataObject
) -> None:
    types = {k: [m for m, t in metrics.items() if t == k] for k in ("integer", "boolean", "string")}
    cfg = config(metric_types=types)
    values = {m: data.draw(VALUE[t]) for m, t in metrics.items()}
    out = Discovery(cfg).observe([Reading("s1", device, 1, 0, 1_764_072_000_000, "u", values)], None, [])
    configs = [(t, json.loads(p)) for t, p in out if t.startswith("homeassistant/")]
    (state_topic, state), = [(t, p) for t, p in out if not t.startswith("homeassistant/")]  # fmt: skip
    assert state_topic == f"ek/_gateway/state/s1/{device}"
    assert fleet_problems(configs, "homeassistant") == []
    assert len(configs) == len(metrics) + 1  # and the clock
    for topic, c in configs:
        got = render(c["value_template"], state)
        if topic.endswith("/clock/config"):
            assert got == "unsynced"
            continue
        metric = c["name"]
        want = values[metric]
        if metrics[metric] == "boolean":
            assert got == ("ON" if want else "OFF")
        elif metrics[metric] == "string":
            assert got == str(want).strip()
        else:
            assert float(got) == float(want) if metrics[metric] == "float" else int(got) == want


def test_the_schema_checker_refuses_what_home_assistant_refuses() -> None:
    good = {"name": "t", "unique_id": "u", "state_topic": "a/b", "device": {"identifiers": ["x"]}}
    assert problems("homeassistant/sensor/n/o/config", good, "homeassistant") == []
    bad = [
        ("homeassistant/sensor/n.x/o/config", good),
        ("homeassistant/sensor/n/o", good),
        ("homeassistant/sensor/n/o/config", {**good, "state_topic": "a/#"}),
        ("homeassistant/sensor/n/o/config", {**good, "device_class": "temperature", "unit_of_measurement": "mV"}),
        ("homeassistant/sensor/n/o/config", {**good, "device_class": "enum", "state_class": "measurement"}),
        ("homeassistant/sensor/n/o/config", {**good, "state_class": "sometimes"}),
        ("homeassistant/sensor/n/o/config", {**good, "colour": "red"}),
        ("homeassistant/sensor/n/o/config", {k: v for k, v in good.items() if k != "unique_id"}),
        ("homeassistant/binary_sensor/n/o/config", {**good, "device_class": "alarm"}),
        ("homeassistant/sensor/n/o/config", {**good, "availability": [{"payload_available": "up"}]}),
    ]
    for topic, payload in bad:
        assert problems(topic, payload, "homeassistant"), (topic, payload)


def test_the_section_is_off_by_default_and_validated() -> None:
    cfg = parse_config({}, env={})
    assert not cfg.homeassistant.enabled and cfg.homeassistant.discovery_prefix == "homeassistant"
    other = parse_config({"homeassistant": {"discovery_prefix": "ha/x"}}, env={})
    assert other.homeassistant.discovery_prefix == "ha/x"
    env = parse_config({}, env={"EDGEKIT_HOMEASSISTANT_ENABLED": "true"})
    assert env.homeassistant.enabled
    for bad in ({"discovery_prefix": "ha/#"}, {"discovery_prefix": ""}, {"discovery_prefix": "ha/"},
                {"alert_off_delay_s": 0}, {"enabled": "yes"}, {"colour": 1}):  # fmt: skip
        with pytest.raises(ConfigError, match="homeassistant"):
            parse_config({"homeassistant": bad}, env={})


def test_a_snapshot_restored_at_any_point_goes_on_with_the_same_messages() -> None:
    cfg = config(patterns=PATTERNS, anomaly={"enabled": True})
    plan = generate(FleetSpec(devices=3, sites=("north", "south"), readings_per_device=6, batch_size=3,
                              metrics=("temp_c", "rh"), prefix="ek", seed=5))  # fmt: skip
    pipeline, now = Pipeline(cfg), time.time_ns() // 1_000_000
    handled = [pipeline.handle(m.topic, m.payload, now + i) for i, m in enumerate(plan.messages)]
    alert = Alert("anomaly", "gap", "north", plan.devices[0].device, "info", now, now, ())
    inputs = [(h.readings, h.status, h.alerts) for h in handled] + [([], None, [alert])]

    def run(cut: int | None) -> list[tuple[str, bytes]]:
        disc, out = Discovery(cfg), []
        for i, (readings, status, alerts) in enumerate(inputs):
            if i == cut:
                snap = json.loads(json.dumps(disc.snapshot()))  # as the checkpoint stores it
                disc = Discovery(cfg)
                disc.restore(snap)
            out += disc.observe(readings, status, alerts)
        return out

    whole = run(None)
    assert any("/alert_anomaly_gap/" in t for t, _ in whole)
    for cut in range(len(inputs)):
        assert run(cut) == whole, cut
