"""Bridge mode's pieces without services: the input schema's lines (docs/scale-out.md), the files committed with
the checkpoint across crashes at any moment, and the Kafka record and producer as aiokafka itself reads them.

The Kafka producer is not run against a broker here (none can be installed on this machine): its configuration
is checked on aiokafka's own producer object, and its records are encoded and decoded with aiokafka's own record
batch format."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.bridge import (
    N_PER_POS,
    FileForwarder,
    committed_files,
    kafka_record,
    message_records,
    producer_config,
    reading_record,
    watermark_top,
)
from gateway.config import BridgeConfig, parse_config
from gateway.errors import ConfigError
from gateway.model import Reading

NAMES = st.from_regex(r"[a-z][a-z0-9_]{0,5}", fullmatch=True)
VALUES = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(-(2**53), 2**53),
    st.booleans(),
    st.text(max_size=8),
)
READINGS = st.builds(
    Reading,
    site=st.sampled_from(["north", "süd"]),
    device=st.sampled_from(["dev-1", "dev-2"]),
    boot=st.integers(0, 2**31 - 1),
    seq=st.integers(0, 2**31 - 1),
    t_ms=st.integers(1_500_000_000_000, 1_900_000_000_000),
    quality=st.sampled_from(["s", "c", "u"]),
    metrics=st.dictionaries(NAMES, VALUES, max_size=4),
)


@settings(max_examples=200, deadline=None)
@given(READINGS, st.integers(0, 2**40), st.one_of(st.none(), st.integers(0, 2**45)),
       st.one_of(st.none(), st.integers(0, 2**45)))  # fmt: skip
def test_a_line_is_the_documented_object(r: Reading, n: int, wm: int | None, wm0: int | None) -> None:
    line = reading_record(r, n, 1_764_072_003_040, wm, wm0)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    doc = json.loads(line)
    want = {"v", "site", "device", "boot", "seq", "t_ms", "q", "num", "str", "bool", "n", "received_ms"}
    want |= {"wm_ms"} if wm is not None else set()
    assert set(doc) == want | ({"wm0_ms"} if wm0 is not None else set())
    assert (doc["v"], doc["site"], doc["device"], doc["boot"], doc["seq"], doc["t_ms"], doc["q"], doc["n"]) == (
        1, r.site, r.device, r.boot, r.seq, r.t_ms, r.quality, n,
    )  # fmt: skip
    assert doc.get("wm_ms") == wm and doc.get("wm0_ms") == wm0 and doc["received_ms"] == 1_764_072_003_040
    for name, v in r.metrics.items():
        if isinstance(v, str):  # a metric in exactly one of num and str
            assert doc["str"][name] == v and name not in doc["num"] and name not in doc["bool"]
        elif isinstance(v, bool):  # a boolean in num as 1.0 / 0.0 and in bool
            assert doc["num"][name] == (1.0 if v else 0.0) and doc["bool"][name] is v
        else:
            assert doc["num"][name] == float(v) and isinstance(doc["num"][name], float)
            assert name not in doc["str"] and name not in doc["bool"]
    assert set(doc["num"]) | set(doc["str"]) == set(r.metrics)


ANY_READINGS = st.builds(
    Reading,
    site=st.text(max_size=6),
    device=st.text(max_size=6),
    boot=st.integers(0, 2**31 - 1),
    seq=st.integers(0, 2**31 - 1),
    t_ms=st.integers(0, 2**62),
    quality=st.sampled_from(["s", "c", "u"]),
    metrics=st.dictionaries(st.text(max_size=6), st.one_of(VALUES, st.floats(), st.integers()), max_size=5),
)


@settings(max_examples=300, deadline=None)
@given(ANY_READINGS, st.integers(0, 2**62), st.integers(0, 2**62), st.one_of(st.none(), st.integers(0, 2**62)),
       st.one_of(st.none(), st.integers(0, 2**62)))  # fmt: skip
def test_the_fast_line_is_the_references(r: Reading, n: int, received: int, wm: int | None, wm0: int | None) -> None:
    """Any names (quotes, backslashes, control characters, non-ASCII), any values (NaN and huge integers included):
    the same bytes as ``json.dumps`` of the whole object, or the same error."""
    from gateway.bridge import reading_record_reference

    try:
        want: bytes | type[Exception] = reading_record_reference(r, n, received, wm, wm0)
    except (ValueError, OverflowError) as exc:
        want = type(exc)
    try:
        got: bytes | type[Exception] = reading_record(r, n, received, wm, wm0)
    except (ValueError, OverflowError) as exc:
        got = type(exc)
    assert got == want


@settings(max_examples=200, deadline=None)
@given(st.lists(READINGS, min_size=1, max_size=20), st.integers(1, 2**30), st.one_of(st.none(), st.integers(0, 2**45)))
def test_n_and_the_watermark_fields_of_a_message(readings: list[Reading], pos: int, wm0: int | None) -> None:
    received = 1_700_000_000_000
    limits = {"min_time_ms": 1_600_000_000_000, "max_future_ms": 300_000}
    lines = [json.loads(x) for x in message_records(readings, pos, received, wm0_ms=wm0, **limits)]
    assert [d["n"] for d in lines] == [pos * N_PER_POS + i for i in range(len(readings))]
    # brute force: the engine's rule (gateway/engine/engine.py _process) for what moves a watermark
    movers = [r.t_ms for r in readings if r.quality != "u" and 1_600_000_000_000 <= r.t_ms <= received + 300_000]
    assert all("wm_ms" not in d for d in lines[:-1])
    assert lines[-1].get("wm_ms") == (max(movers) if movers else None) == watermark_top(readings, received, **limits)
    assert all(d.get("wm0_ms") == wm0 for d in lines)  # every line: the watermark field of the earlier messages


def test_the_engine_moves_its_watermark_to_wm_ms() -> None:
    """Against the gateway's own engine: a device watermark (bound 0) after the message is its wm_ms."""
    cfg = parse_config(
        {"engine": {"max_future": "60s", "watermark": {"mode": "device", "out_of_orderness": "0s"}},
         "windows": [{"name": "w", "kind": "tumbling", "size": "1m", "metrics": ["x"], "aggregates": ["count"]}]},
        env={},
    )  # fmt: skip
    from gateway.pipeline import Pipeline

    pipe = Pipeline(cfg)
    now = 1_700_000_000_000
    rs = [{"b": 1, "s": 1, "t": now - 5000, "q": "s", "m": {"x": 1}}, {"b": 1, "s": 2, "t": now - 1000, "q": "u",
          "m": {"x": 2}}, {"b": 1, "s": 3, "t": now + 120_000, "q": "s", "m": {"x": 3}},
          {"b": 1, "s": 4, "t": now - 3000, "q": "c", "m": {"x": 4}}]  # fmt: skip
    out = pipe.handle("edgekit/s/d1/readings", json.dumps({"v": 1, "dev": "d1", "r": rs}).encode(), now)
    lines = message_records(out.readings, 7, now, min_time_ms=cfg.engine.min_time_ms,
                            max_future_ms=cfg.engine.max_future_ms)  # fmt: skip
    assert len(lines) == 4  # every accepted reading is forwarded, also those the engine refuses
    assert json.loads(lines[-1])["wm_ms"] == now - 3000 == pipe.engine.device_watermark("d1")


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.tuples(st.integers(-600, 600), st.sampled_from(["s", "c", "u"])), min_size=1, max_size=4),
                min_size=1, max_size=8))  # fmt: skip
def test_wm0_ms_is_the_global_engines_watermark_before_the_message(
    tmp_path_factory: pytest.TempPathFactory, messages: list[list[tuple[int, str]]]
) -> None:
    """Against the gateway's own engine in the global mode (bound 5 s): before each message, its watermark is the
    ``wm0_ms`` of that message's lines minus the bound (the largest ``wm_ms`` of the earlier messages), whatever
    the messages' times, qualities and the time limits (a reading over 60 s in the future moves nothing)."""
    from gateway.pipeline import Pipeline

    cfg = parse_config(
        {"engine": {"max_future": "60s", "watermark": {"mode": "global", "out_of_orderness": "5s"}},
         "windows": [{"name": "w", "kind": "tumbling", "size": "1m", "metrics": ["x"], "aggregates": ["count"]}]},
        env={},
    )  # fmt: skip
    pipe = Pipeline(cfg)
    fw = FileForwarder(tmp_path_factory.mktemp("wm0"), 1 << 20, 1 << 30)
    now = 1_700_000_000_000
    seq = 0
    for i, msg in enumerate(messages):
        rs = []
        for dt, q in msg:
            seq += 1
            rs.append({"b": 1, "s": seq, "t": now + dt * 1000, "q": q, "m": {"x": 1}})
        before = pipe.engine.device_watermark("d1")
        out = pipe.handle(f"edgekit/s/d{i % 2}/readings", json.dumps({"v": 1, "dev": f"d{i % 2}", "r": rs}).encode(),
                          now)  # fmt: skip
        limits = {"min_time_ms": cfg.engine.min_time_ms, "max_future_ms": cfg.engine.max_future_ms}
        assert before == (None if fw.top is None else fw.top - 5000)
        if not out.readings:  # every reading dead-lettered (over 300 s ahead): nothing forwarded, as in the bridge
            continue
        recs = message_records(out.readings, i + 1, now, wm0_ms=fw.top, **limits)
        assert {json.loads(x).get("wm0_ms") for x in recs} == {fw.top}
        fw.append(recs, (i + 1) * N_PER_POS, now, watermark_top(out.readings, now, **limits))
    fw.close()


# ----------------------------------------------------------------------------- files across crashes


def _lines(start: int, count: int, wm0: int | None = None) -> list[bytes]:
    return [
        b'{"n":%d,"wm0_ms":%s}\n' % (n, b"null" if wm0 is None else b"%d" % wm0) for n in range(start, start + count)
    ]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["msg", "ckpt", "fail", "crash", "crash_prepared"]), st.integers(1, 5),
                          st.one_of(st.none(), st.integers(0, 50))), max_size=40))  # fmt: skip
def test_the_files_hold_every_line_once_whatever_crashes(
    tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[str, int, int | None]]
) -> None:
    """A model of the gateway: a log of messages, checkpoints (state saved, log truncated), checkpoints that fail
    after their first phase, crashes before and after a checkpoint's first phase. The committed files, after a
    final clean stop, hold every logged line exactly once, in order, and no file is renamed twice; and each line's
    ``wm0_ms`` is the largest watermark field of the messages before it, as without a crash (the forwarder's
    ``top`` is restored from the checkpoint and moved again by the replay)."""
    d = tmp_path_factory.mktemp("bridge")
    log: list[tuple[int, int, int | None]] = []  # (pos, lines, watermark field) of each logged message
    saved: tuple[int, dict[str, Any] | None] = (0, None)  # the committed checkpoint: position and bridge state
    clock = [0]

    def take(fw: FileForwarder, pos: int, k: int, top: int | None) -> None:
        fw.append(_lines(pos * N_PER_POS, k, fw.top), pos * N_PER_POS, clock[0], top)

    def start() -> FileForwarder:
        fw = FileForwarder(d, roll_bytes=40, roll_interval_ms=50)
        fw.recover(saved[1], clock[0])
        for pos, k, top in log:  # the replay
            if pos > saved[0]:
                take(fw, pos, k, top)
        return fw

    fw = start()
    for what, k, top in steps:
        clock[0] += 10
        if what == "msg":
            pos = len(log) + 1
            log.append((pos, k, top))
            take(fw, pos, k, top)
        elif what in ("ckpt", "fail"):
            state = fw.prepare(clock[0])
            if what == "ckpt":
                saved = (len(log), state)
                fw.commit()
        elif what in ("crash", "crash_prepared"):
            if what == "crash_prepared":
                fw.prepare(clock[0], roll=True)  # the transaction never committed
            fw.close()
            fw = start()
    saved = (len(log), fw.prepare(clock[0], roll=True))
    fw.commit()
    fw.close()
    assert not [p for p in d.iterdir() if p.name.startswith(".")]
    got = [json.loads(x) for p in committed_files(d) for x in p.read_bytes().splitlines()]
    want: list[dict[str, int | None]] = []
    high: int | None = None
    for pos, k, top in log:
        want += [{"n": pos * N_PER_POS + i, "wm0_ms": high} for i in range(k)]
        high = top if high is None or (top is not None and top > high) else high
    assert got == want
    for p in committed_files(d):  # named by the first n in it
        assert int(p.name[9:29]) == json.loads(p.read_bytes().splitlines()[0])["n"]


# ------------------------------------------------------------------------------------------------ Kafka


def test_a_kafka_record_round_trips_through_aiokafkas_batch_format() -> None:
    from aiokafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder

    r = Reading("north", "dev-7", 3, 41, 1_764_072_003_000, "s", {"temp_c": 21.5, "door": "open", "relay": True})
    line = reading_record(r, 5 * N_PER_POS, 1_764_072_003_040, 1_764_072_003_000)
    key, value = kafka_record(line)
    assert key == b"north/dev-7" and value == line.rstrip(b"\n")
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=0, producer_id=7,
                                        producer_epoch=0, base_sequence=0, batch_size=1 << 20)  # fmt: skip
    builder.append(0, timestamp=None, key=key, value=value, headers=[])
    batch = DefaultRecordBatch(bytes(builder.build()))
    (rec,) = list(batch)
    assert (rec.key, json.loads(rec.value)) == (b"north/dev-7", json.loads(line))


async def test_the_producer_is_idempotent_and_waits_for_every_replica() -> None:
    from aiokafka import AIOKafkaProducer
    from aiokafka.partitioner import DefaultPartitioner

    cfg = BridgeConfig(enabled=True, to="kafka", dir="x", kafka_servers=("k1:9092", "k2:9092"), kafka_topic="t")
    kwargs = producer_config(cfg, "site-a")
    producer = AIOKafkaProducer(**kwargs)  # not started: no broker here
    try:
        assert producer._txn_manager is not None  # idempotence on: a producer id and sequence numbers
        assert producer._sender._acks == -1  # acks=all
        assert producer.client._bootstrap_servers == ["k1:9092", "k2:9092"]
        assert producer.client._client_id == "site-a"
    finally:
        await producer.stop()
    # one device's records always go to one partition (its readings stay in order there)
    parts = list(range(12))
    assert len({DefaultPartitioner()(b"north/dev-7", parts, parts) for _ in range(5)}) == 1


def test_kafka_needs_servers_and_the_modes_exclude_each_other() -> None:
    with pytest.raises(ConfigError, match=r"bridge\.kafka_servers: required"):
        parse_config({"bridge": {"to": "kafka", "dir": "/tmp/x"}}, env={})
    with pytest.raises(ConfigError, match=r"bridge\.dir: required"):
        parse_config({"bridge": {}}, env={})
    with pytest.raises(ConfigError, match="one mode"):
        parse_config({"bridge": {"dir": "a"}, "sink_only": {"dir": "b"}}, env={})
    cfg = parse_config({"bridge": {"to": "kafka", "dir": "o", "kafka_servers": "k1:9092,k2:9093"}}, env={})
    assert cfg.bridge.kafka_servers == ("k1:9092", "k2:9093") and cfg.bridge.enabled
    env = parse_config({}, env={"EDGEKIT_BRIDGE_DIR": "/srv/in"})
    assert env.bridge.enabled and env.bridge.dir == "/srv/in" and env.bridge.to == "files"


def test_committed_files_skip_what_is_in_progress(tmp_path: Path) -> None:
    fw = FileForwarder(tmp_path, roll_bytes=1 << 20, roll_interval_ms=10**9)
    fw.recover(None, 0)
    fw.append(_lines(N_PER_POS, 3), N_PER_POS, 0)
    fw.prepare(0)
    fw.commit()
    assert committed_files(tmp_path) == []  # not due: still in progress, hidden
    fw.prepare(0, roll=True)
    assert committed_files(tmp_path) == []  # complete, but the checkpoint has not committed
    fw.commit()
    assert [p.name for p in committed_files(tmp_path)] == [f"readings-{N_PER_POS:020d}.jsonl"]


async def test_with_kafka_away_the_files_wait_and_a_stop_is_prompt(tmp_path: Path) -> None:
    """aiokafka's real producer against a port where no broker listens: the failure is counted, the committed file
    stays in the outbox (nothing is lost), and the forwarder stops when told."""
    import asyncio
    import socket

    from gateway.bridge import KafkaForwarder

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fw = FileForwarder(tmp_path, roll_bytes=1, roll_interval_ms=0)
    fw.recover(None, 0)
    fw.append(_lines(N_PER_POS, 2), N_PER_POS, 0)
    fw.prepare(0)
    fw.commit()
    (waiting,) = committed_files(tmp_path)
    cfg = BridgeConfig(enabled=True, to="kafka", dir=str(tmp_path), kafka_servers=(f"127.0.0.1:{port}",))
    kafka = KafkaForwarder(cfg, tmp_path, "site-a")
    stop = asyncio.Event()
    task = asyncio.create_task(kafka.run(stop))
    for _ in range(200):
        if kafka.failures:
            break
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(task, 10)
    assert kafka.failures >= 1 and kafka.sent == 0 and committed_files(tmp_path) == [waiting]


async def test_probe_in_each_mode_looks_at_what_that_mode_uses(tmp_path: Path) -> None:
    """``check --probe``: sink-only probes no broker but the results folder; bridge mode its folder as well."""
    import socket

    from gateway.probe import probe_all

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens: the database probe fails, quickly
    url = f"http://127.0.0.1:{port}"
    sink = parse_config({"influx": {"url": url}, "sink_only": {"dir": str(tmp_path / "out")}}, env={})
    found = await probe_all(sink, timeout_s=2.0)
    assert [p.what for p in found] == ["database", "results"] and found[1].outcome == "missing"
    (tmp_path / "out").mkdir()
    assert (await probe_all(sink, timeout_s=2.0))[1].ok
    bridge = parse_config({"influx": {"url": url}, "mqtt": {"url": f"mqtt://127.0.0.1:{port}"},
                           "bridge": {"dir": str(tmp_path / "in" / "new")}}, env={})  # fmt: skip
    found = await probe_all(bridge, timeout_s=2.0)
    assert [p.what for p in found] == ["broker", "database", "bridge"] and found[2].ok, found
    assert "creates it" in found[2].message


def test_a_file_sent_and_deleted_before_a_crash_is_not_an_error(tmp_path: Path) -> None:
    """Kafka mode deletes a file once sent; the last checkpoint may still name it complete-to-rename."""
    fw = FileForwarder(tmp_path, roll_bytes=1 << 20, roll_interval_ms=10**9)
    fw.recover(None, 0)
    fw.append(_lines(N_PER_POS, 2), N_PER_POS, 0)
    saved = fw.prepare(0, roll=True)
    fw.commit()
    (sent,) = committed_files(tmp_path)
    sent.unlink()  # sent to Kafka; then a crash before the next checkpoint
    fw.close()
    again = FileForwarder(tmp_path, roll_bytes=1 << 20, roll_interval_ms=10**9)
    again.recover(saved, 0)
    assert committed_files(tmp_path) == [] and again.files == 0


def test_an_in_progress_file_cut_short_by_a_power_cut_keeps_its_whole_lines(tmp_path: Path) -> None:
    fw = FileForwarder(tmp_path, roll_bytes=1 << 20, roll_interval_ms=10**9)
    fw.recover(None, 0)
    fw.append(_lines(N_PER_POS, 3), N_PER_POS, 0)
    saved = fw.prepare(0)
    fw.close()
    (hidden,) = [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    data = hidden.read_bytes()
    hidden.write_bytes(data[: len(data) // 2])  # what the disk kept of it
    again = FileForwarder(tmp_path, roll_bytes=1 << 20, roll_interval_ms=10**9)
    again.recover(saved, 0)
    again.append(_lines(2 * N_PER_POS, 1), 2 * N_PER_POS, 0)
    again.prepare(0, roll=True)
    again.commit()
    (done,) = committed_files(tmp_path)
    assert [json.loads(x)["n"] for x in done.read_bytes().splitlines()] == [N_PER_POS, 2 * N_PER_POS]


async def test_the_gateway_in_bridge_mode_forwards_counts_runs_patterns_and_does_not_window(tmp_path: Path) -> None:
    """The windows are the job's; the patterns, which ``compile`` leaves to the site, run at the bridge."""
    from gateway.app import Gateway

    now = 1_764_072_100_000
    doc = {
        "influx": {"url": "http://127.0.0.1:9"},  # never written to here
        "state": {"dir": str(tmp_path / "state")},
        "bridge": {"dir": str(tmp_path / "in"), "roll_bytes": 1},
        "windows": [{"name": "w", "kind": "tumbling", "size": "1m", "metrics": ["x"], "aggregates": ["count"]}],
        "patterns": [{"name": "high", "steps": [{"name": "h", "where": "x > 2"}]}],
    }
    gw = Gateway(parse_config(doc, env={}), now_ms=lambda: now)
    try:
        await gw.recover()
        rs = [{"b": 1, "s": s, "t": now - 300_000 + s * 60_000, "q": "s", "m": {"x": s}} for s in range(4)]
        payload = json.dumps({"v": 1, "dev": "d1", "r": rs, "flushed": rs[-1]["t"]}).encode()
        await gw._process(gw._accept([("edgekit/north/d1/readings", payload, False)]))  # a file due: a checkpoint
        (done,) = committed_files(tmp_path / "in")
        docs = [json.loads(x) for x in done.read_bytes().splitlines()]
        assert [(d["seq"], d["num"]["x"]) for d in docs] == [(s, float(s)) for s in range(4)]
        assert docs[-1]["wm_ms"] == now - 300_000 + 3 * 60_000 and gw.pipeline.stats.window_results == 0
        # the flushed marker moved the device's watermark past the reading x = 3: its alert is out
        assert gw.pipeline.stats.alerts == 1 and gw.outbox.queue[0][0] == "edgekit/_gateway/alerts/north/pattern"
        text = gw.metrics.render().decode()
        assert "\nedgekit_bridge_lines_total 4.0\n" in text and "\nedgekit_bridge_files_total 1.0\n" in text
        assert gw.snapshot_stats()["bridge"] == {"lines": 4, "files": 1, "in_progress_bytes": 0}
    finally:
        assert gw.bridge is not None
        gw.bridge.close()
        gw.store.close()
