"""The anomaly detectors' result classes write their own ``__init__`` (so that mypyc compiles it: the one the
``dataclasses`` module writes stays interpreted Python, about 20 times slower to call; gateway/anomaly/detector.py,
``by_fields``). Each must be the ``__init__`` the dataclass would have had: the same parameters in the same
order with the same defaults, every field set to its argument, still frozen, equal and hashed by its fields.
These checks read the Python source (loaded from its file whichever build the package uses: a compiled
``__init__`` has no signature to inspect); the compiled build's results are compared with the pure build's,
repr for repr, by test_anomaly_compiled.py."""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import gateway.anomaly


def _source(name: str) -> ModuleType:
    """``gateway.anomaly.<name>`` as its .py file defines it, under a name of its own."""
    path = Path(gateway.anomaly.__file__).parent / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"gateway.anomaly._source_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses looks the module up
    spec.loader.exec_module(module)
    return module


_detector, _multivariate = _source("detector"), _source("multivariate")
CLASSES = [_detector.Scored, _detector.Event, _detector.Result, _multivariate.MultiResult]


def _twin(cls: type[Any]) -> type[Any]:
    """The same fields as a dataclass whose ``__init__`` the ``dataclasses`` module writes."""
    spec = [
        (f.name, f.type, dataclasses.field(default=f.default) if f.default is not dataclasses.MISSING else
         dataclasses.field())
        for f in dataclasses.fields(cls)
    ]  # fmt: skip
    return dataclasses.make_dataclass("Twin" + cls.__name__, spec, frozen=True, slots=True)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_init_has_the_fields_parameters(cls: type[Any]) -> None:
    mine = list(inspect.signature(cls.__init__).parameters.values())[1:]
    generated = list(inspect.signature(_twin(cls).__init__).parameters.values())[1:]
    assert [(p.name, p.kind, p.default) for p in mine] == [(p.name, p.kind, p.default) for p in generated]
    params = cls.__dataclass_params__  # type: ignore[attr-defined]
    assert params.frozen and params.eq and not params.init  # its own __init__, frozen as before


values = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=5),
                   st.tuples(st.integers()))  # fmt: skip


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
@given(data=st.data())
def test_constructed_as_the_dataclass_would(cls: type[Any], data: st.DataObject) -> None:
    names = [f.name for f in dataclasses.fields(cls)]
    required = sum(f.default is dataclasses.MISSING for f in dataclasses.fields(cls))
    n = data.draw(st.integers(required, len(names)), label="arguments")
    args = data.draw(st.lists(values, min_size=n, max_size=n), label="values")
    by_keyword = data.draw(st.booleans(), label="by keyword")
    twin = _twin(cls)
    if by_keyword:
        kw = dict(zip(names, args, strict=False))
        a, b, c, ref = cls(**kw), cls(**kw), cls(*args), twin(**kw)
    else:
        a, b, c, ref = cls(*args), cls(*args), cls(*args), twin(*args)
    assert dataclasses.astuple(a) == dataclasses.astuple(ref)
    assert a == b == c and hash(a) == hash(b)
    assert repr(a) == repr(ref).replace("Twin" + cls.__name__, cls.__name__)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(a, names[0], 0)
    with pytest.raises(TypeError):
        cls(*args, *[None] * (len(names) - n + 1))  # one argument too many
