#!/usr/bin/env python3
"""Draw the pictures of docs/concepts.md from the code's own outputs, as SVG in docs/pictures/.

    python scripts/docs_pictures.py           # (re)write docs/pictures/*.svg
    python scripts/docs_pictures.py --check   # exit 1 if a file on disk differs from what this would write

- ``dataflow.svg``: where a reading goes, from the board to InfluxDB (a diagram of the modules);
- ``watermark.svg``, ``sleepy.svg``, ``lateness.svg``: small simulated runs (``sim/``: a scenario with a fixed
  seed and start), their readings, watermarks and window firings as the simulator's reference computes them -
  the numbers the gateway's pipeline is checked against (``edgekit-sim verify``) - drawn with the report's
  charts (``sim/svgplot.py``);
- ``automaton.svg``: the automata the CEP compiler builds (``gateway.cep.compile_pattern``) for two example
  patterns of ``gateway/examples/gateway.toml``;
- ``interval-join.svg``: an interval join's event-time interval (``b.t BETWEEN a.t - 2m AND a.t + 30s``) over a
  small stream, the pairs the join operator (``gateway.joins``) emits, and when the watermark drops a kept event.

Everything is deterministic, so ``tests/test_docs_pictures.py`` regenerates each picture and compares.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from collections.abc import Callable, Mapping
from html import escape
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from gateway.cep.automaton import compile_pattern  # noqa: E402
from gateway.cep.config import parse_patterns  # noqa: E402
from gateway.engine import parse_engine  # noqa: E402
from gateway.joins import Joins, JoinsSpec, parse_join  # noqa: E402
from gateway.model import Batch, Reading  # noqa: E402
from sim.commands import prepare  # noqa: E402
from sim.scenario import parse_scenario  # noqa: E402
from sim.svgplot import PALETTE, Chart  # noqa: E402

OUT = REPO / "docs" / "pictures"
START = 1_764_072_000_000  # 2025-11-25 12:00 UTC: a fixed start, so the pictures do not change from run to run
BAND = ("#1f77b4", "#ff7f0e")  # alternate windows' shading


def _truth(doc: Mapping[str, Any]) -> dict[str, Any]:
    return prepare(parse_scenario(doc)).truth()


def _windows(chart: Chart, truth: Mapping[str, Any], size_ms: int) -> None:
    """Shade each window [start, end) of the run's event time as a band, alternating colours."""
    lo = min(r[5] for r in truth["readings"]) // size_ms * size_ms
    hi = max(r[5] for r in truth["readings"])
    k = 0
    for start in range(lo, hi + 1, size_ms):
        chart.hspan(start, start + size_ms, BAND[k % 2], f"window {k + 1}")
        k += 1


def _device(truth: Mapping[str, Any], device: str, chart: Chart, color: str, label: str) -> None:
    """A device's readings at their first arrival, and its watermark after each of its batches."""
    pts = [(r[9], r[5]) for r in truth["readings"] if r[1] == device and r[9] >= 0]
    chart.points(f"{label}: readings", [x for x, _ in pts], [y for _, y in pts], color, size=2.6)
    wm = [(at, w) for at, d, w in truth["expected"]["watermarks"] if d == device]
    chart.step(f"{label}: watermark", [x for x, _ in wm], [y for _, y in wm], color)


def watermark() -> str:
    doc = {
        "scenario": {"name": "picture-watermark", "seed": 4, "duration": "4m", "start_ms": START},
        "fleet": {"sites": ["a"], "metrics": ["temp_c"], "interval": "10s",
                  "groups": [{"name": "live", "devices": 1, "publish_every": 1}]},
        "network": {"delay": {"dist": "lognormal", "median": "3s", "sigma": 0.8}},
        "gateway": {"engine": {"watermark": {"out_of_orderness": "5s"}},
                    "windows": [{"name": "m1", "kind": "tumbling", "size": "60s", "metrics": ["temp_c"]}]},
    }  # fmt: skip
    truth = _truth(doc)
    c = Chart("A watermark passing windows", "arrival at the gateway (UTC)", "event time (UTC)", y_time=True)
    c.diagonal = True
    _windows(c, truth, 60_000)
    _device(truth, "dev-0001", c, PALETTE[0], "a board")
    fired = [f for f in truth["expected"]["firings"] if f[7] == 1]
    c.points("window fires (at its end)", [f[0] for f in fired], [f[4] for f in fired], "#d62728", "square", 4)
    return c.svg()


def sleepy() -> str:
    doc = {
        "scenario": {"name": "picture-sleepy", "seed": 2, "duration": "40m", "start_ms": START},
        "fleet": {"sites": ["a"], "metrics": ["temp_c"], "interval": "60s", "batch_size": 10,
                  "groups": [{"name": "live", "devices": 1, "publish_every": 1},
                             {"name": "sleepy", "devices": 1, "publish_every": 10, "sleep": True}]},
        "network": {"delay": {"dist": "lognormal", "median": "60ms", "sigma": 0.6}},
        "gateway": {"windows": [{"name": "m10", "kind": "tumbling", "size": "10m", "metrics": ["temp_c"]}]},
    }  # fmt: skip
    truth = _truth(doc)
    c = Chart("A sleepy board's buffer, flushed", "arrival at the gateway (UTC)", "event time (UTC)", y_time=True)
    c.diagonal = True
    _windows(c, truth, 600_000)
    _device(truth, "dev-0001", c, PALETTE[0], "live board")
    _device(truth, "dev-0002", c, PALETTE[1], "sleepy board")
    fired = [f for f in truth["expected"]["firings"] if f[7] == 1 and f[2] == "dev-0002"]
    c.points("its window fires", [f[0] for f in fired], [f[4] for f in fired], "#d62728", "square", 4)
    return c.svg()


def lateness() -> str:
    doc = {
        "scenario": {"name": "picture-lateness", "seed": 3, "duration": "8m", "start_ms": START},
        "fleet": {"sites": ["a"], "metrics": ["temp_c"], "interval": "10s",
                  "groups": [{"name": "live", "devices": 1, "publish_every": 1}]},
        "network": {"delay": {"dist": "fixed", "value": "200ms"}, "reorder": 0.12, "reorder_delay": "100s"},
        "gateway": {"engine": {"watermark": {"out_of_orderness": "5s"}},
                    "windows": [{"name": "m1", "kind": "tumbling", "size": "60s", "metrics": ["temp_c"],
                                 "allowed_lateness": "60s"}]},
    }  # fmt: skip
    truth = _truth(doc)
    c = Chart("Lateness and revisions", "arrival at the gateway (UTC)", "event time (UTC)", y_time=True)
    c.diagonal = True
    _windows(c, truth, 60_000)
    _device(truth, "dev-0001", c, PALETTE[0], "a board")
    firings = truth["expected"]["firings"]
    first = [f for f in firings if f[7] == 1]
    again = [f for f in firings if f[7] > 1]
    c.points("window fires (revision 1)", [f[0] for f in first], [f[4] for f in first], "#2ca02c", "square", 4)
    c.points("re-fired by a late reading", [f[0] for f in again], [f[4] for f in again], "#ff7f0e", "triangle", 5)
    late = [(at, k[3]) for *k, at in truth["expected"]["late"]]
    c.points("too late: late output", [x for x, _ in late], [y for _, y in late], "#d62728", "cross", 5)
    return c.svg()


def dataflow() -> str:
    """Boxes and arrows: the path of a reading, with the module that does each step."""
    boxes = [
        (20, "board", "firmware/", "timestamps (event time), buffers through sleep, QoS 1"),
        (175, "Mosquitto", "broker", "persistent session: queues while the gateway is away"),
        (330, "ingest", "gateway/ingest.py", "durable log (SQLite) before the PUBACK"),
        (485, "decode, dedup", "protocol.py, dedup.py", "dead letters with reasons; (boot, seq) identity"),
        (640, "windows, CEP", "engine/, cep/, anomaly/", "watermarks, windows, patterns, z-scores"),
        (795, "sink", "sinks.py, spool.py", "batches, spool on outage, idempotent points -> InfluxDB"),
    ]
    w, h = 960, 190
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" '
        'aria-label="The data flow" font-family="system-ui, sans-serif">',
        f'<rect x="0" y="0" width="{w}" height="{h}" fill="#fff"/>',
        '<defs><marker id="arrow" markerWidth="8" markerHeight="8" refX="7" refY="4" orient="auto">'
        '<path d="M0,0 L8,4 L0,8 z" fill="#555"/></marker></defs>',
        '<text x="20" y="22" font-size="14" font-weight="bold">The data flow: one reading, from the board to '
        "InfluxDB</text>",
    ]
    for i, (x, name, where, what) in enumerate(boxes):
        out.append(f'<rect x="{x}" y="40" width="140" height="110" rx="8" fill="#f4f8fc" stroke="#1f77b4"/>')
        out.append(f'<text x="{x + 70}" y="62" font-size="13" font-weight="bold" text-anchor="middle">'
                   f"{escape(name)}</text>")  # fmt: skip
        out.append(f'<text x="{x + 70}" y="80" font-size="10" fill="#1f77b4" text-anchor="middle">'
                   f"{escape(where)}</text>")  # fmt: skip
        words, line, lines = what.split(), "", []
        for word in words:
            if len(line) + len(word) > 22:
                lines.append(line)
                line = word
            else:
                line = f"{line} {word}".strip()
        lines.append(line)
        for k, text in enumerate(lines):
            out.append(f'<text x="{x + 70}" y="{100 + 13 * k}" font-size="10" text-anchor="middle">'
                       f"{escape(text)}</text>")  # fmt: skip
        if i + 1 < len(boxes):
            out.append(f'<line x1="{x + 140}" y1="95" x2="{x + 153}" y2="95" stroke="#555" stroke-width="2" '
                       'marker-end="url(#arrow)"/>')  # fmt: skip
    out.append(
        '<text x="20" y="170" font-size="11" fill="#555">The board\'s time travels with each reading; the '
        "gateway never replaces it. A re-sent batch makes the same points again (same series and time),</text>"
    )
    out.append('<text x="20" y="184" font-size="11" fill="#555">so at-least-once delivery plus deduplication and '
               "idempotent writes count each reading once (modules under gateway/).</text>")  # fmt: skip
    out.append("</svg>")
    return "".join(out)


def automaton() -> str:
    """The compiled automata of two example patterns: a state per positive step, entered by a reading that meets
    the step's condition; a loop for repetitions; the guard of a final not_followed_by step."""
    doc = tomllib.loads((REPO / "gateway" / "examples" / "gateway.toml").read_text(encoding="utf-8"))
    raw = {p["name"]: {s["name"]: s for s in p["steps"]} for p in doc["patterns"]}
    specs = {p.name: p for p in parse_patterns(doc["patterns"])}
    names = ["door_left_open", "failed_3x_5m"]
    w, row = 960, 170
    h = 40 + row * len(names)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" '
        'aria-label="Pattern automata" font-family="system-ui, sans-serif">',
        f'<rect x="0" y="0" width="{w}" height="{h}" fill="#fff"/>',
        '<defs><marker id="a" markerWidth="8" markerHeight="8" refX="7" refY="4" orient="auto">'
        '<path d="M0,0 L8,4 L0,8 z" fill="#444"/></marker></defs>',
        '<text x="20" y="22" font-size="14" font-weight="bold">Two example patterns as the CEP compiler builds '
        "them (gateway/examples/gateway.toml)</text>",
    ]

    def arrow(x1: float, x2: float, y: float, above: str, below: str, color: str = "#444") -> None:
        out.append(f'<line x1="{x1}" y1="{y}" x2="{x2}" y2="{y}" stroke="{color}" marker-end="url(#a)"/>')
        out.append(f'<text x="{(x1 + x2) / 2}" y="{y - 8}" font-size="11" text-anchor="middle">{escape(above)}</text>')
        out.append(f'<text x="{(x1 + x2) / 2}" y="{y + 16}" font-size="10" fill="#666" text-anchor="middle">'
                   f"{escape(below)}</text>")  # fmt: skip

    for r, name in enumerate(names):
        auto = compile_pattern(specs[name])
        y = 40 + r * row
        within = f", within {auto.within_ms // 60_000} min of its first reading" if auto.within_ms else ""
        out.append(f'<text x="20" y="{y + 20}" font-size="13" font-weight="bold">{escape(name)}{escape(within)}'
                   "</text>")  # fmt: skip
        cy = y + 75
        cx = [230 + 290 * i for i in range(len(auto.states) + 1)]
        out.append(f'<circle cx="40" cy="{cy}" r="6" fill="#444"/>')
        for i, st in enumerate(auto.states):
            where = str(raw[name][st.name]["where"])
            follow = "starts a run" if i == 0 else ("the very next reading" if st.strict else "a later reading")
            arrow(46 if i == 0 else cx[i - 1] + 32, cx[i] - 34, cy, where, follow)
            out.append(f'<circle cx="{cx[i]}" cy="{cy}" r="32" fill="#f4f8fc" stroke="#1f77b4" stroke-width="1.5"/>')
            size = 11 if len(st.name) <= 9 else 9
            out.append(
                f'<text x="{cx[i]}" y="{cy + 4}" font-size="{size}" text-anchor="middle">{escape(st.name)}</text>'
            )
            if st.max_count > 1:
                out.append(f'<path d="M{cx[i] - 16} {cy + 28} C{cx[i] - 40} {cy + 75}, {cx[i] + 40} {cy + 75}, '
                           f'{cx[i] + 16} {cy + 30}" fill="none" stroke="#444" marker-end="url(#a)"/>')  # fmt: skip
                out.append(f'<text x="{cx[i]}" y="{cy + 74}" font-size="10" text-anchor="middle">again: '
                           f"{escape(where)}</text>")  # fmt: skip
        last = auto.states[-1]
        end = cx[len(auto.states)]
        guard = ""
        if auto.final_guard is not None:
            neg = next(s for s in specs[name].steps if s.negated)
            done = f"{(neg.within_ms or 0) // 60_000} min pass (by the watermark)"
            guard = f"with no {raw[name][neg.name]['where']} (else the run dies)"
        else:
            done = f"{last.min_count} or more" if last.min_count > 1 else "complete"
        arrow(cx[len(auto.states) - 1] + 32, end - 34, cy, done, "")
        if guard:
            mid = (cx[len(auto.states) - 1] + end) / 2
            out.append(f'<text x="{mid}" y="{cy + 18}" font-size="10" fill="#d62728" text-anchor="middle">'
                       f"{escape(guard)}</text>")  # fmt: skip
        out.append(f'<circle cx="{end}" cy="{cy}" r="32" fill="#eaf6ea" stroke="#2ca02c" stroke-width="1.5"/>')
        out.append(f'<circle cx="{end}" cy="{cy}" r="27" fill="none" stroke="#2ca02c"/>')
        out.append(f'<text x="{end}" y="{cy + 4}" font-size="11" text-anchor="middle">alert</text>')
    out.append("</svg>")
    return "".join(out)


def interval_join() -> str:
    """Two streams on one key, each ``a`` reading's interval shaded on ``b``'s row, the pairs the join operator emits
    drawn between them; the key's watermark at the end, and the ``a`` readings it no longer keeps."""
    spec = parse_join({
        "name": "door_then_cold", "between": "b.t BETWEEN a.t - 2m AND a.t + 30s",
        "a": {"devices": ["door-*"], "metrics": ["door"]}, "b": {"devices": ["th-*"], "metrics": ["temp_c"]},
    })  # fmt: skip
    minute = 60_000
    a_times = [2 * minute, 5 * minute + 20_000, 6 * minute + 40_000]
    b_times = [30_000, minute + 10_000, 3 * minute, 4 * minute + 30_000, 5 * minute + 40_000, 8 * minute + 30_000]
    op = Joins(JoinsSpec((spec,), parse_engine({"engine": {"watermark": {"out_of_orderness": "5s"}}})))
    pairs = []
    now = START + 10 * minute
    # the thermometer's first reading, then the door's (flushed up to 7 min), then the thermometer's others: the
    # key knows both boards before either moves its watermark
    batches = [("th-1", b_times[:1], "temp_c", None, 0), ("door-1", a_times, "door", 7 * minute, 0)]
    batches.append(("th-1", b_times[1:], "temp_c", None, 1))
    for dev, times, metric, flushed, first in batches:
        rs = tuple(Reading("s", dev, 1, first + i, START + t, "s", {metric: 1.0}) for i, t in enumerate(times))
        mark = None if flushed is None else START + flushed
        pairs += op.process_batch(Batch("s", dev, "t", now, rs, (), mark), now)
    key = op.keys["j:door_then_cold:s"]
    assert key.wm is not None
    wm = key.wm - START  # the smaller of the two boards' watermarks: the door's flushed marker + 1
    kept_a = [e[0] - START for e in key.kept[0]]
    w, h, left, right = 960, 300, 90, 40
    span = 10 * minute

    def x(t: int) -> float:
        return round(left + (w - left - right) * t / span, 1)

    ya, yb = 95, 205
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" '
        'aria-label="An interval join in event time" font-family="system-ui, sans-serif">',
        f'<rect x="0" y="0" width="{w}" height="{h}" fill="#fff"/>',
        f'<text x="20" y="24" font-size="14" font-weight="bold">{escape(spec.between)}: each a reading joins the b '
        "readings of its key in its interval</text>",
        f'<text x="20" y="{ya + 4}" font-size="12">a: door</text>',
        f'<text x="20" y="{yb + 4}" font-size="12">b: temp</text>',
        f'<line x1="{left}" y1="{ya}" x2="{w - right}" y2="{ya}" stroke="#bbb"/>',
        f'<line x1="{left}" y1="{yb}" x2="{w - right}" y2="{yb}" stroke="#bbb"/>',
    ]
    for k in range(0, 11):
        tick = x(k * minute)
        out.append(f'<line x1="{tick}" y1="{yb + 30}" x2="{tick}" y2="{yb + 36}" stroke="#444"/>')
        out.append(f'<text x="{tick}" y="{yb + 50}" font-size="10" text-anchor="middle">{k} min</text>')
    out.append(f'<text x="{w - right}" y="{h - 12}" font-size="11" text-anchor="end">event time</text>')
    for i, ta in enumerate(a_times):
        color = PALETTE[i]
        lo, hi = ta + spec.lower_ms, ta + spec.upper_ms
        y = yb - 16 - 4 * i
        tip = f"a at {ta // 1000} s: b.t from {lo // 1000} s to {hi // 1000} s"
        out.append(
            f'<rect class="mark" x="{x(lo)}" y="{y}" width="{x(hi) - x(lo)}" height="8" fill="{color}" '
            f'fill-opacity="0.25" stroke="{color}"><title>{tip}</title></rect>'
        )
        for end in (lo, hi):
            out.append(f'<line x1="{x(ta)}" y1="{ya}" x2="{x(end)}" y2="{y}" stroke="{color}" stroke-dasharray="2,3"/>')
        kept = ta in kept_a
        state = "kept" if kept else "dropped: its interval ends before the watermark"
        faded = "" if kept else ' fill-opacity="0.35"'
        out.append(
            f'<circle class="mark" cx="{x(ta)}" cy="{ya}" r="7" fill="{color}"{faded}>'
            f"<title>a at {ta // 1000} s ({state})</title></circle>"
        )
    for p in pairs:
        ta, tb = p.a[0] - START, p.b[0] - START
        color = PALETTE[a_times.index(ta)]
        tip = f"joined: a {ta // 1000} s, b {tb // 1000} s ({tb - ta:+d} ms)"
        out.append(
            f'<line class="mark" x1="{x(ta)}" y1="{ya + 7}" x2="{x(tb)}" y2="{yb - 7}" stroke="{color}" '
            f'stroke-width="2"><title>{tip}</title></line>'
        )
    joined_b = {p.b[0] - START for p in pairs}
    for tb in b_times:
        fill, what = ("#444", "joined") if tb in joined_b else ("#fff", "joins nothing")
        out.append(
            f'<circle class="mark" cx="{x(tb)}" cy="{yb}" r="6" fill="{fill}" stroke="#444">'
            f"<title>b at {tb // 1000} s ({what})</title></circle>"
        )
    out.append(
        f'<line x1="{x(wm)}" y1="{ya - 40}" x2="{x(wm)}" y2="{yb + 28}" stroke="#d62728" stroke-dasharray="5,4"/>'
    )
    out.append(
        f'<text x="{x(wm) - 6}" y="{ya - 30}" font-size="11" fill="#d62728" text-anchor="end">watermark W: an a '
        "reading is kept while a.t + 30s &gt;= W - allowed lateness</text>"
    )
    out.append(
        f'<text x="{left}" y="{h - 12}" font-size="11" fill="#444">lines: the {len(pairs)} pairs the join emits '
        "(each once the watermark passes both readings); filled b: joined; faded a: no longer kept</text>"
    )
    out.append("</svg>")
    return "".join(out)


PICTURES: dict[str, Callable[[], str]] = {
    "dataflow.svg": dataflow,
    "watermark.svg": watermark,
    "sleepy.svg": sleepy,
    "lateness.svg": lateness,
    "automaton.svg": automaton,
    "interval-join.svg": interval_join,
}


def generate() -> dict[Path, str]:
    return {OUT / name: draw() + "\n" for name, draw in PICTURES.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if a picture is out of date")
    args = parser.parse_args(argv)
    files = generate()
    stale = sorted(p for p, text in files.items() if not p.exists() or p.read_text(encoding="utf-8") != text)
    if args.check:
        for p in stale:
            print(f"out of date: {p.relative_to(REPO)} (run: python scripts/docs_pictures.py)", file=sys.stderr)
        return 1 if stale else 0
    OUT.mkdir(parents=True, exist_ok=True)
    for p in stale:
        p.write_text(files[p], encoding="utf-8")
        print(f"wrote {p.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
