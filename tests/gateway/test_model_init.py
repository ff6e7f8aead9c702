"""``Reading`` and ``Batch`` have their own ``__init__`` (the frozen dataclass's sets each field through
``object.__setattr__``; theirs through each slot's descriptor, in about half the time): held to the ``__init__``
the dataclass would have made, over the same fields - the same signature, the same object from the same
arguments given by position or by name, the same errors - and still frozen, comparable, hashable, copied, pickled
and replaced as a dataclass is."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import pickle
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.model import Batch, DeadLetter, Reading


def reference(cls: type) -> type:
    """The frozen slotted dataclass of ``cls``'s fields with the ``__init__`` dataclasses makes."""
    fields = [
        (f.name, f.type, dataclasses.field(default=f.default))
        if f.default is not dataclasses.MISSING
        else (f.name, f.type)
        for f in dataclasses.fields(cls)
    ]
    return dataclasses.make_dataclass(cls.__name__, fields, frozen=True, slots=True)


REF = {Reading: reference(Reading), Batch: reference(Batch)}


def same(ours: Any, ref: Any) -> None:
    assert type(ours).__name__ == type(ref).__name__
    assert dataclasses.astuple(ours) == dataclasses.astuple(ref)
    for f in dataclasses.fields(ours):  # the very objects given, not copies
        assert getattr(ours, f.name) is getattr(ref, f.name)
    assert repr(ours) == repr(ref)


def test_the_signature_is_the_dataclass_s() -> None:
    for cls, ref in REF.items():
        ours, theirs = inspect.signature(cls.__init__), inspect.signature(ref.__init__)
        assert list(ours.parameters.values()) == list(theirs.parameters.values())  # names, kinds, types, defaults
        assert [f.name for f in dataclasses.fields(cls)] == list(cls.__slots__)


values = st.one_of(st.none(), st.integers(), st.text(max_size=4), st.floats(allow_nan=False), st.booleans())


@given(st.lists(values, min_size=7, max_size=7), st.booleans())
def test_the_same_object_from_the_same_arguments(args: list[Any], by_name: bool) -> None:
    for cls, ref in REF.items():
        names = [f.name for f in dataclasses.fields(cls)]
        if by_name:
            ours, theirs = cls(**dict(zip(names, args, strict=True))), ref(**dict(zip(names, args, strict=True)))
        else:
            ours, theirs = cls(*args), ref(*args)
        same(ours, theirs)
        assert ours == cls(*args) and hash(ours) == hash(cls(*args))  # type: ignore[arg-type]


def test_defaults_and_wrong_arguments_as_the_dataclass() -> None:
    r = Reading("s", "d", 1, 2, 3, "s", {"x": 1.0})
    rs: tuple[Reading, ...] = (r,)
    b = Batch("s", "d", "t", 5, rs, ())
    assert b.flushed_ms is None
    same(b, REF[Batch]("s", "d", "t", 5, rs, ()))
    for cls, ref in REF.items():
        for args, kwargs in (((1,), {}), ((1,) * 8, {}), ((1,) * 7, {"site": 1}), ((), {"nope": 1})):
            with pytest.raises(TypeError):
                ref(*args, **kwargs)
            with pytest.raises(TypeError):
                cls(*args, **kwargs)


def test_still_frozen_compared_hashed_copied_pickled_and_replaced() -> None:
    r = Reading("s", "d", 1, 2, 3, "s", {"x": 1.0})
    dl = DeadLetter("schema", "why", "t", 1, 2, "{}")
    b = Batch("s", "d", "t", 5, (r,), (dl,), 9)
    for obj in (r, b):
        with pytest.raises(dataclasses.FrozenInstanceError):
            obj.site = "x"  # type: ignore[misc]
        with pytest.raises(dataclasses.FrozenInstanceError):
            del obj.site  # type: ignore[misc]
        for again in (copy.copy(obj), copy.deepcopy(obj), pickle.loads(pickle.dumps(obj))):
            assert again == obj and type(again) is type(obj)
    assert dataclasses.replace(r, seq=7) == Reading("s", "d", 1, 7, 3, "s", {"x": 1.0})
    assert dataclasses.replace(b, flushed_ms=None).flushed_ms is None
    assert r.key == ("d", 1, 2)
    assert hash(Reading("s", "d", 1, 2, 3, "s", ())) == hash(Reading("s", "d", 1, 2, 3, "s", ()))
