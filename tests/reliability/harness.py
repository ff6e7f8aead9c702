"""Shared pieces of the reliability tests: the gateway as a real subprocess, its config, and references.

``GatewayProcess`` runs ``python -m gateway run --config ... --stats-file ...`` so that tests can kill it
with SIGKILL; ``reference_windows`` runs the same :class:`~gateway.pipeline.Pipeline` over the same
messages, uninterrupted, in this process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from gateway.config import parse_config
from gateway.pipeline import Pipeline
from gateway.schema import parse_point
from sim.wire import Outgoing

REPO = Path(__file__).resolve().parents[2]


WINDOWS_TOML = """
[[windows]]
name = "t10m"
kind = "tumbling"
size = "10m"
metrics = ["temp_c", "rh"]
aggregates = ["count", "sum", "min", "max", "first", "last"]
allowed_lateness = "0s"
key = "device"
"""


def toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return json.dumps(str(v))


def write_config(path: Path, sections: Mapping[str, Mapping[str, object]], extra: str = WINDOWS_TOML) -> Path:
    parts = []
    for name, values in sections.items():
        parts.append(f"[{name}]")
        parts.extend(f"{k} = {toml_value(v)}" for k, v in values.items())
        parts.append("")
    path.write_text("\n".join(parts) + extra, encoding="utf-8")
    return path


RUNNING: set[GatewayProcess] = set()
"""Gateways started and not yet stopped: conftest's ``no_gateway_left_running`` kills them after each test, so
a test that fails half-way leaves no gateway process behind."""


def kill_leftovers() -> None:
    for gw in list(RUNNING):
        if gw.alive():
            gw.kill()
        RUNNING.discard(gw)


class GatewayProcess:
    """The gateway CLI in a subprocess; logs go to ``<dir>/gateway-<n>.log``."""

    def __init__(self, config: Path, workdir: Path, env: Mapping[str, str] | None = None) -> None:
        self.config = config
        self.workdir = workdir
        self.stats_file = workdir / "stats.json"
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.kills = 0

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.starts += 1
        log = open(self.workdir / f"gateway-{self.starts}.log", "wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway",
                "run",
                "--config",
                str(self.config),
                "--stats-file",
                str(self.stats_file),
            ],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
        )
        log.close()
        RUNNING.add(self)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.kills += 1

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait: the exit code (0 for a clean stop)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stats(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.stats_file.read_text())
            return data
        except (OSError, ValueError):
            return {}

    def logs(self, tail: int = 40) -> str:
        out = []
        for n in range(1, self.starts + 1):
            lines = (self.workdir / f"gateway-{n}.log").read_text(errors="replace").splitlines()
            out.append(f"--- gateway-{n}.log\n" + "\n".join(lines[-tail:]))
        return "\n".join(out)


def wait_until(cond: Any, what: str, timeout: float, gw: GatewayProcess | None = None, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if gw is not None and gw.proc is not None and gw.proc.poll() is not None:
            raise AssertionError(f"gateway exited ({gw.proc.returncode}) while waiting for {what}\n{gw.logs()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}" + (f"\n{gw.logs()}" if gw else ""))
        time.sleep(interval)


def scrape(url: str) -> dict[str, float]:
    """``/metrics`` as ``{"name{labels}": value}``."""
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    values: dict[str, float] = {}
    for ln in text.splitlines():
        if ln and not ln.startswith("#"):
            name, _, value = ln.rpartition(" ")
            values[name] = float(value)
    return values


# fields that say when the gateway's own clock emitted a result (a window's emitted_ms): they differ between two
# runs of the same input by design, so a result is compared without them
PROCESSING_TIME_FIELDS = frozenset({"emitted_ms"})


def reference_outputs(
    doc: Mapping[str, Any], messages: Iterable[Outgoing], measurement: str, received_ms: int
) -> dict[tuple[Any, ...], dict[str, object]]:
    """The final point of each series and time of ``measurement`` from one uninterrupted in-process run."""
    pipeline = Pipeline(parse_config(doc, env={}))
    final: dict[tuple[Any, ...], dict[str, object]] = {}
    for msg in messages:
        for ln in pipeline.handle(msg.topic, msg.payload, received_ms).lines:
            if ln.startswith(measurement + ","):
                _, tags, fields, ts = parse_point(ln)
                final[(tuple(sorted(tags.items())), ts)] = {
                    k: v for k, v in fields.items() if k not in PROCESSING_TIME_FIELDS
                }
    return final
