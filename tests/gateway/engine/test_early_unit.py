"""Early results: the options, a session that moves under its provisional point, and the pipeline's outputs
(window_provisional, the MQTT payload, ticks, checkpoint rows)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from engine_helpers import batch

from gateway.ckpt_rows import join_state, split_state
from gateway.config import parse_config
from gateway.engine import Engine, EngineSpec, WindowResult, WindowSpec, parse_windows
from gateway.errors import ConfigError
from gateway.pipeline import Pipeline

T0 = 1_764_072_000_000
BASE = {"name": "w", "kind": "tumbling", "size": "60s", "metrics": ["x"]}


def test_options_parse_with_defaults() -> None:
    (w,) = parse_windows([{**BASE, "early_every": "10s", "early_count": 5, "provisional": "audit", "publish": True}])
    assert (w.early_every_ms, w.early_count, w.provisional, w.publish, w.early) == (10_000, 5, "audit", True, True)
    (plain,) = parse_windows([BASE])
    assert (plain.early_every_ms, plain.early_count, plain.provisional, plain.publish, plain.early) == (
        0,
        0,
        "overwrite",
        False,
        False,
    )
    # the state file's fingerprint hashes the repr: a changed trigger keeps the checkpoint usable
    assert repr(w) == repr(plain)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"early_count": -1}, "early_count: expected a whole number"),
        ({"early_count": True}, "early_count: expected a whole number"),
        ({"early_count": 2.5}, "early_count: expected a whole number"),
        ({"early_every": "soon"}, "early_every: expected milliseconds"),
        ({"early_every": "1s", "provisional": "keep"}, "provisional: expected 'overwrite' or 'audit'"),
        ({"provisional": "audit"}, "early_every and early_count are not set"),
        ({"publish": "yes"}, "publish: expected true or false"),
        ({"early_often": "1s"}, "unknown key(s) early_often"),
    ],
)
def test_bad_options_are_refused(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_windows([{**BASE, **extra}])


def test_a_session_whose_start_moves_marks_its_provisional_point_superseded() -> None:
    spec = WindowSpec("g", "session", ("x",), gap_ms=10_000, early_count=1)
    e = Engine(EngineSpec(windows=(spec,)))
    (p,) = e.process_batch(batch("d", [(T0 + 5_000, 1, 1, {"x": 1.0})]), now_ms=T0 + 6_000)
    assert (p.start_ms, p.result, p.count, p.provisional_n, p.emitted_ms) == (
        T0 + 5_000,
        "provisional",
        1,
        1,
        T0 + 6_000,
    )
    # an earlier reading within the bound: the session now starts at T0 + 1 s, its old point is marked dead
    outs = e.process_batch(batch("d", [(T0 + 1_000, 1, 2, {"x": 3.0})]), now_ms=T0 + 7_000)
    dead, moved = sorted((o for o in outs if isinstance(o, WindowResult)), key=lambda o: o.revision, reverse=True)
    assert (dead.start_ms, dead.fired, dead.result, dead.count, dead.revision) == (
        T0 + 5_000,
        "superseded",
        "final",
        0,
        1,
    )
    assert (moved.start_ms, moved.result, moved.count, moved.aggregates["mean"]) == (T0 + 1_000, "provisional", 2, 2.0)
    (final,) = e.process_batch(batch("d", [], flushed=T0 + 60_000), now_ms=T0 + 61_000)
    assert (final.start_ms, final.result, final.count, final.fired) == (T0 + 1_000, "final", 2, "watermark")
    # the key's (empty) trigger entries stay until a tick finds its window state gone (a stable key set)
    assert e.snapshot()["early"]["g"] == {"next_fire": None, "pend": {"d": []}, "prov": {"d": []}}
    assert e.on_processing_time(T0 + 62_000) == []
    assert e.snapshot()["early"]["g"] == {"next_fire": None, "pend": {}, "prov": {}}


def _pipeline(**extra: Any) -> Pipeline:
    window = {**BASE, "aggregates": ["count", "mean"], "early_every": "1s", **extra}
    return Pipeline(parse_config({"windows": [window]}, env={}))


def _msg(seq: int, t: int, x: float) -> bytes:
    return json.dumps({"v": 1, "dev": "d1", "r": [{"b": 1, "s": seq, "t": t, "q": "s", "m": {"x": x}}]}).encode()


def test_pipeline_tick_writes_provisional_points_audit_and_mqtt() -> None:
    p = _pipeline(provisional="audit", publish=True)
    assert p.handle("edgekit/s/d1/readings", _msg(0, T0 + 1_000, 4.0), T0 + 1_500).publish == []
    out = p.tick(T0 + 2_000)
    window, audit = out.lines
    fields = f'count=1i,mean=4.0,revision=0i,end_ms={T0 + 60_000}i,fired="early",result="provisional"'
    assert window == f"window,device=d1,metric=x,site=s,window=w {fields},emitted_ms={T0 + 2_000}i {T0}000000"
    assert audit == "window_provisional" + window[len("window") :].replace(f" {T0}000000", f" {T0}000001")
    ((topic, payload),) = out.publish
    assert topic == "edgekit/_gateway/windows/s/w"
    assert json.loads(payload) == {
        "v": 1,
        "window": "w",
        "site": "s",
        "device": "d1",
        "metric": "x",
        "start_ms": T0,
        "end_ms": T0 + 60_000,
        "result": "provisional",
        "revision": 0,
        "fired": "early",
        "count": 1,
        "aggregates": {"mean": 4.0},
        "emitted_ms": T0 + 2_000,
    }
    assert p.tick(T0 + 2_500).lines == []  # nothing new, and the period has not passed
    p.handle("edgekit/s/d1/readings", _msg(1, T0 + 2_000, 6.0), T0 + 2_600)
    assert p.tick(T0 + 2_900).lines == []  # new readings, but within the period
    second = p.tick(T0 + 3_000).lines
    assert len(second) == 2 and "count=2i,mean=5.0" in second[0] and second[1].endswith(f" {T0}000002")
    final = p.handle("edgekit/s/d1/readings", _msg(2, T0 + 70_000, 1.0), T0 + 70_100)
    (line,) = [ln for ln in final.lines if ln.startswith("window")]  # no audit copy of a final result
    assert 'result="final"' in line and line.endswith(f" {T0}000000")
    assert (p.stats.window_results, p.stats.provisional_results) == (3, 2)


def test_overwrite_mode_writes_no_audit_points_and_publishes_nothing() -> None:
    p = _pipeline()
    p.handle("edgekit/s/d1/readings", _msg(0, T0 + 1_000, 4.0), T0 + 1_500)
    out = p.tick(T0 + 2_000)
    assert len(out.lines) == 1 and out.lines[0].startswith("window,") and out.publish == []


def test_trigger_state_goes_into_checkpoint_rows_per_key_and_back() -> None:
    p = _pipeline(early_count=100)
    for dev in ("d1", "d2"):
        payload = _msg(0, T0 + 1_000, 1.0).replace(b'"d1"', f'"{dev}"'.encode())
        p.handle(f"edgekit/s/{dev}/readings", payload, T0 + 1_500)
    state = {"pipeline": p.snapshot()}
    want = copy.deepcopy(state)
    assert want["pipeline"]["engine"]["early"]["w"]["pend"] == {"d1": [[T0, 1]], "d2": [[T0, 1]]}
    rest, rows = split_state(copy.deepcopy(state))
    assert rest["pipeline"]["engine"]["early"]["w"]["pend"] == {}
    assert rows["kd1"]["ew"]["pend"] == [[T0, 1]]
    assert join_state(rest, rows) == want
    again = _pipeline(early_count=100)
    again.restore(json.loads(json.dumps(want["pipeline"])))
    assert len(again.tick(T0 + 2_000).lines) == 2  # both devices' windows pending: two provisional points


def test_check_describes_the_triggers() -> None:
    from gateway.cli import _describe_windows

    cfg = parse_config({"windows": [{**BASE, "early_every": "10s", "early_count": 50, "publish": True}]}, env={})
    assert _describe_windows(cfg)[1].split() == (
        "provisional results every 10 s and every 50 readings (overwrite), published on MQTT".split()
    )
    assert len(_describe_windows(parse_config({"windows": [BASE]}, env={}))) == 1
