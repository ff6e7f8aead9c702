"""A checkpoint in per-key rows: only the rows that changed are written, and what is restored is the state of a
run that was never interrupted."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.app import Gateway
from gateway.ckpt_rows import join_state, split_state
from gateway.config import parse_config
from gateway.errors import StateError
from gateway.salvage import recover_state
from gateway.state import RowDelta, StateFileError, StateStore, compress_checkpoint

T0 = 1_764_072_000_000

leaf = st.none() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=3)
values = st.recursive(leaf, lambda inner: st.lists(inner, max_size=3), max_leaves=6)
keyed = st.dictionaries(st.text(max_size=3), values, max_size=5)


@given(
    st.dictionaries(st.text(min_size=1, max_size=3), st.fixed_dictionaries({"a": keyed, "b": keyed, "n": leaf})),
    st.fixed_dictionaries({"state": keyed, "sites": keyed}),
    st.fixed_dictionaries({"devices": keyed, "f": leaf}),
)
def test_split_then_join_gives_back_the_state_with_its_key_order(windows: Any, tracker: Any, dedup: Any) -> None:
    state = {"version": 1, "pipeline": {"engine": {"tracker": tracker, "windows": windows}, "dedup": dedup, "x": 1}}
    want = copy.deepcopy(state)
    glob, rows = split_state(copy.deepcopy(state))
    glob, rows = json.loads(json.dumps(glob)), json.loads(json.dumps(rows))  # as stored
    got = join_state(glob, rows)
    assert got == want
    for name, op in want["pipeline"]["engine"]["windows"].items():  # dict order is state (visiting order)
        for field in ("a", "b"):
            assert list(got["pipeline"]["engine"]["windows"][name][field]) == list(op[field])
    assert list(got["pipeline"]["dedup"]["devices"]) == list(dedup["devices"])


def _config(tmp_path: Path) -> Any:
    doc = {
        "mqtt": {"prefix": "ck", "client_id": "gw-ck"},
        "influx": {"target": "v1", "url": "http://127.0.0.1:9", "database": "db"},  # never written to here
        "state": {"dir": str(tmp_path / "state")},
        "windows": [
            {
                "name": "t1m",
                "kind": "tumbling",
                "size": "1m",
                "metrics": ["x"],
                "allowed_lateness": "30s",
                "early_every": "1m",
            },
            {"name": "s5m", "kind": "sliding", "size": "2m", "slide": "1m", "metrics": ["x"]},
            {"name": "ses", "kind": "session", "gap": "30s", "metrics": ["x"], "early_count": 2},
            {"name": "site", "kind": "tumbling", "size": "1m", "metrics": ["x"], "key": "site"},
        ],
        "anomaly": {"metrics": ["x"]},
        "joins": [  # an interval join between some devices of each site (not d7: its rows stay its own)
            {
                "name": "j",
                "between": "b.t BETWEEN a.t - 10m AND a.t + 10m",
                "allowed_lateness": "5m",
                "a": {"devices": ["d[02]"], "metrics": ["x"], "where": "x > 2"},
                "b": {"devices": ["d[13]"], "metrics": ["x"]},
            }
        ],
    }
    return parse_config(doc, env={})


def _gateway(tmp_path: Path) -> Gateway:
    return Gateway(_config(tmp_path), now_ms=lambda: T0 + 36_000_000)


def _message(dev: int, i: int, t_s: int) -> tuple[str, bytes, bool]:
    rows = [{"b": 1, "s": i, "t": T0 + t_s * 1000, "q": "s", "m": {"x": float(i % 7)}}]
    site = f"s{dev % 2}"
    return f"ck/{site}/d{dev}/readings", json.dumps({"v": 1, "dev": f"d{dev}", "r": rows}).encode(), False


class _Spy:
    """Records the row changes of each checkpoint the store commits (the gateway's, off the event loop, and a
    synchronous one)."""

    def __init__(self, store: StateStore) -> None:
        self.deltas: list[RowDelta | None] = []
        inner = store.checkpoint
        inner_async = store.checkpoint_async

        def checkpoint(*args: Any, **kwargs: Any) -> None:
            inner(*args, **kwargs)
            self.deltas.append(args[4] if len(args) > 4 else kwargs.get("rows"))

        async def checkpoint_async(*args: Any, **kwargs: Any) -> None:
            await inner_async(*args, **kwargs)
            self.deltas.append(args[4] if len(args) > 4 else kwargs.get("rows"))

        store.checkpoint = checkpoint  # type: ignore[method-assign]
        store.checkpoint_async = checkpoint_async  # type: ignore[method-assign]


async def test_a_checkpoint_after_one_devices_reading_writes_only_its_rows(tmp_path: Path) -> None:
    gw = _gateway(tmp_path)
    spy = _Spy(gw.store)
    try:
        await gw._process(gw._accept([_message(d, 1, 10) for d in range(60)]))
        await gw.checkpoint()
        first = spy.deltas[-1]
        assert first is not None and first.replace and len(first.put) > 60  # every key's row, and the order row
        stored = gw.store.db.execute("SELECT COUNT(*) FROM ckpt_row").fetchone()[0]
        await gw._process(gw._accept([_message(7, 2, 12)]))
        await gw.checkpoint()
        delta = spy.deltas[-1]
        assert delta is not None and not delta.replace and not delta.delete
        assert sorted(name for name, _ in delta.put) == ["kd7", "ks1"]  # the device's row and its site's
        assert gw.store.db.execute("SELECT COUNT(*) FROM ckpt_row").fetchone()[0] == stored
        await gw.checkpoint()  # nothing changed: no row written
        assert spy.deltas[-1] == RowDelta([], [], replace=False)
    finally:
        gw.store.close()


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.tuples(st.integers(0, 4), st.integers(0, 40), st.sampled_from(["msg", "ckpt", "restart"])),
        min_size=5,
        max_size=40,
    )
)
async def test_a_restored_run_equals_one_never_interrupted(
    tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[int, int, str]]
) -> None:
    """Checkpoints (incremental: rows rewritten, keys gone deleted) and restarts at any points of a stream give
    the state of the same stream taken in one go."""
    base = tmp_path_factory.mktemp("rows")
    ref, gw = _gateway(base / "ref"), _gateway(base / "run")
    t = 0
    try:
        for i, (dev, dt, what) in enumerate(steps):
            t += dt * 5  # minutes go by: windows close and keys are dropped, and come back later
            msg = [_message(dev, i, t)]
            await ref._process(ref._accept(msg))
            await gw._process(gw._accept(msg))
            if what == "ckpt":
                await gw.checkpoint()
            elif what == "restart":
                await gw.checkpoint()
                gw.store.close()
                gw = _gateway(base / "run")
                await gw.recover()
                assert gw.replayed == 0  # the state came wholly from the rows
            assert gw.pipeline.snapshot() == ref.pipeline.snapshot()
        await gw.checkpoint()
        gw.store.close()
        gw = _gateway(base / "run")
        await gw.recover()
        assert json.dumps(gw.pipeline.snapshot()) == json.dumps(ref.pipeline.snapshot())  # key order too
    finally:
        ref.store.close()
        gw.store.close()


async def test_a_checkpoint_of_the_one_value_layout_restores_and_the_next_one_writes_rows(tmp_path: Path) -> None:
    gw = _gateway(tmp_path)
    try:
        await gw._process(gw._accept([_message(d, 1, 10) for d in range(5)]))
        await gw.checkpoint()
        ck = gw.store.load_checkpoint()
        assert ck is not None and "rows" not in ck.state
        whole = compress_checkpoint(json.dumps({**ck.state, "version": 1}, separators=(",", ":")))
        gw.store.db.execute("UPDATE checkpoint SET state = ?", (whole,))  # as the gateway before wrote it
        gw.store.db.execute("DELETE FROM ckpt_row")
    finally:
        gw.store.close()
    old = _gateway(tmp_path)
    try:
        await old.recover()
        assert old.pipeline.snapshot() == gw.pipeline.snapshot()
        await old._process(old._accept([_message(1, 2, 20)]))
        await old.checkpoint()  # the stored rows are not known: all written
        rows = old.store.db.execute("SELECT COUNT(*) FROM ckpt_row").fetchone()[0]
        assert rows == 10  # five devices' rows, two sites', two join keys' (j:j:s0, j:j:s1) and the order row
        ck = old.store.load_checkpoint()
        assert ck is not None and ck.state["pipeline"] == json.loads(json.dumps(old.pipeline.snapshot()))
    finally:
        old.store.close()


@pytest.mark.parametrize("damage", ["missing", "garbled"])
async def test_a_damaged_or_missing_row_is_damaged_state(tmp_path: Path, damage: str) -> None:
    gw = _gateway(tmp_path)
    try:
        await gw._process(gw._accept([_message(d, 1, 10) for d in range(3)]))
        await gw.checkpoint()
        if damage == "missing":
            gw.store.db.execute("DELETE FROM ckpt_row WHERE name = 'kd1'")
        else:
            gw.store.db.execute("UPDATE ckpt_row SET data = x'789c0102' WHERE name = 'kd1'")
    finally:
        gw.store.close()
    again = _gateway(tmp_path)
    try:
        with pytest.raises(StateFileError) as info:
            await again.recover()
        assert info.value.damaged and "checkpoint" in str(info.value) and isinstance(info.value, StateError)
    finally:
        again.store.close()


@pytest.mark.parametrize("damage", ["none", "garbled"])
async def test_recover_keeps_a_checkpoint_in_rows_or_reports_it_lost(tmp_path: Path, damage: str) -> None:
    """``edgekit-gateway recover`` on the rows layout: the rows are joined and kept (as one value, which the
    gateway restores), or, a row garbled, the checkpoint is reported lost and the log kept."""
    config = _config(tmp_path)
    gw = _gateway(tmp_path)
    try:
        await gw._process(gw._accept([_message(d, 1, 10) for d in range(3)]))
        await gw.checkpoint()
        await gw._process(gw._accept([_message(1, 2, 20)]))  # in the log after the checkpoint
        if damage == "garbled":
            gw.store.db.execute("UPDATE ckpt_row SET data = x'789c0102' WHERE name = 'kd2'")
    finally:
        gw.store.close()
    report = recover_state(config, now_ms=T0)
    text = "\n".join(report.lines())
    again = _gateway(tmp_path)
    try:
        await again.recover()
        if damage == "none":
            assert report.checkpoint == "kept" and again.replayed == 1
            assert again.pipeline.snapshot() == gw.pipeline.snapshot()
        else:
            assert report.checkpoint == "lost" and "checkpoint row 'kd2'" in report.checkpoint_why, text
            assert again.replayed == 1 and again.pipeline.stats.readings_accepted == 1
    finally:
        again.store.close()


@pytest.mark.parametrize("sync", [True, False])
async def test_many_rows_are_written_and_deleted_exactly(tmp_path: Path, sync: bool) -> None:
    """The rows go in statements of several rows each: every row written, replaced and deleted as asked, however
    many (past one statement's worth), by the checkpoint on the event loop and the one in a worker thread."""
    store = StateStore(tmp_path / "state.db")
    try:

        async def checkpoint(pos: int, delta: RowDelta) -> None:
            if sync:
                store.checkpoint(pos, {"rows": 1}, 0, rows=delta)
            else:
                await store.checkpoint_async(pos, {"rows": 1}, 0, rows=delta)

        first = {f"k{i}": f"v{i}".encode() for i in range(600)}
        await checkpoint(1, RowDelta(list(first.items()), replace=True))
        changed = {f"k{i}": f"w{i}".encode() for i in range(0, 600, 7)}
        gone = [f"k{i}" for i in range(1, 600, 2) if f"k{i}" not in changed]
        await checkpoint(2, RowDelta(list(changed.items()), gone))
        want = {**{n: d for n, d in first.items() if n not in gone}, **changed}
        assert dict(store.db.execute("SELECT name, data FROM ckpt_row").fetchall()) == want
    finally:
        store.close()


async def test_a_device_that_moved_stays_in_its_old_sites_groups_across_a_restart(tmp_path: Path) -> None:
    """Device m moves from site s1 to s2 (declared in ``devices.sites``, which a restart takes): it stays a member
    of group g (``site:s1``) for the pattern keyed by g and the group-relative window, as in a run never
    interrupted. A restart after the move made the members again from each device's current site (m left g), so
    the group's watermark went on without m and the restored state and outputs differed."""

    def config(base: Path, moved: bool) -> Any:
        doc: dict[str, Any] = {
            "mqtt": {"prefix": "ck", "client_id": "gw-ck"},
            "influx": {"target": "v1", "url": "http://127.0.0.1:9", "database": "db"},  # never written to here
            "state": {"dir": str(base)},
            "groups": {"g": ["site:s1"]},
            "windows": [{"name": "w", "kind": "tumbling", "size": "1m", "metrics": ["x"], "relative": {}}],
            "patterns": [{"name": "p", "key": "group:g", "within": "5m",
                          "steps": [{"name": "hot", "where": "x > 100", "times": 2}]}],
        }  # fmt: skip
        if moved:
            doc["devices"] = {"sites": {"m": "s2"}}
        return parse_config(doc, env={})

    def msg(site: str, dev: str, seq: int, t_ms: int) -> tuple[str, bytes, bool]:
        body = {"v": 1, "dev": dev, "r": [{"b": 1, "s": seq, "t": T0 + t_ms, "q": "s", "m": {"x": float(seq)}}]}
        return f"ck/{site}/{dev}/readings", json.dumps(body).encode(), False

    now = [T0 + 1_000]

    async def restart(gw: Gateway, base: Path) -> Gateway:
        await gw.checkpoint()
        gw.store.close()
        gw = Gateway(config(base, True), now_ms=lambda: now[0])
        await gw.recover()
        return gw

    ref = Gateway(config(tmp_path / "ref", False), now_ms=lambda: now[0])
    gw = Gateway(config(tmp_path / "run", False), now_ms=lambda: now[0])
    try:
        for g in (ref, gw):
            await g._process(g._accept([msg("s1", "a", 1, 0), msg("s1", "m", 1, 100)]))
        ref, gw = await restart(ref, tmp_path / "ref"), await restart(gw, tmp_path / "run")  # m declared at s2
        now[0] += 1_000
        for g in (ref, gw):
            await g._process(g._accept([msg("s2", "m", 2, 5_000)]))  # m moves
        assert ref.pipeline.stats.moved == 1
        gw = await restart(gw, tmp_path / "run")
        for g in (ref, gw):
            assert g.pipeline.cep.members == {"g": ["a", "m"]}
            assert g.pipeline.relative is not None and g.pipeline.relative.members == {"g": ["a", "m"]}
        for i in range(2, 6):  # a goes on; m, in g still and active, holds the group back
            now[0] += 20_000
            for g in (ref, gw):
                await g._process(g._accept([msg("s1", "a", i, i * 20_000)]))
        assert json.dumps(gw.pipeline.snapshot()) == json.dumps(ref.pipeline.snapshot())
    finally:
        ref.store.close()
        gw.store.close()
