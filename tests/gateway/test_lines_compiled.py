"""The optional compiled line protocol (``gateway.lineproto`` and ``gateway.points``, scripts/build_compiled.py)
against the pure-Python reference.

Both builds run in their own process (``EDGEKIT_ENGINE=pure`` and ``compiled``), rendering the same readings, dead
letters, statuses and points; their answers must be the same text, line for line, and so must what each refused
and why. The inputs cover the whole input space line protocol sees: every float (huge, subnormal, negative zero,
infinities and NaN, which it refuses), integers inside and beyond 64 bits, booleans, strings and names of any
character (quotes, backslashes, commas, spaces, equals signs, control characters, lone surrogates), reserved field
names among the metrics, boot and sequence numbers beyond 31 bits, every clock quality and others, empty tags.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import SERVE_HELPERS, Builds, build_pair, check_loaded_build, same_answer
from hypothesis import given, settings
from hypothesis import strategies as st

import gateway
from gateway import LINES_BUILD
from gateway._compiled import COMPILED

ROOT = Path(__file__).resolve().parents[2]

SERVE = (
    SERVE_HELPERS
    + r"""
from gateway import LINES_BUILD
from gateway.lineproto import field, line, series, visible
from gateway.model import DeadLetter, Reading, StatusUpdate
from gateway.points import dead_letter_line, reading_line, reading_line_reference, status_line


def value(v):  # JSON has no infinities nor NaN: the request names them
    return float(v) if v in ("inf", "-inf", "nan") else v


def values(m):
    return {k: value(v) for k, v in m.items()}


def run(req):
    out = []
    for kind, args in req:
        if kind == "reading":
            r = Reading(*args[:6], values(args[6]))
            out.append([guarded(reading_line, r), guarded(reading_line_reference, r)])
        elif kind == "dead":
            out.append(guarded(dead_letter_line, DeadLetter(*args[:-1]), args[-1]))
        elif kind == "status":
            out.append(guarded(status_line, StatusUpdate(*args[:5], values(args[5])), args[6]))
        elif kind == "line":
            out.append(guarded(line, args[0], args[1], values(args[2]), args[3]))
        elif kind == "field":
            out.append(guarded(field, args[0], value(args[1])))
        elif kind == "series":
            out.append(guarded(series, *args))
        else:
            out.append(guarded(visible, *args))
    return out


serve(LINES_BUILD, run)
"""
)


@pytest.fixture(scope="module")
def builds() -> Iterator[Builds]:
    """The pure and the compiled build, each in its own process; None where set-up did not build it."""
    yield from build_pair(SERVE)


def test_a_missing_build_does_not_stop_import_gateway(tmp_path: Path) -> None:
    """``EDGEKIT_ENGINE=compiled`` without line protocol's build: ``import gateway`` (which every module and the
    build script go through) still works and says why it is pure; a package's own build is still required."""
    shutil.copytree(ROOT / "gateway", tmp_path / "gateway", ignore=shutil.ignore_patterns("*.so", "_compiled.json"))
    env = {**os.environ, "EDGEKIT_ENGINE": "compiled", "PYTHONPATH": str(tmp_path)}
    code = "import gateway, gateway.points as p; print(gateway.LINES_BUILD, p.__file__.endswith('.py'))"
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.split() == ["pure", "(no", "compiled", "build)", "True"], done
    done = subprocess.run([sys.executable, "-c", "import gateway.engine"], cwd=tmp_path, env=env, capture_output=True)
    assert done.returncode != 0 and b"EDGEKIT_ENGINE=compiled but gateway.engine is pure" in done.stderr


def test_loaded_modules_are_the_reported_build() -> None:
    check_loaded_build("gateway", COMPILED["gateway"], LINES_BUILD)
    assert gateway.LINES_BUILD == LINES_BUILD


EDGE: list[Any] = [0.0, -0.0, 5e-324, 1e-5, 1e-4, 0.1, 21.37, 1e15, 1e16, 1e22, 1.7976931348623157e308, -2.5]
NONFINITE = ["inf", "-inf", "nan"]  # sent by name: JSON has no such numbers (so the text "inf" is never a string)
texts = st.text(max_size=8)
odd = st.sampled_from(["", " ", ",", "=", '"', "\\", "a b", "a,b=c", 'q"\\', "\n", "\t\r", "\x00\x7f\x9f", "\ud800"])
names = st.one_of(st.sampled_from(["temp_c", "rh", "boot", "seq", "q", "time"]), odd, texts)
numbers = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(EDGE),
    st.integers(-(2**63), 2**63 - 1),
    st.integers(2**63, 2**70),
    st.integers(-(2**70), -(2**63) - 1),
)
values = st.one_of(numbers, numbers, st.booleans(), texts, odd, st.sampled_from(NONFINITE))
ids = st.one_of(st.integers(0, 2**31 - 1), st.integers(2**31, 2**40), st.integers(-5, -1), st.sampled_from([0, 1]))


@st.composite
def requests(draw: st.DrawFn) -> list[Any]:
    out: list[Any] = []
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["reading", "reading", "reading", "dead", "status", "line", "field", "series"]))
        if kind == "reading":
            metrics = draw(st.dictionaries(names, values, max_size=5))
            args = [draw(st.one_of(texts, odd)), draw(st.one_of(texts, odd)), draw(ids), draw(ids),
                    draw(st.integers(0, 2**45)), draw(st.sampled_from(["s", "c", "u", "x", ""])), metrics]  # fmt: skip
        elif kind == "dead":
            args = [draw(texts), draw(st.one_of(texts, odd)), draw(texts), draw(st.integers(0, 2**45)),
                    draw(st.integers(0, 10**6)), draw(st.one_of(texts, odd)), draw(st.one_of(st.none(), texts)),
                    draw(st.one_of(st.none(), odd)), draw(st.one_of(st.none(), st.integers(0, 63))),
                    draw(st.integers(0, 2**40))]  # fmt: skip
        elif kind == "status":
            args = [draw(texts), draw(odd), draw(texts), draw(st.integers(0, 2**45)),
                    draw(st.sampled_from(["online", "sleeping", "offline"])),
                    draw(st.dictionaries(names, values, max_size=4)), draw(st.integers(0, 2**40))]  # fmt: skip
        elif kind == "line":
            args = [draw(st.one_of(texts, odd)), draw(st.dictionaries(names, st.one_of(texts, odd), max_size=3)),
                    draw(st.dictionaries(names, values, max_size=4)), draw(st.integers(-(2**63), 2**63))]  # fmt: skip
        elif kind == "field":
            args = [draw(names), draw(values)]
        else:
            args = [draw(st.one_of(texts, odd)), draw(st.dictionaries(names, st.one_of(texts, odd), max_size=3))]
        out.append([kind, args])
    return out


def rendered(builds: Builds, request: list[Any]) -> Any:
    """Both builds' lines for ``request`` (values as JSON carries them), which must be the same text."""
    return same_answer(builds, request, LINES_BUILD)


@given(requests())
@settings(max_examples=300, deadline=None)
def test_both_builds_render_the_same_lines(builds: Builds, request: list[Any]) -> None:
    answer = rendered(builds, request)
    if answer is None:
        return
    for (kind, _), got in zip(request, answer, strict=True):
        if kind == "reading":  # the fast path gives the reference's text (or refuses what it refuses)
            assert got[0] == got[1]


def test_the_edges_render_alike(builds: Builds) -> None:
    request = [["reading", ["site", "dev", 1, 2, 1_764_072_000_000, "s", {"m": v}]] for v in EDGE]
    request += [["field", ["k", v]] for v in [*EDGE, 2**63 - 1, -(2**63), 2**63, True, False, 'x"\\']]
    answer = rendered(builds, request)
    if answer is not None:
        assert answer[0][0] == 'reading,device=dev,site=site m=0.0,boot=1i,seq=2i,q="s" 1764072000000618036'
        assert answer[len(EDGE) + len(EDGE) + 2][0:5] == "Value"  # 2**63: beyond 64 bits, refused by both
