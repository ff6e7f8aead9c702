"""The whole gateway at line rate: a real Mosquitto, the real gateway on one core, a real InfluxDB 1.6.

Reproduce (from the repository root, with the project's venv; needs mosquitto, mosquitto_sub, influxd and
taskset, as for the tests)::

    python bench/bench_e2e.py throughput                       # both configurations, stepped rates
    python bench/bench_e2e.py throughput --config default --rates 20000 40000 60000 --rounds 3
    python bench/bench_e2e.py throughput --code /path/to/old   # the gateway of another checkout, same load
    python bench/bench_e2e.py ceilings                         # Mosquitto alone, InfluxDB alone, the publisher
    python bench/bench_e2e.py latency                          # alert latency at 10,000 readings/s
    python bench/bench_e2e.py latency --rounds 4 --code /path/to/old  # side by side, alternating
    python bench/bench_e2e.py latency --rounds 2 --stalls /tmp/stalls   # and where the event loop stalled
    python bench/bench_e2e.py overload                         # 100,000 readings/s for 40 s: RSS over time
    python bench/bench_e2e.py throughput --config default --rates 80000 100000 110000 --publisher raw  # issue 19's

``--publisher raw`` offers the load through a few lines of MQTT on a socket instead of paho: two paho processes
pass at most 62,000-68,000 readings/s on the other core, the raw ones 200,000 on 14 % of it (and as before, the
publishers, the broker and InfluxDB share that core).

Every mode starts its own Mosquitto (the project's broker settings) and InfluxDB 1.x on free loopback ports
(``scripts/services.py``, as the tests do) and stops them at the end.

The load: 1,000 simulated boards (``bench/<n>``; ``--boards``), each message 10 readings of four float metrics
(``temp_c``, ``rh``, ``pressure_hpa``, ``vib``) with a ``flushed`` marker, as the firmware sends after draining
its buffer, published at QoS 1 by ``--publishers`` processes, each a paho MQTT client publishing for its share of the
boards (one connection per process, not per board), paced to the offered rate. The gateway runs as
``taskset -c <core> python -m gateway run`` (``--core``, default 0), with a fresh state folder and a fresh
database for each step.

Configurations (``--config``):

- ``default``: raw readings only (no windows, patterns or detectors);
- ``example``: the four patterns of gateway/examples/gateway.toml, a 10-minute tumbling window per device
  (count, sum, min, max of temp_c and rh) and z-score anomaly detection of temp_c and vib (``write =
  "flagged"``: only anomalous points are written).

A step *keeps up* when, at the end of the offered period, the gateway has taken all but at most one second's
worth of the messages (*behind*: what the publishers had sent on their schedule by the time the gateway wrote its
last stats file, every second, less what it had taken by then; until 5 December this was measured two seconds
after the publishers ended, which let a gateway a few per cent short of the rate pass; publishers late by L s add
L s of messages to it, and print their lag), it took at least 98 % of the offered rate over the offered period (since
6 December: a gateway 1 s behind at the end of 20 s could be 5 % short of the rate), and afterwards
InfluxDB holds exactly the readings published (``count(seq)`` of the
``reading`` measurement; points are deterministic, so a reading written twice would still count once) and
the gateway wrote no dead letter. Printed per step: offered and achieved readings/s and messages/s, the
publisher's lag, the gateway's CPU % (user + system over the offered period, 100 % = one core), its RSS at
the end and its peak (VmHWM), and the count check. The rate taken is counted between two stats files (the times
they were written, not the moments they were read), from the start of the offered period. Per configuration,
the highest step kept up with is printed per round, then the median and range over the rounds.

``latency`` offers ``--rate`` (10,000) readings/s of the load above with the ``example`` configuration
(checkpoints every 2 s, the default) and, from another process, 20 probe boards that complete the
``overheat_pressure_drop`` pattern every 50 ms in all: a reading above 80 °C, then one whose pressure fell by
more than 10 %. It prints p50/p95/p99/max of the time from the publish of the completing reading to the
alert's arrival on MQTT (``<prefix>/_gateway/alerts/<site>/pattern``), taken in the probe process, and the
gateway's CPU over the same period. ``--warmup S`` offers the load S seconds before that period (a gateway past
its start). With ``--stalls DIR`` each gateway also runs bench/stallprobe (its event loop's callbacks over 10 ms,
with the stack of what ran, and the garbage collector's passes), summed up after each round.

``overload`` offers ``--rate`` (100,000) readings/s for ``--seconds`` (40) and prints the gateway's RSS,
its backlog on the broker (published minus taken) and the messages received but not yet taken every two
seconds.

``ceilings``: Mosquitto alone (the publishers -> Mosquitto -> ``mosquitto_sub -q 1``, the broker's own C
client), the publishers alone (to a broker with no subscriber), and InfluxDB alone (the same points, rendered
by the gateway's own code, written in batches of 1,000 lines over HTTP by one writer and by four).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import services  # noqa: E402

SITE = "bench"
BOARDS = 1000
PUBLISHER = "paho"  # or "raw" (--publisher)
PER_MESSAGE = 10
TICK_S = 0.005
KEPT_UP_SHARE = 0.98
"""A step keeps up only if the gateway took at least this share of the offered rate over the offered period (since 6
December: before, a gateway 1 s of messages behind at the end passed, which over 20 s let it be 5 % short)."""
CLK_TCK = os.sysconf("SC_CLK_TCK")

EXAMPLE_EXTRA = """
[engine.watermark]
out_of_orderness = "5s"

[metric_types]
string = ["door", "status"]

[[windows]]
name = "t10m"
kind = "tumbling"
size = "10m"
metrics = ["temp_c", "rh"]
aggregates = ["count", "sum", "min", "max"]
key = "device"

[anomaly]
metrics = ["temp_c", "vib"]
write = "flagged"
"""


def example_toml() -> str:
    """The example patterns (gateway/examples/gateway.toml from its first [[patterns]]) plus the window and detector."""
    text = (ROOT / "gateway" / "examples" / "gateway.toml").read_text(encoding="utf-8")
    return EXAMPLE_EXTRA + "\n" + text[text.index("[[patterns]]") :]


# ------------------------------------------------------------------------------------------- services


@dataclass
class Services:
    mqtt_port: int
    influx_url: str
    procs: list[services.Proc] = field(default_factory=list)

    def stop(self) -> None:
        for p in self.procs:
            p.stop()


OTHER_CORES: set[int] = set()
"""The cores everything but the gateway runs on (all but the gateway's ``--core``; set by main)."""


def _settings(settings: Sequence[str]) -> list[tuple[str, str, str]]:
    """``(section, key, value)`` of each ``section.key=value`` setting (the value as TOML)."""
    out = []
    for s in settings:
        key, _, value = s.partition("=")
        sec, _, name = key.strip().partition(".")
        if not name or not value:
            raise SystemExit(f"a setting is section.key=value (TOML value), not {s!r}")
        out.append((sec, name, value.strip()))
    return out


def pin_all_threads(pid: int, cores: set[int]) -> None:
    if not cores:
        return
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cores)
        except OSError:
            pass


@contextmanager
def running_services(run_dir: Path) -> Iterator[Services]:
    mqtt_port = services.free_port()
    mosq = services.start_mosquitto(run_dir, mqtt_port)
    http_port, rpc_port = services.free_ports(2)
    try:
        influx = services.start_influxdb(run_dir, http_port, rpc_port)
    except BaseException:
        mosq.stop()
        raise
    svc = Services(mqtt_port, influx.url, [mosq, influx])
    for proc in svc.procs:  # every thread of the broker and the database off the gateway's core
        pin_all_threads(proc.pid, OTHER_CORES)
    try:
        yield svc
    finally:
        svc.stop()


def influx_query(url: str, db: str, q: str) -> dict[str, Any]:
    data = urllib.parse.urlencode({"db": db, "q": q}).encode()
    with urllib.request.urlopen(f"{url}/query", data=data, timeout=60) as r:
        out: dict[str, Any] = json.loads(r.read())
        return out


def influx_count(url: str, db: str, measurement: str, fld: str) -> int:
    res = influx_query(url, db, f'SELECT count("{fld}") FROM "{measurement}"')["results"][0]
    series = res.get("series")
    return int(series[0]["values"][0][1]) if series else 0


# ------------------------------------------------------------------------------------------ publishers


def _metrics(rnd: random.Random) -> bytes:
    """One reading's metrics as the load's boards send them: the ``"m"`` member of its JSON."""
    temp = 21.0 + rnd.gauss(0, 0.3)
    rh, hpa, vib = 45 + rnd.random() * 5, 1000 + rnd.random(), 0.2 + rnd.random() * 0.2
    return b'"m":{"temp_c":%.2f,"rh":%.1f,"pressure_hpa":%.1f,"vib":%.3f}' % (temp, rh, hpa, vib)


def _payload(device: str, boot: int, seq0: int, t0: int, rnd: random.Random, hot: bool = False) -> bytes:
    rs = [b'{"b":%d,"s":%d,"t":%d,"q":"s",%s}' % (boot, seq0 + j, t0 + j, _metrics(rnd)) for j in range(PER_MESSAGE)]
    return b'{"v":1,"dev":"%s","r":[%s],"flushed":%d}' % (device.encode(), b",".join(rs), t0 + PER_MESSAGE - 1)


class _Schedule:
    """A publisher process's messages: ``rate_msgs`` a second for ``seconds`` from ``start_at`` (a Unix time), its
    boards in turn, each message the next ``PER_MESSAGE`` seqs of its board with fresh event times after the board's
    last. :meth:`ticks` waits for the start and gives each tick's messages due, ``(board index, first time, first
    seq)``; :meth:`report` is what the process puts on its results queue."""

    def __init__(self, boards: int, rate_msgs: float, seconds: float, start_at: float) -> None:
        self.boards, self.rate, self.start_at = boards, rate_msgs, start_at
        self.total = int(rate_msgs * seconds)
        self.sent = 0
        self.lag = 0.0
        self.seqs = [0] * boards
        self.last_t = [0] * boards
        self.t_start = self.end = 0.0
        self.cpu0 = 0.0

    def ticks(self) -> Iterator[list[tuple[int, int, int]]]:
        time.sleep(max(0.0, self.start_at - time.time()))
        self.t_start = time.monotonic()
        self.cpu0 = time.process_time()
        while self.sent < self.total:
            due = min(self.total, int((time.monotonic() - self.t_start) * self.rate) + 1)
            self.lag = max(self.lag, (due - self.sent) / self.rate if self.rate else 0.0)
            now_ms = time.time_ns() // 1_000_000
            out = []
            while self.sent < due:
                i = self.sent % self.boards
                t0 = max(now_ms - PER_MESSAGE, self.last_t[i] + 1)
                self.last_t[i] = t0 + PER_MESSAGE - 1
                out.append((i, t0, self.seqs[i]))
                self.seqs[i] += PER_MESSAGE
                self.sent += 1
            yield out
            time.sleep(TICK_S)
        self.end = time.monotonic()

    def report(self, acked: int, last_ack: float) -> dict[str, float]:
        return {
            "sent": self.sent,
            "acked": acked,
            "lag_s": self.lag,
            "cpu_s": time.process_time() - self.cpu0,
            "seconds": self.end - self.t_start,
            "last_ack_s": (last_ack - self.t_start) if last_ack else 0.0,
        }


def publisher(
    index: int, count: int, port: int, rate_msgs: float, seconds: float, start_at: float, results: Any
) -> None:
    """Publish for boards ``index, index + count, ...`` at ``rate_msgs`` messages/s for ``seconds``.

    Puts ``{"sent", "acked", "lag_s", "cpu_s", "last_ack_s"}`` on ``results``."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    if OTHER_CORES:
        os.sched_setaffinity(0, OTHER_CORES)
    rnd = random.Random(index)
    boards = [f"{SITE}-{i:04d}" for i in range(index, BOARDS, count)]
    topics = [f"edgekit/{SITE}/{b}/readings" for b in boards]
    acked = 0
    last_ack = 0.0
    lock = threading.Lock()

    def on_publish(client: Any, userdata: Any, mid: int, reason: Any = None, props: Any = None) -> None:
        nonlocal acked, last_ack
        with lock:
            acked += 1
            last_ack = time.monotonic()

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{index}-{os.getpid()}", clean_session=True)
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    c.on_publish = on_publish
    c.connect("127.0.0.1", port, keepalive=60)
    c.loop_start()
    sched = _Schedule(len(boards), rate_msgs, seconds, start_at)
    for tick in sched.ticks():  # each message carries fresh event times
        for i, t0, seq0 in tick:
            c.publish(topics[i], _payload(boards[i], 1, seq0, t0, rnd), qos=1)
    deadline = sched.end + 60
    while time.monotonic() < deadline:
        with lock:
            if acked >= sched.sent:
                break
        time.sleep(0.01)
    report = sched.report(acked, last_ack)
    c.loop_stop()
    c.disconnect()
    results.put(report)


def _mqtt_str(s: bytes) -> bytes:
    return len(s).to_bytes(2, "big") + s


def publisher_raw(
    index: int, count: int, port: int, rate_msgs: float, seconds: float, start_at: float, results: Any
) -> None:
    """As :func:`publisher`, but an MQTT 3.1.1 client of a few lines on a socket: each tick's PUBLISH packets (QoS
    1, packet ids 1-65535 in turn) written in one call, a thread counting the broker's PUBACKs, and each message's
    readings made from a pool of rendered metrics. paho spends most of a publisher's CPU; this offers several
    times as much from the same core (``--publisher raw``), so that the broker and InfluxDB, not the publishers,
    are what the other core runs out of. The messages are those :func:`_payload` makes, but for the values."""
    import socket

    if OTHER_CORES:
        os.sched_setaffinity(0, OTHER_CORES)
    rnd = random.Random(index)
    boards = [f"{SITE}-{i:04d}" for i in range(index, BOARDS, count)]
    topics = [_mqtt_str(f"edgekit/{SITE}/{b}/readings".encode()) for b in boards]
    heads = [b'{"v":1,"dev":"%s","r":[' % b.encode() for b in boards]
    pool = [_metrics(rnd) + b"}" for _ in range(4093)]  # each with the reading's closing brace
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    code = services.mqtt_connect(sock, f"bench-raw-{index}-{os.getpid()}".encode(), keepalive=300)
    if code != 0:
        raise ConnectionError(f"the broker refused the connection: CONNACK return code {code}")
    acked = 0
    last_ack = 0.0
    bad: list[bytes] = []

    def reader() -> None:
        nonlocal acked, last_ack
        rest = b""
        while True:
            try:
                got = sock.recv(65536)
            except OSError:
                return
            if not got:
                return
            rest += got
            n = len(rest) // 4
            if n:
                if any(rest[4 * i] != 0x40 for i in range(n)):
                    bad.append(rest[:64])
                    return
                acked += n
                last_ack = time.monotonic()
                rest = rest[4 * n :]

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    pid = 0
    npool = len(pool)
    sched = _Schedule(len(boards), rate_msgs, seconds, start_at)
    for tick in sched.ticks():
        out = []
        for i, t0, s0 in tick:
            rs = b",".join(
                b'{"b":1,"s":%d,"t":%d,"q":"s",%s' % (s0 + j, t0 + j, pool[(s0 * 7 + i + j) % npool])
                for j in range(PER_MESSAGE)
            )
            payload = b'%s%s],"flushed":%d}' % (heads[i], rs, t0 + PER_MESSAGE - 1)
            pid = pid % 65535 + 1
            var = topics[i] + pid.to_bytes(2, "big")
            out.append(b"\x32" + services.mqtt_remaining_length(len(var) + len(payload)) + var + payload)
        if out:
            sock.sendall(b"".join(out))
    deadline = sched.end + 60
    while time.monotonic() < deadline and acked < sched.sent and not bad and th.is_alive():
        time.sleep(0.01)
    report = sched.report(acked, last_ack)
    if bad:
        print(f"publisher {index}: not a PUBACK from the broker: {bad[0].hex()}", flush=True)
    try:
        sock.sendall(b"\xe0\x00")  # DISCONNECT
        sock.close()
    except OSError:
        pass
    results.put(report)


class Publishers:
    """``n`` publisher processes sharing the boards and the offered rate."""

    def __init__(self, n: int, port: int, readings_per_s: float, seconds: float) -> None:
        ctx = mp.get_context("fork")
        self.results = ctx.Queue()
        self.start_at = time.time() + 1.0
        rate = readings_per_s / PER_MESSAGE / n
        self.procs = [
            ctx.Process(
                target=publisher_raw if PUBLISHER == "raw" else publisher,
                args=(i, n, port, rate, seconds, self.start_at, self.results),
                daemon=True,
            )
            for i in range(n)
        ]
        self.expected_msgs = n * int(rate * seconds)
        for p in self.procs:
            p.start()

    def wait(self, timeout: float = 120) -> dict[str, float]:
        out = [self.results.get(timeout=timeout) for _ in self.procs]
        for p in self.procs:
            p.join(5)
        return {
            "sent": sum(r["sent"] for r in out),
            "acked": sum(r["acked"] for r in out),
            "lag_s": max(r["lag_s"] for r in out),
            "cpu_s": sum(r["cpu_s"] for r in out),
            "seconds": max(r["seconds"] for r in out),
            "last_ack_s": max(r["last_ack_s"] for r in out),
        }

    def kill(self) -> None:
        for p in self.procs:
            if p.is_alive():
                p.kill()
                p.join(5)


# ---------------------------------------------------------------------------------------------- gateway


def proc_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / CLK_TCK


def proc_written(pid: int) -> int:
    """Bytes the process has caused to be written to storage (``/proc/<pid>/io``'s ``write_bytes``)."""
    with open(f"/proc/{pid}/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("write_bytes:"))


def proc_wait_s(pid: int) -> float:
    """Seconds the process's main thread was runnable but waited for a CPU (``/proc/<pid>/schedstat``)."""
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[1]) / 1e9


def proc_mem_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) in MiB."""
    rss = hwm = 0.0
    with open(f"/proc/{pid}/status") as f:
        for ln in f:
            if ln.startswith("VmRSS:"):
                rss = int(ln.split()[1]) / 1024
            elif ln.startswith("VmHWM:"):
                hwm = int(ln.split()[1]) / 1024
    return rss, hwm


class Gateway:
    def __init__(
        self,
        code: Path,
        workdir: Path,
        mqtt_port: int,
        influx_url: str,
        db: str,
        config: str,
        core: int | None,
        settings: Sequence[str] = (),
        stalls: Path | None = None,
    ) -> None:
        self.workdir = workdir
        self.stats_file = workdir / "stats.json"
        base: dict[str, dict[str, str]] = {
            "mqtt": {"url": f'"mqtt://127.0.0.1:{mqtt_port}"', "client_id": f'"bench-gw-{workdir.name}"'},
            "influx": {"target": '"v1"', "url": f'"{influx_url}"', "database": f'"{db}"'},
            "state": {"dir": f'"{workdir / "state"}"'},
            "log": {"level": '"WARNING"'},
        }
        for sec, name, value in _settings(settings):  # a variant's settings replace or add to these
            base.setdefault(sec, {})[name] = value
        text = "".join(f"[{sec}]\n" + "".join(f"{k} = {v}\n" for k, v in kv.items()) + "\n" for sec, kv in base.items())
        cfg = workdir / "gateway.toml"
        cfg.write_text(text + (example_toml() if config == "example" else ""), encoding="utf-8")
        cmd = [sys.executable, "-m", "gateway", "run", "--config", str(cfg), "--stats-file", str(self.stats_file)]
        if core is not None:
            cmd = ["taskset", "-c", str(core), *cmd]
        env = {**os.environ, "PYTHONPATH": str(code)}
        if stalls is not None:  # bench/stallprobe's sitecustomize, loaded first: the stalls to <stalls>.<pid>.json
            env.update(PYTHONPATH=f"{ROOT / 'bench' / 'stallprobe'}{os.pathsep}{code}", STALLPROBE_OUT=str(stalls))
        self.log = open(workdir / "gateway.log", "wb")
        self.proc = subprocess.Popen(cmd, cwd=code, stdout=self.log, stderr=subprocess.STDOUT, env=env)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stats(self) -> dict[str, Any]:
        try:
            out: dict[str, Any] = json.loads(self.stats_file.read_text())
            return out
        except (OSError, ValueError):
            return {}

    def taken(self) -> int:
        s = self.stats()
        return int(s.get("pipeline", {}).get("messages", 0))

    def wait_connected(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not self.stats().get("mqtt", {}).get("connected"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("gateway did not connect:\n" + (self.workdir / "gateway.log").read_text()[-3000:])
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


ECHO = r"""
import json, os, sys, time
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

port, stats_file, drop = int(sys.argv[1]), sys.argv[2], sys.argv[3].encode()
count = [0]
client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-echo", clean_session=True)
client.max_inflight_messages_set(100)


def on_message(c, userdata, msg):
    count[0] += 1
    dev = msg.topic.split("/")[2]
    if dev.startswith("probe-") and drop in msg.payload:  # the probe's completing reading
        doc = json.loads(msg.payload)
        seq = doc["r"][-1]["s"]
        alert = {"name": "overheat_pressure_drop", "readings": [[dev, 1, seq]]}
        c.publish("edgekit/_gateway/alerts/echo", json.dumps(alert), qos=1)


client.on_message = on_message
client.on_connect = lambda c, u, f, rc, p: c.subscribe("edgekit/+/+/readings", qos=1)
client.connect("127.0.0.1", port)
client.loop_start()
while True:
    with open(stats_file + ".tmp", "w") as f:
        json.dump({"mqtt": {"connected": client.is_connected()}, "pipeline": {"messages": count[0]}}, f)
    os.replace(stats_file + ".tmp", stats_file)
    time.sleep(0.2)
"""


class Echo(Gateway):
    """In the gateway's place for ``latency --echo``: a bare paho client on the gateway's core that takes every
    reading at QoS 1, as the gateway subscribes, and answers each probe's completing reading with an alert at
    once. What it measures is the path around the gateway (publisher, broker, probe on their cores): the floor
    under any gateway's alert latency on this machine at this load."""

    def __init__(self, workdir: Path, mqtt_port: int, core: int | None) -> None:
        self.workdir = workdir
        self.stats_file = workdir / "stats.json"
        cmd = [sys.executable, "-c", ECHO, str(mqtt_port), str(self.stats_file), PROBE_DROP]
        if core is not None:
            cmd = ["taskset", "-c", str(core), *cmd]
        self.log = open(workdir / "gateway.log", "wb")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        self.log.close()


# ------------------------------------------------------------------------------------------- throughput


@dataclass
class Step:
    rate: int
    kept_up: bool
    achieved: float
    behind_msgs: int
    backlog_msgs: int
    cpu_pct: float
    rss_mb: float
    hwm_mb: float
    counted: int
    expected: int
    dead: int
    pub_lag_s: float
    drained_s: float = 0.0  # from the end of the offered period until every message was taken and written
    note: str = ""

    @property
    def per_cpu_s(self) -> float:
        """Readings taken per second of the gateway's CPU time: what one core would do if the gateway had it."""
        return self.achieved / (self.cpu_pct / 100) if self.cpu_pct else 0.0


def _taken_at(gw: Gateway) -> tuple[int, float]:
    """The messages the gateway had taken, and when: its stats file's count, at the time the file was written (its
    modification time, as a Unix time). The gateway reads its counters just before it writes the file (after the
    devices' rows, made a slice at a time), so the time is never before the count; the file is written every
    second. Read until the file is the same before and after (the gateway replaces it whole)."""
    for _ in range(20):
        try:
            before = os.stat(gw.stats_file)
            text = gw.stats_file.read_text()
            after = os.stat(gw.stats_file)
            s = json.loads(text)
        except (OSError, ValueError):
            time.sleep(0.05)
            continue
        if (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns):
            return int(s.get("pipeline", {}).get("messages", 0)), after.st_mtime_ns / 1e9
    return gw.taken(), time.time()


def run_step(
    svc: Services,
    code: Path,
    config: str,
    rate: int,
    seconds: float,
    publishers: int,
    core: int | None,
    tmp: Path,
    profile_to: Path | None = None,
    native: bool = False,
) -> Step:
    db = f"e2e_{config}_{rate}_{int(time.time() * 1000) % 10**9}"
    services.influx_create_database(svc.influx_url, db)
    work = Path(tempfile.mkdtemp(prefix=f"{config}-{rate}-", dir=tmp))
    gw = Gateway(code, work, svc.mqtt_port, svc.influx_url, db, config, core)
    pubs: Publishers | None = None
    try:
        gw.wait_connected()
        pubs = Publishers(publishers, svc.mqtt_port, rate, seconds)
        time.sleep(max(0.0, pubs.start_at - time.time()))
        t0 = time.monotonic()
        cpu0 = proc_cpu_s(gw.pid)
        taken0, at0 = _taken_at(gw)
        profile = None
        if profile_to is not None:  # py-spy (a dev dependency), over the offered period but its first 2 s
            profile_to.parent.mkdir(parents=True, exist_ok=True)
            time.sleep(2.0)
            spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))  # the venv's, unactivated
            profile = subprocess.Popen(
                [spy, "record", "-p", str(gw.pid), "-d", str(int(seconds - 3)), "-r", "200", "-f", "raw",
                 "-o", str(profile_to), *(["--native"] if native else [])], stdout=subprocess.DEVNULL,
            )  # fmt: skip
            time.sleep(seconds - 2.0)
        else:
            time.sleep(seconds)
        t1 = time.monotonic()
        cpu1 = proc_cpu_s(gw.pid)
        taken1, at1 = _taken_at(gw)
        # behind at the end: what the publishers had sent on their schedule by the time the gateway wrote its last
        # stats file (every second, so in the last second of the offered period), less what it had taken by then; a
        # stats file older than 2 s (a stalled writer) says nothing about the end, and the step is not kept up with
        behind = min(pubs.expected_msgs, int(rate / PER_MESSAGE * (at1 - pubs.start_at))) - taken1
        stale = time.time() - at1 > 2.0
        rss, _ = proc_mem_mb(gw.pid)
        offered_by_now = pubs.expected_msgs
        if profile is not None and (profile.wait() != 0 or not profile_to or not profile_to.exists()):
            print(f"py-spy recorded nothing (exit code {profile.returncode}); see its messages above", flush=True)
        pub = pubs.wait()
        time.sleep(2.0)  # the stats file is written every second: what was taken a second after the end
        backlog = int(pub["sent"]) - gw.taken()
        # drain: everything taken and written (the stats file is written every second)
        deadline = time.monotonic() + 30 + seconds
        drained = float("nan")
        while time.monotonic() < deadline:
            s = gw.stats()
            if s.get("pipeline", {}).get("messages", 0) >= pub["sent"] and s.get("sink", {}).get("pending", 1) == 0:
                try:  # the stats file's time (it is written every second): to a second
                    drained = os.stat(gw.stats_file).st_mtime - (pubs.start_at + seconds)
                except OSError:
                    drained = time.time() - (pubs.start_at + seconds)
                break
            time.sleep(0.5)
        time.sleep(1.5)
        s = gw.stats()
        _, hwm = proc_mem_mb(gw.pid)
        expected = int(pub["sent"]) * PER_MESSAGE
        counted = influx_count(svc.influx_url, db, "reading", "seq")
        dead = int(s.get("pipeline", {}).get("dead_letters", -1))
        # from the start of the offered period (nothing came before it, so what was taken then is taken0)
        achieved = (taken1 - taken0) * PER_MESSAGE / (at1 - max(at0, pubs.start_at)) if at1 > at0 else 0.0
        kept = (
            behind <= rate / PER_MESSAGE
            and achieved >= KEPT_UP_SHARE * rate
            and not stale
            and counted == expected
            and dead == 0
        )
        note = ""
        if achieved < KEPT_UP_SHARE * rate:
            note = f"took under {100 * KEPT_UP_SHARE:.0f} % of the rate"
        if pub["sent"] < offered_by_now:
            note += " publisher short"
        if pub["lag_s"] > 1.0:
            note += " publisher lagged"
        if stale:
            note += " stats file stale at the end"
        return Step(
            rate=rate,
            kept_up=kept,
            achieved=achieved,
            behind_msgs=behind,
            backlog_msgs=backlog,
            cpu_pct=100 * (cpu1 - cpu0) / (t1 - t0),
            rss_mb=rss,
            hwm_mb=hwm,
            counted=counted,
            expected=expected,
            dead=dead,
            pub_lag_s=pub["lag_s"],
            drained_s=drained,
            note=note.strip(),
        )
    finally:
        if pubs is not None:
            pubs.kill()
        gw.stop()
        shutil.rmtree(work, ignore_errors=True)
        influx_query(svc.influx_url, db, f'DROP DATABASE "{db}"')


def print_step(label: str, st: Step) -> None:
    print(
        f"  {label:8} offered {st.rate:>7,}/s ({st.rate // PER_MESSAGE:>6,} msg/s)  taken {st.achieved:>9,.0f}/s  "
        f"behind {st.behind_msgs:>6,} msg (2 s after {st.backlog_msgs:>6,})  "
        f"cpu {st.cpu_pct:5.1f} % ({st.per_cpu_s:>7,.0f}/cpu-s)  "
        f"rss {st.rss_mb:6.1f} MiB (peak {st.hwm_mb:6.1f})  "
        f"influx {st.counted:,}/{st.expected:,} (all written by {st.drained_s:.1f} s after the end)  dead {st.dead}  "
        f"pub lag {st.pub_lag_s:.2f}s  "
        f"{'KEPT UP' if st.kept_up else 'behind'} {st.note}",
        flush=True,
    )


def cmd_throughput(args: argparse.Namespace) -> None:
    configs = ["default", "example"] if args.config == "both" else [args.config]
    codes = [("this", ROOT)] + [(f"code{i + 1}", Path(c).resolve()) for i, c in enumerate(args.code or [])]
    rates = {
        "default": args.rates or [10_000, 20_000, 30_000, 40_000, 50_000, 60_000, 80_000, 100_000],
        "example": args.rates or [5_000, 10_000, 15_000, 20_000, 30_000, 40_000, 50_000],
    }
    best: dict[tuple[str, str], list[Step]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp, running_services(Path(tmp) / "svc") as svc:
        for rnd in range(args.rounds):
            for config in configs:
                # alternating: each round runs every checkout at each step, each first in turn
                for label, code in codes if rnd % 2 == 0 else codes[::-1]:
                    print(f"round {rnd + 1} {config} {label} ({code})", flush=True)
                    top: Step | None = None
                    for rate in rates[config]:
                        prof = Path(args.profile) / f"{config}-{label}-{rate}.txt" if args.profile else None
                        st = run_step(
                            svc,
                            code,
                            config,
                            rate,
                            args.seconds,
                            args.publishers,
                            args.core,
                            Path(tmp),
                            prof,
                            args.native,
                        )
                        print_step(label, st)
                        if not st.kept_up:
                            break
                        top = st
                    if top is not None:
                        best.setdefault((config, label), []).append(top)
                    else:
                        best.setdefault((config, label), [])
    print("\nhighest step kept up with (per round; median and range):")
    for (config, label), steps in best.items():
        if not steps:
            print(f"  {config:8} {label:6} none")
            continue
        r = [s.rate for s in steps]
        print(
            f"  {config:8} {label:6} rounds {r}  median {statistics.median(r):,.0f} readings/s "
            f"({statistics.median(r) / PER_MESSAGE:,.0f} msg/s), range {min(r):,}-{max(r):,}; "
            f"cpu {statistics.median(s.cpu_pct for s in steps):.0f} %, "
            f"rss {statistics.median(s.rss_mb for s in steps):.0f} MiB, "
            f"{statistics.median(s.per_cpu_s for s in steps):,.0f} readings per gateway cpu-s"
        )


# --------------------------------------------------------------------------------------------- capacity


def cmd_capacity(args: argparse.Namespace) -> None:
    """Offer more than the gateway takes; measure what it takes per second of its own CPU time.

    On a machine shared with other work the gateway gets only part of its core (the run-queue wait says how
    much it waited for it); readings per CPU-second is what it would take with the core to itself."""
    configs = ["default", "example"] if args.config == "both" else [args.config]
    codes = [("this", ROOT)] + [(f"code{i + 1}", Path(c).resolve()) for i, c in enumerate(args.code or [])]
    # 60,000/s for both: the example configuration took 50,000/s and more on 5 December, so half of that (offered
    # until then) no longer saturated it, and its readings per CPU-second were those of a gateway partly idle
    rate = {"default": args.rate or 60_000, "example": args.rate or 60_000}
    got: dict[tuple[str, str], list[tuple[float, float, float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp, running_services(Path(tmp) / "svc") as svc:
        for rnd in range(args.rounds):
            for config in configs:
                # each first in turn: run in a fixed order, the checkout run second came out 2-4 % higher (two runs
                # of three rounds, the same two checkouts in either order, 5 December 2026)
                for label, code in codes if rnd % 2 == 0 else codes[::-1]:
                    db = f"cap_{config}_{label}_{rnd}"
                    services.influx_create_database(svc.influx_url, db)
                    work = Path(tempfile.mkdtemp(prefix=f"cap-{config}-", dir=tmp))
                    gw = Gateway(code, work, svc.mqtt_port, svc.influx_url, db, config, args.core)
                    try:
                        gw.wait_connected()
                        pubs = Publishers(args.publishers, svc.mqtt_port, rate[config], args.seconds)
                        time.sleep(max(0.0, pubs.start_at - time.time()) + 3.0)  # past the start
                        t0, c0, w0, n0 = time.monotonic(), proc_cpu_s(gw.pid), proc_wait_s(gw.pid), gw.taken()
                        time.sleep(args.seconds - 4.0)
                        t1, c1, w1, n1 = time.monotonic(), proc_cpu_s(gw.pid), proc_wait_s(gw.pid), gw.taken()
                        rss, hwm = proc_mem_mb(gw.pid)
                        pubs.kill()
                        el = t1 - t0
                        taken = (n1 - n0) * PER_MESSAGE / el
                        cpu = (c1 - c0) / el
                        per_cpu = (n1 - n0) * PER_MESSAGE / (c1 - c0) if c1 > c0 else 0.0
                        got.setdefault((config, label), []).append((per_cpu, taken, cpu, (w1 - w0) / el))
                        print(
                            f"round {rnd + 1} {config:8} {label:6} offered {rate[config]:,}/s: took {taken:,.0f} "
                            f"readings/s on {100 * cpu:.0f} % of a core (waited for it {100 * (w1 - w0) / el:.0f} % "
                            f"of the time) = {per_cpu:,.0f} readings per CPU-second; rss {rss:.0f} MiB "
                            f"(peak {hwm:.0f})",
                            flush=True,
                        )
                    finally:
                        gw.stop()
                        shutil.rmtree(work, ignore_errors=True)
                        influx_query(svc.influx_url, db, f'DROP DATABASE "{db}"')
    print("\nreadings per gateway CPU-second (median, range over rounds):")
    for (config, label), xs in got.items():
        per = [x[0] for x in xs]
        print(
            f"  {config:8} {label:6} median {statistics.median(per):,.0f}  range {min(per):,.0f}-{max(per):,.0f}  "
            f"({len(per)} rounds; took {statistics.median(x[1] for x in xs):,.0f} readings/s on a median "
            f"{100 * statistics.median(x[2] for x in xs):.0f} % of the core)"
        )


# --------------------------------------------------------------------------------------------- ceilings


def cmd_ceilings(args: argparse.Namespace) -> None:
    from gateway.model import Reading
    from gateway.points import reading_line

    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp, running_services(Path(tmp) / "svc") as svc:
        for rnd in range(args.rounds):
            # the publishers alone: unpaced is not possible with pacing code, so offer more than they can do
            offered = args.rate
            pubs = Publishers(args.publishers, svc.mqtt_port, offered, args.seconds)
            pub = pubs.wait()
            pubs.kill()
            print(
                f"round {rnd + 1} publishers alone ({args.publishers} processes, no subscriber): "
                f"{pub['acked'] * PER_MESSAGE / pub['last_ack_s']:,.0f} readings/s acknowledged "
                f"({pub['acked'] / pub['last_ack_s']:,.0f} msg/s; offered {offered:,}/s; cpu {pub['cpu_s']:.1f} s)",
                flush=True,
            )
            # Mosquitto alone: publish -> subscribe at QoS 1, the broker's own C client subscribed
            total = args.publishers * int(offered / PER_MESSAGE / args.publishers * args.seconds)
            sub = subprocess.Popen(
                ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(svc.mqtt_port), "-q", "1", "-t", "edgekit/#",
                 "-C", str(total), "-i", f"bench-sub-{rnd}"],
                stdout=subprocess.DEVNULL,
            )  # fmt: skip
            time.sleep(1.0)
            pubs = Publishers(args.publishers, svc.mqtt_port, offered, args.seconds)
            t0 = pubs.start_at
            try:
                sub.wait(args.seconds * 10 + 60)
            except subprocess.TimeoutExpired:
                sub.kill()
            t1 = time.time()
            pub = pubs.wait()
            pubs.kill()
            print(
                f"round {rnd + 1} Mosquitto alone (publish -> mosquitto_sub at QoS 1): {total:,} messages in "
                f"{t1 - t0:.1f} s = {total * PER_MESSAGE / (t1 - t0):,.0f} readings/s ({total / (t1 - t0):,.0f} msg/s)",
                flush=True,
            )
            # InfluxDB alone: the gateway's own lines for the same readings
            n = args.influx_points
            now = time.time_ns() // 1_000_000 - 3_600_000
            rnd_ = random.Random(rnd)
            lines = [
                reading_line(
                    Reading(SITE, f"{SITE}-{i % BOARDS:04d}", 1, i // BOARDS, now + i // BOARDS, "s",
                            {"temp_c": round(21 + rnd_.gauss(0, 0.3), 2), "rh": round(45 + rnd_.random() * 5, 1),
                             "pressure_hpa": round(1000 + rnd_.random(), 1), "vib": round(0.2 + rnd_.random() / 5, 3)})
                )
                for i in range(n)
            ]  # fmt: skip
            # the writers on the gateway's core, as the gateway writes from there: InfluxDB has the other core to itself
            # (until 6 December they ran on either core, beside it; the gateway then wrote 100,000 points/s into the
            # InfluxDB they had measured at 61,000-74,000)
            mine = os.sched_getaffinity(0)
            if args.core is not None:
                os.sched_setaffinity(0, {args.core})
            influxd = svc.procs[1].pid
            try:
                for writers in (1, 4):
                    db = f"alone_{rnd}_{writers}"
                    services.influx_create_database(svc.influx_url, db)
                    c0 = proc_cpu_s(influxd)
                    secs = influx_write_all(svc.influx_url, db, lines, 1000, writers)
                    cpu = proc_cpu_s(influxd) - c0
                    counted = influx_count(svc.influx_url, db, "reading", "seq")
                    print(
                        f"round {rnd + 1} InfluxDB alone ({writers} writer(s), batches of 1,000 lines): {n:,} points "
                        f"in {secs:.1f} s = {n / secs:,.0f} points/s on {100 * cpu / secs:.0f} % of a core = "
                        f"{n / cpu if cpu else 0:,.0f} points per CPU-second of influxd (counted {counted:,})",
                        flush=True,
                    )
                    influx_query(svc.influx_url, db, f'DROP DATABASE "{db}"')
            finally:
                os.sched_setaffinity(0, mine)


def influx_write_all(url: str, db: str, lines: Sequence[str], batch: int, writers: int) -> float:
    import http.client

    host, port = urllib.parse.urlsplit(url).hostname, urllib.parse.urlsplit(url).port
    bodies = ["\n".join(lines[i : i + batch]).encode() for i in range(0, len(lines), batch)]
    path = f"/write?{urllib.parse.urlencode({'db': db, 'precision': 'ns'})}"
    it = iter(bodies)
    lock = threading.Lock()

    def work() -> None:
        conn = http.client.HTTPConnection(host or "127.0.0.1", port or 8086, timeout=60)
        while True:
            with lock:
                body = next(it, None)
            if body is None:
                break
            conn.request("POST", path, body=body)
            r = conn.getresponse()
            r.read()
            if r.status != 204:
                raise RuntimeError(f"write failed: {r.status}")
        conn.close()

    t0 = time.monotonic()
    threads = [threading.Thread(target=work) for _ in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.monotonic() - t0


# ---------------------------------------------------------------------------------------------- latency


PROBE_HOT = '{"temp_c":85.0,"pressure_hpa":1000.0}'
PROBE_DROP = '{"temp_c":21.0,"pressure_hpa":850.0}'
"""The probe's two readings: above 80 °C, then the pressure drop that completes ``overheat_pressure_drop``."""


def prober(
    port: int, seconds: float, start_at: float, results: Any, probes: int = 20, every_s: float = 0.05, warmup: float = 0
) -> None:
    """Complete ``overheat_pressure_drop`` on ``probes`` boards in turn every ``every_s``; time each alert after the
    first ``warmup`` seconds."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    if OTHER_CORES:
        os.sched_setaffinity(0, OTHER_CORES)
    sent_at: dict[tuple[str, int], float] = {}
    got: list[float] = []
    sent: list[float] = []  # when each of them was published (time.monotonic(), the same clock in every process)
    lock = threading.Lock()

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        now = time.monotonic()
        doc = json.loads(msg.payload)
        if doc.get("name") != "overheat_pressure_drop":
            return
        dev, _boot, seq = doc["readings"][-1]
        with lock:
            t = sent_at.pop((dev, seq), None)
            if t is not None:
                got.append(now - t)
                sent.append(t)

    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-probe-sub-{os.getpid()}", clean_session=True)
    sub.on_message = on_message
    sub.connect("127.0.0.1", port)
    sub.subscribe("edgekit/_gateway/alerts/#", qos=1)
    sub.loop_start()
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-probe-pub-{os.getpid()}", clean_session=True)
    pub.max_inflight_messages_set(1000)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    boards = [f"probe-{i:02d}" for i in range(probes)]
    seq = dict.fromkeys(boards, 0)
    last_t = dict.fromkeys(boards, 0)
    time.sleep(max(0.0, start_at - time.time()))
    t_end = time.monotonic() + seconds
    timed_from = time.monotonic() + warmup
    n = 0
    warm = 40  # each board's detector warm-up and first runs are not timed
    while time.monotonic() < t_end:
        b = boards[n % probes]
        n += 1
        now_ms = time.time_ns() // 1_000_000
        for hot in (True, False):
            t = max(now_ms, last_t[b] + 1)
            last_t[b] = t
            s = seq[b]
            seq[b] += 1
            m = PROBE_HOT if hot else PROBE_DROP
            payload = b'{"v":1,"dev":"%s","r":[{"b":1,"s":%d,"t":%d,"q":"s","m":%s}],"flushed":%d}' % (
                b.encode(), s, t, m.encode(), t)  # fmt: skip
            if not hot and n > warm and time.monotonic() >= timed_from:
                with lock:
                    sent_at[(b, s)] = time.monotonic()
            pub.publish(f"edgekit/{SITE}/{b}/readings", payload, qos=1)
            if hot:
                time.sleep(0.002)
        time.sleep(every_s)
    deadline = time.monotonic() + 60.0  # a gateway that fell behind sends them late: wait for them
    while time.monotonic() < deadline:
        with lock:
            if not sent_at:
                break
        time.sleep(0.1)
    with lock:
        results.put({"latencies": list(got), "sent": list(sent), "missing": len(sent_at), "published": 2 * n})
    pub.loop_stop()
    sub.loop_stop()


def pct(xs: Sequence[float], p: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


def stall_summary(found: Path, alerts: Sequence[tuple[float, float]] = (), top: int = 4) -> str:
    """What bench/stallprobe recorded in the gateway of one round (``found``, its ``<out>.<pid>.json``): the event
    loop's callbacks over 10 ms, where the longest ran, and the garbage collector's passes over 10 ms; and for the
    slowest 1 % of ``alerts`` (publish time, seconds to the alert; the probe's clock, which is the gateway's), the
    stalls and the collections over 3 ms between their publish and their alert."""
    if not found.exists():
        return f"  stalls: nothing recorded at {found} (did the gateway stop cleanly?)"
    got = json.loads(found.read_text(encoding="utf-8"))
    stalls, gcs = got["stalls"], [g for g in got["gc"] if g[1] > 0.010]
    slow = sorted(alerts, key=lambda a: -a[1])[: max(1, len(alerts) // 100)] if alerts else []
    during = []
    for sent_t, took in slow:
        hit = [s for s in stalls if s[0] < sent_t + took and s[0] + s[1] > sent_t]
        col = [g for g in got["gc"] if g[0] < sent_t + took and g[0] + g[1] > sent_t]
        during.append(
            f"{took * 1000:.0f} ms: {sum(s[1] for s in hit) * 1000:.0f} ms of {len(hit)} stalls, "
            f"{sum(g[1] for g in col) * 1000:.0f} ms of {len(col)} collections over 3 ms"
        )
    lines = [
        f"  stalls: {len(stalls)} loop callbacks over 10 ms ({sum(s[1] for s in stalls) * 1000:.0f} ms in all, "
        f"{sum(s[1] > 0.030 for s in stalls)} over 30 ms); {len(gcs)} collections over 10 ms "
        f"({', '.join(f'{g[1] * 1000:.0f} ms gen {g[2]}' for g in gcs) or 'none'}); {found}"
    ]
    if during:
        lines.append(f"  the slowest 1 % of alerts, and the loop's stalls while each waited: {'; '.join(during)}")
    for t0, took, task, stack in sorted(stalls, key=lambda s: -s[1])[:top]:
        where = " < ".join(reversed([f for f in stack or [] if "asyncio" not in f and "events.py" not in f][-3:]))
        lines.append(f"    {took * 1000:6.1f} ms at {t0 - stalls[0][0]:6.1f} s  {task}: {where or '(not sampled)'}")
    return "\n".join(lines)


def cmd_latency(args: argparse.Namespace) -> None:
    runs: list[tuple[str, Path, list[str]]] = [(str(ROOT), ROOT, [])]
    runs += [(str(Path(c).resolve()), Path(c).resolve(), []) for c in args.code or ()]
    for v in args.variant or ():  # this checkout with other settings
        label, _, sets = v.partition(":")
        runs.append((f"{ROOT} [{label}]", ROOT, [x for x in sets.split(",") if x]))
    if args.echo:
        runs.append(("echo (no gateway)", ROOT, []))
    results: dict[str, list[tuple[float, float, float, float]]] = {label: [] for label, _, _ in runs}
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp, running_services(Path(tmp) / "svc") as svc:
        for rnd in range(args.rounds):
            for code_label, code, sets in runs if rnd % 2 == 0 else runs[::-1]:  # alternating, each first in turn
                db = f"lat_{rnd}_{[r[0] for r in runs].index(code_label)}"
                services.influx_create_database(svc.influx_url, db)
                work = Path(tempfile.mkdtemp(prefix="latency-", dir=tmp))
                stalls = None
                if args.stalls:
                    Path(args.stalls).mkdir(parents=True, exist_ok=True)
                    stalls = Path(args.stalls).resolve() / f"{[r[0] for r in runs].index(code_label)}-round{rnd + 1}"
                if code_label.startswith("echo"):
                    gw: Gateway = Echo(work, svc.mqtt_port, args.core)
                else:
                    gw = Gateway(code, work, svc.mqtt_port, svc.influx_url, db, "example", args.core, sets, stalls)
                try:
                    gw.wait_connected()
                    pubs = Publishers(args.publishers, svc.mqtt_port, args.rate, args.warmup + args.seconds)
                    ctx = mp.get_context("fork")
                    q = ctx.Queue()
                    probe = ctx.Process(
                        target=prober,
                        args=(svc.mqtt_port, args.warmup + args.seconds, pubs.start_at, q),
                        kwargs={"warmup": args.warmup},
                        daemon=True,
                    )
                    probe.start()
                    time.sleep(max(0.0, pubs.start_at - time.time()) + args.warmup)
                    cpu0, written0 = proc_cpu_s(gw.pid), proc_written(gw.pid)  # over the period alerts are timed
                    t0 = time.monotonic()
                    time.sleep(args.seconds)
                    written = (proc_written(gw.pid) - written0) / (time.monotonic() - t0)
                    taken = gw.taken()
                    res = q.get(timeout=args.seconds + 180)
                    # the probes' messages are taken too (until 6 December they were counted as the load's, and the
                    # backlog came out below zero when the gateway kept up)
                    backlog = pubs.expected_msgs - (taken - res["published"])
                    probe.join(10)
                    pub = pubs.wait()
                    pubs.kill()
                    cpu = 100 * (proc_cpu_s(gw.pid) - cpu0) / (time.monotonic() - t0)
                    lat = [x * 1000 for x in res["latencies"]]
                    s = gw.stats()
                    row = (pct(lat, 50), pct(lat, 95), pct(lat, 99), max(lat, default=float("nan")))
                    results[code_label].append(row)
                    print(
                        f"round {rnd + 1}, {code_label}: {args.rate:,} readings/s offered (+ probes), "
                        f"{len(lat)} alerts timed, {res['missing']} without an alert; publish -> alert ms: "
                        f"p50 {pct(lat, 50):.1f}  p95 "
                        f"{pct(lat, 95):.1f}  p99 {pct(lat, 99):.1f}  max {max(lat, default=float('nan')):.1f}; "
                        f"gateway cpu {cpu:.0f} %, writes {written / 1e6:.1f} MB/s, "
                        f"backlog at the end {backlog:,} messages, "
                        f"checkpoints {s.get('state', {}).get('checkpoints')}, pub lag {pub['lag_s']:.2f}s",
                        flush=True,
                    )
                finally:
                    gw.stop()
                    shutil.rmtree(work, ignore_errors=True)
                if stalls is not None and not code_label.startswith("echo"):
                    found = stalls.with_name(f"{stalls.name}.{gw.pid}.json")  # taskset execs: the gateway's pid
                    print(stall_summary(found, list(zip(res["sent"], res["latencies"], strict=True))), flush=True)
    print(f"\npublish -> alert ms over {args.rounds} rounds, median (min-max) of each round's percentile:")
    for label, rows in results.items():
        cols = []
        for name, i in (("p50", 0), ("p95", 1), ("p99", 2), ("max", 3)):
            xs = [r[i] for r in rows]
            cols.append(f"{name} {statistics.median(xs):.1f} ({min(xs):.1f}-{max(xs):.1f})" if xs else f"{name} -")
        print(f"  {label}: " + ", ".join(cols))


# --------------------------------------------------------------------------------------------- overload


def cmd_overload(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp, running_services(Path(tmp) / "svc") as svc:
        db = "overload"
        services.influx_create_database(svc.influx_url, db)
        work = Path(tempfile.mkdtemp(prefix="overload-", dir=tmp))
        gw = Gateway(Path(args.code or ROOT).resolve(), work, svc.mqtt_port, svc.influx_url, db, args.config, args.core)
        try:
            gw.wait_connected()
            pubs = Publishers(args.publishers, svc.mqtt_port, args.rate, args.seconds)
            time.sleep(max(0.0, pubs.start_at - time.time()))
            t0 = time.monotonic()
            per_s = args.rate / PER_MESSAGE
            peak = 0.0
            while time.monotonic() - t0 < args.seconds + args.after:
                time.sleep(2.0)
                el = time.monotonic() - t0
                rss, hwm = proc_mem_mb(gw.pid)
                peak = max(peak, rss)
                s = gw.stats()
                taken = int(s.get("pipeline", {}).get("messages", 0))
                offered = int(min(el, args.seconds) * per_s)
                mq = s.get("mqtt", {})
                print(
                    f"  t={el:5.1f}s  rss {rss:6.1f} MiB (peak {hwm:6.1f})  "
                    f"offered {offered:>8,} msg  taken {taken:>8,}  "
                    f"backlog {offered - taken:>8,}  received-not-taken {mq.get('queued', '?')}  "
                    f"sink memory {s.get('sink', {}).get('memory', '?')}",
                    flush=True,
                )
            pub = pubs.wait(timeout=300)
            pubs.kill()
            print(
                f"published {pub['sent']:,} messages ({pub['acked']:,} acknowledged by the broker); "
                f"peak RSS {peak:.1f} MiB"
            )
            print("mqtt:", json.dumps(gw.stats().get("mqtt")))
            if args.show_log:
                print((work / "gateway.log").read_text()[-4000:])
        finally:
            gw.stop()
            shutil.rmtree(work, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode", required=True)

    def common(p: argparse.ArgumentParser, rate: int, seconds: float) -> None:
        p.add_argument("--publishers", type=int, default=4, help="publisher processes (default 4)")
        p.add_argument(
            "--core",
            type=int,
            default=0,
            help="the CPU the gateway is pinned to (taskset); services and publishers run on the others; -1: none",
        )
        p.add_argument("--rounds", type=int, default=1)
        p.add_argument("--rate", type=int, default=rate, help="readings/s offered")
        p.add_argument("--seconds", type=float, default=seconds)
        p.add_argument("--boards", type=int, default=BOARDS, help=f"simulated boards (default {BOARDS:,})")
        p.add_argument(
            "--publisher",
            choices=["paho", "raw"],
            default="paho",
            help="paho: a paho client per process (the default, as measured until 6 December); raw: a few lines of "
            "MQTT on a socket, several times cheaper, to offer more than paho can from the other core",
        )

    t = sub.add_parser("throughput")
    common(t, 0, 15.0)
    t.add_argument("--config", choices=["default", "example", "both"], default="both")
    t.add_argument("--rates", type=int, nargs="+", help="readings/s steps, ascending")
    t.add_argument("--code", nargs="*", help="other checkouts whose gateway runs the same steps, alternating")
    t.add_argument("--profile", help="a folder: record each step's gateway with py-spy (raw collapsed stacks)")
    t.add_argument("--native", action="store_true", help="with --profile: native frames too (compiled modules, C)")
    cap = sub.add_parser("capacity")
    common(cap, 0, 20.0)
    cap.add_argument("--config", choices=["default", "example", "both"], default="both")
    cap.add_argument("--code", nargs="*", help="other checkouts measured the same way, alternating")
    c = sub.add_parser("ceilings")
    common(c, 300_000, 10.0)
    c.add_argument("--influx-points", type=int, default=300_000)
    lat = sub.add_parser("latency")
    common(lat, 10_000, 30.0)
    lat.add_argument("--code", nargs="*", help="other checkouts measured the same way, alternating")
    lat.add_argument(
        "--variant",
        action="append",
        help="LABEL:section.key=value,...: this checkout again with those settings (TOML values), alternating; "
        "for example nockpt:state.checkpoint_interval_s=3600",
    )
    lat.add_argument(
        "--echo",
        action="store_true",
        help="also a bare MQTT client in the gateway's place that answers each probe at once: the latency of the "
        "path around the gateway (publishers, broker, probe), alternating with the others",
    )
    lat.add_argument(
        "--warmup",
        type=float,
        default=0.0,
        metavar="S",
        help="offer the load for S seconds before the --seconds in which alerts are timed (a gateway past its start: "
        "its state built, its first full collections done)",
    )
    lat.add_argument(
        "--stalls",
        metavar="DIR",
        help="load bench/stallprobe into each gateway: its event loop's callbacks over 10 ms (with the stack of what "
        "ran) and the collector's passes, summed up after each round and kept in DIR",
    )
    o = sub.add_parser("overload")
    common(o, 100_000, 40.0)
    o.add_argument("--code")
    o.add_argument("--config", choices=["default", "example"], default="default")
    o.add_argument("--show-log", action="store_true", help="print the end of the gateway's log")
    o.add_argument("--after", type=float, default=10.0, help="seconds watched after the offered period")
    args = ap.parse_args(argv)
    global BOARDS, PUBLISHER
    PUBLISHER = args.publisher
    if args.boards < args.publishers:  # every mode has both (common())
        ap.error(f"--boards {args.boards}: at least one board per publisher process")
    BOARDS = args.boards  # the publisher processes are forked: they read it
    if args.core is not None and args.core >= 0:
        OTHER_CORES.update(c for c in os.sched_getaffinity(0) if c != args.core)
    else:
        args.core = None
    modes = {"throughput": cmd_throughput, "capacity": cmd_capacity, "ceilings": cmd_ceilings}
    modes.update(latency=cmd_latency, overload=cmd_overload)
    # stopped from outside (kill, timeout), the clean-up still runs: its broker, database, gateway and publishers
    # stop, where they would outlive it and take the CPU from whatever is measured next (tests/test_bench_stop.py)
    signal.signal(signal.SIGTERM, _terminated)
    modes[args.mode](args)


def _terminated(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    main()
