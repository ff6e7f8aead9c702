#!/usr/bin/env python3
"""``make demo``: a simulated fleet through a real broker and the gateway into InfluxDB, then a summary.

1. starts Mosquitto, InfluxDB 1.x and VictoriaMetrics on 127.0.0.1 (``scripts/services.py``; kept running), on
   the default ports or, where another program holds one, the next free port (``make demo`` says so before any
   set-up; ``EDGEKIT_DEMO_MQTT_PORT``, ``EDGEKIT_DEMO_INFLUX_PORT``, ``EDGEKIT_DEMO_INFLUX_RPC_PORT`` and
   ``EDGEKIT_DEMO_VM_PORT`` choose them). Every address the demo uses is read from those services' own state
   (``.run/services/<name>/state.json``), and only a server the demo started is ever written to or emptied;
2. starts the gateway as its own process (``python -m gateway run``) with ``.run/demo/gateway.toml``;
3. publishes a fleet (``sim``): readings with re-sent duplicates and malformed messages mixed in, and a
   few injected events (``sim/faults.py``): sensor spikes, a level shift, a stuck sensor, vibration ramps,
   doors left open and runs of FAILED statuses, with near misses that must not raise an alert;
4. waits until the gateway has taken every message, written it and published its alerts, stops it, and
   reads InfluxDB back;
5. prints what was published, what the gateway did, what InfluxDB holds, whether they agree, and the
   pattern alerts and anomalies read back next to what the simulator injected.

The demo database ``edgekit_demo`` is emptied at each run, so every number printed is this run's. The
gateway runs the example patterns of ``gateway/examples/gateway.toml`` and z-score anomaly detection on
``temp_c`` and ``rh``. ``tests/test_demo.py`` runs the same path against the test suite's own services.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import tomllib
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence, Set
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

import services  # noqa: E402

from gateway.config import load_config  # noqa: E402
from gateway.engine.config import AGGREGATE_NAMES, EngineSpec  # noqa: E402
from sim.commands import report_scenario  # noqa: E402
from sim.faults import InjectedAnomaly, ScriptedSequence, sequence_events, sequence_metric_types  # noqa: E402
from sim.fleet import FleetSpec, Plan, generate  # noqa: E402
from sim.publish import BrokerConfig, PublishResult, publish  # noqa: E402
from sim.reference import WindowRef, device_watermark, engine_spec  # noqa: E402
from sim.verify import ANOMALY_ALERTS, ExpectedAlert, values_close  # noqa: E402

RUN = services.RUN_ROOT / "demo"
DB = "edgekit_demo"
EXAMPLE = REPO / "gateway" / "examples" / "gateway.toml"
M = 60_000

# The injected events, as offsets from the fleet's start (the anomaly detector learns for its first 30
# readings, so nothing before 35 minutes). An event on a device the fleet does not have, or after its
# span, is left out (``--devices``, ``--readings``).
ANOMALIES = (
    InjectedAnomaly("spike", "dev-0003", "temp_c", 40 * M, 41 * M, {"magnitude": 3.0}),
    InjectedAnomaly("spike", "dev-0014", "rh", 52 * M, 53 * M, {"magnitude": -10.0}),
    InjectedAnomaly("spike", "dev-0029", "temp_c", 75 * M, 76 * M, {"magnitude": -3.0}),
    InjectedAnomaly("level_shift", "dev-0021", "temp_c", 45 * M, 65 * M, {"magnitude": 2.0}),
    InjectedAnomaly("stuck", "dev-0038", "rh", 50 * M, 90 * M),
    # vibration ramps: +0.75 a minute for 5 minutes, for the pattern vibration_rising (rises of more than 0.5)
    InjectedAnomaly("drift", "dev-0006", "vib", 60 * M, 65 * M, {"magnitude": 45.0}),
    InjectedAnomaly("drift", "dev-0047", "vib", 95 * M, 100 * M, {"magnitude": 45.0}),
)
SEQUENCES = (
    # door_left_open's "opened" is the door reading right after a "closed" one: each door is closed first
    ScriptedSequence("door_closed", "dev-0010", 35 * M),
    ScriptedSequence("door_left_open", "dev-0010", 60 * M),
    ScriptedSequence("door_closed", "dev-0033", 50 * M),
    ScriptedSequence("door_closed", "dev-0033", 65 * M),
    ScriptedSequence("door_left_open", "dev-0033", 85 * M),
    ScriptedSequence("three_failures", "dev-0017", 40 * M),
    ScriptedSequence("three_failures", "dev-0044", 80 * M),
    ScriptedSequence("two_failures", "dev-0024", 55 * M),
)
TOLERANCE_MS = 10 * M
"""An alert counts for an injected event when its last reading lies in the event's span or this soon after."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where the demo runs: the broker, the database, its own folder, the topic prefix."""

    mqtt_port: int
    influx: str
    """InfluxDB's URL: the demo's own server (``demo_target``), never one it did not start."""
    db: str = DB
    run_dir: Path = RUN
    prefix: str = "edgekit"
    client_id: str = "edgekit-demo"

    def query(self, q: str) -> list[dict[str, Any]]:
        url = f"{self.influx}/query?" + urllib.parse.urlencode({"db": self.db, "q": q, "epoch": "ms"})
        with urllib.request.urlopen(url, timeout=10) as resp:
            doc = json.load(resp)
        rows: list[dict[str, Any]] = []
        for result in doc.get("results", []):
            if "error" in result:
                raise RuntimeError(f"InfluxDB: {result['error']}")
            for series in result.get("series", []):
                for values in series["values"]:
                    rows.append({**series.get("tags", {}), **dict(zip(series["columns"], values, strict=True))})
        return rows

    def post_query(self, q: str) -> None:
        data = urllib.parse.urlencode({"q": q}).encode()
        urllib.request.urlopen(urllib.request.Request(f"{self.influx}/query", data=data), timeout=10).close()


def demo_target(run_dir: Path) -> Target:
    """The demo's broker and InfluxDB, from the state of the services it started (and that are running)."""
    found = {}
    for name in ("mosquitto", "influxdb"):
        proc = services.Proc.load(run_dir / name, name)
        if proc is None or not proc.alive():
            raise SystemExit(f"the demo's {name} is not running (see {run_dir / name})")
        found[name] = proc
    return Target(mqtt_port=found["mosquitto"].port, influx=found["influxdb"].url)


def clear_retained(port: int, prefix: str = "edgekit") -> int:
    """Clear the retained statuses earlier runs left on the broker, so this run's counts are its own."""
    import paho.mqtt.client as mqtt

    topics: set[str] = set()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="edgekit-demo-clear")
    client.on_message = lambda c, u, m: topics.add(m.topic) if m.retain and m.payload else None
    client.connect("127.0.0.1", port)
    client.subscribe(f"{prefix}/+/+/status", qos=1)
    client.loop_start()
    time.sleep(1.0)
    for topic in sorted(topics):
        client.publish(topic, b"", qos=1, retain=True).wait_for_publish(5)
    client.loop_stop()
    client.disconnect()
    return len(topics)


class AlertListener:
    """Subscribes to the gateway's alert topics and keeps every alert it receives (a JSON document each)."""

    def __init__(self, port: int, prefix: str, client_id: str) -> None:
        import paho.mqtt.client as mqtt

        self.topic = f"{prefix}/_gateway/alerts/#"
        self.alerts: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        self._client.on_message = lambda c, u, m: self._add(m.payload)
        self._client.on_subscribe = lambda *args: self._subscribed.set()
        self._client.connect("127.0.0.1", port)
        self._client.subscribe(self.topic, qos=1)
        self._client.loop_start()
        if not self._subscribed.wait(10):
            raise SystemExit(f"could not subscribe to {self.topic} on 127.0.0.1:{port}")

    def _add(self, payload: bytes | bytearray) -> None:
        with self._lock:
            self.alerts.append(json.loads(payload))

    def received(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.alerts)

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


def fleet_spec(devices: int, readings: int, seed: int, prefix: str = "edgekit") -> FleetSpec:
    """The demo's fleet, with the injected events that fit in it."""
    span = readings * 60_000

    def fits(device: str) -> bool:
        return int(device[4:]) <= devices

    return FleetSpec(
        devices=devices,
        readings_per_device=readings,
        batch_size=10,
        sites=("greenhouse", "orchard"),
        metrics=("temp_c", "rh", "vib"),
        duplicate_rate=0.1,
        malformed=12,
        nan_readings=3,
        old_readings=2,
        seed=seed,
        prefix=prefix,
        anomalies=tuple(a for a in ANOMALIES if fits(a.device) and a.end_ms <= span),
        sequences=tuple(q for q in SEQUENCES if fits(q.device) and q.at_ms < span),
    )


def write_config(target: Target) -> Path:
    run = target.run_dir
    run.mkdir(parents=True, exist_ok=True)
    # each demo run starts from a clean slate: the simulated fleet reuses its identities, which a gateway
    # that remembered the previous run (its durable log and checkpoint) would rightly take as duplicates
    shutil.rmtree(run / "gateway-state", ignore_errors=True)
    # the example patterns, as shipped (with their [engine.watermark] table, and the [metric_types] that
    # declares door and status, the scripted sequences' metrics, strings: undeclared they would be floats)
    example = EXAMPLE.read_text(encoding="utf-8")
    patterns = example[example.index("[engine.watermark]") :]
    path = run / "gateway.toml"
    path.write_text(
        f"""# written by scripts/demo.py
[mqtt]
url = "mqtt://127.0.0.1:{target.mqtt_port}"
client_id = "{target.client_id}-gateway"
prefix = "{target.prefix}"
clean_session = true

[state]
dir = "{run / "gateway-state"}"

[influx]
target = "v1"
url = "{target.influx}"
database = "{target.db}"
batch_size = 1000
flush_interval_ms = 200

[log]
level = "INFO"
format = "json"

[[windows]]
name = "temp_10m"
kind = "tumbling"
size = "10m"
metrics = ["temp_c", "rh"]
aggregates = ["count", "mean", "min", "max", "stddev"]
allowed_lateness = "30m"

# z-score anomaly detection (docs/anomaly.md) on temperature and humidity: the simulated vibration has
# spikes of its own, which the pattern vibration_rising looks at instead
[anomaly]
metrics = ["temp_c", "rh"]
write = "flagged"

# from gateway/examples/gateway.toml
{patterns}""",
        encoding="utf-8",
    )
    declared = load_config(path, env={}).metric_types
    for name in sequence_metric_types(SEQUENCES).get("string", []):
        if declared.of(name) != "string":  # the gateway would dead-letter every scripted reading
            raise SystemExit(f"{EXAMPLE}: [metric_types] must declare {name!r} a string for the demo's sequences")
    return path


def _shown(path: Path) -> Path:
    """``path`` relative to the repository when it is inside it."""
    return path.relative_to(REPO) if path.is_relative_to(REPO) else path


def read_stats(path: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return data
    except (OSError, ValueError):
        return {}


def wait_gateway(
    stats_file: Path, proc: subprocess.Popen[bytes], cond: Callable[[dict[str, Any]], Any], what: str, limit_s: float
) -> None:
    log = stats_file.parent / "gateway.log"
    deadline = time.monotonic() + limit_s
    while not cond(read_stats(stats_file)):
        if proc.poll() is not None:
            raise SystemExit(f"the gateway exited early (code {proc.returncode}); see {log}")
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for the gateway: {what}; see {log}")
        time.sleep(0.1)


@dataclass(slots=True)
class DemoRun:
    """What one run published, the gateway's final counters, and the alerts received on MQTT."""

    plan: Plan
    published: PublishResult
    stats: dict[str, Any]
    mqtt_alerts: list[dict[str, Any]]


def run_fleet(target: Target, spec: FleetSpec, rate: float, say: Callable[[str], None] = print) -> DemoRun:
    """Start the gateway as its own process, publish the fleet, wait until everything is written and every
    alert published, stop the gateway. The database is expected to exist and be empty."""
    plan = generate(spec)
    counts = plan.counts()
    config = write_config(target)
    run = target.run_dir
    stats_file = run / "gateway-stats.json"
    stats_file.unlink(missing_ok=True)
    log_file = (run / "gateway.log").open("wb")
    say(f"==> starting the gateway: python -m gateway run --config {_shown(config)}")
    gw = subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", "--config", str(config), "--stats-file", str(stats_file)],
        cwd=REPO,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    listener: AlertListener | None = None
    try:
        wait_gateway(stats_file, gw, lambda s: s.get("mqtt", {}).get("connected"), "connect to the broker", 30)
        listener = AlertListener(target.mqtt_port, target.prefix, f"{target.client_id}-alerts")
        say(f"==> publishing {counts.messages} messages from {counts.devices} simulated devices at {rate:g} messages/s")
        result = asyncio.run(
            publish(
                plan.messages,
                BrokerConfig("127.0.0.1", target.mqtt_port),
                client_id=f"{target.client_id}-sim",
                rate=rate,
            )
        )
        wait_gateway(
            stats_file,
            gw,
            lambda s: (
                s.get("pipeline", {}).get("messages", 0) >= counts.messages
                and s["sink"]["pending"] == 0
                and s["mqtt"]["outbox"] == 0
            ),
            "take every message",
            60,
        )
    finally:
        gw.send_signal(signal.SIGTERM)
        try:
            gw.wait(30)
        except subprocess.TimeoutExpired:
            gw.kill()
        log_file.close()
    stats = read_stats(stats_file)
    assert listener is not None
    # the gateway published every alert (its outbox is empty): wait for them to reach the listener
    deadline = time.monotonic() + 5
    while len(listener.received()) < stats["pipeline"]["alerts"] and time.monotonic() < deadline:
        time.sleep(0.05)
    listener.close()
    return DemoRun(plan, result, stats, listener.received())


# --- alerts against the injected ground truth ---------------------------------------------------------

ANOMALY_LABELS = {"spike": "spike", "level_shift": "level shift", "stuck": "stuck sensor"}
"""How the summary names the injected anomalies that must raise an alert (the detector that must raise it:
sim/verify.py ``ANOMALY_ALERTS``, shared with ``edgekit-sim verify``)."""
SEQUENCE_LABELS = {
    "door_left_open": "door left open",
    "three_failures": "three FAILED in 5 min",
    "door_closed": "door closed in time",
    "two_failures": "three FAILED over 7 min",
}

Expected = ExpectedAlert
"""An injected event and the alert it should raise (``alert`` None: a near miss that should raise none)."""


def expectations(plan: Plan) -> list[Expected]:
    """What the plan's injected events should raise, with the demo's configuration (the detectors and patterns
    as sim/verify.py and sim/faults.py name them)."""
    out: list[Expected] = []
    for a, _labelled in plan.anomalies:
        if a.kind == "drift" and a.metric == "vib":
            out.append(Expected("vibration ramp", "pattern", "vibration_rising", a.device, a.start_ms, a.end_ms))
        elif a.kind in ANOMALY_ALERTS:
            alert = f"{ANOMALY_ALERTS[a.kind]}.{a.metric}"
            out.append(Expected(ANOMALY_LABELS[a.kind], "anomaly", alert, a.device, a.start_ms, a.end_ms))
        else:
            out.append(Expected(a.kind.replace("_", " "), "anomaly", None, a.device, a.start_ms, a.end_ms))
    for q in plan.sequences:
        last = q.at_ms + max(e.offset_ms for e in sequence_events(q.kind))
        pattern = q.pattern if q.expect_alert else None
        out.append(Expected(SEQUENCE_LABELS[q.kind], "pattern", pattern, q.device, q.at_ms, last))
    return out


@dataclass(slots=True)
class AlertCheck:
    """One source's alerts against the events injected for it."""

    source: str
    by_name: Counter[str] = field(default_factory=Counter)
    injected: Counter[str] = field(default_factory=Counter)
    raised: Counter[str] = field(default_factory=Counter)
    near_misses: Counter[str] = field(default_factory=Counter)
    missed: list[Expected] = field(default_factory=list)
    unexplained: list[dict[str, Any]] = field(default_factory=list)
    """Alerts no injected event accounts for (a false alarm, or an alert raised by a near miss)."""
    device_views: int = 0
    """``multivariate`` alerts that are an injected event's device-level view (docs/anomaly.md)."""

    @property
    def expected(self) -> int:
        return sum(self.injected.values())

    @property
    def found(self) -> int:
        return sum(self.raised.values())


def check_alerts(
    expects: Sequence[Expected], alerts: Sequence[dict[str, Any]], source: str, tolerance_ms: int = TOLERANCE_MS
) -> AlertCheck:
    """Match ``alerts`` (``source``, ``name``, ``key``, ``last_ms``: InfluxDB rows or MQTT documents) of
    ``source`` to the injected events: an event is raised by an alert of its name on its device whose last
    reading lies in ``[start, end + tolerance)``; each alert accounts for one event at most. Re-baseline
    alerts follow an anomaly already counted, and count neither way (docs/anomaly.md). A ``multivariate``
    alert (the device's metrics together) in the same span on the event's device is that event seen by the
    device: one per event, counted apart, neither a detection nor a false alarm."""
    check = AlertCheck(source)
    mine = sorted((a for a in alerts if a["source"] == source), key=lambda a: (a["last_ms"], a["name"], a["key"]))
    used = [False] * len(mine)
    for a in mine:
        check.by_name[a["name"]] += 1
    for e in sorted((e for e in expects if e.source == source), key=lambda e: (e.alert or "", e.start_ms)):
        if e.alert is None:
            check.near_misses[e.label] += 1
            continue
        check.injected[e.label] += 1
        for k, a in enumerate(mine):
            hit = a["name"] == e.alert and a["key"] == e.device
            if not used[k] and hit and e.start_ms <= a["last_ms"] < e.end_ms + tolerance_ms:
                used[k] = True
                check.raised[e.label] += 1
                break
        else:
            check.missed.append(e)
    for e in expects:
        if e.source != source or e.alert is None:
            continue
        for k, a in enumerate(mine):
            hit = a["name"] == "multivariate" and a["key"] == e.device
            if not used[k] and hit and e.start_ms <= a["last_ms"] < e.end_ms + tolerance_ms:
                used[k] = True
                check.device_views += 1
                break
    check.unexplained = [a for k, a in enumerate(mine) if not used[k] and not a["name"].startswith("rebaseline.")]
    return check


# --- window results against two references ------------------------------------------------------------

WindowKey = tuple[str, str, int, str]
"""(window, device, start, metric): one point of measurement ``window``."""


def demo_engine(config: Path) -> EngineSpec:
    """The windows and watermarks of the gateway configuration ``config`` (``write_config``'s file)."""
    return engine_spec(tomllib.loads(config.read_text(encoding="utf-8")))


def expected_windows(plan: Plan, engine: EngineSpec) -> tuple[dict[WindowKey, dict[str, float]], int]:
    """Every window the watermark closed once every reading of ``plan`` is in, with the aggregates of its
    readings (``count`` and the window's own), by the simulator's brute-force reference (``sim/reference.py``:
    plain lists and :mod:`statistics`, no panes nor incremental updates); and how many windows hold readings
    the watermark has not closed (each device's newest: it ends after the device's newest reading).

    It assumes what the demo's fleet does: each device's batches are published in event-time order, so every
    reading reaches its window before the window fires and the window's last revision holds all of them (no
    reading is late: :func:`check_windows` fails when the gateway reports one), and no reading lies in the
    future. Readings the engine refuses (unsynced ones under ``unsynced = "reject"``, those before
    ``min_time_ms``) are left out, as the engine leaves them."""
    refs = [WindowRef(w, engine) for w in engine.windows]
    by_device: dict[str, list[tuple[int, int, int, dict[str, float]]]] = {}
    newest: dict[str, int] = {}
    for r in plan.readings:
        if (r.quality == "u" and engine.unsynced == "reject") or r.t_ms < engine.min_time_ms:
            continue
        values = {m: float(v) for m, v in r.metrics.items() if not isinstance(v, str)}
        by_device.setdefault(r.device, []).append((r.t_ms, r.boot, r.seq, values))
        if r.quality != "u":  # an unsynced reading does not move the watermark
            newest[r.device] = max(newest.get(r.device, r.t_ms), r.t_ms)
    flushed = dict(plan.flushed)
    closed: dict[WindowKey, dict[str, float]] = {}
    still_open = 0
    for ref in refs:
        marks: dict[str, int] = {}
        for device, events in sorted(by_device.items()):
            ref.add(device, device, events)
            wm = device_watermark(device, ref.bound(device), newest, flushed)
            if wm is not None:
                marks[device] = wm
        if ref.shared:  # one watermark: the furthest any device took it
            marks = {"": max(newest[d] - ref.bound(d) for d in newest)} if newest else {}
        for key, wm in sorted(marks.items()):
            for device, st, _end, metric, count, aggs, _rev in ref.advance(key, wm):
                closed[(ref.spec.name, device, st, metric)] = {"count": count, **aggs}
        still_open += len(ref.unfired())
    return closed, still_open


@dataclass(slots=True)
class WindowCheck:
    """The gateway's window points against the windows the watermark closed."""

    closed: int
    """Windows the reference closed."""
    open: int
    """Windows holding readings the watermark has not closed yet (the gateway keeps them; later readings close
    them)."""
    compared_influx: int = 0
    """Closed windows also compared with InfluxDB's own ``GROUP BY time`` over ``reading`` (tumbling windows)."""
    missing: list[WindowKey] = field(default_factory=list)
    extra: list[WindowKey] = field(default_factory=list)
    twice: list[WindowKey] = field(default_factory=list)
    """Windows written more than once (under two tag sets: InfluxDB overwrites a point with the same ones)."""
    wrong: list[tuple[WindowKey, str, Any, Any, str]] = field(default_factory=list)
    """(window, aggregate, the gateway's value, the other's, which reference); None where one has no value."""
    late: int = 0
    """Late readings the gateway reported: the reference assumes none (:func:`expected_windows`)."""

    @property
    def ok(self) -> bool:
        return not (self.missing or self.extra or self.twice or self.wrong or self.late)


def _key(row: dict[str, Any]) -> WindowKey:
    return (row["window"], row["device"], int(row["time"]), row["metric"])


def check_windows(
    expected: dict[WindowKey, dict[str, float]],
    still_open: int,
    gateway_rows: Sequence[dict[str, Any]],
    influx_rows: Sequence[dict[str, Any]],
    influx_names: Set[str] = frozenset(),
    late: int = 0,
) -> WindowCheck:
    """``gateway_rows`` (measurement ``window``: ``window``, ``device``, ``time`` the start, ``metric`` and the
    aggregates) against ``expected`` (:func:`expected_windows`), and against ``influx_rows``: the aggregates
    InfluxDB computes from the raw readings, a row per window in the same form, for every window of
    ``influx_names`` (an aggregate InfluxDB has no function for, ``first`` or ``last`` by reading time, is
    left out of its rows). Every expected window must be written once, with each aggregate the reference has
    equal to both references' and none it has not (``stddev`` of a single reading), and nothing else; an
    expected window of ``influx_names`` that InfluxDB did not aggregate is a difference too. ``late``: the
    gateway's count of late readings, which the reference does not model (any fails the check)."""
    check = WindowCheck(closed=len(expected), open=still_open, late=late)
    counts = Counter(_key(r) for r in gateway_rows)
    found = {_key(r): r for r in gateway_rows}
    influx = {_key(r): r for r in influx_rows}
    check.missing = sorted(k for k in expected if k not in found)
    check.extra = sorted(k for k in found if k not in expected)
    check.twice = sorted(k for k, n in counts.items() if n > 1)
    for key in sorted(k for k in expected if k in found):
        row, want = found[key], expected[key]
        names = sorted({*want, *(a for a in AGGREGATE_NAMES if row.get(a) is not None)})
        for name in names:
            if not values_close(row.get(name), want.get(name)):
                check.wrong.append((key, name, row.get(name), want.get(name), "the reference"))
        if key[0] not in influx_names:
            continue
        if key not in influx:
            check.wrong.append((key, "count", row.get("count"), None, "InfluxDB"))
            continue
        check.compared_influx += 1
        for name in names:
            if name in influx[key] and not values_close(row.get(name), influx[key].get(name)):
                check.wrong.append((key, name, row.get(name), influx[key].get(name), "InfluxDB"))
    return check


def influx_windows(target: Target, engine: EngineSpec) -> tuple[list[dict[str, Any]], set[str]]:
    """InfluxDB's own aggregates of ``reading`` over each tumbling window of ``engine``, in the rows
    :func:`check_windows` reads (``GROUP BY time(size, offset)``, the windows' grid; ``stddev`` is the sample
    standard deviation, as the gateway's), and the names of the windows aggregated."""
    functions = {"count": "count", "mean": "mean", "min": "min", "max": "max", "stddev": "stddev", "sum": "sum"}
    rows: list[dict[str, Any]] = []
    names: set[str] = set()
    for w in engine.windows:
        if w.kind != "tumbling":
            continue
        names.add(w.name)
        aggs = [a for a in w.aggregates if a in functions]
        for metric in w.metrics:
            select = ", ".join(f'{functions[a]}("{metric}") AS "{a}"' for a in aggs)
            q = (
                f'SELECT {select} FROM "reading" WHERE time >= 0 GROUP BY time({w.size_ms}ms, {w.offset_ms}ms), '
                '"device" fill(none)'
            )
            rows += [{**r, "window": w.name, "metric": metric} for r in target.query(q)]
    return rows, names


# --- the summary --------------------------------------------------------------------------------------


@dataclass(slots=True)
class Summary:
    """What InfluxDB holds after a run, compared with the plan."""

    readings: int
    devices: int
    dead_letters: dict[str, int]
    statuses: int
    windows: int
    late: int
    missing: int
    extra: int
    alerts: list[dict[str, Any]]
    patterns: AlertCheck
    anomalies: AlertCheck
    window_check: WindowCheck

    def readings_ok(self, plan: Plan) -> bool:
        dead_ok = Counter(self.dead_letters) == Counter(plan.counts().dead_letters_by_reason)
        return self.missing == 0 and self.extra == 0 and dead_ok


def read_back(target: Target, plan: Plan) -> Summary:
    engine = demo_engine(target.run_dir / "gateway.toml")  # as run_fleet wrote it
    rows = target.query("SELECT count(seq) FROM reading GROUP BY device")
    dead_rows = target.query("SELECT count(size) FROM dead_letter GROUP BY reason")
    status_rows = target.query("SELECT count(state) FROM device_status")
    window_rows = target.query("SELECT count(revision) FROM window GROUP BY metric")
    late_rows = target.query("SELECT count(late_by_ms) FROM late_reading")
    exact = target.query("SELECT * FROM reading")
    found = {(r["device"], r["boot"], r["seq"]): r["time"] for r in exact}
    missing = [r for r in plan.readings if found.get((r.device, r.boot, r.seq)) != r.t_ms]
    alerts = target.query('SELECT "id", "last_ms" FROM "alert" GROUP BY "source", "name", "key"')
    expects = expectations(plan)
    closed, still_open = expected_windows(plan, engine)
    gateway_windows = target.query('SELECT * FROM "window" GROUP BY "window", "device", "metric"')
    late = late_rows[0]["count"] if late_rows else 0
    return Summary(
        readings=sum(r["count"] for r in rows),
        devices=len(rows),
        dead_letters={r["reason"]: r["count"] for r in dead_rows},
        statuses=status_rows[0]["count"] if status_rows else 0,
        windows=sum(r["count"] for r in window_rows),
        late=late,
        missing=len(missing),
        extra=len(found) - (len(plan.readings) - len(missing)),
        alerts=alerts,
        patterns=check_alerts(expects, alerts, "pattern"),
        anomalies=check_alerts(expects, alerts, "anomaly"),
        window_check=check_windows(closed, still_open, gateway_windows, *influx_windows(target, engine), late=late),
    )


def _plural(n: int, label: str) -> str:
    """``2 spikes``, ``2 doors left open``, ``2 × three FAILED in 5 min``."""
    if label.startswith("three"):
        return f"{n} × {label}"
    if n == 1:
        return f"1 {label}"
    if label.startswith("door "):
        return f"{n} doors {label[5:]}"
    return f"{n} {label}s"


def _counts(c: Counter[str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(c.items())) or "none"


def _alert_lines(check: AlertCheck, found_word: str, false_word: str) -> tuple[str, str]:
    injected = ", ".join(_plural(n, label) for label, n in check.injected.items()) or "nothing"
    if check.near_misses:
        injected += f"; {sum(check.near_misses.values())} near misses that must not alert"
    result = f"{check.found} of {check.expected} {found_word}"
    if check.device_views:
        result += f" (and {check.device_views} seen by their device's multivariate score)"
    if check.missed:
        result += " (missed: " + ", ".join(f"{e.label} on {e.device}" for e in check.missed[:3]) + ")"
    n = len(check.unexplained)
    result += f", {n} {false_word}{'' if n == 1 or false_word.endswith('ed') else 's'}"
    if check.unexplained:
        result += " (" + ", ".join(f"{a['name']} on {a['key']}" for a in check.unexplained[:3]) + ")"
    return f"injected: {injected}", f"alerts:   {_counts(check.by_name)} -> {result}"


def print_summary(target: Target, run: DemoRun, summary: Summary, total_s: float) -> bool:
    """Print the summary; True when InfluxDB holds exactly what the simulator published."""
    plan, stats, sm = run.plan, run.stats, summary
    c = plan.counts()
    p, s = stats["pipeline"], stats["sink"]
    sites = sorted({d.site for d in plan.devices})
    span_h = plan.spec.span_ms / 3_600_000
    ok = sm.readings_ok(plan)
    dead_ok = Counter(sm.dead_letters) == Counter(c.dead_letters_by_reason)
    db = target.db
    print()
    print(f"edgekit demo: {c.devices} simulated devices at {len(sites)} sites ({', '.join(sites)}), "
          f"{span_h:g} h of event time each")  # fmt: skip
    print()
    print(f"  published   {c.readings} readings in {c.batches} batches, plus {c.duplicates} batches re-sent")
    print(f"              ({c.duplicate_readings} duplicate readings) and {c.malformed} malformed messages, "
          f"in {run.published.elapsed_s:.1f} s")  # fmt: skip
    print(f"  gateway     {p['messages']} messages: {p['readings_accepted']} readings accepted, "
          f"{p['duplicates']} duplicates removed, {p['dead_letters']} dead letters")  # fmt: skip
    print(f"              dead letters by reason: {_counts(Counter(p['dead_by_reason']))}")
    print(f"              {s['points_written']} points written in {s['batches_written']} batches, "
          f"{s['points_refused']} refused, {s['write_failures']} failed writes retried")  # fmt: skip
    print(f"  InfluxDB    {sm.readings} readings in measurement 'reading' of database '{db}' "
          f"({sm.devices} devices), {sum(sm.dead_letters.values())} dead letters, "
          f"{sm.statuses} status points")  # fmt: skip
    print(f"  windows     {p['window_results']} results of the 10-minute window 'temp_10m' (temp_c, rh) "
          f"-> {sm.windows} points in 'window'; {p['late_readings']} late -> {sm.late} in 'late_reading'")  # fmt: skip
    w = sm.window_check
    if w.ok:
        some = "" if w.compared_influx == w.closed else f" ({w.compared_influx} of them: its tumbling windows)"
        print(f"              every window the watermark closed ({w.closed}) is in 'window' once, equal to InfluxDB's "
              f"own")  # fmt: skip
        print(f"              GROUP BY time over 'reading'{some} and to the simulator's brute-force reference; "
              f"{w.open} more")  # fmt: skip
        print("              are still open: they end after their device's newest reading, and its next readings "
              "close them")  # fmt: skip
    else:
        print(f"              WINDOWS DIFFER from the {w.closed} the watermark closed: {len(w.missing)} missing, "
              f"{len(w.extra)} not expected, {len(w.twice)} written twice, {len(w.wrong)} values off"
              + (f"; {w.late} late readings, which the check does not model" if w.late else ""))  # fmt: skip
        for key, name, got, want, source in w.wrong[:3]:
            print(f"              {key}: {name} {got!r}, {source} {want!r}")
    verdict = "every valid reading found exactly once, at its event time" if ok else "MISMATCH"
    print(f"  check       {verdict}: {sm.missing} missing, {sm.extra} extra; "
          f"dead letters {'match' if dead_ok else 'DIFFER'}")  # fmt: skip
    for name, check, found_word, false_word in (
        ("patterns", sm.patterns, "raised", "unexpected"),
        ("anomalies", sm.anomalies, "detected", "false alarm"),
    ):
        first, second = _alert_lines(check, found_word, false_word)
        print(f"  {name:<11} {first}")
        print(f"              {second}")
    ids_db = sorted(a["id"] for a in sm.alerts)
    ids_mqtt = sorted(a["id"] for a in run.mqtt_alerts)
    same = "the same ids" if ids_db == ids_mqtt else "ids DIFFER"
    print(f"  alerts      {len(ids_db)} in measurement 'alert', {len(ids_mqtt)} received on MQTT "
          f"{target.prefix}/_gateway/alerts/# ({same})")  # fmt: skip
    print()
    print(f"Done in {total_s:.0f} s. Look at the data (InfluxQL over HTTP):")
    queries = (
        "SELECT mean(temp_c) FROM reading WHERE device='dev-0001' GROUP BY time(10m)",
        "SELECT mean, min, max, count, revision FROM window WHERE device='dev-0001' AND metric='temp_c'",
        "SELECT name, key, message FROM alert",
        "SELECT reason, detail, topic FROM dead_letter",
    )
    for q in queries:
        print(f'  curl -sG {target.influx}/query --data-urlencode db={db} --data-urlencode "q={q}"')
    print(f"Gateway log: {_shown(target.run_dir / 'gateway.log')}. "
          "The services keep running: 'make services-stop' stops them.")  # fmt: skip
    return ok and w.ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--devices", type=int, default=50)
    ap.add_argument("--readings", type=int, default=120, help="readings per device (one a minute of event time)")
    ap.add_argument("--rate", type=float, default=100.0, help="messages per second (0: as fast as possible)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-report", action="store_true", help="skip the flaky-network scenario's report")
    args = ap.parse_args(argv)
    started = time.monotonic()

    run_dir = services.DEFAULT_RUN_DIR
    try:
        ports, notes = services.plan_ports(run_dir, os.environ)
    except services.ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for note in notes:
        print(note)
    print(
        f"==> starting Mosquitto (port {ports['mqtt']}), InfluxDB ({ports['influx']}) and VictoriaMetrics "
        f"({ports['vm']}) on 127.0.0.1 (kept running afterwards)"
    )
    start = ["start", "--run-dir", str(run_dir), "--mqtt-port", str(ports["mqtt"])]
    start += ["--influx-port", str(ports["influx"]), "--influx-rpc-port", str(ports["influx_rpc"])]
    if services.main([*start, "--vm-port", str(ports["vm"])]) != 0:
        return 1
    target = demo_target(run_dir)  # every address from the services the demo started
    target.post_query(f'DROP DATABASE "{DB}"')
    target.post_query(f'CREATE DATABASE "{DB}"')
    cleared = clear_retained(target.mqtt_port)
    if cleared:
        print(f"==> cleared {cleared} retained status messages left by an earlier run")

    run = run_fleet(target, fleet_spec(args.devices, args.readings, args.seed), args.rate)
    ok = print_summary(target, run, read_back(target, run.plan), time.monotonic() - started)
    if not args.no_report:
        # simulator report (sim/report.py): a scenario in virtual time through the gateway's pipeline
        report, verdict = report_scenario(RUN / "report.html")
        status = "matches" if verdict.ok else "DIFFERS FROM"
        print(f"Report of the 'flaky-network' scenario ({status} its truth): {report}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
