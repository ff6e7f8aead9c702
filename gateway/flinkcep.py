"""The patterns of a configuration as Flink SQL ``MATCH_RECOGNIZE`` queries (``compile --target flink-sql``).

The gateway's automaton (``gateway/cep/automaton.py``) is deterministic: one run per start reading, and in every
state exactly one move can take a reading, so a pattern whose quantifiers have a fixed count (``times = n``, or
``at_least`` / ``one_or_more`` on the last step, which completes at its minimum) is one regular expression over
the rows of its key with exactly one parse per start. Each step is unrolled into ``n`` pattern variables; between
two of them a relaxed step (``followed_by``, and a quantified first step's own loop) has a gap variable ``G*``
defined as "not the next variable's condition" (nor a middle negation's, which kills the run), a strict one
(``next``) none. Flink's ``AFTER MATCH SKIP PAST LAST ROW`` is the gateway's ``skip_past_last_event``; its
``WITHIN`` prunes a partial match at ``t - first >= within`` (``NFA.isStateTimedOut``), the gateway at
``t - first > within``: the job says ``within + 1 ms``.

What ``MATCH_RECOGNIZE`` cannot run as the gateway does is refused (:func:`pattern_refusals`), each naming the
setting and what to do: a final ``not_followed_by ... within`` (no absence or timeout in Flink SQL's
``MATCH_RECOGNIZE``: FLINK-18642, FLINK-33227), a non-final unbounded quantifier (needs a pattern group,
``(G* S)*``, which Flink does not support), ``skip = "no_skip"`` (Flink's ``SKIP TO NEXT ROW`` prunes runs that
started before a match's first reading, the gateway keeps them), the fast alerts (``on``) and group keys.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .cep.expr import PREV, Comparison, Ref
from .cep.pattern import PatternSpec
from .config import Config

__all__ = ["ALERT_COLUMNS", "pattern_refusals", "pattern_selects"]

ALERT_COLUMNS = (
    "v INT, source STRING, name STRING, site STRING, `key` STRING, severity STRING, first_ms BIGINT,\n"
    "  last_ms BIGINT, readings ARRAY<STRING>, details MAP<STRING, STRING>"
)
"""The ``alerts/`` output schema (docs/scale-out.md, "Output")."""


def pattern_refusals(cfg: Config) -> list[str]:
    """Every pattern setting the job cannot run as the gateway does, each with what to do."""
    out: list[str] = []
    for p in cfg.patterns:
        where = f"patterns[{p.name}]"
        keep = "or keep this pattern on the gateway (the bridge runs it at the site)"
        if p.on != "event_time":
            out.append(
                f'{where}.on = "{p.on}": fast (on-arrival) alerts and their verdicts have no MATCH_RECOGNIZE form '
                f"(a match is found in event time, after the watermark). Remove `on` (event_time), {keep}"
            )
        if p.skip != "skip_past_last_event":
            out.append(
                f'{where}.skip = "{p.skip}": Flink\'s AFTER MATCH SKIP TO NEXT ROW also drops partial matches that '
                f"started before the match's first reading, which the gateway keeps. Use skip_past_last_event, {keep}"
            )
        if p.key != "device" and p.key != "site":
            out.append(
                f'{where}.key = "{p.key}": group keys are not compiled (membership by device and site globs); use '
                f'key = "device" or "site", {keep}'
            )
        for g in p.devices:
            try:
                re.compile(_glob(g))
            except re.error:
                out.append(
                    f"{where}.devices: {g!r} has a character class with an empty or reversed range, which the "
                    f"regular expression the job matches devices with cannot hold. Write the class without it, {keep}"
                )
        steps = p.steps
        for i, s in enumerate(steps):
            last = i == len(steps) - 1
            if s.negated and last:
                out.append(
                    f"{where}.steps[{s.name}]: a final not_followed_by with within (a quiet period) needs an absence "
                    "with a timeout, which Flink SQL's MATCH_RECOGNIZE does not have (no timed-out matches, no "
                    f"notFollowedBy: FLINK-18642, FLINK-33227). Keep this pattern on the gateway, or remove the step"
                )
            if not s.negated and s.max_count is None and not last:
                out.append(
                    f"{where}.steps[{s.name}]: an unbounded quantifier (at_least / one_or_more) before another step "
                    "needs a quantified pattern group, which Flink's MATCH_RECOGNIZE does not support. Use "
                    f"times = {s.min_count}, make it the last step, {keep}"
                )
    return out


@dataclass(frozen=True, slots=True)
class _Pos:
    var: str
    step: int  # index among the positive steps
    preds: tuple[Comparison, ...]
    strict: bool  # no reading between the previous position and this one
    guard: tuple[Comparison, ...]  # a middle negation guarding the entry to this position


def _lit(x: float) -> str:
    return f"CAST('{x!r}' AS DOUBLE)"


def _col(metric: str) -> str:
    return f"m_{metric}"


def _cond(c: Comparison, row: str, last_var: dict[int, str], prev: str | None, index: dict[str, int]) -> str:
    """One comparison on the row of variable ``row`` (the one being defined), with references resolved to the
    variables taken so far; FALSE where the gateway has no reading to compare with."""
    x = f"{row}.{_col(c.metric)}"
    v = c.value
    if isinstance(v, tuple):
        return f"({x} >= {_lit(v[0])} AND {x} <= {_lit(v[1])})"
    if isinstance(v, Ref):
        other = prev if v.step == PREV else last_var.get(index[v.step])
        if other is None:
            return "FALSE"
        y = f"LAST({other}.{_col(v.metric)})"
        rhs = f"{_lit(v.factor)} * {y} + {_lit(v.offset)}"
        op = "=" if c.op == "==" else "<>" if c.op == "!=" else c.op
        return f"({x} {op} {rhs})"
    op = "=" if c.op == "==" else "<>" if c.op == "!=" else c.op
    if isinstance(v, bool):
        return f"({x} {op} {'TRUE' if v else 'FALSE'})"
    if isinstance(v, str):
        return f"({x} {op} '{v.replace(chr(39), chr(39) * 2)}')"
    return f"({x} {op} {_lit(float(v))})"


def _conj(preds: tuple[Comparison, ...], row: str, last_var: dict[int, str], prev: str | None,
          index: dict[str, int]) -> str:  # fmt: skip
    return " AND ".join(_cond(c, row, last_var, prev, index) for c in preds)


def _glob(g: str) -> str:
    """An fnmatch glob (``*``, ``?``, ``[ab]``, ``[!ab]``) as a Java regular expression."""
    out, i = [], 0
    while i < len(g):
        ch = g[i]
        i += 1
        if ch == "*":
            out.append(".*")
        elif ch == "?":
            out.append(".")
        elif ch == "[":
            j = i
            if j < len(g) and g[j] == "!":
                j += 1
            if j < len(g) and g[j] == "]":
                j += 1
            while j < len(g) and g[j] != "]":
                j += 1
            if j >= len(g):
                out.append("\\[")
                continue
            # backslash, '[' (a nested class in Java), '&' (Java's intersection) and the other characters Python may
            # read as set operators are literal in a glob's class: escaped, they are literal in both syntaxes
            body = "".join("\\" + c if c in "\\[&~|" else c for c in g[i:j])
            i = j + 1
            if body.startswith("!"):
                body = "^" + body[1:]
            elif body.startswith("^"):
                body = "\\" + body
            out.append(f"[{body}]")
        else:
            out.append(ch if ch.isalnum() else "\\" + ch)
    return "".join(out)


def _metric_value(cfg: Config, metric: str) -> str:
    kind = cfg.metric_types.of(metric)
    if kind == "string":
        return f"str['{metric}']"
    if kind == "boolean":
        return f"bool['{metric}']"
    return f"num['{metric}']"


def _pattern_select(cfg: Config, p: PatternSpec, idx: int, prefix: str) -> str:
    positive = [s for s in p.steps if not s.negated]
    index = {s.name: i for i, s in enumerate(positive)}
    positions: list[_Pos] = []
    guard: tuple[Comparison, ...] = ()
    j = 0
    for s in p.steps:
        if s.negated:
            guard = s.where
            continue
        for k in range(s.min_count):
            strict = s.strict if positions else True  # the first position starts the run: nothing before it
            positions.append(_Pos(f"P{idx}S{j}N{k}", j, s.where, strict, guard if k == 0 else ()))
        guard = ()
        j += 1
    # the values each step's details show: its metrics, and those an other step compares against
    shown: dict[int, list[str]] = {i: list(s.metrics()) for i, s in enumerate(positive)}
    for s in p.steps:
        for c in s.where:
            if isinstance(c.value, Ref) and c.value.step in index and c.value.metric not in shown[index[c.value.step]]:
                shown[index[c.value.step]].append(c.value.metric)
    metrics = sorted(p.metrics() | {m for ms in shown.values() for m in ms})
    pattern: list[str] = []
    define: list[str] = []
    last_var: dict[int, str] = {}
    prev: str | None = None
    for n, pos in enumerate(positions):
        if not pos.strict:
            gap = f"P{idx}G{n}"
            pattern.append(f"{gap}*")
            cond = f"({_conj(pos.preds, gap, last_var, prev, index)}) IS NOT TRUE"
            if pos.guard:
                cond += f" AND ({_conj(pos.guard, gap, last_var, prev, index)}) IS NOT TRUE"
            define.append(f"{gap} AS {cond}")
        pattern.append(pos.var)
        define.append(f"{pos.var} AS ({_conj(pos.preds, pos.var, last_var, prev, index)}) IS TRUE")
        last_var[pos.step] = pos.var
        prev = pos.var
    measures = [
        f"{positions[0].var}.site AS a_site",
        f"{positions[0].var}.t_ms AS first_ms",
        f"{positions[-1].var}.t_ms AS last_ms",
    ]
    readings: list[str] = []
    for n, pos in enumerate(positions):
        measures += [f"{pos.var}.device AS d{n}", f"{pos.var}.boot AS b{n}", f"{pos.var}.seq AS s{n}"]
        readings.append(f"d{n} || '/' || CAST(b{n} AS STRING) || '/' || CAST(s{n} AS STRING)")
    details: list[str] = []
    for i, s in enumerate(positive):
        for m in shown[i]:
            alias = f"x{i}_{m}"
            measures.append(f"CAST({last_var[i]}.{_col(m)} AS STRING) AS {alias}")
            details += [f"'{s.name}.{m}'", alias]
    key = "device" if p.key == "device" else "site"
    carries = " OR ".join(f"num['{m}'] IS NOT NULL OR str['{m}'] IS NOT NULL" for m in sorted(p.metrics()))
    # on time as the gateway's pattern has it (gateway/cep/operator.py: late when t < the watermark), by the gateway's
    # watermark before the reading's message: the job's own may be behind after a restore
    where = f"({carries}) AND (gw_wm0 IS NULL OR t_ms >= gw_wm0)"
    if p.devices:
        where += " AND (" + " OR ".join(f"REGEXP(device, '^(?:{_glob(g)})$')" for g in p.devices) + ")"
    cols = ", ".join(f"{_metric_value(cfg, m)} AS {_col(m)}" for m in metrics)
    within = "" if p.within_ms is None else f"\n    WITHIN INTERVAL '{(p.within_ms + 1) / 1000:.3f}' SECOND(9, 3)"
    return (
        f"SELECT 1, 'pattern', '{p.name}', a_site, {'a_site' if key == 'site' else 'd0'}, '{p.severity}', first_ms, "
        f"last_ms,\n  ARRAY[{', '.join(readings)}],\n  MAP[{', '.join(details)}]\n"
        f"FROM (\n  SELECT site, device, boot, seq, t_ms, ts, {cols}\n  FROM {prefix}readings_in WHERE {where}\n"
        f") MATCH_RECOGNIZE (\n  -- pattern {p.name}\n  PARTITION BY {key}\n  ORDER BY ts, device, boot, seq\n"
        f"  MEASURES {', '.join(measures)}\n  ONE ROW PER MATCH\n  AFTER MATCH SKIP PAST LAST ROW\n"
        f"  PATTERN ({' '.join(pattern)}){within}\n  DEFINE\n    " + ",\n    ".join(define) + "\n)"
    )


def pattern_selects(cfg: Config, prefix: str) -> list[str]:
    """One ``SELECT ... MATCH_RECOGNIZE`` per pattern, each row an alert in the ``alerts/`` schema."""
    return [_pattern_select(cfg, p, i, prefix) for i, p in enumerate(cfg.patterns)]
