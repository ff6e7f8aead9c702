"""``edgekit-gateway`` / ``python -m gateway``: run, check, reload, plan, replay and top."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import json
import logging
import os
import signal
import sqlite3
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from .app import Gateway, state_path
from .config import Config, load_config, redact_url, secret_values
from .engine.config import parse_duration
from .errors import ConfigError, StateError
from .flinksql import DEFAULT_DIR, DEFAULT_KAFKA, FlinkRefused, SinkPaths, compile_flink_sql
from .logs import Redactor, setup_logging
from .plan import run_plan
from .progress import Progress
from .protocol import METRIC_RE
from .record import RecordError, count_records
from .replay import replay
from .salvage import recover_state
from .sizing import FLINK_SLOT_RATE, Sizing, bridge_pipeline_us, calibrate, size_fleet
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
            _describe_mode(cfg),
            f"broker:    mqtt://{m.host}:{m.port} as {m.client_id!r}"
            + (f" (user {m.username!r}, password {'set' if m.password else 'NOT set'})" if m.username else ""),
            "subscribe: nothing (sink-only mode)"
            if cfg.sink_only.enabled
            else f"subscribe: {', '.join(m.subscriptions)} at QoS {m.qos}, persistent session: {not m.clean_session}",
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


def _describe_mode(cfg: Config) -> str:
    """Standalone, bridge or sink-only (docs/scale-out.md)."""
    b, so = cfg.bridge, cfg.sink_only
    if b.enabled:
        where = (
            f"files in {b.dir} for the Flink job's files source"
            if b.to == "files"
            else f"Kafka topic {b.kafka_topic!r} at {', '.join(b.kafka_servers)} (outbox {b.dir})"
        )
        return (
            f"mode:      bridge: every accepted reading to {where}, a file complete at {b.roll_bytes / 2**20:g} MiB or "
            f"{b.roll_interval_s:g} s, committed with the checkpoint; the windows below run on the cluster (compile "
            "--target flink-sql), not here; the patterns, joins and anomaly detection run here, and readings, "
            "statuses, alerts and dead letters go to InfluxDB"
        )
    if so.enabled:
        alerts = "; no broker (the [mqtt] lines below name only the state file)"
        if so.publish:
            alerts = (
                f"; the job's alerts and published windows also on MQTT at {cfg.mqtt.host}:{cfg.mqtt.port} (publish)"
            )
        if cfg.notify:
            alerts += f" and to {len(cfg.notify)} [[notify]] target(s)"
        return (
            f"mode:      sink-only: the Flink job's results in {so.dir} (windows/, late/, alerts/, every "
            f"{so.poll_interval_s:g} s) to InfluxDB, each file once{alerts}"
        )
    return "mode:      standalone: ingest, windows, patterns and anomaly detection in this process"


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


async def _run(cfg: Config, stats_file: Path | None, record: Path | None, config_path: Path | None = None) -> int:
    """Run until SIGINT or SIGTERM (SIGHUP: read the configuration again, ``reload``); the exit code: 130 after
    SIGINT (interrupted, as a shell counts it), else 0."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    got: list[int] = []
    reloading: set[asyncio.Task[Any]] = set()

    def on_signal(sig: signal.Signals) -> None:
        got.append(sig)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    if cfg.sink_only.enabled:
        from .sinkonly import SinkOnly

        def no_reload() -> None:  # SIGHUP's default action would end the process without its final checkpoint
            logging.getLogger("gateway.sink_only").warning(
                "SIGHUP: a sink-only gateway does not reload its configuration; restart it to apply a change",
                extra={"event": "reload_refused"},
            )

        loop.add_signal_handler(signal.SIGHUP, no_reload)
        await SinkOnly(cfg, stats_file=stats_file).run(stop)
    else:
        gw = Gateway(cfg, stats_file=stats_file, record=record, config_path=config_path)

        def on_hangup() -> None:  # the outcome is in the log (the `reload` command also prints it)
            task = asyncio.create_task(gw.reload(), name="reload")
            reloading.add(task)
            task.add_done_callback(reloading.discard)

        loop.add_signal_handler(signal.SIGHUP, on_hangup)
        await gw.run(stop)
    return 130 if got and got[0] == signal.SIGINT else 0


def _reload(cfg: Config, args: argparse.Namespace) -> int:
    """``reload``: ask the running gateway to read its file again (its metrics endpoint answers with what it did),
    or send it SIGHUP (``--pid``; under systemd ``$MAINPID``) when it has no endpoint."""
    if cfg.sink_only.enabled:  # its configuration is read at start only
        return _fail("reload: a sink-only gateway does not reload its configuration: restart it to apply a change", 2)
    pid = args.pid
    if pid is None and args.url is None and not cfg.metrics.port and os.environ.get("MAINPID", "").isdigit():
        pid = int(os.environ["MAINPID"])  # systemd's ExecReload=
    if pid is not None:
        try:
            os.kill(pid, signal.SIGHUP)
        except OSError as exc:
            return _fail(f"reload: cannot signal process {pid}: {exc.strerror}")
        print(f"sent SIGHUP to process {pid}: the gateway's log says what it applied or why it refused")
        return 0
    url = args.url
    if url is None:
        if not cfg.metrics.port:
            return _fail(
                "reload: metrics.port = 0, so the gateway has no local endpoint to ask: give --pid PID (it is sent "
                "SIGHUP), or set metrics.port (restart needed)",
                2,
            )
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(cfg.metrics.host, cfg.metrics.host)
        url = f"http://{f'[{host}]' if ':' in host else host}:{cfg.metrics.port}"
    req = urllib.request.Request(url.rstrip("/") + "/reload", data=b"", method="POST")
    try:
        with urllib.request.urlopen(req, timeout=args.timeout) as resp:
            body = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            body = json.loads(exc.read())
        except ValueError:
            return _fail(f"reload: {url} answered {exc.code} {exc.reason}")
    except (OSError, ValueError) as exc:
        return _fail(f"reload: no running gateway answered at {url} ({exc})")
    if body.get("ok"):
        print(f"reloaded: {body.get('message', '')}")
        return 0
    return _fail(f"reload refused: {body.get('message', body)}", 2)


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
    sz = plan.add_argument_group(
        "sizing: has the fleet outgrown one gateway, and what Flink needs instead (run plan on the target machine: "
        "it measures there)"
    )
    sz.add_argument("--max-cpu", type=float, default=0.5, metavar="SHARE",
                    help="the share of one core a gateway may use at the fleet's rate (default 0.5: the rest drains a "
                    "backlog after an outage)")  # fmt: skip
    sz.add_argument("--memory", default="512MiB", metavar="SIZE",
                    help="the state a gateway may hold in memory (default 512MiB; KiB, MiB, GiB)")  # fmt: skip
    sz.add_argument("--flink-slot-rate", type=float, default=FLINK_SLOT_RATE, metavar="N",
                    help="readings per second one Flink slot takes for this job, measured on your cluster with "
                    f"bench/bench_flink.py (default {FLINK_SLOT_RATE:,}: measured on a 2-core test machine, "
                    "docs/scale-out.md); gives the parallelism, TaskManagers and Kafka partitions")  # fmt: skip
    sz.add_argument("--slots-per-tm", type=int, default=2, metavar="N", help="slots per TaskManager (default 2)")
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
    reload = command(
        "reload",
        "make the running gateway read its configuration again and apply it (also: SIGHUP)",
        "Ask the running gateway (through its metrics endpoint, or with SIGHUP) to read its configuration file "
        "again, validate it as 'check' does and apply it: unchanged windows, patterns and detectors keep their "
        "state, new ones start empty, removed ones are dropped, changed ones restart. An invalid file, or one "
        "that changes a setting only a restart applies (broker, database, state), changes nothing: exit 2 with "
        "the reason. Give the same --config the gateway runs with.",
    )
    reload.add_argument("--url", metavar="URL", help="the gateway's metrics endpoint (default: from metrics.host "
                        "and metrics.port)")  # fmt: skip
    reload.add_argument("--pid", type=int, metavar="PID", help="send SIGHUP to this process instead (the outcome is "
                        "in its log); under systemd's ExecReload= $MAINPID when metrics.port = 0")  # fmt: skip
    reload.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the answer (default 60)")
    comp = command(
        "compile",
        "turn the configuration's windows into a job for another engine (Apache Flink SQL)",
        "Print the configuration's windows as an Apache Flink SQL script (docs/scale-out.md): a source table on "
        "the readings a bridge forwards, with WATERMARK FOR the configured bound, a window table-valued function "
        "per window, and sinks of window results and late records in the gateway's own JSON. A setting the job "
        "cannot run as the gateway does is refused (exit 2), each named with what to do.",
    )
    comp.add_argument("--target", required=True, choices=["flink-sql"], help="what to compile to")
    comp.add_argument("--source", choices=["files", "kafka"], default="files",
                      help="files: directories the job reads and writes (default); kafka: topics")  # fmt: skip
    comp.add_argument("--readings", default=f"{DEFAULT_DIR}/readings", metavar="URI",
                      help=f"the readings directory (file://...) or Kafka topic (default {DEFAULT_DIR}/readings)"
                      )  # fmt: skip
    comp.add_argument("--windows-out", default=f"{DEFAULT_DIR}/out/windows", metavar="URI",
                      help="window results: directory or topic")  # fmt: skip
    comp.add_argument(
        "--late-out", default=f"{DEFAULT_DIR}/out/late", metavar="URI", help="late records: directory or topic"
    )
    comp.add_argument(
        "--alerts-out", default=f"{DEFAULT_DIR}/out/alerts", metavar="URI", help="pattern alerts: directory or topic"
    )
    comp.add_argument("--bootstrap-servers", default=DEFAULT_KAFKA, help="Kafka brokers (--source kafka)")
    comp.add_argument("--monitor-interval", default="10s", metavar="SPAN",
                      help="files: how often the job looks for new files (default 10s; '' reads what is there and "
                      "ends)")  # fmt: skip
    comp.add_argument("--parallelism", type=int, default=None, help="the job's parallelism (default: the cluster's)")
    comp.add_argument("--output", "-o", type=Path, metavar="FILE", help="write the script here (default: stdout)")
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


def _compile(cfg: Config, args: argparse.Namespace) -> int:
    paths = SinkPaths(
        readings=args.readings,
        windows=args.windows_out,
        late=args.late_out,
        alerts=args.alerts_out,
        bootstrap_servers=args.bootstrap_servers,
        monitor_interval=args.monitor_interval,
    )
    try:
        script = compile_flink_sql(cfg, paths, source=args.source, parallelism=args.parallelism)
    except FlinkRefused as exc:
        return _fail(str(exc), 2)
    if args.output is None:
        sys.stdout.write(script)
    else:
        args.output.write_text(script, encoding="utf-8")
    return 0


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
    memory = _size_bytes(args.memory)
    if (
        memory is None
        or not 0 < args.max_cpu <= 1
        or args.slots_per_tm < 1
        or (args.flink_slot_rate is not None and args.flink_slot_rate <= 0)
    ):
        return _fail(
            f"--max-cpu 0-1, --memory like 512MiB, --slots-per-tm >= 1, --flink-slot-rate > 0; got {args.max_cpu}, "
            f"{args.memory!r}, {args.slots_per_tm}, {args.flink_slot_rate}",
            2,
        )
    sizing = size_fleet(
        readings_per_s=res.devices * 1000 / interval_ms,
        messages_per_s=res.devices * 1000 / interval_ms / res.batch,
        pipeline_us=res.pipeline_us,
        calibration=calibrate(),
        state_bytes=res.memory_bytes,
        checkpoint_cpu_s=res.checkpoint_cpu_s,
        devices=res.devices,
        checkpoint_interval_s=cfg.state.checkpoint_interval_s,
        max_cpu=args.max_cpu,
        memory=memory,
        flink_slot_rate=args.flink_slot_rate,
        slots_per_tm=args.slots_per_tm,
        bridge_us=bridge_pipeline_us(cfg, metrics, args.batch),
    )
    if cfg.patterns or cfg.anomaly.enabled:
        sizing = dataclasses.replace(sizing, notes=(STATEFUL_NOTE,))
    if args.json:
        print(json.dumps({**res.as_dict(), "sizing": sizing.as_dict()}, indent=1))
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
    print("\n".join(_describe_sizing(sizing)))
    return 0


STATEFUL_NOTE = (
    "with patterns or anomaly detection the whole gateway measured end to end costs more than this model gives: "
    "with bench/bench_e2e.py's example configuration (patterns, a 10-minute window, anomaly detection) about "
    "1.3-1.4 times (docs/scale-out.md, 'Known gap'): take the CPU share as a lower bound, or measure with "
    "bench/bench_e2e.py"
)

_UNITS = {"": 1, "B": 1, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "KB": 10**3, "MB": 10**6, "GB": 10**9}


def _size_bytes(text: str) -> int | None:
    """``512MiB`` -> bytes (KiB/MiB/GiB, kB/MB/GB, or a plain number of bytes); None if it is not one."""
    import re

    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", text)
    if m is None or m.group(2).upper() not in _UNITS:
        return None
    value = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    return value if value > 0 else None


def _describe_sizing(s: Sizing) -> list[str]:
    f = s.flink
    lines = [
        f"sizing:    {s.readings_per_s:,.1f} readings/s ({s.messages_per_s:,.1f} messages/s). This machine runs the "
        f"default pipeline at {s.calibration_us:.1f} us a reading, {s.speed:.2f} x the benchmark machine of "
        "docs/performance.md;",
        f"           this configuration's pipeline {s.pipeline_us:.1f} us a reading, the whole gateway about "
        f"{s.gateway_us:.1f} us (the rest measured there, scaled); checkpoints {s.checkpoint_share:.1%} of a core: "
        f"about {s.capacity:,.0f} readings/s on one core",
        f"           at the fleet's rate: {s.cpu_share:.1%} of one core (at most {s.max_cpu:.0%}); state in memory "
        f"{s.state_bytes / 2**20:,.1f} MiB (at most {s.memory / 2**20:,.0f} MiB); a backlog of one hour drains in "
        + (
            "never (the gateway is behind for good)"
            if s.catch_up_s is None
            else f"{s.catch_up_s:.0f} s"
            if s.catch_up_s < 120
            else f"{s.catch_up_s / 60:,.0f} min"
        ),
    ]
    for note in s.notes:
        lines.append(f"note:      {note}")
    if not s.outgrown:
        lines.append("verdict:   one gateway is enough")
    else:
        lines.append("verdict:   OUTGROWN one gateway: " + "; ".join(s.reasons))
    lines.append(
        f"flink:     {f.bridges} bridge gateway{'s' if f.bridges != 1 else ''} (about "
        f"{f.bridge_readings_per_cpu_s:,.0f} readings per CPU-second each: ingest, dedup, log, forward; "
        "split the fleet by site), then Kafka"
    )
    if f.parallelism is not None:
        lines.append(
            f"           job parallelism {f.parallelism} ({f.task_managers} TaskManager"
            f"{'s' if f.task_managers != 1 else ''}), {f.kafka_partitions} Kafka partitions (key site/device), "
            f"about {(f.state_per_slot_bytes or 0) / 2**20:,.1f} MiB of state a slot, state backend {f.state_backend}"
        )
        lines.append(
            f"           at {f.slot_rate or 0:,.0f} readings/s a slot (--flink-slot-rate; the default was measured on "
            "a 2-core test machine: docs/scale-out.md)"
        )
    else:
        lines.append(
            "           job parallelism: the rate over what one slot takes for this job (--flink-slot-rate, measured "
            f"on the cluster: docs/scale-out.md); state backend {f.state_backend}"
        )
    return lines


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
        if args.command == "reload":
            return _fail(f"configuration error: {exc}\nreload: the running gateway was not asked: it keeps its "
                         "configuration", 2)  # fmt: skip
        return _fail(f"configuration error: {exc}", 2)
    try:
        if args.command == "reload":
            return _reload(cfg, args)
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
        if args.command == "compile":
            return _compile(cfg, args)
        if args.command == "replay":
            return _replay(cfg, args)
        if args.command == "recover":
            return _recover(cfg)
        setup_logging(cfg.log.level, cfg.log.format, secret_values(cfg))
        try:
            return asyncio.run(_run(cfg, args.stats_file, args.record, args.config))
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
