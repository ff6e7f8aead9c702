"""Fuzz test: more than 10,000 hostile messages through the real broker beside valid traffic.

The simulator's malformed kinds (bad JSON, invalid UTF-8, oversize, wrong version, device mismatch, schema,
bad topic, too many readings) plus hand-made ones (deep nesting, huge numbers, NaN and infinities,
absurd and negative timestamps, empty and NUL payloads, wrong types), interleaved at random with a valid
fleet. Every hostile message must be in the dead letters with its reason, every valid reading in InfluxDB
exactly once. A replayed old sequence number is a duplicate (the reading was accepted once), not a dead
letter: it is counted in ``duplicates`` and written nowhere.
"""

from __future__ import annotations

import random
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from helpers import influx_query, running_gateway, wait_for
from services import Proc

from gateway.config import parse_config
from sim.fleet import FleetSpec, generate
from sim.publish import BrokerConfig, publish
from sim.wire import Outgoing

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def extra_hostile(prefix: str, site: str, device: str, now: int, n: int) -> list[tuple[Outgoing, str]]:
    topic = f"{prefix}/{site}/{device}/readings"

    def reading(seq: int, t: object, value: bytes = b"1") -> bytes:
        return b'{"v":1,"dev":"%s","r":[{"b":1,"s":%d,"t":%s,"q":"s","m":{"x":%s}}]}' % (
            device.encode(), seq, str(t).encode() if not isinstance(t, bytes) else t, value,
        )  # fmt: skip

    makers = [
        (lambda i: b'{"v":1,"dev":"%s","r":' % device.encode() + b"[" * 3000 + b"]" * 3000 + b"}", "bad_json"),
        (lambda i: reading(900_000 + i, now, b"9" * 400), "schema"),
        (lambda i: reading(900_000 + i, now, b"1e999"), "non_finite"),
        (lambda i: reading(900_000 + i, now, b"-Infinity"), "non_finite"),
        (lambda i: reading(900_000 + i, now, b"NaN"), "non_finite"),
        (lambda i: reading(900_000 + i, now + 10**12), "time_in_future"),
        (lambda i: reading(900_000 + i, -1), "time_too_old"),
        (lambda i: reading(900_000 + i, b"true"), "schema"),
        (lambda i: reading(2**40 + i, now), "schema"),
        (lambda i: b"", "bad_json"),
        (lambda i: b"\x00" * (i % 50 + 1), "bad_json"),
    ]
    out = []
    for i in range(n):
        make, reason = makers[i % len(makers)]
        out.append((Outgoing(topic=topic, payload=make(i), kind="malformed", device=device), reason))
    return out


async def test_hostile_messages_all_dead_lettered(
    broker: Proc, influxdb_v1: Proc, influx_db: str, tmp_path: Path
) -> None:
    prefix, site = f"f{uuid.uuid4().hex[:6]}", "fz"
    plan = generate(
        FleetSpec(devices=20, readings_per_device=200, batch_size=10, sites=(site,), malformed=9000,
                  nan_readings=50, old_readings=50, duplicate_rate=0.1, seed=11, prefix=prefix)
    )  # fmt: skip
    now = int(time.time() * 1000)
    extras = extra_hostile(prefix, site, plan.devices[0].device, now, 1100)
    # a replay of already accepted readings: duplicates, not dead letters
    replays = [m for m in plan.messages if m.kind == "batch"][:50]
    hostile = len(plan.malformed) + len(extras)
    assert hostile >= 10_000
    rng = random.Random(5)
    tail = [m for m, _ in extras] + replays
    messages = list(plan.messages)
    for m in tail:
        messages.insert(rng.randrange(len(messages) // 2, len(messages) + 1), m)

    cfg = parse_config(
        {
            "mqtt": {"url": f"mqtt://{broker.host}:{broker.port}", "prefix": prefix,
                     "client_id": f"gw-{prefix}", "clean_session": True},
            "influx": {"target": "v1", "url": influxdb_v1.url, "database": influx_db, "batch_size": 1000},
            "state": {"dir": str(tmp_path / "state")},
        },
        env={},
    )  # fmt: skip
    async with running_gateway(cfg) as gw:  # raises whatever ended the gateway's run, if it failed
        await publish(messages, BrokerConfig(broker.host, broker.port), client_id=f"sim-{prefix}")
        await wait_for(
            lambda: gw.pipeline.stats.messages >= len(messages),
            lambda: f"the gateway took {gw.pipeline.stats.messages} of {len(messages)} messages: {gw.snapshot_stats()}",
            120,
            0.1,
        )

    counts = plan.counts()
    want = Counter(counts.dead_letters_by_reason) + Counter(reason for _, reason in extras)
    want += Counter(reason for m in replays for reason in m.rejects)  # a replayed bad reading is dead again
    s = gw.pipeline.stats
    assert s.messages == len(messages)
    assert s.readings_accepted == counts.readings  # valid traffic complete, hostile readings never accepted
    assert s.duplicates == counts.duplicate_readings + sum(m.readings for m in replays)
    assert Counter(s.dead_by_reason) == want
    assert s.dead_letters == sum(want.values())

    dead = influx_query(influxdb_v1.url, influx_db, "SELECT count(size) FROM dead_letter GROUP BY reason")
    assert {r["reason"]: r["count"] for r in dead} == dict(want)
    rows = influx_query(influxdb_v1.url, influx_db, "SELECT count(seq) FROM reading")
    assert rows[0]["count"] == counts.readings
    print(f"hostile messages: {hostile}, dead letters: {s.dead_letters} by reason {dict(want)}")
