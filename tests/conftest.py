"""Session fixtures that run private Mosquitto, InfluxDB 1.x and VictoriaMetrics instances.

Each instance listens on free ports of 127.0.0.1 and keeps its files under pytest's tmp dir, so the
tests never touch the demo's services (``scripts/services.py start``).  A missing binary fails the
fixture with the install command: these tests are never skipped.
"""

from __future__ import annotations

import sys
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

SCRIPTS_DIR = Path(__file__).resolve().parent.parent / "scripts"
if str(SCRIPTS_DIR) not in sys.path:
    sys.path.insert(0, str(SCRIPTS_DIR))

import services  # noqa: E402  (scripts/services.py, stdlib only)
from helpers import start_or_fail  # noqa: E402
from services import Proc  # noqa: E402


@pytest.fixture(scope="session")
def services_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of the private service dirs of this test session."""
    return tmp_path_factory.mktemp("services")


@pytest.fixture(scope="session")
def mosquitto(services_dir: Path) -> Iterator[Proc]:
    """An anonymous Mosquitto broker: use ``.host`` and ``.port``."""
    proc = start_or_fail(lambda: services.start_mosquitto(services_dir, services.free_port()))
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def influxdb_v1(services_dir: Path) -> Iterator[Proc]:
    """An InfluxDB 1.x server: ``.url`` (``http://127.0.0.1:PORT``), ``.host``, ``.port`` (HTTP)."""

    def start() -> Proc:
        http_port, rpc_port = services.free_ports(2)
        return services.start_influxdb(services_dir, http_port, rpc_port)

    proc = start_or_fail(start)
    yield proc
    proc.stop()


@pytest.fixture
def influx_db(influxdb_v1: Proc) -> Iterator[str]:
    """A freshly created, uniquely named database in :func:`influxdb_v1`; dropped afterwards."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    services.influx_create_database(influxdb_v1.url, name)
    yield name
    data = urllib.parse.urlencode({"q": f'DROP DATABASE "{name}"'}).encode()
    services.http_request(f"{influxdb_v1.url}/query", method="POST", data=data)


@pytest.fixture(scope="session")
def victoria_metrics(services_dir: Path) -> Iterator[Proc]:
    """A single-node VictoriaMetrics: ``.url``.  Use ``helpers.vm_export`` + ``helpers.poll`` to read."""
    proc = start_or_fail(lambda: services.start_victoria_metrics(services_dir, services.free_port()))
    yield proc
    proc.stop()
