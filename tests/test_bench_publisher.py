"""``bench/bench_e2e.py --publisher raw``: its few lines of MQTT, checked against what it did not write. A real
Mosquitto takes its CONNECT and acknowledges every PUBLISH (QoS 1), a paho subscriber receives each message once,
and the gateway's decoder accepts every message whole: each board's readings with consecutive seqs, increasing
event times and the four metrics, as the paho publisher sends them."""

from __future__ import annotations

import importlib.util
import multiprocessing as mp
import sys
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from services import Proc

from gateway.model import Batch
from gateway.protocol import decode

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.integration


def _bench() -> Any:
    spec = importlib.util.spec_from_file_location("bench_e2e_under_test", REPO / "bench" / "bench_e2e.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_the_raw_publisher_speaks_mqtt_and_the_protocol(mosquitto: Proc) -> None:
    bench = _bench()
    bench.BOARDS = 7
    got: list[tuple[str, bytes]] = []
    lock = threading.Lock()
    subscribed = threading.Event()

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        with lock:
            got.append((msg.topic, bytes(msg.payload)))

    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="raw-pub-test-sub")
    sub.on_message = on_message
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.connect(mosquitto.host, mosquitto.port)
    sub.subscribe("edgekit/bench/+/readings", qos=1)
    sub.loop_start()
    try:
        assert subscribed.wait(10)
        results: Any = mp.get_context("fork").Queue()
        rate, seconds = 400.0, 1.5  # messages/s of this one process; a packet id wraps after 65,535
        bench.publisher_raw(0, 1, mosquitto.port, rate, seconds, time.time() + 0.2, results)
        res = results.get(timeout=5)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(got) < res["sent"]:
            time.sleep(0.05)
    finally:
        sub.loop_stop()
        sub.disconnect()
    assert res["sent"] == int(rate * seconds) and res["acked"] == res["sent"]
    assert len(got) == res["sent"]
    seqs: dict[str, list[int]] = {}
    times: dict[str, list[int]] = {}
    for topic, payload in got:
        msg = decode(topic, payload, int(time.time() * 1000))
        assert isinstance(msg, Batch) and not msg.rejected, payload[:200]
        assert len(msg.readings) == bench.PER_MESSAGE and msg.flushed_ms == msg.readings[-1].t_ms
        for r in msg.readings:
            assert set(r.metrics) == {"temp_c", "rh", "pressure_hpa", "vib"}
            assert all(isinstance(v, float) for v in r.metrics.values())
            seqs.setdefault(r.device, []).append(r.seq)
            times.setdefault(r.device, []).append(r.t_ms)
    assert sorted(seqs) == [f"bench-{i:04d}" for i in range(7)]
    for dev, ss in seqs.items():
        assert ss == list(range(len(ss))), dev  # each reading once, in order, none skipped
        assert all(a < b for a, b in zip(times[dev], times[dev][1:], strict=False)), dev
