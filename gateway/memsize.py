"""Bytes an object graph holds, as the engine benchmarks and ``plan`` measure state.

Standard library only, and importing nothing of the gateway: ``bench/memsize.py`` loads this file by its path, so
that a benchmark that measures another checkout can use it before that checkout's gateway is imported."""

from __future__ import annotations

import gc
import sys
import types

__all__ = ["deep_size"]


def deep_size(root: object) -> int:
    """Bytes held by ``root`` and everything it references (classes, modules and functions excluded)."""
    skip = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType)
    seen: set[int] = set()
    stack = [root]
    total = 0
    while stack:
        o = stack.pop()
        if id(o) in seen or isinstance(o, skip):
            continue
        seen.add(id(o))
        total += sys.getsizeof(o)
        stack.extend(gc.get_referents(o))
    return total
