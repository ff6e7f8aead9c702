"""What stood between a message and its alert: an alert goes to the outbox's sender as soon as the message that
raised it is taken, not after the rest of the batch of messages it arrived with (the ingest takes up to
``state.ingest_batch`` messages at a time); and the garbage collector's full scans of the heap are paced."""

from __future__ import annotations

import asyncio
import gc
import json
import weakref
from pathlib import Path

from gateway.app import CollectorPacing, Gateway
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


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


def test_the_collector_pacing_freezes_after_a_full_collection_and_gives_the_objects_back() -> None:
    """After a full collection what is alive is frozen (not scanned again), and given back every ``every_s``: a
    cycle that became garbage while frozen is collected then, so frozen garbage does not accumulate."""
    pacing = CollectorPacing(every_s=3600.0)
    pacing.install()
    try:
        holder = [_Node()]
        gone = weakref.ref(holder[0])
        gc.collect()
        assert pacing.freezes == 1 and gc.get_freeze_count() > 0
        holder.clear()  # now garbage, in a cycle, frozen
        gc.collect()
        assert gone() is not None, "a frozen object was scanned"
        pacing.tick()  # not yet time: still frozen
        gc.collect()
        assert gone() is not None
        pacing.every_s = 0.0
        pacing.tick()
        assert gc.get_freeze_count() == 0
        gc.collect()
        assert gone() is None, "the cycle frozen while alive was not collected after the objects were given back"
    finally:
        pacing.remove()
    assert gc.get_freeze_count() == 0 and pacing._after not in gc.callbacks
