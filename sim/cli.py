"""``edgekit-sim`` / ``python -m sim``: simulated fleets, their ground truth, a check and a report.

- ``run``: the simple fleet (``FleetSpec``): publish its traffic and write its ground truth;
- ``scenarios``: list the shipped scenarios (``sim/scenarios/*.toml``);
- ``simulate SCENARIO``: run a scenario in virtual time, either ``--in-process`` through the gateway's
  pipeline (no broker, faster than real time) or ``--broker`` through MQTT in (scaled) real time, and
  write the ground truth with the reference's expected gateway output (``--truth``);
- ``verify``: compare what landed in InfluxDB 1.x with a ground truth: a table per output, exit 1 on a
  mismatch;
- ``report``: an HTML page with plots of a run (from its ground truth).

Exit codes: 0 done (verify: everything matched), 2 usage (bad flag or value), 1 failure (broker
unreachable or refusing, file not writable, verify mismatch), 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .errors import PublishError, SimError, SpecError
from .fleet import METRIC_GENERATORS, FleetSpec, Plan, generate, wall_clock_ms
from .publish import PASSWORD_ENV, BrokerConfig, PublishResult, parse_broker_url, publish

__all__ = ["build_parser", "main"]

PROG = "edgekit-sim"


def _names(values: Sequence[str] | None, default: tuple[str, ...]) -> tuple[str, ...]:
    """Repeated and/or comma-separated names, in order."""
    if not values:
        return default
    return tuple(name.strip() for value in values for name in value.split(",") if name.strip())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Simulated edgekit fleet: publish to MQTT")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="generate a fleet's traffic, publish it and write the ground truth",
        description="Generate a fleet's traffic (deterministic for a seed), publish it at QoS 1 and "
        "print a one-line summary.",
    )
    fleet = run.add_argument_group("fleet")
    fleet.add_argument("--devices", type=int, default=10, help="number of boards (default 10)")
    fleet.add_argument(
        "--site", action="append", metavar="NAME", help="site name; repeat or comma-separate (default site-a)"
    )
    fleet.add_argument("--readings", type=int, default=50, help="readings per device (default 50)")
    fleet.add_argument("--batch", type=int, default=10, help="readings per message, 1-64 (default 10)")
    fleet.add_argument("--interval-ms", type=int, default=60_000, help="event-time spacing (default 60000)")
    fleet.add_argument("--start-ms", type=int, help="event time of the first readings (default: now - span)")
    fleet.add_argument(
        "--metrics",
        action="append",
        metavar="NAMES",
        help=f"comma-separated, of {', '.join(METRIC_GENERATORS)} (default temp_c,rh)",
    )
    fleet.add_argument("--duplicates", type=float, default=0.0, help="fraction of batches sent twice (0..1)")
    fleet.add_argument("--malformed", type=int, default=0, help="malformed messages to mix in")
    fleet.add_argument("--nan", type=int, default=0, help="readings with a NaN metric (rejected alone)")
    fleet.add_argument("--too-old", type=int, default=0, help="readings stamped in 2000 (rejected alone)")
    fleet.add_argument("--no-flush", action="store_true", help="no flushed marker on each device's last batch")
    fleet.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    fleet.add_argument("--prefix", default="edgekit", help="topic prefix (default edgekit)")
    fleet.add_argument(
        "--id-prefix",
        default="run",
        help="device ids are ID_PREFIX-0001... (default run: apart from the scenarios' dev-0001...)",
    )
    mqtt = run.add_argument_group("publishing")
    mqtt.add_argument(
        "--broker",
        default="mqtt://127.0.0.1:1883",
        help=f"mqtt[s]://[user[:password]@]host[:port]; password also from ${PASSWORD_ENV}",
    )
    mqtt.add_argument("--client-id", help="MQTT client id (default edgekit-sim-<pid>)")
    mqtt.add_argument("--rate", type=float, default=0.0, help="messages per second, 0 = unpaced (default)")
    mqtt.add_argument("--max-in-flight", type=int, default=64, help="unacknowledged messages at most (64)")
    mqtt.add_argument("--timeout", type=float, default=10.0, help="seconds to connect / for each ack (10)")
    mqtt.add_argument("--dry-run", action="store_true", help="generate and write the truth, publish nothing")
    run.add_argument("--truth", type=Path, metavar="PATH", help="write the ground truth JSON here")
    _scenario_parsers(sub)
    return parser


def _scenario_parsers(sub: Any) -> None:
    sub.add_parser("scenarios", help="list the shipped scenarios")
    sim = sub.add_parser(
        "simulate",
        help="run a scenario in virtual time: in-process through the pipeline, or through MQTT",
        description="Run a scenario (a name from 'scenarios' or a TOML path) and write its ground truth.",
    )
    sim.add_argument("scenario", help="scenario name or path to a TOML file")
    sim.add_argument("--devices", type=int, help="scale the fleet to this many boards")
    sim.add_argument("--duration", help="event time to cover, e.g. 30m, 1h (default: the scenario's)")
    sim.add_argument("--seed", type=int, help="random seed (default: the scenario's)")
    sim.add_argument("--start-ms", type=int, help="event time of the start (default: to end 15 min before now)")
    sim.add_argument("--prefix", help="topic prefix (default: the scenario's, edgekit)")
    sim.add_argument("--gateway-config", type=Path, help="the gateway's TOML (its engine and windows) to expect")
    where = sim.add_mutually_exclusive_group(required=True)
    where.add_argument("--in-process", action="store_true", help="drive the gateway's pipeline in virtual time")
    where.add_argument("--broker", help="publish through this broker: mqtt://[user[:password]@]host[:port]")
    sim.add_argument("--speed", type=float, default=0.0, help="with --broker: virtual seconds per second (0: max)")
    sim.add_argument("--client-id", help="MQTT client id (default edgekit-sim-<pid>)")
    sim.add_argument("--truth", type=Path, metavar="PATH", help="write the ground truth JSON here")
    sim.add_argument("--report", type=Path, metavar="PATH", help="with --in-process: also write the report")
    sim.add_argument(
        "--measure",
        action="store_true",
        help="with --in-process: also measure latency and accuracy per window and result kind (kept in the truth "
        "as 'latency', drawn by the report)",
    )
    sim.add_argument(
        "--trigger",
        metavar="LIST",
        default="",
        help="with --measure: early-trigger intervals to measure too, e.g. off,10s,1m (the trade-off table and the "
        "error against the trigger interval in the report)",
    )
    sim.add_argument("--bound", metavar="LIST", default="", help="with --measure: watermark bounds to measure too")
    sim.add_argument("--lateness", metavar="LIST", default="", help="with --measure: allowed lateness to measure too")
    ver = sub.add_parser("verify", help="compare what landed in InfluxDB 1.x with a run's ground truth")
    ver.add_argument("--truth", type=Path, required=True, metavar="PATH")
    ver.add_argument("--influx-url", default="http://127.0.0.1:8086")
    ver.add_argument("--database", default="edgekit")
    ver.add_argument("--json", type=Path, metavar="PATH", help="also write the tables as JSON")
    rep = sub.add_parser("report", help="an HTML page with plots of a run")
    rep.add_argument("--truth", type=Path, required=True, metavar="PATH")
    rep.add_argument("--out", type=Path, required=True, metavar="PATH")
    rep.add_argument("--influx-url", help="also verify against InfluxDB 1.x and show the tables")
    rep.add_argument("--database", default="edgekit")


def _spec(args: argparse.Namespace) -> FleetSpec:
    return FleetSpec(
        devices=args.devices,
        sites=_names(args.site, ("site-a",)),
        readings_per_device=args.readings,
        batch_size=args.batch,
        interval_ms=args.interval_ms,
        start_ms=args.start_ms,
        metrics=_names(args.metrics, ("temp_c", "rh")),
        duplicate_rate=args.duplicates,
        malformed=args.malformed,
        nan_readings=args.nan,
        old_readings=args.too_old,
        flush_last=not args.no_flush,
        seed=args.seed,
        prefix=args.prefix,
        id_prefix=args.id_prefix,
    )


def _write_truth(path: Path, plan: Plan, broker: BrokerConfig, result: PublishResult | None) -> None:
    from .verify import plan_truth_doc  # the scenario side's module: imported only when a truth is written

    doc = plan_truth_doc(plan)
    doc["broker"] = broker.describe()
    doc["published"] = asdict(result) if result is not None else None
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)


def _summary(plan: Plan, broker: BrokerConfig, result: PublishResult | None, truth: Path | None) -> str:
    c = plan.counts()
    head = (
        f"published {result.messages} messages to {broker.describe()} in {result.elapsed_s:.2f} s"
        if result is not None
        else f"dry run: {c.messages} messages planned"
    )
    return (
        f"{head}: {c.readings} readings from {c.devices} devices in {c.batches} batches, "
        f"{c.duplicates} duplicates, {c.malformed} malformed, {c.statuses} statuses; "
        f"expect {c.dead_letters} dead letters ({c.rejected_readings} readings rejected alone)"
        + (f"; truth in {truth}" if truth is not None else "")
    )


def main(
    argv: Sequence[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    now_ms: Callable[[], int] = wall_clock_ms,
) -> int:
    """Run the CLI; returns the exit code. ``env`` and ``now_ms`` default to the process's."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse printed the usage error (code 2) or the help (code 0)
        return exc.code if isinstance(exc.code, int) else 2

    def usage(message: str) -> int:
        print(f"{PROG}: error: {message} (see {PROG} {args.command} --help)", file=sys.stderr)
        return 2

    if args.command != "run":
        from .commands import run_command

        try:
            return run_command(args, os.environ if env is None else env, now_ms)
        except SpecError as exc:
            return usage(str(exc))
        except SimError as exc:
            print(f"{PROG}: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print(f"{PROG}: interrupted", file=sys.stderr)
            return 130

    try:
        spec = _spec(args)
        broker = parse_broker_url(args.broker, os.environ if env is None else env)
        plan = generate(spec, now_ms)
    except SpecError as exc:
        return usage(str(exc))
    if args.rate < 0:
        return usage(f"--rate must not be negative, got {args.rate}")
    if args.max_in_flight < 1:
        return usage(f"--max-in-flight must be at least 1, got {args.max_in_flight}")
    if args.timeout <= 0:
        return usage(f"--timeout must be positive, got {args.timeout}")

    result: PublishResult | None = None
    if not args.dry_run:
        try:
            result = asyncio.run(
                publish(
                    plan.messages,
                    broker,
                    client_id=args.client_id or f"edgekit-sim-{os.getpid()}",
                    rate=args.rate,
                    max_in_flight=args.max_in_flight,
                    timeout_s=args.timeout,
                )
            )
        except PublishError as exc:
            print(f"{PROG}: publishing failed: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print(f"{PROG}: interrupted; the truth file was not written", file=sys.stderr)
            return 130
    if args.truth is not None:
        try:
            _write_truth(args.truth, plan, broker, result)
        except OSError as exc:
            print(f"{PROG}: cannot write the truth file {args.truth}: {exc}", file=sys.stderr)
            return 1
    print(_summary(plan, broker, result, args.truth))
    return 0
