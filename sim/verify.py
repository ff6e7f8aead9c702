"""``sim verify``: what landed in InfluxDB against a run's ground truth, one table per output.

The ground truth is the JSON document :func:`truth_doc` writes (``--truth``); what landed comes from
InfluxDB 1.x over InfluxQL (:func:`influx_rows`) or, for an in-process run, from a :class:`LineStore`
that keeps the gateway's line protocol with InfluxDB's rule that a point written again at the same series
and timestamp overwrites (merges) the fields of the earlier one.

Tables: raw readings (``reading``), window results (``window``, the last revision of each point), late
readings (``late_reading``), dead letters (``dead_letter``), alerts (``alert``) and, for a configuration with
``[[joins]]``, joined records (``join``, against the brute-force join of ``sim/joinref.py``): expected, found,
missing, extra, differ (found with other values), and routed late (readings whose values went to the late
output; window points whose last write is a late re-fire; late records). A join with ``alert`` set must raise
one alert per joined record, with the two readings' ids.

The ``alert`` table holds the alerts the injected events must raise (:func:`expected_alerts`): a scripted
sequence its pattern's alert, a spike or level shift a ``zscore.<metric>`` alert, a stuck sensor a
``stuck.<metric>`` one, each on its device with its last reading within the event's span or
:data:`ALERT_TOLERANCE_MS` after it. A missing one fails the verdict, and so does an alert of a near miss's
pattern (a sequence that must not raise one); an anomaly alert no injected event explains is a false alarm,
counted (``unexplained``) but not a failure, since plain noise sometimes crosses the threshold
(docs/anomaly.md).
"""

from __future__ import annotations

import json
import math
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from gateway.engine.config import parse_engine

from .errors import SimError
from .fleet import Plan
from .joinref import expected_joins
from .reference import Expected
from .world import Run

__all__ = [
    "TRUTH_FORMAT",
    "Found",
    "LineStore",
    "Table",
    "Verdict",
    "compare",
    "expected_alerts",
    "influx_rows",
    "parse_line",
    "plan_truth_doc",
    "truth_doc",
    "values_close",
]

TRUTH_FORMAT: Final = "edgekit-sim-truth/2"
MEASUREMENTS: Final = ("reading", "window", "late_reading", "dead_letter", "alert", "join")
ALERT_TOLERANCE_MS: Final = 600_000
"""An alert counts for an injected event when its last reading lies in the event's span or this soon after."""
ANOMALY_ALERTS: Final = {"spike": "zscore", "level_shift": "zscore", "stuck": "stuck"}
"""The detector that must raise an alert for each kind of injected anomaly; drift, dropout and noise bursts
need not raise one (an alert within their span is explained, not a false alarm)."""

Row = dict[str, Any]


# --- the ground truth as a document ---------------------------------------------------------------------


def truth_doc(run: Run, expected: Expected, gateway: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The run and what the gateway must write, as JSON-ready data (what ``--truth`` files hold)."""
    sc = run.scenario
    return {
        "format": TRUTH_FORMAT,
        "scenario": {"name": sc.name, "description": sc.description, "seed": sc.seed, "prefix": sc.prefix},
        "start_ms": run.start_ms,
        "end_ms": run.end_ms,
        "sites": list(sc.sites),
        "boards": [asdict(b) for b in run.boards],
        "counts": run.counts(),
        "gateway": dict(gateway or {}),
        "readings": [r.to_json() for r in run.readings],
        "deliveries": [[d.arrival_ms, d.kind, d.device, d.sent_ms, d.attempt, len(d.readings)] for d in run.deliveries],
        "anomalies": [{**a.to_json(), "labelled": labelled} for a, labelled in run.anomalies],
        "sequences": [s.to_json() for s in run.sequences],
        "correlations": [c.to_json() for c in run.correlations],
        "expected": {
            **(
                {"joins": expected_joins(run, expected.readings, gateway, parse_engine(gateway))}
                if gateway and gateway.get("joins")
                else {}
            ),
            "readings": expected.readings,
            "duplicates": expected.duplicates,
            "dead_letters": [[reason, dev, n] for (reason, dev), n in sorted(expected.dead_letters.items())],
            "windows": [[*k, *v] for k, v in sorted(expected.windows.items())],
            "late": [[*k, at] for k, at in sorted(expected.late.items())],
            "firings": [list(asdict(f).values()) for f in expected.firings],
            "watermarks": [list(w) for w in expected.watermarks],
        },
    }


def _board(device: str, site: str, boot: int) -> dict[str, Any]:
    return {
        "device": device,
        "site": site,
        "group": "run",
        "boot": boot,
        "drift_ppm": 0.0,
        "skew_ms": 0,
        "sleep_s": None,
    }


def plan_truth_doc(plan: Plan) -> dict[str, Any]:
    """The truth of ``edgekit-sim run`` (a :class:`~sim.fleet.Plan`) in the same format as a scenario's, so
    that ``verify`` and ``report`` read both. ``run`` knows no gateway configuration, so its truth checks the
    raw readings, the dead letters and the alerts (``checks``), not windows nor late readings; its readings have
    no arrival times (``run`` publishes as fast as the broker takes them). The run's own keys (``spec``,
    ``rejected``, ``malformed``, ``flushed``) are kept beside."""
    spec = plan.spec
    extra = plan.truth()
    readings: list[list[object]] = [
        [r.site, r.device, r.boot, r.seq, r.t_ms, r.t_ms, r.quality, dict(r.metrics), -1, -1, 1, 1, None]
        for r in plan.readings
    ]
    dead: Counter[tuple[str, str]] = Counter()
    unattributed = 0
    for m in plan.messages:
        for reason in m.rejects:
            dead[(reason, m.device)] += 1
        if m.kind == "malformed":
            if m.expect_reason == "bad_topic":  # the gateway cannot tell its site or device: not this run's to count
                unattributed += 1
            else:
                dead[(str(m.expect_reason), m.device)] += 1
    end = max((r.t_ms for r in plan.readings), default=plan.start_ms) + 1
    sites = {d.device: d.site for d in plan.devices}
    return {
        "format": TRUTH_FORMAT,
        "scenario": {
            "name": "edgekit-sim run",
            "description": f"{spec.devices} boards x {spec.readings_per_device} readings every {spec.interval_ms} ms "
            f"(seed {spec.seed})",
            "seed": spec.seed,
            "prefix": spec.prefix,
        },
        "checks": ["reading", "dead_letter", "alert"],
        "start_ms": plan.start_ms,
        "end_ms": end,
        "sites": list(spec.sites),
        "boards": [
            {
                "device": d.device,
                "site": sites[d.device],
                "group": "run",
                "boot": d.boot,
                "drift_ppm": 0.0,
                "skew_ms": 0,
                "sleep_s": None,
            }
            for d in plan.devices
        ],
        "counts": asdict(plan.counts()),
        "gateway": {},
        "readings": readings,
        "deliveries": [],
        "anomalies": extra["anomalies"],
        "sequences": extra["sequences"],
        "expected": {
            "readings": list(range(len(readings))),
            "duplicates": plan.counts().duplicate_readings,
            "dead_letters": [[reason, dev, n] for (reason, dev), n in sorted(dead.items())],
            "unattributed_dead_letters": unattributed,
            "windows": [],
            "late": [],
            "firings": [],
            "watermarks": [],
        },
        **{k: extra[k] for k in ("spec", "rejected", "malformed", "flushed")},
    }


# --- what landed -----------------------------------------------------------------------------------------


@dataclass(slots=True)
class Found:
    """Rows per measurement, each a dict of tags and fields plus ``time`` (ms)."""

    rows: dict[str, list[Row]] = field(default_factory=lambda: {m: [] for m in MEASUREMENTS})


_TOKEN = re.compile(r'(?:\\.|"(?:\\.|[^"\\])*"|[^ ])+')


def _split(s: str, sep: str) -> list[str]:
    """Split on ``sep`` outside quotes and not escaped."""
    parts: list[str] = []
    cur: list[str] = []
    quoted = escaped = False
    for ch in s:
        if escaped:
            cur.append(ch)
            escaped = False
        elif ch == "\\":
            cur.append(ch)
            escaped = True
        elif ch == '"':
            quoted = not quoted
            cur.append(ch)
        elif ch == sep and not quoted:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def _unescape(s: str) -> str:
    """A name or tag value: a backslash escapes a comma, an equals sign or a space (InfluxDB 1.x's rule)."""
    return re.sub(r"\\([,= ])", r"\1", s)


def _unescape_string(s: str) -> str:
    """A string field value: a backslash escapes a backslash or a double quote; any other is itself."""
    return re.sub(r'\\([\\"])', r"\1", s)


def _value(raw: str) -> Any:
    if raw.startswith('"'):
        return _unescape_string(raw[1:-1])
    if raw in ("true", "false"):
        return raw == "true"
    if raw.endswith("i"):
        return int(raw[:-1])
    return float(raw)


def _kv(part: str) -> tuple[str, str]:
    """Key and value of ``key=value``: the first ``=`` that is not escaped."""
    i = 0
    while True:
        j = part.index("=", i)
        if j == 0 or part[j - 1] != "\\":
            return part[:j], part[j + 1 :]
        i = j + 1


def parse_line(text: str) -> tuple[str, dict[str, str], dict[str, Any], int]:
    """(measurement, tags, fields, timestamp) of one line of InfluxDB line protocol."""
    head, body, ts = _TOKEN.findall(text)
    parts = _split(head, ",")
    tags = {}
    for p in parts[1:]:
        k, v = _kv(p)
        tags[_unescape(k)] = _unescape(v)
    fields = {}
    for p in _split(body, ","):
        k, v = _kv(p)
        fields[_unescape(k)] = _value(v)
    return _unescape(parts[0]), tags, fields, int(ts)


class LineStore:
    """An in-memory stand-in for InfluxDB's storage rule: a point at the same measurement, tag set and
    timestamp merges its fields into the earlier point (the later values win)."""

    def __init__(self) -> None:
        self.points: dict[tuple[str, tuple[tuple[str, str], ...], int], dict[str, Any]] = {}
        self.writes = 0

    def write(self, lines: Iterable[str]) -> None:
        for text in lines:
            m, tags, fields, ts = parse_line(text)
            self.writes += 1
            self.points.setdefault((m, tuple(sorted(tags.items())), ts), {}).update(fields)

    def found(self, ns_per_unit: int = 1_000_000) -> Found:
        f = Found()
        for (m, tags, ts), fields in self.points.items():
            if m in f.rows:
                f.rows[m].append({**dict(tags), **fields, "time": ts // ns_per_unit})
        return f


def influx_rows(url: str, database: str, timeout_s: float = 30.0) -> Found:
    """Every row of the four measurements from InfluxDB 1.x (InfluxQL, times in ms)."""
    f = Found()
    for m in MEASUREMENTS:
        params = urllib.parse.urlencode({"db": database, "q": f'SELECT * FROM "{m}"', "epoch": "ms"})
        try:
            with urllib.request.urlopen(f"{url.rstrip('/')}/query?{params}", timeout=timeout_s) as resp:
                doc = json.load(resp)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise SimError(f"InfluxDB at {url}: {exc}") from exc
        for result in doc.get("results", []):
            if "error" in result:
                raise SimError(f"InfluxDB at {url}, database {database!r}: {result['error']}")
            for series in result.get("series", []):
                for values in series.get("values", []):
                    row = dict(zip(series["columns"], values, strict=True))
                    f.rows[m].append({k: v for k, v in row.items() if v is not None})
    return f


# --- the comparison ------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Table:
    output: str
    expected: int = 0
    found: int = 0
    missing: int = 0
    extra: int = 0
    differ: int = 0
    routed_late: int = 0
    examples: list[str] = field(default_factory=list)
    unexplained: int = 0
    """Alerts only: anomaly alerts no injected event explains (false alarms), counted but not a mismatch."""

    @property
    def ok(self) -> bool:
        return self.missing == 0 and self.extra == 0 and self.differ == 0

    def note(self, text: str) -> None:
        if len(self.examples) < 5 and text not in self.examples:
            self.examples.append(text)


@dataclass(slots=True)
class Verdict:
    tables: list[Table]
    hints: list[str] = field(default_factory=list)
    """The likely causes of a mismatch, found in the database (another run's readings of the same devices)."""

    @property
    def ok(self) -> bool:
        return all(t.ok for t in self.tables)

    def table(self, output: str) -> Table:
        return next(t for t in self.tables if t.output == output)

    def render(self) -> str:
        head = f"{'output':<14}{'expected':>9}{'found':>9}{'missing':>9}{'extra':>9}{'differ':>9}{'routed late':>13}"
        lines = [head, "-" * len(head)]
        for t in self.tables:
            lines.append(
                f"{t.output:<14}{t.expected:>9}{t.found:>9}{t.missing:>9}{t.extra:>9}{t.differ:>9}{t.routed_late:>13}"
            )
        for t in self.tables:
            lines += [f"  {t.output}: {e}" for e in t.examples]
        lines.append("verdict: " + ("OK, everything expected found and nothing else" if self.ok else "MISMATCH"))
        if not self.ok:
            lines += [f"likely cause: {h}" for h in self.hints]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "tables": [asdict(t) for t in self.tables], "hints": self.hints}


def values_close(a: Any, b: Any) -> bool:
    """Two field values the same: equal, or floats within a relative 1e-9 (the same numbers summed in another
    order); a float is never close to a value that is not a number (None included)."""
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=1e-9)
    return bool(a == b)


def compare(truth: Mapping[str, Any], found: Found) -> Verdict:
    """The tables for one run's truth document against what was found (rows of other sites are ignored)."""
    sites = set(truth["sites"])
    exp = truth["expected"]
    readings = truth["readings"]

    def mine(m: str) -> list[Row]:
        return [r for r in found.rows[m] if r.get("site") in sites]

    late_rows = exp["late"]
    late_ids = {(k[1], k[4], k[5]) for k in late_rows}

    # raw readings
    t = Table("reading")
    want: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    for i in exp["readings"]:
        _site, dev, boot, seq, _true, tms, q, metrics = readings[i][:8]
        want[(dev, boot, seq)] = (tms, q, metrics)
    t.expected = len(want)
    t.routed_late = sum(1 for k in want if k in late_ids)
    got: dict[tuple[Any, ...], Row] = {}
    for r in mine("reading"):
        rk = (r.get("device", ""), r.get("boot"), r.get("seq"))
        if rk in got:
            t.extra += 1
            t.note(f"twice: {rk}")
        got[rk] = r
    t.found = len(mine("reading"))
    for rk, (tms, q, metrics) in want.items():
        row = got.get(rk)
        if row is None:
            t.missing += 1
            t.note(f"missing {rk} at {tms}")
        elif (
            row["time"] != tms or row.get("q") != q or any(not values_close(row.get(m), v) for m, v in metrics.items())
        ):
            t.differ += 1
            t.note(f"differs {rk}: want t={tms} q={q} {metrics}, got {row}")
    for rk in got.keys() - want.keys():
        t.extra += 1
        t.note(f"extra {rk}")
    tables = [t]

    # window results
    t = Table("window")
    wwant = {(w[0], w[1], w[2], w[3]): (w[4], w[5], w[6]) for w in exp["windows"]}
    t.expected = len(wwant)
    t.routed_late = sum(1 for v in wwant.values() if v[2] > 1)
    wgot = {(r.get("window"), r.get("device"), r["time"], r.get("metric")): r for r in mine("window")}
    t.found = len(wgot)
    for wk, (count, aggs, rev) in wwant.items():
        row = wgot.get(wk)
        if row is None:
            t.missing += 1
            t.note(f"missing {wk}")
        elif (
            row.get("count") != count
            or row.get("revision") != rev
            or (count > 0 and any(not values_close(row.get(a), v) for a, v in aggs.items()))
        ):
            t.differ += 1
            t.note(f"differs {wk}: want count={count} rev={rev} {aggs}, got {row}")
    for wk in wgot.keys() - wwant.keys():
        t.extra += 1
        t.note(f"extra {wk}")
    tables.append(t)

    # late readings
    t = Table("late_reading")
    lwant = Counter(tuple(k[:7]) for k in late_rows)
    lgot = Counter(
        (
            r.get("window", ""),
            r.get("device"),
            r.get("metric", ""),
            r["time"],
            r.get("boot"),
            r.get("seq"),
            r.get("reason"),
        )
        for r in mine("late_reading")
    )
    t.expected, t.found = sum(lwant.values()), sum(lgot.values())
    t.routed_late = t.expected
    for lk in lwant - lgot:
        t.missing += (lwant - lgot)[lk]
        t.note(f"missing {lk}")
    for lk in lgot - lwant:
        t.extra += (lgot - lwant)[lk]
        t.note(f"extra {lk}")
    tables.append(t)

    # dead letters
    t = Table("dead_letter")
    dwant = Counter({(reason, dev): n for reason, dev, n in exp["dead_letters"]})
    dgot = Counter((r.get("reason"), r.get("device", "")) for r in mine("dead_letter"))
    t.expected, t.found = sum(dwant.values()), sum(dgot.values())
    for dk, n in (dwant - dgot).items():
        t.missing += n
        t.note(f"missing {n} x {dk}")
    for dk, n in (dgot - dwant).items():
        t.extra += n
        t.note(f"extra {n} x {dk}")
    tables.append(t)
    tables.append(_alert_table(truth, mine("alert")))
    if "joins" in exp:
        tables.append(_join_table(exp["joins"], mine("join")))
    checks = truth.get("checks")
    if checks is not None:
        tables = [t for t in tables if t.output in checks]
    return Verdict(tables, hints=_hints(truth, found))


def _join_table(expected: list[list[Any]], rows: list[Row]) -> Table:
    """Joined records: each expected pair once (by join, key and the two readings' ids), with its event times."""
    t = Table("join")
    want = {(j[0], j[1], j[2], j[3]): (j[4], j[5]) for j in expected}
    t.expected = len(want)
    got: dict[tuple[Any, ...], Row] = {}
    for r in rows:
        k = (r.get("name"), r.get("key"), r.get("a_reading"), r.get("b_reading"))
        if k in got:
            t.extra += 1
            t.note(f"twice: {k}")
        got[k] = r
    t.found = len(rows)
    for k, (a_ms, b_ms) in want.items():
        row = got.get(k)
        if row is None:
            t.missing += 1
            t.note(f"missing {k}")
        elif (row.get("a_ms"), row.get("b_ms"), row.get("offset_ms")) != (a_ms, b_ms, b_ms - a_ms):
            t.differ += 1
            t.note(f"differs {k}: want a_ms={a_ms} b_ms={b_ms}, got {row}")
    for k in got.keys() - want.keys():
        t.extra += 1
        t.note(f"extra {k}")
    return t


def _hints(truth: Mapping[str, Any], found: Found) -> list[str]:
    """What in the database points at another run of the same device ids: readings of this run's devices that
    are not this run's (the gateway kept their watermarks), and readings refused because the ids were bound to
    another site."""
    devices = {b["device"] for b in truth["boards"]}
    mine = {(r[1], r[2], r[3]): r[5] for r in truth["readings"]}
    start, end = truth["start_ms"], truth["end_ms"]
    foreign = [
        r
        for r in found.rows["reading"]
        if r.get("device") in devices and mine.get((r.get("device"), r.get("boot"), r.get("seq"))) != r["time"]
    ]
    out: list[str] = []
    if foreign:
        names = sorted({str(r["device"]) for r in foreign})
        shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        latest = max(int(r["time"]) for r in foreign)
        past = (
            f"up to {_utc(latest)}, after this run's first reading ({_utc(start)}): the gateway's watermarks for "
            "these devices were already past this run's event times, so its windows did not fire and its "
            "readings went to late_reading"
            if latest > start
            else f"up to {_utc(latest)}, before this run ({_utc(start)} to {_utc(end)})"
        )
        same = sum(1 for r in foreign if (r.get("device"), r.get("boot"), r.get("seq")) in mine)
        if same:
            past += (
                f"; {same} of them carry this run's (boot, seq) identities, so the gateway dropped this run's "
                "readings as their duplicates"
            )
        out.append(
            f"another run wrote {len(foreign)} readings of the same device ids ({shown}) to this database, {past}. "
            "Give each run its own device ids (edgekit-sim run names its boards run-0001..., --id-prefix) or its "
            "own database and a gateway started with a fresh state."
        )
    bound = Counter(
        str(r.get("device"))
        for r in found.rows["dead_letter"]
        if r.get("reason") == "site_mismatch" and r.get("device") in devices
    )
    if bound:
        out.append(
            f"{sum(bound.values())} readings of {', '.join(sorted(bound)[:4])}{' ...' if len(bound) > 4 else ''} "
            f"were dead letters site_mismatch: the gateway had bound these ids to another site, heard first from "
            f"another run; give each run its own device ids or its own gateway state."
        )
    return out


# --- alerts ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExpectedAlert:
    """An injected event and the alert it must raise (``alert`` None: it need not raise one; ``must_not``: a
    near miss, whose pattern must not fire on the device in its span)."""

    label: str
    source: str
    alert: str | None
    device: str
    start_ms: int
    end_ms: int
    must_not: bool = False


def _utc(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ms / 1000))


def expected_alerts(truth: Mapping[str, Any]) -> list[ExpectedAlert]:
    """What a truth's injected anomalies and scripted sequences must (and must not) raise."""
    out: list[ExpectedAlert] = []
    for a in truth.get("anomalies", []):
        detector = ANOMALY_ALERTS.get(a["kind"])
        label = f"{a['kind']} {a['metric']}"
        alert = None if detector is None else f"{detector}.{a['metric']}"
        out.append(ExpectedAlert(label, "anomaly", alert, a["device"], a["start_ms"], a["end_ms"]))
    for s in truth.get("sequences", []):
        last = max((e[0] for e in s["events"]), default=s["at_ms"])
        must = bool(s["expect_alert"])
        # a correlated sequence's alert is keyed by its group (a key = "group" pattern), the others' by the device
        key = str(s.get("key") or s["device"])
        out.append(ExpectedAlert(s["kind"], "pattern", s["pattern"], key, s["at_ms"], last, not must))
    return out


def _alert_causes(gateway: Mapping[str, Any], e: ExpectedAlert) -> str:
    """The likely reason the gateway configuration could not raise ``e``'s alert, or ''."""
    if e.source == "pattern":
        names = [p.get("name") for p in gateway.get("patterns", []) if isinstance(p, Mapping)]
        if e.alert not in names:
            has = ", ".join(map(str, names)) or "none"
            return f"the gateway configuration has no pattern named {e.alert!r} (it has: {has})"
        return ""
    anomaly = gateway.get("anomaly")
    if not isinstance(anomaly, Mapping):
        return "the gateway configuration has no [anomaly] section: nothing detects anomalies"
    metric = (e.alert or "").partition(".")[2]
    metrics = anomaly.get("metrics")
    if isinstance(metrics, list) and metric not in metrics:
        return f"anomaly.metrics does not list {metric!r}"
    return ""


def _alert_table(truth: Mapping[str, Any], rows: list[Row]) -> Table:
    t = Table("alert")
    gateway = truth.get("gateway", {})
    alerts = sorted(rows, key=lambda r: (r.get("last_ms", r["time"]), r.get("name", ""), r.get("key", "")))
    used = [False] * len(alerts)

    def last(r: Row) -> int:
        return int(r["last_ms"] if "last_ms" in r else r["time"])

    def within(e: ExpectedAlert, r: Row) -> bool:
        return r.get("key") == e.device and e.start_ms <= last(r) < e.end_ms + ALERT_TOLERANCE_MS

    expects = expected_alerts(truth)
    t.found = len(alerts)
    # a join with ``alert`` set: one alert per expected joined record, its readings the pair's
    alerting = {j.get("name") for j in gateway.get("joins", []) if isinstance(j, Mapping) and j.get("alert")}
    for j in truth["expected"].get("joins", []):
        if j[0] not in alerting:
            continue
        t.expected += 1
        ids = f"{j[2]},{j[3]}"
        for k, r in enumerate(alerts):
            if not used[k] and r.get("source") == "join" and r.get("name") == j[0] and r.get("reading_ids") == ids:
                used[k] = True
                break
        else:
            t.missing += 1
            t.note(f"missing join alert {j[0]} on {j[1]} for {ids}")
    for e in sorted(expects, key=lambda e: (e.alert or "", e.start_ms)):
        if e.alert is None or e.must_not:
            continue
        t.expected += 1
        for k, r in enumerate(alerts):
            if not used[k] and r.get("source") == e.source and r.get("name") == e.alert and within(e, r):
                used[k] = True
                break
        else:
            t.missing += 1
            cause = _alert_causes(gateway, e)
            why = f": {cause}" if cause else ""
            t.note(f"missing {e.alert} on {e.device} for the {e.label} at {_utc(e.start_ms)}{why}")
    for k, r in enumerate(alerts):
        if used[k] or str(r.get("name", "")).startswith("rebaseline."):
            continue
        near = [e for e in expects if e.must_not and r.get("name") == e.alert and within(e, r)]
        if near:
            t.extra += 1
            t.note(f"extra {r.get('name')} on {r.get('key')} at {_utc(last(r))}: the {near[0].label} must not raise it")
        elif r.get("source") == "pattern":
            t.extra += 1
            t.note(f"extra {r.get('name')} on {r.get('key')} at {_utc(last(r))}: no scripted sequence explains it")
        elif r.get("source") == "join":
            t.extra += 1
            t.note(f"extra join alert {r.get('name')} on {r.get('key')} for {r.get('reading_ids')}: no expected record")
        elif not any(e.source == "anomaly" and within(e, r) for e in expects):
            t.unexplained += 1
            t.note(f"false alarm {r.get('name')} on {r.get('key')} at {_utc(last(r))} (no mismatch: docs/anomaly.md)")
    return t
