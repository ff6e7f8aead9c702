#!/usr/bin/env python3
"""Run the edgekit back-end services locally: Mosquitto, InfluxDB 1.x and VictoriaMetrics.

Importable module (used by ``tests/conftest.py``) and a CLI for the demo::

    python scripts/services.py start|stop|status [--run-dir .run/services] [--mqtt-port 1883]
                                                  [--influx-port 8086] [--influx-rpc-port 8088]
                                                  [--vm-port 8428]
    python scripts/services.py ports    # the demo's ports (EDGEKIT_DEMO_*_PORT), checked before any set-up

Standard library only, so it works before the project's virtualenv exists.  Every service listens on
127.0.0.1 only and keeps its config, data and log under ``RUN_DIR/<name>/``; we track the pid of our own
``Popen`` in ``RUN_DIR/<name>/<name>.pid`` (plus ``state.json`` with the ports, for ``status``/``stop``).
The services are started in their own session, so they outlive the CLI and ignore its Ctrl-C.

Start-up is considered done only when the service *answers*: Mosquitto completes a real MQTT 3.1.1
CONNECT/CONNACK handshake (hand-written bytes, any return code counts), InfluxDB returns 204 on
``GET /ping`` and VictoriaMetrics returns ``OK`` on ``GET /health``.

VictoriaMetrics visibility (measured with the Debian 12 package, VictoriaMetrics 1.79.5):

* A sample posted to ``/api/v2/write`` (InfluxDB line protocol) shows up in ``/api/v1/export`` only
  after ~10 s (9.95-10.03 s in every try), whatever its timestamp and regardless of
  ``-search.latencyOffset`` or ``-search.disableCache``: VictoriaMetrics buffers ingested rows in memory
  and this version has no flag to flush them sooner.
* ``GET /internal/force_flush`` makes buffered rows searchable: after it a new series with a current
  timestamp is visible within 0.3-1.0 s, and one with an older timestamp at once.  Tests should call it
  (``tests/helpers.vm_export`` does) and then poll for a few seconds.
* ``-search.latencyOffset=0s`` matters for instant queries (``/api/v1/query``): with the default 30 s a
  just-written point stayed invisible there for ~27 s.  ``-search.disableCache`` keeps range queries from
  serving cached results that miss back-filled points.  Both are set here.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"
INSTALL_CMD = "sudo apt-get install -y mosquitto mosquitto-clients influxdb victoria-metrics socat"
REPO_ROOT = Path(__file__).resolve().parent.parent
RUN_ROOT = Path(os.environ.get("EDGEKIT_DEMO_RUN_DIR") or REPO_ROOT / ".run")
"""Where the demo's services and the demo keep their files (``EDGEKIT_DEMO_RUN_DIR``, default ``.run``)."""
DEFAULT_RUN_DIR = RUN_ROOT / "services"
DEFAULT_TIMEOUT = 30.0
# mosquitto lives in /usr/sbin, which is not on an ordinary user's PATH on Debian.
_EXTRA_PATH = ("/usr/local/sbin", "/usr/sbin", "/sbin")

# The broker settings every configuration the project ships has (deploy/mosquitto/*.conf,
# deploy/systemd/mosquitto-edgekit.conf, and the one generated here; tests/test_broker_configs.py checks
# that they agree). docs/reliability.md says why and what each costs.
MAX_PACKET_SIZE = 10240
"""Largest packet the broker takes from a client: the protocol's 8192-byte payload plus 2048 for topic and
headers. A client that sends a larger one is disconnected before its payload is read (no PUBACK)."""
AUTOSAVE_INTERVAL = 1
"""Mosquitto saves its whole database (sessions, queued messages) when more than this many seconds passed
since the last save: every 2 s here, so a broker crash loses at most ~2 s of what it had queued."""
QUEUE_LIMITS = ("max_queued_messages 1000000", "max_queued_bytes 0")
"""The gateway's persistent session must hold what it has not acknowledged yet (while it restarts or
catches up): Mosquitto's default of 1000 queued messages per session would drop the rest, silently."""


class ServiceError(RuntimeError):
    """A service could not be started, probed or stopped."""


class BinaryMissingError(ServiceError):
    """The executable of a service is not installed."""


@dataclass(frozen=True)
class Service:
    """Static description of a managed service."""

    name: str
    binary: str
    package: str

    def find_binary(self) -> str:
        """Return the absolute path of the executable or raise :class:`BinaryMissingError`."""
        path = which(self.binary)
        if path is None:
            raise BinaryMissingError(
                f"{self.binary} not found (Debian package {self.package!r}); install the services with:\n"
                f"  {INSTALL_CMD}"
            )
        return path


MOSQUITTO = Service("mosquitto", "mosquitto", "mosquitto")
INFLUXDB = Service("influxdb", "influxd", "influxdb")
VICTORIA_METRICS = Service("victoria-metrics", "victoria-metrics", "victoria-metrics")
SERVICES: tuple[Service, ...] = (MOSQUITTO, INFLUXDB, VICTORIA_METRICS)


def which(binary: str) -> str | None:
    """``shutil.which`` that also looks in the sbin directories."""
    path = os.pathsep.join([os.environ.get("PATH", ""), *_EXTRA_PATH])
    return shutil.which(binary, path=path)


def missing_binaries(services: Sequence[Service] = SERVICES) -> list[Service]:
    """The services whose executable is not installed."""
    return [s for s in services if which(s.binary) is None]


# --------------------------------------------------------------------------------------------- ports


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (the OS picks it; a race is possible)."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports, all held open at once while being picked."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for s in socks:
            s.bind((HOST, 0))
        return [int(s.getsockname()[1]) for s in socks]


def port_in_use(port: int, host: str = HOST) -> bool:
    """True if binding ``host:port`` fails, i.e. something else holds it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


# -------------------------------------------------------------------------------------------- probes


def mqtt_handshake(host: str, port: int, timeout: float = 2.0) -> int:
    """Do an MQTT 3.1.1 CONNECT/CONNACK exchange with raw bytes and return the CONNACK return code.

    Raises ``OSError`` (or ``ServiceError`` on a malformed answer) if the broker does not answer.
    """
    with socket.create_connection((host, port), timeout=timeout) as sock:
        code = mqtt_connect(sock, f"edgekit-probe-{os.getpid()}".encode(), keepalive=10)
        with contextlib.suppress(OSError):
            sock.sendall(b"\xe0\x00")  # DISCONNECT
        return code


def mqtt_connect(sock: socket.socket, client_id: bytes, keepalive: int) -> int:
    """Send an MQTT 3.1.1 CONNECT (clean session, no credentials) on ``sock``, read the CONNACK and return its return
    code (0: accepted). Raises ``ServiceError`` on a closed connection or an answer that is not a CONNACK."""
    variable_header = b"\x00\x04MQTT\x04\x02" + keepalive.to_bytes(2, "big")  # protocol name, level 4, clean session
    body = variable_header + len(client_id).to_bytes(2, "big") + client_id
    sock.sendall(b"\x10" + mqtt_remaining_length(len(body)) + body)
    answer = b""
    while len(answer) < 4:
        chunk = sock.recv(4 - len(answer))
        if not chunk:
            raise ServiceError("broker closed the connection before CONNACK")
        answer += chunk
    if answer[0] != 0x20 or answer[1] != 0x02:
        raise ServiceError(f"unexpected answer to CONNECT: {answer.hex()}")
    return answer[3]


def mqtt_remaining_length(n: int) -> bytes:
    """MQTT's variable-length integer (a packet's remaining length)."""
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def http_request(
    url: str, *, method: str = "GET", data: bytes | None = None, timeout: float = 5.0
) -> tuple[int, bytes]:
    """A small urllib wrapper returning ``(status, body)``; HTTP error statuses are returned, not raised."""
    req = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def _probe_mqtt(host: str, port: int, timeout: float) -> bool:
    try:
        mqtt_handshake(host, port, timeout)
    except (OSError, ServiceError):
        return False
    return True


def _probe_http(path: str, expect_status: int, expect_body: bytes | None) -> Callable[[str, int, float], bool]:
    def probe(host: str, port: int, timeout: float) -> bool:
        try:
            status, body = http_request(f"http://{host}:{port}{path}", timeout=timeout)
        except (OSError, ValueError):
            return False
        return status == expect_status and (expect_body is None or body.strip() == expect_body)

    return probe


_PROBES: dict[str, Callable[[str, int, float], bool]] = {
    MOSQUITTO.name: _probe_mqtt,
    INFLUXDB.name: _probe_http("/ping", 204, None),
    VICTORIA_METRICS.name: _probe_http("/health", 200, b"OK"),
}


# --------------------------------------------------------------------------------------------- Proc


@dataclass
class Proc:
    """A service process we started (or found through its PID file)."""

    name: str
    pid: int
    port: int
    dir: Path
    binary: str
    host: str = HOST
    rpc_port: int | None = None
    started_at: float = field(default_factory=time.time)
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)

    @property
    def url(self) -> str:
        """Base URL of an HTTP service (``http://127.0.0.1:PORT``)."""
        return f"http://{self.host}:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.dir / f"{self.name}.log"

    @property
    def pid_file(self) -> Path:
        return self.dir / f"{self.name}.pid"

    @property
    def state_file(self) -> Path:
        return self.dir / "state.json"

    def alive(self) -> bool:
        """True while the process runs (a zombie or a recycled pid counts as dead)."""
        if self.popen is not None:
            return self.popen.poll() is None
        return _pid_runs(self.pid, self.binary)

    def answering(self, timeout: float = 1.0) -> bool:
        """True if the service answers its health probe right now."""
        return _PROBES[self.name](self.host, self.port, timeout)

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the service log."""
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; removes the PID and state files."""
        if self.alive():
            self._signal(signal.SIGTERM)
            if not self._wait_gone(timeout):
                self._signal(signal.SIGKILL)
                if not self._wait_gone(5.0):
                    raise ServiceError(f"{self.name} (pid {self.pid}) survived SIGKILL")
        for path in (self.pid_file, self.state_file):
            path.unlink(missing_ok=True)

    def save(self) -> None:
        """Write the PID file and ``state.json``."""
        self.pid_file.write_text(f"{self.pid}\n")
        state = {
            "name": self.name,
            "pid": self.pid,
            "host": self.host,
            "port": self.port,
            "rpc_port": self.rpc_port,
            "binary": self.binary,
            "started_at": self.started_at,
        }
        self.state_file.write_text(json.dumps(state, indent=2) + "\n")

    @classmethod
    def load(cls, service_dir: Path, name: str) -> Proc | None:
        """The process recorded in ``service_dir`` (alive or not), or None without a PID file."""
        pid_file = service_dir / f"{name}.pid"
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            state = json.loads((service_dir / "state.json").read_text())
        except (OSError, ValueError):
            state = {}
        return cls(
            name=name,
            pid=pid,
            port=int(state.get("port", 0)),
            dir=service_dir,
            binary=str(state.get("binary", name)),
            host=str(state.get("host", HOST)),
            rpc_port=state.get("rpc_port"),
            started_at=float(state.get("started_at", 0.0)),
        )

    def _signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def _wait_gone(self, timeout: float) -> bool:
        if self.popen is not None:
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                return False
            return True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                return True
            time.sleep(0.05)
        return not self.alive()


def _pid_runs(pid: int, binary: str) -> bool:
    """True if ``pid`` is a live (non-zombie) process running ``binary``."""
    proc_dir = Path(f"/proc/{pid}")
    if not Path("/proc/self").exists():  # no procfs: best effort
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    try:
        stat_fields = (proc_dir / "stat").read_text().rsplit(")", 1)[1].split()
        argv0 = (proc_dir / "cmdline").read_bytes().split(b"\0", 1)[0].decode(errors="replace")
    except (OSError, IndexError):
        return False
    if stat_fields and stat_fields[0] in ("Z", "X"):
        return False
    return Path(argv0).name == Path(binary).name


# ------------------------------------------------------------------------------------------ starting


def _service_dir(run_dir: Path, service: Service) -> Path:
    sdir = Path(run_dir).resolve() / service.name
    sdir.mkdir(parents=True, exist_ok=True)
    return sdir


def _check_port(service: Service, port: int) -> None:
    if port_in_use(port):
        raise ServiceError(
            f"port {HOST}:{port} is already in use by another process "
            f"(a system {service.name} service? stop it, e.g. 'sudo systemctl disable --now "
            f"{service.package}', or choose another port)"
        )


def _launch(
    service: Service,
    argv: list[str],
    sdir: Path,
    port: int,
    *,
    rpc_port: int | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Proc:
    """Start ``argv`` with output to the service log, record its pid and wait until it answers."""
    log_file = sdir / f"{service.name}.log"
    with log_file.open("ab") as log:
        log.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} starting: {' '.join(argv)}\n".encode())
        log.flush()
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=sdir,
            start_new_session=True,
        )
    proc = Proc(service.name, popen.pid, port, sdir, argv[0], rpc_port=rpc_port, popen=popen)
    proc.save()
    try:
        _wait_answering(proc, timeout)
    except BaseException:
        proc.stop(timeout=5.0)
        raise
    return proc


def _wait_answering(proc: Proc, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if not proc.alive():
            code = proc.popen.returncode if proc.popen is not None else None
            raise ServiceError(
                f"{proc.name} exited (code {code}) during start-up; last lines of {proc.log_file}:\n{proc.log_tail()}"
            )
        if proc.answering(timeout=1.0):
            return
        if time.monotonic() > deadline:
            raise ServiceError(
                f"{proc.name} did not answer on {proc.host}:{proc.port} within {timeout:.0f} s; "
                f"last lines of {proc.log_file}:\n{proc.log_tail()}"
            )
        time.sleep(0.05)


def _mosquitto_user(sdir: Path) -> str | None:
    """The ``user`` for mosquitto.conf: None when not root (no privilege drop happens).

    As root, mosquitto switches to user ``mosquitto`` before it reads the password and ACL files, so
    the service dir is chowned to that user; if some parent directory is closed to it (pytest's
    ``/tmp/pytest-of-root`` is 0700) the broker stays root instead.
    """
    if os.geteuid() != 0:
        return None
    try:
        account = pwd.getpwnam("mosquitto")
    except KeyError:
        return "root"
    if not _traversable_by(sdir, account):
        return "root"
    return "mosquitto"


def _traversable_by(path: Path, account: pwd.struct_passwd) -> bool:
    groups = set(os.getgrouplist(account.pw_name, account.pw_gid))
    for directory in [path, *path.parents]:
        st = directory.stat()
        if st.st_uid == account.pw_uid:
            ok = bool(st.st_mode & stat.S_IXUSR)
        elif st.st_gid in groups:
            ok = bool(st.st_mode & stat.S_IXGRP)
        else:
            ok = bool(st.st_mode & stat.S_IXOTH)
        if not ok:
            return False
    return True


def start_mosquitto(
    run_dir: Path,
    port: int,
    *,
    password_file: Path | None = None,
    acl_file: Path | None = None,
    persistence: bool = False,
    max_packet_size: int | None = MAX_PACKET_SIZE,
    autosave_interval: int | None = AUTOSAVE_INTERVAL,
    extra_conf: Sequence[str] = (),
    timeout: float = DEFAULT_TIMEOUT,
) -> Proc:
    """Start Mosquitto on 127.0.0.1:``port`` (anonymous unless ``password_file`` is given).

    ``password_file`` (made with ``mosquitto_passwd``) and ``acl_file`` are copied into the service dir
    so that the unprivileged ``mosquitto`` user can read them. ``persistence`` keeps sessions and queued
    messages in ``mosquitto.db`` in the service dir across a restart on the same dir, saved every
    ``autosave_interval`` seconds (None: Mosquitto's default, 30 minutes). ``max_packet_size`` is the
    largest packet the broker takes from a client (None: no limit). The defaults and the queue limits
    (:data:`QUEUE_LIMITS`) are the project's broker settings. ``extra_conf`` lines are appended to the
    generated configuration (e.g. ``max_queued_messages 100000``, a TLS listener).
    """
    binary = MOSQUITTO.find_binary()
    sdir = _service_dir(run_dir, MOSQUITTO)
    _check_port(MOSQUITTO, port)
    user = _mosquitto_user(sdir)
    lines = [
        "# generated by scripts/services.py",
        f"listener {port} {HOST}",
        f"allow_anonymous {'false' if password_file else 'true'}",
        f"persistence {'true' if persistence else 'false'}",
        "log_dest stderr",
        "log_timestamp_format %Y-%m-%dT%H:%M:%S",
    ]
    private: list[Path] = []
    if password_file is not None:
        target = sdir / "passwd"
        shutil.copyfile(password_file, target)
        lines.append(f"password_file {target}")
        private.append(target)
    if acl_file is not None:
        target = sdir / "acl"
        shutil.copyfile(acl_file, target)
        lines.append(f"acl_file {target}")
        private.append(target)
    if persistence:
        lines.append(f"persistence_location {sdir}/")
        if autosave_interval is not None:
            lines.append(f"autosave_interval {autosave_interval}")
    if max_packet_size is not None:
        lines.append(f"max_packet_size {max_packet_size}")
    lines.extend(QUEUE_LIMITS)
    lines.extend(extra_conf)
    if user is not None:
        lines.append(f"user {user}")
    conf = sdir / "mosquitto.conf"
    conf.write_text("\n".join(lines) + "\n")
    for path in private:
        path.chmod(0o600)
    conf.chmod(0o640)
    if user == "mosquitto":
        for path in (sdir, conf, *private):
            shutil.chown(path, user="mosquitto", group="mosquitto")
    return _launch(MOSQUITTO, [binary, "-c", str(conf)], sdir, port, timeout=timeout)


def publish_big(broker: Proc, topic: str, size: int, client_id: str, timeout: float = 300) -> bool:
    """Publish one ``size``-byte message to ``broker`` (a Mosquitto of :func:`start_mosquitto`) at QoS 1 as
    a board would (MQTT 3.1.1); True if the broker acknowledged it, False once the broker has disconnected
    the client for it (its log says so). Raises TimeoutError when neither happens within ``timeout`` s."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    head = b'{"v":1,"dev":"big","r":[],"pad":"'
    payload = head + b"p" * (size - len(head) - 2) + b'"}'
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        info = client.publish(topic, payload, qos=1)
        del payload
        refused = f"Client {client_id} disconnected due to oversize packet"
        deadline = time.monotonic() + timeout
        while not (info.is_published() or refused in broker.log_file.read_text(errors="replace")):
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for the broker's answer to {size} bytes from {client_id}")
            time.sleep(0.2)
        return info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


def start_influxdb(
    run_dir: Path,
    http_port: int,
    rpc_port: int,
    *,
    database: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Proc:
    """Start InfluxDB 1.x with HTTP on ``http_port`` and the RPC/backup service on ``rpc_port``.

    If ``database`` is given it is created once the server answers.
    """
    binary = INFLUXDB.find_binary()
    if http_port == rpc_port:
        raise ServiceError("influxdb: the HTTP and RPC ports must differ")
    sdir = _service_dir(run_dir, INFLUXDB)
    _check_port(INFLUXDB, http_port)
    _check_port(INFLUXDB, rpc_port)
    conf = sdir / "influxdb.conf"
    conf.write_text(
        f"""# generated by scripts/services.py
reporting-disabled = true
bind-address = "{HOST}:{rpc_port}"

[meta]
  dir = "{sdir / "meta"}"

[data]
  dir = "{sdir / "data"}"
  wal-dir = "{sdir / "wal"}"
  query-log-enabled = false

[http]
  enabled = true
  bind-address = "{HOST}:{http_port}"
  log-enabled = false

[monitor]
  store-enabled = false

[continuous_queries]
  log-enabled = false
"""
    )
    proc = _launch(INFLUXDB, [binary, "-config", str(conf)], sdir, http_port, rpc_port=rpc_port, timeout=timeout)
    if database is not None:
        try:
            influx_create_database(proc.url, database)
        except BaseException:
            proc.stop()
            raise
    return proc


def influx_create_database(url: str, name: str) -> None:
    """``CREATE DATABASE`` (idempotent in InfluxDB 1.x) through ``POST /query``."""
    quoted = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    data = urllib.parse.urlencode({"q": f"CREATE DATABASE {quoted}"}).encode()
    status, body = http_request(f"{url}/query", method="POST", data=data)
    if status != 200 or b'"error"' in body:
        raise ServiceError(f"CREATE DATABASE {quoted} failed: HTTP {status} {body[:300]!r}")


def start_victoria_metrics(run_dir: Path, port: int, *, timeout: float = DEFAULT_TIMEOUT) -> Proc:
    """Start single-node VictoriaMetrics on 127.0.0.1:``port`` (100 years retention).

    See the module docstring for how soon written data becomes visible.
    """
    binary = VICTORIA_METRICS.find_binary()
    sdir = _service_dir(run_dir, VICTORIA_METRICS)
    _check_port(VICTORIA_METRICS, port)
    argv = [
        binary,
        f"-httpListenAddr={HOST}:{port}",
        f"-storageDataPath={sdir / 'data'}",
        "-retentionPeriod=100y",
        "-search.latencyOffset=0s",
        "-search.disableCache",
    ]
    return _launch(VICTORIA_METRICS, argv, sdir, port, timeout=timeout)


def vm_force_flush(url: str) -> None:
    """Make buffered VictoriaMetrics rows searchable (``GET /internal/force_flush``)."""
    status, body = http_request(f"{url}/internal/force_flush")
    if status != 200:
        raise ServiceError(f"force_flush failed: HTTP {status} {body[:300]!r}")


# ---------------------------------------------------------------------------------------- demo ports


@dataclass(frozen=True)
class DemoPort:
    service: str
    key: str
    """The port's name in :func:`plan_ports`'s answer (``rpc`` for InfluxDB's second port)."""
    variable: str
    default: int


DEMO_PORTS: tuple[DemoPort, ...] = (
    DemoPort("mosquitto", "mqtt", "EDGEKIT_DEMO_MQTT_PORT", 1883),
    DemoPort("influxdb", "influx", "EDGEKIT_DEMO_INFLUX_PORT", 8086),
    DemoPort("influxdb", "influx_rpc", "EDGEKIT_DEMO_INFLUX_RPC_PORT", 8088),
    DemoPort("victoria-metrics", "vm", "EDGEKIT_DEMO_VM_PORT", 8428),
)
"""The demo's ports: each can be chosen with its variable (``make demo EDGEKIT_DEMO_MQTT_PORT=1884``)."""


def plan_ports(run_dir: Path, env: dict[str, str] | os._Environ[str]) -> tuple[dict[str, int], list[str]]:
    """The ports the demo's services use, and a line for each default port that was taken.

    A service of the demo already running (its PID file in ``run_dir``) keeps its ports. Otherwise a port
    chosen with its variable must be free (else :class:`ServiceError`, one line that says how to choose
    another); a default port that another program holds is replaced by the next free one above it, and said.
    Nothing is started and nothing is written."""
    ports: dict[str, int] = {}
    notes: list[str] = []
    for p in DEMO_PORTS:
        running = Proc.load(run_dir / p.service, p.service)
        if running is not None and running.alive():
            have = running.rpc_port if p.key == "influx_rpc" else running.port
            wanted = env.get(p.variable)
            if wanted and int(wanted) != have:
                raise ServiceError(
                    f"the demo's {p.service} already runs on port {have} ({p.variable}={wanted} asks for another): "
                    "'make services-stop' first"
                )
            ports[p.key] = int(have or p.default)
            continue
        taken = set(ports.values())
        raw = env.get(p.variable, "").strip()
        if raw:
            try:
                port = int(raw)
            except ValueError:
                raise ServiceError(f"{p.variable}={raw!r} is not a port number") from None
            if not 0 < port < 65536 or port in taken or port_in_use(port):
                free = _free_from(port + 1, taken)
                raise ServiceError(
                    f"port {HOST}:{port} ({p.variable}) is in use by another program: choose a free one, "
                    f"e.g. make demo {p.variable}={free}"
                )
            ports[p.key] = port
            continue
        if p.default not in taken and not port_in_use(p.default):
            ports[p.key] = p.default
            continue
        port = _free_from(p.default + 1, taken)
        ports[p.key] = port
        notes.append(
            f"==> port {p.default} is in use by another program: the demo's {p.service} uses {port} instead "
            f"({p.variable}={port} chooses it; any free port will do)"
        )
    return ports, notes


def _free_from(start: int, taken: set[int]) -> int:
    """The first port from ``start`` up that is free and not ``taken``."""
    for port in range(start, 65536):
        if port not in taken and not port_in_use(port):
            return port
    raise ServiceError(f"no free port above {start}")


# ------------------------------------------------------------------------------------------------ CLI


def _cli_start(args: argparse.Namespace) -> int:
    missing = missing_binaries()
    if missing:
        names = ", ".join(s.binary for s in missing)
        print(f"error: not installed: {names}\ninstall them with:\n  {INSTALL_CMD}", file=sys.stderr)
        return 2
    run_dir: Path = args.run_dir
    starters: list[tuple[Service, int, Callable[[], Proc]]] = [
        (MOSQUITTO, args.mqtt_port, lambda: start_mosquitto(run_dir, args.mqtt_port, persistence=True)),
        (
            INFLUXDB,
            args.influx_port,
            lambda: start_influxdb(run_dir, args.influx_port, args.influx_rpc_port, database=args.influx_db),
        ),
        (VICTORIA_METRICS, args.vm_port, lambda: start_victoria_metrics(run_dir, args.vm_port)),
    ]
    failed = False
    for service, port, start in starters:
        existing = Proc.load(run_dir / service.name, service.name)
        if existing is not None and existing.alive():
            print(f"{service.name:17} already running (pid {existing.pid}, port {existing.port})")
            continue
        if existing is not None:
            existing.stop()  # stale PID file
        t0 = time.monotonic()
        try:
            proc = start()
        except ServiceError as exc:
            print(f"{service.name:17} FAILED: {exc}", file=sys.stderr)
            failed = True
            continue
        print(
            f"{service.name:17} started (pid {proc.pid}, {proc.host}:{port}, "
            f"{time.monotonic() - t0:.2f} s, log {proc.log_file})"
        )
    return 1 if failed else 0


def _cli_stop(args: argparse.Namespace) -> int:
    for service in SERVICES:
        proc = Proc.load(args.run_dir / service.name, service.name)
        if proc is None:
            print(f"{service.name:17} not running")
            continue
        was_alive = proc.alive()
        proc.stop()
        print(
            f"{service.name:17} {'stopped' if was_alive else 'was not running (stale PID file removed)'}"
            f" (pid {proc.pid})"
        )
    return 0


def _cli_status(args: argparse.Namespace) -> int:
    all_ok = True
    for service in SERVICES:
        proc = Proc.load(args.run_dir / service.name, service.name)
        if proc is None or not proc.alive():
            print(f"{service.name:17} stopped")
            all_ok = False
            continue
        answering = proc.answering()
        all_ok &= answering
        print(
            f"{service.name:17} running  pid {proc.pid:<7} port {proc.port:<5} answering {'yes' if answering else 'NO'}"
        )
    return 0 if all_ok else 3


def _cli_ports(args: argparse.Namespace) -> int:
    try:
        _ports, notes = plan_ports(args.run_dir, os.environ)
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for note in notes:
        print(note)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description="Manage the local Mosquitto, InfluxDB and VictoriaMetrics.")
    parser.add_argument("command", choices=("start", "stop", "status", "ports"))
    parser.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR, help="state dir (default %(default)s)")
    parser.add_argument("--mqtt-port", type=int, default=1883)
    parser.add_argument("--influx-port", type=int, default=8086, help="InfluxDB HTTP port")
    parser.add_argument("--influx-rpc-port", type=int, default=8088, help="InfluxDB RPC/backup port")
    parser.add_argument("--influx-db", default="edgekit", help="database to create in InfluxDB")
    parser.add_argument("--vm-port", type=int, default=8428)
    args = parser.parse_args(argv)
    args.run_dir = args.run_dir.resolve()
    handlers: dict[str, Callable[[argparse.Namespace], int]] = {
        "start": _cli_start,
        "stop": _cli_stop,
        "status": _cli_status,
        "ports": _cli_ports,
    }
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
