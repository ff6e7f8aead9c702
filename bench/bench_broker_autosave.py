"""What Mosquitto's persistence costs, and what a broker crash loses, for each autosave setting.

Reproduce (from the repository root; needs mosquitto)::

    python bench/bench_broker_autosave.py                    # 20 messages/s, queues of 0, 10,000, 100,000
    python bench/bench_broker_autosave.py --rate 5 --seconds 30 --queues 0,50000
    python bench/bench_broker_autosave.py --crash-only       # only the window of loss

Mosquitto keeps sessions and queued messages in memory; with ``persistence true`` it rewrites its whole
database (``mosquitto.db.new``, fsync, rename) every ``autosave_interval`` seconds (more than that many
seconds since the last save; default 1800) or, with ``autosave_on_changes true``, once that many changes
(a message queued for an offline or busy client, a message moved from the queue to in flight, a retained
message, a subscription, a persistent client's connect) have happened; and at a clean stop.

**Cost.** For each setting and queue size: a private Mosquitto (the project's settings otherwise), a
persistent MQTT 5 session like the gateway's holding ``queue`` messages (offline) or none (online and
acknowledging everything), and a publisher sending ``--rate`` messages a second of ``--bytes`` bytes (a
batch of ten readings is about 700) at QoS 1 for ``--seconds``. Printed: the broker's CPU (user + system,
% of one core), the bytes it wrote to storage (``/proc/<pid>/io`` write_bytes) and the saves it logged,
per second.

**Window of loss.** For each setting: the same publisher against an offline session for ``--seconds``,
then SIGKILL of the broker at once, a restart on the same database, and the session reconnects: the
messages acknowledged to the publisher and not delivered after the restart are lost (printed in messages
and in seconds of traffic).
"""

from __future__ import annotations

import argparse
import os
import queue
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import paho.mqtt.client as mqtt  # noqa: E402
import services  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402
from paho.mqtt.packettypes import PacketTypes  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402

SETTINGS = {
    "interval 1800 (Mosquitto's default)": ("autosave_interval 1800",),
    "interval 1 (shipped)": ("autosave_interval 1",),
    "interval 10": ("autosave_interval 10",),
    "on_changes, 100": ("autosave_on_changes true", "autosave_interval 100"),
}
TICK = os.sysconf("SC_CLK_TCK")


def start(run_dir: Path, setting: tuple[str, ...], port: int | None = None) -> services.Proc:
    return services.start_mosquitto(
        run_dir, port or services.free_port(), persistence=True, autosave_interval=None, extra_conf=setting
    )


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def written(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    raise KeyError("write_bytes")


def session(broker: services.Proc, client_id: str, got: queue.Queue[int] | None = None) -> mqtt.Client:
    """The gateway's kind of session: MQTT 5, clean_start false, a week's expiry, QoS 1 on bench/#."""
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 7 * 86400
    props.ReceiveMaximum = 100
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    connected = threading.Event()
    client.on_connect = lambda *_: connected.set()
    if got is not None:
        client.on_message = lambda _c, _u, m: got.put(int(m.payload[:10]))
    client.connect(broker.host, broker.port, clean_start=False, properties=props)
    client.loop_start()
    if not connected.wait(10):
        raise SystemExit("the session did not connect")
    client.subscribe("bench/#", qos=1)
    time.sleep(0.3)
    return client


def publisher(broker: services.Proc, client_id: str) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
    client.max_inflight_messages_set(100)
    client.max_queued_messages_set(0)
    client.connect(broker.host, broker.port)
    client.loop_start()
    return client


def payload(n: int, size: int) -> bytes:
    return b"%010d" % n + b"x" * (size - 10)


def fill(client: mqtt.Client, count: int, size: int, start: int = 0) -> int:
    for first in range(0, count, 500):
        infos = [
            client.publish("bench/q", payload(start + i, size), qos=1) for i in range(first, min(count, first + 500))
        ]
        for info in infos:
            info.wait_for_publish(60)
    return start + count


def paced(client: mqtt.Client, rate: float, seconds: float, size: int, start: int) -> list[mqtt.MQTTMessageInfo]:
    infos = []
    t0 = time.monotonic()
    n = 0
    while (elapsed := time.monotonic() - t0) < seconds:
        due = int(elapsed * rate) + 1
        while n < due:
            infos.append(client.publish("bench/q", payload(start + n, size), qos=1))
            n += 1
        time.sleep(max(0.0, (n / rate) - (time.monotonic() - t0)))
    return infos


def cost(name: str, setting: tuple[str, ...], queued: int, args: argparse.Namespace, work: Path) -> None:
    broker = start(work / f"cost-{abs(hash((name, queued)))}", setting)
    try:
        consumer = session(broker, "gw-bench", queue.Queue() if queued == 0 else None)
        if queued:
            consumer.disconnect()  # offline: the broker queues for it
            consumer.loop_stop()
        pub = publisher(broker, "pub-bench")
        n = fill(pub, queued, args.bytes)
        time.sleep(3)  # the fill's own saves are not measured
        c0, w0, s0 = cpu_s(broker.pid), written(broker.pid), broker.log_tail(10**6).count("Saving in-memory")
        t0 = time.monotonic()
        for info in paced(pub, args.rate, args.seconds, args.bytes, n):
            info.wait_for_publish(60)
        dt = time.monotonic() - t0
        cpu = (cpu_s(broker.pid) - c0) / dt * 100
        wps = (written(broker.pid) - w0) / dt
        saves = (broker.log_tail(10**6).count("Saving in-memory") - s0) / dt
        db = broker.dir / "mosquitto.db"
        size = db.stat().st_size if db.exists() else 0
        print(f"  {name:38} queue {queued:>7,}: broker CPU {cpu:5.1f} %, written {wps / 2**20:7.2f} MB/s, "
              f"{saves:4.2f} saves/s, database {size / 2**20:6.1f} MB", flush=True)  # fmt: skip
        pub.disconnect()
        pub.loop_stop()
        if queued == 0:
            consumer.disconnect()
            consumer.loop_stop()
    finally:
        broker.stop()


def window(name: str, setting: tuple[str, ...], args: argparse.Namespace, work: Path) -> None:
    run_dir = work / f"crash-{abs(hash(name))}"
    broker = start(run_dir, setting)
    port = broker.port
    consumer = session(broker, "gw-crash")
    consumer.disconnect()
    consumer.loop_stop()
    pub = publisher(broker, "pub-crash")
    infos = paced(pub, args.rate, args.seconds, args.bytes, 0)
    acked = sum(1 for info in infos if info.is_published())
    os.kill(broker.pid, signal.SIGKILL)
    assert broker.popen is not None
    broker.popen.wait(10)
    pub.loop_stop()
    broker.stop()
    restarted = start(run_dir.parent / run_dir.name, setting, port)
    try:
        got: queue.Queue[int] = queue.Queue()
        consumer = session(restarted, "gw-crash", got)
        seen: set[int] = set()
        while True:
            try:
                seen.add(got.get(timeout=3))
            except queue.Empty:
                break
        consumer.disconnect()
        consumer.loop_stop()
        lost = acked - len(seen & set(range(acked)))
        print(f"  {name:38} {acked} acknowledged in {args.seconds:.0f} s, {len(seen)} delivered after the "
              f"SIGKILL: {lost} lost = {lost / args.rate:.1f} s of traffic", flush=True)  # fmt: skip
    finally:
        restarted.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=20.0, help="messages a second (default 20)")
    parser.add_argument("--bytes", type=int, default=700, help="payload size (default 700)")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each measurement (default 20)")
    parser.add_argument("--queues", default="0,10000,100000", help="queued messages (0: the session is online)")
    parser.add_argument("--crash-only", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-autosave-"))
    try:
        print(f"{args.rate:g} messages/s of {args.bytes} bytes, {args.seconds:g} s each; Mosquitto 2.0.11")
        if not args.crash_only:
            print("cost:")
            for queued in (int(q) for q in args.queues.split(",")):
                for name, setting in SETTINGS.items():
                    cost(name, setting, queued, args, work)
        print("window of loss (SIGKILL right after the last message):")
        for name, setting in SETTINGS.items():
            window(name, setting, args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
