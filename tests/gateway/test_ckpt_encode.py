"""A checkpoint row's text (``ckpt_rows.encode_row``: msgspec's encoder, checked) reads back exactly as the
standard library's text of the same row (``dumps_row``, the reference): the same values, of the same types,
floats to the bit, NaN and infinities included, over the whole space of values a row can hold."""

from __future__ import annotations

import json
import math
import struct
import tomllib
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import ckpt_rows
from gateway.app import Gateway
from gateway.ckpt_rows import dumps_row, encode_row, split_state
from gateway.config import parse_config

T0 = 1_764_072_000_000
EXAMPLE = (Path(__file__).resolve().parents[2] / "gateway/examples/gateway.toml").read_text()


def same(a: Any, b: Any) -> bool:
    """Equal values of the same types, floats by their bits (a NaN equal to a NaN), dicts in the same order."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or struct.pack("<d", a) == struct.pack("<d", b)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


def _plain(x: Any) -> bool:
    """Only plain JSON values: no subclass of dict or list (a dict's order is what the comparison cannot see)."""
    if type(x) is dict:
        return all(type(k) is str and _plain(v) for k, v in x.items())
    if type(x) is list:
        return all(_plain(v) for v in x)
    return x is None or type(x) in (str, int, float, bool)


def read(text: bytes) -> Any:
    return json.loads(text)  # as read_rows reads a stored row


def check(row: Any) -> None:
    try:
        want = read(dumps_row(row).encode())
    except Exception as exc:  # the reference refuses it: so does encode_row, with the same kind of error
        with pytest.raises(type(exc)):
            encode_row(row)
        return
    assert same(read(encode_row(row)), want), row


any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=6)  # lone surrogates too
leaf = (
    st.none()
    | st.booleans()
    | st.integers()  # unbounded: 2**64 and beyond, as the packed (t, boot, seq) of first and last readings
    | st.floats()  # NaN, infinities, -0.0, subnormals
    | any_text
)
key = any_text | st.integers() | st.floats() | st.booleans() | st.none()  # json writes each of these as a string
values = st.recursive(
    leaf,
    lambda inner: (
        st.lists(inner, max_size=4) | st.lists(inner, max_size=4).map(tuple) | st.dictionaries(key, inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=3000, deadline=None)
@given(values)
def test_every_value_reads_back_as_the_reference_writes_it(row: Any) -> None:
    check(row)


def _floats() -> list[float]:
    out = [0.0, -0.0, 5e-324, -5e-324, 2.2250738585072014e-308, 1.7976931348623157e308, math.inf, -math.inf]
    out += [math.nan, 0.1, 1 / 3, 123456789012345680000.0, 1e16, 1e-5, 1e-7, 9007199254740993.0, 1e22, 1e21]
    for e in range(-1074, 1024):
        out += [math.ldexp(1.0, e), -math.ldexp(1.0, e), math.ldexp(1.0, e) * 3]
    for e in range(-325, 309):
        out += [float(f"1e{e}"), float(f"-9.99e{e}")]
    return [x for x in out if not math.isinf(x) or x in (math.inf, -math.inf)]


def test_floats_at_every_exponent_and_the_edges_read_back_to_the_bit() -> None:
    floats = _floats()
    for x in floats:
        check([x, {"v": x}])
    check(floats)
    ints = [0, -1, 2**53 + 1, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64 - 1, 2**64, 10**40, -(10**40)]
    check(ints)
    check({"\ud800": ["\udfff", "a\u2028b", "\x00\x1f\x7f", "\U0001f600", "é"], 1: 2, 2.5: None, False: [], None: ()})


def test_the_fast_path_writes_rows_it_reads_back_and_steps_aside_for_the_rest() -> None:
    """What msgspec alone would get wrong (a NaN or an infinity as null, an int key as a string, a lone surrogate)
    is written by json; a row of plain values is msgspec's own text (the fast path taken)."""
    for row in ({"sum": math.nan}, {"m2": math.inf}, {"d": {1: "x"}}, {"s": "\udc80"}):
        assert encode_row(row) == dumps_row(row).encode()
    assert not same(read(msgspec.json.encode({"sum": math.nan})), {"sum": math.nan})  # why the check is there
    plain = {"w": [[T0, 0, [20, 420.99, 1e-05, 21.76, 2**100, None, True, "s"]]], "t": ["s", T0, None, False]}
    assert encode_row(plain) == msgspec.json.encode(plain) != dumps_row(plain).encode()  # 0.00001, not 1e-05
    assert same(read(encode_row(plain)), read(dumps_row(plain).encode()))


def test_pure_writes_the_reference_text(monkeypatch: pytest.MonkeyPatch) -> None:
    """``EDGEKIT_ENGINE=pure`` (``FAST_ROWS`` false) writes every row with json."""
    monkeypatch.setattr(ckpt_rows, "FAST_ROWS", False)
    plain = {"w": [1e-05, 2**100, "s"]}
    assert encode_row(plain) == dumps_row(plain).encode()


def _config(tmp_path: Path) -> Any:
    doc = {
        "mqtt": {"prefix": "ck", "client_id": "gw-enc"},
        "influx": {"target": "v1", "url": "http://127.0.0.1:9", "database": "db"},  # never written to here
        "state": {"dir": str(tmp_path / "state")},
        "windows": [
            {"name": "t1m", "kind": "tumbling", "size": "1m", "metrics": ["x"], "allowed_lateness": "30s"},
            {"name": "s2m", "kind": "sliding", "size": "2m", "slide": "1m", "metrics": ["x"]},
            {"name": "ses", "kind": "session", "gap": "30s", "metrics": ["x"]},
        ],
        "anomaly": {"metrics": ["x"]},
    }
    return parse_config(doc, env={})


def _message(dev: int, i: int, t_s: int, x: float) -> tuple[str, bytes, bool]:
    rows = [{"b": 1, "s": i, "t": T0 + t_s * 1000, "q": "s", "m": {"x": x}}]
    return f"ck/s{dev % 2}/d{dev}/readings", json.dumps({"v": 1, "dev": f"d{dev}", "r": rows}).encode(), False


async def test_a_state_holding_infinities_restores_as_it_was(tmp_path: Path) -> None:
    """Readings near the largest float overflow a window's sum and its Welford M2 to infinity; the checkpoint's
    rows hold them, and the restarted gateway has them back (msgspec alone writes them as null)."""
    gw = Gateway(_config(tmp_path), now_ms=lambda: T0 + 36_000_000)
    try:
        msgs = [_message(d, i, 10 + i, 1.5e308 * (-1) ** i if d == 0 else float(i)) for i in range(4) for d in range(3)]
        await gw._process(gw._accept(msgs))
        want = json.dumps(gw.pipeline.snapshot())
        assert "Infinity" in want or "NaN" in want  # the state does hold them
        _, rows = split_state({"pipeline": gw.pipeline.snapshot()})
        assert all(_plain(r) for r in rows.values())  # what encode_row's comparison is sure of (its docstring)
        texts = [encode_row(r) for r in rows.values()]
        assert any(t == msgspec.json.encode(r) for t, r in zip(texts, rows.values(), strict=True))  # fast path
        await gw.checkpoint()
    finally:
        gw.store.close()
    again = Gateway(_config(tmp_path), now_ms=lambda: T0 + 36_000_000)
    try:
        await again.recover()
        assert again.replayed == 0  # from the checkpoint's rows alone
        assert json.dumps(again.pipeline.snapshot()) == want
    finally:
        again.store.close()


async def test_the_rows_of_a_gateway_with_every_kind_of_state_are_plain_values(tmp_path: Path) -> None:
    """The example's four patterns, windows with early triggers and lateness (a site's too), an interval join and
    anomaly detection: every row a checkpoint writes holds only plain values, and each is written by msgspec (the
    fast path), not by json."""
    doc = tomllib.loads(EXAMPLE)
    doc["mqtt"] = {"prefix": "ck", "client_id": "gw-plain"}
    doc["influx"] = {"target": "v1", "url": "http://127.0.0.1:9", "database": "db"}
    doc["state"] = {"dir": str(tmp_path / "state")}
    doc["windows"] = [
        {"name": "t1m", "kind": "tumbling", "size": "1m", "metrics": ["x"], "allowed_lateness": "30s",
         "early_every": "1m"},
        {"name": "s2m", "kind": "sliding", "size": "2m", "slide": "1m", "metrics": ["x", "rh"]},
        {"name": "ses", "kind": "session", "gap": "30s", "metrics": ["x"], "early_count": 2},
        {"name": "site", "kind": "tumbling", "size": "1m", "metrics": ["x"], "key": "site"},
    ]  # fmt: skip
    doc["anomaly"] = {"metrics": ["x", "rh"]}
    sides = {"a": {"devices": ["d[02]"], "metrics": ["x"]}, "b": {"devices": ["d[13]"], "metrics": ["x"]}}
    doc["joins"] = [{"name": "j", "between": "b.t BETWEEN a.t - 10m AND a.t + 10m", "allowed_lateness": "5m", **sides}]
    gw = Gateway(parse_config(doc, env={}), now_ms=lambda: T0 + 36_000_000)
    try:
        msgs = []
        for i in range(40):
            for d in range(4):
                m = {"x": float(i % 7), "rh": 40.0 + d, "status": "FAILED" if i % 5 == 0 else "OK",
                     "door": "open" if i % 9 == 0 else "closed", "temp_c": 20.0 + i,
                     "pressure_hpa": 1000.0 - i}  # fmt: skip
                rows = [{"b": 1, "s": i, "t": T0 + (10 + i * 7) * 1000, "q": "s", "m": m}]
                body = {"v": 1, "dev": f"d{d}", "r": rows, "flushed": T0 + (10 + i * 7) * 1000}
                msgs.append((f"ck/s{d % 2}/d{d}/readings", json.dumps(body).encode(), False))
        await gw._process(gw._accept(msgs))
        assert gw.pipeline.stats.alerts > 0 and gw.pipeline.stats.window_results > 0
        _, rows = split_state({"pipeline": gw.pipeline.snapshot()})
        assert len(rows) >= 6
        for name, row in rows.items():
            assert _plain(row), name
            assert encode_row(row) == msgspec.json.encode(row), name  # the fast path, its check passed
    finally:
        gw.store.close()
