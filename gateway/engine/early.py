"""Early triggers: provisional results of a window before the watermark closes it.

A window with ``early_every`` and/or ``early_count`` (``[[windows]]``, docs/semantics.md "Early results")
gets one :class:`Early` beside its operator. The operator keeps the window's contents; this keeps only what
the triggers need, per key:

- ``pend``: the windows that took readings since their last result, with how many (a tumbling or sliding
  window by its start; a session by the event times of its readings, since a session's start moves when it
  merges);
- ``prov``: the windows that have had provisional results and no final one yet: how many, and the end of the
  last, so that a provisional point left behind by a session that merged away is marked ``superseded``.

The engine calls :meth:`note` with a message's readings (after the operator took them, before the
watermark moves), :meth:`finished` with every result it emitted (the final result ends a window's
provisional run), :meth:`check` after the watermark moved (``early_count``) and :meth:`tick` with the
gateway's time (``early_every``: at the first tick at least that long after the last firing, so that a
trigger as long as the gateway's tick period fires at every tick). Nothing here reads a clock.

A provisional result is the operator's current aggregate of the window, with ``revision = 0``, ``fired =
"early"`` (so ``result = "provisional"``), emitted only while the window is open (the watermark has not
passed its end): a window's results come as provisional*, final, update*.
"""

from __future__ import annotations

from collections.abc import Set
from typing import Any, cast

from .config import WindowSpec
from .operators import SessionOperator, WindowOperator, _SesKey, key_list
from .outputs import Output, WindowResult
from .windows import window_ranges

__all__ = ["Early"]


class Early:
    """The early triggers of one window (see the module's docstring)."""

    __slots__ = ("count", "every", "kind", "next_fire", "op", "pend", "prov", "spec")

    def __init__(self, spec: WindowSpec, op: WindowOperator) -> None:
        self.spec = spec
        self.op = op
        self.kind = spec.kind
        self.every = spec.early_every_ms
        self.count = spec.early_count
        self.next_fire: int | None = None  # the gateway time of the next early_every firing (None: the next tick)
        self.pend: dict[str, dict[int, int]] = {}  # key -> window start (session: event time) -> readings since
        self.prov: dict[str, dict[int, list[int]]] = {}  # key -> window start -> [provisional results, last end]

    # -- input ----------------------------------------------------------------------------------------------

    def note(self, key: str, times: list[int], wm: int | None) -> None:
        """``key``'s window took readings at ``times`` (against watermark ``wm``, before it moves)."""
        pend = self.pend.get(key)
        if pend is None:
            pend = self.pend[key] = {}
            self.prov.setdefault(key, {})
        spec = self.spec
        if self.kind == "session":
            for t in times:
                pend[t] = pend.get(t, 0) + 1
            return
        for t in times:
            for start, end in window_ranges(t, spec.size_ms, spec.slide_ms, spec.offset_ms):
                if wm is None or end > wm:  # a window already fired takes it as an update, not provisionally
                    pend[start] = pend.get(start, 0) + 1
        self._tidy(key)

    def finished(self, r: WindowResult) -> None:
        """A result the window emitted: a final one (or a later one) ends its window's provisional run."""
        if r.revision:
            key = r.key
            prov = self.prov.get(key)
            if prov:
                prov.pop(r.start_ms, None)
            pend = self.pend.get(key)
            if pend:  # its readings are in the final result: nothing pending for it any more
                if self.kind == "session":
                    for at in [at for at in pend if r.start_ms <= at < r.end_ms]:
                        del pend[at]
                else:
                    pend.pop(r.start_ms, None)

    # -- output ---------------------------------------------------------------------------------------------

    def check(self, key: str, out: list[Output]) -> None:
        """After a message of ``key``: provisional results of its windows that took ``early_count`` readings
        since their last one; superseded marks for provisional sessions that merged away."""
        if self.count:
            self._emit(key, out, self.count)
        if self.kind == "session":
            self._superseded(key, out)

    def tick(self, now_ms: int, out: list[Output]) -> None:
        """Gateway time ``now_ms``: if an ``early_every`` period ended, a provisional result of every open window
        that took readings since its last result; then forget the keys whose window state is gone."""
        every = self.every
        if every and (self.next_fire is None or now_ms >= self.next_fire):
            self.next_fire = now_ms + every
            for key in list(self.pend):
                self._emit(key, out, 0)
        self.sweep()

    def _emit(self, key: str, out: list[Output], least: int) -> None:
        """Provisional results of ``key``'s pending windows with at least ``least`` readings since their last
        one; windows no longer open are forgotten."""
        pend = self.pend.get(key)
        if not pend:
            return
        op = self.op
        groups: dict[int, list[Any]] = {}  # window start -> [end, acc, readings, pending entries]
        keep: dict[int, int] = {}
        if self.kind == "session":  # a session by its readings' times: the one holding them now
            for at, n in pend.items():
                found = op.early_acc(key, at)
                if found is None:
                    continue  # fired (or too late for it): the final result and updates take it from here
                start, end, acc = found
                g = groups.get(start)
                if g is None:
                    groups[start] = [end, acc, n, [at]]
                else:
                    g[2] += n
                    g[3].append(at)
        else:  # fixed windows: whether one is open and due is known before its aggregate is made
            wm = op.watermark(key)
            size = self.spec.size_ms
            for at, n in pend.items():
                if wm is not None and at + size <= wm:
                    continue
                if n < least:
                    keep[at] = n
                    continue
                found = op.early_acc(key, at)
                if found is not None:
                    groups[at] = [found[1], found[2], n, [at]]
        prov = self.prov.get(key)
        for start in sorted(groups):
            end, acc, n, ats = groups[start]
            if n < least:
                for at in ats:
                    keep[at] = pend[at]
                continue
            if prov is None:
                prov = self.prov.setdefault(key, {})
            p = prov.get(start)
            if p is None:
                p = prov[start] = [0, end]
            p[0] += 1
            p[1] = end
            first = len(out)
            op.emit_early(out, key, start, end, acc)
            for i in range(first, len(out)):
                r = out[i]
                assert isinstance(r, WindowResult)
                r.provisional_n = p[0]
        self.pend[key] = keep

    def _superseded(self, key: str, out: list[Output]) -> None:
        """Provisional sessions of ``key`` that are no session's start any more (a reading moved the start
        earlier, or the session merged into another): their points are marked dead, as a final result."""
        prov = self.prov.get(key)
        if not prov:
            return
        op = self.op
        spec = self.spec
        for start in sorted(prov):
            found = op.early_acc(key, start)
            if found is not None and found[0] == start:
                continue
            _, end = prov.pop(start)
            if found is None and any(x.start == start for x in op_sessions(op, key)):
                continue  # it fired (its final result went through finished() unseen): nothing left behind
            site = op.site_of(key)
            for metric in spec.metrics:
                out.append(WindowResult(spec.name, spec.key, key, site, start, end, metric, 0, {}, 1, "superseded"))

    def _tidy(self, key: str) -> None:
        """Forget ``key`` once nothing is pending or provisional for it and its window holds no state for it.

        Until then its (maybe empty) entries stay: the key sets of ``pend`` and ``prov`` change only when the
        operator's do, so a checkpoint rewrites the key's own row, not the order row of every key
        (``gateway/ckpt_rows.py``)."""
        if self.op.site_of(key) or self.pend.get(key) or self.prov.get(key):
            return
        self.pend.pop(key, None)
        self.prov.pop(key, None)

    def sweep(self) -> None:
        """Forget every key :meth:`_tidy` would (the gateway's tick: keys whose window state was dropped)."""
        for key in [k for k, v in self.pend.items() if not v]:
            self._tidy(key)

    # -- state ----------------------------------------------------------------------------------------------

    def keys(self) -> list[str]:
        """The keys with pending or provisional results (what a :meth:`tick` may change)."""
        return [*self.pend, *(k for k in self.prov if k not in self.pend)]

    def snapshot(self, keys: Set[str] | None = None, order: bool = False) -> dict[str, Any]:
        """``keys`` and ``order`` select the per-key entries as in ``Engine.snapshot``."""
        if order:
            return {"next_fire": self.next_fire, "pend": dict.fromkeys(self.pend), "prov": dict.fromkeys(self.prov)}
        pend, prov = self.pend, self.prov
        return {
            "next_fire": self.next_fire,
            "pend": {k: [[at, n] for at, n in pend[k].items()] for k in key_list(pend, keys)},
            "prov": {k: [[s, p[0], p[1]] for s, p in prov[k].items()] for k in key_list(prov, keys)},
        }

    def restore(self, snap: dict[str, Any] | None) -> None:
        """Take back a :meth:`snapshot`; ``None`` (a checkpoint of a window without early triggers): none."""
        if snap is None:
            self.next_fire, self.pend, self.prov = None, {}, {}
            return
        self.next_fire = snap["next_fire"]
        self.pend = {k: {at: n for at, n in v} for k, v in snap["pend"].items()}
        self.prov = {k: {s: [n, end] for s, n, end in v} for k, v in snap["prov"].items()}


def op_sessions(op: WindowOperator, key: str) -> tuple[Any, ...]:
    """A session operator's sessions of ``key`` (none for other operators)."""
    if not isinstance(op, SessionOperator):
        return ()
    rec = op.state_of(key)
    return () if rec is None else cast(_SesKey, rec).sessions
