"""The pictures in docs/pictures/ are what the code draws today (``python scripts/docs_pictures.py``).

Three of them are small simulated runs drawn from the simulator's reference (the numbers the gateway is
checked against) and one is the CEP compiler's automata: a change to the watermark, window or pattern rules
changes them, and this test says to redraw them. Each must also be referenced from the docs.
"""

from __future__ import annotations

from pathlib import Path

import docs_pictures  # scripts/docs_pictures.py (tests/conftest.py puts scripts/ on sys.path)

REPO = Path(__file__).resolve().parent.parent


def test_every_picture_is_current() -> None:
    files = docs_pictures.generate()
    assert files, "no pictures"
    for path, text in files.items():
        assert path.exists(), f"{path} is missing: run python scripts/docs_pictures.py"
        assert path.read_text(encoding="utf-8") == text, (
            f"{path.name} is out of date: run python scripts/docs_pictures.py"
        )
    assert sorted(p.name for p in (REPO / "docs" / "pictures").glob("*.svg")) == sorted(p.name for p in files)


def test_every_picture_is_shown_in_the_docs_and_draws_something() -> None:
    docs = "".join(p.read_text(encoding="utf-8") for p in (REPO / "docs").glob("*.md"))
    for path, text in docs_pictures.generate().items():
        assert f"pictures/{path.name}" in docs, f"{path.name} is not referenced from docs/*.md"
        assert text.startswith("<svg") and "no data" not in text
    marks = {p.name: t.count('class="mark"') for p, t in docs_pictures.generate().items()}
    # the run pictures hold their readings, watermark steps, window bands and firings
    assert all(marks[n] >= 5 for n in ("watermark.svg", "sleepy.svg", "lateness.svg")), marks
