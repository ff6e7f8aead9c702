"""A brute-force matcher: the pattern semantics of docs/cep.md, written as a check on whole candidates.

For every start reading and every later subset of readings and every way to label them with steps, it
checks the declarative rules (conditions, counts, contiguity, "skip till next match" with the next step
taking priority, negations, ``within``) against the whole, sorted stream of one key; then it applies the
after-match skip strategy to the valid candidates in order of completion. No buffering, no watermark, no
incremental state: exponential, and only for short streams.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import combinations
from typing import Any

from gateway.cep import PatternSpec
from gateway.cep.expr import Comparison, Ref

Event = tuple[int, str, int, int, Mapping[str, Any]]
"""(t, device, boot, seq, metrics), sorted by the first four."""


def _num(v: object) -> float | None:
    return None if isinstance(v, bool) or not isinstance(v, (int, float)) else float(v)


def holds(
    c: Comparison, m: Mapping[str, Any], ctx: Mapping[str, Mapping[str, Any]], prev: Mapping[str, Any] | None
) -> bool:
    v = m.get(c.metric)
    if isinstance(c.value, tuple):
        x = _num(v)
        return x is not None and c.value[0] <= x <= c.value[1]
    if isinstance(c.value, (str, bool)):
        if v is None or type(v) is not type(c.value):
            return False
        return (v == c.value) == (c.op == "==")
    x = _num(v)
    if x is None:
        return False
    if isinstance(c.value, Ref):
        other = prev if c.value.step == "prev" else ctx.get(c.value.step)
        y = None if other is None else _num(other.get(c.value.metric))
        if y is None:
            return False
        target = c.value.factor * y + c.value.offset
    else:
        target = float(c.value)
    return {
        "<": x < target, "<=": x <= target, ">": x > target, ">=": x >= target, "==": x == target, "!=": x != target,
    }[c.op]  # fmt: skip


def _all(preds: Sequence[Comparison], m: Mapping[str, Any], ctx: Mapping[str, Mapping[str, Any]], prev: Any) -> bool:
    return all(holds(c, m, ctx, prev) for c in preds)


def _labelings(n: int, mins: list[int], maxs: list[int | None]) -> list[list[int]]:
    """Step labels for n taken readings: non-decreasing runs 0..k-1, counts within bounds, the last exactly its min."""
    k = len(mins)
    out: list[list[int]] = []

    def rec(j: int, left: int, acc: list[int]) -> None:
        if j == k - 1:
            if left == mins[j]:
                out.append(acc + [j] * left)
            return
        hi = left if maxs[j] is None else min(left, maxs[j])  # type: ignore[type-var]
        for c in range(mins[j], hi + 1):
            rec(j + 1, left - c, acc + [j] * c)

    rec(0, n, [])
    return out


def candidates(spec: PatternSpec, events: Sequence[Event]) -> list[tuple[float, int, tuple[int, ...]]]:
    """Valid (completion point, start index, taken indices) of every start; at most one per start."""
    steps = spec.steps
    pos = [s for s in steps if not s.negated]
    guard: dict[int, Sequence[Comparison]] = {}
    for i, s in enumerate(steps):
        if s.negated and i < len(steps) - 1:
            guard[sum(1 for x in steps[:i] if not x.negated)] = s.where
    final = steps[-1] if steps[-1].negated else None
    mins = [s.min_count for s in pos]
    maxs = [s.max_count for s in pos]
    n = len(events)
    longest = sum(m if m is not None else n for m in maxs[:-1]) + mins[-1]
    found: list[tuple[float, int, tuple[int, ...]]] = []
    for start in range(n):
        if not _all(pos[0].where, events[start][4], {}, None):
            continue
        valid: list[tuple[float, int, tuple[int, ...]]] = []
        for size in range(1, min(longest, n - start) + 1):
            for rest in combinations(range(start + 1, n), size - 1):
                taken = (start, *rest)
                for labels in _labelings(size, mins, maxs):
                    point = _check(spec, events, taken, labels, pos, guard, final)
                    if point is not None:
                        valid.append((point, start, taken))
        assert len(valid) <= 1, f"the semantics must be deterministic per start, got {valid}"
        found.extend(valid)
    return found


def _check(spec: PatternSpec, ev: Sequence[Event], taken: tuple[int, ...], labels: list[int], pos: Any,
           guard: dict[int, Any], final: Any) -> float | None:  # fmt: skip
    k = len(pos)
    t0 = ev[taken[0]][0]
    within = spec.within_ms
    ctx: dict[str, Mapping[str, Any]] = {pos[0].name: ev[taken[0]][4]}
    prev = ev[taken[0]][4]
    j, c = 0, 1
    for p_prev, p, label in zip(taken, taken[1:], labels[1:], strict=False):
        for x in range(p_prev + 1, p):  # skipped readings: nothing could take them, nothing killed the run
            m = ev[x][4]
            if within is not None and ev[x][0] - t0 > within:
                return None
            can_proceed = c >= pos[j].min_count and j + 1 < k
            can_loop = pos[j].max_count is None or c < pos[j].max_count
            if can_proceed and _all(pos[j + 1].where, m, ctx, prev):
                return None
            if can_loop and _all(pos[j].where, m, ctx, prev):
                return None
            if can_proceed and not can_loop and j + 1 in guard and _all(guard[j + 1], m, ctx, prev):
                return None
            if (not can_loop or pos[j].strict) and (not can_proceed or pos[j + 1].strict):
                return None
        m = ev[p][4]
        if within is not None and ev[p][0] - t0 > within:
            return None
        can_proceed = c >= pos[j].min_count and j + 1 < k
        proceeds = can_proceed and _all(pos[j + 1].where, m, ctx, prev)
        if label == j + 1:
            if not proceeds:
                return None
            j, c = j + 1, 1
        else:
            if proceeds or not _all(pos[j].where, m, ctx, prev):
                return None  # the next step has priority over another loop
            c += 1
        ctx[pos[j].name] = m
        prev = m
    last = taken[-1]
    if final is None:
        return float(last)
    deadline = ev[last][0] + (final.within_ms or 0)
    for x in range(last + 1, len(ev)):
        if ev[x][0] > deadline:
            return x - 0.5
        if _all(final.where, ev[x][4], ctx, prev):
            return None
    return float(len(ev))


def reference_matches(spec: PatternSpec, events: Sequence[Event]) -> list[tuple[tuple[str, int, int], ...]]:
    """The matches (reading ids in order) the pattern produces on one key's sorted readings."""
    ev = [e for e in events if any(mm in e[4] for mm in spec.metrics())]
    cands = sorted(candidates(spec, ev))
    accepted: list[tuple[float, int, tuple[int, ...]]] = []
    for cand in cands:
        if spec.skip == "skip_past_last_event" and any(cand[1] <= a[2][-1] for a in accepted):
            continue
        accepted.append(cand)
    return [tuple((ev[i][1], ev[i][2], ev[i][3]) for i in taken) for _, _, taken in accepted]
