"""Helpers for tests: start services or fail, write to and read back from InfluxDB 1.x and VictoriaMetrics."""

from __future__ import annotations

import asyncio
import importlib
import importlib.machinery
import json
import os
import random
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
import services  # scripts/services.py (tests/conftest.py puts scripts/ on the path)

from gateway.app import Gateway
from gateway.config import Config
from sim.commands import Prepared
from sim.inprocess import gateway_config
from sim.publish import BrokerConfig
from sim.realtime import replay

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[1]


class HttpError(RuntimeError):
    """A service answered with an unexpected HTTP status or an error payload."""


def _request(url: str, *, data: bytes | None = None, method: str | None = None, timeout: float = 10.0) -> bytes:
    req = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body: bytes = resp.read()
            return body
    except urllib.error.HTTPError as exc:
        raise HttpError(f"{method or 'GET'} {url}: HTTP {exc.code}: {exc.read()[:500]!r}") from exc


def _lines(lines: str | Iterable[str]) -> bytes:
    text = lines if isinstance(lines, str) else "\n".join(lines)
    return text.encode()


# ------------------------------------------------------------------------------------------ InfluxDB 1.x


def influx_query(url: str, db: str, q: str, *, epoch: str | None = None) -> list[dict[str, Any]]:
    """Run InfluxQL ``q`` against ``db`` and return one dict per row (columns, plus GROUP BY tags).

    ``epoch`` ("ns", "u", "ms", "s", ...) returns integer timestamps instead of RFC 3339 strings.
    Raises :class:`HttpError` if InfluxDB reports an error for any statement.
    """
    params = {"db": db, "q": q}
    if epoch is not None:
        params["epoch"] = epoch
    body = _request(f"{url}/query", data=urllib.parse.urlencode(params).encode(), method="POST")
    payload = json.loads(body)
    if "error" in payload:
        raise HttpError(f"InfluxDB error for {q!r}: {payload['error']}")
    rows: list[dict[str, Any]] = []
    for result in payload.get("results", []):
        if "error" in result:
            raise HttpError(f"InfluxDB error for {q!r}: {result['error']}")
        for series in result.get("series", []):
            tags = series.get("tags") or {}
            for values in series.get("values", []):
                rows.append({**tags, **dict(zip(series["columns"], values, strict=True))})
    return rows


def influx_write(url: str, db: str, lines: str | Iterable[str], *, precision: str = "ns") -> None:
    """Write line protocol to InfluxDB 1.x (``POST /write``)."""
    query = urllib.parse.urlencode({"db": db, "precision": precision})
    _request(f"{url}/write?{query}", data=_lines(lines), method="POST")


# ------------------------------------------------------------------------------------------ VictoriaMetrics


def vm_write(url: str, lines: str | Iterable[str], *, precision: str = "ns") -> None:
    """Write InfluxDB line protocol to VictoriaMetrics (``POST /api/v2/write``)."""
    query = urllib.parse.urlencode({"precision": precision})
    _request(f"{url}/api/v2/write?{query}", data=_lines(lines), method="POST")


def vm_flush(url: str) -> None:
    """Make rows buffered in VictoriaMetrics searchable now (``/internal/force_flush``).

    Without it VictoriaMetrics 1.79 shows new data only after ~10 s; with it, within ~1 s.
    """
    _request(f"{url}/internal/force_flush")


def vm_export(
    url: str, match: str, *, flush: bool = True, start: str | None = None, end: str | None = None
) -> list[dict[str, Any]]:
    """``/api/v1/export`` for series selector ``match``: one parsed JSON line per series.

    Each item looks like ``{"metric": {"__name__": ..., tag: ...}, "values": [...], "timestamps": [ms...]}``.
    InfluxDB line protocol ``m,tag=x f=1`` is stored as metric ``m_f`` with label ``tag``.
    ``flush`` calls :func:`vm_flush` first; still poll (see :func:`poll`), visibility is not instant.
    """
    if flush:
        vm_flush(url)
    params = [("match[]", match)]
    if start is not None:
        params.append(("start", start))
    if end is not None:
        params.append(("end", end))
    body = _request(f"{url}/api/v1/export?{urllib.parse.urlencode(params)}")
    return [json.loads(line) for line in body.decode().splitlines() if line.strip()]


# ------------------------------------------------------------------------------------------------ polling


def poll(
    fn: Callable[[], T],
    *,
    until: Callable[[T], bool] = bool,
    timeout: float = 15.0,
    interval: float = 0.1,
) -> T:
    """Call ``fn`` until ``until(result)`` holds or ``timeout`` passes; return the last result."""
    deadline = time.monotonic() + timeout
    while True:
        result = fn()
        if until(result) or time.monotonic() >= deadline:
            return result
        time.sleep(interval)


def start_or_fail(start: Callable[[], services.Proc], attempts: int = 3) -> services.Proc:
    """Call ``start`` (which picks its own free ports); retry on errors - ``free_port()`` can race with other
    processes - and ``pytest.fail`` (never skip) if the service never starts."""
    error: services.ServiceError | None = None
    for _ in range(attempts):
        try:
            return start()
        except services.BinaryMissingError as exc:
            pytest.fail(str(exc), pytrace=False)
        except services.ServiceError as exc:
            error = exc
    pytest.fail(f"could not start service after {attempts} attempts: {error}", pytrace=False)


async def wait_for(
    cond: Callable[[], bool], what: str | Callable[[], str], limit_s: float = 30.0, interval: float = 0.05
) -> None:
    """Wait (in the event loop) until ``cond()`` holds; fail the test with ``what`` (or ``what()``, said then)
    after ``limit_s``."""
    try:
        async with asyncio.timeout(limit_s):
            while not cond():
                await asyncio.sleep(interval)
    except TimeoutError:
        said = what if isinstance(what, str) else what()
        pytest.fail(f"timed out after {limit_s:g} s waiting for: {said}", pytrace=False)


@asynccontextmanager
async def running_gateway(
    cfg: Config, connect_s: float = 30.0, stop_s: float = 60.0, config_path: Path | None = None
) -> AsyncIterator[Gateway]:
    """A gateway running in this event loop, connected to its broker; stopped cleanly on the way out (an
    exception from its run, say a crash, is raised there). ``config_path``: the file a reload reads."""
    gw = Gateway(cfg, config_path=config_path)
    stop = asyncio.Event()
    task = asyncio.create_task(gw.run(stop))
    try:
        await wait_for(lambda: gw.ingest_stats.connected or task.done(), "gateway connected", connect_s)
        if task.done():
            task.result()  # it ended before connecting: raise why
        yield gw
    finally:
        stop.set()
        await asyncio.wait_for(task, stop_s)


async def scenario_through_gateway(
    prep: Prepared, mosquitto: services.Proc, influx_url: str, influx_db: str, tag: str
) -> Gateway:
    """A prepared scenario's deliveries published to the real broker and taken by a gateway writing to InfluxDB
    1.x at ``influx_url``; returns the stopped gateway once it took every delivery and wrote every point."""
    cfg = gateway_config(
        prep.gateway,
        prep.scenario.prefix,
        {
            "mqtt": {"url": f"mqtt://{mosquitto.host}:{mosquitto.port}", "client_id": f"gw-{tag}",
                     "clean_session": True},
            "influx": {"target": "v1", "url": influx_url, "database": influx_db, "batch_size": 500},
        },
    )  # fmt: skip
    deliveries = prep.run.deliveries
    async with running_gateway(cfg) as gw:
        # the deliveries it takes as messages: not those it ignores (an empty status, a topic of its own). Counting
        # what it ignored instead let the gateway's own alerts, which come back to it and are ignored, stand in
        # for the last deliveries, and the counts below were read before those were taken
        own = gw.pipeline.is_own_topic
        taken = sum(1 for d in deliveries if not own(d.topic) and (d.payload or not d.topic.endswith("/status")))
        await replay(deliveries, BrokerConfig(mosquitto.host, mosquitto.port), client_id=f"sim-{tag}")
        await wait_for(lambda: gw.pipeline.stats.messages >= taken, "the gateway to take every delivery", 120)
    assert gw.sink.stats.points_refused == 0 and gw.sink.pending == 0
    return gw


def sleepy_deliveries(
    rows: list[Any], rng: random.Random | None, devices: Iterable[str], sleepy: str, bound_ms: int, t0: int
) -> list[tuple[int, int, str, list[Any], int | None]]:
    """A stream of rows ``(device, seq, t, ...)`` as a fleet with one sleepy board delivers it:
    ``(arrival, order, device, rows, flushed)``, sorted by arrival. Every device says hello first (flushed before
    ``t0``); the others' readings one by one, each delayed 0..``bound_ms`` under disorder (``rng``; none without);
    ``sleepy``'s in bursts of 1-4 (2 without ``rng``) sent 0-60 s after the burst's last reading, with a flushed
    marker at that reading, or just before the next burst's first when that has the same time."""
    out: list[tuple[int, int, str, list[Any], int | None]] = [(t0 - 1, i, d, [], t0 - 1) for i, d in enumerate(devices)]
    for i, r in enumerate(r for r in rows if r[0] != sleepy):
        out.append((r[2] + (rng.randint(0, bound_ms) if rng else 0), 10 + i, r[0], [r], None))
    burst = [r for r in rows if r[0] == sleepy]
    i, sent = 0, t0
    while i < len(burst):  # bursts in the order taken: a flushed marker covers everything before it
        size = rng.randint(1, 4) if rng else 2
        chunk = burst[i : i + size]
        i += size
        sent = max(sent, chunk[-1][2] + (rng.randint(0, 60_000) if rng else 0))
        flushed = chunk[-1][2] if i >= len(burst) else min(chunk[-1][2], burst[i][2] - 1)
        out.append((sent, 10_000 + i, sleepy, chunk, flushed))
    return sorted(out, key=lambda x: (x[0], x[1]))


# ------------------------------------------------------------------------------- pure and compiled builds


SERVE_HELPERS = r"""
import json, sys


def guarded(fn, *args):
    try:
        return fn(*args)
    except Exception as e:  # an input the reference refuses: the compiled build must refuse it alike
        return f"{type(e).__name__}: {e}"


def serve(build, handle):
    # each line of stdin a request in JSON, each answered by a line: null with the build run, any other by handle
    for text in sys.stdin:
        req = json.loads(text)
        answer = build if req is None else handle(req)
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
"""
"""The start of a script a :class:`BuildProcess` runs: ``guarded`` (a call's answer, or its error as text, so that both
builds refuse an input alike) and ``serve`` (the request loop, ending the script)."""


class BuildProcess:
    """A Python process from the repository root running ``script`` with ``EDGEKIT_ENGINE=build`` (``pure`` or
    ``compiled``: which build of the compiled packages, ``gateway._compiled``, it imports). ``ask`` writes one
    line of JSON to its stdin and returns the line it answers: the script serves requests until stdin ends,
    so one process can answer many (a property test's examples) without starting again."""

    def __init__(self, build: str, script: str, *args: str) -> None:
        self.build = build
        env = {**os.environ, "EDGEKIT_ENGINE": build}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", script, *args], cwd=ROOT, env=env, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip

    def ask(self, request: object) -> str:
        self.send(request)
        return self.receive()

    def send(self, request: object) -> None:
        """Write a request without waiting for the answer (:meth:`receive`): two processes can work at once."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass  # it has stopped: receive says why

    def receive(self) -> str:
        assert self.proc.stdout is not None and self.proc.stderr is not None
        answer = self.proc.stdout.readline()
        if not answer:
            error = self.proc.stderr.read()
            self.close()
            raise AssertionError(f"EDGEKIT_ENGINE={self.build}: {error}")
        return answer

    def close(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()


def _no_compiled_build(e: AssertionError) -> None:
    if "EDGEKIT_ENGINE=compiled but" in str(e):
        pytest.fail(
            "no compiled build: scripts/setup.sh makes it where a C compiler exists "
            "(python scripts/build_compiled.py; see .run/build_compiled.log); EDGEKIT_COMPILE=0 opts out",
            pytrace=False,
        )


def compiled_process(script: str, *args: str) -> BuildProcess | None:
    """A :class:`BuildProcess` on the compiled build, checked to have loaded it (``script`` answers a request
    ``null`` with the build it runs), or None where set-up was told not to build it (``EDGEKIT_COMPILE=0``). A
    missing build fails the test: ``scripts/setup.sh`` makes it wherever a C compiler exists."""
    if os.environ.get("EDGEKIT_COMPILE") == "0":
        return None
    proc = BuildProcess("compiled", script, *args)
    try:
        build = proc.ask(None)
    except AssertionError as e:
        _no_compiled_build(e)
        raise
    assert json.loads(build) == "compiled", build
    return proc


Builds = tuple[BuildProcess, BuildProcess] | None
"""The pure and the compiled build of a package, each serving in its own process, or None where set-up was told
not to make the compiled one."""


def build_pair(script: str) -> Iterator[Builds]:
    """For a module-scoped fixture: both builds serving ``script`` (which answers a request ``null`` with the build
    it runs), closed after the module's tests."""
    compiled = compiled_process(script)
    if compiled is None:
        yield None
        return
    pure = BuildProcess("pure", script)
    try:
        assert json.loads(pure.ask(None)) == "pure (EDGEKIT_ENGINE=pure)"
        yield pure, compiled
    finally:
        pure.close()
        compiled.close()


def same_answer(builds: Builds, request: object, build: str) -> Any:
    """Both builds' answer to ``request``, which must be the same text; the pure one, parsed. ``build`` is the
    package's build state in this process (``gateway._compiled.state``): without a compiled build it must be pure."""
    if builds is None:
        assert build.startswith("pure"), build
        return None
    pure, compiled = builds
    pure.send(request)
    compiled.send(request)
    expected = pure.receive()
    assert compiled.receive() == expected
    return json.loads(expected)


def check_loaded_build(package: str, modules: Iterable[str], build: str) -> None:
    """Each of ``package``'s compiled ``modules`` is loaded as the extension module exactly when ``build`` (its state
    in this process) says compiled."""
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    for name in modules:
        module = importlib.import_module(f"{package}.{name}")
        compiled = str(module.__file__).endswith(suffixes)
        assert compiled == (build == "compiled"), (name, module.__file__, build)


def run_build(build: str, script: str, *args: str) -> dict[str, Any]:
    """Run ``script`` once with ``EDGEKIT_ENGINE=build`` (its stdin empty) and return the JSON object it prints."""
    env = {**os.environ, "EDGEKIT_ENGINE": build}
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, f"EDGEKIT_ENGINE={build}: {done.stderr}"
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def run_compiled(script: str, *args: str) -> dict[str, Any] | None:
    """:func:`run_build` on the compiled build, or None where set-up was told not to build it
    (``EDGEKIT_COMPILE=0``); a missing build fails the test."""
    if os.environ.get("EDGEKIT_COMPILE") == "0":
        return None
    try:
        return run_build("compiled", script, *args)
    except AssertionError as e:
        _no_compiled_build(e)
        raise


# ------------------------------------------------------------------------------- public data


def skab_candidates() -> list[Path]:
    """``$EDGEKIT_SKAB`` alone when set; else ``shared/data/skab`` beside the repository or any folder above it,
    and beside the checkout this one was cloned from (a clean clone of a checkout that sits next to the data)."""
    env = os.environ.get("EDGEKIT_SKAB")
    if env:
        return [Path(env)]
    bases = list(ROOT.parents)
    origin = subprocess.run(
        ["git", "-C", str(ROOT), "config", "--get", "remote.origin.url"], capture_output=True, text=True
    ).stdout.strip()
    if origin.startswith("file://"):
        origin = origin[len("file://") :]
    if origin.startswith("/"):
        bases += list(Path(origin).resolve().parents)
    return [b / "shared" / "data" / "skab" for b in bases]


def skab_dir() -> Path:
    candidates = skab_candidates()
    for path in candidates:
        if (path / "valve1").is_dir():
            return path
    looked = ", ".join(str(p) for p in candidates)
    pytest.fail(f"SKAB data not found (looked in {looked}; set EDGEKIT_SKAB to the folder)", pytrace=False)
