"""The runnable example in docs/semantics.md runs and prints what the page says."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

DOC = Path(__file__).resolve().parents[3] / "docs" / "semantics.md"


def test_example_runs() -> None:
    section = DOC.read_text(encoding="utf-8").split("## Runnable example")[1]
    code = section.split("```python")[1].split("```")[0]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(compile(code, str(DOC), "exec"), {})
    lines = buf.getvalue().splitlines()
    assert len(lines) == 3
    assert "revision=1i" in lines[0] and 'fired="watermark"' in lines[0]
    assert "count=2i" in lines[1] and "revision=2i" in lines[1]
    assert lines[0].split()[-1] == lines[1].split()[-1]  # same timestamp: overwritten
    assert lines[2].startswith("late_reading,") and "late_by_ms=192000i" in lines[2]
