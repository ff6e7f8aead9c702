"""What stood between a message and its alert: an alert goes to the outbox's sender as soon as the message that
raised it is taken, not after the rest of the batch of messages it arrived with (the ingest takes up to
``state.ingest_batch`` messages at a time); and the garbage collector's full scans of the heap are paced."""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import weakref
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from gateway.app import CollectorPacing, Gateway, _dumps_compact, _Raw
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


async def test_what_is_made_while_a_checkpoint_pauses_the_collector_is_frozen_not_scanned_at_once(
    tmp_path: Path,
) -> None:
    """A checkpoint pauses the collector while input goes on being taken; resumed with all of that young, its first
    collections held the loop 10-21 ms each (bench_e2e.py latency --stalls). What is alive then is frozen with the
    rest (:meth:`CollectorPacing.after_pause`), and a cycle among it that becomes garbage is still collected once
    the pacing gives the frozen objects back."""
    gw = _gateway(tmp_path)
    gw.collector.install()
    try:
        await gw._process(gw._accept([_message(d, 20.0) for d in range(50)]))
        gc.collect()
        made: list[_Node] = []
        checkpoint = gw._checkpoint

        async def checkpoint_while_input_is_taken() -> None:
            await checkpoint()
            made.extend(_Node() for _ in range(5000))  # as the input taken meanwhile makes state

        gw._checkpoint = checkpoint_while_input_is_taken  # type: ignore[method-assign]
        frozen = gc.get_freeze_count()
        await gw.checkpoint()
        assert gc.get_freeze_count() >= frozen + 5000, "what the checkpoint's pause left young was not frozen"
        assert gc.get_count()[0] < 700
        gone = weakref.ref(made[0])
        made.clear()  # garbage now, each a cycle, frozen
        gc.collect()
        assert gone() is not None
        gw.collector.every_s = 0.0
        gw.collector.tick()
        gc.collect()
        assert gone() is None
    finally:
        gw.collector.remove()
        gw.store.close()


class _OtherWork:
    """A task that counts its turns on the event loop: work that runs between two slices of something else."""

    def __init__(self) -> None:
        self.turns = 0
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            self.turns += 1
            await asyncio.sleep(0)


async def test_the_stats_file_is_made_a_slice_of_devices_at_a_time_between_inputs(tmp_path: Path) -> None:
    """The stats file (``run --stats-file``, written every second) holds a row per device: made and encoded in one
    callback, 1,000 devices held the event loop for 10-20 ms every second (and an alert waiting then). Its rows are
    made and encoded :data:`~gateway.app.STATS_SLICE` devices at a time, the loop running between two slices, and
    the file is the same text as the whole snapshot encoded at once."""
    from gateway.app import STATS_SLICE

    doc = {
        "mqtt": {"prefix": "ab", "client_id": "gw-ab"},
        "influx": {"target": "v1", "url": "http://127.0.0.1:9", "database": "db"},
        "state": {"dir": str(tmp_path / "state")},
    }
    stats = tmp_path / "stats.json"
    clock = itertools.count(T0 + 60_000)  # a millisecond later at each look
    gw = Gateway(parse_config(doc, env={}), now_ms=lambda: next(clock), stats_file=stats, stats_interval_s=3600)
    try:
        n = 3 * STATS_SLICE + 7
        await gw._process(gw._accept([_message(d, 20.0) for d in range(n)]))
        other = _OtherWork()
        calls: list[tuple[int, int]] = []  # (the other work's turns so far, rows made) at each call
        made = gw.live.device_rows

        def rows(*args: object, **kwargs: object) -> dict[str, dict[str, object]]:
            got = made(*args, **kwargs)  # type: ignore[arg-type]
            calls.append((other.turns, len(got)))
            return got

        gw.live.device_rows = rows  # type: ignore[method-assign]
        stop = asyncio.Event()
        status = asyncio.create_task(gw._status_loop(stop))
        for _ in range(1000):
            if stats.exists():
                break
            await asyncio.sleep(0.01)
        stop.set()
        await status
        other.task.cancel()
        assert sum(k for _, k in calls) == n, calls
        assert max(k for _, k in calls) <= STATS_SLICE, f"rows made {max(k for _, k in calls)} at once: {calls}"
        assert all(a[0] < b[0] for a, b in itertools.pairwise(calls)), f"the loop did not run between slices: {calls}"
        gw.live.device_rows = made  # type: ignore[method-assign]
        text = stats.read_text(encoding="utf-8")
        live = json.loads(text)["live"]
        assert len(live["devices"]) == n
        # every row of the same time as the file's now_ms, and the whole the text made at once at that time
        assert all(r["watermark_lag_ms"] == live["now_ms"] - r["watermark_ms"] for r in live["devices"].values())
        assert text == json.dumps(gw.snapshot_stats(now_ms=live["now_ms"]), separators=(",", ":")) + "\n"
    finally:
        gw.store.close()


_any_text = st.text(st.characters(blacklist_categories=()), max_size=5)  # lone surrogates too
_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | _any_text,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(_any_text, inner, max_size=4)
        | st.dictionaries(st.integers(), inner, max_size=2)
    ),
    max_leaves=30,
)


def _with_raw(value: Any, pick: int) -> tuple[Any, bool]:
    """``value`` with its ``pick``-th value (depth first) in a list or in a dict with string keys, reached through
    such lists and dicts, given as its JSON text (a :class:`_Raw`); and whether there was one to give."""
    count = [pick]

    def one(x: Any) -> Any:
        count[0] -= 1
        return _Raw(json.dumps(x, separators=(",", ":"))) if count[0] == -1 else walk(x)

    def walk(v: Any) -> Any:
        if count[0] < 0:
            return v
        if isinstance(v, dict) and all(isinstance(k, str) for k in v):
            return {k: one(x) for k, x in v.items()}
        if isinstance(v, list):
            return [one(x) for x in v]
        return v

    got = walk(value)
    return got, count[0] < 0


class _Key(str):
    """A subclass of str as a key: json.dumps takes it as a string."""


@given(st.dictionaries(_any_text, _values, max_size=5), st.integers(min_value=0, max_value=12))
def test_the_stats_files_encoder_is_json_dumps_with_raw_text_put_in(value: dict[str, Any], pick: int) -> None:
    """Every JSON value (NaN, infinities, big integers, lone surrogates, integer keys), a raw piece anywhere in
    its dicts and lists: the same text as ``json.dumps`` of the value with each raw piece decoded in its place."""
    expected = json.dumps(value, separators=(",", ":"))
    assert _dumps_compact(value) == expected
    raw, replaced = _with_raw(value, pick)
    assert _dumps_compact(raw) == expected
    if replaced:
        assert _has_raw(raw)
    keyed = {_Key(k): v for k, v in raw.items()}
    assert _dumps_compact(keyed) == expected


def _has_raw(v: Any) -> bool:
    if type(v) is _Raw:
        return True
    if isinstance(v, dict):
        return any(_has_raw(x) for x in v.values())
    if isinstance(v, list):
        return any(_has_raw(x) for x in v)
    return False


async def test_the_device_points_are_made_a_slice_of_devices_at_a_time_between_inputs(tmp_path: Path) -> None:
    """Once a minute the tick writes a ``device_watermark`` point per device: 1,000 in one callback held the loop
    about 15-20 ms. They are made :data:`~gateway.app.STATS_SLICE` devices at a time, the loop running between two
    slices, and are the points :meth:`LiveView.health_lines` makes at once."""
    from gateway.app import STATS_SLICE

    gw = _gateway(tmp_path)
    try:
        n = 2 * STATS_SLICE + 3
        await gw._process(gw._accept([_message(d, 20.0) for d in range(n)]))
        other = _OtherWork()
        calls: list[tuple[int, int]] = []
        made = gw.live.device_lines

        def device_lines(*args: Any, **kwargs: Any) -> list[str]:
            got = made(*args, **kwargs)
            calls.append((other.turns, len(got)))
            return got

        added: list[str] = []
        add = gw.sink.add

        async def sink_add(lines: list[str]) -> None:
            added.extend(lines)
            await add(lines)

        gw.live.device_lines = device_lines  # type: ignore[method-assign]
        gw.sink.add = sink_add  # type: ignore[method-assign]
        gw.stats_interval_s = 3600
        stop = asyncio.Event()
        tick = asyncio.create_task(gw._tick_loop(stop))
        for _ in range(1000):
            if added:
                break
            await asyncio.sleep(0.01)
        stop.set()
        await tick
        other.task.cancel()
        assert sum(k for _, k in calls) == n and max(k for _, k in calls) <= STATS_SLICE, calls
        assert all(a[0] < b[0] for a, b in itertools.pairwise(calls)), f"the loop did not run between slices: {calls}"
        points = [p for p in added if p.startswith("device_watermark,")]
        assert points == _device_points_reference(gw, gw.now_ms())
        assert len(points) == n
        assert sum(p.startswith("gateway_health,") for p in added) == 1
    finally:
        gw.store.close()


def _device_points_reference(gw: Gateway, now_ms: int) -> list[str]:
    """The ``device_watermark`` points as ``LiveView.health_lines`` made them before they were made in slices."""
    from gateway.lineproto import NS_PER_MS, line
    from gateway.live import DEVICE_WATERMARK

    out = []
    for device, r in gw.live.device_rows(now_ms).items():
        f: dict[str, Any] = {"readings": int(r["readings"]), "late": int(r["late"]), "active": bool(r["active"])}
        for key in ("watermark_ms", "watermark_lag_ms", "last_event_ms", "last_seen_ms"):
            if r[key] is not None:
                f[key] = int(r[key])
        tags = {"gateway": gw.live.gateway, "site": r["site"], "device": device}
        out.append(line(DEVICE_WATERMARK, tags, f, now_ms * NS_PER_MS))
    return out


def test_a_stats_file_made_earlier_never_replaces_a_later_one(tmp_path: Path) -> None:
    """The running gateway writes the stats file in a worker thread; the stop writes the last one at once. Written
    in either order, the file keeps the one made last."""
    doc = {
        "mqtt": {"prefix": "ab", "client_id": "gw-ab"},
        "influx": {"target": "v1", "url": "http://127.0.0.1:9", "database": "db"},
        "state": {"dir": str(tmp_path / "state")},
    }
    stats = tmp_path / "stats.json"
    gw = Gateway(parse_config(doc, env={}), now_ms=lambda: T0, stats_file=stats)
    try:
        gw._write_stats_text('{"made":2}', 2)
        gw._write_stats_text('{"made":1}', 1)  # made first, its thread late
        assert stats.read_text(encoding="utf-8") == '{"made":2}\n'
        gw._write_stats_text('{"made":3}', 3)
        assert stats.read_text(encoding="utf-8") == '{"made":3}\n'
        assert not stats.with_suffix(".tmp").exists()
    finally:
        gw.store.close()
