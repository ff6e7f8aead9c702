"""Fixtures of the reliability tests: a private Mosquitto per test (some tests restart or lock it down)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import services
from helpers import start_or_fail
from services import Proc

# The broker must be able to hold what the gateway has not acknowledged yet (while it is down or its
# Receive Maximum is full): Mosquitto's default of 1000 queued messages per session would drop the rest.
BROKER_QUEUE = ("max_queued_messages 1000000", "max_queued_bytes 0")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Proc]:
    """A Mosquitto of this test only, persistent, with a queue deep enough for any outage here."""
    run_dir = tmp_path / "broker"
    proc = start_or_fail(
        lambda: services.start_mosquitto(run_dir, services.free_port(), persistence=True, extra_conf=BROKER_QUEUE)
    )
    yield proc
    proc.stop()
