"""The ``reading`` line from a device's series rendered once (``points.reading_line``) is the reference's text.

``reading_line_reference`` goes through the generic ``lineproto.line``; the fast path keeps each device's
measurement and tags, each metric's ``name=`` and writes finite floats directly. Both are run on the same
readings, including what the decoder never lets through (odd names, non-finite values, huge integers,
control characters, reserved metric names), and must give the same line or the same error.
"""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import points
from gateway.model import Reading
from gateway.points import reading_line, reading_line_reference

NAMES = st.one_of(
    st.sampled_from(
        [
            "temp_c",
            "rh",
            "boot",
            "seq",
            "q",
            "a,b",
            "a b",
            "a=b",
            "é",
            "x\ny",
            "t\\",
            "\ud800",
            "a:b",
            'a"b',
            "a.b-1",
            "9",
        ]
    ),
    st.text(min_size=0, max_size=6),
)
VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.booleans(),
    st.text(max_size=8),
    st.sampled_from([0.0, -0.0, 1e300, 5e-324, 21.5, 2**53 + 1.0]),
)
IDS = st.one_of(st.integers(min_value=0, max_value=2**31 - 1), st.integers(min_value=-(2**65), max_value=2**65))


def outcome(f: object, r: Reading) -> tuple[str, str]:
    try:
        return "line", f(r)  # type: ignore[operator]
    except (ValueError, TypeError) as exc:
        return type(exc).__name__, str(exc)


@settings(max_examples=200, deadline=None)
@given(
    site=st.one_of(st.sampled_from(["s", "site-a", ""]), st.text(max_size=5)),
    device=st.one_of(st.sampled_from(["d1", "gh-07"]), st.text(max_size=5)),
    boot=IDS,
    seq=IDS,
    t_ms=st.integers(min_value=0, max_value=2**50),
    quality=st.sampled_from(["s", "c", "u", 'x"', ""]),
    metrics=st.dictionaries(NAMES, VALUES, max_size=5),
)
def test_the_fast_reading_line_is_the_references(
    site: str, device: str, boot: int, seq: int, t_ms: int, quality: str, metrics: dict[str, object]
) -> None:
    r = Reading(site, device, boot, seq, t_ms, quality, metrics)  # type: ignore[arg-type]
    assert outcome(reading_line, r) == outcome(reading_line_reference, r)
    assert outcome(reading_line, r) == outcome(reading_line_reference, r)  # the second time from the caches


def test_the_common_reading() -> None:
    r = Reading("site-a", "gh-07", 3, 41, 1_764_072_000_123, "s", {"temp_c": 21.5, "rh": 40.0, "door": "open"})
    assert reading_line(r) == reading_line_reference(r)
    assert reading_line(r).startswith('reading,device=gh-07,site=site-a temp_c=21.5,rh=40.0,door="open",boot=3i,')
    assert not math.isnan(float(reading_line(r).rsplit(" ", 1)[1]))


def _near(x: float) -> st.SearchStrategy[float]:
    """Floats at and around ``x`` (a few ulps either side, both signs)."""
    return st.tuples(st.integers(min_value=-3, max_value=3), st.booleans()).map(
        lambda a: (-1.0 if a[1] else 1.0) * _step(x, a[0])
    )


def _step(x: float, k: int) -> float:
    for _ in range(abs(k)):
        x = math.nextafter(x, math.inf if k > 0 else -math.inf)
    return x


PLAIN_FLOATS = st.one_of(
    _near(1e-4), _near(1e16), _near(0.0), _near(5e-324), _near(1.7976931348623157e308),
    st.floats(min_value=-1e6, max_value=1e6).map(lambda x: round(x, 3)),
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(min_value=1e-5, max_value=1e17),
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(
    values=st.lists(PLAIN_FLOATS, min_size=1, max_size=6),
    names=st.permutations(["temp_c", "rh", "pressure_hpa", "vib", "a b", "x", "a:b", 'a"b', "q"]),
)
def test_readings_of_floats_only_are_the_references(values: list[float], names: list[str]) -> None:
    """A reading whose every value is a finite float has its values written in one call where msgspec writes them
    as ``repr`` does; at and around the edges of that range (1e-4 and 1e16) each value is written as ``repr`` (beyond
    the largest float, an infinity, both refuse alike). Twice: the second time a reading of plain names only is
    written from its whole dict's JSON; one with another name (a space, a colon, a quote, a reserved name) is not."""
    r = Reading("s", "d", 1, 2, 1_764_072_000_123, "s", dict(zip(names, values, strict=False)))
    assert outcome(reading_line, r) == outcome(reading_line_reference, r)
    assert outcome(reading_line, r) == outcome(reading_line_reference, r)


def test_plain_names_are_written_from_the_dict_s_json() -> None:
    """The common reading's names are known to be written as themselves once seen; names that JSON or a line
    writes otherwise, or that hold a character the dict's JSON is cut at, never are."""
    odd = {"a:b": 1.5, 'c"d': 2.5, "e f": 3.5, "g,h": 4.5, "i=j": 5.5, "é": 6.5, "k\\": 7.5, "seq": 8.5}
    for metrics in ({"temp_c": 21.5, "rh": 40.25, "pressure_hpa": 1013.2, "vib.x-1": 0.0}, odd):
        r = Reading("s", "d", 1, 2, 1_764_072_000_123, "s", metrics)
        for _ in range(2):
            assert reading_line(r) == reading_line_reference(r)
    assert {"temp_c", "rh", "pressure_hpa", "vib.x-1"} <= points._PLAIN
    assert points._PLAIN.isdisjoint(odd)


def test_the_edges_of_the_one_call_range() -> None:
    for values in ([1e16, 21.5], [9.999999999999999e-05, 1.0], [1e-4, -0.0, 0.0], [21.5, 1e308], [-1e16, 3.0]):
        r = Reading("s", "d", 0, 0, 1, "s", {f"m{i}": v for i, v in enumerate(values)})
        assert reading_line(r) == reading_line_reference(r), values


def test_a_device_that_moves_site_is_written_under_its_new_site() -> None:
    for site in ("north", "south", "north"):
        r = Reading(site, "moving-1", 1, 2, 1_764_072_000_123, "s", {"temp_c": 21.5})
        assert reading_line(r) == reading_line_reference(r)
        assert reading_line(r).startswith(f"reading,device=moving-1,site={site} ")


class _Like(str):
    """A str that hashes and compares as another: the caches must not take it for that one."""

    def __hash__(self) -> int:
        return hash("temp_c")

    def __eq__(self, other: object) -> bool:
        return True

    def __ne__(self, other: object) -> bool:
        return False


def test_str_subclasses_never_reach_the_caches() -> None:
    plain = Reading("north", "dv-like", 1, 2, 1_764_072_000_123, "s", {"temp_c": 21.5})
    for r in (
        plain,
        Reading("north", "dv-like", 1, 2, 1_764_072_000_123, "s", {_Like("a b"): 1.5}),
        Reading(_Like("evil"), "dv-like", 1, 2, 1_764_072_000_123, "s", {"temp_c": 21.5}),
        Reading("north", _Like("other"), 1, 2, 1_764_072_000_123, "s", {"temp_c": 21.5}),
        plain,
    ):
        for _ in range(2):
            assert reading_line(r) == reading_line_reference(r)
    assert reading_line(plain).startswith("reading,device=dv-like,site=north ")
