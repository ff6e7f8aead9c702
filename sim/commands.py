"""The scenario subcommands of ``edgekit-sim``: ``scenarios``, ``simulate``, ``verify``, ``report``.

Also :func:`prepare`, the one place a scenario becomes a run with its ground truth (used by the CLI,
the tests, the demo and the benchmark).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from .errors import SimError, SpecError
from .inprocess import gateway_config, run_in_process
from .latency import Setting, SweepRow, grid, latency_doc, sweep
from .publish import parse_broker_url
from .realtime import replay
from .reference import Expected, engine_spec, expect
from .report import write_report
from .scenario import Scenario, check_metric_types, load_scenario, parse_duration, scenario_names
from .verify import Verdict, compare, influx_rows, truth_doc
from .world import Run, simulate

__all__ = [
    "SERVICE_SECTIONS",
    "Prepared",
    "TradeOff",
    "load_gateway",
    "parse_setting_list",
    "plan_tradeoff",
    "prepare",
    "report_scenario",
    "run_command",
]

SERVICE_SECTIONS: Final = frozenset({"mqtt", "influx", "log", "state", "metrics"})
"""Sections of a gateway configuration that say where it connects, logs and keeps state: ``simulate
--gateway-config`` applies every other one (windows, watermarks, patterns, anomaly detection, metric types,
devices, limits)."""


@dataclass(slots=True)
class Prepared:
    scenario: Scenario
    gateway: dict[str, Any]
    run: Run
    expected: Expected

    def truth(self) -> dict[str, Any]:
        """The ground truth as plain JSON values (as read back from a ``--truth`` file)."""
        doc: dict[str, Any] = json.loads(json.dumps(truth_doc(self.run, self.expected, self.gateway)))
        return doc


def prepare(
    scenario: Scenario,
    gateway: Mapping[str, Any] | None = None,
    now_ms: Callable[[], int] | None = None,
) -> Prepared:
    """Simulate the scenario and compute what the gateway must write (with ``gateway``'s engine, windows and
    metric types, default the scenario's ``[gateway]`` table)."""
    gw = dict(scenario.gateway if gateway is None else gateway)
    check_metric_types(scenario.sequences, gw)
    spec = engine_spec(gw)
    run = simulate(scenario, now_ms)
    return Prepared(scenario, gw, run, expect(run, spec))


def report_scenario(path: Path, name: str = "flaky-network") -> tuple[Path, Verdict]:
    """Run a shipped scenario in-process, check the pipeline's output against the truth, write its report."""
    prep = prepare(load_scenario(name))
    res = run_in_process(prep.run, gateway_config(prep.gateway, prep.scenario.prefix))
    assert res.store is not None
    truth = prep.truth()
    verdict = compare(truth, res.store.found())
    return write_report(path, truth, verdict, res.alerts).resolve(), verdict


def load_gateway(path: Path) -> dict[str, Any]:
    """A gateway TOML's tables that shape what it makes of the traffic (every one but :data:`SERVICE_SECTIONS`)."""
    return _load_gateway(path)


def _load_gateway(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as exc:
        raise SimError(f"cannot read the gateway configuration {str(path)!r}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: not valid TOML: {exc}") from exc
    # everything that shapes what the gateway makes of the traffic; where it connects and logs does not matter
    return {k: v for k, v in doc.items() if k not in SERVICE_SECTIONS}


def _write_json(path: Path, doc: object) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(doc, separators=(",", ":")) + "\n", encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        raise SimError(f"cannot write {path}: {exc}") from exc


def _read_truth(path: Path) -> dict[str, Any]:
    try:
        doc: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SimError(f"cannot read the truth file {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise SpecError(f"{path} is not a truth file: {exc}") from exc
    if doc.get("format") != "edgekit-sim-truth/2":
        raise SpecError(f"{path} is not a scenario truth file (format {doc.get('format')!r})")
    return doc


def run_command(args: argparse.Namespace, env: Mapping[str, str], now_ms: Callable[[], int]) -> int:
    if args.command == "scenarios":
        for name in scenario_names():
            sc = load_scenario(name)
            print(f"{name:<20} {sc.devices:>5} devices  {sc.duration_ms // 60_000:>4} min  {sc.description}")
        return 0
    if args.command == "simulate":
        return _simulate(args, env, now_ms)
    if args.command == "verify":
        truth = _read_truth(args.truth)
        found = compare(truth, influx_rows(args.influx_url, args.database))
        print(f"{truth['scenario']['name']}: InfluxDB {args.influx_url} database {args.database!r}")
        print(found.render())
        if args.json is not None:
            _write_json(args.json, found.to_json())
        return 0 if found.ok else 1
    if args.command == "report":
        truth = _read_truth(args.truth)
        checked = compare(truth, influx_rows(args.influx_url, args.database)) if args.influx_url else None
        try:
            path = write_report(args.out, truth, checked)
        except OSError as exc:
            raise SimError(f"cannot write {args.out}: {exc}") from exc
        print(path.resolve())
        return 0
    raise SpecError(f"unknown command {args.command!r}")  # pragma: no cover - argparse checks


def _span(ms: int) -> str:
    """``1h``, ``90m``, ``45s``: a scenario's span as its files write it."""
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms >= size and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms / 1000:g}s"


def _latency_summary(doc: Mapping[str, Any]) -> str:
    """A line per window and result kind: how many, and their median latency from event time and from arrival."""
    lines = [f"latency ({doc['setting']}):"]
    for r in doc["measurement"]["latency"]:
        lines.append(
            f"  {r['window']:<16} {r['kind']:<12} {r['results']:>6} results, from event time p50 "
            f"{r['event_p50'] / 1000:.1f} s p95 {r['event_p95'] / 1000:.1f} s, from arrival p50 "
            f"{r['arrival_p50'] / 1000:.1f} s p95 {r['arrival_p95'] / 1000:.1f} s"
        )
    for w, c in doc["measurement"]["windows"].items():
        lines.append(
            f"  {w:<16} {c['late']} of {c['readings']} readings too late for any result "
            f"({100 * c['late_share']:.2f} %), {c['pending']} pending at the end"
        )
    return "\n".join(lines)


def _simulate(args: argparse.Namespace, env: Mapping[str, str], now_ms: Callable[[], int]) -> int:
    sc = load_scenario(args.scenario).scaled(
        devices=args.devices,
        duration_ms=None if args.duration is None else parse_duration(args.duration, "--duration"),
        seed=args.seed,
        start_ms=args.start_ms,
        prefix=args.prefix,
    )
    gateway = _load_gateway(args.gateway_config) if args.gateway_config else None
    prep = prepare(sc, gateway, now_ms)
    run, exp = prep.run, prep.expected
    c = run.counts()
    print(
        f"{sc.name}: {c['devices']} devices, {c['readings']} readings in {c['deliveries']} deliveries "
        f"(simulated in {run.elapsed_s:.2f} s); expect {len(exp.readings)} raw readings, {len(exp.windows)} "
        f"window points, {len(exp.late)} late records, {sum(exp.dead_letters.values())} dead letters"
    )
    truth = prep.truth()
    verdict: Verdict | None = None
    sweep_asked = bool(args.trigger or args.bound or args.lateness)
    if (args.measure or sweep_asked) and not args.in_process:
        raise SpecError("--measure (and --bound, --lateness, --trigger) need --in-process: the measurement runs in "
                        "simulated gateway time")  # fmt: skip
    if args.in_process:
        if args.measure or sweep_asked:
            settings = (
                grid(
                    parse_setting_list(args.bound, "--bound"),
                    parse_setting_list(args.lateness, "--lateness"),
                    parse_setting_list(args.trigger, "--trigger", off=True),
                )
                if sweep_asked
                else []
            )
            truth["latency"] = latency_doc(run, prep.gateway, settings)
            print(_latency_summary(truth["latency"]))
        res = run_in_process(run, gateway_config(prep.gateway, sc.prefix))
        assert res.store is not None
        verdict = compare(truth, res.store.found())
        print(f"in-process: {len(run.deliveries)} deliveries through the pipeline in {res.elapsed_s:.2f} s")
        print(verdict.render())
        if args.report is not None:
            print(f"report: {write_report(args.report, truth, verdict, res.alerts).resolve()}")
    else:
        from gateway.progress import Progress

        broker = parse_broker_url(args.broker, env)
        n = len(run.deliveries)
        pace = "as fast as the broker takes them"
        if args.speed > 0:
            secs = sc.duration_ms / 1000 / args.speed
            pace = f"{_span(sc.duration_ms)} of virtual time at {args.speed:g}x: about {secs:.0f} s"
        print(f"publishing {n} messages to {broker.describe()} ({pace})", flush=True)
        bar = Progress("simulate: messages", n)
        client_id = args.client_id or f"edgekit-sim-{os.getpid()}"
        took = asyncio.run(replay(run.deliveries, broker, client_id=client_id, speed=args.speed, progress=bar.update))
        bar.done()
        print(f"published {n} messages to {broker.describe()} in {took:.2f} s")
    if args.truth is not None:
        _write_json(args.truth, truth)
        print(f"truth: {args.truth}")
    return 0 if verdict is None or verdict.ok else 1


def parse_setting_list(value: str, where: str, *, off: bool = False) -> list[int | None]:
    """``"0,5s,1m"`` -> ``[0, 5000, 60000]``; an empty value -> ``[None]`` (as configured); with ``off``, the word
    ``off`` is 0 (no early trigger)."""
    out: list[int | None] = []
    for item in (v.strip() for v in value.split(",")):
        if not item:
            continue
        if item == "0" or (off and item == "off"):
            out.append(0)
        else:
            out.append(parse_duration(item, where))
    return out or [None]


@dataclass(slots=True)
class TradeOff:
    """The trade-off table of a scenario: what was run and a row per setting."""

    scenario: Scenario
    gateway: dict[str, Any]
    readings: int
    deliveries: int
    rows: list[SweepRow]

    def as_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario.name,
            "devices": self.scenario.devices,
            "duration_ms": self.scenario.duration_ms,
            "seed": self.scenario.seed,
            "readings": self.readings,
            "deliveries": self.deliveries,
            "windows": self.gateway.get("windows", []),
            "rows": [{**r.as_dict(), "label": r.setting.label()} for r in self.rows],
        }


def plan_tradeoff(
    scenario: str,
    gateway: Mapping[str, Any] | None,
    settings: list[Setting],
    *,
    devices: int | None = None,
    duration_ms: int | None = None,
    seed: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> TradeOff:
    """Simulate ``scenario`` (a name or a TOML path) once and measure it for every setting, applied to every window
    of ``gateway`` (the scenario's own ``[gateway]`` tables when None or when it has no windows nor patterns)."""
    sc = load_scenario(scenario).scaled(devices=devices, duration_ms=duration_ms, seed=seed, start_ms=PLAN_START_MS)
    gw = dict(gateway or {})
    if not gw.get("windows") and not gw.get("patterns"):
        gw = {**dict(sc.gateway), **{k: v for k, v in gw.items() if k not in ("windows", "patterns")}}
    check_metric_types(sc.sequences, gw)
    run = simulate(sc)
    rows = sweep(run, gw, settings, progress=progress)
    return TradeOff(sc, gw, len(run.readings), len(run.deliveries), rows)


PLAN_START_MS: Final = 1_767_225_600_000
"""2026-01-01T00:00:00Z: the scenario's start for a plan, so that the same command gives the same table."""
