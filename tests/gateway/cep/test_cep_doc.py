"""docs/cep.md stays true: its TOML declares the shipped example patterns, its Python builds them."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from test_cep_examples import EXAMPLE

from gateway.cep import parse_patterns
from gateway.config import load_config

DOC = Path(__file__).resolve().parents[3] / "docs" / "cep.md"


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)


def test_doc_toml_declares_the_shipped_examples() -> None:
    doc = tomllib.loads(blocks("toml")[0])
    shipped = load_config(EXAMPLE, env={}).patterns
    documented = parse_patterns(doc["patterns"])
    strip = [p.__class__(**{**{f: getattr(p, f) for f in p.__slots__}, "message": ""}) for p in shipped]
    assert documented == tuple(strip)


def test_doc_builder_gives_the_same_patterns() -> None:
    ns: dict[str, Any] = {}
    exec(blocks("python")[0], ns)
    shipped = {p.name: p for p in load_config(EXAMPLE, env={}).patterns}
    assert [s.where for s in ns["overheat"].steps] == [s.where for s in shipped["overheat_pressure_drop"].steps]
    assert [(s.name, s.follow, s.within_ms, s.where) for s in ns["door"].steps] == [
        (s.name, s.follow, s.within_ms, s.where) for s in shipped["door_left_open"].steps
    ]


def test_doc_fast_alert_example_parses() -> None:
    fast = next(b for b in blocks("toml") if 'on = "both"' in b)  # the fast-alert example, wherever it stands
    (spec,) = parse_patterns(tomllib.loads(fast)["patterns"])
    assert (spec.name, spec.on, spec.within_ms, [s.follow for s in spec.steps]) == (
        "heat_rising",
        "both",
        10_000,
        ["begin", "next"],
    )
