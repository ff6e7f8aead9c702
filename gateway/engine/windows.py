"""Pure integer-millisecond window arithmetic.

A window is the half-open range ``[start, end)``. Window starts sit on the grid ``offset + k * slide``;
tumbling windows are sliding windows with ``slide == size``. Sliding windows are built from *panes* of
width ``gcd(size, slide)`` (shared slices): a reading lands in exactly one pane, and every window is a
whole number of consecutive panes.
"""

from __future__ import annotations

from math import gcd

__all__ = [
    "first_window_end_after",
    "last_window_containing",
    "pane_size",
    "pane_start",
    "window_ranges",
    "window_start",
    "windows_of_pane",
]


def window_start(ts: int, size: int, offset: int = 0) -> int:
    """Start of the tumbling window of ``size`` (shifted by ``offset``) that contains ``ts``."""
    return ts - (ts - offset) % size


def window_ranges(ts: int, size: int, slide: int, offset: int = 0) -> list[tuple[int, int]]:
    """Every ``(start, end)`` of the sliding windows that contain ``ts``, oldest first.

    >>> window_ranges(65, 60, 20)
    [(20, 80), (40, 100), (60, 120)]
    >>> window_ranges(65, 60, 60)
    [(60, 120)]
    """
    if size <= 0 or slide <= 0:
        raise ValueError(f"size and slide must be positive, got size={size} slide={slide}")
    last = ts - (ts - offset) % slide
    out: list[tuple[int, int]] = []
    start = last
    while start > ts - size:
        out.append((start, start + size))
        start -= slide
    out.reverse()
    return out


def last_window_containing(ts: int, size: int, slide: int, offset: int = 0) -> tuple[int, int]:
    """The window containing ``ts`` that ends last (the one that stays open longest)."""
    start = ts - (ts - offset) % slide
    return start, start + size


def pane_size(size: int, slide: int) -> int:
    """Width of the shared slices of a sliding window: ``gcd(size, slide)``."""
    return gcd(size, slide)


def pane_start(ts: int, pane: int, offset: int = 0) -> int:
    """Start of the pane that contains ``ts``."""
    return ts - (ts - offset) % pane


def windows_of_pane(p: int, size: int, slide: int, offset: int = 0) -> range:
    """Starts of the windows that contain the whole pane starting at ``p`` (as a ``range``)."""
    last = p - (p - offset) % slide
    lo = p - size + 1  # windows [s, s + size) with s <= p < s + size
    first = lo + (offset - lo) % slide
    return range(first, last + 1, slide)


def first_window_end_after(wm: int, size: int, slide: int, offset: int = 0) -> int:
    """The smallest window end on the grid that is strictly greater than ``wm``."""
    # ends are offset + size + k * slide
    base = offset + size
    return wm + 1 + (base - wm - 1) % slide
