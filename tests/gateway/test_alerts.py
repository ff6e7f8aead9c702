from __future__ import annotations

import asyncio
import json
import uuid

import aiomqtt
import pytest
from services import Proc

from gateway.alerts import Alert, alert_topic
from gateway.config import parse_config
from gateway.ingest import IngestStats, Outbox, run_ingest


def make(readings: tuple[tuple[str, int, int], ...] = (("d1", 1, 5), ("d1", 1, 6))) -> Alert:
    return Alert("pattern", "door_open", "site-a", "d1", "warning", 1_000, 2_000, readings, "door open 5 min")


def test_id_depends_on_what_not_when_or_order() -> None:
    a = make()
    assert a.id == make(tuple(reversed(a.readings))).id
    assert len(a.id) == 16
    assert a.id != make((("d1", 1, 5),)).id
    later = Alert("pattern", "door_open", "site-a", "d1", "warning", 9_000, 9_999, a.readings)
    assert later.id == a.id


def test_line_and_json() -> None:
    a = make()
    ln = a.to_line()
    assert ln.startswith("alert,key=d1,name=door_open,severity=warning,site=site-a,source=pattern ")
    ts = int(ln.rsplit(" ", 1)[1])
    assert 2_000 * 1_000_000 <= ts < 2_001 * 1_000_000
    assert ln == make().to_line()  # a replay lands on the same point
    doc = json.loads(a.to_json())
    assert doc["id"] == a.id and doc["readings"] == [["d1", 1, 5], ["d1", 1, 6]]
    assert alert_topic("edgekit", "site-a", "pattern") == "edgekit/_gateway/alerts/site-a/pattern"


def test_outbox_sheds_oldest_when_full() -> None:
    box = Outbox(limit=2)
    for i in range(3):
        box.put("t", bytes([i]))
    assert [p for _, p in box.queue] == [b"\x01", b"\x02"] and box.shed == 1


@pytest.mark.integration
async def test_outbox_publishes_through_the_broker(mosquitto: Proc) -> None:
    prefix = f"a{uuid.uuid4().hex[:8]}"
    cfg = parse_config(
        {"mqtt": {"url": f"mqtt://{mosquitto.host}:{mosquitto.port}", "prefix": prefix, "client_id": prefix}},
        env={},
    )
    box = Outbox()
    box.put(alert_topic(prefix, "s", "pattern"), make().to_json())  # queued before any connection
    stop = asyncio.Event()
    received: list[bytes] = []
    async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier=f"{prefix}-sub") as sub:
        await sub.subscribe(f"{prefix}/_gateway/#", qos=1)

        async def ignore(topic: str, payload: bytes) -> None:
            return None

        task = asyncio.create_task(run_ingest(cfg.mqtt, ignore, IngestStats(), stop, box))
        async with asyncio.timeout(10):
            async for msg in sub.messages:
                received.append(bytes(msg.payload))  # type: ignore[arg-type]
                if len(received) == 1:
                    box.put(alert_topic(prefix, "s", "anomaly"), b'{"second":1}')
                if len(received) == 2:
                    break
    stop.set()
    await task
    assert json.loads(received[0])["id"] == make().id
    assert received[1] == b'{"second":1}'
    assert box.sent == 2 and not box.queue
