from __future__ import annotations

import math

import pytest

from gateway.lineproto import line


def test_types_and_escaping() -> None:
    got = line(
        "my meas", {"site": "a b", "device": "d,1=x", "empty": ""}, {"f": 1.5, "i": -3, "b": False, "s": 'q"\\'}, 7
    )
    assert got == r'my\ meas,device=d\,1\=x,site=a\ b f=1.5,i=-3i,b=false,s="q\"\\" 7'


def test_floats_keep_their_value() -> None:
    for value in (0.1, 1e300, -2.5e-12, 21.0):
        text = line("m", {}, {"v": value}, 0)
        assert float(text.split("v=")[1].split(" ")[0]) == value


def test_rejects_non_finite_and_empty() -> None:
    with pytest.raises(ValueError):
        line("m", {}, {"v": math.nan}, 0)
    with pytest.raises(ValueError):
        line("m", {}, {}, 0)
