"""``check --probe`` and the gateway's start: can the configured broker and database be used right now?

Each probe says what it found in one line: the broker takes the login (an MQTT 5 CONNECT with the gateway's
user and password, under another client id and a clean session, so a running gateway's session is left alone);
InfluxDB takes writes to the database or bucket (an empty write: InfluxDB 1.x answers 204, or 404 ``database
not found``, or 401/403 for the credentials, and writes nothing; the v2 API answers 204, or 404 when the bucket
does not exist - InfluxDB 2.x - or 401 for the token; VictoriaMetrics takes any bucket).
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import aiohttp
import aiomqtt

from .config import Config, InfluxConfig, MqttConfig, redact_url
from .ingest import make_client

__all__ = ["Probe", "probe_all", "probe_broker", "probe_database", "probe_dir"]

Outcome = Literal["ok", "missing", "refused", "unreachable", "error"]


@dataclass(frozen=True, slots=True)
class Probe:
    what: str
    outcome: Outcome
    message: str

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    def line(self) -> str:
        return f"{self.what + ':':<10} {'OK' if self.ok else 'FAILED'}: {self.message}"


async def probe_broker(cfg: MqttConfig, timeout_s: float = 10.0) -> Probe:
    where = f"mqtt{'s' if cfg.tls else ''}://{cfg.host}:{cfg.port}"
    login = f"as {cfg.username!r}" if cfg.username else "anonymously"
    probe_cfg = replace(cfg, client_id=f"{cfg.client_id}-probe"[:64], clean_session=True)
    try:
        async with asyncio.timeout(timeout_s):
            async with make_client(probe_cfg):
                pass
    except aiomqtt.MqttCodeError as exc:
        return Probe("broker", "refused", f"{where} refused the connection {login}: {exc}")
    except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
        return Probe("broker", "unreachable", f"{where} unreachable: {exc or type(exc).__name__}")
    return Probe("broker", "ok", f"{where} takes the login {login}")


async def _databases(session: aiohttp.ClientSession, cfg: InfluxConfig) -> list[str] | None:
    """The databases InfluxDB 1.x lists (None when it does not say)."""
    try:
        async with session.get(f"{cfg.url}/query", params={"q": "SHOW DATABASES"}) as resp:
            doc = json.loads(await resp.text())
        series = doc["results"][0].get("series", [])
        return sorted(str(v[0]) for s in series for v in s.get("values", []))
    except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, IndexError, TypeError):
        return None


async def probe_database(cfg: InfluxConfig, timeout_s: float = 10.0) -> Probe:
    """An empty write to the configured database (v1) or bucket (v2): what InfluxDB answers."""
    url = redact_url(cfg.url)
    timeout = aiohttp.ClientTimeout(total=min(timeout_s, cfg.timeout_s))
    if cfg.target == "v1":
        auth = aiohttp.BasicAuth(cfg.username, cfg.password or "", encoding="utf-8") if cfg.username else None
        params = {"db": cfg.database, **({"rp": cfg.retention_policy} if cfg.retention_policy else {})}
        path, headers, name = "/write", {}, f"database {cfg.database!r}"
    else:
        auth = None
        params = {"org": cfg.org or "-", "bucket": cfg.bucket, "precision": "ns"}
        path, headers, name = "/api/v2/write", {"Authorization": f"Token {cfg.token or ''}"}, f"bucket {cfg.bucket!r}"
    who = f" as {cfg.username!r}" if cfg.target == "v1" and cfg.username else ""
    try:
        async with aiohttp.ClientSession(timeout=timeout, auth=auth) as session:
            async with session.post(cfg.url + path, params=params, data=b"", headers=headers) as resp:
                status, body = resp.status, (await resp.text()).strip()
            if status == 404 and cfg.target == "v1" and "database not found" in body:
                known = await _databases(session, cfg)
                listed = f" (it has: {', '.join(known) or 'none'})" if known is not None else ""
                if cfg.create_database:
                    return Probe(
                        "database", "ok", f"{url} has no {name}{listed}: the gateway creates it at its first write "
                        "(influx.create_database = true)"
                    )  # fmt: skip
                return Probe(
                    "database",
                    "missing",
                    f"{url} has no {name}{listed}; create it (influx -execute 'CREATE "
                    f'DATABASE "{cfg.database}"\') or set influx.create_database = true',
                )
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return Probe("database", "unreachable", f"InfluxDB at {url} unreachable: {exc or type(exc).__name__}")
    reason = _words(body)
    if cfg.target == "v1" and "retention policy not found" in body:  # InfluxDB 1.6 answers this with HTTP 500
        return Probe(
            "database", "missing", f"{url}: database {cfg.database!r} has no retention policy "
            f"{cfg.retention_policy!r} (InfluxDB: {reason}); create it or change influx.retention_policy",
        )  # fmt: skip
    if 200 <= status < 300:
        return Probe("database", "ok", f"{url} takes writes to {name}{who}")
    if status == 404:
        return Probe("database", "missing", f"{url} has no {name}: HTTP 404 {reason}")
    if status in (401, 403):
        return Probe("database", "refused", f"{url} refused to write to {name}{who}: HTTP {status} {reason}")
    return Probe("database", "error", f"{url} answered a write to {name} with HTTP {status} {reason}")


def _words(body: str) -> str:
    try:
        doc = json.loads(body)
    except ValueError:
        return body[:300]
    if isinstance(doc, dict):
        for key in ("error", "message"):
            if isinstance(doc.get(key), str):
                return str(doc[key])[:300]
    return body[:300]


def probe_dir(what: str, path: str, *, write: bool) -> Probe:
    """Bridge mode's directory (the gateway writes files there) or sink-only mode's (it reads the job's results)."""
    p = Path(path)
    if not p.exists():
        if write and os.access(_existing_parent(p), os.W_OK):
            return Probe(what, "ok", f"{p} does not exist yet; the gateway creates it")
        return Probe(what, "missing", f"{p} does not exist" + ("" if write else " (the job writes it)"))
    if not p.is_dir():
        return Probe(what, "error", f"{p} is not a directory")
    mode = os.W_OK | os.X_OK if write else os.R_OK | os.X_OK
    if not os.access(p, mode):
        return Probe(what, "refused", f"{p} cannot be {'written' if write else 'read'} by this user")
    return Probe(what, "ok", f"{p} can be {'written' if write else 'read'}")


def _existing_parent(p: Path) -> Path:
    for q in p.absolute().parents:
        if q.exists():
            return q
    return Path("/")


async def probe_all(cfg: Config, timeout_s: float = 10.0) -> list[Probe]:
    """The broker (in sink-only mode only with ``publish``: else it uses none), the database, and the directory of
    bridge or sink-only mode."""
    if cfg.sink_only.enabled:
        results = probe_dir("results", cfg.sink_only.dir, write=False)
        if cfg.sink_only.publish:
            broker, database = await asyncio.gather(
                probe_broker(cfg.mqtt, timeout_s), probe_database(cfg.influx, timeout_s)
            )
            return [broker, database, results]
        return [await probe_database(cfg.influx, timeout_s), results]
    broker, database = await asyncio.gather(probe_broker(cfg.mqtt, timeout_s), probe_database(cfg.influx, timeout_s))
    if cfg.bridge.enabled:
        return [broker, database, probe_dir("bridge", cfg.bridge.dir, write=True)]
    return [broker, database]
