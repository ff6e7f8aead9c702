"""Fixtures of the reliability tests: a private Mosquitto per test (some tests restart or lock it down)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import services
from harness import kill_leftovers
from helpers import start_or_fail
from services import Proc

# The broker must be able to hold what the gateway has not acknowledged yet (while it is down or its
# Receive Maximum is full): Mosquitto's default of 1000 queued messages per session would drop the rest.
# scripts/services.py sets these (and the packet size limit and autosave) in every broker it starts.
BROKER_QUEUE = services.QUEUE_LIMITS


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Proc]:
    """A Mosquitto of this test only with the project's broker settings: persistent (saved every ~2 s),
    a queue deep enough for any outage here, packets of at most ``services.MAX_PACKET_SIZE`` bytes."""
    run_dir = tmp_path / "broker"
    proc = start_or_fail(lambda: services.start_mosquitto(run_dir, services.free_port(), persistence=True))
    yield proc
    proc.stop()


@pytest.fixture(autouse=True)
def no_gateway_left_running() -> Iterator[None]:
    """A test that fails before it stops its gateway leaves no process behind (it would hold ports and a core
    for the rest of the run)."""
    yield
    kill_leftovers()
