"""Duplicate removal by reading identity (device, boot, seq), and the readings it can no longer judge.

QoS 1 redelivery, a board that re-sends a batch whose PUBACK it missed, and a replay of the gateway's
log all bring the same reading twice, with the same identity and the same event time each time, so it is
accepted once.

State per device: a *horizon* (see below) and, per boot, the sorted half-open ranges of sequence numbers
already accepted (memory grows with the gaps, not with the readings), the latest event time accepted in
that boot, and a sequence *floor*. Two bounds keep it finite, and forgetting never lets a reading in twice:

- at most ``max_boots`` boots a device. Beyond it the boot whose latest event time is the oldest is
  forgotten, and the device's horizon rises to that time: every reading the boot ever had is at or before
  it. A reading of a boot not tracked whose event time is at or before the horizon may have been accepted
  already: it is ``stale_boot`` (a dead letter), never accepted again. One after it is a new boot.
- at most ``max_ranges`` ranges a boot. Beyond it the lowest range is forgotten and the boot's floor rises
  to its end: a sequence number below the floor that is not tracked is ``stale_seq``.

A boot tracked again after the horizon rose (its number came back) remembers the horizon of its start:
a reading of it at or before that time is ``stale_boot`` too.

**Boot counter restarts.** The firmware keeps its boot counter in a flash file (``firmware/app.py``); a
re-flash or a lost file starts it again from 1, so a board reuses identities it had before. A re-sent
reading has the event time it had the first time, so a reading whose identity is taken (or below the
floor) but whose event time is after the latest one its boot has accepted cannot be a re-send: the old
boot is forgotten (the horizon covers it) and the reading starts the boot anew. A re-flashed board is
never locked out, and its readings are never taken for duplicates.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Set
from dataclasses import dataclass, field
from typing import Any, Final, Literal

__all__ = ["SNAPSHOT_VERSION", "Dedup", "DedupSpec", "Verdict"]

SNAPSHOT_VERSION: Final = 2

Ranges = list[list[int]]  # [[lo, hi), ...] sorted, disjoint, non-adjacent
Verdict = Literal["new", "duplicate", "stale_boot", "stale_seq"]

# a boot's entry: [latest event time accepted (None: unknown, from an old checkpoint), the device's horizon
# when the entry was made (None: none), the sequence floor, the ranges]
_MAX_T: Final = 0
_SINCE: Final = 1
_FLOOR: Final = 2
_RANGES: Final = 3
_TOP: Final = 2**63


@dataclass(frozen=True, slots=True)
class DedupSpec:
    max_boots: int = 8
    max_ranges: int = 256

    def __post_init__(self) -> None:
        if self.max_boots < 1 or self.max_ranges < 1:
            raise ValueError(f"max_boots and max_ranges must be at least 1, got {self.max_boots}, {self.max_ranges}")

    def build(self) -> Dedup:
        return Dedup(self)


@dataclass(slots=True)
class Dedup:
    spec: DedupSpec
    state: dict[str, list[Any]] = field(default_factory=dict)
    """device -> [horizon (None: no boot forgotten yet), {boot: [max_t, since, floor, ranges]}]."""
    forgotten: int = 0
    """Ranges forgotten to stay within bounds (with their boot, or alone)."""
    forgotten_boots: int = 0
    """Boots forgotten to stay within ``max_boots`` (or because the board's boot counter restarted)."""

    def seen(self, device: str, boot: int, seq: int) -> bool:
        """Whether the identity is among the tracked ranges (not whether it is stale)."""
        dev = self.state.get(device)
        e = dev[1].get(boot) if dev is not None else None
        if e is None:
            return False
        ranges = e[_RANGES]
        i = bisect_right(ranges, [seq, _TOP]) - 1
        return i >= 0 and ranges[i][0] <= seq < ranges[i][1]

    def check(self, device: str, boot: int, seq: int, t_ms: int) -> Verdict:
        """Judge a reading and record it when it is new: ``new`` (accept it), ``duplicate`` (seen before),
        ``stale_boot`` or ``stale_seq`` (the state can no longer tell: it may have been accepted before)."""
        dev = self.state.get(device)
        if dev is None:
            dev = self.state[device] = [None, {}]
        boots: dict[int, list[Any]] = dev[1]
        e = boots.get(boot)
        if e is not None:
            ranges: Ranges = e[_RANGES]
            last = ranges[-1] if ranges else None
            if last is not None and seq == last[1] and (e[_SINCE] is None or t_ms > e[_SINCE]):
                # the next reading of the boot's newest run, the common case: what the search below ends in (not
                # taken; not below the floor, which is never above a tracked range; not stale; joins the last range
                # on its left and nothing on its right), without the search (545 -> 301 ns a reading)
                if e[_MAX_T] is None or t_ms > e[_MAX_T]:
                    e[_MAX_T] = t_ms
                last[1] = seq + 1
                return "new"
            i = bisect_right(ranges, [seq, _TOP]) - 1
            taken = i >= 0 and ranges[i][0] <= seq < ranges[i][1]
            if taken or seq < e[_FLOOR]:
                max_t = e[_MAX_T]
                if e[_SINCE] is not None and t_ms <= e[_SINCE]:
                    return "stale_boot"  # from before the boot was tracked again
                if max_t is None or t_ms <= max_t:
                    return "duplicate" if taken else "stale_seq"
                # not a re-send (a re-send has its first time): the boot counter restarted
                self._forget(dev, boot)
                e = None
            elif e[_SINCE] is not None and t_ms <= e[_SINCE]:
                return "stale_boot"
        if e is None:
            horizon = dev[0]
            if horizon is not None and t_ms <= horizon:
                return "stale_boot"
            e = boots[boot] = [t_ms, horizon, 0, [[seq, seq + 1]]]
            if len(boots) > self.spec.max_boots:
                oldest = min(boots, key=lambda b: (-_TOP if boots[b][_MAX_T] is None else boots[b][_MAX_T], b))
                self._forget(dev, oldest)
            return "new"
        # a new reading of a tracked boot: record it (``i`` is its place, from the search above)
        if e[_MAX_T] is None or t_ms > e[_MAX_T]:
            e[_MAX_T] = t_ms
        joins_left = i >= 0 and ranges[i][1] == seq
        joins_right = i + 1 < len(ranges) and ranges[i + 1][0] == seq + 1
        if joins_left and joins_right:
            ranges[i][1] = ranges[i + 1][1]
            del ranges[i + 1]
        elif joins_left:
            ranges[i][1] = seq + 1
        elif joins_right:
            ranges[i + 1][0] = seq
        else:
            ranges.insert(i + 1, [seq, seq + 1])
            if len(ranges) > self.spec.max_ranges:
                dropped = ranges.pop(0)
                e[_FLOOR] = max(e[_FLOOR], dropped[1])
                self.forgotten += 1
        return "new"

    def _forget(self, dev: list[Any], boot: int) -> None:
        e = dev[1].pop(boot)
        self.forgotten_boots += 1
        self.forgotten += len(e[_RANGES])
        max_t = e[_MAX_T]
        if max_t is not None and (dev[0] is None or max_t > dev[0]):
            dev[0] = max_t

    def horizon(self, device: str) -> int | None:
        dev = self.state.get(device)
        return None if dev is None else dev[0]

    def explain(self, device: str, boot: int, seq: int, t_ms: int, verdict: Verdict) -> str:
        """What a dead letter of a stale reading says (call it right after :meth:`check`)."""
        dev = self.state.get(device)
        e = dev[1].get(boot) if dev is not None else None
        if verdict == "stale_seq" and e is not None:
            return (
                f"boot {boot} seq {seq}: below {e[_FLOOR]}, the lowest sequence number still tracked for this boot "
                f"(at most {self.spec.max_ranges} ranges a boot): it may have been accepted already"
            )
        if e is not None and e[_SINCE] is not None:
            return (
                f"boot {boot} seq {seq} t={t_ms}: at or before {e[_SINCE]}, the latest event time of a boot "
                f"forgotten before this boot was tracked again: it may have been accepted already"
            )
        return (
            f"boot {boot} seq {seq} t={t_ms}: boot not tracked (at most {self.spec.max_boots} boots a device) and "
            f"t is at or before {self.horizon(device)}, the latest event time of a forgotten boot: "
            "it may have been accepted already"
        )

    def snapshot(self, keys: Set[str] | None = None, order: bool = False) -> dict[str, Any]:
        """All state as plain JSON-able values; ``keys`` and ``order`` select the devices' entries as in
        ``Engine.snapshot``."""
        state = self.state
        if order:
            devices: dict[str, Any] = dict.fromkeys(state)
        else:
            devices = {
                dev: [h, {str(b): [e[0], e[1], e[2], [list(r) for r in e[3]]] for b, e in boots.items()}]
                for dev, (h, boots) in (state.items() if keys is None else ((d, state[d]) for d in keys if d in state))
            }
        return {
            "version": SNAPSHOT_VERSION,
            "devices": devices,
            "forgotten": self.forgotten,
            "forgotten_boots": self.forgotten_boots,
        }

    def restore(self, snap: dict[str, Any], legacy_max_t: dict[str, int | None] | None = None) -> None:
        """Take back a :meth:`snapshot`, or the snapshot of an older version (``{device: {boot: ranges}}``).

        An old snapshot does not say when each boot's readings were taken: ``legacy_max_t`` gives a device's
        latest event time then (the watermark tracker's), taken as each of its boots' latest time.
        """
        if snap.get("version") == SNAPSHOT_VERSION and isinstance(snap.get("devices"), dict):
            self.state = {
                dev: [h, {int(b): [e[0], e[1], int(e[2]), [list(r) for r in e[3]]] for b, e in boots.items()}]
                for dev, (h, boots) in snap["devices"].items()
            }
            self.forgotten = int(snap.get("forgotten", 0))
            self.forgotten_boots = int(snap.get("forgotten_boots", 0))
            return
        legacy = legacy_max_t or {}
        self.state = {
            dev: [None, {int(b): [legacy.get(dev), None, 0, [list(r) for r in ranges]] for b, ranges in boots.items()}]
            for dev, boots in snap.items()
        }
