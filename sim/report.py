"""``sim report``: one self-contained HTML page a person can read about a run.

From a run's ground truth (:func:`sim.verify.truth_doc`), and optionally the verify tables and the
alerts the gateway raised, it draws (inline SVG, :mod:`sim.svgplot`; no scripts, no network):

1. event time against arrival time per device (on the diagonal: on time; below it: delivered late);
2. the devices' watermarks as the gateway advances them;
3. window firings (revision 1) and updates (late re-fires, superseded sessions) by the time they happen, a
   colour per window, each named with its kind (tumbling, sliding, session);
4. late readings and refused readings, by when they arrived and their event time;
5. each injected anomaly over its device's metric with its labelled span and the anomaly alerts, one chart
   per metric (each on its own axis);
6. the scripted sequences' readings and the pattern alerts, a row per device;
7. per injected anomaly, the anomaly score the gateway's detector gives its series reading by reading (and
   its device's multivariate score), the threshold, the readings inside an open anomaly and where one
   opened: why an alert came, or did not.

At most :data:`MAX_DEVICES` devices are drawn in the per-device plots (the most eventful first), and the page
says so when it leaves some out. A plot with nothing to draw is replaced by a line that says "None" and why.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any, Final

from gateway.anomaly import AnomalyEngine, AnomalySpec
from gateway.model import Reading

from .latency import eventful_instance
from .svgplot import PALETTE, Chart, Shape
from .verify import Verdict

__all__ = ["ScoreTrace", "anomaly_scores", "render_report", "write_report"]

MAX_DEVICES: Final = len(PALETTE)
"""Devices drawn in the per-device plots, one colour each (the most eventful ones first)."""

_CSS: Final = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1000px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f0f0f0}td.l,th.l{text-align:left}.ok{color:#176c17;font-weight:bold}.bad{color:#b00;font-weight:bold}
p.note{font-size:13px;color:#555}figure{margin:10px 0}p.none{font-size:14px;color:#444;font-style:italic}
"""


@dataclass(slots=True)
class ScoreTrace:
    """One series' scores as the detector gave them, reading by reading, and its device's multivariate ones."""

    t: list[float] = field(default_factory=list)
    score: list[float] = field(default_factory=list)
    anomalous: list[bool] = field(default_factory=list)
    opened: list[tuple[float, float]] = field(default_factory=list)
    """(event time, score) of the readings where an anomaly (z-score or stuck sensor) opened."""
    warm: list[float] = field(default_factory=list)
    """Event times of the readings learned in the detector's warm-up (never flagged)."""
    multi_t: list[float] = field(default_factory=list)
    multi_score: list[float] = field(default_factory=list)
    multi_opened: list[tuple[float, float]] = field(default_factory=list)


def anomaly_scores(truth: Mapping[str, Any], spec: AnomalySpec | None = None) -> dict[tuple[str, str], ScoreTrace]:
    """Score the readings the gateway accepted of every device with an injected anomaly, as the gateway's
    anomaly detection does (one engine, each device's readings in event-time order; ``spec``: the default
    ``[anomaly]`` settings), and keep the traces of the injected anomalies' series."""
    wanted = {(a["device"], a["metric"]) for a in truth["anomalies"]}
    devices = {d for d, _ in wanted}
    rows = sorted(
        (r for r in truth["readings"] if r[1] in devices and r[9] >= 0 and r[12] is None and r[6] != "u"),
        key=lambda r: (r[1], r[5], r[2], r[3]),
    )
    eng = AnomalyEngine(spec or AnomalySpec(enabled=True))
    traces = {key: ScoreTrace() for key in wanted}
    multi: dict[str, ScoreTrace] = defaultdict(ScoreTrace)
    for r in rows:
        res = eng.score_reading(Reading(r[0], r[1], r[2], r[3], r[5], r[6], dict(r[7])))
        for metric, m in res.results.items():
            tr = traces.get((r[1], metric))
            if tr is None:
                continue
            tr.t.append(r[5])
            if m.scored.phase == "warmup":
                tr.warm.append(r[5])
            tr.score.append(m.scored.score)
            tr.anomalous.append(m.anomalous)
            if any(e.kind in ("opened", "stuck") for e in m.events):
                tr.opened.append((r[5], m.scored.score))
        if res.multi is not None and res.multi.phase == "scored":
            mt = multi[r[1]]
            mt.t.append(r[5])
            mt.score.append(res.multi.score)
            if any(e.kind == "opened" for e in res.multi.events):
                mt.opened.append((r[5], res.multi.score))
    for (dev, _), tr in traces.items():
        if dev in multi:
            tr.multi_t, tr.multi_score, tr.multi_opened = multi[dev].t, multi[dev].score, multi[dev].opened
    return traces


def _score_chart(a: Mapping[str, Any], tr: ScoreTrace, color: str) -> Chart:
    c = Chart(f"{a['kind'].replace('_', ' ')} on {a['device']} {a['metric']}: anomaly score", "event time (UTC)",
              "score", height=230)  # fmt: skip
    c.y_fixed = (0.0, 1.05)
    if tr.warm:
        c.span(tr.warm[0], tr.warm[-1], "#555", "warm-up: learned, not scored")
        c.vline(tr.warm[-1], "#777", "warm-up ends")
    c.span(a["start_ms"], a["end_ms"], color, f"injected {a['kind']}")
    if tr.multi_t:
        c.line(f"{a['device']} multivariate (T^2)", tr.multi_t, tr.multi_score, "#9a9a9a")
    c.line(f"{a['metric']} score", tr.t, tr.score, color)
    flagged = [(t, s) for t, s, f in zip(tr.t, tr.score, tr.anomalous, strict=True) if f]
    if flagged:
        c.points("inside an open anomaly", [p[0] for p in flagged], [p[1] for p in flagged], "#d62728", "circle", 1.8)
    opened = tr.opened + tr.multi_opened
    if opened:
        c.points("anomaly opened (alert)", [p[0] for p in opened], [p[1] for p in opened], "#000", "triangle", 5)
    c.hline(0.5, "#d62728", "threshold: score 0.5 (|z| = 4.5)")
    return c


def _utc(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ms / 1000))


def _table(head: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    th = "".join(f'<th class="{"l" if i == 0 else ""}">{escape(h)}</th>' for i, h in enumerate(head))
    cells = [
        "".join(f'<td class="{"l" if i == 0 else ""}">{escape(str(v))}</td>' for i, v in enumerate(r)) for r in rows
    ]
    body = "".join(f"<tr>{c}</tr>" for c in cells)
    return f"<table><tr>{th}</tr>{body}</table>"


def _pick_devices(truth: Mapping[str, Any]) -> tuple[list[str], str]:
    """The devices the per-device plots draw, and a sentence saying which when not all of them."""
    score: Counter[str] = Counter()
    for b in truth["boards"]:
        score[b["device"]] += 0
    for k in truth["expected"]["late"]:
        score[k[1]] += 3
    for a in truth["anomalies"]:
        score[a["device"]] += 5
    for s in truth["sequences"]:
        for d in dict.fromkeys([s["device"], *s.get("devices", ())]):  # a correlated sequence's two boards
            score[d] += 5
    for b in truth["boards"]:
        if b["sleep_s"]:
            score[b["device"]] += 2
    ranked = [d for d, _ in sorted(score.items(), key=lambda kv: (-kv[1], kv[0]))]
    if len(ranked) <= MAX_DEVICES:
        return ranked, ""
    return ranked[:MAX_DEVICES], (
        f"{MAX_DEVICES} of {len(ranked)} devices are drawn (one colour each): the most eventful first - late "
        "readings, injected anomalies and sequences, sleepy boards - then by id. The tables count every device."
    )


def _window_kinds(truth: Mapping[str, Any]) -> dict[str, str]:
    """Each configured window's name -> its kind and sizes as configured ("tumbling 5m", "session, gap 3m")."""
    out: dict[str, str] = {}
    for w in truth.get("gateway", {}).get("windows", []):
        kind = str(w.get("kind", "tumbling"))
        if kind == "session":
            out[str(w["name"])] = f"session, gap {w.get('gap')}"
        elif kind == "sliding":
            out[str(w["name"])] = f"sliding {w.get('size')} every {w.get('slide')}"
        else:
            out[str(w["name"])] = f"{kind} {w.get('size')}"
    return out


def _anomaly_charts(truth: Mapping[str, Any], alerts: Sequence[Mapping[str, Any]]) -> list[tuple[str, Chart, str]]:
    """One chart per metric with injected anomalies (each metric on its own axis): the faulty devices' values,
    the anomalies' labelled spans, and the anomaly alerts on that metric at their value."""
    readings = truth["readings"]
    out: list[tuple[str, Chart, str]] = []
    for metric in sorted({a["metric"] for a in truth["anomalies"]}):
        mine = [a for a in truth["anomalies"] if a["metric"] == metric]
        devices = sorted({a["device"] for a in mine})
        chart = Chart(f"Injected anomalies on {metric}", "event time (UTC)", metric)
        for i, dev in enumerate(devices):
            pts = [
                (r[5], float(r[7][metric]))
                for r in readings
                if r[1] == dev and r[6] != "u" and isinstance(r[7].get(metric), (int, float))
            ]
            chart.line(dev, [x for x, _ in pts], [y for _, y in pts], PALETTE[i % len(PALETTE)])
        for a in mine:
            color = PALETTE[devices.index(a["device"]) % len(PALETTE)]
            chart.span(a["start_ms"], a["end_ms"], color, f"{a['kind']} {a['device']} {metric}")
        raised = [
            a
            for a in alerts
            if a.get("source") == "anomaly"
            and a.get("details", {}).get("metric") == metric
            and isinstance(a.get("details", {}).get("value"), (int, float))
        ]
        if raised:
            xs = [float(a["last_ms"]) for a in raised]
            chart.points("anomaly alert", xs, [float(a["details"]["value"]) for a in raised], "#000", "triangle", 5)
        kinds = ", ".join(f"{a['kind'].replace('_', ' ')} on {a['device']}" for a in mine)
        note = (
            f"{kinds}; shaded: the labelled spans; black triangles: the {len(raised)} anomaly alerts the gateway "
            f"raised on {metric}, at the value that raised them."
        )
        out.append((f"anomalies-{metric}", chart, note))
    return out


def _sequence_chart(truth: Mapping[str, Any], alerts: Sequence[Mapping[str, Any]]) -> tuple[str, Chart, str]:
    """The scripted sequences' readings and the pattern alerts, a row per device (y: the device's number)."""
    chart = Chart("Scripted sequences and pattern alerts", "event time (UTC)", "device number")
    raised = [a for a in alerts if a.get("source") == "pattern"]

    def board(a: Mapping[str, Any]) -> str:
        """An alert's row: its key, or for a group's alert (a group pattern) the board of its first reading."""
        ids = str(a.get("reading_ids", ""))
        boards = {b["device"] for b in truth["boards"]}
        return str(a["key"]) if str(a["key"]) in boards or not ids else ids.split(",")[0].split("/")[0]

    rows = sorted({d for s in truth["sequences"] for d in [s["device"], *s.get("devices", ())]} |
                  {board(a) for a in raised})  # fmt: skip

    def row(device: str) -> float:
        digits = device.rpartition("-")[2]
        return float(int(digits)) if digits.isdigit() else float(rows.index(device) + 1)

    by_value: dict[str, tuple[list[float], list[float]]] = defaultdict(lambda: ([], []))
    for s in truth["sequences"]:
        for k, (at, metric, value) in enumerate(s["events"]):
            by_value[f"{metric}={value}"][0].append(at)
            by_value[f"{metric}={value}"][1].append(row(s["devices"][k] if "devices" in s else s["device"]))
    for i, (label, (xs, ys)) in enumerate(sorted(by_value.items())):
        chart.points(label, xs, ys, PALETTE[(i + 4) % len(PALETTE)], "circle", 3.5)
    for expect, label, color in ((True, "start: alert expected", "#d62728"), (False, "start: near miss", "#2ca02c")):
        starts = [s for s in truth["sequences"] if bool(s["expect_alert"]) == expect]
        if starts:
            xs = [float(s["at_ms"]) for s in starts]
            chart.points(label, xs, [row(s["device"]) + 0.3 for s in starts], color, "square", 3.5)
    if raised:
        xs = [float(a["last_ms"]) for a in raised]
        chart.points("pattern alert", xs, [row(board(a)) for a in raised], "#000", "triangle", 6)
    must = sum(1 for s in truth["sequences"] if s["expect_alert"])
    note = (
        f"{len(truth['sequences'])} scripted sequences, a row per device: their readings by value, a square just "
        f"above where each starts (red: should raise a pattern alert, {must} of them; green: a near miss that "
        f"should not), and the {len(raised)} pattern alerts the gateway raised (black triangles, at the event time "
        "of the last reading they are about)."
    )
    return "sequences", chart, note


_NONE: Final = {
    "arrival": "this truth has no arrival times (edgekit-sim run publishes as fast as the broker takes its "
    "messages; a scenario's simulate records when each reading arrives).",
    "watermarks": "the gateway configuration has no windows, so it keeps no watermark.",
    "windows": "no window point was written (the gateway configuration has no windows, or no window closed).",
    "late": "no reading came later than its window's allowed lateness, and none was refused before a window.",
}
"""What an empty plot's line says instead of a blank box."""


def render_report(
    truth: Mapping[str, Any],
    verdict: Verdict | None = None,
    alerts: Sequence[Mapping[str, Any]] = (),
    title: str | None = None,
) -> str:
    """The report page as a string."""
    exp = truth["expected"]
    readings = truth["readings"]
    devices, picked = _pick_devices(truth)
    color = {d: PALETTE[i % len(PALETTE)] for i, d in enumerate(devices)}
    sc = truth["scenario"]
    charts: list[tuple[str, Chart, str]] = []

    # 1. event time vs arrival time
    c1 = Chart("Event time against arrival time", "arrival at the gateway (UTC)", "event time (UTC)", y_time=True)
    c1.diagonal = True
    per: dict[str, tuple[list[float], list[float]]] = defaultdict(lambda: ([], []))
    for r in readings:
        if r[1] in color and r[9] >= 0 and r[12] is None and r[6] != "u":
            per[r[1]][0].append(r[9])
            per[r[1]][1].append(r[5])
    for d in devices:
        if d in per:
            c1.points(d, per[d][0], per[d][1], color[d], size=2.2)
    late_pts = [(at, k[3]) for *k, at in exp["late"] if k[1] in color and k[6] == "too_late"]
    if late_pts:
        c1.points("routed late", [p[0] for p in late_pts], [p[1] for p in late_pts], "#d00", "cross", 4)
    charts.append(
        (
            "arrival",
            c1,
            "Each reading at its first arrival. On the dashed diagonal a reading arrives as it is taken; a sleepy "
            "board's burst is a vertical stack; red crosses were routed to the late output. Unsynced readings "
            "(quality u) are left out: their event time is not real time.",
        )
    )

    # 2. watermarks
    c2 = Chart("Device watermarks", "arrival at the gateway (UTC)", "watermark (event time, UTC)", y_time=True)
    wms: dict[str, tuple[list[float], list[float]]] = defaultdict(lambda: ([], []))
    for at, dev, wm in exp["watermarks"]:
        if dev in color:
            wms[dev][0].append(at)
            wms[dev][1].append(wm)
    for d in devices:
        if d in wms:
            c2.step(d, wms[d][0], wms[d][1], color[d])
    charts.append(
        (
            "watermarks",
            c2,
            "Each device's watermark (max event time minus the out-of-orderness bound, or its flushed marker + 1) "
            "after each of its batches: a window of the device fires when its watermark passes the window's end.",
        )
    )

    # 3. window firings and updates, a colour per window, named with its kind
    c3 = Chart("Window firings and updates", "when the gateway wrote the point (UTC)", "window start (UTC)",
               y_time=True)  # fmt: skip
    kinds = _window_kinds(truth)
    fired = [f for f in exp["firings"] if f[7] == 1]
    updated = [f for f in exp["firings"] if f[7] > 1 and f[6] > 0]
    superseded = [f for f in exp["firings"] if f[6] == 0]
    for i, name in enumerate(sorted({f[1] for f in exp["firings"]} | set(kinds))):
        mine = [f for f in fired if f[1] == name]
        shape: Shape = "square" if kinds.get(name, "").startswith("session") else "circle"
        if mine:
            c3.points(f"{name}: {kinds.get(name, 'window')}", [f[0] for f in mine], [f[3] for f in mine],
                      PALETTE[i % len(PALETTE)], shape, 2.4)  # fmt: skip
    if updated:
        c3.points("update by a late reading", [f[0] for f in updated], [f[3] for f in updated], "#d62728",
                  "triangle", 4)  # fmt: skip
    if superseded:
        c3.points("superseded session", [f[0] for f in superseded], [f[3] for f in superseded], "#7f7f7f",
                  "cross", 3)  # fmt: skip
    described = "; ".join(f"{n}: {k}" for n, k in kinds.items())
    charts.append(
        (
            "windows",
            c3,
            f"Windows: {described or 'none configured'}. A tumbling or sliding window starts on its grid; a "
            "session starts at its first reading and ends at its last + the gap, so sessions (squares) lie off the "
            f"grid. {len(fired)} window points fired, {len(updated)} updated in place by late readings within the "
            f"allowed lateness (same series and time, revision + 1), {len(superseded)} superseded sessions (merged "
            "into a larger one: written again with count 0).",
        )
    )

    # 4. late readings
    c4 = Chart("Late and refused readings", "arrival at the gateway (UTC)", "event time (UTC)", y_time=True)
    reasons: dict[str, tuple[list[float], list[float]]] = defaultdict(lambda: ([], []))
    for *k, at in exp["late"]:
        reasons[k[6]][0].append(at)
        reasons[k[6]][1].append(k[3])
    for i, (reason, (xs, ys)) in enumerate(sorted(reasons.items())):
        c4.points(reason, xs, ys, PALETTE[(i + 3) % len(PALETTE)], "cross", 4)
    charts.append(
        (
            "late",
            c4,
            "Records of the late_reading measurement: too_late (behind the watermark by more than the window's "
            "allowed lateness, one per window and metric) and readings refused before any window (unsynced clock).",
        )
    )

    # 5. anomalies, one chart per metric; 6. sequences and pattern alerts
    charts += _anomaly_charts(truth, alerts)
    if truth["sequences"]:
        charts.append(_sequence_chart(truth, alerts))

    # 6. the anomaly scores behind it
    score_charts: list[Chart] = []
    if truth["anomalies"]:
        traces = anomaly_scores(truth)
        for i, a in enumerate(truth["anomalies"][:MAX_DEVICES]):
            tr = traces[(a["device"], a["metric"])]
            score_charts.append(_score_chart(a, tr, PALETTE[i % len(PALETTE)]))

    counts = truth["counts"]
    heading = title or f"edgekit simulator: {sc['name']}"
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{escape(heading)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{escape(heading)}</h1>",
        f"<p>{escape(sc['description'])}</p>",
        f"<p class='note'>Event time {escape(_utc(truth['start_ms']))} to {escape(_utc(truth['end_ms']))}, "
        f"seed {sc['seed']}, sites {escape(', '.join(truth['sites']))}.</p>",
        _table(["what", "count"], [[k.replace("_", " "), v] for k, v in counts.items()]),
    ]
    if verdict is not None:
        cls = "ok" if verdict.ok else "bad"
        word = "no missing, no extra" if verdict.ok else "MISMATCH"
        parts.append(f"<h2>What landed in InfluxDB</h2><p class='{cls}'>{word}</p>")
        parts.append(
            _table(
                ["output", "expected", "found", "missing", "extra", "differ", "routed late"],
                [[t.output, t.expected, t.found, t.missing, t.extra, t.differ, t.routed_late] for t in verdict.tables],
            )
        )
    if picked:
        parts.append(f"<p class='note' id='devices-drawn'>{escape(picked)}</p>")
    if alerts or truth["anomalies"] or truth["sequences"]:
        parts.append(f"<p class='note'>{len(alerts)} alerts raised by the gateway.</p>")
    for key, chart, note in charts:
        parts.append(f"<h2 id='{key}'>{escape(chart.title)}</h2>")
        if chart.marks:
            parts.append(f"<figure data-plot='{key}' data-marks='{chart.marks}'>{chart.svg()}</figure>")
            parts.append(f"<p class='note'>{escape(note)}</p>")
        else:
            parts.append(f"<p class='none'>None: {escape(_NONE.get(key, 'nothing to draw in this run.'))}</p>")
    if not truth["anomalies"]:
        parts.append("<h2 id='anomalies'>Injected anomalies</h2>")
        parts.append("<p class='none'>None: this run injected no sensor anomaly.</p>")
    if not truth["sequences"]:
        parts.append("<h2 id='sequences'>Scripted sequences</h2>")
        parts.append("<p class='none'>None: this run scripted no event sequence.</p>")
    if score_charts:
        parts.append("<h2 id='scores'>Anomaly scores</h2>")
        parts.append(
            "<p class='note'>The score the gateway's anomaly detection (gateway.anomaly, default settings) gives "
            "each reading of the series, in [0, 1): r&#178;/(1 + r&#178;) with r = |z| / 4.5, so 0.5 at the "
            "threshold. Red dots: readings inside an open anomaly; black triangles: an anomaly opened (an "
            "alert); grey: the device's multivariate (Hotelling T&#178;) score over all its metrics; shaded in "
            "colour: the injected span; in grey: the detector's warm-up (its readings are learned, never flagged: "
            "an anomaly there goes unseen). A lasting change scores high where it starts and is then scored "
            "against its new level, flagged until the series is back (or re-baselined).</p>"
        )
        parts.append("<figure data-plot='scores' data-marks='" + str(sum(c.marks for c in score_charts)) + "'>")
        parts += [c.svg() for c in score_charts]
        parts.append("</figure>")
    if truth["anomalies"]:
        parts.append("<h2>Anomalies injected</h2>")
        parts.append(
            _table(
                ["kind", "device", "metric", "from", "to", "labelled readings"],
                [
                    [a["kind"], a["device"], a["metric"], _utc(a["start_ms"]), _utc(a["end_ms"]), len(a["labelled"])]
                    for a in truth["anomalies"]
                ],
            )
        )
    if truth["sequences"]:
        parts.append("<h2>Sequences injected</h2>")
        parts.append(
            _table(
                ["kind", "pattern", "device", "at", "alert expected", "events"],
                [
                    [
                        s["kind"],
                        s["pattern"],
                        s["device"],
                        _utc(s["at_ms"]),
                        "yes" if s["expect_alert"] else "no",
                        "; ".join(f"{m}={v}" for _, m, v in s["events"]),
                    ]
                    for s in truth["sequences"]
                ],
            )
        )
    if truth.get("latency"):
        parts.append(latency_html(truth["latency"]))
    dead = exp["dead_letters"]
    parts.append("<h2>Dead letters expected</h2>")
    if dead:
        parts.append(_table(["reason", "device", "records"], dead))
    else:
        parts.append("<p class='none'>None: every message of this run is valid.</p>")
    parts.append("</body></html>\n")
    return "".join(parts)


def write_report(
    path: Path,
    truth: Mapping[str, Any],
    verdict: Verdict | None = None,
    alerts: Sequence[Mapping[str, Any]] = (),
    title: str | None = None,
) -> Path:
    """Write the page to ``path`` (parents created); returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(truth, verdict, alerts, title), encoding="utf-8")
    return path


# --- latency or accuracy (sim/latency.py's measurement, kept in the truth as "latency") ------------------------

KIND_STYLE: Final[dict[str, tuple[str, Shape]]] = {
    "provisional": ("#ff7f0e", "circle"),
    "final": ("#1f77b4", "square"),
    "update": ("#d62728", "triangle"),
}
"""Colour and marker of each result kind, the same in every latency plot."""


def _unit(values: Sequence[float]) -> tuple[float, str]:
    """Seconds for latencies up to ten minutes, minutes beyond."""
    return (1000.0, "s") if not values or max(values) <= 600_000 else (60_000.0, "min")


def latency_charts(doc: Mapping[str, Any], window: str | None = None) -> list[tuple[str, Chart, str]]:
    """The plots of a latency measurement (:func:`sim.latency.latency_doc`): the latency of each result kind
    (distribution, from the newest reading's event time and from the last arrival), the provisional error
    against the trigger interval (when a sweep over intervals was measured), and one window's value over time;
    of every window, or only of ``window``."""
    m = doc["measurement"]
    # at, window, key, start, end, metric, kind, revision, count, value, since_event, since_arrival
    results = [r for r in m["results"] if window is None or r[1] == window]
    out: list[tuple[str, Chart, str]] = []
    for since, col, what in (
        ("event", 10, "the event time of its newest reading"),
        ("arrival", 11, "the arrival of its last reading"),
    ):
        div, unit = _unit([float(r[col]) for r in results])
        c = Chart(
            f"Latency of each result kind, from {what}",
            f"latency ({unit})",
            "share of results at most this",
            x_time=False,
            height=260,
        )
        c.y_fixed = (0.0, 1.02)
        for kind, (color, _shape) in KIND_STYLE.items():
            xs = sorted(r[col] / div for r in results if r[6] == kind)
            if xs:
                c.step(kind, [xs[0], *xs], [0.0, *((i + 1) / len(xs) for i in range(len(xs)))], color)
        out.append(
            (
                f"latency-{since}",
                c,
                (
                    f"For each result kind, the share of results (y) that came at most x after {what}: a provisional "
                    "result comes on the early trigger, a final one when the watermark passes the window's end, an "
                    "update when a late reading within the allowed lateness changes a window that already fired."
                ),
            )
        )
    rows = [r for r in doc.get("sweep", []) if r.get("trigger_ms") and (window is None or r.get("window") == window)]
    if rows:
        c = Chart(
            "Error of provisional results against the trigger interval",
            "early trigger every (s)",
            "mean relative error (%)",
            x_time=False,
            height=260,
        )
        groups = list(dict.fromkeys((str(r.get("window", "")), r["bound_ms"], r["lateness_ms"]) for r in rows))
        several = len({(b, la) for _, b, la in groups}) > 1
        for i, (name, bound, lateness) in enumerate(groups):
            mine = sorted(
                (
                    r
                    for r in rows
                    if (str(r.get("window", "")), r["bound_ms"], r["lateness_ms"]) == (name, bound, lateness)
                ),
                key=lambda r: int(r["trigger_ms"]),
            )
            xs = [r["trigger_ms"] / 1000 for r in mine]
            rel = [100 * (r["provisional_error"]["mre"] or 0.0) for r in mine]
            color = PALETTE[i % len(PALETTE)]
            label = name or "every window"
            if several:
                label += f", bound {_setting_text(bound)}, lateness {_setting_text(lateness)}"
            c.line(label, xs, rel, color)
            c.points(f"{label}: measured", xs, rel, color, "circle", 3.5)
        out.append(
            (
                "error-trigger",
                c,
                (
                    "Each early-trigger interval measured over the same run: the mean relative error of the "
                    "provisional results' main aggregate against their window's final result, per window. A longer "
                    "interval gives fewer provisional results; those it gives come later and miss less."
                ),
            )
        )
    hist = doc.get("history") or {}
    if hist.get("results") and (window is None or hist["instance"][0] == window):
        pick: tuple[str, str, int, str] | None = tuple(hist["instance"])
        mine, truth, setting = hist["results"], hist.get("truth"), str(hist.get("setting", ""))
    else:
        pick = eventful_instance(results)
        mine = [r for r in results if pick is not None and (r[1], r[2], r[3], r[5]) == pick]
        truth, setting = None, str(doc.get("setting", ""))
    if pick is not None and mine:
        c = Chart(
            f"{pick[0]} {pick[1]} {pick[3]} from {_utc(pick[2])[11:16]}: its value as results come",
            "gateway time (UTC)",
            f"{mine[0][5]} ({doc.get('aggregates', {}).get(pick[0], 'value')})",
            height=260,
        )
        xs = [float(r[0]) for r in mine if r[9] is not None]
        ys = [float(r[9]) for r in mine if r[9] is not None]
        if xs:
            c.step("best value known", xs, ys, "#999")
        for kind, (color, shape) in KIND_STYLE.items():
            pts = [(float(r[0]), float(r[9])) for r in mine if r[6] == kind and r[9] is not None]
            if pts:
                c.points(kind, [p[0] for p in pts], [p[1] for p in pts], color, shape, 4.5)
        c.vline(float(mine[0][4]), "#555", "window end (event time)")
        if truth is not None and truth[0] is not None:
            c.hline(float(truth[0]), "#2ca02c", "every reading of the window")
        out.append(
            (
                "window-value",
                c,
                (
                    f"The window with the most kinds of result ({setting}): each provisional, final and updated "
                    "value at the gateway time it was emitted (the point in InfluxDB holds the latest; grey: the "
                    "best value known), the window's end in event time, and in green the value over every reading "
                    "of the window that reached the gateway, late ones included."
                ),
            )
        )
    return out


def _setting_text(v: float | None) -> str:
    """A setting of a measured row: None is the configured value."""
    return "as set" if v is None else "0" if v == 0 else _ms_text(v)


def _ms_text(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v / 60_000:.1f} min" if abs(v) >= 60_000 else f"{v / 1000:.1f} s"


def latency_html(doc: Mapping[str, Any]) -> str:
    """The report's section "Latency and accuracy": tables and plots of a latency measurement."""
    m = doc["measurement"]
    parts = [
        "<h2 id='latency'>Latency and accuracy</h2>",
        f"<p class='note'>The run through the gateway's pipeline in simulated gateway time ({escape(doc['setting'])}; "
        "arrival times from the simulator's network, sleep and flush model, a tick every second).</p>",
    ]
    lat = [
        [
            r["window"],
            r["kind"],
            r["results"],
            _ms_text(r["event_p50"]),
            _ms_text(r["event_p95"]),
            _ms_text(r["arrival_p50"]),
            _ms_text(r["arrival_p95"]),
        ]
        for r in m["latency"]
    ]
    parts.append(_table(["window", "result", "results", "from event p50", "p95", "from arrival p50", "p95"], lat))
    rows = []
    for w, c in m["windows"].items():
        pe, fe, le = c["provisional_error"], c["final_error"], c["last_error"]
        rows.append(
            [
                f"{w} ({c['kind']})",
                c["readings"],
                f"{c['late']} ({100 * c['late_share']:.2f} %)",
                c["pending"],
                "-" if pe["mre"] is None else f"{100 * pe['mre']:.2f} % ({pe['count_error']:.2f})",
                "-" if fe["n"] == 0 else f"{fe['n'] - fe['exact']} of {fe['n']}",
                "-" if le["n"] == 0 else f"{le['n'] - le['exact']} of {le['n']}",
                c["missed"],
            ]
        )
    parts.append(
        _table(
            [
                "window",
                "readings",
                "too late for any result",
                "pending at the end",
                "provisional error (count)",
                "finals off",
                "last results off",
                "windows with none",
            ],
            rows,
        )
    )
    parts.append(
        f"<p class='note'>Engine state (JSON, as a checkpoint stores it): at most "
        f"{m['state_max_bytes'] / 1024:.1f} KiB, {m['state_end_bytes'] / 1024:.1f} KiB at the end.</p>"
    )
    if m.get("rules"):
        rules = [
            [
                name,
                r["fast"],
                r["exact"],
                r["confirmed"],
                r["false"],
                r["missed"],
                _ms_text(r["fast_p50_ms"]),
                _ms_text(r["exact_p50_ms"]),
                _ms_text(r["head_start_p50_ms"]),
            ]
            for name, r in m["rules"].items()
        ]
        parts.append(
            _table(
                [
                    "rule",
                    "fast alerts",
                    "event-time alerts",
                    "confirmed",
                    "false (retracted)",
                    "missed by the fast path",
                    "fast p50 after arrival",
                    "event-time p50 after arrival",
                    "head start p50",
                ],
                rules,
            )
        )
    if doc.get("sweep"):
        sw = [
            [
                f"{r.get('window', '')}: {r['label']}",
                _ms_text(r["final_event_p50_ms"]),
                _ms_text(r["first_event_p50_ms"]),
                "-" if r["provisional_error"]["mre"] is None else f"{100 * r['provisional_error']['mre']:.2f} %",
                f"{r['final_error']['n'] - r['final_error']['exact']} of {r['final_error']['n']}",
                f"{r['last_error']['n'] - r['last_error']['exact']} of {r['last_error']['n']}",
                f"{100 * r['late_share']:.2f} %",
                f"{r['state_max_bytes'] / 1024:.1f} KiB",
            ]
            for r in doc["sweep"]
        ]
        parts.append(
            _table(
                [
                    "setting",
                    "final p50",
                    "first value p50",
                    "provisional error",
                    "finals off",
                    "after updates off",
                    "late share",
                    "state max",
                ],
                sw,
            )
        )
    for key, chart, note in latency_charts(doc):
        parts.append(f"<h3 id='{key}'>{escape(chart.title)}</h3>")
        parts.append(f"<figure data-plot='{key}' data-marks='{chart.marks}'>{chart.svg()}</figure>")
        parts.append(f"<p class='note'>{escape(note)}</p>")
    return "".join(parts)
