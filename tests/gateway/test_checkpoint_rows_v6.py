"""Checkpoint version 6: the per-key rows compressed with zstd and the anomaly detectors' states as lists, the global
part still zlib. A checkpoint of version 5 (zlib rows, the detectors' dicts) restores into the same state and the
gateway goes on as one never stopped; the checkpoints after it rewrite only the rows that changed, and a checkpoint
that holds rows of both kinds restores too. A row cut or altered is damaged state, named as such."""

from __future__ import annotations

import json
import random
import sqlite3
import zlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import app as app_module
from gateway.anomaly.detector import STATE_FIELDS
from gateway.anomaly.multivariate import MULTI_FIELDS
from gateway.app import Gateway
from gateway.ckpt_rows import encode_row
from gateway.config import parse_config
from gateway.errors import StateError
from gateway.salvage import recover_state
from gateway.state import ROW_MARK, StateFileError, compress_row, decompress_row

T0 = 1_764_072_000_000
ZSTD = b"\x28\xb5\x2f\xfd"


def _gateway(tmp_path: Path) -> Gateway:
    doc = {
        "mqtt": {"prefix": "pr", "client_id": "gw-v6"},
        "influx": {"target": "v1", "url": "http://127.0.0.1:9", "database": "db"},  # never written to here
        "state": {"dir": str(tmp_path / "state")},
        "windows": [{"name": "t1m", "kind": "tumbling", "size": "1m", "metrics": ["x", "y"]}],
        "anomaly": {"metrics": ["x", "y"]},
    }
    return Gateway(parse_config(doc, env={}), now_ms=lambda: T0 + 36_000_000)


def _message(dev: int, i: int) -> tuple[str, bytes, bool]:
    rnd = random.Random(dev * 100_000 + i)
    m = {"x": 20.0 + rnd.gauss(0, 0.5) + (8.0 if i == 70 else 0.0), "y": 3.0 + rnd.gauss(0, 0.1)}
    rows = [{"b": 1, "s": i, "t": T0 + i * 10_000 + dev, "q": "s", "m": m}]
    return f"pr/site/d{dev}/readings", json.dumps({"v": 1, "dev": f"d{dev}", "r": rows}).encode(), False


def _stored(db: sqlite3.Connection) -> dict[str, bytes]:
    return dict(db.execute("SELECT name, data FROM ckpt_row"))


def _as_version_5(row: Any) -> Any:
    """A row of version 6 as version 5 wrote it: each detector's state a dict by name (detector version 2), the
    multivariate one's too (its first version)."""
    for metric, det in row.get("ad", {}).get("d", {}).items():
        row["ad"]["d"][metric] = {"v": 2, **dict(zip(STATE_FIELDS, det[1:], strict=True))}
    multi = row.get("a", {}).get("multi")  # a key's row holds its own device's state
    if multi is not None:
        row["a"]["multi"] = dict(zip(MULTI_FIELDS, multi[1:], strict=True))
    return row


def _downgrade(db: sqlite3.Connection) -> None:
    """Rewrite the stored checkpoint as a gateway of version 5 would have written the same state."""
    glob = json.loads(zlib.decompress(db.execute("SELECT state FROM checkpoint").fetchone()[0]))
    assert glob["version"] == 6
    glob["version"], glob["rows"] = 5, 1
    glob["pipeline"]["anomaly"]["version"] = 2
    old = {n: zlib.compress(encode_row(_as_version_5(json.loads(decompress_row(d))))) for n, d in _stored(db).items()}
    db.execute("DELETE FROM ckpt_row")
    db.executemany("INSERT INTO ckpt_row (name, data) VALUES (?, ?)", list(old.items()))
    db.execute("UPDATE checkpoint SET state = ?", (zlib.compress(json.dumps(glob).encode()),))
    db.commit()


async def test_rows_are_zstd_and_the_global_part_names_version_6_in_zlib(tmp_path: Path) -> None:
    gw = _gateway(tmp_path)
    try:
        for i in range(40):
            await gw._process(gw._accept([_message(d, i) for d in range(3)]))
        await gw.checkpoint()
        rows = _stored(gw.store.db)
        assert {"kd0", "kd1", "kd2"} <= set(rows) and all(d[:4] == ZSTD for d in rows.values())
        det = json.loads(decompress_row(rows["kd1"]))["ad"]["d"]["x"]
        assert isinstance(det, list) and det[0] == 3
        # a gateway of version 5 reads the global part (zlib) and the rows only when it says "rows": 1; under 2 it
        # leaves the zstd rows alone and refuses the checkpoint by its version, rather than call the file damaged
        glob = json.loads(zlib.decompress(gw.store.db.execute("SELECT state FROM checkpoint").fetchone()[0]))
        assert glob["version"] == app_module.STATE_VERSION == 6 and glob["rows"] == ROW_MARK == 2
    finally:
        gw.store.close()


async def test_a_checkpoint_of_a_newer_version_is_refused_by_its_version(tmp_path: Path) -> None:
    gw = _gateway(tmp_path)
    try:
        await gw._process(gw._accept([_message(1, 0)]))
        await gw.checkpoint()
        glob = json.loads(zlib.decompress(gw.store.db.execute("SELECT state FROM checkpoint").fetchone()[0]))
        gw.store.db.execute(
            "UPDATE checkpoint SET state = ?", (zlib.compress(json.dumps({**glob, "version": 7}).encode()),)
        )
        gw.store.db.commit()
    finally:
        gw.store.close()
    gw = _gateway(tmp_path)
    try:
        with pytest.raises(StateError, match="its checkpoint is of version 7, and this gateway reads versions 1, 2"):
            await gw.recover()
    finally:
        gw.store.close()
    before = {p.name: p.read_bytes() for p in (tmp_path / "state").iterdir()}
    with pytest.raises(StateError, match=r"of version 7, .* run that version, with which recover .*; nothing was chan"):
        recover_state(gw.config)  # edgekit-gateway recover: refused alike, and the files left as they were
    assert {p.name: p.read_bytes() for p in (tmp_path / "state").iterdir()} == before


async def test_a_version_5_checkpoint_restores_and_goes_on_as_never_stopped(tmp_path: Path) -> None:
    ref, gw = _gateway(tmp_path / "ref"), _gateway(tmp_path / "run")
    try:
        for i in range(50):
            for g in (ref, gw):
                await g._process(g._accept([_message(d, i) for d in range(4)]))
        await gw.checkpoint()
        _downgrade(gw.store.db)
        assert all(d[:4] != ZSTD for d in _stored(gw.store.db).values())
    finally:
        gw.store.close()
    gw = _gateway(tmp_path / "run")
    try:
        await gw.recover()
        assert gw.pipeline.snapshot() == ref.pipeline.snapshot()
        for i in range(50, 60):  # devices 1 and 3 only: 0 and 2 keep their rows of version 5
            for g in (ref, gw):
                await g._process(g._accept([_message(1 + 2 * (i % 2), i)]))
        await gw.checkpoint()
        rows = _stored(gw.store.db)
        assert rows["kd1"][:4] == ZSTD and rows["kd3"][:4] == ZSTD
        assert rows["kd0"][:4] != ZSTD and rows["kd2"][:4] != ZSTD  # not changed: not rewritten
    finally:
        gw.store.close()
    gw = _gateway(tmp_path / "run")  # rows of both kinds
    try:
        await gw.recover()
        assert gw.pipeline.snapshot() == ref.pipeline.snapshot()
        for i in range(60, 90):  # a spike at 70: the detectors restored from both kinds of rows flag it alike
            for g in (ref, gw):
                await g._process(g._accept([_message(d, i) for d in range(4)]))
        assert gw.pipeline.snapshot() == ref.pipeline.snapshot()
        stats = gw.pipeline.snapshot()["anomaly"]["stats"]
        assert stats["alerts"] > 0 and stats["multivariate_alerts"] > 0
    finally:
        gw.store.close()
        ref.store.close()


async def test_a_row_cut_or_altered_is_damaged_state(tmp_path: Path) -> None:
    gw = _gateway(tmp_path)
    try:
        for i in range(20):
            await gw._process(gw._accept([_message(d, i) for d in range(2)]))
        await gw.checkpoint()
        data = _stored(gw.store.db)["kd1"]
        gw.store.db.execute("UPDATE ckpt_row SET data = ? WHERE name = 'kd1'", (data[: len(data) // 2],))
        gw.store.db.commit()
    finally:
        gw.store.close()
    gw = _gateway(tmp_path)
    try:
        with pytest.raises(StateFileError, match="checkpoint row 'kd1': zstd"):
            await gw.recover()
    finally:
        gw.store.close()


@given(st.binary(max_size=20_000))
@settings(max_examples=200, deadline=None)
def test_any_text_comes_back(data: bytes) -> None:
    stored = compress_row(data)
    assert stored[:4] == ZSTD and decompress_row(stored) == data
    assert decompress_row(zlib.compress(data, 1)) == data  # as written before


@pytest.mark.parametrize("bad", [b"", b"\x28\xb5\x2f\xfd", b"\x28\xb5\x2f\xfd" + bytes(20), b"x\x9c\x00\x01", b"{}"])
def test_what_is_neither_is_refused_by_name(bad: bytes) -> None:
    with pytest.raises(ValueError, match=r"zstd|zlib"):
        decompress_row(bad)
