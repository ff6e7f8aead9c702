"""Fixtures of the simulator's tests."""

from __future__ import annotations

import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def private_dir() -> Iterator[Path]:
    """A 0755 dir under the system tmp dir, for a private Mosquitto (it drops root for its own user)."""
    path = Path(tempfile.mkdtemp(prefix="edgekit-sim-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound but not listening, and held for the whole test so
    that no concurrently started service can take it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])
