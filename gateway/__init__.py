"""edgekit gateway: MQTT ingest, event-time processing and InfluxDB sinks for ESP32 fleets."""

from typing import Final

from ._compiled import select as _select

__version__ = "0.1.0"

LINES_BUILD: Final = _select(__name__, strict=False)
"""Which build of line protocol (``gateway.lineproto``, ``gateway.points``) this process runs: ``compiled`` (mypyc,
``scripts/build_compiled.py``) or ``pure (...)`` with the reason. Decided here, before either is imported; even
with ``EDGEKIT_ENGINE=compiled`` a missing build does not stop ``import gateway`` (every module, and the build
script, imports it): it says why it is pure (``tests/gateway/test_lines_compiled.py`` requires ``compiled``)."""
