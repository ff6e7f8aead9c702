"""Duplicate removal by reading identity (device, boot, seq).

QoS 1 redelivery, a board that re-sends a batch whose PUBACK it missed, and a replay of the gateway's
log all bring the same reading twice; its identity is the same each time, so it is seen once.

The state per device and boot is a sorted list of half-open ranges of sequence numbers already seen,
so memory grows with the number of gaps, not with the number of readings. Two bounds keep it finite:
at most ``max_boots`` boots per device (the lowest boot numbers are forgotten first) and at most
``max_ranges`` ranges per boot (the lowest ranges are forgotten first). Forgetting errs on the side of
a possible duplicate, never of a loss: a forgotten identity is accepted again (raw points are
idempotent in InfluxDB, since a rewrite has the same series and timestamp).
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field

__all__ = ["Dedup", "DedupSpec"]

Ranges = list[list[int]]  # [[lo, hi), ...] sorted, disjoint, non-adjacent


@dataclass(frozen=True, slots=True)
class DedupSpec:
    max_boots: int = 8
    max_ranges: int = 256

    def build(self) -> Dedup:
        return Dedup(self)


@dataclass(slots=True)
class Dedup:
    spec: DedupSpec
    state: dict[str, dict[int, Ranges]] = field(default_factory=dict)
    forgotten: int = 0
    """How many ranges were forgotten to stay within bounds (each may let a duplicate through)."""

    def seen(self, device: str, boot: int, seq: int) -> bool:
        ranges = self.state.get(device, {}).get(boot)
        if not ranges:
            return False
        i = bisect_right(ranges, [seq, 2**63]) - 1
        return i >= 0 and ranges[i][0] <= seq < ranges[i][1]

    def check_and_add(self, device: str, boot: int, seq: int) -> bool:
        """Record the identity; True when it is new, False when it was seen before."""
        boots = self.state.setdefault(device, {})
        ranges = boots.get(boot)
        if ranges is None:
            ranges = boots[boot] = []
            if len(boots) > self.spec.max_boots:
                oldest = min(boots)
                self.forgotten += len(boots.pop(oldest))
                if oldest == boot:
                    return True
        i = bisect_right(ranges, [seq, 2**63]) - 1
        if i >= 0 and ranges[i][0] <= seq < ranges[i][1]:
            return False
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
                del ranges[0]
                self.forgotten += 1
        return True

    def snapshot(self) -> dict[str, dict[str, Ranges]]:
        return {
            dev: {str(boot): [list(r) for r in ranges] for boot, ranges in boots.items()}
            for dev, boots in self.state.items()
        }

    def restore(self, snap: dict[str, dict[str, Ranges]]) -> None:
        self.state = {
            dev: {int(boot): [list(r) for r in ranges] for boot, ranges in boots.items()} for dev, boots in snap.items()
        }
