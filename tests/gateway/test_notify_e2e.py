"""Notifications end to end: a simulated overheating board -> Mosquitto -> gateway (a pattern) -> Apprise -> a
local webhook receiver, a local SMTP server (aiosmtpd) and a receiver that is down at first.

Twenty hot readings are one alert each in InfluxDB, and one message per target (not one per reading), then a
resolved message. The receiver that was down gets the alert once it is back, and meanwhile every reading
published (also while deliveries fail) is in InfluxDB.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from email import message_from_bytes
from email.message import Message as Mail
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from helpers import influx_query, running_gateway, wait_for
from services import Proc, free_port
from test_notify import Receiver

from gateway.config import parse_config
from sim.publish import BrokerConfig, publish
from sim.wire import Outgoing

pytestmark = pytest.mark.integration

SITE = "plant"


class Mailbox:
    def __init__(self) -> None:
        self.mails: list[Mail] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # aiosmtpd calls it by this name
        self.mails.append(message_from_bytes(envelope.content))
        return "250 OK"


def batch(prefix: str, device: str, rows: list[tuple[int, int, float]]) -> Outgoing:
    doc = {"v": 1, "dev": device, "r": [{"b": 1, "s": s, "t": t, "q": "s", "m": {"temp_c": v}} for s, t, v in rows]}
    return Outgoing(f"{prefix}/{SITE}/{device}/readings", json.dumps(doc).encode(), "batch")


def body(mail: Mail) -> str:
    part = next(p for p in mail.walk() if p.get_content_type() == "text/plain")
    payload = part.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode()


async def test_one_message_per_fault_then_resolved_and_a_late_receiver_catches_up(
    mosquitto: Proc, influxdb_v1: Proc, influx_db: str, tmp_path: Path
) -> None:
    hook, late = Receiver(free_port()), Receiver(free_port())
    hook.up()
    mailbox = Mailbox()
    smtp = Controller(mailbox, hostname="127.0.0.1", port=free_port())
    smtp.start()
    prefix = f"n{uuid.uuid4().hex[:8]}"
    timing = {"group_wait_s": 0.3, "resolve_after_s": 1.5, "retry_min_s": 0.2, "retry_max_s": 0.4}
    env = {
        "EDGEKIT_NOTIFY_HOOK_URL": f"json://127.0.0.1:{hook.port}/alerts",
        "EDGEKIT_NOTIFY_MAIL_URL": f"mailto://127.0.0.1:{smtp.port}?from=gw@example.com&to=ops@example.com&mode=insecure",
        "EDGEKIT_NOTIFY_LATE_URL": f"json://127.0.0.1:{late.port}/alerts",
        "EDGEKIT_NOTIFY_OTHER_SITE_URL": f"json://127.0.0.1:{hook.port}/alerts",
    }
    cfg = parse_config(
        {
            "mqtt": {"url": f"mqtt://{mosquitto.host}:{mosquitto.port}", "prefix": prefix,
                     "client_id": f"gw-{prefix}", "clean_session": True},
            "influx": {"target": "v1", "url": influxdb_v1.url, "database": influx_db, "batch_size": 50,
                       "flush_interval_ms": 100},
            "state": {"dir": str(tmp_path)},
            "engine": {"watermark": {"out_of_orderness": "1s"}},
            "patterns": [{"name": "overheat", "severity": "critical", "message": "temperature above 80 C",
                          "steps": [{"name": "hot", "where": "temp_c > 80"}]}],
            "notify": [
                {"name": "hook", **timing},
                {"name": "mail", "min_severity": "warning", "names": ["overheat*"], **timing},
                {"name": "late", "sites": [SITE], **timing},
                {"name": "other-site", "sites": ["elsewhere"], **timing},  # filtered out: never sends
            ],
        },
        env=env,
    )  # fmt: skip
    t0 = (time.time_ns() // 1_000_000 - 3_600_000) // 1_000 * 1_000
    # the fault: 10 normal readings, 20 hot ones, 10 normal ones (one a second of event time), in 8 messages
    temps = [21.0] * 10 + [90.0 + i for i in range(20)] + [22.0] * 10
    rows = [(i + 1, t0 + i * 1000, v) for i, v in enumerate(temps)]
    fault = [batch(prefix, "oven-1", rows[i : i + 5]) for i in range(0, len(rows), 5)]
    # more readings from another board, published while the late receiver is down
    more = [batch(prefix, "oven-2", [(i * 10 + j + 1, t0 + (i * 10 + j) * 1000, 20.0) for j in range(10)])
            for i in range(20)]  # fmt: skip
    broker = BrokerConfig(mosquitto.host, mosquitto.port)
    try:
        async with running_gateway(cfg) as gw:
            n = gw.notifier
            assert n is not None
            await publish(fault, broker, client_id=f"{prefix}-pub1")
            await wait_for(lambda: gw.pipeline.stats.alerts == 20, lambda: f"20 alerts, {gw.pipeline.stats.alerts}")
            late_t = next(t for t in n.targets if t.spec.name == "late")
            await wait_for(lambda: late_t.stats.failures >= 2, "deliveries to the late receiver to fail twice")
            await publish(more, broker, client_id=f"{prefix}-pub2")  # ingest goes on while it is down
            await wait_for(lambda: gw.pipeline.stats.readings_accepted == 240, "every reading accepted")
            assert late.got == [] and late_t.stats.sent == 0
            late.up()
            await wait_for(lambda: len(hook.got) >= 2 and len(mailbox.mails) >= 2 and late.got, "the messages", 20)
            await asyncio.sleep(0.5)  # nothing more arrives: no message per reading, no second resolved one
            stats: Any = gw.snapshot_stats()["notify"]
            metrics = gw.metrics.render().decode()
        alert_rows = influx_query(influxdb_v1.url, influx_db, "SELECT * FROM alert")
        counted = influx_query(influxdb_v1.url, influx_db, "SELECT count(temp_c) FROM reading")
    finally:
        smtp.stop()
        hook.down()
        late.down()

    assert len(alert_rows) == 20 and counted[0]["count"] == 240  # every alert and every reading in InfluxDB
    first_id = min(alert_rows, key=lambda r: r["last_ms"])["id"]

    # the webhook: one alert message, then one resolved message
    assert [d["type"] for d in hook.got] == ["failure", "success"], hook.got
    assert hook.got[0]["title"] == f"[edgekit] CRITICAL pattern overheat at {SITE}/oven-1"
    assert "temperature above 80 C" in hook.got[0]["message"] and first_id in hook.got[0]["message"]
    assert (
        hook.got[1]["title"].startswith("[edgekit] RESOLVED pattern overheat")
        and "20 alert(s)" in hook.got[1]["message"]
    )
    # e-mail: the same two, as two mails
    assert [m["Subject"] for m in mailbox.mails] == [hook.got[0]["title"], hook.got[1]["title"]]
    assert first_id in body(mailbox.mails[0]) and mailbox.mails[0]["To"] == "ops@example.com"
    # the receiver that was down: the alert (alone, or with the resolution it missed meanwhile) after it came back
    assert (
        first_id in late.got[0]["message"]
        and "CRITICAL pattern overheat" in late.got[0]["message"] + late.got[0]["title"]
    )
    t = stats["targets"]
    assert t["hook"]["sent"] == 2 and t["hook"]["suppressed"] == 19 and t["hook"]["failures"] == 0
    assert t["late"]["failures"] >= 2 and t["late"]["sent"] >= 1 and t["late"]["pending"] == 0
    assert t["other-site"]["matched"] == 0 and t["other-site"]["sent"] == 0 and stats["shed"] == 0
    assert 'edgekit_notify_sent_total{target="hook"} 2.0' in metrics
    assert f'edgekit_notify_failures_total{{target="late"}} {float(t["late"]["failures"])}' in metrics
