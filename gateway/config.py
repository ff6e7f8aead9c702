"""Gateway configuration: a TOML file, overridden by ``EDGEKIT_*`` environment variables, validated at start.

Secrets (the MQTT password, the InfluxDB password or token, a ``[[notify]]`` target's URL) are never read from the
TOML file: they come from the environment or from a file named by ``password_file`` / ``token_file`` /
``url_file`` (keep it untracked).
Every error names the key and the value, e.g. ``influx.target: 'v3' is not one of v1, v2``.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import tomllib
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import SplitResult, unquote, urlsplit

from .anomaly.config import _DETECTOR_KEYS as ANOMALY_DETECTOR_KEYS
from .anomaly.config import _TOP_KEYS as ANOMALY_TOP_KEYS
from .anomaly.config import AnomalySpec, parse_anomaly
from .cep.config import parse_patterns
from .cep.expr import Ref
from .cep.pattern import PatternSpec
from .engine.config import ENGINE_KEYS, WATERMARK_KEYS, EngineSpec, parse_engine
from .errors import ConfigError
from .groups import GroupsSpec, check_groups, parse_groups
from .joins.config import JoinSpec, check_joins, parse_joins
from .notify import NotifySpec, parse_notify, url_secret_parts
from .protocol import METRIC_RE, NAME_RE, RESERVED_METRICS, Limits
from .schema import MetricTypes

__all__ = [
    "ENV_KEYS",
    "NOT_CONFIG",
    "SECTION_KEYS",
    "BridgeConfig",
    "Config",
    "DevicesConfig",
    "HomeAssistantConfig",
    "InfluxConfig",
    "LogConfig",
    "MetricTypes",
    "MetricsConfig",
    "MqttConfig",
    "SinkOnlyConfig",
    "StateConfig",
    "load_config",
    "parse_config",
    "redact_url",
    "secret_values",
]

ENV_PREFIX = "EDGEKIT_"


@dataclass(frozen=True, slots=True)
class MqttConfig:
    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    client_id: str = "edgekit-gateway"
    prefix: str = "edgekit"
    topics: tuple[str, ...] = ()
    qos: int = 1
    clean_session: bool = False
    keepalive_s: int = 30
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    max_inflight: int = 100
    """Unacknowledged messages the broker may send at once (MQTT 5 Receive Maximum)."""
    tls: bool = False
    """``mqtts://`` URL: TLS, verified against ``ca_file`` (or the system store)."""
    ca_file: str | None = None
    session_expiry_s: int = 7 * 24 * 3600
    """How long the broker keeps the persistent session (and queues for it) while the gateway is away."""

    @property
    def subscriptions(self) -> tuple[str, ...]:
        return self.topics or (f"{self.prefix}/#",)


@dataclass(frozen=True, slots=True)
class InfluxConfig:
    target: Literal["v1", "v2"] = "v1"
    url: str = "http://127.0.0.1:8086"
    database: str = "edgekit"
    retention_policy: str = ""
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    create_database: bool = True
    org: str = ""
    bucket: str = ""
    token: str | None = field(default=None, repr=False)
    batch_size: int = 1000
    flush_interval_ms: int = 500
    max_buffered: int = 100_000
    timeout_s: float = 10.0
    retry_max_s: float = 30.0


@dataclass(frozen=True, slots=True)
class DevicesConfig:
    allow_unknown: bool = True
    known: frozenset[str] = frozenset()
    max_devices: int = 10_000
    """At most this many devices get state (dedup, watermarks, windows, patterns, detectors); messages from
    further devices are dead letters (``too_many_devices``), so made-up ids cannot use up the memory."""
    max_metric_names: int = 32
    """Distinct metric names one device may use; a reading that would take it past them is a dead letter
    (``too_many_metrics``), so one device cannot use up anomaly detection or the ``reading`` measurement's
    fields. The ``reading`` measurement gets at most ``3 + max_devices * max_metric_names`` field keys."""
    sites: Mapping[str, str] = field(default_factory=dict)
    """Declared sites (``[devices.sites]``, device id -> site). A device is bound to the site it is first
    admitted under; a declared device only to its declared one. A message under another site is a dead letter
    (``site_mismatch``), except under the declared site: that moves the device there (docs/reliability.md)."""
    properties: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    """Declared device properties (``[devices.properties]``, device id -> {name: value}): what joins keyed by
    ``property:<name>`` join on (docs/correlation.md)."""


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str = "INFO"
    format: Literal["json", "text"] = "json"


@dataclass(frozen=True, slots=True)
class StateConfig:
    """Durable state (docs/reliability.md): ingest log, checkpoint and spool in ``<dir>/<client_id>.db``."""

    dir: str = ".run/gateway-state"
    sync: Literal["normal", "full"] = "normal"
    checkpoint_interval_s: float = 2.0
    checkpoint_max_log_rows: int = 50_000
    """A checkpoint is taken early when the log holds this many records (bounds its disk use)."""
    spool_max_bytes: int = 512 * 1024 * 1024
    ingest_batch: int = 100
    """At most this many messages are appended (one transaction) and acknowledged together."""


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """Prometheus ``/metrics`` and ``/healthz`` over HTTP; ``port = 0`` turns the server off."""

    host: str = "127.0.0.1"
    port: int = 0


@dataclass(frozen=True, slots=True)
class HomeAssistantConfig:
    """``[homeassistant]``: MQTT discovery messages for Home Assistant (docs/homeassistant.md); off by default."""

    enabled: bool = False
    discovery_prefix: str = "homeassistant"
    alert_off_delay_s: int = 600
    """An alert's binary sensor goes back to off this long after its last alert (Home Assistant's ``off_delay``)."""


@dataclass(frozen=True, slots=True)
class BridgeConfig:
    """``[bridge]``: bridge mode (docs/scale-out.md): forward every accepted reading to a Flink job; the windows,
    patterns and anomaly rules run there. Off when the section is absent."""

    enabled: bool = False
    to: Literal["files", "kafka"] = "files"
    """``files``: the directory is the one the job's files source monitors; ``kafka``: it is the local outbox the
    files are sent to Kafka from."""
    dir: str = ""
    roll_bytes: int = 8 * 1024 * 1024
    """A file is complete (renamed into the job's sight) at the first checkpoint once it has this many bytes..."""
    roll_interval_s: float = 10.0
    """... or once it is this old."""
    kafka_servers: tuple[str, ...] = ()
    kafka_topic: str = "edgekit-readings"
    kafka_client_id: str = ""
    kafka_linger_ms: int = 20


@dataclass(frozen=True, slots=True)
class SinkOnlyConfig:
    """``[sink_only]``: sink-only mode (docs/scale-out.md): write a Flink job's results (files under ``dir``:
    ``windows/``, ``late/``, ``alerts/``) to InfluxDB with the spool and retries. Off when the section is absent."""

    enabled: bool = False
    dir: str = ""
    poll_interval_s: float = 1.0
    publish: bool = False
    """The job's alerts also on MQTT (``<prefix>/_gateway/alerts/<site>/<source>``, QoS 1, as a standalone gateway
    publishes them) through the broker ``[mqtt]`` names; off: InfluxDB (and ``[[notify]]``) only."""


@dataclass(frozen=True, slots=True)
class Config:
    mqtt: MqttConfig = MqttConfig()
    influx: InfluxConfig = InfluxConfig()
    limits: Limits = Limits()
    devices: DevicesConfig = DevicesConfig()
    log: LogConfig = LogConfig()
    state: StateConfig = StateConfig()
    metrics: MetricsConfig = MetricsConfig()
    engine: EngineSpec = EngineSpec()
    """Windows and watermarks (``[engine]`` and ``[[windows]]``, see docs/semantics.md)."""
    anomaly: AnomalySpec = AnomalySpec()
    """Anomaly detection (``[anomaly]``, see docs/anomaly.md); off when the section is absent."""
    patterns: tuple[PatternSpec, ...] = ()
    """CEP patterns (``[[patterns]]``, see docs/cep.md), validated at start."""
    joins: tuple[JoinSpec, ...] = ()
    """Interval joins (``[[joins]]``, see docs/correlation.md), validated at start."""
    metric_types: MetricTypes = MetricTypes()
    """The type of each metric (``[metric_types]``, see docs/protocol.md): a float unless declared otherwise."""
    notify: tuple[NotifySpec, ...] = ()
    """Notification targets (``[[notify]]``, see docs/notify.md)."""
    homeassistant: HomeAssistantConfig = HomeAssistantConfig()
    """Home Assistant MQTT discovery (``[homeassistant]``, see docs/homeassistant.md)."""
    bridge: BridgeConfig = BridgeConfig()
    """Bridge mode (``[bridge]``, docs/scale-out.md); off when the section is absent."""
    sink_only: SinkOnlyConfig = SinkOnlyConfig()
    """Sink-only mode (``[sink_only]``, docs/scale-out.md); off when the section is absent."""
    groups: GroupsSpec = GroupsSpec()
    """Declared device groups (``[groups]``, see docs/cep.md "Groups"); ``groups.index().groups_of(device, site)``."""
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)
    """The whole parsed document, for sections other modules own (such as ``windows``)."""
    from_env: Mapping[str, str] = field(default_factory=dict)
    """``table.key`` -> the ``EDGEKIT_*`` variable that set it, for each key set from the environment."""


# --- the schema: every table and its keys --------------------------------------------------------------

MQTT_KEYS: frozenset[str] = frozenset({
    "url", "username", "password", "password_file", "client_id", "prefix", "topics", "qos",
    "clean_session", "keepalive_s", "reconnect_min_s", "reconnect_max_s", "max_inflight", "ca_file",
    "session_expiry_s",
})  # fmt: skip
INFLUX_KEYS: frozenset[str] = frozenset({
    "target", "url", "database", "retention_policy", "username", "password", "password_file",
    "create_database", "org", "bucket", "token", "token_file", "batch_size", "flush_interval_ms",
    "max_buffered", "timeout_s", "retry_max_s",
})  # fmt: skip
LIMITS_KEYS = frozenset({"max_bytes", "max_readings", "max_metrics", "max_string", "min_time_ms", "max_future_ms"})
DEVICES_KEYS = frozenset({"allow_unknown", "known", "max_devices", "max_metric_names", "sites", "properties"})
LOG_KEYS = frozenset({"level", "format"})
STATE_KEYS = frozenset(
    {"dir", "sync", "checkpoint_interval_s", "checkpoint_max_log_rows", "spool_max_bytes", "ingest_batch"}
)
METRICS_KEYS = frozenset({"host", "port"})
HOMEASSISTANT_KEYS = frozenset({"enabled", "discovery_prefix", "alert_off_delay_s"})
METRIC_TYPES_KEYS = frozenset({"integer", "boolean", "string"})
BRIDGE_KEYS = frozenset(
    {"to", "dir", "roll_bytes", "roll_interval_s", "kafka_servers", "kafka_topic", "kafka_client_id", "kafka_linger_ms"}
)
SINK_ONLY_KEYS = frozenset({"dir", "poll_interval_s", "publish"})

SECTION_KEYS: Mapping[str, frozenset[str]] = {
    "mqtt": MQTT_KEYS,
    "influx": INFLUX_KEYS,
    "limits": LIMITS_KEYS,
    "devices": DEVICES_KEYS,
    "log": LOG_KEYS,
    "state": STATE_KEYS,
    "metrics": METRICS_KEYS,
    "homeassistant": HOMEASSISTANT_KEYS,
    "metric_types": METRIC_TYPES_KEYS,
    "bridge": BRIDGE_KEYS,
    "sink_only": SINK_ONLY_KEYS,
    "engine": ENGINE_KEYS,
    "engine.watermark": WATERMARK_KEYS,
    "anomaly": frozenset(ANOMALY_TOP_KEYS | ANOMALY_DETECTOR_KEYS),
}
"""Every table of the file with the keys its parser accepts (``windows``, ``patterns`` and ``joins``, lists of
tables, and ``groups``, whose keys are the user's names, are set in the file only)."""

SECRET_KEYS = frozenset({"mqtt.password", "influx.password", "influx.token"})
"""Read from ``EDGEKIT_MQTT_PASSWORD``, ``EDGEKIT_INFLUX_PASSWORD``, ``EDGEKIT_INFLUX_TOKEN`` (or a file), never
from the configuration file."""


def _env_keys() -> dict[str, tuple[str, str]]:
    names: dict[str, tuple[str, str]] = {}
    for path, keys in SECTION_KEYS.items():
        for key in keys:
            name = f"{ENV_PREFIX}{path.replace('.', '_')}_{key}".upper()
            assert name not in names, f"{name} would name both {names[name]} and {(path, key)}"
            names[name] = (path, key)
    return names


ENV_KEYS: Mapping[str, tuple[str, str]] = _env_keys()
"""``EDGEKIT_<SECTION>_<KEY>`` -> (table, key), for every key of :data:`SECTION_KEYS`."""

NOT_CONFIG: Mapping[str, str] = {
    "EDGEKIT_STATS_FILE": "the default of edgekit-gateway run/top --stats-file",
    "EDGEKIT_ENGINE": (
        "pure or compiled: which build of the window engine, anomaly detectors and patterns to load "
        "(pure: the message decoder's reference alone too)"
    ),
    "EDGEKIT_COMPILE": "0: scripts/setup.sh skips the compiled window engine, anomaly detectors and patterns",
    "EDGEKIT_FLINK": "0: scripts/setup.sh skips Apache Flink (the scale-out tests need it)",
    "EDGEKIT_DEMO_*": "make demo's ports (EDGEKIT_DEMO_MQTT_PORT, EDGEKIT_DEMO_INFLUX_PORT, ...)",
    "EDGEKIT_BROKER_AUTH": "docker-compose.yml's .env: the broker's access",
    "EDGEKIT_GATEWAY_*": "docker-compose.yml's .env: the gateway's broker login",
    "EDGEKIT_SIM_*": "docker-compose.yml's .env: the simulator's broker",
    "EDGEKIT_SIM": "the simulated board's hardware file (sim/board)",
    "EDGEKIT_CLOCK": "the simulated board's clock file (sim/board)",
    "EDGEKIT_MICROPYTHON": "the MicroPython unix port the firmware tests run",
    "EDGEKIT_ACCOUNTING_*": "the accounting test's seed, examples and shrinking",
    "EDGEKIT_PROPERTY_EXAMPLES": "the decoder property tests' examples",
    "EDGEKIT_SKAB": "the SKAB data folder the anomaly tests read (docs/anomaly.md)",
    "EDGEKIT_WIFI_PASSWORD": "edgekit-fleet wifi: the boards' Wi-Fi password, instead of asking for it",
    "EDGEKIT_NOTIFY_*": "a [[notify]] target's URL, a secret: EDGEKIT_NOTIFY_<NAME>_URL (docs/notify.md)",
}
"""``EDGEKIT_*`` variables that are not configuration keys (a trailing ``*``: every name with that prefix). Any
other ``EDGEKIT_*`` variable that names no key is refused, as an unknown key in the file is."""


def _not_config(name: str) -> bool:
    return any(name == k or (k.endswith("*") and name.startswith(k[:-1])) for k in NOT_CONFIG)


def _env_overrides(env: Mapping[str, str]) -> dict[str, str]:
    """The ``EDGEKIT_*`` variables of ``env`` that set configuration keys; an unknown one is an error."""
    secrets = {f"{ENV_PREFIX}{k.replace('.', '_').upper()}" for k in SECRET_KEYS}
    out: dict[str, str] = {}
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or name in secrets or _not_config(name):
            continue
        if name not in ENV_KEYS:
            near = difflib.get_close_matches(name, [*ENV_KEYS, *secrets], n=1)
            raise ConfigError(
                f"unknown environment variable {name}: no configuration key is called that"
                + (f" (did you mean {near[0]}?)" if near else "")
                + "; a key is set as EDGEKIT_<SECTION>_<KEY>, e.g. EDGEKIT_INFLUX_BATCH_SIZE (the README lists "
                "the EDGEKIT_* variables that are not configuration)"
            )
        out[name] = env[name]
    return out


_NO_VALUE: Any = object()


def _toml_value(text: str) -> Any:
    """The one TOML value ``text`` spells, with nothing before or after it (no comment, no second line, no
    second value), or ``_NO_VALUE``."""
    text = text.strip()
    if not text or text.endswith(",") or "\n" in text:
        return _NO_VALUE
    try:
        # inside brackets on one line: a comment would swallow the closing bracket, a second value makes two
        items = tomllib.loads(f"v = [{text}]")["v"]
    except tomllib.TOMLDecodeError:
        return _NO_VALUE
    return items[0] if len(items) == 1 else _NO_VALUE


def _string_literal(text: str) -> str | None:
    """``text`` as a string, when it is one complete TOML string literal (``"edgekit"``, ``'x'``)."""
    value = _toml_value(text)
    return value if isinstance(value, str) and text.strip()[:1] in "\"'" else None


def _env_values(name: str, raw: str) -> tuple[list[Any], int]:
    """What the value ``raw`` of variable ``name`` may stand for, in the order tried, and which one's error to
    show when none fits. A complete TOML string literal (``"edgekit"``) is that string, for every key.
    Otherwise: the text itself; the one TOML value it spells (``5``, ``2.5``, ``true``, ``["a", "b"]``, ``[]``,
    ``{dev-0001 = "north"}``), nothing after it; a comma-separated list of one or more non-empty items. An empty
    value is the empty text, as ``key = ""`` in the file."""
    path, key = ENV_KEYS[name]
    if any(ord(c) < 32 or ord(c) == 127 for c in raw):  # the value is not shown: it may be a URL with a password
        raise ConfigError(
            f"{path}.{key} (from {name}): the value contains a control character (a second line?); "
            "an environment value is one line"
        )
    literal = _string_literal(raw)
    if literal is not None:
        return [literal], 0
    out: list[Any] = [raw]
    value = _toml_value(raw)
    if value is not _NO_VALUE and value != raw:
        out.append(value)
    items = [item.strip() for item in raw.split(",")]
    if all(items):
        out.append([s if (s := _string_literal(item)) is not None else item for item in items])
    return out, (1 if len(out) > 1 and out[1] is value else 0)


def _overlay(doc: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """``doc`` with each (table, key) of ``values`` (by variable name) set, the file's value replaced."""
    out = dict(doc)
    for name, value in values.items():
        path, key = ENV_KEYS[name]
        node = out
        for part in path.split("."):
            child = node.get(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{path}: expected a table, got {child!r}")
            node[part] = child = dict(child)
            node = child
        node[key] = value
    return out


def _blamed(exc: ConfigError, names: Mapping[str, Any]) -> str | None:
    """The variable whose key ``exc`` is about (its message starts with ``table.key``), if one is set."""
    text = str(exc)
    for name in sorted(names, key=len, reverse=True):  # engine.watermark.mode before engine.watermark
        path, key = ENV_KEYS[name]
        if re.match(rf"{re.escape(path)}\.{re.escape(key)}\b", text):
            return name
    return None


# --- small typed readers -------------------------------------------------------------------------


def _section(doc: Mapping[str, Any], name: str, allowed: AbstractSet[str]) -> dict[str, Any]:
    value = doc.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{name}] must be a table, got {value!r}")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise ConfigError(f"[{name}]: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(allowed))}")
    return dict(value)


def _get(sec: dict[str, Any], where: str, key: str, kind: type | tuple[type, ...], default: Any) -> Any:
    if key not in sec:
        return default
    value = sec[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise ConfigError(f"{where}.{key}: expected {kinds[0].__name__}, got {value!r}")
    if not isinstance(value, kinds):
        raise ConfigError(f"{where}.{key}: expected {kinds[0].__name__}, got {value!r}")
    return value


def _positive(where: str, key: str, value: float) -> float:
    if value <= 0:
        raise ConfigError(f"{where}.{key}: must be > 0, got {value!r}")
    return value


def _secret(sec: dict[str, Any], where: str, key: str, env: Mapping[str, str], env_name: str) -> str | None:
    if key in sec:
        raise ConfigError(f"{where}.{key}: secrets are not read from the config file; set {env_name} or {key}_file")
    if env.get(env_name):
        value, origin = env[env_name], env_name
    else:
        path = _get(sec, where, f"{key}_file", str, None)
        if path is None:
            return None
        try:
            value, origin = Path(path).read_text(encoding="utf-8").strip(), f"{where}.{key}_file {path!r}"
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ConfigError(f"{where}.{key}_file: cannot read {path!r}: {why}") from exc
    if any(ord(c) < 32 or ord(c) == 127 for c in value):  # the value itself is never shown
        raise ConfigError(f"{where}.{key} (from {origin}): contains a control character (a second line?)")
    return value


def redact_url(url: str) -> str:
    """``url`` fit to show: a password in it becomes ``***`` (and a query or fragment, which may carry ``p=``,
    ``token=``), even when the URL is malformed: the user information is everything before the last ``@`` (a
    password may contain ``@``, ``/``, ``#`` or ``?``), spaces, quotes and ``<>`` around it are dropped."""
    text = url.strip().strip("<>\"'").strip()
    head, sep, rest = text.partition("//")
    if not sep:
        head, rest = "", text
    if "@" in rest:
        userinfo, _, host = rest.rpartition("@")
        user = re.split(r"[:/?#]", userinfo, maxsplit=1)[0]
        rest = f"{user}{':***' if user != userinfo else ''}@{host}"
    cut = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=-1)
    if cut >= 0:
        rest = rest[: cut + 1] + "***"
    return head + sep + rest


_NOT_SHOWN = "(the URL is not shown: it may hold a password)"


def _url(sec: dict[str, Any], where: str, default: str, expected: str) -> tuple[str, str | None]:
    """The URL of ``sec`` and its user information (everything before the last ``@``, or ``None``), checked
    without ever showing it: an error describes what is wrong instead."""
    url = sec.get("url", default)
    if not isinstance(url, str):
        raise ConfigError(f"{where}: expected a string, {expected}, got a {type(url).__name__} {_NOT_SHOWN}")
    if not url:
        raise ConfigError(f"{where}: empty; expected {expected}")
    if url != url.strip() or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        raise ConfigError(f"{where}: the URL has a space or control character in or around it; write it bare, "
                          f"as {expected} {_NOT_SHOWN}")  # fmt: skip
    if url.startswith(("<", '"', "'")) or url.endswith((">", '"', "'")):
        raise ConfigError(f"{where}: the URL has quotes or <> around it; write it bare, as {expected} {_NOT_SHOWN}")
    rest = url.partition("//")[2] if "//" in url else url
    return url, (rest.rpartition("@")[0] if "@" in rest else None)


def _split_url(where: str, url: str, expected: str) -> SplitResult:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises for a bad port)
    except ValueError:
        # Python's message quotes the part it could not read, which may be a piece of a password
        raise ConfigError(f"{where}: expected {expected}; the host or port cannot be read {_NOT_SHOWN}") from None
    return parts


def secret_values(config: Config) -> tuple[str, ...]:
    """Every secret of ``config`` (MQTT password, InfluxDB password and token, the parts of each notification URL
    that may be secret: ``gateway.notify.url_secret_parts``) in each form it may take on the
    way out: as given, JSON- and repr-escaped, percent-encoded, and as the HTTP Basic credentials it makes.
    The log formatter removes each of them from every line (``gateway.logs``)."""
    import base64
    import json
    from urllib.parse import quote, quote_plus

    forms: set[str] = set()
    for user, secret in (
        (config.mqtt.username, config.mqtt.password),
        (config.influx.username, config.influx.password),
        (None, config.influx.token),
        *((None, part) for spec in config.notify for part in url_secret_parts(spec.url)),
    ):
        if not secret:
            continue
        forms.update({secret, json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1]})
        forms.update({repr(secret)[1:-1], quote(secret, safe=""), quote(secret, safe="!$&'()*+,;=:")})
        forms.add(quote_plus(secret))
        # and each long run of letters and digits in it, which survives any escaping of the characters around it
        forms.update(run for run in re.findall(r"[A-Za-z0-9]+", secret) if len(run) >= 8)
        for login in {user or "", ""}:
            for encoding in ("utf-8", "latin-1"):
                try:
                    forms.add(base64.b64encode(f"{login}:{secret}".encode(encoding)).decode())
                except UnicodeEncodeError:
                    pass
    # a value of a few characters would blank out ordinary words everywhere (and is no secret)
    return tuple(sorted((f for f in forms if len(f) >= 4), key=len, reverse=True))


# --- sections --------------------------------------------------------------------------------------


def _mqtt(doc: Mapping[str, Any], env: Mapping[str, str]) -> MqttConfig:
    sec = _section(doc, "mqtt", MQTT_KEYS)
    expected = "mqtt://host[:port] or mqtts://host[:port]"
    url, userinfo = _url(sec, "mqtt.url", "mqtt://127.0.0.1:1883", expected)
    if (userinfo is not None and any(c in userinfo for c in ":/?#")) or "?" in url or "#" in url:
        raise ConfigError(
            f"mqtt.url: put no password in the URL (nor a query): {_NOT_SHOWN}; set mqtt.username and "
            "EDGEKIT_MQTT_PASSWORD (or mqtt.password_file)"
        )
    password = _secret(sec, "mqtt", "password", env, "EDGEKIT_MQTT_PASSWORD")
    parts = _split_url("mqtt.url", url, expected)
    if parts.scheme not in ("mqtt", "tcp", "mqtts") or not parts.hostname:
        raise ConfigError(f"mqtt.url: expected {expected}: a scheme mqtt, tcp or mqtts and a host {_NOT_SHOWN}")
    tls = parts.scheme == "mqtts"
    if not tls and "ca_file" in sec:
        raise ConfigError("mqtt.ca_file: set, but mqtt.url is not mqtts://: the connection would be plaintext")
    port = parts.port or (8883 if tls else 1883)
    username = _get(sec, "mqtt", "username", str, None) or (unquote(parts.username) if parts.username else None)
    prefix = _get(sec, "mqtt", "prefix", str, "edgekit")
    if not NAME_RE.fullmatch(prefix):
        raise ConfigError(f"mqtt.prefix: {prefix!r} is not 1-32 of [A-Za-z0-9_-]")
    topics = _get(sec, "mqtt", "topics", list, [])
    if not all(isinstance(t, str) and t for t in topics):
        raise ConfigError(f"mqtt.topics: expected a list of topic filters, got {topics!r}")
    qos = _get(sec, "mqtt", "qos", int, 1)
    if qos != 1:
        # QoS 0 has no acknowledgement to hold back until the log has the message, and under QoS 2 the
        # client library answers PUBREC on receipt: only QoS 1 keeps "acknowledged only once logged"
        raise ConfigError(f"mqtt.qos: the gateway subscribes at QoS 1 (acknowledged once logged), got {qos!r}")
    lo = _positive("mqtt", "reconnect_min_s", float(_get(sec, "mqtt", "reconnect_min_s", (int, float), 0.5)))
    hi = _positive("mqtt", "reconnect_max_s", float(_get(sec, "mqtt", "reconnect_max_s", (int, float), 30.0)))
    if hi < lo:
        raise ConfigError(f"mqtt.reconnect_max_s: {hi} is below reconnect_min_s {lo}")
    return MqttConfig(
        host=parts.hostname,
        port=port,
        username=username,
        password=password,
        client_id=_get(sec, "mqtt", "client_id", str, "edgekit-gateway"),
        prefix=prefix,
        topics=tuple(topics),
        qos=qos,
        clean_session=_get(sec, "mqtt", "clean_session", bool, False),
        keepalive_s=int(_positive("mqtt", "keepalive_s", _get(sec, "mqtt", "keepalive_s", int, 30))),
        reconnect_min_s=lo,
        reconnect_max_s=hi,
        max_inflight=int(_positive("mqtt", "max_inflight", _get(sec, "mqtt", "max_inflight", int, 100))),
        tls=tls,
        ca_file=_get(sec, "mqtt", "ca_file", str, None),
        session_expiry_s=int(
            _positive("mqtt", "session_expiry_s", _get(sec, "mqtt", "session_expiry_s", int, 7 * 24 * 3600))
        ),
    )


def _influx(doc: Mapping[str, Any], env: Mapping[str, str]) -> InfluxConfig:
    sec = _section(doc, "influx", INFLUX_KEYS)
    target = _get(sec, "influx", "target", str, "v1")
    if target not in ("v1", "v2"):
        raise ConfigError(f"influx.target: {target!r} is not one of v1, v2")
    expected = "http(s)://host:port"
    url, userinfo = _url(sec, "influx.url", "http://127.0.0.1:8086", expected)
    if userinfo is not None or "?" in url or "#" in url:
        # the writer sends the user and password as HTTP Basic credentials (v1) or the token (v2): a URL that
        # carried them would show them in every message that names the URL
        raise ConfigError(
            f"influx.url: put no user, password, token or query in the URL {_NOT_SHOWN}; set "
            "influx.username and EDGEKIT_INFLUX_PASSWORD (or influx.password_file), or EDGEKIT_INFLUX_TOKEN"
        )
    parts = _split_url("influx.url", url, expected)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"influx.url: expected {expected}: a scheme http or https and a host {_NOT_SHOWN}")
    password = _secret(sec, "influx", "password", env, "EDGEKIT_INFLUX_PASSWORD")
    token = _secret(sec, "influx", "token", env, "EDGEKIT_INFLUX_TOKEN")
    cfg = InfluxConfig(
        target=target,
        url=url.rstrip("/"),
        database=_get(sec, "influx", "database", str, "edgekit"),
        retention_policy=_get(sec, "influx", "retention_policy", str, ""),
        username=_get(sec, "influx", "username", str, None) or None,
        password=password,
        create_database=_get(sec, "influx", "create_database", bool, True),
        org=_get(sec, "influx", "org", str, ""),
        bucket=_get(sec, "influx", "bucket", str, ""),
        token=token,
        batch_size=int(_positive("influx", "batch_size", _get(sec, "influx", "batch_size", int, 1000))),
        flush_interval_ms=int(
            _positive("influx", "flush_interval_ms", _get(sec, "influx", "flush_interval_ms", int, 500))
        ),
        max_buffered=int(_positive("influx", "max_buffered", _get(sec, "influx", "max_buffered", int, 100_000))),
        timeout_s=float(_positive("influx", "timeout_s", _get(sec, "influx", "timeout_s", (int, float), 10.0))),
        retry_max_s=float(_positive("influx", "retry_max_s", _get(sec, "influx", "retry_max_s", (int, float), 30.0))),
    )
    if cfg.target == "v1" and not cfg.database:
        raise ConfigError("influx.database: required for target v1")
    if cfg.target == "v2" and not cfg.bucket:
        raise ConfigError("influx.bucket: required for target v2 (org and token too, for InfluxDB 2.x)")
    if cfg.max_buffered < cfg.batch_size:
        raise ConfigError(f"influx.max_buffered: {cfg.max_buffered} is below batch_size {cfg.batch_size}")
    return cfg


def _limits(doc: Mapping[str, Any]) -> Limits:
    defaults = Limits()
    sec = _section(doc, "limits", LIMITS_KEYS)
    values = {
        key: int(_positive("limits", key, _get(sec, "limits", key, int, getattr(defaults, key)))) for key in LIMITS_KEYS
    }
    return Limits(**values)


def _devices(doc: Mapping[str, Any]) -> DevicesConfig:
    sec = _section(doc, "devices", DEVICES_KEYS)
    known = _get(sec, "devices", "known", list, [])
    bad = [d for d in known if not isinstance(d, str) or not NAME_RE.fullmatch(d)]
    if bad:
        raise ConfigError(f"devices.known: not device ids: {bad!r}")
    allow_unknown = _get(sec, "devices", "allow_unknown", bool, True)
    if not allow_unknown and not known:
        raise ConfigError("devices.allow_unknown = false needs a non-empty devices.known list")
    max_devices = int(_positive("devices", "max_devices", _get(sec, "devices", "max_devices", int, 10_000)))
    if len(set(known)) > max_devices:
        raise ConfigError(f"devices.max_devices: {max_devices} is below the {len(set(known))} devices of devices.known")
    max_metric_names = int(_positive("devices", "max_metric_names", _get(sec, "devices", "max_metric_names", int, 32)))
    sites: dict[str, Any] = _get(sec, "devices", "sites", dict, {})
    wrong = {
        d: v for d, v in sites.items() if not (isinstance(v, str) and NAME_RE.fullmatch(d) and NAME_RE.fullmatch(v))
    }
    if wrong:
        raise ConfigError(f"devices.sites: expected device id = site, both 1-32 of [A-Za-z0-9_-], got {wrong!r}")
    properties: dict[str, Any] = _get(sec, "devices", "properties", dict, {})
    for d, props in properties.items():
        if not NAME_RE.fullmatch(d) or not isinstance(props, dict):
            raise ConfigError(
                f'devices.properties: expected device id = {{ name = "value", ... }}, got {d} = {props!r}'
            )
        wrong_props = {
            k: v
            for k, v in props.items()
            if not (METRIC_RE.fullmatch(k) and isinstance(v, str) and NAME_RE.fullmatch(v))
        }
        if wrong_props:
            raise ConfigError(
                f"devices.properties.{d}: expected name = value, names of [a-z0-9_], values 1-32 of [A-Za-z0-9_-], "
                f"got {wrong_props!r}"
            )
    return DevicesConfig(
        allow_unknown=allow_unknown,
        known=frozenset(known),
        max_devices=max_devices,
        max_metric_names=max_metric_names,
        sites=dict(sites),
        properties={d: dict(p) for d, p in properties.items()},
    )


def _log(doc: Mapping[str, Any], env: Mapping[str, str]) -> LogConfig:
    sec = _section(doc, "log", LOG_KEYS)
    level = str(_get(sec, "log", "level", str, "INFO")).upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"log.level: {level!r} is not one of DEBUG, INFO, WARNING, ERROR")
    fmt = _get(sec, "log", "format", str, "json")
    if fmt not in ("json", "text"):
        raise ConfigError(f"log.format: {fmt!r} is not one of json, text")
    return LogConfig(level=level, format=fmt)


def _state(doc: Mapping[str, Any], env: Mapping[str, str]) -> StateConfig:
    d = StateConfig()
    sec = _section(doc, "state", STATE_KEYS)
    sync = _get(sec, "state", "sync", str, d.sync)
    if sync not in ("normal", "full"):
        raise ConfigError(f"state.sync: {sync!r} is not one of normal, full")

    def num(key: str, kind: type | tuple[type, ...]) -> Any:
        return _positive("state", key, _get(sec, "state", key, kind, getattr(d, key)))

    return StateConfig(
        dir=_get(sec, "state", "dir", str, d.dir),
        sync=sync,
        checkpoint_interval_s=float(num("checkpoint_interval_s", (int, float))),
        checkpoint_max_log_rows=int(num("checkpoint_max_log_rows", int)),
        spool_max_bytes=int(num("spool_max_bytes", int)),
        ingest_batch=int(num("ingest_batch", int)),
    )


def _metrics(doc: Mapping[str, Any], env: Mapping[str, str]) -> MetricsConfig:
    sec = _section(doc, "metrics", METRICS_KEYS)
    port = sec.get("port", 0)
    try:
        port = int(port)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"metrics.port: expected an integer, got {port!r}") from exc
    if not 0 <= port <= 65535:
        raise ConfigError(f"metrics.port: {port} is not 0..65535")
    return MetricsConfig(host=_get(sec, "metrics", "host", str, "127.0.0.1"), port=port)


def _homeassistant(doc: Mapping[str, Any]) -> HomeAssistantConfig:
    sec = _section(doc, "homeassistant", HOMEASSISTANT_KEYS)
    d = HomeAssistantConfig()
    prefix = _get(sec, "homeassistant", "discovery_prefix", str, d.discovery_prefix)
    if not prefix or prefix.startswith("/") or prefix.endswith("/") or any(c in prefix for c in "+#\0"):
        raise ConfigError(
            f"homeassistant.discovery_prefix: {prefix!r} must be a non-empty topic without + # and without a "
            "leading or trailing /"
        )
    off = _get(sec, "homeassistant", "alert_off_delay_s", int, d.alert_off_delay_s)
    if off < 1:
        raise ConfigError(f"homeassistant.alert_off_delay_s: must be at least 1, got {off}")
    return HomeAssistantConfig(
        enabled=_get(sec, "homeassistant", "enabled", bool, d.enabled), discovery_prefix=prefix, alert_off_delay_s=off
    )


def _bridge(doc: Mapping[str, Any]) -> BridgeConfig:
    if "bridge" not in doc:
        return BridgeConfig()
    sec = _section(doc, "bridge", BRIDGE_KEYS)
    d = BridgeConfig()
    to = _get(sec, "bridge", "to", str, d.to)
    if to not in ("files", "kafka"):
        raise ConfigError(f"bridge.to: {to!r} is not one of files, kafka")
    directory = _get(sec, "bridge", "dir", str, "")
    if not directory:
        raise ConfigError(
            "bridge.dir: required: the directory the Flink job's files source monitors (to = files), or the local "
            "outbox the files are sent to Kafka from (to = kafka)"
        )
    servers = sec.get("kafka_servers", [])
    if isinstance(servers, str):
        servers = [s.strip() for s in servers.split(",") if s.strip()]
    if not isinstance(servers, list) or not all(isinstance(s, str) and re.fullmatch(r"[^\s:/]+:[0-9]{1,5}", s)
                                                for s in servers):  # fmt: skip
        raise ConfigError(f"bridge.kafka_servers: expected a list of host:port, got {servers!r}")
    if to == "kafka":
        if not servers:
            raise ConfigError('bridge.kafka_servers: required with bridge.to = "kafka" (a list of host:port)')
        import importlib.util

        if importlib.util.find_spec("aiokafka") is None:
            raise ConfigError(
                "bridge.to = \"kafka\" needs aiokafka, which is not installed: pip install 'edgekit[kafka]'"
            )
    topic = _get(sec, "bridge", "kafka_topic", str, d.kafka_topic)
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,249}", topic):
        raise ConfigError(f"bridge.kafka_topic: {topic!r} is not a Kafka topic name (1-249 of [A-Za-z0-9._-])")
    linger = _get(sec, "bridge", "kafka_linger_ms", int, d.kafka_linger_ms)
    if linger < 0:
        raise ConfigError(f"bridge.kafka_linger_ms: must be >= 0, got {linger}")
    return BridgeConfig(
        enabled=True,
        to=to,
        dir=directory,
        roll_bytes=int(_positive("bridge", "roll_bytes", _get(sec, "bridge", "roll_bytes", int, d.roll_bytes))),
        roll_interval_s=float(
            _positive("bridge", "roll_interval_s", _get(sec, "bridge", "roll_interval_s", (int, float), 10.0))
        ),
        kafka_servers=tuple(servers),
        kafka_topic=topic,
        kafka_client_id=_get(sec, "bridge", "kafka_client_id", str, ""),
        kafka_linger_ms=linger,
    )


def _sink_only(doc: Mapping[str, Any]) -> SinkOnlyConfig:
    if "sink_only" not in doc:
        return SinkOnlyConfig()
    sec = _section(doc, "sink_only", SINK_ONLY_KEYS)
    directory = _get(sec, "sink_only", "dir", str, "")
    if not directory:
        raise ConfigError("sink_only.dir: required: the directory the Flink job writes windows/, late/, alerts/ to")
    poll = float(
        _positive("sink_only", "poll_interval_s", _get(sec, "sink_only", "poll_interval_s", (int, float), 1.0))
    )
    publish = bool(_get(sec, "sink_only", "publish", bool, False))
    return SinkOnlyConfig(enabled=True, dir=directory, poll_interval_s=poll, publish=publish)


def _check_modes(cfg: Config) -> None:
    """Bridge and sink-only are two ends of one set-up, each a gateway of its own."""
    if cfg.bridge.enabled and cfg.sink_only.enabled:
        raise ConfigError(
            "[bridge] and [sink_only]: a gateway runs in one mode; run the sink-only gateway as a process of its own "
            "with its own configuration (docs/scale-out.md)"
        )
    if cfg.sink_only.publish and cfg.mqtt.client_id == MqttConfig().client_id:
        raise ConfigError(
            f"mqtt.client_id: a sink-only gateway that publishes needs a client id of its own, not the default "
            f"{MqttConfig().client_id!r} the site's gateway has (two clients with one id knock each other off the "
            'broker, again and again); for example client_id = "edgekit-sink"'
        )
    if cfg.bridge.enabled and cfg.limits.max_readings > 65536:
        raise ConfigError(
            f"limits.max_readings: {cfg.limits.max_readings} is over 65536, the most readings of one message bridge "
            "mode numbers (n in docs/scale-out.md)"
        )


_TYPE_KINDS = ("integer", "boolean", "string")


def _metric_types(doc: Mapping[str, Any], env: Mapping[str, str]) -> MetricTypes:
    """``[metric_types]``: lists of metric names per type (``integer``, ``boolean``, ``string``); every other
    metric is a float. ``EDGEKIT_METRIC_TYPES_<KIND>`` (comma-separated names) replaces a list."""
    sec = _section(doc, "metric_types", METRIC_TYPES_KEYS)
    # a documented status field keeps its documented type whatever is declared here (docs/protocol.md)
    lists: dict[str, frozenset[str]] = {}
    owner: dict[str, str] = {}
    for kind in _TYPE_KINDS:
        names = sec.get(kind, [])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ConfigError(f"metric_types.{kind}: expected a list of metric names, got {names!r}")
        for name in names:
            if not METRIC_RE.fullmatch(name):
                raise ConfigError(f"metric_types.{kind}: {name!r} is not a metric name ([a-z][a-z0-9_]{{0,31}})")
            if name in RESERVED_METRICS:
                raise ConfigError(f"metric_types.{kind}: {name!r} is a reserved name, not a metric")
            if name in owner and owner[name] != kind:
                raise ConfigError(f"metric_types: {name!r} is declared both {owner[name]} and {kind}")
            owner[name] = kind
        lists[kind] = frozenset(names)
    return MetricTypes(integer=lists["integer"], boolean=lists["boolean"], string=lists["string"])


def _check_metric_types(cfg: Config) -> None:
    """The rules that read metrics must be able to see them: a pattern compares a string metric only with a
    string and a number only with numbers; windows and anomaly detection take numbers (and booleans, in
    windows, as 1.0 and 0.0). A condition that could never hold is a configuration error, not silence."""
    types = cfg.metric_types

    def declare_as(kind: str, metric: str) -> str:
        return f'declare it in [metric_types]: {kind} = ["{metric}"]'

    for p in cfg.patterns:
        for step in p.steps:
            for c in step.where:
                at = f"patterns[{p.name}].steps[{step.name}].where: {c}"
                have = types.of(c.metric)
                v = c.value
                if isinstance(v, bool):
                    if have != "boolean":
                        raise ConfigError(f"{at}: {c.metric} is a {have} metric, compared with a boolean; "
                                          f"{declare_as('boolean', c.metric)}")  # fmt: skip
                elif isinstance(v, str):
                    if have != "string":
                        raise ConfigError(f"{at}: {c.metric} is a {have} metric, compared with a string; "
                                          f"{declare_as('string', c.metric)}")  # fmt: skip
                else:
                    numbers = [c.metric] + ([v.metric] if isinstance(v, Ref) else [])
                    for m in numbers:
                        if types.of(m) not in ("float", "integer"):
                            raise ConfigError(f"{at}: {m} is a {types.of(m)} metric, compared as a number "
                                              "(strings and booleans compare only with == and != against a "
                                              "string or true/false)")  # fmt: skip
    for w in cfg.engine.windows:
        for m in w.metrics:
            if types.of(m) == "string":
                raise ConfigError(f"windows[{w.name}].metrics: {m} is a string metric; windows aggregate numbers")
    for m in cfg.anomaly.metrics:
        if types.of(m) in ("string", "boolean"):
            raise ConfigError(f"anomaly.metrics: {m} is a {types.of(m)} metric; anomaly detection scores numbers")


KNOWN_SECTIONS = {
    "mqtt",
    "influx",
    "limits",
    "devices",
    "log",
    "engine",
    "windows",
    "anomaly",
    "patterns",
    "joins",
    "state",
    "metrics",
    "metric_types",
    "notify",
    "homeassistant",
    "bridge",
    "sink_only",
    "groups",
}


def parse_config(doc: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Config:
    """Validate a parsed TOML document (plus environment overrides) into a :class:`Config`.

    Every key of :data:`SECTION_KEYS` can be set as ``EDGEKIT_<TABLE>_<KEY>`` (``EDGEKIT_INFLUX_BATCH_SIZE``,
    ``EDGEKIT_ENGINE_WATERMARK_MODE``), replacing the file's value, and is validated as the file's would be
    (:func:`_env_values`): a complete TOML string literal is that string for every key; otherwise the text
    where the key takes text, else the one TOML value it spells (``5``, ``true``, ``["a", "b"]``, ``[]``) or a
    comma-separated list. Nothing may follow the value; an empty value is ``""``. An error names the variable,
    also when it is about another key the variable made wrong. An ``EDGEKIT_*`` variable that names no key is
    refused (except those of :data:`NOT_CONFIG`); :attr:`Config.from_env` says which keys the environment set."""
    env = os.environ if env is None else env
    raws = _env_overrides(env)
    readings = {name: _env_values(name, raw) for name, raw in raws.items()}
    values: dict[str, Any] = {name: choices[0] for name, (choices, _) in readings.items()}
    errors: dict[str, list[ConfigError]] = {name: [] for name in raws}
    while True:
        try:
            cfg = _parse(_overlay(doc, values), env)
        except ConfigError as exc:
            name = _blamed(exc, values)
            if name is None:
                causes = _causes(doc, env, values, exc)
                if not causes:
                    raise
                raise ConfigError(f"{exc} (with {', '.join(causes)} from the environment)") from None
            choices, shown = readings[name]
            errors[name].append(exc)
            if len(errors[name]) < len(choices):
                values[name] = choices[len(errors[name])]
                continue
            # every reading failed: say why the TOML value it spells does (the text's, when it spells none)
            raise ConfigError(f"{errors[name][shown]} (from {name})") from None
        from_env = {".".join(ENV_KEYS[name]): name for name in sorted(values)}
        return dataclasses.replace(cfg, from_env=from_env)


def _causes(doc: Mapping[str, Any], env: Mapping[str, str], values: Mapping[str, Any], exc: ConfigError) -> list[str]:
    """The variables without which ``exc`` (an error about another key than theirs) goes away or changes."""
    causes = []
    for name in values:
        try:
            _parse(_overlay(doc, {n: v for n, v in values.items() if n != name}), env)
        except ConfigError as other:
            if str(other) == str(exc):
                continue
        causes.append(name)
    return causes


def _parse(doc: Mapping[str, Any], env: Mapping[str, str]) -> Config:
    unknown = sorted(set(doc) - KNOWN_SECTIONS)
    if unknown:
        raise ConfigError(f"unknown section(s) {', '.join(unknown)}; known: {', '.join(sorted(KNOWN_SECTIONS))}")
    cfg = Config(
        mqtt=_mqtt(doc, env),
        influx=_influx(doc, env),
        limits=_limits(doc),
        devices=_devices(doc),
        log=_log(doc, env),
        state=_state(doc, env),
        metrics=_metrics(doc, env),
        engine=parse_engine(doc),
        anomaly=parse_anomaly(doc),
        patterns=parse_patterns(doc.get("patterns")),
        joins=parse_joins(doc.get("joins")),
        metric_types=_metric_types(doc, env),
        notify=parse_notify(doc.get("notify"), env),
        homeassistant=_homeassistant(doc),
        bridge=_bridge(doc),
        sink_only=_sink_only(doc),
        groups=parse_groups(doc.get("groups")),
        raw=doc,
    )
    _check_metric_types(cfg)
    _check_modes(cfg)
    check_groups(cfg.groups, cfg.devices.known, cfg.devices.sites, not cfg.devices.allow_unknown)
    for w in cfg.engine.windows:
        rel = w.relative
        if rel is None:
            continue
        unknown = [g for g in rel.groups if cfg.groups.get(g) is None]
        if unknown or not cfg.groups.groups:
            raise ConfigError(
                f"windows[{w.name}].relative.groups: {', '.join(map(repr, unknown)) or 'the device groups'} "
                f"{'is' if len(unknown) == 1 else 'are'} not declared; declared: "
                f"{', '.join(cfg.groups.names) or 'none (add a [groups] table)'}"
            )
    for p in cfg.patterns:
        if p.key == "group" and not cfg.groups.groups:
            raise ConfigError(f"patterns[{p.name}].key: 'group' runs the pattern in every declared group, and none "
                              "is declared (add a [groups] table)")  # fmt: skip
        if p.key.startswith("group:") and cfg.groups.get(p.key[6:]) is None:
            raise ConfigError(
                f"patterns[{p.name}].key: {p.key!r} names no declared group; declared: "
                f"{', '.join(cfg.groups.names) or 'none (add a [groups] table)'}"
            )
    check_joins(cfg.joins, cfg.devices.properties, cfg.groups.names)
    return cfg


def load_config(path: str | Path | None, env: Mapping[str, str] | None = None) -> Config:
    """Read ``path`` (or only the environment and defaults when it is ``None``)."""
    if path is None:
        return parse_config({}, env)
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    return parse_config(doc, env)
