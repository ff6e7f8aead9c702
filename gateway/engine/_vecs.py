"""``librt.vecs.vec`` where librt has no build for the platform (32-bit ARM): a list, for the pure-Python engine.

The window engine keeps a sliding window's panes in columns of ``vec[i64]`` and ``vec[float]`` (``operators.Panes``);
it only makes them from a list and reads, writes and measures them, which a list does the same way."""

from __future__ import annotations

from typing import Any


class vec(list[Any]):
    """``vec[T](items)``: a list of the items (``T`` is not checked)."""

    def __class_getitem__(cls, item: object) -> Any:
        return cls
