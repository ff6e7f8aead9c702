"""``edgekit-gateway`` / ``python -m gateway``: run the gateway, or check a configuration."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from .app import Gateway
from .config import Config, load_config
from .errors import ConfigError
from .logs import setup_logging

__all__ = ["main"]


def _describe(cfg: Config) -> str:
    m, i = cfg.mqtt, cfg.influx
    target = (
        f"InfluxDB 1.x at {i.url}, database {i.database!r}"
        + (f", rp {i.retention_policy!r}" if i.retention_policy else "")
        if i.target == "v1"
        else f"InfluxDB v2 API at {i.url}, org {i.org!r}, bucket {i.bucket!r}"
    )
    return "\n".join(
        [
            f"broker:    mqtt://{m.host}:{m.port} as {m.client_id!r}"
            + (f" (user {m.username!r}, password {'set' if m.password else 'NOT set'})" if m.username else ""),
            f"subscribe: {', '.join(m.subscriptions)} at QoS {m.qos}, persistent session: {not m.clean_session}",
            f"write to:  {target}, batches of {i.batch_size} every {i.flush_interval_ms} ms",
            f"limits:    {cfg.limits.max_bytes} bytes, {cfg.limits.max_readings} readings a message, "
            f"{cfg.limits.max_future_ms} ms future tolerance",
            "devices:   " + ("any" if cfg.devices.allow_unknown else f"only {len(cfg.devices.known)} known devices"),
            f"patterns:  {', '.join(p.name for p in cfg.patterns) or 'none'}",
        ]
    )


async def _run(cfg: Config, stats_file: Path | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await Gateway(cfg, stats_file=stats_file).run(stop)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edgekit-gateway", description="The edgekit gateway: MQTT -> InfluxDB")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_ in (("run", "run the gateway until SIGINT/SIGTERM"), ("check", "validate a configuration")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--config", "-c", type=Path, help="TOML file (default: only EDGEKIT_* env and defaults)")
        if name == "run":
            p.add_argument("--stats-file", type=Path, help="write counters as JSON here every second")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"edgekit-gateway: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "check":
        print(_describe(cfg))
        return 0
    setup_logging(cfg.log.level, cfg.log.format)
    asyncio.run(_run(cfg, args.stats_file))
    return 0
