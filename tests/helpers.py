"""Helpers for tests: start services or fail, write to and read back from InfluxDB 1.x and VictoriaMetrics."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
import services  # scripts/services.py (tests/conftest.py puts scripts/ on the path)

from gateway.app import Gateway
from gateway.config import Config

T = TypeVar("T")


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
