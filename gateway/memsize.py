"""Bytes an object graph holds, as the engine benchmarks and ``plan`` measure state.

Standard library only, and importing nothing of the gateway: ``bench/memsize.py`` loads this file by its path, so
that a benchmark that measures another checkout can use it before that checkout's gateway is imported.

Two counts. :func:`deep_size` adds up ``sys.getsizeof`` (what each object asks for), as the benchmarks have always
reported state. :func:`block_size` counts what the allocator hands out for it: CPython's small-object allocator
(pymalloc) serves a request of up to 512 bytes from a block of the next multiple of 16 bytes (a 72-byte object
takes 80), and a larger one comes from the C library's ``malloc`` (glibc: 8 bytes of header, a multiple of 16, at
least 32); a list's, dict's or set's table is a block of its own beside the object. That is what the allocators hand
out for the objects (``tests/gateway/test_memsize.py`` checks it against ``tracemalloc``'s record of every block
CPython allocated and against pymalloc's and glibc's own counts). It is not the process's memory: the pools and arenas
around the blocks, part used after objects are freed, are not counted (the state benchmark's RSS is about twice it).
Not counted either: the values of an instance whose ``__dict__`` CPython 3.11 manages without a dict object (no
class of the engine's state has one; they have ``__slots__`` or are compiled). Nor the digit an int made by an
addition may hold beyond its size: CPython's ``x_add`` allocates one digit more than the larger operand and trims the
result in place, so a time of 41 bits computed as ``start + size`` takes a 48-byte block where ``sys.getsizeof`` says
32 (an int parsed from text, as a reading's time is, takes 32). Only the pure-Python engine keeps ints as objects:
its window ends and timers are such sums, about 0.5 % more than counted (``tests/gateway/test_memsize.py``)."""

from __future__ import annotations

import gc
import sys
import types
from collections.abc import Callable

__all__ = ["block", "block_size", "deep_size"]

_SKIP = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType)
_GC_HEAD = 16
"""The collector's header before a tracked type's object (CPython 3.8-3.12, 64-bit); ``sys.getsizeof`` counts it."""
_SMALL = 512
"""pymalloc's largest request (``SMALL_REQUEST_THRESHOLD``); its blocks are multiples of 16 bytes on 64-bit."""


def block(n: int) -> int:
    """The bytes the allocator hands out for a request of ``n``: pymalloc's block up to 512, glibc's chunk above."""
    if n <= _SMALL:
        return max(16, (n + 15) & ~15)
    return max(32, (n + 8 + 15) & ~15)


_VECS = {"vec[i64]": (24, 8), "vec[float]": (24, 8), "vec[i32]": (28, 4)}
"""``librt.vecs``' column types (the window engine's panes), each with its buffer's header and the bytes of a value:
interpreted, a ``vec`` is a 32-byte object whose buffer (the header and the values, rounded up to 8 bytes; none while
empty: tracemalloc's counts) neither ``sys.getsizeof`` nor the collector shows. Compiled code keeps the buffer
itself, which the collector shows and ``sys.getsizeof`` measures."""


def _vec_kind(o: object) -> tuple[int, int] | None:
    """``o``'s entry in :data:`_VECS` if it is an interpreted ``vec`` (None for any other object)."""
    t = type(o)
    return _VECS.get(t.__name__) if t.__module__ == "builtins" else None


def _vec_buffer(o: object) -> int:
    """The bytes of an interpreted ``vec``'s buffer (0 for any other object)."""
    kind = _vec_kind(o)
    if kind is not None:
        n = len(o)  # type: ignore[arg-type]
        head, item = kind
        return (head + item * n + 7) & ~7 if n else 0
    return 0


class _Buffer:
    """The buffer of a ``vec`` that a compiled object of the gateway untracked by the collector holds (``_held``):
    ``getattr`` boxes it in a new ``vec`` object, which is not part of the state; its buffer, of ``n`` bytes, is."""

    __slots__ = ("n",)

    def __init__(self, n: int) -> None:
        self.n = n


def _size(o: object) -> int:
    if type(o) is _Buffer:
        return o.n
    return sys.getsizeof(o) + _vec_buffer(o)


def _object_blocks(o: object) -> int:
    """The blocks of one object: itself, and for a list, dict, set or bytearray its table, allocated apart (and an
    interpreted ``vec``'s buffer)."""
    if type(o) is _Buffer:
        return block(o.n)
    n = sys.getsizeof(o)
    hidden = _vec_buffer(o)
    if hidden:
        return block(n) + block(hidden)
    if isinstance(o, (list, dict, set, frozenset, bytearray)):
        t = type(o)
        head = t.__basicsize__ + (_GC_HEAD if t.__flags__ & (1 << 14) else 0)
        rest = n - head
        return block(head) + (block(rest) if rest > 0 else 0)
    return block(n)


_FIELDS: dict[type, tuple[str, ...]] = {}


def _fields(t: type) -> tuple[str, ...]:
    """The attributes of a compiled class of the gateway (mypyc lists them in ``__mypyc_attrs__``; a property is a
    ``getset_descriptor`` too, but computes what it returns, and may keep it: never read)."""
    names = _FIELDS.get(t)
    if names is None:
        names = tuple(n for n in getattr(t, "__mypyc_attrs__", ()) if not n.startswith("__"))
        _FIELDS[t] = names
    return names


def _held(o: object) -> list[object]:
    """What ``o`` refers to: what the collector shows, and for an object of a compiled class of the gateway that it
    does not track (``mypyc_attr(acyclic=True)``: no cycle can go through it, so it has no collector header and shows
    nothing) the objects its attributes hold. An attribute typed ``int``, ``float`` or ``bool`` is kept unboxed and
    read as a new object each time: not followed. Nor is a ``vec`` read so (a new box each time): its buffer is
    counted (:class:`_Buffer`; an empty one has none)."""
    refs = gc.get_referents(o)
    t = type(o)
    if not refs and t.__module__.startswith("gateway.") and not gc.is_tracked(o):
        for n in _fields(t):
            v = getattr(o, n, None)
            if v is None or isinstance(v, (int, float)):
                continue
            if _vec_kind(v) is not None:
                b = _vec_buffer(v)
                if b:
                    refs.append(_Buffer(b))
            else:
                refs.append(v)
    return refs


def _walk(root: object, size: Callable[[object], int]) -> int:
    seen: set[int] = set()
    stack = [root]
    total = 0
    while stack:
        o = stack.pop()
        if type(o) is _Buffer:  # one of its own (made for it, never seen twice: its id may be reused once freed)
            total += size(o)
            continue
        if id(o) in seen or isinstance(o, _SKIP):
            continue
        seen.add(id(o))
        total += size(o)
        stack.extend(_held(o))
        if isinstance(o, dict):  # a dict whose keys are all strings does not show them to the collector (CPython 3.11)
            stack.extend(o)
    return total


def deep_size(root: object) -> int:
    """Bytes held by ``root`` and everything it references (classes, modules and functions excluded), as the objects
    ask for them (``sys.getsizeof``)."""
    return _walk(root, _size)


def block_size(root: object) -> int:
    """:func:`deep_size` as the allocator hands the bytes out (:func:`block`): what the process holds for them."""
    return _walk(root, _object_blocks)
