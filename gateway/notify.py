"""Notifications: alerts to people, through Apprise (ntfy, e-mail, Telegram, Matrix, Slack, webhooks...).

Each ``[[notify]]`` target (docs/notify.md) has a URL for Apprise (a secret: from ``EDGEKIT_NOTIFY_<NAME>_URL`` or
``url_file``, never from the file) and a filter (source, name, severity, site, device). Alerts of one incident (one
source, name, site and key) are one story: its first alert opens it and is sent; while it stays open, further
alerts are quiet (a reminder at most every ``repeat_after_s``); after ``resolve_after_s`` without a new alert it is
resolved, and a resolved message says so. New incidents within ``group_wait_s`` go out as one message (a burst);
at most ``rate_limit`` messages per ``rate_period_s`` leave a target, and what waits meanwhile goes out as one.

A fast alert (``path = arrival``) is sent at once, like any other; if the event-time path retracts it, a
``RETRACTED`` message follows (it closes the incident), unless the alert was still waiting in its group, in which
case neither is sent. A ``confirmed`` event-time alert is a repeat of the incident the fast alert opened (quiet).

Two parts, as everywhere in the gateway: :class:`Router` is the pure logic of one target (alerts and a clock in,
messages out, no I/O); :class:`Notifier` is the edge: a bounded inbox that ingest puts alerts in without ever
waiting (a full inbox is counted, the alerts are in InfluxDB anyway), and its own task that routes them and
delivers with Apprise (in Apprise's worker threads), retrying failed deliveries with backoff.
"""

from __future__ import annotations

import asyncio
import fnmatch
import functools
import logging
import re
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal

from .alerts import Alert, Severity
from .errors import ConfigError

__all__ = [
    "INBOX_MAX",
    "NOTIFY_KEYS",
    "Message",
    "Notifier",
    "NotifySpec",
    "Router",
    "notify_url_env",
    "parse_notify",
    "url_secret_parts",
]

log = logging.getLogger("gateway.notify")

SEVERITY_RANK: Final[dict[str, int]] = {"info": 0, "warning": 1, "critical": 2}
SOURCES: Final = ("pattern", "anomaly", "join", "relative")
INBOX_MAX: Final = 1000
"""Alerts waiting for the notifier's task; more are counted (``notify.shed``) and not notified (they are in
InfluxDB and on MQTT all the same)."""

NOTIFY_KEYS: Final = frozenset({
    "name", "url_file", "sources", "names", "min_severity", "sites", "devices", "group_wait_s", "repeat_after_s",
    "resolve_after_s", "send_resolved", "rate_limit", "rate_period_s", "retry_min_s", "retry_max_s",
    "give_up_after_s", "max_pending", "timeout_s", "title_prefix",
})  # fmt: skip

Kind = Literal["alert", "repeat", "resolved", "retracted", "digest"]


@dataclass(frozen=True, slots=True)
class NotifySpec:
    """One ``[[notify]]`` target. Empty filters match everything; ``names``, ``sites`` and ``devices`` are
    shell-style patterns (``overheat*``, ``site-?``); ``devices`` matches the alert's key or any of its readings'
    devices."""

    name: str
    url: str = field(repr=False)
    sources: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    min_severity: Severity = "info"
    sites: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()
    group_wait_s: float = 10.0
    repeat_after_s: float = 3600.0
    resolve_after_s: float = 300.0
    send_resolved: bool = True
    rate_limit: int = 10
    rate_period_s: float = 60.0
    retry_min_s: float = 1.0
    retry_max_s: float = 60.0
    give_up_after_s: float = 86400.0
    max_pending: int = 100
    timeout_s: float = 10.0
    title_prefix: str = "[edgekit]"

    def matches(self, alert: Alert) -> bool:
        if self.sources and alert.source not in self.sources:
            return False
        if SEVERITY_RANK[alert.severity] < SEVERITY_RANK[self.min_severity]:
            return False
        if self.names and not _any_match(self.names, (alert.name,)):
            return False
        if self.sites and not _any_match(self.sites, (alert.site,)):
            return False
        return not self.devices or _any_match(self.devices, (alert.key, *(r[0] for r in alert.readings)))


def _any_match(patterns: tuple[str, ...], values: Iterable[str]) -> bool:
    match = _matcher(patterns)
    return any(match(v) for v in values)


@functools.lru_cache(maxsize=256)
def _matcher(patterns: tuple[str, ...]) -> Callable[[str], re.Match[str] | None]:
    """The shell patterns as one compiled regular expression (``fnmatch.fnmatchcase`` of any of them)."""
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns)).match


def notify_url_env(name: str) -> str:
    """The variable a target's URL comes from: ``EDGEKIT_NOTIFY_<NAME>_URL`` (``-`` and ``.`` as ``_``)."""
    return f"EDGEKIT_NOTIFY_{re.sub(r'[^A-Za-z0-9]', '_', name).upper()}_URL"


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def parse_notify(raw: object, env: Mapping[str, str]) -> tuple[NotifySpec, ...]:
    """The ``[[notify]]`` list of tables. The URL holds the service's secret (a token, a password, an ntfy topic),
    so it is never read from the file: ``EDGEKIT_NOTIFY_<NAME>_URL`` or ``url_file``; an error never shows it."""
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
        raise ConfigError("notify: expected a list of tables ([[notify]])")
    specs: list[NotifySpec] = []
    for i, table in enumerate(raw):
        where = f"notify[{i}]"
        unknown = sorted(set(table) - NOTIFY_KEYS - {"url"})
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(NOTIFY_KEYS))}")
        name = table.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(f"{where}.name: expected a name of letters, digits, _ . - (at most 64), got {name!r}")
        where = f"notify.{name}"
        if any(s.name == name for s in specs):
            raise ConfigError(f"{where}: a second [[notify]] target of that name")
        env_name = notify_url_env(name)
        if "url" in table:
            raise ConfigError(f"{where}.url: the URL holds a secret and is not read from the config file; "
                              f"set {env_name} or url_file")  # fmt: skip
        url = _url(table, where, env, env_name)
        kw: dict[str, Any] = {}
        for key in ("sources", "names", "sites", "devices"):
            if key in table:
                value = table[key]
                if isinstance(value, str):
                    value = [value]
                if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                    raise ConfigError(f"{where}.{key}: expected a list of non-empty strings, got {value!r}")
                if key == "sources" and (bad := [v for v in value if v not in SOURCES]):
                    raise ConfigError(f"{where}.sources: {bad[0]!r} is not one of {', '.join(SOURCES)}")
                kw[key] = tuple(value)
        if "min_severity" in table:
            sev = table["min_severity"]
            if sev not in SEVERITY_RANK:
                raise ConfigError(f"{where}.min_severity: {sev!r} is not one of {', '.join(SEVERITY_RANK)}")
            kw["min_severity"] = sev
        for key, positive in (("group_wait_s", False), ("repeat_after_s", False), ("resolve_after_s", False),
                              ("rate_period_s", True), ("retry_min_s", True), ("retry_max_s", True),
                              ("give_up_after_s", True), ("timeout_s", True)):  # fmt: skip
            if key in table:
                v = table[key]
                if isinstance(v, bool) or not isinstance(v, int | float) or v < 0 or (positive and v == 0):
                    raise ConfigError(f"{where}.{key}: expected a number of seconds {'> 0' if positive else '>= 0'}, "
                                      f"got {v!r}")  # fmt: skip
                kw[key] = float(v)
        for key in ("rate_limit", "max_pending"):
            if key in table:
                v = table[key]
                if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                    raise ConfigError(f"{where}.{key}: expected an integer >= 1, got {v!r}")
                kw[key] = v
        for key, kind in (("send_resolved", bool), ("title_prefix", str)):
            if key in table:
                if not isinstance(table[key], kind):
                    raise ConfigError(f"{where}.{key}: expected {kind.__name__}, got {table[key]!r}")
                kw[key] = table[key]
        spec = NotifySpec(name=name, url=url, **kw)
        if spec.retry_max_s < spec.retry_min_s:
            raise ConfigError(f"{where}.retry_max_s: {spec.retry_max_s:g} is below retry_min_s {spec.retry_min_s:g}")
        specs.append(spec)
    return tuple(specs)


def _url(table: Mapping[str, Any], where: str, env: Mapping[str, str], env_name: str) -> str:
    if env.get(env_name):
        url, origin = env[env_name].strip(), env_name
    elif "url_file" in table:
        path = table["url_file"]
        if not isinstance(path, str):
            raise ConfigError(f"{where}.url_file: expected a path, got {path!r}")
        try:
            url, origin = Path(path).read_text(encoding="utf-8").strip(), f"{where}.url_file {path!r}"
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ConfigError(f"{where}.url_file: cannot read {path!r}: {why}") from exc
    else:
        raise ConfigError(f"{where}: no URL; set {env_name} (or url_file naming an untracked file), "
                          "e.g. ntfy://ntfy.sh/<your-topic> (docs/notify.md)")  # fmt: skip
    if not url or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        raise ConfigError(f"{where} (from {origin}): the URL is empty or has a space or a second line "
                          "(the URL is not shown: it may hold a secret)")  # fmt: skip
    scheme = url.partition("://")[0] if "://" in url else ""
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme):
        raise ConfigError(f"{where} (from {origin}): not a URL of the form scheme://... (docs/notify.md)")
    if not _apprise().Apprise(asset=_asset()).add(url):
        raise ConfigError(f"{where} (from {origin}): Apprise does not take this {scheme}:// URL (an unknown "
                          "service or a part missing; the URL is not shown: it may hold a secret)")  # fmt: skip
    return url


def _apprise() -> Any:
    import apprise  # imported only with a [[notify]] target: it loads its many plugins

    return apprise


def _asset() -> Any:
    apprise = _apprise()
    return apprise.AppriseAsset(storage_mode="memory", app_id="edgekit", app_desc="edgekit gateway alerts")


# --------------------------------------------------------------------------------------------- logic


@dataclass(frozen=True, slots=True)
class Message:
    """What a target sends: a title, a body, and what it is about."""

    kind: Kind
    severity: Severity
    title: str
    body: str
    alert_ids: tuple[str, ...] = ()
    created_ms: int = 0

    @property
    def notify_type(self) -> str:
        """Apprise's ``NotifyType``: ``success`` for a resolution, else by severity."""
        if self.kind in ("resolved", "retracted"):
            return "success"
        return {"critical": "failure", "warning": "warning", "info": "info"}[self.severity]


@dataclass(slots=True)
class _Incident:
    first: Alert
    opened_ms: int
    last_alert_ms: int
    alerts: int = 1
    since_notified: int = 0
    notified_ms: int | None = None
    """When its opening (or last reminder) was handed out; ``None`` while it waits in its group."""
    severity: Severity = "info"
    fast: set[str] = field(default_factory=set)
    """Ids of its arrival alerts not retracted."""
    solid: bool = False
    """It has an alert of the event-time path (or of a rule with one path): a retraction cannot undo it."""


IncidentKey = tuple[str, str, str, str]


def _key(a: Alert) -> IncidentKey:
    return (a.source, a.name, a.site, a.key)


def _utc(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _max_severity(a: Severity, b: Severity) -> Severity:
    return a if SEVERITY_RANK[a] >= SEVERITY_RANK[b] else b


class Router:
    """The notification logic of one target: :meth:`offer` alerts, :meth:`due` says what to send at ``now_ms``.

    Pure and synchronous; time comes in as an argument. Its counters: ``matched`` (alerts through the filter),
    ``suppressed`` (quiet repeats of an open incident), ``retracted_unsent`` (fast alerts retracted before they
    were sent: neither is sent)."""

    def __init__(self, spec: NotifySpec) -> None:
        self.spec = spec
        self.open: dict[IncidentKey, _Incident] = {}
        self.group: list[IncidentKey] = []
        self.group_since_ms = 0
        self.matched = 0
        self.suppressed = 0
        self.retracted_unsent = 0
        self._out: list[Message] = []
        self._matches: dict[tuple[str, str, str, str, str], bool] = {}
        """The filter's verdict by (source, name, site, key, severity): an alert storm repeats a few of them."""

    def offer(self, alert: Alert, now_ms: int, alert_id: str | None = None) -> None:
        """Take one alert. ``alert_id``: its id when the caller has it (a hash: computed once for every target), or
        ``""`` when no retraction can come (no rule has ``on = "both"``): arrival alerts need not be told apart."""
        ck = (alert.source, alert.name, alert.site, alert.key, alert.severity)
        ok = self._matches.get(ck)
        if ok is None or self.spec.devices:  # a devices filter also looks at the readings' devices
            ok = self.spec.matches(alert)
            if len(self._matches) >= 10_000:
                self._matches.clear()
            self._matches[ck] = ok
        if not ok:
            return
        self.matched += 1
        k = _key(alert)
        inc = self.open.get(k)
        if alert.verdict == "retracted":
            self._retract(k, inc, alert, now_ms)
            return
        if inc is None:
            inc = self.open[k] = _Incident(alert, now_ms, now_ms, severity=alert.severity)
            if not self.group:
                self.group_since_ms = now_ms
            self.group.append(k)
        else:
            inc.alerts += 1
            inc.since_notified += 1
            inc.last_alert_ms = now_ms
            inc.severity = _max_severity(inc.severity, alert.severity)
            self.suppressed += 1
        if alert.path == "arrival":
            if alert_id != "":
                inc.fast.add(alert_id or alert.id)
        else:
            inc.solid = True

    def _retract(self, k: IncidentKey, inc: _Incident | None, alert: Alert, now_ms: int) -> None:
        if inc is None:
            return  # resolved already (its resolved message went out), or filtered
        inc.fast.discard(alert.refers)
        if inc.solid or inc.fast:
            return  # another alert of the incident stands
        del self.open[k]
        if inc.notified_ms is None:  # still in its group: never sent, so nothing to take back
            self.group.remove(k)
            self.retracted_unsent += 1
            return
        a = inc.first
        self._out.append(Message(
            "retracted", a.severity,
            f"{self.spec.title_prefix} RETRACTED {a.source} {a.name} at {a.site}/{a.key}",
            f"The fast alert {alert.refers} ({a.name} on {a.key}, {_utc(a.first_ms)}) was withdrawn: once every "
            f"reading had arrived, the event-time check did not confirm it.",
            (alert.refers, alert.id), now_ms,
        ))  # fmt: skip

    def due(self, now_ms: int) -> list[Message]:
        """The messages to send now: a group whose wait is over, reminders, resolutions (in that order)."""
        spec = self.spec
        if self.group and now_ms - self.group_since_ms >= spec.group_wait_s * 1000:
            self._flush_group(now_ms)
        for k, inc in list(self.open.items()):
            if inc.notified_ms is None:
                continue
            if spec.resolve_after_s and now_ms - inc.last_alert_ms >= spec.resolve_after_s * 1000:
                del self.open[k]
                if spec.send_resolved:
                    self._out.append(self._resolved(inc, now_ms))
            elif spec.repeat_after_s and inc.since_notified and now_ms - inc.notified_ms >= spec.repeat_after_s * 1000:
                self._out.append(self._reminder(inc, now_ms))
                inc.notified_ms, inc.since_notified = now_ms, 0
        out, self._out = self._out, []
        return out

    def _flush_group(self, now_ms: int) -> None:
        incs = [self.open[k] for k in self.group]
        self.group = []
        for inc in incs:
            inc.notified_ms, inc.since_notified = now_ms, 0
        if len(incs) == 1:
            self._out.append(self._opened(incs[0], now_ms))
            return
        sev: Severity = "info"
        for inc in incs:
            sev = _max_severity(sev, inc.severity)
        sites = sorted({inc.first.site for inc in incs})
        title = f"{self.spec.title_prefix} {len(incs)} alerts ({sev}) at {', '.join(sites)}"
        body = "\n\n".join(_describe(inc) for inc in incs)
        self._out.append(Message("alert", sev, title, body, tuple(inc.first.id for inc in incs), now_ms))

    def _opened(self, inc: _Incident, now_ms: int) -> Message:
        a = inc.first
        title = f"{self.spec.title_prefix} {inc.severity.upper()} {a.source} {a.name} at {a.site}/{a.key}"
        return Message("alert", inc.severity, title, _describe(inc), (a.id,), now_ms)

    def _reminder(self, inc: _Incident, now_ms: int) -> Message:
        a = inc.first
        title = f"{self.spec.title_prefix} STILL OPEN {a.source} {a.name} at {a.site}/{a.key}"
        body = (f"{inc.since_notified} more alert(s) since the last message; {inc.alerts} since it opened "
                f"({_utc(a.first_ms)}). First: {a.message or a.name} (id {a.id})")  # fmt: skip
        return Message("repeat", inc.severity, title, body, (a.id,), now_ms)

    def _resolved(self, inc: _Incident, now_ms: int) -> Message:
        a = inc.first
        title = f"{self.spec.title_prefix} RESOLVED {a.source} {a.name} at {a.site}/{a.key}"
        body = (f"No new alert for {self.spec.resolve_after_s:g} s. It opened with alert {a.id} "
                f"({_utc(a.first_ms)}) and had {inc.alerts} alert(s).")  # fmt: skip
        return Message("resolved", inc.severity, title, body, (a.id,), now_ms)

    def snapshot_counts(self) -> dict[str, int]:
        return {"matched": self.matched, "suppressed": self.suppressed, "retracted_unsent": self.retracted_unsent,
                "open": len(self.open)}  # fmt: skip


def _describe(inc: _Incident) -> str:
    a = inc.first
    lines = [f"{a.severity.upper()} {a.source} {a.name} at {a.site}/{a.key}: {a.message or a.name}"]
    if a.details:
        lines.append(", ".join(f"{k} = {v}" for k, v in sorted(a.details.items())[:12]))
    lines.append(f"event time {_utc(a.first_ms)} .. {_utc(a.last_ms)}, {len(a.readings)} reading(s); id {a.id}"
                 + (f" ({a.path}{', ' + a.verdict if a.verdict else ''})" if a.path else ""))  # fmt: skip
    return "\n".join(lines)


def combine(messages: list[Message], prefix: str) -> Message:
    """Several waiting messages (after an outage of the receiver, or over the rate limit) as one."""
    if len(messages) == 1:
        return messages[0]
    sev: Severity = "info"
    for m in messages:
        if m.kind not in ("resolved", "retracted"):
            sev = _max_severity(sev, m.severity)
    kind: Kind = "digest" if any(m.kind not in ("resolved", "retracted") for m in messages) else "resolved"
    body = "\n\n---\n\n".join(f"{m.title}\n{m.body}" for m in messages)
    ids = tuple(i for m in messages for i in m.alert_ids)
    return Message(kind, sev, f"{prefix} {len(messages)} notifications", body, ids, messages[0].created_ms)


# --------------------------------------------------------------------------------------------- delivery


@dataclass(slots=True)
class TargetStats:
    sent: int = 0
    """Messages delivered (a combined one counts once)."""
    failures: int = 0
    """Delivery attempts that failed (each is retried with backoff)."""
    dropped: Counter[str] = field(default_factory=Counter)
    """Messages given up: ``expired`` (older than ``give_up_after_s``), ``overflow`` (over ``max_pending``)."""
    combined: int = 0
    """Messages that went out inside another one (waiting during an outage or over the rate limit)."""


class _Target:
    def __init__(self, spec: NotifySpec) -> None:
        self.spec = spec
        self.router = Router(spec)
        self.pending: deque[Message] = deque()
        self.stats = TargetStats()
        self.sent_at: deque[int] = deque()
        self.next_try_ms = 0
        self.backoff_s = 0.0
        self.sending: asyncio.Task[None] | None = None
        self.apprise: Any = None

    def queue(self, messages: list[Message]) -> None:
        for m in messages:
            if len(self.pending) >= self.spec.max_pending:
                self.pending.popleft()
                self.stats.dropped["overflow"] += 1
            self.pending.append(m)

    def may_send(self, now_ms: int) -> bool:
        period = self.spec.rate_period_s * 1000
        while self.sent_at and now_ms - self.sent_at[0] >= period:
            self.sent_at.popleft()
        return bool(self.pending) and now_ms >= self.next_try_ms and len(self.sent_at) < self.spec.rate_limit


class Notifier:
    """The running notifications: ``offer()`` from ingest (never waits), ``run()`` as a task of its own.

    ``send`` delivers one message to one target and says whether it went (by default through Apprise, in its
    worker threads, bounded by ``timeout_s``); ``now_ms`` is the gateway's clock; ``retractions``: whether a rule
    has ``on = "both"`` (its fast alerts may be retracted)."""

    def __init__(
        self,
        specs: Iterable[NotifySpec],
        now_ms: Callable[[], int],
        *,
        send: Callable[[NotifySpec, Message], Any] | None = None,
        tick_s: float = 0.2,
        retractions: bool = True,
    ) -> None:
        self.targets = [_Target(s) for s in specs]
        self.now_ms = now_ms
        self.inbox: deque[Alert] = deque()
        self.offered = 0
        self.shed = 0
        self.tick_s = tick_s
        self._send = send or self._send_apprise
        self.retractions = retractions
        """False when no rule has ``on = "both"``: no alert is ever retracted, so none's id is needed."""

    def offer(self, alerts: Iterable[Alert]) -> None:
        """From ingest: queue the alerts for the notifier's task. Never waits; over :data:`INBOX_MAX` waiting,
        an alert is counted in ``shed`` and not notified."""
        for a in alerts:
            if len(self.inbox) >= INBOX_MAX:
                self.shed += 1
                continue
            self.inbox.append(a)
            self.offered += 1

    def reconfigure(self, specs: Iterable[NotifySpec]) -> None:
        """After a reload: the targets of ``specs``. A target whose spec is unchanged keeps its open incidents,
        waiting messages and counters; a new or changed one starts afresh; a removed one sends nothing more (a
        delivery under way finishes)."""
        old = {t.spec.name: t for t in self.targets}
        targets = []
        for spec in specs:
            t = old.get(spec.name)
            targets.append(t if t is not None and t.spec == spec else _Target(spec))
        self.targets = targets

    def step(self) -> None:
        """Route what the inbox holds and queue what is due (no I/O)."""
        now = self.now_ms()
        while self.inbox:
            a = self.inbox.popleft()
            aid = a.id if a.path == "arrival" and self.retractions else ""  # the only ids routing needs
            for t in self.targets:
                t.router.offer(a, now, aid)
        for t in self.targets:
            t.queue(t.router.due(now))

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop``: every ``tick_s``, route what the inbox holds and deliver each target's messages in a task
        of its own (a slow or dead receiver holds up no other). Routing once a tick, not once an alert, keeps its
        cost on the event loop small in an alert storm; a notification waits at most a tick for it."""
        try:
            while not stop.is_set():
                self.step()
                now = self.now_ms()
                for t in self.targets:
                    if (t.sending is None or t.sending.done()) and t.may_send(now):
                        t.sending = asyncio.create_task(self._deliver(t), name=f"notify-{t.spec.name}")
                try:
                    await asyncio.wait_for(stop.wait(), self.tick_s)
                except TimeoutError:
                    pass
        finally:
            for t in self.targets:
                if t.sending is not None and not t.sending.done():
                    t.sending.cancel()

    async def _deliver(self, t: _Target) -> None:
        spec = t.spec
        now = self.now_ms()
        while t.pending and now - t.pending[0].created_ms >= spec.give_up_after_s * 1000:
            t.pending.popleft()
            t.stats.dropped["expired"] += 1
        if not t.pending:
            return
        batch = list(t.pending)
        msg = combine(batch, spec.title_prefix)
        try:
            ok = bool(await self._send(spec, msg))
            error = "" if ok else "the service did not take it"
        except Exception as exc:  # a plugin's own failure: tried again like any other
            ok, error = False, type(exc).__name__
        now = self.now_ms()
        if ok:
            for _ in batch:
                t.pending.popleft()
            t.stats.sent += 1
            t.stats.combined += len(batch) - 1
            t.sent_at.append(now)
            t.backoff_s = 0.0
            t.next_try_ms = 0
            return
        t.stats.failures += 1
        t.backoff_s = min(spec.retry_max_s, max(spec.retry_min_s, t.backoff_s * 2))
        t.next_try_ms = now + int(t.backoff_s * 1000)
        log.warning(
            "notify %s: delivery failed (%s); trying again in %g s",
            spec.name, error, t.backoff_s,
            extra={"event": "notify_failed", "target": spec.name, "retry_s": t.backoff_s, "pending": len(t.pending)},
        )  # fmt: skip

    async def _send_apprise(self, spec: NotifySpec, msg: Message) -> bool:
        t = next(t for t in self.targets if t.spec is spec)
        if t.apprise is None:
            apprise = _apprise()
            t.apprise = apprise.Apprise(asset=_asset())
            t.apprise.add(spec.url)
        result = await t.apprise.async_notify(
            body=msg.body, title=msg.title, notify_type=msg.notify_type, timeout=spec.timeout_s
        )
        return bool(result)

    def stats(self) -> dict[str, object]:
        return {
            "offered": self.offered,
            "shed": self.shed,
            "inbox": len(self.inbox),
            "targets": {
                t.spec.name: {
                    **t.router.snapshot_counts(),
                    "sent": t.stats.sent,
                    "failures": t.stats.failures,
                    "combined": t.stats.combined,
                    "dropped": dict(sorted(t.stats.dropped.items())),
                    "pending": len(t.pending),
                }
                for t in self.targets
            },
        }


def url_secret_parts(url: str) -> list[str]:
    """The parts of a notification URL that may be secret: the whole URL, the password, each path segment and
    query value (a token, a topic, a chat id). The host is not among them: it would mask ordinary words."""
    from urllib.parse import unquote

    parts = [url]
    rest = url.partition("://")[2]
    head = re.split(r"[/?#]", rest, maxsplit=1)[0]
    auth, tail = ("", rest) if "@" not in head else (head.rpartition("@")[0], rest[len(head.rpartition("@")[0]) + 1 :])
    if auth:
        parts += [unquote(auth), unquote(auth.partition(":")[2])]
    host = tail.split("/", 1)[0].split("?", 1)[0]
    if host and "." not in host and host.split(":")[0] != "localhost":
        parts.append(unquote(host))  # ntfy://<topic>, tgram://<bot token>/...: the "host" is the secret
    path, _, query = tail.partition("?")
    segments = path.split("/")[1:]
    parts += [unquote(s) for s in segments if s]
    for pair in query.split("&"):
        value = pair.partition("=")[2]
        if value:
            parts.append(unquote(value))
    return parts
