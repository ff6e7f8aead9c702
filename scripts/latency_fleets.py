#!/usr/bin/env python3
"""The numbers and plots of docs/semantics.md, "Latency or accuracy": three typical fleets, measured.

    python scripts/latency_fleets.py            # print the tables, write docs/pictures/latency-*.png
    python scripts/latency_fleets.py --no-png   # the tables only
    python scripts/latency_fleets.py --fleet sleep-5m

Each fleet is a simulator scenario (below: 12 boards at one site, a reading a minute, two hours, the same
Wi-Fi-like network with a long-tailed delay, a few lost publishes re-sent after 10 s and a few held back by
up to 3 minutes); they differ only in how the boards sleep:

- ``always-on``: every reading is published at once;
- ``sleep-5m``: boards wake every minute to read and connect every 5 minutes to send their buffer (with a
  flushed marker, and ``sleep_s`` in their status);
- ``flush-30m``: the same, connecting every 30 minutes.

The configuration has the greenhouse operator's two windows: a 10-minute mean per board (``temp_10m``) and a
10-minute mean over the site (``site_temp_10m``, on the fleet watermark). Every fleet is run through the
gateway's pipeline in simulated gateway time (``sim/latency.py``) once per setting of the grid - watermark
bound x allowed lateness x early trigger - applied to both windows, and the recommended setting is picked by
the rule of :func:`recommend`. Everything is deterministic (fixed seeds and start), so the tables are the same
on every run; the PNGs are drawn by headless Chromium from the report's SVG charts.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from sim.latency import Measurement, Setting, SweepRow, grid, latency_doc, measure, row_of  # noqa: E402
from sim.report import latency_charts  # noqa: E402
from sim.scenario import parse_scenario  # noqa: E402
from sim.world import simulate  # noqa: E402

OUT = REPO / "docs" / "pictures"
START = 1_764_072_000_000  # 2025-11-25 12:00 UTC
NETWORK = {
    "delay": {"dist": "lognormal", "median": "80ms", "sigma": 1.0},
    "loss": 0.02,
    "ack_loss": 0.01,
    "reorder": 0.03,
    "reorder_delay": "3m",
    "retry": "10s",
}
WINDOWS = [
    {"name": "temp_10m", "kind": "tumbling", "size": "10m", "metrics": ["temp_c"], "aggregates": ["count", "mean"]},
    {"name": "site_temp_10m", "kind": "tumbling", "size": "10m", "metrics": ["temp_c"],
     "aggregates": ["count", "mean"], "key": "site"},
]  # fmt: skip
PATTERNS = [
    {"name": "hot_spell_ends", "on": "both", "within": "5m", "severity": "warning", "steps": [
        {"name": "hot", "where": "temp_c > 23.5"}, {"name": "cooler", "follow": "next", "where": "temp_c < 23.3"}]},
]  # fmt: skip
"""An alert on both paths: a board's reading above 23.5 degrees, and its very next one (in event time) below 23.3."""
FLEETS: dict[str, tuple[str, int]] = {
    "always-on": ("Always-on boards: every reading published at once", 1),
    "sleep-5m": ("Boards sleeping 5 minutes: a reading a minute, sent every 5 minutes", 5),
    "flush-30m": ("Boards flushing every 30 minutes: a reading a minute, sent every 30 minutes", 30),
}
DRAWN: dict[str, tuple[str, ...]] = {
    "always-on": ("event", "window-value"),
    "sleep-5m": ("event", "error-trigger"),
    "flush-30m": ("event", "window-value", "error-trigger"),
}
"""The plots docs/semantics.md shows of each fleet."""
BOUNDS = (0, 30_000, 120_000)
LATENESS = (0, 600_000, 2_400_000)
TRIGGERS = (0, 10_000, 60_000, 300_000)


def scenario(name: str) -> dict[str, Any]:
    description, every = FLEETS[name]
    group: dict[str, Any] = {"name": name, "devices": 12, "publish_every": every}
    if every > 1:
        group["sleep"] = True
    return {
        "scenario": {"name": name, "description": description, "seed": 20, "duration": "2h", "start_ms": START},
        "fleet": {"sites": ["greenhouse"], "metrics": ["temp_c"], "interval": "60s", "batch_size": 32,
                  "groups": [group]},
        "network": NETWORK,
        "gateway": {"windows": WINDOWS, "patterns": PATTERNS},
    }  # fmt: skip


def triggers_supported() -> bool:
    """Whether this gateway has early triggers (``early_every``) to measure."""
    from gateway.config import parse_config
    from gateway.errors import ConfigError

    try:
        parse_config({"windows": [{**WINDOWS[0], "early_every": "10s"}]}, env={})
    except ConfigError:
        return False
    return True


def recommend(rows: Sequence[SweepRow]) -> SweepRow:
    """Of the settings without a trigger: the fewest readings too late for any result (within 0.1 % of the
    readings of the best), then the fewest windows whose last result is off, then the shortest median wait for
    the final, then the smallest state."""
    plain = [r for r in rows if not r.setting.trigger_ms] or list(rows)
    best_late = min(r.late_share for r in plain)
    ok = [r for r in plain if r.late_share <= best_late + 0.001]
    return min(
        ok,
        key=lambda r: (
            r.last_error.n - r.last_error.exact,
            r.final_event_p50 or 0.0,
            r.state_max_bytes,
        ),
    )


def _ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v / 60_000:.1f} min" if abs(v) >= 60_000 else f"{v / 1000:.1f} s"


def _span(ms: int | None) -> str:
    if ms is None or ms == 0:
        return "0"
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size} {unit}"
    return f"{ms} ms"


def markdown(rows: Sequence[SweepRow], pick: SweepRow | None) -> str:
    head = ("bound", "lateness", "trigger", "final p50 / p95", "first value p50", "provisional error",
            "finals off", "after updates off", "late share", "state max")  # fmt: skip
    out = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        s = r.setting
        pe = r.provisional
        cells = (
            _span(s.bound_ms), _span(s.lateness_ms), "off" if not s.trigger_ms else _span(s.trigger_ms),
            f"{_ms(r.final_event_p50)} / {_ms(r.final_event_p95)}", _ms(r.first_event_p50),
            "-" if pe.mre is None else f"{pe.mae:.3f} °C, {100 * pe.mre:.2f} % ({pe.count_error:.1f} missing)",
            f"{r.final_error.n - r.final_error.exact} of {r.final_error.n}"
            + (f" (+{r.missed} none)" if r.missed else ""),
            f"{r.last_error.n - r.last_error.exact} of {r.last_error.n}",
            f"{100 * r.late_share:.2f} %", f"{r.state_max_bytes / 1024:.0f} KiB",
        )  # fmt: skip
        line = "| " + " | ".join(cells) + " |"
        out.append(line.replace("| ", "| **", 1).replace(" |", "** |", 1) if r is pick else line)
    return "\n".join(out)


def alerts_markdown(measured: Mapping[Setting, Measurement]) -> str:
    """The pattern's fast path against its event-time path, per watermark bound."""
    head = ("bound", "fast alerts", "event-time alerts", "false (retracted)", "missed", "fast p50 after arrival",
            "event-time p50 after arrival", "head start p50")  # fmt: skip
    out = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for s, m in measured.items():
        for r in m.rules().values():
            out.append("| " + " | ".join((
                _span(s.bound_ms), str(r.fast), str(r.exact), str(r.false), str(r.missed), _ms(r.fast_p50_ms),
                _ms(r.exact_p50_ms), _ms(r.head_start_p50_ms))) + " |")  # fmt: skip
    return "\n".join(out) + "\n"


def png(svg: str, path: Path) -> None:
    """Draw one SVG chart to a PNG with headless Chromium, at the chart's size."""
    width = int(svg.split('width="', 1)[1].split('"', 1)[0])
    height = int(svg.split('height="', 1)[1].split('"', 1)[0])
    exe = shutil.which("chromium")
    if exe is None:
        raise SystemExit("chromium is needed to draw the PNGs (apt-get install chromium), or pass --no-png")
    with tempfile.TemporaryDirectory(prefix="edgekit-latency-") as tmp:
        page = Path(tmp) / "chart.html"
        page.write_text(f"<!doctype html><html><body style='margin:0'>{svg}</body></html>", encoding="utf-8")
        subprocess.run(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp}/profile", f"--window-size={width},{height}", f"--screenshot={path}",
             page.as_uri()],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip


def fleet(name: str, draw: bool) -> None:
    doc = scenario(name)
    sc = parse_scenario(doc)
    run = simulate(sc)
    gw: Mapping[str, Any] = doc["gateway"]
    triggers: tuple[int | None, ...] = TRIGGERS if triggers_supported() else (None,)
    measured = {s: measure(run, s.apply(gw)) for s in grid(BOUNDS, LATENESS, triggers)}
    print(f"### {sc.description}\n")
    print(f"{sc.devices} boards, {len(run.readings)} readings in {len(run.deliveries)} messages.\n")
    picks: dict[str, SweepRow] = {}
    for w in WINDOWS:
        rows = [row_of(s, m, w["name"]) for s, m in measured.items() if not s.trigger_ms]
        pick = picks[w["name"]] = recommend(rows)
        print(f"{w['name']} ({'per board' if w.get('key') != 'site' else 'over the site, on the fleet watermark'}):\n")
        print(markdown(rows, pick))
        early = [row_of(s, m, w["name"]) for s, m in measured.items() if s.trigger_ms and
                 (s.bound_ms, s.lateness_ms) == (pick.setting.bound_ms, pick.setting.lateness_ms)]  # fmt: skip
        if early:
            print(f"\nwith early results, at {pick.setting.label().rsplit(',', 1)[0]}:\n")
            print(markdown(early, None))
        print(f"\nrecommended for {w['name']}: {pick.setting.label()}\n")
    print(alerts_markdown({s: m for s, m in measured.items() if not s.trigger_ms and s.lateness_ms == 0}))
    if not draw:
        return
    site = picks[WINDOWS[1]["name"]].setting
    trig = [t for t in triggers if t]
    best = Setting(site.bound_ms, site.lateness_ms, trig[0] if trig else None)
    ldoc = latency_doc(run, best.apply(gw), [Setting(trigger_ms=t) for t in trig], window=WINDOWS[1]["name"])
    ldoc["setting"] = best.label()
    for key, chart, _note in latency_charts(ldoc, WINDOWS[1]["name"]):
        if key.removeprefix("latency-") not in DRAWN[name]:
            continue
        chart.width, chart.height = 760, 240
        chart.title = f"{name}: {chart.title}"
        path = OUT / f"latency-{name}-{key.removeprefix('latency-')}.png"
        png(chart.svg(), path)
        print(f"wrote {path.relative_to(REPO)} ({path.stat().st_size // 1024} KiB)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--fleet", choices=sorted(FLEETS), action="append", help="only this fleet (repeatable)")
    parser.add_argument("--no-png", action="store_true", help="print the tables, draw nothing")
    args = parser.parse_args(argv)
    for name in args.fleet or FLEETS:
        fleet(name, not args.no_png)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
