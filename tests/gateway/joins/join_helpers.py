"""The brute-force interval join, and a fleet of live and sleepy boards feeding a join operator."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.cep.expr import compile_condition
from gateway.engine import parse_engine
from gateway.joins import Joined, Joins, JoinSpec, JoinsSpec, parse_join
from gateway.model import Batch, Reading, StatusUpdate

T0 = 1_764_072_000_000
BOUND_MS = 5_000

Row = tuple[str, str, int, int, Mapping[str, Any]]
"""(site, device, seq, t, metrics); boot is 1."""
Pair = tuple[str, tuple[str, int, int], tuple[str, int, int]]
"""(key, a's identity, b's identity)."""


def make_join(raw: Mapping[str, Any]) -> JoinSpec:
    return parse_join(dict(raw))


def make_joins(
    joins: Sequence[JoinSpec], mode: str = "device", bound_ms: int = BOUND_MS, **props: Mapping[str, str]
) -> Joins:
    engine = parse_engine({"engine": {"watermark": {"mode": mode, "out_of_orderness": f"{bound_ms}ms"}}})
    return Joins(JoinsSpec(tuple(joins), engine, dict(props)))


def reference(spec: JoinSpec, rows: Sequence[Row], props: Mapping[str, Mapping[str, str]] | None = None) -> list[Pair]:
    """Every pair, by brute force: per key, the events in ``(t, side, device, boot, seq)`` order, each one paired
    with every earlier event of the other side in its interval (in that order) - the order in which the operator
    emits them once the watermark has passed both."""
    sides = (spec.a, spec.b)
    filt = [compile_condition(s.filters, {}) if s.filters else None for s in sides]
    pair = [compile_condition(s.refs, {o: 0}) if s.refs else None for s, o in zip(sides, ("b", "a"), strict=True)]
    events: dict[str, list[tuple[int, int, str, int, int, Mapping[str, Any]]]] = {}
    for site, device, seq, t, m in rows:
        key = site if spec.key == "site" else (props or {}).get(device, {}).get(spec.key_arg)
        if key is None:
            continue
        for side, s in enumerate(sides):
            from fnmatch import fnmatchcase

            if s.devices and not any(fnmatchcase(device, g) for g in s.devices):
                continue
            if not set(s.metrics) & set(m):
                continue
            f = filt[side]
            if f is not None and not f(m, (), None):
                continue
            events.setdefault(key, []).append((t, side, device, 1, seq, m))
    out: list[Pair] = []
    for key in sorted(events):
        evs = sorted(events[key], key=lambda e: e[:5])
        for i, e in enumerate(evs):
            for p in evs[:i]:
                if p[1] == e[1]:
                    continue
                a, b = (p, e) if p[1] == 0 else (e, p)
                if not (a[0] + spec.lower_ms <= b[0] <= a[0] + spec.upper_ms):
                    continue
                if pair[0] is not None and not pair[0](a[5], (b[5],), None):
                    continue
                if pair[1] is not None and not pair[1](b[5], (a[5],), None):
                    continue
                out.append((key, a[2:5], b[2:5]))
    return out


def pairs(joined: Sequence[Joined]) -> list[Pair]:
    return [(j.key, *j.readings) for j in joined]


def by_key(ps: Sequence[Pair]) -> dict[str, list[Pair]]:
    out: dict[str, list[Pair]] = {}
    for p in ps:
        out.setdefault(p[0], []).append(p)
    return out


@dataclass(frozen=True)
class Message:
    at: int
    """The gateway's clock when it arrives."""
    site: str
    device: str
    rows: tuple[Row, ...] = ()
    flushed: int | None = None
    sleep_s: float | None = None
    """A status message announcing this sleep interval (no readings)."""


def schedule(
    rows: Sequence[Row], sleepy: Mapping[str, int], rng: random.Random | None, bound_ms: int = BOUND_MS
) -> list[Message]:
    """The messages a fleet sends: a live device each reading delayed by 0..bound (in order without ``rng``), in
    batches of 1-4; a sleepy device (``sleepy[device]`` = its sleep in ms) announces its sleep at ``T0``, then
    wakes every sleep interval and sends what it read since, with a flushed marker at its last wake."""
    msgs: list[tuple[int, int, Message]] = []
    n = 0
    devices: dict[str, list[Row]] = {}
    for r in rows:
        devices.setdefault(r[1], []).append(r)
    for device, mine in sorted(devices.items()):
        if device not in sleepy:
            continue
        site = mine[0][0]
        sleep = sleepy[device]
        msgs.append((T0 - 1, n, Message(T0 - 1, site, device, sleep_s=sleep / 1000)))
        n += 1
        mine = sorted(mine, key=lambda r: r[3])
        wake = T0
        i = 0
        while i < len(mine):
            batch = []
            while i < len(mine) and mine[i][3] <= wake:
                batch.append(mine[i])
                i += 1
            # a wake with nothing read still says so: the device stays active, its marker moves on
            # (the first wake's marker would pass over boards not heard from yet: it has none)
            msgs.append((wake, n, Message(wake, site, device, tuple(batch), flushed=wake if wake > T0 else None)))
            n += 1
            wake += sleep
    # live devices: every reading delayed by 0..bound, all in one arrival order; a batch is a run of one
    # device's consecutive arrivals that leaves no reading delayed past the bound
    timed = sorted(
        ((r[3] + (rng.randint(0, bound_ms) if rng else 0), i, r) for i, r in enumerate(rows) if r[1] not in sleepy),
        key=lambda x: (x[0], x[1]),
    )
    i = 0
    while i < len(timed):
        size = rng.randint(1, 4) if rng else 1
        device = timed[i][2][1]
        chunk = [timed[i]]
        i += 1
        while (
            i < len(timed)
            and len(chunk) < size
            and timed[i][2][1] == device
            and timed[i][0] - min(r[3] for _, _, r in chunk) <= bound_ms  # each one's delay stays in the bound
        ):
            chunk.append(timed[i])
            i += 1
        at = chunk[-1][0]
        msgs.append((at, n, Message(at, chunk[0][2][0], device, tuple(r for _, _, r in chunk))))
        n += 1
    return [m for _, _, m in sorted(msgs, key=lambda x: (x[0], x[1]))]


def run(
    op: Joins, msgs: Sequence[Message], end: int | None = None, snapshot_at: int | None = None
) -> tuple[list[Joined], Joins]:
    """Feed ``msgs``; then every device's flushed marker at ``end``. With ``snapshot_at``, the operator is
    snapshotted after that many messages and a new one restored from it (through JSON) goes on."""
    import json

    out: list[Joined] = []
    devices: dict[str, str] = {}
    for i, m in enumerate(msgs):
        if snapshot_at is not None and i == snapshot_at:
            fresh = Joins(op.spec)
            fresh.restore(json.loads(json.dumps(op.snapshot())))
            op = fresh
        devices[m.device] = m.site
        if m.sleep_s is not None:
            st = StatusUpdate(m.site, m.device, f"x/{m.site}/{m.device}/status", m.at, "online", {"sleep_s": m.sleep_s})
            out.extend(op.process_status(st))
            continue
        readings = tuple(Reading(s, d, 1, seq, t, "s", dict(mm)) for s, d, seq, t, mm in m.rows)
        out.extend(op.process_batch(Batch(m.site, m.device, "t", m.at, readings, (), m.flushed), m.at))
    if end is not None:
        if op.global_mode:  # flushed markers say nothing there: the one watermark is moved by hand
            out.extend(op.flush(end))
        for device, site in sorted(devices.items()):
            out.extend(op.process_batch(Batch(site, device, "t", end, (), (), end), end))
    return out, op
