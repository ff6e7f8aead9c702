"""The event-time engine: watermarks per device, windows, allowed lateness and a late side output.

Pure and synchronous (no I/O, no asyncio, no wall clock). See ``docs/semantics.md``.

>>> from gateway.engine import Engine, parse_engine
>>> engine = Engine(parse_engine({"windows": [
...     {"name": "t1m", "kind": "tumbling", "size": "60s", "metrics": ["temp_c"]}]}))
"""

from __future__ import annotations

from ._build import COMPILED_MODULES, ENGINE_BUILD
from .config import EngineSpec, WindowSpec, parse_duration, parse_engine, parse_windows
from .engine import Engine
from .outputs import LATE_MEASUREMENT, WINDOW_MEASUREMENT, LateReading, Output, WindowResult
from .watermark import DeviceClass, WatermarkSpec

__all__ = [
    "COMPILED_MODULES",
    "ENGINE_BUILD",
    "LATE_MEASUREMENT",
    "WINDOW_MEASUREMENT",
    "DeviceClass",
    "Engine",
    "EngineSpec",
    "LateReading",
    "Output",
    "WatermarkSpec",
    "WindowResult",
    "WindowSpec",
    "parse_duration",
    "parse_engine",
    "parse_windows",
]
