"""Simulated boards and their sensors: identities, baselines and the metric generators.

A generator is ``(rng, device, t_ms) -> value``: a plausible signal for that device at that event
time (daily cycles, noise, the odd vibration spike). Callers round the value to 2 decimals.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

__all__ = ["DAY_MS", "METRIC_GENERATORS", "Device", "MetricGenerator", "make_devices"]

DAY_MS: Final = 86_400_000


@dataclass(frozen=True, slots=True)
class Device:
    """One simulated board: where it is, its identity counters and the baselines of its sensors."""

    index: int
    site: str
    device: str
    boot: int
    first_seq: int
    phase_ms: int
    """Offset of its first reading from the fleet's start, so that the fleet's readings are not aligned."""
    temp_base: float
    rh_base: float
    battery_mv: int


MetricGenerator = Callable[[random.Random, Device, int], float]


def _diurnal(t_ms: int) -> float:
    """-1..1 over a UTC day, warmest around 15:00."""
    return math.sin(2.0 * math.pi * ((t_ms % DAY_MS) / DAY_MS - 0.375))


def _temp_c(rng: random.Random, dev: Device, t_ms: int) -> float:
    return dev.temp_base + 2.5 * _diurnal(t_ms) + rng.gauss(0.0, 0.15)


def _rh(rng: random.Random, dev: Device, t_ms: int) -> float:
    return min(100.0, max(0.0, dev.rh_base - 6.0 * _diurnal(t_ms) + rng.gauss(0.0, 0.8)))


def _vib(rng: random.Random, dev: Device, t_ms: int) -> float:
    spike = rng.uniform(0.8, 2.5) if rng.random() < 0.02 else 0.0
    return abs(rng.gauss(0.0, 0.04)) + spike


def _pressure_hpa(rng: random.Random, dev: Device, t_ms: int) -> float:
    return 1013.25 + 4.0 * math.sin(2.0 * math.pi * t_ms / (3 * DAY_MS)) + rng.gauss(0.0, 0.1)


METRIC_GENERATORS: Final[Mapping[str, MetricGenerator]] = {
    "temp_c": _temp_c,
    "rh": _rh,
    "vib": _vib,
    "pressure_hpa": _pressure_hpa,
}
"""The metrics a simulated board can measure, by name."""


def make_devices(
    count: int, sites: Sequence[str], interval_ms: int, rng: random.Random, id_prefix: str = "dev"
) -> list[Device]:
    """``count`` boards with ids ``<id_prefix>-0001``... (``dev-0001``), spread over ``sites`` round-robin, with
    random boot counters, first sequence numbers, phases within ``interval_ms`` and sensor baselines."""
    return [
        Device(
            index=i,
            site=sites[i % len(sites)],
            device=f"{id_prefix}-{i + 1:04d}",
            boot=rng.randint(1, 40),
            first_seq=rng.randrange(0, 5000),
            phase_ms=rng.randrange(interval_ms),
            temp_base=rng.uniform(17.0, 25.0),
            rh_base=rng.uniform(35.0, 55.0),
            battery_mv=rng.randint(3600, 4150),
        )
        for i in range(count)
    ]
