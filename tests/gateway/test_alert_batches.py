"""An alert goes to the outbox's sender as soon as the message that raised it is taken, not after the rest of the
batch of messages it arrived with (the ingest takes up to ``state.ingest_batch`` messages at a time)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from gateway.app import Gateway
from gateway.config import parse_config

T0 = 1_764_072_000_000


def _gateway(tmp_path: Path) -> Gateway:
    doc = {
        "mqtt": {"prefix": "ab", "client_id": "gw-ab"},
        "influx": {"target": "v1", "url": "http://127.0.0.1:9", "database": "db"},  # never written to here
        "state": {"dir": str(tmp_path / "state")},
        "patterns": [{"name": "hot", "steps": [{"name": "t", "where": "temp_c > 80"}]}],
    }
    return Gateway(parse_config(doc, env={}), now_ms=lambda: T0 + 60_000)


def _message(device: int, temp: float) -> tuple[str, bytes, bool]:
    dev = f"d{device}"
    rows = [{"b": 1, "s": 0, "t": T0, "q": "s", "m": {"temp_c": temp}}]
    return f"ab/site/{dev}/readings", json.dumps({"v": 1, "dev": dev, "r": rows, "flushed": T0}).encode(), False


async def test_an_alert_reaches_the_sender_before_the_rest_of_its_batch_is_taken(tmp_path: Path) -> None:
    gw = _gateway(tmp_path)
    try:
        # the second message raises an alert (its flush marker releases the pattern at once), the others do not
        records = gw._accept([_message(d, 90.0 if d == 1 else 20.0) for d in range(40)])
        taken_when_ready: list[int] = []

        async def sender() -> None:  # as the outbox's sender waits for something to publish
            await gw.outbox.ready.wait()
            taken_when_ready.append(gw.pos)

        waiting = asyncio.create_task(sender())
        await asyncio.sleep(0)
        await gw._process(records)
        await asyncio.wait_for(waiting, 5)
        assert gw.pipeline.stats.alerts == 1 and len(gw.outbox.queue) == 1
        assert taken_when_ready[0] < records[-1].pos, (
            f"the sender ran only after the whole batch was taken (at position {taken_when_ready[0]}; the alert's "
            f"message is at {records[1].pos})"
        )
    finally:
        gw.store.close()
