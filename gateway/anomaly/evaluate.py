"""Measure the detector on labelled series: precision, recall, F1 and detection delay per anomaly kind,
and false alarms per device-day. The scoring rules are in ``docs/anomaly.md``.

```sh
python -m gateway.anomaly.evaluate                      # the simulator's default labelled scenario
python -m gateway.anomaly.evaluate sim --seed 3 --scenario sim/labelled/anomaly_default.toml
python -m gateway.anomaly.evaluate nab path/to/NAB      # data/**/*.csv + labels/combined_windows.json
python -m gateway.anomaly.evaluate export-nab OUT       # write a simulated scenario in that layout
python -m gateway.anomaly.evaluate skab ../shared/data/skab   # SKAB's two leaderboard tables (gateway/anomaly/skab.py)
```

``--config gateway.toml`` scores with that file's ``[anomaly]`` settings (default: the built-in defaults).
Each series is scored by its own :class:`~gateway.anomaly.detector.Detector`, in event-time order, exactly
as the gateway would (``AnomalyEngine`` adds only the fleet around it).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from ..engine.config import parse_duration
from ..errors import ConfigError
from .config import AnomalySpec, DetectorSpec, parse_anomaly
from .detector import Detector
from .nabscore import NAB_PROFILES, NabSweep, sweep

__all__ = [
    "DAY_MS",
    "Case",
    "Outcome",
    "Row",
    "Window",
    "evaluate",
    "format_table",
    "load_nab",
    "main",
    "run_case",
    "sim_cases",
    "write_nab",
]

DAY_MS: Final = 86_400_000
DEFAULT_TOLERANCE_MS: Final = 15 * 60_000
NAB_TIME_FORMAT: Final = "%Y-%m-%d %H:%M:%S"


@dataclass(frozen=True, slots=True)
class Window:
    """A labelled anomaly ``[start_ms, end_ms)`` of some kind."""

    kind: str
    start_ms: int
    end_ms: int


@dataclass(frozen=True, slots=True)
class Case:
    """One labelled series. ``group`` is the row of the table its false alarms count against (the kind
    of its anomalies for the simulator's series, the data folder for NAB files)."""

    name: str
    device: str
    group: str
    t_ms: Sequence[int]
    values: Sequence[float]
    windows: Sequence[Window]


@dataclass(slots=True)
class Outcome:
    """What the detector did on one case: alert times, and per point its score and flag."""

    alerts: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    flags: list[bool] = field(default_factory=list)
    rebaselines: int = 0


def run_case(case: Case, spec: DetectorSpec, *, gap_alerts: bool = False) -> Outcome:
    """Feed the case's points to a fresh detector. Alerts are the times of anomaly openings (z-score or
    stuck), plus the first point after a gap when ``gap_alerts`` (as the gateway raises them)."""
    det = Detector(spec)
    out = Outcome()
    for t, x in zip(case.t_ms, case.values, strict=True):
        res = det.process(t, x)
        out.scores.append(res.scored.score)
        out.flags.append(res.anomalous)
        for ev in res.events:
            if ev.kind in ("opened", "stuck") or (ev.kind == "gap" and gap_alerts):
                out.alerts.append(t)
            elif ev.kind == "rebaselined":
                out.rebaselines += 1
    return out


@dataclass(slots=True)
class Row:
    group: str
    windows: int = 0
    detected: int = 0
    false_alarms: int = 0
    delays_ms: list[int] = field(default_factory=list)

    @property
    def precision(self) -> float:
        n = self.detected + self.false_alarms
        return self.detected / n if n else math.nan

    @property
    def recall(self) -> float:
        return self.detected / self.windows if self.windows else math.nan

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        if math.isnan(p) or math.isnan(r) or p + r == 0:
            return 0.0 if not math.isnan(r) else math.nan
        return 2 * p * r / (p + r)


@dataclass(slots=True)
class Report:
    rows: dict[str, Row]
    total: Row
    device_days: float
    rebaselines: int
    outcomes: list[Outcome] = field(default_factory=list)
    """Per case, in order: what the detector did (its per-point scores among it)."""

    @property
    def false_alarms_per_device_day(self) -> float:
        return self.total.false_alarms / self.device_days if self.device_days else math.nan


def score_case(case: Case, alerts: Sequence[int], tolerance_ms: int) -> tuple[list[int | None], int]:
    """Per window, the delay of its first alert (``None``: missed), and the number of false alarms.

    An alert at ``t`` belongs to every window with ``start <= t < end + tolerance``; an alert that belongs
    to none is a false alarm.
    """
    delays: list[int | None] = []
    for w in case.windows:
        hits = [t for t in alerts if w.start_ms <= t < w.end_ms + tolerance_ms]
        delays.append(min(hits) - w.start_ms if hits else None)
    false_alarms = sum(1 for t in alerts if not any(w.start_ms <= t < w.end_ms + tolerance_ms for w in case.windows))
    return delays, false_alarms


def evaluate(
    cases: Iterable[Case], spec: DetectorSpec, *, tolerance_ms: int = DEFAULT_TOLERANCE_MS, gap_alerts: bool = False
) -> Report:
    rows: dict[str, Row] = {}
    total = Row("all")
    span_by_device: dict[str, tuple[int, int]] = {}
    rebaselines = 0
    outcomes: list[Outcome] = []
    for case in cases:
        out = run_case(case, spec, gap_alerts=gap_alerts)
        outcomes.append(out)
        rebaselines += out.rebaselines
        delays, fa = score_case(case, out.alerts, tolerance_ms)
        if case.t_ms:
            lo, hi = span_by_device.get(case.device, (case.t_ms[0], case.t_ms[-1]))
            span_by_device[case.device] = (min(lo, case.t_ms[0]), max(hi, case.t_ms[-1]))
        group_row = rows.setdefault(case.group, Row(case.group))
        group_row.false_alarms += fa
        total.false_alarms += fa
        for w, d in zip(case.windows, delays, strict=True):
            row = rows.setdefault(w.kind, Row(w.kind))
            for r in (row, total):
                r.windows += 1
                if d is not None:
                    r.detected += 1
                    r.delays_ms.append(d)
    device_days = sum((hi - lo) / DAY_MS for lo, hi in span_by_device.values())
    return Report(rows, total, device_days, rebaselines, outcomes)


def nab_sweep(cases: Sequence[Case], report: Report) -> NabSweep:
    """NAB's threshold sweep (:mod:`gateway.anomaly.nabscore`) over the per-point scores of ``report``."""
    files = [
        (case.t_ms, out.scores, [(w.start_ms, w.end_ms) for w in case.windows])
        for case, out in zip(cases, report.outcomes, strict=True)
    ]
    return sweep(files)


def format_nab(sw: NabSweep, own: float = 0.5) -> str:
    head = f"{'profile':<20}{'best threshold':>15}{'score':>8}{'windows found':>15}{'FP points':>11}"
    head += f"{'at ' + format(own, 'g'):>10}{'windows found':>15}{'FP points':>11}"
    lines = [
        f"NAB scoring (numenta/NAB's sweeper: per-point scores, a threshold swept, each window worth its earliest "
        f"detection, false positives by their distance after a window; {sw.points} points scored after the "
        f"probation, {sw.windows} windows):",
        "",
        head,
        "-" * len(head),
    ]
    at = sw.at(own)
    for profile in NAB_PROFILES:
        best = sw.best(profile)
        thr = "-" if math.isinf(best.threshold) else f"{best.threshold:.4f}"
        lines.append(
            f"{profile:<20}{thr:>15}{sw.normalised(profile, best):>8.2f}{f'{best.detected}/{sw.windows}':>15}"
            f"{best.fp_points:>11}{sw.normalised(profile, at):>10.2f}"
            f"{f'{at.detected}/{sw.windows}':>15}{at.fp_points:>11}"
        )
    return "\n".join(lines)


def _f(x: float, digits: int = 3) -> str:
    return "-" if math.isnan(x) else f"{x:.{digits}f}"


def format_table(report: Report) -> str:
    head = (
        f"{'kind':<14}{'windows':>8}{'detected':>9}{'false':>7}{'precision':>10}{'recall':>8}{'F1':>7}"
        f"{'delay median':>14}{'delay p90':>11}"
    )
    lines = [head, "-" * len(head)]

    def fmt(r: Row) -> str:
        delays = sorted(r.delays_ms)
        med = f"{statistics.median(delays) / 60_000:.1f} min" if delays else "-"
        p90 = f"{delays[min(len(delays) - 1, int(0.9 * len(delays)))] / 60_000:.1f} min" if delays else "-"
        return (
            f"{r.group:<14}{r.windows:>8}{r.detected:>9}{r.false_alarms:>7}{_f(r.precision):>10}{_f(r.recall):>8}"
            f"{_f(r.f1):>7}{med:>14}{p90:>11}"
        )

    lines += [fmt(r) for _, r in sorted(report.rows.items()) if r.windows or r.false_alarms]
    lines += ["-" * len(head), fmt(report.total)]
    lines.append(
        f"false alarms per device-day: {_f(report.false_alarms_per_device_day)} "
        f"({report.total.false_alarms} over {report.device_days:.1f} device-days); "
        f"baselines re-learned after a lasting anomaly: {report.rebaselines}"
    )
    return "\n".join(lines)


# --- the device's multivariate score ---------------------------------------------------------------


@dataclass(slots=True)
class DeviceReport:
    """The multivariate (T^2) score per device: its openings against every labelled window of the device's
    metrics (a window counts as detected when an opening lies in ``[start, end + tolerance)``)."""

    devices: int = 0
    windows: int = 0
    detected: int = 0
    openings: int = 0
    false_alarms: int = 0
    device_days: float = 0.0

    @property
    def false_alarms_per_device_day(self) -> float:
        return self.false_alarms / self.device_days if self.device_days else math.nan


def evaluate_devices(
    cases: Iterable[Case], spec: AnomalySpec, *, tolerance_ms: int = DEFAULT_TOLERANCE_MS
) -> DeviceReport:
    """Feed each device's metrics together, reading by reading (the values that share an event time), to a
    fresh :class:`~gateway.anomaly.engine.AnomalyEngine` and count its ``multivariate`` openings."""
    from ..model import Reading
    from .engine import AnomalyEngine

    by_device: dict[str, list[Case]] = {}
    for case in cases:
        by_device.setdefault(case.device, []).append(case)
    rep = DeviceReport()
    for device, mine in sorted(by_device.items()):
        rows: dict[int, dict[str, float]] = {}
        for case in mine:
            metric = case.name.rsplit("/", 1)[-1]
            for t, x in zip(case.t_ms, case.values, strict=True):
                rows.setdefault(t, {})[metric] = x
        eng = AnomalyEngine(spec)
        opened: list[int] = []
        for seq, t in enumerate(sorted(rows)):
            res = eng.score_reading(Reading("eval", device, 0, seq, t, "s", dict(rows[t])))
            if res.multi is not None:
                opened += [t for ev in res.multi.events if ev.kind == "opened"]
        spans = [(w.start_ms, w.end_ms + tolerance_ms) for case in mine for w in case.windows]
        rep.devices += 1
        rep.windows += len(spans)
        rep.detected += sum(1 for a, b in spans if any(a <= t < b for t in opened))
        rep.openings += len(opened)
        rep.false_alarms += sum(1 for t in opened if not any(a <= t < b for a, b in spans))
        if rows:
            rep.device_days += (max(rows) - min(rows)) / DAY_MS
    return rep


def format_devices(rep: DeviceReport) -> str:
    return (
        f"multivariate (T^2 per device over its {rep.devices} devices' metrics): {rep.openings} openings; "
        f"{rep.detected} of {rep.windows} labelled windows had one; {rep.false_alarms} false alarms, "
        f"{_f(rep.false_alarms_per_device_day)} per device-day"
    )


# --- sources ---------------------------------------------------------------------------------------


def sim_cases(scenario: object) -> list[Case]:
    """Cases from the simulator's labelled scenario (a ``sim.anomalies.ScenarioSpec``)."""
    from sim.anomalies import ScenarioSpec, generate_scenario

    if not isinstance(scenario, ScenarioSpec):
        raise TypeError(f"expected a ScenarioSpec, got {type(scenario).__name__}")
    cases = []
    for s in generate_scenario(scenario):
        kinds = sorted({sp.kind for sp in s.spans})
        group = kinds[0] if len(kinds) == 1 else "mixed"
        windows = [Window(sp.kind, sp.start_ms, sp.end_ms) for sp in s.spans]
        cases.append(Case(f"{s.device}/{s.metric}", s.device, group, s.t_ms, s.values, windows))
    return cases


def _nab_time(text: str) -> int:
    text = text.strip()
    for fmt in (NAB_TIME_FORMAT, NAB_TIME_FORMAT + ".%f"):
        try:
            return int(datetime.strptime(text, fmt).replace(tzinfo=UTC).timestamp() * 1000)
        except ValueError:
            continue
    raise ConfigError(f"not a NAB timestamp (YYYY-MM-DD HH:MM:SS[.ffffff]): {text!r}")


def _fmt_nab(t_ms: int) -> str:
    return datetime.fromtimestamp(t_ms / 1000, tz=UTC).strftime(NAB_TIME_FORMAT)


def load_nab(root: Path, labels: Path | None = None) -> list[Case]:
    """A folder in the Numenta Anomaly Benchmark layout: ``data/<category>/<name>.csv`` (columns
    ``timestamp,value``) and ``labels/combined_windows.json`` (``{"<category>/<name>.csv": [[start, end],
    ...]}``, UTC, the end second included). Windows have no kind: they are counted under their category."""
    labels = labels or root / "labels" / "combined_windows.json"
    try:
        windows_doc = json.loads(labels.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read NAB labels {str(labels)!r}: {exc}") from exc
    if not isinstance(windows_doc, dict):
        raise ConfigError(f"{labels}: expected an object of file -> windows")
    cases = []
    for rel, wins in sorted(windows_doc.items()):
        path = root / "data" / rel
        category = rel.split("/", 1)[0] if "/" in rel else "nab"
        try:
            with path.open(newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
        except OSError as exc:
            raise ConfigError(f"cannot read NAB data file {str(path)!r}: {exc.strerror}") from exc
        points = sorted((_nab_time(r["timestamp"]), float(r["value"])) for r in rows)
        windows = [Window(category, _nab_time(a), _nab_time(b) + 1000) for a, b in wins]  # NAB ends are inclusive
        cases.append(Case(rel, rel, category, [t for t, _ in points], [x for _, x in points], windows))
    return cases


def write_nab(cases: Sequence[Case], root: Path, category: str = "sim") -> None:
    """Write cases in the NAB layout (see :func:`load_nab`), windows ending at their last labelled second."""
    (root / "data" / category).mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    labels: dict[str, list[list[str]]] = {}
    for case in cases:
        rel = f"{category}/{case.name.replace('/', '_')}.csv"
        with (root / "data" / rel).open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["timestamp", "value"])
            for t, x in zip(case.t_ms, case.values, strict=True):
                w.writerow([_fmt_nab(t), repr(x)])
        labels[rel] = [[_fmt_nab(win.start_ms), _fmt_nab(max(win.start_ms, win.end_ms - 1))] for win in case.windows]
    text = json.dumps(labels, indent=2, sort_keys=True) + "\n"
    (root / "labels" / "combined_windows.json").write_text(text, encoding="utf-8")


# --- command line ----------------------------------------------------------------------------------


def _spec_from(config: Path | None) -> AnomalySpec:
    if config is None:
        return AnomalySpec(enabled=True)
    try:
        with config.open("rb") as f:
            doc = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {str(config)!r}: {exc}") from exc
    return parse_anomaly({"anomaly": doc.get("anomaly", {})})


def _scenario(args: argparse.Namespace) -> object:
    from sim.anomalies import ScenarioSpec, scenario_from_mapping

    spec = ScenarioSpec()
    if args.scenario is not None:
        with Path(args.scenario).open("rb") as f:
            spec = scenario_from_mapping(tomllib.load(f))
    changes: dict[str, object] = {}
    if args.seed is not None:
        changes["seed"] = args.seed
    if args.devices is not None:
        changes["devices"] = args.devices
    if args.days is not None:
        changes["days"] = args.days
    return replace(spec, **changes) if changes else spec  # type: ignore[arg-type]


def _describe(scenario: object) -> str:
    from sim.anomalies import ScenarioSpec

    if not isinstance(scenario, ScenarioSpec):
        return repr(scenario)
    s = scenario
    kinds = "every kind in turn" if s.mixed else "one kind each"
    return (
        f"seed {s.seed}, {s.devices} devices x {', '.join(s.metrics)}, {s.days:g} days every "
        f"{s.interval_ms / 1000:g} s, {s.per_series} anomalies per series, {kinds}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.anomaly.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("source", nargs="?", default="sim", choices=["sim", "nab", "export-nab", "skab"])
    parser.add_argument("path", nargs="?", help="nab, skab: the data folder; export-nab: where to write it")
    parser.add_argument("--config", type=Path, help="a gateway TOML file: its [anomaly] settings are scored")
    parser.add_argument("--scenario", help="sim: a scenario TOML (sim/labelled/anomaly_*.toml)")
    parser.add_argument("--seed", type=int, help="sim: the scenario's seed")
    parser.add_argument("--devices", type=int, help="sim: number of devices")
    parser.add_argument("--days", type=float, help="sim: days of event time per series")
    parser.add_argument("--labels", type=Path, help="nab: the windows JSON (default labels/combined_windows.json)")
    parser.add_argument("--tolerance", default="15m", help="an alert up to this long after a window still counts")
    parser.add_argument("--gap-alerts", action="store_true", help="count the first reading after a gap as an alert")
    args = parser.parse_args(argv)
    try:
        anomaly = _spec_from(args.config)
        tolerance = parse_duration(args.tolerance, "--tolerance")
        if args.source == "skab":
            from .skab import evaluate_skab, format_tables, load_skab

            if not args.path:
                parser.error("skab needs the SKAB data folder (e.g. ../shared/data/skab)")
            files = load_skab(Path(args.path))
            print(f"SKAB at {args.path}; detector: {anomaly.detector}\n")
            print(format_tables(evaluate_skab(files, anomaly)))
            return 0
        if args.source == "nab":
            if not args.path:
                parser.error("nab needs the NAB folder")
            cases = load_nab(Path(args.path), args.labels)
            title = f"NAB layout at {args.path}: {len(cases)} files"
        else:
            scenario = _scenario(args)
            cases = sim_cases(scenario)
            if args.source == "export-nab":
                if not args.path:
                    parser.error("export-nab needs an output folder")
                write_nab(cases, Path(args.path))
                print(f"wrote {len(cases)} series to {args.path} (data/sim/*.csv, labels/combined_windows.json)")
                return 0
            title = f"simulator scenario: {len(cases)} labelled series ({_describe(scenario)})"
    except (ConfigError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = evaluate(cases, anomaly.detector, tolerance_ms=tolerance, gap_alerts=args.gap_alerts or anomaly.gap_alerts)
    print(title)
    print(f"detector: {anomaly.detector}; tolerance after a window {tolerance / 60_000:g} min\n")
    print(format_table(report))
    if args.source == "nab":
        print()
        print(format_nab(nab_sweep(cases, report)))
    if args.source == "sim" and anomaly.multivariate:
        print(format_devices(evaluate_devices(cases, anomaly, tolerance_ms=tolerance)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
