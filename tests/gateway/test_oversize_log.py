"""A payload over ``limits.max_bytes`` is never stored in the log, even from a broker without limits.

The log keeps its stub (size, digest, first bytes); the dead letter made from the stub, at once or by a
replay after a restart, is the very one the whole payload gives, and a broker's re-send (DUP) of it is
recognised. Real SQLite state, the real pipeline; nothing is written to InfluxDB here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.app import Gateway
from gateway.config import Config, parse_config
from gateway.ingest import HEAD_BYTES, PACKET_ROOM, max_packet_size, publish_packet_size
from gateway.pipeline import Pipeline
from gateway.protocol import Limits

T0 = 1_764_072_000_000
BIG = 20 * 1024 * 1024


def _config(tmp_path: Path) -> Config:
    doc = {
        "mqtt": {"prefix": "ov", "client_id": "gw-ov"},
        "influx": {"target": "v1", "url": "http://127.0.0.1:9", "database": "db"},  # never written to here
        "state": {"dir": str(tmp_path / "state")},
    }
    return parse_config(doc, env={})


def _big(size: int) -> bytes:
    head = b'{"v":1,"dev":"d1","r":[],"pad":"'
    return head + b"\xff" + b"p" * (size - len(head) - 3) + b'"}'


def _other_lines(gw: Gateway) -> list[str]:
    return list(gw.sink.memory[1])


def _logged(gw: Gateway) -> list[tuple[int, int]]:
    assert gw.store.log_db is not None
    return gw.store.log_db.execute("SELECT kind, length(payload) FROM log ORDER BY pos").fetchall()


@pytest.mark.parametrize("topic", ["ov/site/d1/readings", "ov/site/d1/telemetry", "elsewhere/x"])
async def test_an_oversize_payload_is_logged_as_a_stub_and_gives_the_same_dead_letter(
    tmp_path: Path, topic: str
) -> None:
    cfg = _config(tmp_path)
    payload = _big(BIG)
    want = Pipeline(cfg).handle(topic, payload, T0).lines  # what the whole payload gives
    assert len(want) == 1 and want[0].startswith("dead_letter,")
    gw = Gateway(cfg, now_ms=lambda: T0)
    try:
        records = gw._accept([(topic, payload, False)])
        ((_, length),) = _logged(gw)
        assert length <= HEAD_BYTES + 24, f"the log holds {length} bytes of a {BIG}-byte payload"
        await gw._process(records)
        assert _other_lines(gw) == want
        # the broker re-sends it (DUP): recognised, not logged again
        assert gw._accept([(topic, payload, True)]) == []
        assert gw.redelivered == 1 and len(_logged(gw)) == 1
    finally:
        gw.store.close()
    # a restart replays the stub: the same dead letter again
    again = Gateway(cfg, now_ms=lambda: T0)
    try:
        await again.recover()
        assert again.replayed == 1 and _other_lines(again) == want
        assert again._accept([(topic, payload, True)]) == []  # the replay rebuilt its digest
    finally:
        again.store.close()


async def test_a_payload_at_the_limit_is_logged_whole(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    rows = [{"b": 1, "s": 0, "t": T0, "q": "s", "m": {"x": 1.0}}]
    doc = json.dumps({"v": 1, "dev": "d1", "r": rows, "pad": ""}).encode()
    payload = doc[:-2] + b"p" * (cfg.limits.max_bytes - len(doc)) + doc[-2:]
    assert len(payload) == cfg.limits.max_bytes
    gw = Gateway(cfg, now_ms=lambda: T0)
    try:
        await gw._process(gw._accept([("ov/site/d1/readings", payload, False)]))
        assert _logged(gw) == [(0, cfg.limits.max_bytes)]
        assert gw.pipeline.stats.readings_accepted == 1
    finally:
        gw.store.close()


def test_the_maximum_packet_size_leaves_room_for_topic_and_headers() -> None:
    limits = Limits()
    assert max_packet_size(limits) == limits.max_bytes + PACKET_ROOM
    # a message at the payload limit on a long valid topic fits, with room to spare
    topic = "edgekit/" + "s" * 32 + "/" + "d" * 32 + "/readings"
    assert publish_packet_size(topic, b"x" * limits.max_bytes) < max_packet_size(limits) - 1024
    assert publish_packet_size("t", b"") == 1 + 1 + 2 + 1 + 2 + 1
    assert publish_packet_size("t", b"x" * 200) == 1 + 2 + 2 + 1 + 2 + 1 + 200
