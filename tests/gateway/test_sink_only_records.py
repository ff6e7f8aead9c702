"""Sink-only mode's records (docs/scale-out.md, "Output") become exactly the points the gateway writes itself:
over arbitrary window results, late readings and pattern alerts, the record a job writes for one (as documented)
gives the gateway's own line."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import services
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.alerts import Alert
from gateway.app import state_path
from gateway.config import parse_config
from gateway.engine.outputs import LateReading, WindowResult
from gateway.errors import ConfigError, StateError
from gateway.sinkonly import SinkOnly, alert_line, late_line, window_line
from gateway.state import StateStore

NAME = st.from_regex(r"[a-z][a-z0-9_-]{0,7}", fullmatch=True)
TIME = st.integers(1_600_000_000_000, 1_900_000_000_000)
FLOAT = st.floats(allow_nan=False, allow_infinity=False, width=64)


@st.composite
def window_results(draw: st.DrawFn) -> WindowResult:
    names = draw(st.lists(st.sampled_from(["count", "sum", "mean", "min", "max", "stddev", "first", "last"]),
                          unique=True, min_size=1))  # fmt: skip
    aggs = {n: draw(FLOAT) for n in names}
    start = draw(TIME)
    kind = draw(st.sampled_from(["device", "site"]))
    site = draw(NAME)
    key = draw(NAME) if kind == "device" else site  # a site window's key is its site
    res = WindowResult(draw(NAME), kind, key, site, start,
                       start + draw(st.integers(1, 10**7)), draw(NAME), draw(st.integers(0, 10**6)), aggs, 1,
                       "watermark")  # fmt: skip
    res.emitted_ms = draw(TIME)
    return res


@settings(max_examples=300, deadline=None)
@given(window_results())
def test_a_window_record_gives_the_gateways_window_point(res: WindowResult) -> None:
    doc = json.loads(res.to_payload())
    doc.pop("emitted_ms")  # the job does not write it; the sink-only gateway stamps its own
    assert window_line(doc, res.emitted_ms) == res.to_line()


@settings(max_examples=300, deadline=None)
@given(NAME, NAME, NAME, NAME, TIME, st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1), st.integers(0, 10**9),
       st.one_of(st.none(), TIME), st.one_of(st.none(), FLOAT))  # fmt: skip
def test_a_late_record_gives_the_gateways_late_point(
    window: str, site: str, device: str, metric: str, t: int, boot: int, seq: int, late_by: int, wm: int | None,
    value: float | None,
) -> None:  # fmt: skip
    late = LateReading(window, site, device, metric, t, boot, seq, late_by, wm, "too_late", value)
    doc = {"v": 1, "window": window, "site": site, "device": device, "metric": metric, "t_ms": t, "boot": boot,
           "seq": seq, "late_by_ms": late_by, "watermark_ms": wm, "reason": "too_late", "value": value}  # fmt: skip
    assert late_line(json.loads(json.dumps(doc))) == late.to_line()


CONFIG = parse_config(
    {
        "metric_types": {"integer": ["level"], "boolean": ["relay"], "string": ["door"]},
        "patterns": [
            {"name": "p", "steps": [{"name": "a", "where": "temp_c > 1"}, {"name": "b", "where": 'door == "open"'}]},
            {"name": "q", "message": "its own words", "steps": [{"name": "x", "where": "level > 2"},
                                                                {"name": "y", "where": "relay == true"}]},
        ]
    },
    env={},
)  # fmt: skip


@st.composite
def alerts(draw: st.DrawFn) -> Alert:
    name = draw(st.sampled_from(["p", "q"]))
    key = draw(NAME)
    if name == "p":
        details = {"a.temp_c": draw(FLOAT), "b.door": draw(st.text(max_size=12))}
        message = f"p: a -> b on {key}"
    else:
        details = {"x.level": draw(st.integers(-(2**53), 2**53)), "y.relay": draw(st.booleans())}
        message = "its own words"
    readings = tuple(draw(st.lists(st.tuples(NAME, st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1)),
                                   min_size=1, max_size=5)))  # fmt: skip
    first = draw(TIME)
    return Alert(source="pattern", name=name, site=draw(NAME), key=key, severity=draw(st.sampled_from(["info",
                 "warning", "critical"])), first_ms=first, last_ms=first + draw(st.integers(0, 10**6)),
                 readings=readings, message=message, details=details)  # fmt: skip


WINDOW_RECORD = {"v": 1, "window": "w", "site": "s", "device": "d", "metric": "m", "start_ms": 1_780_000_000_000,
                 "end_ms": 1_780_000_060_000, "count": 1, "aggregates": {"mean": 1.5}, "revision": 1,
                 "fired": "watermark"}  # fmt: skip
"""One result of window ``w`` (mean 1.5) in the job's schema, for the tests that run a sink-only gateway."""


def _flink_string(v: object) -> str:
    """``CAST(v AS STRING)`` as Flink writes it: booleans in upper case."""
    return str(v).upper() if isinstance(v, bool) else str(v)


@settings(max_examples=300, deadline=None)
@given(alerts())
def test_an_alert_record_gives_the_gateways_alert_point(a: Alert) -> None:
    doc = {"v": 1, "source": "pattern", "name": a.name, "site": a.site, "key": a.key, "severity": a.severity,
           "first_ms": a.first_ms, "last_ms": a.last_ms, "readings": [f"{d}/{b}/{s}" for d, b, s in a.readings],
           "details": {k: _flink_string(v) for k, v in a.details.items()}}  # fmt: skip
    assert alert_line(json.loads(json.dumps(doc)), CONFIG) == a.to_line()


def test_a_failed_checkpoint_is_tried_again_and_the_sink_only_gateway_goes_on(
    tmp_path: Path, influxdb_v1: services.Proc
) -> None:
    """A checkpoint that fails (here the state file's transaction raises, as on a full disk) changes nothing: the
    gateway goes on reading files and takes the checkpoint at the next interval; after a restart no file is read
    again."""
    results = tmp_path / "out"
    rec = dict(WINDOW_RECORD)
    (results / "windows").mkdir(parents=True)
    (results / "windows" / "part-0").write_text(json.dumps(rec) + "\n")
    doc = {
        "mqtt": {"client_id": "sink-ckpt-fail"},
        "influx": {"target": "v1", "url": influxdb_v1.url, "database": "sink_ckpt_fail"},
        "state": {"dir": str(tmp_path / "state"), "checkpoint_interval_s": 0.05},
        "sink_only": {"dir": str(results), "poll_interval_s": 0.05},
    }
    cfg = parse_config(doc, env={})

    async def run_until(so: SinkOnly, done: Callable[[], bool]) -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(so.run(stop))
        for _ in range(400):
            if done() or task.done():
                break
            await asyncio.sleep(0.025)
        stop.set()
        await task  # raises if the run ended with an error

    so = SinkOnly(cfg)
    real, calls = so.store.checkpoint, [0]

    def failing_once(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == 2:  # the first after the start
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)

    so.store.checkpoint = failing_once  # type: ignore[method-assign]
    asyncio.run(run_until(so, lambda: so.checkpoint_failures == 1 and so.checkpoints >= 3))
    assert so.checkpoint_failures == 1 and so.checkpoints >= 3 and so.files == 1
    again = SinkOnly(cfg)
    asyncio.run(run_until(again, lambda: again.checkpoints >= 2))
    assert again.recovered == 1 and again.files == 0  # the file is known: not read twice


def test_a_state_file_of_another_mode_is_left_as_it_was(tmp_path: Path, influxdb_v1: services.Proc) -> None:
    """A sink-only gateway given the state file of a standalone gateway (the same client id and state.dir) refuses
    to start and leaves that gateway's checkpoint and spool as they were: no checkpoint or health point of its own
    in them, their spooled points not written to its database (the error says to give it a client id of its own;
    the other gateway must still find its state)."""
    doc = {
        "mqtt": {"client_id": "shared-id"},
        "influx": {"target": "v1", "url": influxdb_v1.url, "database": "sink_other_mode"},
        "state": {"dir": str(tmp_path / "state")},
        "sink_only": {"dir": str(tmp_path / "out"), "poll_interval_s": 0.05},
    }
    cfg = parse_config(doc, env={})
    theirs = {"version": 9, "engine": {"keys": ["the standalone gateway's state"]}}
    store = StateStore(state_path(cfg))
    store.checkpoint(42, theirs, 1_780_000_000_000)
    store.spool([(1, ["theirs,site=s v=1i 1780000000000000000"])])  # a point it has not written yet
    store.close()

    with pytest.raises(StateError, match="another mode"):
        asyncio.run(SinkOnly(cfg).run(asyncio.Event()))

    store = StateStore(state_path(cfg))
    try:
        ck = store.load_checkpoint()
        assert ck is not None and (ck.pos, ck.state) == (42, theirs)
        assert store.spool_lines == 1  # not written into this gateway's database
    finally:
        store.close()


def test_a_stop_does_not_wait_for_a_hung_broker(tmp_path: Path, influxdb_v1: services.Proc) -> None:
    """``publish``: a stop while the publisher waits for a broker that took the TCP connection and never answers (a
    hung Mosquitto: SIGSTOP) ends at once, as without ``publish``, not after the connection attempt times out
    (10 s); the message not sent is in the final checkpoint."""
    broker = services.start_mosquitto(tmp_path / "broker", services.free_port())
    results = tmp_path / "out"
    rec = dict(WINDOW_RECORD)
    (results / "windows").mkdir(parents=True)
    (results / "windows" / "part-0").write_text(json.dumps(rec) + "\n")
    doc = {
        "mqtt": {"client_id": "sink-hung-broker", "url": f"mqtt://127.0.0.1:{broker.port}", "reconnect_min_s": 0.1},
        "influx": {"target": "v1", "url": influxdb_v1.url, "database": "sink_hung_broker"},
        "state": {"dir": str(tmp_path / "state")},
        "sink_only": {"dir": str(results), "poll_interval_s": 0.05, "publish": True},
        "windows": [{"name": "w", "kind": "tumbling", "size": "1m", "metrics": ["m"], "aggregates": ["mean"],
                     "publish": True}],
    }  # fmt: skip
    cfg = parse_config(doc, env={})
    so = SinkOnly(cfg)
    took: list[float] = []

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(so.run(stop))
        for _ in range(400):
            if so.files == 1 or task.done():
                break
            await asyncio.sleep(0.025)
        await asyncio.sleep(0.3)  # the publisher's connection attempt is under way
        t0 = time.monotonic()
        stop.set()
        await task
        took.append(time.monotonic() - t0)

    os.kill(broker.pid, signal.SIGSTOP)
    try:
        asyncio.run(main())
    finally:
        os.kill(broker.pid, signal.SIGCONT)
        broker.stop()
    assert so.files == 1 and so.mqtt_stats.connects == 0
    assert took[0] < 5.0, took  # 10 s: the attempt's time-out; a stop takes about 0.1 s here
    store = StateStore(state_path(cfg))
    try:
        ck = store.load_checkpoint()
        assert ck is not None and [t for t, _ in ck.state["outbox"]] == ["edgekit/_gateway/windows/s/w"]
    finally:
        store.close()


def test_check_says_what_a_sink_only_gateway_uses_of_the_broker(
    tmp_path: Path, mosquitto: services.Proc, capsys: pytest.CaptureFixture[str]
) -> None:
    """``check``: a sink-only gateway subscribes to nothing; with ``publish`` it connects to the broker, so
    ``check --probe`` logs in there as well (with a real Mosquitto), and without it probes no broker."""
    from gateway.cli import main
    from gateway.probe import probe_all

    (tmp_path / "out").mkdir()
    text = (
        f'[mqtt]\nclient_id = "sink-check"\nurl = "mqtt://127.0.0.1:{mosquitto.port}"\n'
        f'[influx]\ntarget = "v1"\nurl = "http://127.0.0.1:9"\ndatabase = "x"\n'
        f'[sink_only]\ndir = "{tmp_path / "out"}"\npublish = true\n'
    )
    path = tmp_path / "sink.toml"
    path.write_text(text, encoding="utf-8")
    assert main(["check", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "publish" in out and "subscribe: nothing (sink-only mode)\n" in out, out
    found = asyncio.run(probe_all(parse_config({"mqtt": {"url": f"mqtt://127.0.0.1:{mosquitto.port}",
                                                         "client_id": "edgekit-sink"},
                                                "sink_only": {"dir": str(tmp_path / "out"), "publish": True}},
                                               env={}), timeout_s=2.0))  # fmt: skip
    assert [p.what for p in found] == ["broker", "database", "results"] and found[0].ok, found
    quiet = parse_config({"sink_only": {"dir": str(tmp_path / "out")}}, env={})
    assert [p.what for p in asyncio.run(probe_all(quiet, timeout_s=2.0))] == ["database", "results"]


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
RECORDS: dict[str, dict[str, object]] = {
    "windows": {"v": 1, "window": "w", "site": "s", "device": "d", "metric": "m", "start_ms": 1_780_000_000_000,
                "end_ms": 1_780_000_060_000, "count": 1, "aggregates": {"mean": 1.5}, "revision": 1,
                "fired": "watermark"},
    "late": {"v": 1, "window": "w", "site": "s", "device": "d", "metric": "m", "t_ms": 1_780_000_000_000, "boot": 1,
             "seq": 2, "late_by_ms": 5, "watermark_ms": 1_780_000_000_005, "reason": "too_late", "value": 1.0},
    "alerts": {"v": 1, "source": "pattern", "name": "p", "site": "s", "key": "k", "severity": "warning",
               "first_ms": 1_780_000_000_000, "last_ms": 1_780_000_000_001, "readings": ["d/1/2"],
               "details": {"a.temp_c": "2.5"}},
}  # fmt: skip


@st.composite
def result_lines(draw: st.DrawFn) -> tuple[str, bytes]:
    """A record of the schema with one field replaced by any JSON value (``Infinity`` and ``NaN`` too, as Python's
    and Java's encoders write them), or nested past Python's recursion limit, or any bytes."""
    kind = draw(st.sampled_from(sorted(RECORDS)))
    how = draw(st.sampled_from(["field", "deep", "bytes"]))
    if how == "deep":
        depth = draw(st.integers(1, 200_000))
        return kind, b"[" * depth + b"]" * depth
    if how == "bytes":
        return kind, draw(st.binary(max_size=64)).replace(b"\n", b" ")
    rec = dict(RECORDS[kind])
    rec[draw(st.sampled_from(sorted(rec)))] = draw(JSON_VALUES | st.sampled_from([1e400, -1e400, 2**80]))
    return kind, json.dumps(rec).encode()


@pytest.fixture(scope="module")
def sink_only(tmp_path_factory: pytest.TempPathFactory) -> SinkOnly:
    base = tmp_path_factory.mktemp("sink-only-lines")
    return SinkOnly(parse_config({
        "mqtt": {"client_id": "edgekit-sink"}, "state": {"dir": str(base / "state")},
        "sink_only": {"dir": str(base / "out"), "publish": True},
        "patterns": [{"name": "p", "steps": [{"name": "a", "where": "temp_c > 1"}, {"name": "b", "where": "rh < 2"}]}],
        "windows": [{"name": "w", "kind": "tumbling", "size": "1m", "metrics": ["m"], "aggregates": ["mean"],
                     "publish": True}]}, env={}))  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(line=result_lines())
def test_any_line_becomes_one_point_or_one_dead_letter_and_never_stops_the_gateway(
    sink_only: SinkOnly, line: tuple[str, bytes]
) -> None:
    """Whatever a result file holds, each line that is not blank gives exactly one line to write (its point, or a
    ``bad_result`` dead letter): an error escaping here would end the process, and the restart would read the same
    file again, forever."""
    kind, text = line
    so = sink_only
    before = so.bad_records
    points, _, _ = so._convert(kind, so.root / kind / "part-0", [text + b"\n"], 1)
    assert len(points) == (1 if text.strip() else 0)
    assert (so.bad_records > before) == (points[0].startswith("dead_letter,") if points else False)


def test_a_reload_is_refused_and_does_not_end_a_sink_only_gateway(
    tmp_path: Path, influxdb_v1: services.Proc, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGHUP (``edgekit-gateway reload --pid``, systemd's ``ExecReload=`` without a metrics port) asks a gateway to
    read its configuration again; a sink-only gateway does not reload: it says so and goes on, and stops cleanly
    later (SIGHUP's default action would end it as a crash does, without its final checkpoint). ``reload`` with its
    configuration says so without asking it."""
    import subprocess
    import sys

    from gateway.cli import main

    results = tmp_path / "out"
    (results / "windows").mkdir(parents=True)
    text = (
        f'[mqtt]\nclient_id = "sink-hup"\n[influx]\ntarget = "v1"\nurl = "{influxdb_v1.url}"\ndatabase = "sink_hup"\n'
        f'[state]\ndir = "{tmp_path / "state"}"\n[sink_only]\ndir = "{results}"\npoll_interval_s = 0.05\n'
        '[log]\nformat = "text"\n'
    )
    path = tmp_path / "sink.toml"
    path.write_text(text, encoding="utf-8")
    bystander = subprocess.Popen(["sleep", "30"])  # SIGHUP ends it: whether one was sent
    try:
        assert main(["reload", "--config", str(path), "--pid", str(bystander.pid)]) == 2
        assert "sink-only" in capsys.readouterr().err
        time.sleep(0.1)
        assert bystander.poll() is None  # no SIGHUP sent
    finally:
        bystander.kill()
        bystander.wait()
    stats, out = tmp_path / "stats.json", tmp_path / "gateway.log"
    with open(out, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "run", "--config", str(path), "--stats-file",
                                 str(stats)], stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        for _ in range(400):
            if stats.exists() or proc.poll() is not None:
                break
            time.sleep(0.025)
        proc.send_signal(signal.SIGHUP)
        for _ in range(400):
            if b"does not reload" in out.read_bytes() or proc.poll() is not None:
                break
            time.sleep(0.025)
        assert proc.poll() is None, out.read_text(errors="replace")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, out.read_text(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert b"sink-only gateway stopped" in out.read_bytes()


def test_the_stats_file_goes_on_while_the_reader_waits_for_a_full_spool(tmp_path: Path) -> None:
    """InfluxDB away (nothing listens at its address) and the spool full: the reader waits in the middle of its
    backlog for room. The stats file (``top``) goes on saying so meanwhile, as the gateway's does, instead of stopping
    with the reader until the whole backlog is read."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: InfluxDB is away
    results = tmp_path / "out"
    (results / "windows").mkdir(parents=True)
    rec = dict(WINDOW_RECORD)
    lines = [json.dumps({**rec, "start_ms": rec["start_ms"] + i}) for i in range(300)]  # type: ignore[operator]
    for n in range(3):  # the first fills the spool past its limit: the reader waits in the second
        (results / "windows" / f"part-{n}").write_text("\n".join(lines[n * 100 : n * 100 + 100]) + "\n")
    doc = {
        "mqtt": {"client_id": "sink-full-spool"},
        "influx": {"target": "v1", "url": f"http://127.0.0.1:{port}", "database": "x", "batch_size": 10,
                   "max_buffered": 10, "retry_max_s": 0.2, "timeout_s": 0.5},
        "state": {"dir": str(tmp_path / "state"), "spool_max_bytes": 2000},
        "sink_only": {"dir": str(results), "poll_interval_s": 0.05},
    }  # fmt: skip
    stats = tmp_path / "stats.json"
    so = SinkOnly(parse_config(doc, env={}), stats_file=stats, stats_interval_s=0.05)
    seen: list[dict[str, Any]] = []

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(so.run(stop))
        for _ in range(400):
            if so.sink.waits >= 1 or task.done():
                break
            await asyncio.sleep(0.025)
        assert so.sink.waits >= 1 and so.files < 3  # the reader waits for room, in the middle of the backlog
        stats.unlink(missing_ok=True)  # one written before does not count
        for _ in range(200):
            if stats.exists():
                seen.append(json.loads(stats.read_text()))
                break
            await asyncio.sleep(0.025)
        assert so.files < 3  # still waiting
        stop.set()
        await task

    asyncio.run(main())
    assert seen, "no stats file while the reader waited"
    assert seen[0]["sink"]["healthy"] is False and seen[0]["files"]["consumed"] < 3, seen[0]


def test_a_record_whose_site_is_no_topic_level_is_a_dead_letter_and_publishing_goes_on(
    tmp_path: Path, mosquitto: services.Proc, influxdb_v1: services.Proc
) -> None:
    """``publish``: a site is a topic level (docs/protocol.md: 1 to 32 of ``A-Z a-z 0-9 _ -``). An alert record whose
    site is not one (``+``, ``#``, ``/``, an unpaired surrogate: a topic MQTT refuses) is a dead letter
    ``bad_result``, as any record amiss, and the alerts after it are published (with a real Mosquitto); such a
    topic used to end the publisher for good, and after a restart again, the message first in the checkpoint."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    good = dict(RECORDS["alerts"])
    bad = [{**good, "site": site} for site in ("no+rth", "a#", "a/b", "\ud800")]
    results = tmp_path / "out"
    (results / "alerts").mkdir(parents=True)
    lines = [json.dumps(r) for r in (*bad, good)]
    (results / "alerts" / "part-0").write_text("\n".join(lines) + "\n")
    prefix = "bad-site"
    got: list[str] = []
    subscribed: list[int] = []
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="watch-bad-site")
    sub.on_message = lambda c, u, m: got.append(m.topic)
    sub.on_subscribe = lambda *a: subscribed.append(1)
    sub.connect("127.0.0.1", mosquitto.port)
    sub.subscribe(f"{prefix}/#", qos=1)
    sub.loop_start()
    doc = {
        "mqtt": {"client_id": "sink-bad-site", "prefix": prefix, "url": f"mqtt://127.0.0.1:{mosquitto.port}"},
        "influx": {"target": "v1", "url": influxdb_v1.url, "database": "sink_bad_site"},
        "state": {"dir": str(tmp_path / "state")},
        "sink_only": {"dir": str(results), "poll_interval_s": 0.05, "publish": True},
        "patterns": [{"name": "p", "steps": [{"name": "a", "where": "temp_c > 1"}, {"name": "b", "where": "rh < 2"}]}],
    }  # fmt: skip
    so = SinkOnly(parse_config(doc, env={}))

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(so.run(stop))
        for _ in range(200):
            if got or task.done():
                break
            await asyncio.sleep(0.025)
        stop.set()
        await task

    try:
        for _ in range(200):
            if subscribed:
                break
            time.sleep(0.025)
        asyncio.run(main())
    finally:
        sub.loop_stop()
        sub.disconnect()
    assert got == [f"{prefix}/_gateway/alerts/s/pattern"] and so.bad_records == len(bad)
    assert so.outbox.queue == deque() and so.outbox.sent == 1


def test_an_unreadable_result_file_is_tried_again_and_the_others_go_on(
    tmp_path: Path, influxdb_v1: services.Proc
) -> None:
    """A committed file that cannot be read (here a read that fails with EIO: a link to /proc/self/mem, which even
    root cannot read from its start) does not end the sink-only gateway: it is counted, not marked consumed, the
    other files are read, and it is read at a later poll once it can be."""
    results = tmp_path / "out"
    rec = dict(WINDOW_RECORD)
    (results / "windows").mkdir(parents=True)
    (results / "windows" / "part-a").symlink_to("/proc/self/mem")
    (results / "windows" / "part-b").write_text(json.dumps(rec) + "\n")
    doc = {
        "mqtt": {"client_id": "sink-unreadable"},
        "influx": {"target": "v1", "url": influxdb_v1.url, "database": "sink_unreadable"},
        "state": {"dir": str(tmp_path / "state"), "checkpoint_interval_s": 0.05},
        "sink_only": {"dir": str(results), "poll_interval_s": 0.05},
    }
    so = SinkOnly(parse_config(doc, env={}))

    async def run() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(so.run(stop))
        for _ in range(400):
            if so.unreadable >= 2 or task.done():  # tried at two polls
                break
            await asyncio.sleep(0.025)
        assert not task.done() and so.files == 1 and "windows/part-a" not in so.done
        (results / "windows" / "part-a").unlink()
        (results / "windows" / "part-a").write_text(json.dumps({**rec, "device": "e"}) + "\n")
        for _ in range(400):
            if so.files == 2 or task.done():
                break
            await asyncio.sleep(0.025)
        stop.set()
        await task

    asyncio.run(run())
    assert so.files == 2 and {"windows/part-a", "windows/part-b"} <= so.done
    assert so.snapshot_stats()["files"]["unreadable"] >= 2  # type: ignore[index]


def test_the_state_of_the_previous_version_is_taken_and_a_newer_one_refused(
    tmp_path: Path, influxdb_v1: services.Proc
) -> None:
    """State version 2 added the publish queue: a version 1 state file (without it) is taken as it is; a state
    file of a later version is refused with what to do, not read without the parts it does not know (an older
    gateway would drop the queued messages)."""
    doc = {
        "mqtt": {"client_id": "sink-versions"},
        "influx": {"target": "v1", "url": influxdb_v1.url, "database": "sink_versions"},
        "state": {"dir": str(tmp_path / "state")},
        "sink_only": {"dir": str(tmp_path / "out"), "poll_interval_s": 0.05},
    }
    cfg = parse_config(doc, env={})
    store = StateStore(state_path(cfg))
    store.checkpoint(0, {"version": 1, "mode": "sink_only", "done": ["windows/part-0"]}, 1_780_000_000_000)
    store.close()
    so = SinkOnly(cfg)
    so.recover()
    assert so.done == {"windows/part-0"}
    so.store.checkpoint(0, {"version": 3, "mode": "sink_only", "done": []}, 1_780_000_000_000)
    with pytest.raises(StateError, match="newer"):
        SinkOnly.recover(so)
    so.store.close()


def test_a_publishing_sink_only_gateway_needs_a_client_id_of_its_own() -> None:
    """Two MQTT clients with one id knock each other off the broker, again and again: a sink-only gateway that
    publishes must not take the default id, which the site's own gateway (or bridge) has."""
    with pytest.raises(ConfigError, match=r"mqtt\.client_id"):
        parse_config({"sink_only": {"dir": "out", "publish": True}}, env={})
    parse_config({"mqtt": {"client_id": "edgekit-sink"}, "sink_only": {"dir": "out", "publish": True}}, env={})
    parse_config({"sink_only": {"dir": "out"}}, env={})  # publishing nothing, it connects to no broker
