"""Every shared vector in tests/vectors/ against the gateway's decoder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import DecodeError
from gateway.model import Batch, StatusUpdate
from gateway.protocol import REASONS, decode
from gateway.schema import MetricTypes

VECTORS = sorted((Path(__file__).parent.parent / "vectors").glob("*.json"))


def load(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as f:
        data: dict[str, Any] = json.load(f)
    return data


def payload_of(vec: dict[str, Any]) -> bytes:
    if "payload_hex" in vec:
        return bytes.fromhex(vec["payload_hex"])
    return str(vec["payload"]).encode("utf-8")


def types_of(vec: dict[str, Any]) -> MetricTypes:
    """The ``[metric_types]`` declaration a vector is decoded with (none: every metric a float)."""
    declared = vec.get("metric_types", {})
    assert set(declared) <= {"integer", "boolean", "string"}, declared
    return MetricTypes(**{kind: frozenset(names) for kind, names in declared.items()})


def test_there_are_vectors_of_every_kind() -> None:
    kinds = {load(p)["expect"]["kind"] for p in VECTORS}
    assert kinds == {"readings", "status", "error"}
    assert len(VECTORS) >= 20


@pytest.mark.parametrize("path", VECTORS, ids=[p.stem for p in VECTORS])
def test_vector(path: Path) -> None:
    vec = load(path)
    expect = vec["expect"]
    payload = payload_of(vec)
    if expect["kind"] == "error":
        assert expect["reason"] in REASONS
        with pytest.raises(DecodeError) as info:
            decode(vec["topic"], payload, vec["received_ms"], types=types_of(vec))
        assert info.value.reason == expect["reason"], info.value.detail
        assert info.value.detail  # says what was wrong
        return
    result = decode(vec["topic"], payload, vec["received_ms"], types=types_of(vec))
    if expect["kind"] == "status":
        assert isinstance(result, StatusUpdate)
        assert result.state == expect["state"]
        assert dict(result.fields) == expect["fields"]
        assert {k: type(v) for k, v in result.fields.items()} == {k: type(v) for k, v in expect["fields"].items()}
        return
    assert isinstance(result, Batch)
    got = [
        {
            "site": r.site,
            "device": r.device,
            "boot": r.boot,
            "seq": r.seq,
            "t": r.t_ms,
            "q": r.quality,
            "m": dict(r.metrics),
        }
        for r in result.readings
    ]
    assert got == expect["readings"]
    # value types matter (an int stays an int, a bool a bool): compare them too
    for g, e in zip(got, expect["readings"], strict=True):
        assert {k: type(v) for k, v in g["m"].items()} == {k: type(v) for k, v in e["m"].items()}
    assert [{"index": d.index, "reason": d.reason} for d in result.rejected] == expect["rejected"]
    for dead in result.rejected:
        assert dead.detail and dead.topic == vec["topic"] and dead.device == "dev-1"
    assert result.flushed_ms == expect["flushed"]


@pytest.mark.parametrize("path", [p for p in VECTORS if load(p).get("encode")], ids=lambda p: p.stem)
def test_encode_vectors_are_canonical(path: Path) -> None:
    """Vectors marked ``encode`` are in the canonical form the firmware must produce byte for byte."""
    vec = load(path)
    doc = json.loads(vec["payload"])
    assert json.dumps(doc, separators=(",", ":")) == vec["payload"]
    assert list(doc)[:2] == ["v", "dev"]
    for reading in doc.get("r", []):
        assert list(reading) == ["b", "s", "t", "q", "m"]
