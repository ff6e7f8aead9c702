"""Hot reload (gateway/reload.py, Gateway.reload): the configuration diff, the pipeline that carries on, an invalid
file that changes nothing, and a restart after a crash that follows a reload."""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.app import Gateway
from gateway.config import Config, parse_config
from gateway.engine.outputs import WindowResult
from gateway.errors import StateError
from gateway.pipeline import Handled, Pipeline
from gateway.reload import plan_reload, reloaded_pipeline, restart_only
from gateway.state import KIND_RELOAD

T0 = 1_764_072_000_000
NOW = T0 + 3_600_000

# a small universe of definitions: each name takes one of a few, so that old and new often agree
WINDOWS = {
    "t1m": {"kind": "tumbling", "size": "1m"},
    "t2m": {"kind": "tumbling", "size": "2m"},
    "s2m": {"kind": "sliding", "size": "2m", "slide": "30s"},
    "ses": {"kind": "session", "gap": "20s"},
    "t1m_late": {"kind": "tumbling", "size": "1m", "allowed_lateness": "1m"},
}
PATTERNS = {
    "hot": [{"name": "a", "where": "x > 7"}],
    "rise": [{"name": "a", "where": "x < 3"}, {"name": "b", "where": "x > 6"}],
    "rise3": [{"name": "a", "where": "x < 2"}, {"name": "b", "where": "x > 8", "times": 2}],
}
JOIN = {
    "name": "hot_then_cold",
    "between": "b.t BETWEEN a.t AND a.t + 30s",
    "a": {"devices": ["d1"], "metrics": ["x"], "where": "x > 7"},
    "b": {"devices": ["d2"], "metrics": ["x"], "where": "x < 3"},
}
NAMES = ["w1", "w2", "w3", "w4"]
MODES = ["device", "global"]
PNAMES = ["p1", "p2", "p3"]


def doc(
    windows: dict[str, str], patterns: dict[str, str], anomaly: bool, bound: str = "5s", mode: str = "device"
) -> dict[str, Any]:
    d: dict[str, Any] = {
        "mqtt": {"prefix": "rl", "client_id": "gw-rl"},
        "influx": {"url": "http://127.0.0.1:9", "database": "db"},  # never written to here
        "engine": {"watermark": {"out_of_orderness": bound, "mode": mode}},
    }
    if windows:
        d["windows"] = [{"name": n, "metrics": ["x"], **WINDOWS[w]} for n, w in windows.items()]
    if patterns:
        d["patterns"] = [{"name": n, "within": "1m", "steps": PATTERNS[p]} for n, p in patterns.items()]
    if anomaly:
        d["anomaly"] = {"metrics": ["x"], "warmup": 5}
    d["joins"] = [JOIN]  # [[joins]] need a restart to change: in every configuration here, its state carries on
    return d


def config(
    windows: dict[str, str], patterns: dict[str, str], anomaly: bool = False, bound: str = "5s", mode: str = "device"
) -> Config:
    return parse_config(doc(windows, patterns, anomaly, bound, mode), env={})


defs = st.dictionaries(st.sampled_from(NAMES), st.sampled_from(sorted(WINDOWS)), max_size=4)
pdefs = st.dictionaries(st.sampled_from(PNAMES), st.sampled_from(sorted(PATTERNS)), max_size=3)


@settings(max_examples=60, deadline=None)
@given(defs, defs, pdefs, pdefs, st.booleans(), st.booleans(), st.booleans())
def test_the_plan_keeps_restarts_adds_and_drops_by_name_and_definition(
    w_old: dict[str, str],
    w_new: dict[str, str],
    p_old: dict[str, str],
    p_new: dict[str, str],
    a_old: bool,
    a_new: bool,
    bound_changes: bool,
) -> None:
    plan = plan_reload(config(w_old, p_old, a_old), config(w_new, p_new, a_new, "9s" if bound_changes else "5s"))
    for change, old, new in ((plan.windows, w_old, w_new), (plan.patterns, p_old, p_new)):
        both = [n for n in new if n in old]
        same = [n for n in both if old[n] == new[n] and not bound_changes]
        assert set(change.kept) == set(same)
        assert set(change.restarted) == set(both) - set(same)
        assert set(change.added) == set(new) - set(old) and set(change.dropped) == set(old) - set(new)
        # every name once: the new ones are kept, restarted or added, the old ones kept, restarted or dropped
        assert sorted(change.kept + change.restarted + change.added) == sorted(new)
        assert sorted(change.kept + change.restarted + change.dropped) == sorted(old)
    a = plan.anomaly
    assert a.kept == (("anomaly",) if a_old and a_new and not bound_changes else ())
    assert a.restarted == (("anomaly",) if a_old and a_new and bound_changes else ())
    assert (a.added, a.dropped) == (
        ("anomaly",) if a_new and not a_old else (),
        ("anomaly",) if a_old and not a_new else (),
    )
    for name in plan.windows.restarted:  # each restart says why
        why = plan.reasons[f"window {name}"]
        assert "engine-wide settings" in why if bound_changes else why == "its definition changed"
    kept_order = ([n for n in p_old if n in plan.patterns.kept], [n for n in p_new if n in plan.patterns.kept])
    assert plan.reordered == (kept_order[0] != kept_order[1])
    assert plan.changes_state == (
        plan.windows.changed or plan.patterns.changed or plan.anomaly.changed or plan.reordered
    )


def test_patterns_declared_in_another_order_are_kept_and_the_state_restores_in_the_new_order() -> None:
    """Only the order of two kept patterns changes: the operator is rebuilt (its snapshot follows the declaration
    order), so that the next checkpoint, saved with the new configuration's fingerprint, restores after a restart
    with the same file (it failed: the pipeline was kept in the old order under the new fingerprint)."""
    old, new = config({}, {"p1": "hot", "p2": "rise"}), config({}, {"p2": "rise", "p1": "hot"})
    plan = plan_reload(old, new)
    assert set(plan.patterns.kept) == {"p1", "p2"}
    assert plan.reordered and plan.changes_state
    p = Pipeline(old)
    for t, pl, r in stream(3, 20):
        p.handle(t, pl, r)
    p2 = reloaded_pipeline(p, new, plan)
    Pipeline(new).restore(json.loads(json.dumps(p2.snapshot())))  # a restart with the new file takes it
    assert not plan_reload(old, config({}, {"p1": "hot", "p2": "rise", "p3": "rise3"})).reordered


def test_a_restarted_window_starts_its_group_relative_comparisons_empty() -> None:
    """A window with ``[windows.relative]`` whose size changes is restarted: the comparisons it had open (its
    members' results of the old size) are not completed under the new definition; a kept one keeps its own."""

    def cfg(size_w1: str) -> Config:
        d = doc({}, {}, False)
        rel = {"groups": ["both"], "min_others": 1}
        d["groups"] = {"both": ["d1", "d2"]}
        d["windows"] = [
            {"name": n, "kind": "tumbling", "size": size, "metrics": ["x"], "aggregates": ["count", "mean"],
             "relative": rel}
            for n, size in (("w1", size_w1), ("w2", "1m"))
        ]  # fmt: skip
        return parse_config(d, env={})

    old, new = cfg("1m"), cfg("2m")
    plan = plan_reload(old, new)
    assert plan.windows.restarted == ("w1",) and plan.windows.kept == ("w2",)
    p = Pipeline(old)
    for t, pl, r in stream(7, 30):
        p.handle(t, pl, r)
    assert p.relative is not None and p.relative.open["w1"] and p.relative.open["w2"]
    p2 = reloaded_pipeline(p, new, plan)
    assert p2.relative is not None
    assert p2.relative.open["w1"] == {} and p2.relative.open["w2"] == p.relative.open["w2"]


def test_a_trigger_change_keeps_the_window_and_restarts_only_its_triggers() -> None:
    old = config({"w1": "t1m"}, {})
    d = doc({"w1": "t1m"}, {}, False)
    d["windows"][0]["early_count"] = 3
    plan = plan_reload(old, parse_config(d, env={}))
    assert plan.windows.kept == ("w1",) and plan.retriggered == ("w1",) and plan.changes_state


def test_settings_a_reload_cannot_apply_are_named() -> None:
    old = config({"w1": "t1m"}, {})
    d = doc({"w1": "t2m"}, {"p1": "hot"}, True)
    d["mqtt"]["url"] = "mqtt://10.0.0.9:1884"
    d["state"] = {"dir": "/elsewhere"}
    d["notify"] = [{"name": "phone"}]
    env = {"EDGEKIT_NOTIFY_PHONE_URL": "json://127.0.0.1:9/x"}
    assert restart_only(old, parse_config(d, env=env)) == ["mqtt.host", "mqtt.port", "state.dir"]
    assert restart_only(old, config({"w2": "s2m"}, {"p1": "rise"}, True, "1s")) == []


def message(dev: str, rows: list[tuple[int, int, float]]) -> tuple[str, bytes]:
    r = [{"b": 1, "s": s, "t": t, "q": "s", "m": {"x": x}} for s, t, x in rows]
    return f"rl/site/{dev}/readings", json.dumps({"v": 1, "dev": dev, "r": r}).encode()


def stream(seed: int, n: int = 60) -> list[tuple[str, bytes, int]]:
    """Two boards, a reading every 5 s of event time in messages of 1-4, a little disorder between messages."""
    rnd = random.Random(seed)
    out = []
    seq = {"d1": 0, "d2": 0}
    for i in range(n):
        dev = rnd.choice(["d1", "d2"])
        rows = []
        for _ in range(rnd.randint(1, 4)):
            seq[dev] += 1
            t = T0 + seq[dev] * 5_000 - rnd.choice([0, 0, 3_000])
            rows.append((seq[dev], t, float(rnd.randint(0, 10))))
        topic, payload = message(dev, rows)
        out.append((topic, payload, NOW + i * 1_000))
    return out


def results(outs: list[Handled], windows: set[str], patterns: set[str]) -> list[str]:
    lines = []
    for out in outs:
        lines += [o.to_line() for o in out.outputs if isinstance(o, WindowResult) and o.window in windows]
        lines += [a.to_line() for a in out.alerts if a.source == "pattern" and a.name in patterns]
    return lines


@settings(max_examples=40, deadline=None)
@given(defs, defs, pdefs, pdefs, st.booleans(), st.integers(0, 2**16), st.integers(1, 59), st.sampled_from(MODES))
def test_kept_operators_give_what_an_uninterrupted_run_gives(
    w_old: dict[str, str],
    w_new: dict[str, str],
    p_old: dict[str, str],
    p_new: dict[str, str],
    anomaly: bool,
    seed: int,
    cut: int,
    mode: str,
) -> None:
    """A reload in the middle of a stream: the kept windows' results and kept patterns' alerts (and, with
    ``[anomaly]`` unchanged, the detectors' output) are those of a run of the old configuration that never
    stopped; the dropped ones give nothing after it; every reading is accepted exactly once. In either
    watermark mode: in global mode the kept patterns keep the one global watermark."""
    old, new = config(w_old, p_old, anomaly, mode=mode), config(w_new, p_new, anomaly, mode=mode)
    plan = plan_reload(old, new)
    inputs = stream(seed)
    ref = Pipeline(old)
    straight = [ref.handle(t, p, r) for t, p, r in inputs]
    p = Pipeline(old)
    before = [p.handle(t, pl, r) for t, pl, r in inputs[:cut]]
    p2 = reloaded_pipeline(p, new, plan)
    after = [p2.handle(t, pl, r) for t, pl, r in inputs[cut:]]
    kept_w, kept_p = set(plan.windows.kept), set(plan.patterns.kept)
    # the same points (in an order that may differ within one message's outputs: the declarations' order)
    assert sorted(results(before + after, kept_w, kept_p)) == sorted(results(straight, kept_w, kept_p))
    gone = set(plan.windows.dropped) | set(plan.windows.restarted)
    assert not [o for out in after for o in out.outputs if isinstance(o, WindowResult) and o.window not in set(w_new)]
    assert not results(after, gone - set(w_new), set(plan.patterns.dropped))
    joined = [[ln for ln in o.lines if ln.startswith("join,")] for o in before + after]
    assert joined == [[ln for ln in o.lines if ln.startswith("join,")] for o in straight]
    # (in global mode the board whose event time runs ahead makes most of the other's readings late: few pairs)
    assert any(joined) or mode == "global"
    if anomaly:  # unchanged [anomaly]: the same scores, point for point
        scored = [[ln for ln in o.lines if ln.startswith("anomaly")] for o in before + after]
        assert scored == [[ln for ln in o.lines if ln.startswith("anomaly")] for o in straight]
    assert p2.stats.readings_accepted == ref.stats.readings_accepted
    assert p2.stats.duplicates == ref.stats.duplicates == 0


@pytest.mark.parametrize("key", ["group:g", "group"])
def test_a_kept_group_pattern_keeps_its_group_keys(key: str) -> None:
    """A reload that keeps a pattern keyed by a group keeps the group's key (``g:<name>``): its runs, buffer and
    watermark, so that its alerts are those of a run that never stopped (the reload kept only device and site
    keys: a group key's state was lost though the plan listed the pattern as kept)."""

    def cfg(extra_window: bool) -> Config:
        d = doc({"w1": "t1m", **({"w2": "t2m"} if extra_window else {})}, {"p1": "rise3"}, False)
        d["groups"] = {"g": ["d*"]}
        d["patterns"][0]["key"] = key
        return parse_config(d, env={})

    old, new = cfg(False), cfg(True)
    plan = plan_reload(old, new)
    assert plan.patterns.kept == ("p1",) and plan.windows.added == ("w2",)
    inputs = stream(11, 40)
    ref = Pipeline(old)
    straight = [ref.handle(t, p, r) for t, p, r in inputs]
    p = Pipeline(old)
    before = [p.handle(t, pl, r) for t, pl, r in inputs[:20]]
    p2 = reloaded_pipeline(p, new, plan)
    assert p2.snapshot()["cep"]["keys"] == p.snapshot()["cep"]["keys"] != {}
    after = [p2.handle(t, pl, r) for t, pl, r in inputs[20:]]
    alerts = results(straight, set(), {"p1"})
    assert alerts and results(before + after, set(), {"p1"}) == alerts


def test_a_reload_keeps_the_group_members_a_device_that_moved_stays_one_of() -> None:
    """Device m moved from site s1 to s2 (``devices.sites``): it stays a member of group g (``site:s1``) for the
    pattern keyed by g and the group-relative window, and a reload that keeps them keeps it there (the members
    were made again from each device's current site)."""

    def cfg(moved: bool, extra_window: bool = False) -> Config:
        d = doc({"w1": "t1m", **({"w2": "t2m"} if extra_window else {})}, {"p1": "rise3"}, False)
        d["groups"] = {"g": ["site:s1"]}
        d["patterns"][0]["key"] = "group:g"
        d["windows"][0]["relative"] = {}
        if moved:
            d["devices"] = {"sites": {"m": "s2"}}
        return parse_config(d, env={})

    def msg(site: str, seq: int) -> tuple[str, bytes]:
        r = [{"b": 1, "s": seq, "t": T0 + seq * 5_000, "q": "s", "m": {"x": 1.0}}]
        return f"rl/{site}/m/readings", json.dumps({"v": 1, "dev": "m", "r": r}).encode()

    first = Pipeline(cfg(False))
    first.handle(*msg("s1", 1), NOW)
    p = Pipeline(cfg(True))  # a restart with m declared at s2
    p.restore(json.loads(json.dumps(first.snapshot())))
    p.handle(*msg("s2", 2), NOW)  # m moves
    assert p.stats.moved == 1 and p.cep.members == {"g": ["m"]}
    assert p.relative is not None and p.relative.members == {"g": ["m"]}
    new = cfg(True, extra_window=True)
    plan = plan_reload(p.config, new)
    assert plan.patterns.kept == ("p1",) and plan.windows.kept == ("w1",)
    p2 = reloaded_pipeline(p, new, plan)
    assert p2.cep.members == {"g": ["m"]}
    assert p2.relative is not None and p2.relative.members == {"g": ["m"]}


# --- the gateway: invalid files, the log's reload record, a restart after a crash ---------------------------


def toml(d: dict[str, Any]) -> str:
    """A small TOML writer for the documents above (tables, arrays of tables, strings, numbers, lists)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + "}"
        raise TypeError(v)

    lines = []
    for name, sec in d.items():
        if isinstance(sec, list):
            for item in sec:
                lines.append(f"[[{name}]]")
                lines += [f"{k} = {value(v)}" for k, v in item.items()]
        else:
            lines.append(f"[{name}]")
            lines += [f"{k} = {value(v)}" for k, v in sec.items()]
    text = "\n".join(lines) + "\n"
    assert tomllib.loads(text) == d  # what the gateway reads is the document
    return text


def gateway_on(tmp_path: Path, d: dict[str, Any]) -> Gateway:
    d = {**d, "state": {"dir": str(tmp_path / "state")}}
    path = tmp_path / "gateway.toml"
    path.write_text(toml(d))
    gw = Gateway(parse_config(d, env={}), now_ms=lambda: NOW, config_path=path)
    gw.started.set()  # driven by hand: no broker, no InfluxDB (nothing is written to it here)
    return gw


def rewrite(gw: Gateway, d: dict[str, Any] | str) -> None:
    assert gw.config_path is not None
    state = {"state": {"dir": gw.config.state.dir}}
    gw.config_path.write_text(d if isinstance(d, str) else toml({**d, **state}))


async def feed(gw: Gateway, inputs: list[tuple[str, bytes, int]]) -> None:
    await gw._process(gw._accept([(t, p, False) for t, p, _ in inputs]))


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[[windows]\nname = ", "not valid TOML"),
        (None, "aggregates"),  # a window with an aggregate that does not exist
        ("mqtt", "mqtt.host"),  # another broker: needs a restart
    ],
)
async def test_an_invalid_file_changes_nothing_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str | None, says: str
) -> None:
    base = doc({"w1": "t1m"}, {"p1": "hot"}, False)
    gw = gateway_on(tmp_path, base)
    try:
        await feed(gw, stream(1, 10))
        before, pipeline, fp, pos = gw.pipeline.snapshot(), gw.pipeline, gw.fingerprint, gw.store.last_pos
        if text is None:
            bad = doc({"w1": "t1m", "w2": "t2m"}, {"p1": "rise"}, False)
            bad["windows"][1]["aggregates"] = ["mean", "median"]
            rewrite(gw, bad)
        elif text == "mqtt":
            bad = doc({"w1": "t2m"}, {}, False)
            bad["mqtt"]["url"] = "mqtt://192.0.2.1:1883"
            rewrite(gw, bad)
        else:
            rewrite(gw, text)
        res = await gw.reload()
        assert not res.ok and says in res.message and "nothing was changed" in res.message
        assert gw.pipeline is pipeline and gw.pipeline.snapshot() == before and gw.fingerprint == fp
        assert gw.store.last_pos == pos and gw.store.last_of_kind(0, KIND_RELOAD) is None
        assert (gw.reloads, gw.reload_failures) == (0, 1)
        # the same inputs go on as before
        await feed(gw, stream(2, 5))
        assert gw.pipeline is pipeline
    finally:
        gw.store.close()


async def test_a_restart_after_a_crash_that_follows_a_reload_restores_with_each_configuration(tmp_path: Path) -> None:
    """The checkpoint before the reload is of the old configuration; the log holds the reload record and the inputs
    after it. A restart with the new file restores the old state, replays the reload where it was and ends where
    the crashed gateway was; a restart with the old file is refused (the state went on with the new one)."""
    a = doc({"w1": "t1m", "w2": "s2m"}, {"p1": "rise"}, True)
    b = doc({"w1": "t1m", "w2": "t2m", "w3": "ses"}, {"p1": "rise", "p2": "hot"}, True)
    inputs = stream(7, 40)
    gw = gateway_on(tmp_path, a)
    try:
        await feed(gw, inputs[:20])
        await gw.checkpoint()
        fp_a = gw.fingerprint
        rewrite(gw, b)

        async def fails() -> None:  # the checkpoint after the reload does not happen: the crash comes first
            raise OSError("disk full")

        gw.checkpoint = fails  # type: ignore[method-assign]
        res = await gw.reload()
        assert res.ok, res.message
        assert res.details["windows"] == {"kept": ["w1"], "restarted": ["w2"], "added": ["w3"], "dropped": []}
        assert res.details["patterns"]["added"] == ["p2"] and res.details["anomaly"]["kept"] == ["anomaly"]
        await feed(gw, inputs[20:])
        crashed, recent = gw.pipeline.snapshot(), list(gw.recent)
        fp_b = gw.fingerprint
        assert fp_b != fp_a and gw.store.load_checkpoint().state["fingerprint"] == fp_a  # type: ignore[union-attr]
    finally:
        gw.store.close()  # the crash: no final checkpoint

    again = gateway_on(tmp_path, b)
    try:
        await again.recover()
        assert again.fingerprint == fp_b and again.pipeline.snapshot() == crashed
        assert list(again.recent) == recent  # the digests of logged messages only, not of the reload record
        await again.checkpoint()  # of the new configuration, every row
    finally:
        again.store.close()
    third = gateway_on(tmp_path, b)
    try:
        await third.recover()
        assert third.pipeline.snapshot() == crashed and third.replayed == 0
    finally:
        third.store.close()

    old = gateway_on(tmp_path, a)
    try:
        with pytest.raises(StateError, match="fingerprint"):
            await old.recover()
    finally:
        old.store.close()


async def test_a_crash_before_the_checkpoint_with_the_old_file_is_refused(tmp_path: Path) -> None:
    a = doc({"w1": "t1m"}, {}, False)
    gw = gateway_on(tmp_path, a)
    try:
        await feed(gw, stream(3, 10))
        await gw.checkpoint()
        rewrite(gw, doc({"w1": "t2m"}, {}, False))

        async def fails() -> None:
            raise OSError("disk full")

        gw.checkpoint = fails  # type: ignore[method-assign]
        assert (await gw.reload()).ok
    finally:
        gw.store.close()
    old = gateway_on(tmp_path, a)
    try:
        with pytest.raises(StateError, match="after a reload at log position"):
            await old.recover()
    finally:
        old.store.close()


async def test_after_a_reload_that_fails_while_building_ticks_go_on_with_no_message_coming(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The failed reload's record is taken as nothing: with no message after it, the next tick (and so the next
    checkpoint) does not wait for one (it waited until a message came)."""
    gw = gateway_on(tmp_path, doc({"w1": "t1m"}, {}, False))
    try:
        await feed(gw, stream(5, 5))
        rewrite(gw, doc({"w1": "t2m"}, {}, False))

        def broken(*args: Any) -> Any:
            raise RuntimeError("a bug")

        monkeypatch.setattr("gateway.app.reloaded_pipeline", broken)
        assert not (await gw.reload()).ok
        assert gw.pos == gw.store.last_pos
        async with asyncio.timeout(10):
            await gw._tick()
        assert gw.pos == gw.store.last_pos
    finally:
        gw.store.close()


async def test_a_reload_that_fails_while_building_changes_nothing_and_a_restart_goes_on_as_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inputs logged while the new pipeline is built wait for it; if building fails, the old pipeline takes them,
    and the reload record already in the log names the running configuration, so a restart replays it as nothing."""
    a = doc({"w1": "t1m"}, {"p1": "rise"}, False)
    gw = gateway_on(tmp_path, a)
    inputs = stream(5, 30)
    try:
        await feed(gw, inputs[:10])
        await gw.checkpoint()
        fp = gw.fingerprint
        rewrite(gw, doc({"w1": "t2m"}, {"p1": "rise"}, False))
        building = threading.Event()

        def broken(*args: Any) -> Any:
            building.set()
            time.sleep(0.2)  # long enough for the messages below to be logged meanwhile
            raise RuntimeError("a bug")

        monkeypatch.setattr("gateway.app.reloaded_pipeline", broken)
        pipeline = gw.pipeline
        reload = asyncio.create_task(gw.reload())
        assert await asyncio.to_thread(building.wait, 10)
        records = gw._accept([(t, p, False) for t, p, _ in inputs[10:20]])  # logged while it builds
        taking = asyncio.create_task(gw._process(records))
        await asyncio.sleep(0.05)
        assert not taking.done() and gw.pos < records[0].pos  # they wait for the reload
        res = await reload
        await taking
        assert not res.ok and "a bug" in res.message and "nothing was changed" in res.message
        assert gw.pipeline is pipeline and gw.fingerprint == fp and gw.pos == records[-1].pos
        rec = gw.store.last_of_kind(0, KIND_RELOAD)
        assert rec is not None and json.loads(rec.payload)["fingerprint"] == fp
        await feed(gw, inputs[20:])
        crashed = gw.pipeline.snapshot()
    finally:
        gw.store.close()  # a crash: the restart replays the log from the checkpoint, the reload record in it
    again = gateway_on(tmp_path, a)
    try:
        await again.recover()
        assert again.pipeline.snapshot() == crashed and again.fingerprint == fp
    finally:
        again.store.close()


async def test_with_a_bridge_a_reload_is_refused(tmp_path: Path) -> None:
    """``[bridge]``: the windows run in the Flink job, which a reload of the gateway cannot change."""
    d = {**doc({"w1": "t1m"}, {}, False), "bridge": {"dir": str(tmp_path / "bridge")}}
    gw = gateway_on(tmp_path, d)
    try:
        rewrite(gw, {**doc({"w1": "t2m"}, {}, False), "bridge": d["bridge"]})
        pipeline = gw.pipeline
        res = await gw.reload()
        assert not res.ok and "[bridge]" in res.message and gw.pipeline is pipeline
        assert gw.store.last_of_kind(0, KIND_RELOAD) is None
    finally:
        gw.store.close()
