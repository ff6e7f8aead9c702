"""Feeding a CEP operator batches of readings, in order or with disorder inside the watermark bound."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from gateway.cep import Cep, CepSpec, Match, PatternSpec
from gateway.engine import parse_engine
from gateway.model import Batch, Reading

T0 = 1_764_072_000_000
BOUND_MS = 5_000
NOW = T0 + 86_400_000
SITE = "site-a"

Row = tuple[str, int, int, Mapping[str, Any]]
"""(device, seq, t, metrics); boot is 1."""


def make_cep(patterns: Sequence[PatternSpec], bound_ms: int = BOUND_MS, **kw: Any) -> Cep:
    engine = parse_engine({"engine": {"watermark": {"out_of_orderness": f"{bound_ms}ms"}}})
    return Cep(CepSpec(tuple(patterns), engine, **kw))


def arrival_order(rows: Sequence[Row], rng: random.Random | None, bound_ms: int = BOUND_MS) -> list[Row]:
    """Rows in the order they reach the gateway: each delayed by 0..bound, so none is late."""
    if rng is None:
        return sorted(rows, key=lambda r: (r[2], r[0], r[1]))
    delayed = [(r[2] + rng.randint(0, bound_ms), i, r) for i, r in enumerate(rows)]
    return [r for _, _, r in sorted(delayed)]


def feed(cep: Cep, rows: Sequence[Row], rng: random.Random | None = None, *, flush: bool = True) -> list[Match]:
    """Publish ``rows`` as batches (per device, random sizes under disorder), then flushed markers past the end."""
    out: list[Match] = []
    order = arrival_order(rows, rng)
    i = 0
    while i < len(order):
        device = order[i][0]
        size = 1 if rng is None else rng.randint(1, 4)
        chunk = []
        while i < len(order) and len(chunk) < size and order[i][0] == device:
            chunk.append(order[i])
            i += 1
        readings = tuple(Reading(SITE, d, 1, seq, t, "s", dict(m)) for d, seq, t, m in chunk)
        out.extend(cep.process_batch(Batch(SITE, device, "t", NOW, readings, ()), NOW))
    if flush and rows:
        end = max(r[2] for r in rows) + 3_600_000
        for device in sorted({r[0] for r in rows}):
            out.extend(cep.process_batch(Batch(SITE, device, "t", NOW, (), (), end), NOW))
    return out


def ids(matches: Sequence[Match]) -> list[tuple[tuple[str, int, int], ...]]:
    return [m.readings for m in matches]


def events(rows: Sequence[Row]) -> list[tuple[int, str, int, int, Mapping[str, Any]]]:
    return sorted((t, d, 1, seq, m) for d, seq, t, m in rows)
