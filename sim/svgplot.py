"""Small self-contained SVG charts for the report page: no plotting library, no JavaScript.

A :class:`Chart` has two linear axes (times in ms are labelled ``HH:MM`` UTC), and takes series of
points (markers), step lines, shaded spans, vertical and horizontal reference lines; :meth:`Chart.svg`
renders it with ticks and a legend. ``y_fixed`` pins the y axis (a score from 0 to 1).
Every data mark carries ``class="mark"``, so a test can count what was drawn.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from html import escape
from typing import Final, Literal

__all__ = ["PALETTE", "Chart", "Shape"]

PALETTE: Final = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)  # fmt: skip
Shape = Literal["circle", "square", "triangle", "cross"]


@dataclass(slots=True)
class _Series:
    label: str
    color: str
    xs: list[float]
    ys: list[float]
    kind: Literal["points", "step", "line"]
    shape: Shape = "circle"
    size: float = 2.5


@dataclass(slots=True)
class Chart:
    title: str
    x_label: str
    y_label: str
    x_time: bool = True
    y_time: bool = False
    width: int = 960
    height: int = 320
    series: list[_Series] = field(default_factory=list)
    spans: list[tuple[float, float, str, str]] = field(default_factory=list)
    vlines: list[tuple[float, str, str]] = field(default_factory=list)
    hspans: list[tuple[float, float, str, str]] = field(default_factory=list)
    hlines: list[tuple[float, str, str]] = field(default_factory=list)
    diagonal: bool = False
    y_fixed: tuple[float, float] | None = None

    def points(self, label: str, xs: list[float], ys: list[float], color: str, shape: Shape = "circle",
               size: float = 2.5) -> None:  # fmt: skip
        self.series.append(_Series(label, color, list(xs), list(ys), "points", shape, size))

    def step(self, label: str, xs: list[float], ys: list[float], color: str) -> None:
        self.series.append(_Series(label, color, list(xs), list(ys), "step"))

    def line(self, label: str, xs: list[float], ys: list[float], color: str) -> None:
        self.series.append(_Series(label, color, list(xs), list(ys), "line"))

    def span(self, x0: float, x1: float, color: str, label: str) -> None:
        self.spans.append((x0, x1, color, label))

    def vline(self, x: float, color: str, label: str) -> None:
        self.vlines.append((x, color, label))

    def hspan(self, y0: float, y1: float, color: str, label: str) -> None:
        """A shaded band across the chart from ``y0`` to ``y1`` (a window in event time), labelled at its left."""
        self.hspans.append((y0, y1, color, label))

    def hline(self, y: float, color: str, label: str) -> None:
        self.hlines.append((y, color, label))

    @property
    def marks(self) -> int:
        lines = len(self.spans) + len(self.vlines) + len(self.hspans) + len(self.hlines)
        return sum(len(s.xs) for s in self.series) + lines

    def svg(self) -> str:
        xs = [x for s in self.series for x in s.xs] + [v for a, b, _, _ in self.spans for v in (a, b)]
        xs += [x for x, _, _ in self.vlines]
        ys = [y for s in self.series for y in s.ys] + [v for a, b, _, _ in self.hspans for v in (a, b)]
        left, right, top, bottom = 78, 16, 30, 46
        # legend entries four to a row, or two when a label is long (a window named with its kind)
        per_row = 4 if all(len(s.label) <= 28 for s in self.series) else 2
        legend_h = 18 * math.ceil(len(self.series) / per_row) if self.series else 0
        h = self.height + legend_h
        pw, ph = self.width - left - right, self.height - top - bottom
        out = [
            f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{self.width}" height="{h}" '
            'font-family="system-ui, sans-serif" '
            f'viewBox="0 0 {self.width} {h}" role="img" aria-label="{escape(self.title)}">',
            f'<rect x="0" y="0" width="{self.width}" height="{h}" fill="#fff"/>',
            f'<text x="{left}" y="18" font-size="14" font-weight="bold">{escape(self.title)}</text>',
        ]
        if not xs or (not ys and not self.spans):
            out.append(f'<text x="{left + 10}" y="{top + 30}" font-size="13" fill="#666">no data</text></svg>')
            return "".join(out)
        x0, x1 = _range(xs)
        y0, y1 = _range(ys) if ys else (0.0, 1.0)
        if self.y_fixed is not None:
            y0, y1 = self.y_fixed
        if self.diagonal:
            y0, y1 = min(x0, y0), max(x1, y1)

        def sx(x: float) -> float:
            return left + (x - x0) / (x1 - x0) * pw

        def sy(y: float) -> float:
            return top + ph - (y - y0) / (y1 - y0) * ph

        out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#999"/>')
        for tx in _ticks(x0, x1):
            out.append(f'<line x1="{sx(tx):.1f}" y1="{top}" x2="{sx(tx):.1f}" y2="{top + ph}" stroke="#e4e4e4"/>')
            out.append(
                f'<text x="{sx(tx):.1f}" y="{top + ph + 16}" font-size="11" text-anchor="middle">'
                f"{_fmt(tx, self.x_time, x1 - x0)}</text>"
            )
        for ty in _ticks(y0, y1):
            out.append(f'<line x1="{left}" y1="{sy(ty):.1f}" x2="{left + pw}" y2="{sy(ty):.1f}" stroke="#e4e4e4"/>')
            out.append(
                f'<text x="{left - 6}" y="{sy(ty) + 4:.1f}" font-size="11" text-anchor="end">'
                f"{_fmt(ty, self.y_time, y1 - y0)}</text>"
            )
        out.append(
            f'<text x="{left + pw / 2}" y="{top + ph + 34}" font-size="12" text-anchor="middle">'
            f"{escape(self.x_label)}</text>"
        )
        out.append(
            f'<text x="14" y="{top + ph / 2}" font-size="12" text-anchor="middle" '
            f'transform="rotate(-90 14 {top + ph / 2})">{escape(self.y_label)}</text>'
        )
        for a, b, color, label in self.spans:
            out.append(
                f'<rect class="mark" x="{sx(a):.1f}" y="{top}" width="{max(1.0, sx(b) - sx(a)):.1f}" height="{ph}" '
                f'fill="{color}" fill-opacity="0.18"><title>{escape(label)}</title></rect>'
            )
        for a, b, color, label in self.hspans:
            out.append(
                f'<rect class="mark" x="{left}" y="{sy(b):.1f}" width="{pw}" height="{max(1.0, sy(a) - sy(b)):.1f}" '
                f'fill="{color}" fill-opacity="0.12"><title>{escape(label)}</title></rect>'
            )
            out.append(f'<text x="{left + 4}" y="{sy(b) + 12:.1f}" font-size="10" fill="#555">{escape(label)}</text>')
        if self.diagonal:
            out.append(
                f'<line x1="{sx(x0):.1f}" y1="{sy(x0):.1f}" x2="{sx(x1):.1f}" y2="{sy(x1):.1f}" '
                'stroke="#bbb" stroke-dasharray="4 3"/>'
            )
        for y, color, label in self.hlines:
            out.append(
                f'<line class="mark" x1="{left}" y1="{sy(y):.1f}" x2="{left + pw}" y2="{sy(y):.1f}" stroke="{color}" '
                f'stroke-width="1.2" stroke-dasharray="6 4"><title>{escape(label)}</title></line>'
            )
            out.append(
                f'<text x="{left + pw - 4}" y="{sy(y) - 4:.1f}" font-size="10" text-anchor="end" fill="{color}">'
                f"{escape(label)}</text>"
            )
        for s in self.series:
            out.append(_draw(s, sx, sy))
        for x, color, label in self.vlines:
            out.append(
                f'<line class="mark" x1="{sx(x):.1f}" y1="{top}" x2="{sx(x):.1f}" y2="{top + ph}" stroke="{color}" '
                f'stroke-width="1.5" stroke-dasharray="5 3"><title>{escape(label)}</title></line>'
            )
            out.append(f'<text x="{sx(x) + 3:.1f}" y="{top + 12}" font-size="10" fill="{color}">{escape(label)}</text>')
        for i, s in enumerate(self.series):
            lx, ly = left + (i % per_row) * (pw / per_row), self.height + 4 + 18 * (i // per_row)
            out.append(f'<rect x="{lx:.1f}" y="{ly - 9}" width="10" height="10" fill="{s.color}"/>')
            out.append(f'<text x="{lx + 14:.1f}" y="{ly}" font-size="11">{escape(s.label)} ({len(s.xs)})</text>')
        out.append("</svg>")
        return "".join(out)


def _line_breaks(xs: list[float]) -> set[int]:
    """Indexes ``i`` of a line's points that start a new stroke: more than three times the median step after
    the point before (a sensor that dropped out leaves a gap rather than a straight line across it)."""
    steps = sorted(b - a for a, b in itertools.pairwise(xs))
    if not steps:
        return set()
    limit = 3 * steps[len(steps) // 2]
    return {i for i in range(1, len(xs)) if xs[i] - xs[i - 1] > limit > 0}


def _draw(s: _Series, fx: Callable[[float], float], fy: Callable[[float], float]) -> str:
    if s.kind == "line" and _line_breaks(s.xs):
        cuts = [0, *sorted(_line_breaks(s.xs)), len(s.xs)]
        return "".join(
            _draw(_Series(s.label, s.color, s.xs[a:b], s.ys[a:b], "line"), fx, fy) for a, b in itertools.pairwise(cuts)
        )
    if s.kind in ("step", "line") and s.xs:
        pts: list[str] = []
        for i, (x, y) in enumerate(zip(s.xs, s.ys, strict=True)):
            if s.kind == "step" and i:
                pts.append(f"{fx(x):.1f},{fy(s.ys[i - 1]):.1f}")
            pts.append(f"{fx(x):.1f},{fy(y):.1f}")
        return (
            f'<polyline class="mark" points="{" ".join(pts)}" fill="none" stroke="{s.color}" stroke-width="1.4">'
            f"<title>{escape(s.label)}</title></polyline>"
        )
    r = s.size
    parts = [f'<g class="mark" fill="{s.color}" stroke="{s.color}"><title>{escape(s.label)}</title>']
    for x, y in zip(s.xs, s.ys, strict=True):
        px, py = fx(x), fy(y)
        if s.shape == "square":
            parts.append(f'<rect x="{px - r:.1f}" y="{py - r:.1f}" width="{2 * r}" height="{2 * r}"/>')
        elif s.shape == "triangle":
            parts.append(f'<path d="M{px:.1f} {py - r * 1.3:.1f}l{r * 1.2:.1f} {r * 2:.1f}h{-r * 2.4:.1f}z"/>')
        elif s.shape == "cross":
            parts.append(
                f'<path d="M{px - r:.1f} {py - r:.1f}l{2 * r} {2 * r}M{px - r:.1f} {py + r:.1f}l{2 * r} {-2 * r}" '
                'stroke-width="1.5"/>'
            )
        else:
            parts.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="{r}"/>')
    parts.append("</g>")
    return "".join(parts)


def _range(vs: list[float]) -> tuple[float, float]:
    lo, hi = min(vs), max(vs)
    if hi == lo:
        return lo - 1, hi + 1
    pad = (hi - lo) * 0.03
    return lo - pad, hi + pad


def _ticks(lo: float, hi: float, n: int = 7) -> list[float]:
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    steps = [1, 2, 5, 10]
    if hi - lo > 60_000:  # time-friendly steps for ms ranges
        for unit in (1_000, 60_000, 300_000, 600_000, 900_000, 1_800_000, 3_600_000, 7_200_000, 21_600_000):
            if unit >= raw:
                step = float(unit)
                break
        else:
            step = raw
    else:
        step = next(s * mag for s in steps if s * mag >= raw)
    first = math.ceil(lo / step) * step
    out = []
    v = first
    while v <= hi:
        out.append(v)
        v += step
    return out


def _fmt(v: float, is_time: bool, span: float) -> str:
    if is_time:
        t = time.gmtime(v / 1000)
        return time.strftime("%H:%M:%S" if span < 600_000 else "%H:%M", t)
    if abs(v) >= 1000 or v == int(v):
        return f"{v:.0f}"
    return f"{v:.2f}"
