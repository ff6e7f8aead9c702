"""edgekit gateway: MQTT ingest, event-time processing and InfluxDB sinks for ESP32 fleets."""

from typing import Final

from ._compiled import select as _select

__version__ = "0.1.0"

LINES_BUILD: Final = _select(__name__)
"""Which build of line protocol (``gateway.lineproto``, ``gateway.points``) this process runs: ``compiled`` (mypyc,
``scripts/build_compiled.py``) or ``pure (...)`` with the reason. Decided here, before either is imported."""
