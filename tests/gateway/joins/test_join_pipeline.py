"""Joins in the gateway: the ``[[joins]]`` configuration and its errors, the pipeline's join points and alerts,
and the join state through a snapshot and restore of the whole pipeline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import main
from gateway.config import parse_config
from gateway.errors import ConfigError
from gateway.pipeline import Pipeline
from gateway.schema import check_line

T0 = 1_764_072_000_000
NOW = T0 + 3_600_000

JOIN: dict[str, Any] = {
    "name": "door_cold",
    "between": "b.t BETWEEN a.t AND a.t + 2m",
    "alert": "warning",
    "a": {"devices": ["door-*"], "metrics": ["door"], "where": "door == 1"},
    "b": {"devices": ["th-*"], "metrics": ["temp_c"], "where": "temp_c < 18"},
}


def msg(
    site: str, dev: str, rows: list[tuple[int, int, dict[str, Any]]], flushed: int | None = None
) -> tuple[str, bytes]:
    doc: dict[str, Any] = {"v": 1, "dev": dev, "r": [{"b": 1, "s": s, "t": t, "q": "s", "m": m} for s, t, m in rows]}
    if flushed is not None:
        doc["flushed"] = flushed
    return f"edgekit/{site}/{dev}/readings", json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"between": "a.t - 2m .. a.t"}, "joins[door_cold].between: expected 'b.t BETWEEN a.t"),
        ({"between": "b.t BETWEEN a.t + 1m AND a.t"}, "lower end a.t + 1m is after the upper end a.t"),
        ({"key": "group"}, "joins[door_cold].key: expected 'site', 'property:<name>' ([devices.properties]) or 'gr"),
        ({"key": "group:greenhouse"}, "joins[door_cold].key: no group 'greenhouse' in [groups] (declared: none)"),
        ({"key": "property:line"}, "no device declares property 'line'"),
        ({"b": {"metrics": ["temp_c"], "where": "temp_c < prev.temp_c"}}, "may refer to the other side only"),
        ({"b": {"metrics": ["temp_c"], "where": "temp_c <"}}, "joins[door_cold].b.where:"),
        ({"a": {"devices": ["door-*"]}}, "joins[door_cold].a.metrics: required"),
        ({"max_events": 1}, "joins[door_cold].max_events: expected an integer of at least 2"),
        ({"alert": "loud"}, "joins[door_cold].alert: expected one of info, warning, critical"),
        ({"within": "2m"}, "joins[door_cold]: unknown key(s) within"),
    ],
)
def test_a_wrong_join_is_refused_with_a_clear_message(change: dict[str, Any], error: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config({"joins": [{**JOIN, **change}]}, env={})
    assert error in str(exc.value)


def test_check_prints_the_join_and_refuses_a_wrong_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.toml"
    good.write_text(
        '[[joins]]\nname = "door_cold"\nbetween = "b.t BETWEEN a.t - 30s AND a.t + 2m"\n'
        '[joins.a]\nmetrics = ["door"]\n[joins.b]\nmetrics = ["temp_c"]\n',
        encoding="utf-8",
    )
    assert main(["check", "--config", str(good)]) == 0
    assert "join:      door_cold on site: b.t BETWEEN a.t - 30s AND a.t + 2m" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text(good.read_text().replace("a.t - 30s", "a.t + 3m"), encoding="utf-8")
    assert main(["check", "--config", str(bad)]) == 2
    assert "lower end a.t + 3m is after the upper end a.t + 2m" in capsys.readouterr().err


def test_the_pipeline_writes_joined_records_and_alerts_and_restores_join_state() -> None:
    cfg = parse_config({"joins": [JOIN]}, env={})
    p = Pipeline(cfg)
    lines: list[str] = []
    alerts = []

    def handle(topic: str, payload: bytes) -> None:
        out = p.handle(topic, payload, NOW)
        lines.extend(out.lines)
        alerts.extend(out.alerts)

    handle(*msg("s1", "door-1", [(0, T0, {"door": 0}), (1, T0 + 60_000, {"door": 1})]))
    handle(*msg("s1", "th-1", [(0, T0, {"temp_c": 21.0}), (1, T0 + 150_000, {"temp_c": 17.5})]))
    snap = json.loads(json.dumps(p.snapshot()))
    assert snap["joins"]["keys"]["j:door_cold:s1"]["wm"] is not None
    again = Pipeline(cfg)
    again.restore(snap)
    for pipe in (p, again):
        out = pipe.handle(*msg("s1", "door-1", [], T0 + 600_000), NOW)
        out2 = pipe.handle(*msg("s1", "th-1", [], T0 + 600_000), NOW)
        got = [x for x in out.lines + out2.lines if x.startswith("join,")]
        assert len(got) == 1, pipe
        assert got[0].startswith("join,key=s1,name=door_cold,site=s1 ")
        assert 'a_reading="door-1/1/1"' in got[0] and 'b_reading="th-1/1/1"' in got[0] and "b.temp_c=17.5" in got[0]
        assert check_line(got[0]) == []
        (alert,) = out.alerts + out2.alerts
        assert (alert.source, alert.name, alert.key, alert.readings) == (
            "join", "door_cold", "s1", (("door-1", 1, 1), ("th-1", 1, 1)),
        )  # fmt: skip
        assert alert.details == {"a.door": 1.0, "b.temp_c": 17.5}
        assert check_line(alert.to_line()) == []
        assert pipe.stats.joined == 1


def test_the_state_files_fingerprint_follows_the_joins_and_only_with_joins() -> None:
    from gateway.app import _fingerprint

    plain = parse_config({}, env={})
    props = parse_config({"devices": {"properties": {"pump-1": {"line": "l1"}}}}, env={})
    assert _fingerprint(plain) == _fingerprint(props)  # no joins: the state file of before stays usable
    one = parse_config({"joins": [JOIN]}, env={})
    wider = parse_config({"joins": [{**JOIN, "between": "b.t BETWEEN a.t AND a.t + 3m"}]}, env={})
    assert len({_fingerprint(plain), _fingerprint(one), _fingerprint(wider)}) == 3


def test_a_status_or_a_tick_that_moves_a_join_key_marks_it_for_the_next_checkpoint() -> None:
    """The incremental checkpoint rewrites the rows of the keys in ``Pipeline.dirty``: a key whose watermark moves
    because a device went offline (a status) or idle (a tick) is there, and so is it in ``tick_reach`` before the
    tick (taken first by a checkpoint in progress); a tick that moves nothing leaves the join keys alone."""
    p = Pipeline(parse_config({"joins": [JOIN]}, env={}))
    t = NOW - 3_600_000
    p.handle(*msg("s1", "door-1", [(0, t, {"door": 1})]), NOW)
    p.handle(*msg("s1", "th-1", [(0, t + 60_000, {"temp_c": 17.0})]), NOW)
    p.handle(*msg("s1", "th-1", [(1, t + 600_000, {"temp_c": 21.0})]), NOW)  # the door holds the key back
    key = "j:door_cold:s1"
    wm = p.joins.keys[key].wm
    p.dirty.clear()
    assert key not in p.tick_reach(NOW + 1_000)
    p.tick(NOW + 1_000)
    assert key not in p.dirty and p.joins.keys[key].wm == wm
    status = json.dumps({"v": 1, "dev": "door-1", "state": "offline"}).encode()
    out = p.handle("edgekit/s1/door-1/status", status, NOW + 2_000)  # the door is idle at once: the key moves
    assert key in p.dirty and p.joins.keys[key].wm != wm
    assert [x for x in out.lines if x.startswith("join,")]  # the pair, released
    # another site: the thermometer falls silent past the idle timeout (10 min); a tick releases the key
    p.handle(*msg("s2", "door-2", [(0, t, {"door": 1})]), NOW)
    p.handle(*msg("s2", "th-2", [(0, t + 30_000, {"temp_c": 12.0})]), NOW)
    p.handle(*msg("s2", "door-2", [(1, t + 900_000, {"door": 0})]), NOW + 300_000)
    key2 = "j:door_cold:s2"
    wm2 = p.joins.keys[key2].wm
    p.dirty.clear()
    later = NOW + 700_000
    assert key2 in p.tick_reach(later)
    out = p.tick(later)
    assert key2 in p.dirty and p.joins.keys[key2].wm != wm2
    assert [x for x in out.lines if x.startswith("join,")]
