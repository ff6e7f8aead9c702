"""One board sleeps 30 minutes and then flushes its buffer while nine boards report live.

60 s tumbling windows, a 5 s out-of-orderness bound, no allowed lateness. Per-device watermarks put all
360 of the sleepy board's readings in windows; one global watermark (what Flink or Kafka Streams do with
one stream) routes 348 of them to the late output - the 12 of the last minute survive.
"""

from __future__ import annotations

from engine_helpers import batch

from gateway.engine import Engine, LateReading, WindowResult, parse_engine
from gateway.model import StatusUpdate

T0 = 1_764_072_000_000  # on a minute boundary
STEP = 5_000
SLEEP = 1_800_000
LIVE = [f"live-{i}" for i in range(9)]


def run(mode: str, key: str = "device") -> tuple[Engine, list[WindowResult], list[LateReading]]:
    engine = Engine(
        parse_engine(
            {
                "engine": {"watermark": {"mode": mode, "out_of_orderness": "5s"}},
                "windows": [{"name": "m1", "kind": "tumbling", "size": "60s", "metrics": ["temp_c"], "key": key}],
            }
        )
    )
    outs = []
    outs += engine.process_status(StatusUpdate("gh", "sleepy", "t", T0, "sleeping", {"sleep_s": SLEEP // 1000}))
    seq = 0
    for t in range(T0, T0 + SLEEP + 1, STEP):
        seq += 1
        for dev in LIVE:
            outs += engine.process_batch(batch(dev, [(t, 1, seq, {"temp_c": 20.0})], site="gh"), now_ms=t + 200)
        outs += engine.advance(t + 300)
    buffered = [(T0 + i * STEP, 1, i, {"temp_c": 18.0}) for i in range(SLEEP // STEP)]
    now = T0 + SLEEP + 1_000
    for i in range(0, len(buffered), 60):
        chunk = buffered[i : i + 60]
        last = i + 60 >= len(buffered)
        outs += engine.process_batch(
            batch("sleepy", chunk, site="gh", flushed=T0 + SLEEP if last else None), now_ms=now
        )
    for dev in LIVE:  # the live boards carry on; their next readings close the last minute
        outs += engine.process_batch(batch(dev, [(now + 9_000, 1, seq + 1, {"temp_c": 20.0})], site="gh"), now + 9_000)
    windows = [o for o in outs if isinstance(o, WindowResult)]
    late = [o for o in outs if isinstance(o, LateReading)]
    return engine, windows, late


def test_per_device_watermarks_keep_the_sleepy_board_on_time() -> None:
    _, windows, late = run("device")
    sleepy = [w for w in windows if w.key == "sleepy"]
    assert late == []
    assert len(sleepy) == 30 and all(w.count == 12 and w.revision == 1 for w in sleepy)
    assert sum(w.count for w in sleepy) == 360
    assert [w.start_ms for w in sleepy] == [T0 + i * 60_000 for i in range(30)]
    live = [w for w in windows if w.key != "sleepy"]
    assert len(live) == 9 * 30 and all(w.count == 12 for w in live)


def test_global_watermark_routes_most_of_the_buffer_late() -> None:
    engine, windows, late = run("global")
    sleepy_windows = [w for w in windows if w.key == "sleepy"]
    assert len(late) == 348
    assert {x.device for x in late} == {"sleepy"} and {x.reason for x in late} == {"too_late"}
    assert engine.late_count() == 348
    assert max(x.t_ms for x in late) == T0 + 29 * 60_000 - STEP  # everything before the last minute
    assert min(x.late_by_ms for x in late) == (T0 + SLEEP - 5_000) - (T0 + 29 * 60_000 - STEP)
    assert sum(w.count for w in sleepy_windows) == 12  # only the last minute, [T0+29m, T0+30m)


def test_site_window_waits_for_a_board_that_announced_its_sleep() -> None:
    # The sleepy board said "sleeping, sleep_s=1800" and sent one reading before it slept; the fleet
    # watermark of the site waits for it (idle only after 2 x 1800 s + 30 s), so its buffer is on time.
    engine = Engine(
        parse_engine(
            {
                "windows": [
                    {
                        "name": "site1m",
                        "kind": "tumbling",
                        "size": "60s",
                        "metrics": ["temp_c"],
                        "key": "site",
                    }
                ]
            }
        )
    )
    outs = engine.process_batch(batch("sleepy", [(T0 - STEP, 1, 0, {"temp_c": 18.0})], site="gh"), T0 - STEP)
    outs += engine.process_status(StatusUpdate("gh", "sleepy", "t", T0, "sleeping", {"sleep_s": 1800}))
    for t in range(T0, T0 + SLEEP + 1, STEP):
        for dev in LIVE:
            outs += engine.process_batch(batch(dev, [(t, 1, t // STEP, {"temp_c": 20.0})], site="gh"), t + 200)
        outs += engine.advance(t + 300)
    assert not [o for o in outs if isinstance(o, WindowResult) and o.start_ms >= T0]  # held back
    buffered = [(T0 + i * STEP, 1, 1 + i, {"temp_c": 18.0}) for i in range(SLEEP // STEP)]
    for i in range(0, len(buffered), 60):
        chunk = buffered[i : i + 60]
        flushed = T0 + SLEEP if i + 60 >= len(buffered) else None
        outs += engine.process_batch(batch("sleepy", chunk, site="gh", flushed=flushed), T0 + SLEEP + 1_000)
    for dev in LIVE:
        t = T0 + SLEEP + 10_000
        outs += engine.process_batch(batch(dev, [(t, 1, t // STEP, {"temp_c": 20.0})], site="gh"), t)
    fired = [o for o in outs if isinstance(o, WindowResult) and o.start_ms >= T0]
    assert not [o for o in outs if isinstance(o, LateReading)]
    assert len(fired) == 30 and all(w.count == 12 * 10 and w.key == "gh" for w in fired)


def test_a_silent_board_turns_idle_and_releases_the_site() -> None:
    engine = Engine(
        parse_engine(
            {
                "windows": [
                    {
                        "name": "site1m",
                        "kind": "tumbling",
                        "size": "60s",
                        "metrics": ["temp_c"],
                        "key": "site",
                    }
                ]
            }
        )
    )
    engine.process_batch(batch("quiet", [(T0, 1, 0, {"temp_c": 1.0})], site="gh"), T0)  # no sleep_s: 10 min
    engine.process_batch(batch("busy", [(T0 + 120_000, 1, 0, {"temp_c": 2.0})], site="gh"), T0 + 120_000)
    assert engine.advance(T0 + 599_000) == []
    fired = engine.advance(T0 + 601_000)
    assert [(w.start_ms, w.count) for w in fired if isinstance(w, WindowResult)] == [(T0, 1)]
