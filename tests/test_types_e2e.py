"""Types and strings end to end: what a board may send, and what lands in a real InfluxDB 1.6.

Real Mosquitto, the real gateway, a real InfluxDB 1.6 (issue 16, items 1, 2 and 10): a string that cannot be
UTF-8 is a dead letter and sinks nothing else; one device's integer cannot fix a field's type for the
fleet; a status field named ``time`` is not silently dropped; strings read back exactly (or are refused
with a reason); two readings of one device in one millisecond are two points.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from helpers import influx_query, running_gateway, wait_for
from services import Proc

from gateway.app import Gateway
from gateway.config import Config, parse_config
from sim.publish import BrokerConfig, publish
from sim.wire import Outgoing

pytestmark = pytest.mark.integration


def short_id() -> str:
    return uuid.uuid4().hex[:8]


def config(mosquitto: Proc, influxdb: Proc, db: str, prefix: str, **sections: Mapping[str, Any]) -> Config:
    doc: dict[str, Any] = {
        "mqtt": {"url": f"mqtt://{mosquitto.host}:{mosquitto.port}", "prefix": prefix,
                 "client_id": f"gw-{short_id()}", "clean_session": True},
        "influx": {"target": "v1", "url": influxdb.url, "database": db, "batch_size": 500, "flush_interval_ms": 100},
        **sections,
    }  # fmt: skip
    return parse_config(doc, env={})


def batch(prefix: str, site: str, device: str, readings: Sequence[Mapping[str, Any]]) -> Outgoing:
    """A readings message; ``json.dumps`` writes any lone surrogate as a ``\\ud800`` escape (plain ASCII)."""
    doc = {"v": 1, "dev": device, "r": list(readings)}
    return Outgoing(f"{prefix}/{site}/{device}/readings", json.dumps(doc).encode(), "batch", device=device)


def status(prefix: str, site: str, device: str, fields: Mapping[str, Any]) -> Outgoing:
    doc = {"v": 1, "dev": device, "state": "online", **fields}
    return Outgoing(f"{prefix}/{site}/{device}/status", json.dumps(doc).encode(), "status", device=device)


def reading(b: int, s: int, t: int, **m: Any) -> dict[str, Any]:
    return {"b": b, "s": s, "t": t, "q": "s", "m": m}


async def send(gw: Gateway, broker: Proc, messages: Sequence[Outgoing]) -> None:
    before = gw.pipeline.stats.messages
    await publish(messages, BrokerConfig(broker.host, broker.port), client_id=f"sim-{short_id()}")
    want = before + len(messages)
    await wait_for(lambda: gw.pipeline.stats.messages >= want, f"the gateway received {len(messages)} messages")


def now_ms() -> int:
    return int(time.time() * 1000)


def dead_letters(influxdb: Proc, db: str) -> list[dict[str, Any]]:
    return influx_query(influxdb.url, db, "SELECT * FROM dead_letter")


async def test_a_lone_surrogate_is_a_dead_letter_and_sinks_nothing_else(
    mosquitto: Proc, influxdb_v1: Proc, influx_db: str
) -> None:
    """40 honest readings and one whose value is "\\ud800" in the same burst: 40 stored, 1 ``bad_string``.

    Before: the reading passed the decoder and the writer's ``encode("utf-8")`` failed on the whole batch."""
    prefix, site = f"t{short_id()}", "gh"
    t0 = now_ms() - 60_000
    messages = []
    for d in range(4):
        device = f"dev-{d}"
        rs = [reading(1, s, t0 + 1000 * s, temp_c=20.0 + s / 4) for s in range(10)]
        if d == 2:
            rs.insert(5, reading(1, 99, t0 + 5500, temp_c="\ud800"))
        messages += [batch(prefix, site, device, rs[:5]), batch(prefix, site, device, rs[5:])]
    messages.append(status(prefix, site, "dev-3", {"fw": "0.1\udc80"}))  # a status is refused whole
    async with running_gateway(config(mosquitto, influxdb_v1, influx_db, prefix)) as gw:
        await send(gw, mosquitto, messages)
    s = gw.pipeline.stats
    assert (s.readings_accepted, s.dead_letters, dict(s.dead_by_reason)) == (40, 2, {"bad_string": 2})
    rows = influx_query(influxdb_v1.url, influx_db, "SELECT * FROM reading")
    assert len(rows) == 40 and Counter(r["device"] for r in rows) == {f"dev-{d}": 10 for d in range(4)}
    dead = dead_letters(influxdb_v1, influx_db)
    assert sorted((r["reason"], r["device"], r["index"]) for r in dead) == [
        ("bad_string", "dev-2", 0), ("bad_string", "dev-3", -1)
    ]  # fmt: skip
    for r in dead:
        assert "surrogate" in r["detail"], r["detail"]


async def test_an_integer_does_not_fix_a_fields_type_for_the_fleet(
    mosquitto: Proc, influxdb_v1: Proc, influx_db: str
) -> None:
    """``"temp_c": 21`` from one device, then floats from four others: all stored, and ``temp_c`` is a float.

    Before: the integer was written as ``21i`` and InfluxDB refused every later float ``temp_c`` (HTTP 400,
    field type conflict). The same for status fields: a documented one has its documented type (``battery_mv``
    an integer, so 3905.0 is 3905), any other is a float unless declared (``rssi``)."""
    prefix, site = f"t{short_id()}", "gh"
    t0 = now_ms() - 60_000
    async with running_gateway(config(mosquitto, influxdb_v1, influx_db, prefix)) as gw:
        await send(
            gw, mosquitto, [batch(prefix, site, "dev-0", [reading(1, 0, t0, temp_c=21)]),
                            status(prefix, site, "dev-0", {"battery_mv": 3911, "rssi": -70})]
        )  # fmt: skip
        q = "SELECT count(temp_c) FROM reading"
        await wait_for(lambda: bool(influx_query(influxdb_v1.url, influx_db, q)), "the integer is in InfluxDB first")
        later = [
            batch(prefix, site, f"dev-{d}", [reading(1, s, t0 + 1000 * s, temp_c=21.5 + s) for s in range(10)])
            for d in range(1, 5)
        ]
        later.append(status(prefix, site, "dev-1", {"battery_mv": 3905.0, "rssi": -71.5}))
        await send(gw, mosquitto, later)
    assert gw.pipeline.stats.dead_letters == 0
    rows = influx_query(influxdb_v1.url, influx_db, "SELECT * FROM reading")
    assert len(rows) == 41
    assert Counter(r["temp_c"] for r in rows if r["device"] != "dev-0") == {21.5 + s: 4 for s in range(10)}
    types = {r["fieldKey"]: r["fieldType"] for r in influx_query(influxdb_v1.url, influx_db, "SHOW FIELD KEYS")}
    assert types["temp_c"] == "float"
    assert types["battery_mv"] == "integer" and types["rssi"] == "float"
    st = influx_query(influxdb_v1.url, influx_db, "SELECT battery_mv, rssi FROM device_status")
    assert sorted((r["battery_mv"], r["rssi"]) for r in st) == [(3905, -71.5), (3911, -70)]


async def test_reserved_and_tag_names_are_dead_letters_not_silent_losses(
    mosquitto: Proc, influxdb_v1: Proc, influx_db: str
) -> None:
    """A status field ``time`` (InfluxDB drops a field so named, silently) and fields named like the
    measurement's tags (``device`` would shadow the tag in every query) are refused with a clear reason.

    Before: all three were accepted; InfluxDB kept the status without ``time``, and the metric ``device``
    answered ``SELECT "device"`` in place of the tag."""
    prefix, site = f"t{short_id()}", "gh"
    t0 = now_ms() - 60_000
    messages = [
        status(prefix, site, "dev-0", {"time": 5, "buf": 1}),
        status(prefix, site, "dev-1", {"site": "elsewhere"}),
        batch(prefix, site, "dev-2", [reading(1, 0, t0, device=1.5), reading(1, 1, t0, temp_c=1.5)]),
    ]
    async with running_gateway(config(mosquitto, influxdb_v1, influx_db, prefix)) as gw:
        await send(gw, mosquitto, messages)
    assert gw.pipeline.stats.readings_accepted == 1
    dead = {r["device"]: r for r in dead_letters(influxdb_v1, influx_db)}
    assert {d: (r["reason"], r["index"]) for d, r in dead.items()} == {
        "dev-0": ("schema", -1), "dev-1": ("schema", -1), "dev-2": ("schema", 0)
    }  # fmt: skip
    assert "'time'" in dead["dev-0"]["detail"] and "reserved" in dead["dev-0"]["detail"]
    assert "'site'" in dead["dev-1"]["detail"] and "'device'" in dead["dev-2"]["detail"]
    assert influx_query(influxdb_v1.url, influx_db, "SELECT * FROM device_status") == []
    rows = influx_query(influxdb_v1.url, influx_db, 'SELECT "device", "temp_c" FROM reading')
    assert [(r["device"], r["temp_c"]) for r in rows] == [("dev-2", 1.5)]


STORED = [
    'quote " inside',
    "back\\slash",
    "ends with a backslash \\",
    "two \\\\ backslashes",
    "a literal \\n, not a newline",
    "é, 漢字, 😀 and 𝄞",
    "line\u2028separator",
    "\ufeffbom",
    "  spaces, commas = equals  ",
    "",
    "\uffff\U0010ffff",
]
"""String values stored exactly."""
REFUSED = ["new\nline", "carriage\rreturn", "tab\tbed", "nul\x00", "bell\x07", "del\x7f", "c1\x85", "\x9f"]
"""String values refused as ``bad_string``: control characters (Unicode category Cc)."""


async def test_strings_read_back_exactly_or_are_refused_with_a_reason(
    mosquitto: Proc, influxdb_v1: Proc, influx_db: str
) -> None:
    """Every kind of string a board can send, as a string metric and as a status field: what is stored
    reads back exactly; a control character (a newline would break the line for VictoriaMetrics) makes a
    dead letter ``bad_string``.

    Before: a newline was stored as the two characters backslash and n, other control characters as sent."""
    prefix, site = f"t{short_id()}", "gh"
    t0 = now_ms() - 60_000
    values = STORED + REFUSED
    rs = [reading(1, i, t0 + i, note=v, temp_c=float(i)) for i, v in enumerate(values)]
    messages = [batch(prefix, site, "dev-0", rs)]
    messages += [status(prefix, site, f"dev-{i + 1}", {"fw": v}) for i, v in enumerate(values)]
    cfg = config(mosquitto, influxdb_v1, influx_db, prefix, metric_types={"string": ["note"]})
    async with running_gateway(cfg) as gw:
        await send(gw, mosquitto, messages)
    rows = influx_query(influxdb_v1.url, influx_db, "SELECT * FROM reading")
    assert sorted((r["seq"], r["note"]) for r in rows) == list(enumerate(STORED))
    st = influx_query(influxdb_v1.url, influx_db, "SELECT * FROM device_status")
    assert sorted(r["fw"] for r in st) == sorted(STORED)
    dead = dead_letters(influxdb_v1, influx_db)
    assert Counter(r["reason"] for r in dead) == {"bad_string": 2 * len(REFUSED)}
    assert sorted(r["index"] for r in dead if r["device"] == "dev-0") == list(range(len(STORED), len(values)))
    assert all("control character" in r["detail"] for r in dead), [r["detail"] for r in dead]


async def test_two_readings_in_one_millisecond_are_two_points(
    mosquitto: Proc, influxdb_v1: Proc, influx_db: str
) -> None:
    """Readings of one device that share an event-time millisecond (two of one boot, one of the next boot)
    are three points, each at that millisecond; a re-sent reading lands on itself.

    Before: they were one point, the later overwriting the earlier."""
    prefix, site = f"t{short_id()}", "gh"
    t = now_ms() - 60_000
    same_ms = [reading(4, 10, t, temp_c=1.0), reading(4, 11, t, temp_c=2.0), reading(5, 0, t, temp_c=3.0)]
    messages = [batch(prefix, site, "dev-0", same_ms)]
    async with running_gateway(config(mosquitto, influxdb_v1, influx_db, prefix)) as gw:
        await send(gw, mosquitto, messages)
    async with running_gateway(config(mosquitto, influxdb_v1, influx_db, prefix)) as gw:
        await send(gw, mosquitto, messages)  # a fresh gateway (no dedup state) writes them again
    assert gw.pipeline.stats.readings_accepted == 3
    rows = influx_query(influxdb_v1.url, influx_db, "SELECT * FROM reading", epoch="ns")
    assert sorted((r["boot"], r["seq"], r["temp_c"]) for r in rows) == [(4, 10, 1.0), (4, 11, 2.0), (5, 0, 3.0)]
    assert len({r["time"] for r in rows}) == 3
    assert {r["time"] // 1_000_000 for r in rows} == {t}
    ms_rows = influx_query(influxdb_v1.url, influx_db, "SELECT * FROM reading", epoch="ms")
    assert [r["time"] for r in ms_rows] == [t, t, t]
