"""Sink-only mode's records (docs/scale-out.md, "Output") become exactly the points the gateway writes itself:
over arbitrary window results, late readings and pattern alerts, the record a job writes for one (as documented)
gives the gateway's own line."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import services
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.alerts import Alert
from gateway.config import parse_config
from gateway.engine.outputs import LateReading, WindowResult
from gateway.sinkonly import SinkOnly, alert_line, late_line, window_line

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
    rec = {"v": 1, "window": "w", "site": "s", "device": "d", "metric": "m", "start_ms": 1_780_000_000_000,
           "end_ms": 1_780_000_060_000, "count": 1, "aggregates": {"mean": 1.5}, "revision": 1,
           "fired": "watermark"}  # fmt: skip
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
