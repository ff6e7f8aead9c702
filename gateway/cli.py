"""``edgekit-gateway`` / ``python -m gateway``: run, check, plan, replay and top."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import logging
import os
import signal
import sqlite3
import sys
from pathlib import Path
from typing import Any

from .app import Gateway, state_path
from .config import Config, load_config, redact_url, secret_values
from .engine.config import parse_duration
from .errors import ConfigError, StateError
from .logs import Redactor, setup_logging
from .plan import run_plan
from .progress import Progress
from .protocol import METRIC_RE
from .record import RecordError, count_records
from .replay import replay
from .salvage import recover_state
from .state import HOLDS, LOG_HOLDS, StateFileError, file_error, log_path
from .top import run_top

__all__ = ["build_parser", "main"]


def _describe(cfg: Config) -> str:
    m, i = cfg.mqtt, cfg.influx
    target = (
        f"InfluxDB 1.x at {i.url}, database {i.database!r}"
        + (" (created if missing)" if i.create_database else " (must exist)")
        + (f", rp {i.retention_policy!r}" if i.retention_policy else "")
        + (f", user {i.username!r} (password {'set' if i.password else 'NOT set'})" if i.username else "")
        if i.target == "v1"
        else f"InfluxDB v2 API at {i.url}, org {i.org!r}, bucket {i.bucket!r}, token {'set' if i.token else 'NOT set'}"
    )
    return "\n".join(
        [
            f"broker:    mqtt://{m.host}:{m.port} as {m.client_id!r}"
            + (f" (user {m.username!r}, password {'set' if m.password else 'NOT set'})" if m.username else ""),
            f"subscribe: {', '.join(m.subscriptions)} at QoS {m.qos}, persistent session: {not m.clean_session}",
            f"write to:  {target}, batches of {i.batch_size} every {i.flush_interval_ms} ms",
            f"limits:    {cfg.limits.max_bytes} bytes, {cfg.limits.max_readings} readings a message",
            _describe_times(cfg),
            "devices:   "
            + ("any" if cfg.devices.allow_unknown else f"only {len(cfg.devices.known)} known devices")
            + f", state for at most {cfg.devices.max_devices}",
            *_describe_windows(cfg),
            _describe_watermark(cfg),
            f"patterns:  {', '.join(p.name for p in cfg.patterns) or 'none'}",
            *_describe_joins(cfg),
            *_describe_groups(cfg),
            _describe_anomaly(cfg),
            *_describe_notify(cfg),
            f"state:     {state_path(cfg)} and its ingest log {log_path(state_path(cfg)).name} (checkpoint every "
            f"{cfg.state.checkpoint_interval_s:g} s, "
            f"spool up to {cfg.state.spool_max_bytes / 2**20:g} MiB), sync {cfg.state.sync}",
            "metrics:   "
            + (
                f"http://{cfg.metrics.host}:{cfg.metrics.port}/metrics and /healthz"
                if cfg.metrics.port
                else "off (metrics.port = 0)"
            ),
            f"log:       {cfg.log.level}, {cfg.log.format}",
            *_describe_env(cfg),
        ]
    )


def _describe_groups(cfg: Config) -> list[str]:
    """Each ``[groups]`` group with its members and, for the declared devices, which of them it takes now."""
    if not cfg.groups.groups:
        return []
    index = cfg.groups.index()
    declared = sorted(set(cfg.devices.known) | set(cfg.devices.sites))
    lines = []
    for g in cfg.groups.groups:
        taken = [d for d in declared if g.name in index.groups_of(d, cfg.devices.sites.get(d))]
        line = f"group:     {g.name} = {', '.join(g.members)}"
        if declared:
            line += f" (declared devices in it: {', '.join(taken) or 'none'})"
        lines.append(line)
    if declared:
        none = [d for d in declared if not index.groups_of(d, cfg.devices.sites.get(d))]
        if none:
            lines.append(f"group:     in no group (group operators ignore them): {', '.join(none)}")
    return lines


def _describe_notify(cfg: Config) -> list[str]:
    """Each ``[[notify]]`` target with its service (the URL's scheme: the rest may be secret) and its filter."""
    if not cfg.notify:
        return []
    items = []
    for n in cfg.notify:
        only = [f"{n.min_severity} and above"] if n.min_severity != "info" else []
        for what, pats in (("sources", n.sources), ("names", n.names), ("sites", n.sites), ("devices", n.devices)):
            if pats:
                only.append(f"{what} {'|'.join(pats)}")
        items.append(f"{n.name} ({n.url.partition(':')[0]}://..., {', '.join(only) or 'every alert'})")
    return [f"notify:    {'; '.join(items)}"]


def _describe_times(cfg: Config) -> str:
    """Both the decoder (``[limits]``) and the engine (``[engine]``) refuse readings with impossible times: the
    tighter of each pair is what holds."""
    lim, eng = cfg.limits, cfg.engine
    ahead = min(lim.max_future_ms, eng.max_future_ms)
    before = max(lim.min_time_ms, eng.min_time_ms)
    since = datetime.datetime.fromtimestamp(before / 1000, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return (
        f"times:     a reading more than {_seconds(ahead)} ahead of the gateway clock or before {since} is refused "
        f" (limits.max_future_ms {lim.max_future_ms}, engine.max_future "
        f"{_seconds(eng.max_future_ms)}; limits.min_time_ms {lim.min_time_ms}, engine.min_time_ms {eng.min_time_ms})"
    )


def _describe_env(cfg: Config) -> list[str]:
    """Each key set from the environment, with the variable and the value it gave (a URL shown redacted)."""
    lines = []
    for key, name in cfg.from_env.items():
        node: Any = cfg.raw
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        value = redact_url(node) if key.endswith(".url") and isinstance(node, str) else node
        lines.append(f"from env:  {key} = {value!r} ({name})")
    return lines


def _seconds(ms: int) -> str:
    return f"{ms / 1000:g} s"


def _describe_joins(cfg: Config) -> list[str]:
    return [
        f"join:      {j.name} on {j.key}: {j.between}"
        + (f", allowed lateness {j.allowed_lateness_ms} ms" if j.allowed_lateness_ms else "")
        + f", at most {j.max_events} events a key"
        for j in cfg.joins
    ]


def _describe_watermark(cfg: Config) -> str:
    w = cfg.engine.watermark
    line = (
        f"watermark: {w.mode} (per {'device' if w.mode == 'device' else 'whole fleet'}), out of orderness "
        f"{_seconds(w.out_of_orderness_ms)}, idle after {_seconds(w.idle_timeout_ms)} (or {w.idle_factor:g} x the "
        f"sleep cycle, + {_seconds(w.idle_grace_ms)}); unsynced readings: {cfg.engine.unsynced}"
    )
    for c in w.classes:
        bound = _seconds(c.out_of_orderness_ms)
        line += f"\n           class {c.name} ({', '.join(c.devices)}): out of orderness {bound}"
    return line


def _describe_anomaly(cfg: Config) -> str:
    a = cfg.anomaly
    if not a.enabled:
        return "anomaly:   off (no [anomaly] section)"
    d = a.detector
    return (
        f"anomaly:   on, {', '.join(a.metrics) or 'every numeric metric'}: {d.baseline} baseline, z-score threshold "
        f"{d.threshold:g} after {d.warmup} readings, stuck after {d.stuck_points or 'never'}; writes {a.write}"
        + (f"; overrides for {', '.join(sorted(a.overrides))}" if a.overrides else "")
    )


def _describe_windows(cfg: Config) -> list[str]:
    if not cfg.engine.windows:
        return ["windows:   none (raw readings only)"]
    lines = []
    for w in cfg.engine.windows:
        shape = {
            "tumbling": f"tumbling {w.size_ms / 1000:g} s",
            "sliding": f"sliding {w.size_ms / 1000:g} s every {w.slide_ms / 1000:g} s",
            "session": f"session gap {w.gap_ms / 1000:g} s",
        }[w.kind]
        lines.append(
            f"window:    {w.name}: {shape} per {w.key} over {', '.join(w.metrics)} "
            f"({', '.join(w.aggregates)}), allowed lateness {w.allowed_lateness_ms / 1000:g} s"
        )
        early = [f"every {w.early_every_ms / 1000:g} s"] if w.early_every_ms else []
        early += [f"every {w.early_count} readings"] if w.early_count else []
        if early:
            lines.append(
                f"           provisional results {' and '.join(early)} ({w.provisional})"
                + (", published on MQTT" if w.publish else "")
            )
        elif w.publish:
            lines.append("           results published on MQTT")
        rel = w.relative
        if rel is not None:
            lines.append(
                f"           each device's {rel.value} against the {rel.baseline} of the others in "
                f"{', '.join(rel.groups) or 'each of its groups'} (window_relative)"
                + (f", alert above {rel.alert_above:g}" if rel.alert_above is not None else "")
            )
    return lines


async def _run(cfg: Config, stats_file: Path | None, record: Path | None) -> int:
    """Run until SIGINT or SIGTERM; the exit code: 130 after SIGINT (interrupted, as a shell counts it), else 0."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    got: list[int] = []

    def on_signal(sig: signal.Signals) -> None:
        got.append(sig)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    await Gateway(cfg, stats_file=stats_file, record=record).run(stop)
    return 130 if got and got[0] == signal.SIGINT else 0


# --- deploy: the command line (run, check, plan, replay, top) ------------------------------------------
# Exit codes, for every command: 0 done, 1 failed (a file or a service), 2 usage or configuration error,
# 3 the state file cannot be used (damaged, unwritable, or written with another configuration: starting
# again does not help, so the systemd unit does not restart on it), 130 interrupted.
EXIT_STATE = 3

PROG = "edgekit-gateway"
STATS_ENV = "EDGEKIT_STATS_FILE"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="The edgekit gateway: MQTT -> event-time windows -> InfluxDB.",
        epilog="Exit codes: 0 done, 1 failed, 2 usage or configuration error, 3 state file unusable (damaged, "
        f"unwritable or from another configuration; '{PROG} recover' salvages a damaged one), 130 interrupted. "
        f"Run '{PROG} COMMAND --help' for a command's options.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_: str, description: str, *, config: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=description)
        if config:
            p.add_argument(
                "--config", "-c", type=Path, metavar="FILE", help="TOML file (default: only EDGEKIT_* env and defaults)"
            )
        return p

    stats_default = os.environ.get(STATS_ENV)
    run = command("run", "run the gateway until SIGINT/SIGTERM", "Run the gateway until SIGINT or SIGTERM.")
    run.add_argument(
        "--stats-file",
        type=Path,
        metavar="FILE",
        default=Path(stats_default) if stats_default else None,
        help=f"write counters and the live view as JSON here every second (default ${STATS_ENV}); 'top' reads it",
    )
    run.add_argument(
        "--record",
        type=Path,
        metavar="FILE",
        help="append every received MQTT message to FILE (JSON lines: topic, payload base64, received_ms)",
    )
    check = command(
        "check",
        "validate a configuration and say what it will do",
        "Validate a configuration and say everything the gateway will run. With --probe, also try the broker's "
        "login and a write to the database or bucket (an empty one: nothing is written); exit 1 when one fails.",
    )
    check.add_argument(
        "--probe", action="store_true", help="connect to the broker and InfluxDB: login, database, write permission"
    )
    command(
        "recover",
        "salvage a damaged state file into a fresh one, say what was kept and what is lost",
        "Copy the state file of this configuration (<state.dir>/<client id>.db: ingest log, checkpoint, spool) "
        "aside as <file>.damaged-<time>, salvage every readable log row, spool chunk and the checkpoint (if it "
        "parses and restores) into a fresh file in its place, and say exactly what was kept and what is lost. "
        "Run it with the gateway stopped. Exit 0 when the fresh file is in place, 1 when nothing was changed.",
    )
    plan = command(
        "plan",
        "measure what a configuration does for a fleet: points per hour, state size; or, with --scenario, its "
        "latency against its accuracy",
        "Run a synthetic fleet through the real pipeline and report points per hour by measurement and the "
        "size of the state (what a checkpoint holds). With --scenario: run a simulator scenario (sleepy boards, "
        "delays, disorder) through the configuration's windows in simulated gateway time, once per setting of "
        "--bound, --lateness and --trigger, and print the trade-off table: how long results take, how wrong "
        "they are, the share of readings too late for any result, the state's size.",
    )
    plan.add_argument("--devices", type=int, default=None, help="boards in the fleet (default 100; with --scenario: "
                      "the scenario's)")  # fmt: skip
    plan.add_argument("--interval", default="60s", help="event time between readings of a board (default 60s)")
    plan.add_argument("--batch", type=int, default=10, help="readings per message, 1-64 (default 10)")
    plan.add_argument("--metrics", default="temp_c,rh", help="comma-separated metric names (default temp_c,rh)")
    plan.add_argument("--hours", type=float, default=1.0, help="event time to measure, after the warm-up (default 1)")
    plan.add_argument("--json", action="store_true", help="print the result as JSON")
    tr = plan.add_argument_group("latency against accuracy (--scenario)")
    tr.add_argument("--scenario", metavar="NAME", help="a simulator scenario (edgekit-sim scenarios) or its TOML file")
    tr.add_argument("--bound", default="", metavar="LIST", help="watermark bounds to try, e.g. 0,5s,1m (default: "
                    "each window's as configured)")  # fmt: skip
    tr.add_argument("--lateness", default="", metavar="LIST", help="allowed lateness to try, e.g. 0,5m,30m")
    tr.add_argument("--trigger", default="", metavar="LIST", help="early-trigger intervals to try, e.g. off,10s,1m")
    tr.add_argument("--duration", metavar="SPAN", help="event time to simulate (default: the scenario's)")
    tr.add_argument("--seed", type=int, help="the scenario's random seed (default: its own)")
    replay = command(
        "replay",
        "feed a recording of MQTT messages through the pipeline into InfluxDB",
        "Feed a recording (from 'run --record') through the pipeline into the configured InfluxDB. Points are "
        "deterministic: replaying twice overwrites, it does not add.",
    )
    replay.add_argument("file", type=Path, metavar="FILE", help="JSON lines: topic, payload (base64), received_ms")
    replay.add_argument("--dry-run", action="store_true", help="run the pipeline, write nothing")
    replay.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    top = command(
        "top",
        "live terminal view of a running gateway (watermarks, rates, windows, alerts)",
        "Redraw a running gateway's stats file every second: per-device watermark lag and rates, the latest "
        "windows, the recent alerts. q or Ctrl-C quits.",
        config=False,
    )
    top.add_argument(
        "--stats-file",
        type=Path,
        metavar="FILE",
        default=Path(stats_default) if stats_default else None,
        help=f"the gateway's --stats-file (default ${STATS_ENV})",
    )
    top.add_argument("--interval", type=float, default=1.0, help="seconds between redraws (default 1)")
    top.add_argument("--once", action="store_true", help="print one frame without escapes and exit")
    return parser


def _fail(message: str, code: int = 1) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return code


def _state_failure(exc: StateError, config: Path | None) -> int:
    """A state file the gateway cannot use: what and where, what it holds, and what to do; no traceback."""
    lines = [str(exc)]
    if isinstance(exc, StateFileError) and exc.damaged:
        where = f" --config {config}" if config is not None else ""
        holds = LOG_HOLDS if exc.path.name.endswith("-log") else HOLDS
        lines.append(
            f"it holds {holds}. The gateway does not start on a damaged state file: '{PROG} recover{where}' "
            "salvages what is readable into a fresh file, keeps this one aside and says what is lost "
            "(docs/reliability.md, 'Damaged state file')."
        )
    lasting = not isinstance(exc, StateFileError) or exc.lasting
    return _fail("\n".join(lines), EXIT_STATE if lasting else 1)


def _recover(cfg: Config) -> int:
    try:
        report = recover_state(cfg)
    except StateError as exc:
        return _fail(str(exc), 1)
    except OSError as exc:  # a full disk while copying, say: the copies made so far are removed again
        return _fail(f"recover failed: {exc}", 1)
    print("\n".join(report.lines()))
    return 0


def _plan_scenario(args: argparse.Namespace) -> int:
    """``plan --scenario``: the trade-off table (sim/latency.py)."""
    from sim.commands import load_gateway, parse_setting_list, plan_tradeoff
    from sim.errors import SimError, SpecError
    from sim.latency import grid, render_table

    try:
        settings = grid(
            parse_setting_list(args.bound, "--bound"),
            parse_setting_list(args.lateness, "--lateness"),
            parse_setting_list(args.trigger, "--trigger", off=True),
        )
        gateway = load_gateway(args.config) if args.config is not None else None
        duration = None if args.duration is None else parse_duration(args.duration, "--duration")
        bar = Progress("plan: settings", len(settings), enabled=not args.json)
        res = plan_tradeoff(
            args.scenario, gateway, settings, devices=args.devices, duration_ms=duration, seed=args.seed,
            progress=lambda done, total: bar.update(done, total),
        )  # fmt: skip
        bar.done()
    except (SpecError, ConfigError) as exc:
        return _fail(str(exc), 2)
    except SimError as exc:
        return _fail(str(exc))
    if args.json:
        print(json.dumps(res.as_dict(), indent=1))
        return 0
    sc = res.scenario
    print(
        f"plan: scenario {sc.name} ({sc.description}): {sc.devices} devices, {sc.duration_ms / 60_000:g} min of "
        f"event time, seed {sc.seed}; {res.readings} readings in {res.deliveries} messages, through the pipeline "
        f"once per setting in simulated gateway time"
    )
    for w in res.gateway.get("windows", []):
        print(f"window {w.get('name')}: {w.get('kind', 'tumbling')} {w.get('size', w.get('gap', ''))}, "
              f"metrics {', '.join(w.get('metrics', []))}")  # fmt: skip
    print(render_table(res.rows))
    print(
        "final p50/p95: a window's final result after the event time of its newest reading; from arrival: after "
        "its last reading arrived; first value: a window's first result of any kind (a provisional one with a "
        "trigger). provisional err: against the window's final, mean relative error of its main aggregate and the "
        "readings it lacked. finals off: finals not equal to the window over every reading that reached the "
        "gateway (late ones included), + windows with no result at all; after updates: the same for the last "
        "result. late share: readings too late for any result. state max: the engine's state as JSON."
    )
    return 0


def _plan(cfg: Config, args: argparse.Namespace) -> int:
    if args.scenario is not None:
        return _plan_scenario(args)
    if args.devices is None:
        args.devices = 100
    try:
        interval_ms = parse_duration(args.interval, "--interval")
    except ConfigError as exc:
        return _fail(str(exc), 2)
    metrics = tuple(m.strip() for m in args.metrics.split(",") if m.strip())
    if args.devices < 1 or not 1 <= args.batch <= cfg.limits.max_readings or args.hours <= 0 or interval_ms < 1:
        return _fail(
            f"--devices >= 1, --batch 1-{cfg.limits.max_readings}, --hours > 0 and --interval > 0, "
            f"got {args.devices}, {args.batch}, {args.hours}, {args.interval!r}",
            2,
        )
    if not metrics or not all(METRIC_RE.fullmatch(m) for m in metrics):
        return _fail(f"--metrics: expected names like temp_c,rh, got {args.metrics!r}", 2)
    bar = Progress("plan: messages", 1, enabled=not args.json)
    res = run_plan(
        cfg,
        devices=args.devices,
        metrics=metrics,
        interval_ms=interval_ms,
        batch=args.batch,
        hours=args.hours,
        progress=lambda done, total: bar.update(done, total),
    )
    bar.done()
    if args.json:
        print(json.dumps(res.as_dict(), indent=1))
        return 0
    total = res.total_per_hour
    print(
        f"plan: {res.devices} devices x {len(metrics)} metrics, a reading every {interval_ms / 1000:g} s in batches "
        f"of {res.batch}; {res.hours:g} h of event time measured after a {res.warmup_ms / 60_000:.0f} min warm-up "
        f"({res.messages} messages through the real pipeline)"
    )
    if res.devices_note is not None:
        print(f"devices:   {res.devices_note}")
    print("\n".join(_describe_windows(cfg)))
    print("points per hour:")
    for name, n in sorted(res.points.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<18} {n:>10}")
    print(f"  {'total':<18} {total:>10}   ({total / 3600:.1f} points/s, {total * 24:,} a day)")
    print(
        f"state: engine {res.engine_state_bytes / 1024:.1f} KiB, deduplication {res.dedup_state_bytes / 1024:.1f} KiB "
        f"(as JSON, what a checkpoint stores), {res.engine_state_bytes // res.devices} bytes of engine state a device"
    )
    return 0


def _replay(cfg: Config, args: argparse.Namespace) -> int:
    try:
        total = count_records(args.file)
        bar = Progress("replay: messages", total, enabled=not args.quiet)
        res = asyncio.run(replay(cfg, args.file, dry_run=args.dry_run, progress=bar.update))
        bar.done()
    except RecordError as exc:
        return _fail(str(exc))
    p = res.pipeline
    print(
        f"replayed {res.records} messages from {args.file}: {p['readings_accepted']} readings accepted, "
        f"{p['duplicates']} duplicates, {p['dead_letters']} dead letters, {p['window_results']} window results, "
        f"{p['late_readings']} late readings"
    )
    if args.dry_run:
        print("dry run: nothing written")
        return 0
    s = res.sink
    print(
        f"wrote {s['points_written']} points in {s['batches_written']} batches, {s['points_refused']} refused, "
        f"{s['points_unwritable']} unwritable (each a dead letter)"
    )
    return 1 if res.refused else 0


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse printed the help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else 2
    if args.command == "top":
        if args.stats_file is None:
            return _fail(f"top: say where the stats file is: --stats-file FILE or ${STATS_ENV}", 2)
        return run_top(args.stats_file, interval_s=args.interval, once=args.once)
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        return _fail(f"configuration error: {exc}", 2)
    try:
        if args.command == "check":
            redact = Redactor(secret_values(cfg))
            print(redact(_describe(cfg)))  # it names no secret; and if it ever did
            if not args.probe:
                return 0
            from .probe import probe_all

            found = asyncio.run(probe_all(cfg))
            print("probe:")
            for p in found:
                print(redact(p.line()))
            return 0 if all(p.ok for p in found) else 1
        if args.command == "plan":
            return _plan(cfg, args)
        if args.command == "replay":
            return _replay(cfg, args)
        if args.command == "recover":
            return _recover(cfg)
        setup_logging(cfg.log.level, cfg.log.format, secret_values(cfg))
        try:
            return asyncio.run(_run(cfg, args.stats_file, args.record))
        except ConfigError as exc:  # found at start: the database does not exist, say
            return _fail(f"configuration error: {exc}", 2)
        except RecordError as exc:
            return _fail(str(exc))
        except StateError as exc:
            return _state_failure(exc, args.config)
        except sqlite3.DatabaseError as exc:  # the state file failed while running
            return _state_failure(file_error(state_path(cfg), exc), args.config)
        except Exception:
            # through the log, whose formatter removes the secrets (a library's message may carry one)
            logging.getLogger("gateway").critical(
                "gateway stopped by an unexpected error", exc_info=True, extra={"event": "crash"}
            )
            return 1
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
