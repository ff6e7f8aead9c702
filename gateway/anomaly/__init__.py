"""Anomaly detection: an adaptive z-score per device and metric, compound anomalies, measured accuracy.

Pure and synchronous (no I/O, no asyncio, no wall clock). See ``docs/anomaly.md``.

>>> from gateway.anomaly import Detector, DetectorSpec
>>> det = Detector(DetectorSpec(warmup=3))
>>> [det.process(t, x).scored.phase for t, x in [(0, 1.0), (1, 1.1), (2, 0.9), (3, 1.0)]]
['warmup', 'warmup', 'warmup', 'scored']
"""

from __future__ import annotations

from ._build import ANOMALY_BUILD, COMPILED_MODULES
from .config import AnomalySpec, CompoundSpec, DetectorSpec, GroupSpec, parse_anomaly
from .detector import Detector, Event, Result, Scored, score_of, t_z
from .engine import ANOMALY_MEASUREMENT, AnomalyEngine, AnomalyOutput, anomaly_line

__all__ = [
    "ANOMALY_BUILD",
    "ANOMALY_MEASUREMENT",
    "COMPILED_MODULES",
    "AnomalyEngine",
    "AnomalyOutput",
    "AnomalySpec",
    "CompoundSpec",
    "Detector",
    "DetectorSpec",
    "Event",
    "GroupSpec",
    "Result",
    "Scored",
    "anomaly_line",
    "parse_anomaly",
    "score_of",
    "t_z",
]
