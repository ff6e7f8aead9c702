"""The firmware's encoder, under the real MicroPython, produces every `encode` vector byte for byte."""

from __future__ import annotations

import json
from pathlib import Path

from gateway.protocol import decode

from .conftest import VECTORS, run_mpy

ENCODE = sorted(p for p in VECTORS.glob("*.json") if json.loads(p.read_text()).get("encode"))

MPY_ENCODE = """
import json, codec, binascii
with open('cases.json') as f:
    cases = json.load(f)
for c in cases:
    if c['kind'] == 'readings':
        rs = [tuple(r[:4]) + ([tuple(m) for m in r[4]],) for r in c['readings']]
        out = codec.readings(c['dev'], rs, c['flushed'])
        if rs:  # the preallocated batcher must agree with the one-shot encoder
            b = codec.Batcher(c['dev'])
            for r in rs:
                assert b.add(r)
            assert bytes(b.finish(c['flushed'])) == out
    else:
        out = codec.status(c['dev'], c['state'], [tuple(p) for p in c['fields']])
    print('OUT', c['name'], binascii.hexlify(out).decode())
"""


def _case(path: Path) -> dict[str, object]:
    v = json.loads(path.read_text())
    exp = v["expect"]
    dev = v["topic"].split("/")[2]
    if exp["kind"] == "readings":
        rs = [[r["boot"], r["seq"], r["t"], r["q"], [[k, x] for k, x in r["m"].items()]] for r in exp["readings"]]
        return {"name": path.stem, "kind": "readings", "dev": dev, "readings": rs, "flushed": exp["flushed"]}
    return {
        "name": path.stem,
        "kind": "status",
        "dev": dev,
        "state": exp["state"],
        "fields": [[k, x] for k, x in exp["fields"].items()],
    }


def test_vectors_exist() -> None:
    assert len(ENCODE) >= 5


def test_encoder_reproduces_every_encode_vector(micropython: str, tmp_path: Path) -> None:
    (tmp_path / "cases.json").write_text(json.dumps([_case(p) for p in ENCODE]))
    r = run_mpy(micropython, MPY_ENCODE, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    got = {ln.split()[1]: bytes.fromhex(ln.split()[2]) for ln in r.stdout.splitlines() if ln.startswith("OUT ")}
    assert set(got) == {p.stem for p in ENCODE}
    for p in ENCODE:
        v = json.loads(p.read_text())
        assert got[p.stem] == v["payload"].encode(), p.name
        decode(v["topic"], got[p.stem], v["received_ms"])  # and the gateway accepts it


MPY_VALUES = """
import codec
for v in (0.0, -0.0, 21.6, 40.0, 1013.25, -12.5, 1e-7, 3.4e38, 1/3, 123456789.125, 1e16):
    print('F', repr(v), codec.jfloat(v))
for v, d in ((2160, 2), (-5, 2), (0, 1), (4001, 1), (3900, 0), (-1, 3)):
    print('X', v, d, codec.jfixed(v, d))
print('S', codec.jstr('a"b\\\\c\\n\\x01'))
"""


def test_number_and_string_formatting(micropython: str, tmp_path: Path) -> None:
    r = run_mpy(micropython, MPY_VALUES, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    floats = [ln.split()[1:] for ln in r.stdout.splitlines() if ln.startswith("F ")]
    for src, text in floats:
        assert float(text) == float(src), (src, text)  # reads back exactly
        json.loads(text)
    fixed = {(int(a), int(b)): c for a, b, c in (ln.split()[1:] for ln in r.stdout.splitlines() if ln[0] == "X")}
    assert fixed == {
        (2160, 2): "21.6",
        (-5, 2): "-0.05",
        (0, 1): "0.0",
        (4001, 1): "400.1",
        (3900, 0): "3900",
        (-1, 3): "-0.001",
    }
    s = next(ln[2:] for ln in r.stdout.splitlines() if ln.startswith("S "))
    assert json.loads(s) == 'a"b\\c\n\x01'
