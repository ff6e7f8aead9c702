"""A pattern compiled once into an immutable automaton, and the partial matches (runs) that walk it.

The automaton has one state per positive step, each with its condition, its count bounds, its contiguity
and the negation guarding its entry; a final negation becomes a quiet period after the last step.

A run is one partial match: it starts at a reading that satisfies the first step and then reads every
later reading of its key in event-time order (``(t, device, boot, seq)``), in state ``(step, count)``:

- **proceed**: if the current step has its minimum count and the reading satisfies the next step, take it
  there (the next step wins over another loop: quantifiers are reluctant);
- **loop**: otherwise, if the step may take more and the reading satisfies it, take it for the step;
- otherwise the reading is skipped, unless a negation guarding the next step matches it (the run dies) or
  every move open to the run is strict (``next``: the run dies).

A run whose last step reaches its minimum count completes; with a final negation it first waits, quiet,
until its watermark passes ``last + span`` (a reading satisfying the negation in that span kills it).
A run dies when a reading comes more than ``within`` after its first one. This is "skip till next match":
at most one run per start reading, so the number of partial matches is bounded by the readings that can
start one within the span, and :class:`gateway.cep.operator.Cep` bounds it further.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Final

from ..model import MetricValue
from .expr import Condition, Ref, Values, compile_condition
from .pattern import PatternSpec, validate

__all__ = ["DEAD", "DONE", "KEEP", "PENDING", "Automaton", "Event", "Run", "State", "compile_pattern"]

UNBOUNDED: Final = sys.maxsize

Event = tuple[int, str, int, int, int, Values]
"""``(t_ms, device, boot, seq, arrival, metrics)``: sorts by event time, then identity (``arrival`` only
keeps a replayed duplicate from comparing the metrics)."""

KEEP: Final = 0
DEAD: Final = 1
DONE: Final = 2
PENDING: Final = 3


@dataclass(frozen=True, slots=True)
class State:
    """The automaton state of one positive step."""

    name: str
    index: int
    cond: Condition
    min_count: int
    max_count: int
    strict: bool
    guard: Condition | None
    """The condition of a ``not_followed_by`` between the previous step and this one."""
    metrics: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Automaton:
    spec: PatternSpec
    states: tuple[State, ...]
    final_guard: Condition | None
    final_span_ms: int
    within_ms: int | None
    skip_past: bool
    metrics: frozenset[str]

    @property
    def name(self) -> str:
        return self.spec.name

    def accepts(self, device: str, metrics: Iterable[str]) -> bool:
        """Does this pattern look at a reading of ``device`` with these metrics at all?"""
        if self.spec.devices and not any(fnmatchcase(device, g) for g in self.spec.devices):
            return False
        return not self.metrics.isdisjoint(metrics)

    def start(self, e: Event) -> Run | None:
        """A new run if ``e`` satisfies the first step (it may already be complete: see ``Run.status``)."""
        if not self.states[0].cond.test(e[5], (), None):  # the first step refers to no other step
            return None
        last: list[Values | None] = [None] * len(self.states)
        run = Run(e[:4], 0, 1, None, [(0, e)], last)
        last[0] = e[5]
        run.status = self._after_take(run, e)
        return run

    def _after_take(self, run: Run, e: Event) -> int:
        j = run.step
        if j == len(self.states) - 1 and run.count >= self.states[j].min_count:
            if self.final_guard is None:
                return DONE
            run.deadline = e[0] + self.final_span_ms
            return PENDING
        return KEEP

    def feed(self, run: Run, e: Event) -> int:
        """Let ``run`` read ``e`` (which comes after everything it read); returns KEEP, DEAD, DONE or PENDING."""
        m = e[5]
        last = run.last
        prev = run.taken[-1][1][5]
        if run.deadline is not None:
            assert self.final_guard is not None
            return DEAD if self.final_guard.test(m, last, prev) else PENDING
        if self.within_ms is not None and e[0] - run.start[0] > self.within_ms:
            return DEAD
        states = self.states
        j, c = run.step, run.count
        st = states[j]
        can_proceed = c >= st.min_count and j + 1 < len(states)
        can_loop = c < st.max_count
        if can_proceed and states[j + 1].cond.test(m, last, prev):
            run.step = j = j + 1
            run.count = 1
        elif can_loop and st.cond.test(m, last, prev):
            run.count += 1
        else:
            if can_proceed and not can_loop:
                guard = states[j + 1].guard
                if guard is not None and guard.test(m, last, prev):
                    return DEAD
            if (not can_loop or st.strict) and (not can_proceed or states[j + 1].strict):
                return DEAD
            return KEEP
        run.taken.append((j, e))
        last[j] = m
        return self._after_take(run, e)

    def details(self, run: Run) -> dict[str, MetricValue]:
        """The values the conditions looked at, from the last reading of each step: ``<step>.<metric>`` (the
        dot keeps these apart from the alert's own fields: ``alerts.PATTERN_DETAIL``)."""
        out: dict[str, MetricValue] = {}
        for st in self.states:
            values = run.last[st.index]
            if values is None:
                continue
            for metric in st.metrics:
                v = values.get(metric)
                if v is not None:
                    out[f"{st.name}.{metric}"] = v
        return out


class Run:
    """One partial match: where it started, its state, the readings it took (with their step)."""

    __slots__ = ("count", "deadline", "last", "start", "status", "step", "taken")

    def __init__(
        self,
        start: tuple[int, str, int, int],
        step: int,
        count: int,
        deadline: int | None,
        taken: list[tuple[int, Event]],
        last: list[Values | None],
    ) -> None:
        self.start = start
        self.step = step
        self.count = count
        self.deadline = deadline
        self.taken = taken
        self.last = last
        self.status = KEEP

    @property
    def last_key(self) -> tuple[int, str, int, int]:
        e = self.taken[-1][1]
        return (e[0], e[1], e[2], e[3])

    def to_json(self) -> list[Any]:
        return [self.step, self.count, self.deadline, [[j, e[0], e[1], e[2], e[3], dict(e[5])] for j, e in self.taken]]

    @staticmethod
    def from_json(doc: Sequence[Any], n_states: int) -> Run:
        step, count, deadline, taken_raw = doc
        taken: list[tuple[int, Event]] = [(j, (t, d, b, s, 0, m)) for j, t, d, b, s, m in taken_raw]
        last: list[Values | None] = [None] * n_states
        for j, e in taken:
            last[j] = e[5]
        first = taken[0][1]
        run = Run((first[0], first[1], first[2], first[3]), step, count, deadline, taken, last)
        run.status = PENDING if deadline is not None else KEEP
        return run


def compile_pattern(spec: PatternSpec) -> Automaton:
    """Validate ``spec`` and compile it; the result is immutable and shared by every key."""
    validate(spec)
    positive = [s for s in spec.steps if not s.negated]
    index = {s.name: i for i, s in enumerate(positive)}
    shown: dict[str, list[str]] = {s.name: list(s.metrics()) for s in positive}
    for s in spec.steps:  # a value another step compares against is worth showing in the alert too
        for c in s.where:
            if isinstance(c.value, Ref) and c.value.step in shown and c.value.metric not in shown[c.value.step]:
                shown[c.value.step].append(c.value.metric)
    states: list[State] = []
    guard: Condition | None = None
    final_guard: Condition | None = None
    final_span = 0
    for i, step in enumerate(spec.steps):
        if step.negated:
            cond = compile_condition(step.where, index)
            if i == len(spec.steps) - 1:
                final_guard, final_span = cond, step.within_ms or 0
            else:
                guard = cond
            continue
        states.append(
            State(
                name=step.name,
                index=len(states),
                cond=compile_condition(step.where, index),
                min_count=step.min_count,
                max_count=UNBOUNDED if step.max_count is None else step.max_count,
                strict=step.strict,
                guard=guard,
                metrics=tuple(shown[step.name]),
            )
        )
        guard = None
    return Automaton(
        spec=spec,
        states=tuple(states),
        final_guard=final_guard,
        final_span_ms=final_span,
        within_ms=spec.within_ms,
        skip_past=spec.skip == "skip_past_last_event",
        metrics=spec.metrics(),
    )
