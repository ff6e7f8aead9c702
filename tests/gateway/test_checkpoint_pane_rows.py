"""A sliding window's panes in checkpoint rows of their own, a chunk of panes a row: a checkpoint after a few
more readings of a key rewrites its row and its newest chunk, not all its panes; what is stored always restores
to the state at the checkpoint, and no chunk row outlives the key's row that names it."""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import app as app_module
from gateway.app import Gateway
from gateway.ckpt_rows import (
    ORDER,
    chunk_index,
    chunk_owner,
    chunk_rows_of,
    encode_row,
    join_state,
    rows_gone,
    split_rows,
    split_state,
)
from gateway.config import parse_config
from gateway.engine import Engine, parse_engine
from gateway.engine.operators import CHUNK_PANES
from gateway.model import Batch, Reading
from gateway.state import RowDelta, StateStore, decompress_row, read_rows

T0 = 1_764_072_000_000

SLIDING = {"name": "s60", "kind": "sliding", "size": "60s", "slide": "1s", "metrics": ["x", "y"]}
OTHERS = [
    {  # windows of 4 panes: a key's panes stay in its own row
        "name": "late",
        "kind": "sliding",
        "size": "40s",
        "slide": "10s",
        "metrics": ["x"],
        "allowed_lateness": "20s",
        "aggregates": ["count", "min", "last"],
    },
    {  # chunks, and late readings that change panes in older chunks
        "name": "s30",
        "kind": "sliding",
        "size": "30s",
        "slide": "3s",
        "offset": "1s",
        "metrics": ["x"],
        "allowed_lateness": "15s",
    },
    {"name": "t1m", "kind": "tumbling", "size": "1m", "metrics": ["x"]},
    {"name": "site", "kind": "sliding", "size": "20s", "slide": "1s", "metrics": ["x"], "key": "site"},
]


def _config(tmp_path: Path, windows: list[dict[str, Any]]) -> Any:
    doc = {
        "mqtt": {"prefix": "pr", "client_id": "gw-pr"},
        "influx": {"target": "v1", "url": "http://127.0.0.1:9", "database": "db"},  # never written to here
        "state": {"dir": str(tmp_path / "state")},
        "windows": windows,
    }
    return parse_config(doc, env={})


def _gateway(tmp_path: Path, windows: list[dict[str, Any]] | None = None) -> Gateway:
    return Gateway(_config(tmp_path, windows or [SLIDING, *OTHERS]), now_ms=lambda: T0 + 36_000_000)


def _message(dev: int, i: int, t_s: float) -> tuple[str, bytes, bool]:
    m: dict[str, float] = {"x": float(i % 7) + 0.25}
    if i % 3:
        m["y"] = i / 7
    rows = [{"b": 1, "s": i, "t": T0 + int(t_s * 1000), "q": "s", "m": m}]
    return f"pr/site{dev % 2}/d{dev}/readings", json.dumps({"v": 1, "dev": f"d{dev}", "r": rows}).encode(), False


class _Spy:
    """The row changes of each checkpoint the store commits."""

    def __init__(self, store: StateStore) -> None:
        self.deltas: list[RowDelta] = []
        inner = store.checkpoint_async

        async def checkpoint_async(*args: Any, **kwargs: Any) -> None:
            await inner(*args, **kwargs)
            self.deltas.append(args[4] if len(args) > 4 else kwargs["rows"])

        store.checkpoint_async = checkpoint_async  # type: ignore[method-assign]


def _stored_rows(gw: Gateway) -> dict[str, Any]:
    return {n: json.loads(decompress_row(d)) for n, d in gw.store.db.execute("SELECT name, data FROM ckpt_row")}


def _check_stored(gw: Gateway) -> None:
    """What the state file holds now restores to the pipeline's state, and every chunk row is named by its key's
    row (none left behind)."""
    ck = gw.store.load_checkpoint()
    assert ck is not None
    assert json.dumps(ck.state["pipeline"]) == json.dumps(json.loads(json.dumps(gw.pipeline.snapshot())))
    rows = _stored_rows(gw)
    named = set().union(*(chunk_rows_of(n, r) for n, r in rows.items() if n.startswith("k")))
    chunks = {n for n in rows if n.startswith("p")}
    assert chunks == named, (sorted(chunks - named)[:3], sorted(named - chunks)[:3])


async def _ends_as(ref: Gateway, gw: Gateway, where: Path) -> Gateway:
    """A last checkpoint (checked as stored), a restart, and the run restored is ``ref``'s, key order included;
    the restarted gateway (to close)."""
    await gw.checkpoint()
    _check_stored(gw)
    gw.store.close()
    gw = _gateway(where)
    await gw.recover()
    assert json.dumps(gw.pipeline.snapshot()) == json.dumps(ref.pipeline.snapshot())
    return gw


async def test_a_checkpoint_after_two_more_readings_rewrites_the_newest_chunk_not_every_pane(tmp_path: Path) -> None:
    gw = _gateway(tmp_path, [SLIDING])
    spy = _Spy(gw.store)
    try:
        for i in range(100):  # one reading a second: 60 panes of one reading in the window's state
            await gw._process(gw._accept([_message(1, i, i)]))
        await gw.checkpoint()
        whole = sum(len(d) for n, d in spy.deltas[-1].put if n != ORDER)
        for i in range(100, 102):  # the next checkpoint, two seconds later
            await gw._process(gw._accept([_message(1, i, i)]))
        await gw.checkpoint()
        delta = spy.deltas[-1]
        written = sum(len(d) for n, d in delta.put if n != ORDER)
        assert written < whole / 2, (written, whole, sorted(n for n, _ in delta.put))
        assert len([n for n, _ in delta.put if n.startswith("p")]) == 1  # the newest chunk only
        _check_stored(gw)
    finally:
        gw.store.close()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.tuples(
            st.integers(0, 3),  # the device (two sites)
            st.integers(0, 12),  # seconds on
            st.integers(-40, 0),  # how late the reading is (seconds)
            st.sampled_from(["msg", "msg", "msg", "ckpt", "restart", "fail"]),
        ),
        min_size=10,
        max_size=120,
    )
)
async def test_chunks_restore_the_run_and_no_stale_chunk_row_stays(
    tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[int, int, int, str]]
) -> None:
    """Checkpoints (some failing) and restarts at any points, readings late and out of order, keys whose windows all
    close and come back: after each checkpoint the state file restores to the pipeline's state and holds no chunk
    row its key's row does not name, and a restarted run ends as one never interrupted."""
    base = tmp_path_factory.mktemp("panes")
    ref, gw = _gateway(base / "ref"), _gateway(base / "run")
    t = 0
    try:
        for i, (dev, dt, late, what) in enumerate(steps):
            t += dt if dt < 11 else 200  # now and then a gap: every window of the key closes
            msg = [_message(dev, i, max(0, t + late))]
            await ref._process(ref._accept(msg))
            await gw._process(gw._accept(msg))
            if what == "fail":  # the transaction fails once: the next checkpoint writes what it did not
                inner = gw.store.checkpoint_async

                async def failing(*args: Any, **kwargs: Any) -> None:
                    raise OSError("disk full")

                gw.store.checkpoint_async = failing  # type: ignore[method-assign]
                with pytest.raises(OSError):
                    await gw.checkpoint()
                gw.store.checkpoint_async = inner  # type: ignore[method-assign]
            if what in ("ckpt", "restart"):
                await gw.checkpoint()
                _check_stored(gw)
            if what == "restart":
                gw.store.close()
                gw = _gateway(base / "run")
                await gw.recover()
                assert gw.replayed == 0
            assert gw.pipeline.snapshot() == ref.pipeline.snapshot()
        gw = await _ends_as(ref, gw, base / "run")
    finally:
        ref.store.close()
        gw.store.close()


async def test_a_checkpoint_of_version_4_restores_and_then_goes_on_in_chunks(tmp_path: Path) -> None:
    """Rows as a gateway of version 4 stored them (every key's panes in its own row): restored, and the checkpoints
    after write the keys taken with every chunk of their panes; the keys not taken keep their rows, and after a
    restart on such a checkpoint (version 5, some rows of version 4) those keys' panes count as changed."""
    ref, gw = _gateway(tmp_path / "ref"), _gateway(tmp_path / "run")
    try:
        for i in range(90):
            for g in (ref, gw):
                await g._process(g._accept([_message(i % 4, i, i)]))
        await gw.checkpoint()
        rows = _stored_rows(gw)
        glob, _ = read_rows(gw.store.db, {**json.loads(zlib.decompress(gw.store.db.execute(
            "SELECT state FROM checkpoint").fetchone()[0])), "rows": 1})  # fmt: skip
        old_glob, old_rows = split_state({"pipeline": glob["pipeline"]})  # the whole state in rows, panes inline
        assert not any(n.startswith("p") for n in old_rows) and any(n.startswith("p") for n in rows)
        gw.store.db.execute("DELETE FROM ckpt_row")
        gw.store.db.executemany(
            "INSERT INTO ckpt_row (name, data) VALUES (?, ?)",
            [(n, zlib.compress(encode_row(r))) for n, r in old_rows.items()],
        )
        state = {**glob, "pipeline": old_glob["pipeline"], "version": 4, "rows": 1}
        gw.store.db.execute("UPDATE checkpoint SET state = ?", (zlib.compress(json.dumps(state).encode()),))
        gw.store.db.commit()
    finally:
        gw.store.close()
    gw = _gateway(tmp_path / "run")
    try:
        await gw.recover()
        assert gw.pipeline.snapshot() == ref.pipeline.snapshot()
        for i in range(90, 100):  # devices 1 and 3 only: 0 and 2 keep their rows of version 4
            for g in (ref, gw):
                await g._process(g._accept([_message(1 + 2 * (i % 2), i, i)]))
        await gw.checkpoint()
        assert "kd0" in (rows := _stored_rows(gw)) and "panes" in rows["kd0"]["ws60"]["keys"]
        assert "pane_chunks" in rows["kd1"]["ws60"]["keys"]
        gw = await _ends_as(ref, gw, tmp_path / "run")
        # restarted on that checkpoint (version 5, device 0's row still of version 4): its panes are in no chunk row
        for i in range(100, 104):
            for g in (ref, gw):
                await g._process(g._accept([_message(i % 4, i, i)]))
        failures = gw.checkpoint_failures
        await gw.checkpoint()
        assert gw.checkpoint_failures == failures
        assert "pane_chunks" in _stored_rows(gw)["kd0"]["ws60"]["keys"]
        gw = await _ends_as(ref, gw, tmp_path / "run")
    finally:
        ref.store.close()
        gw.store.close()


def _engine_feed(engine: Engine, t_s: list[float]) -> None:
    for i, x in enumerate(t_s):
        t = T0 + int(x * 1000)
        r = Reading("s", "d", 1, i, t, "s", {"x": float(i), "y": 0.5})
        engine.process_batch(Batch("s", "d", "", t, (r,), ()), t + 100)


def test_the_engine_writes_out_the_chunks_from_the_oldest_pane_changed() -> None:
    engine = Engine(parse_engine({"windows": [{**SLIDING, "allowed_lateness": "30s"}]}))
    chunk = 1000 * CHUNK_PANES
    _engine_feed(engine, [float(s) for s in range(100)])

    def taken(rows: int) -> dict[str, Any]:
        ks: dict[str, Any] = engine.snapshot(rows=rows)["windows"]["s60"]["keys"]["d"]
        return ks

    every = taken(2)
    assert list(every["pane_new"]) == [str(c) for c in every["pane_chunks"]] and every["pane_chunks"]
    assert taken(1)["pane_new"] == {}  # nothing changed since
    _engine_feed(engine, [100.0, 101.5])
    new = taken(1)["pane_new"]
    assert list(new) == [str((T0 + 100_000) // chunk)] or list(new) == [str((T0 + 101_000) // chunk)]
    _engine_feed(engine, [70.5])  # late, within the allowed lateness: its pane's chunk and every one after
    ks = taken(1)
    assert [int(c) for c in ks["pane_new"]] == [c for c in ks["pane_chunks"] if c >= (T0 + 70_000) // chunk]
    # put back together, the chunks are the plain snapshot's panes
    plain = engine.snapshot()["windows"]["s60"]["keys"]["d"]
    state = {"pipeline": {"engine": {"windows": {"s60": {"keys": {"d": taken(2)}}}}}}
    rows = split_rows(state)
    joined = join_state(
        {"pipeline": {"engine": {"windows": {"s60": {}}}}},
        {**rows, ORDER: {"lists": [["d"]], "refs": {"ws60": {"keys": 0}}}},
    )
    assert json.dumps(joined["pipeline"]["engine"]["windows"]["s60"]["keys"]["d"]) == json.dumps(plain)


@given(st.text(max_size=4), st.text(max_size=4), st.integers(-(2**40), 2**40))
def test_a_chunk_rows_name_gives_back_its_key_whatever_the_names(window: str, key: str, n: int) -> None:
    cid = "w" + window
    row = {cid: {"keys": {"pane_chunks": [n], "pane_from": None}}}
    (name,) = chunk_rows_of("k" + key, row)
    assert chunk_owner(name) == "k" + key and chunk_owner("k" + key) is None
    assert chunk_index([name, "k" + key, ORDER]) == {"k" + key: (name,)}


def test_the_rows_gone_are_those_of_keys_gone_and_the_chunks_a_key_written_again_no_longer_names() -> None:
    index = {"ka": ("p1:2:wsa", "p2:2:wsa"), "kb": ("p1:2:wsb",), "kc": ("p5:2:wsc", "p6:2:wsc")}
    stored = [ORDER, "ka", "kb", "kc", "kd", *index["ka"], *index["kb"], *index["kc"], "p3:2:wsa"]
    live = {ORDER, "ka", "kc"}  # b and d gone (their rows and their chunks); a written again; c not taken
    gone, after = rows_gone(stored, index, live, {"ka": {"p2:2:wsa", "p3:2:wsa"}})
    assert sorted(gone) == ["kb", "kd", "p1:2:wsa", "p1:2:wsb"]
    assert {k: set(v) for k, v in after.items()} == {"ka": {"p2:2:wsa", "p3:2:wsa"}, "kc": set(index["kc"])}
    gone, after = rows_gone(["ka", "kc", *after["ka"], *after["kc"]], after, live, {"ka": set()})  # a's panes gone
    assert sorted(gone) == ["p2:2:wsa", "p3:2:wsa"] and after == {"kc": index["kc"]}


def test_a_missing_chunk_row_is_damaged_state() -> None:
    rows = {"kd": {"ws": {"keys": {"pane_chunks": [5], "pane_from": 1, "revs": []}}}}
    order = {"lists": [["d"]], "refs": {"ws": {"keys": 0}}}
    with pytest.raises(ValueError, match="chunk 5 of key 'd'"):
        join_state({"pipeline": {"engine": {"windows": {"s": {}}}}}, {**rows, ORDER: order})


def test_the_version_refused_by_an_older_gateway_is_the_one_written() -> None:
    assert app_module.STATE_VERSION == 6 and app_module.CHUNK_VERSIONS == (5, 6)
