"""The gateway's MQTT receive path alone: CPU per message taken from a real Mosquitto, nothing else.

Reproduce (from the repository root, with the project's venv; needs mosquitto, as for the tests)::

    python bench/bench_ingest.py                        # 30,000 messages, 5 rounds
    python bench/bench_ingest.py --code /path/to/old    # another checkout's receive path, alternating
    python bench/bench_ingest.py -n 50000 -r 7

Each round, for each checkout in turn: a persistent session is made for a fresh client id and ``-n`` messages
(bench_e2e.py's: 10 readings of four metrics, about 700 bytes, from 1,000 boards' topics) are published into it at
QoS 1 and acknowledged by the broker. Then a process with that checkout's ``gateway.ingest.run_durable_ingest``
(the gateway's own client: MQTT 5, Receive Maximum 100, manual acknowledgements, the read gate) connects, takes
them all, and acknowledges each batch at once (``accept`` and ``process`` do nothing else), and stops. Printed:
its CPU (user + system) and wall time per message from just before it connects until the last message is taken,
and the messages each read of the socket took in. Everything else the gateway does (decoding, the log, the
pipeline) is left out: ``bench_e2e.py`` measures the whole.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "bench"))

SITE = "bench"
BOARDS = 1000


def preload(port: int, client_id: str, n: int) -> None:
    """A persistent session for ``client_id`` subscribed to ``edgekit/#`` at QoS 1, holding ``n`` messages."""
    import paho.mqtt.client as mqtt
    from bench_e2e import _payload
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 3600
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    sub.connect("127.0.0.1", port, clean_start=False, properties=props)
    sub.loop_start()
    info = sub.subscribe("edgekit/#", qos=1)
    deadline = time.monotonic() + 10
    while not sub.is_connected() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # the SUBACK
    sub.disconnect()
    sub.loop_stop()
    del info

    acked = 0
    lock = threading.Lock()

    def on_publish(client: Any, userdata: Any, mid: int, reason: Any = None, p: Any = None) -> None:
        nonlocal acked
        with lock:
            acked += 1

    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{client_id}-pub", clean_session=True)
    pub.max_inflight_messages_set(1000)
    pub.max_queued_messages_set(0)
    pub.on_publish = on_publish
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    rnd = random.Random(1)
    seqs = [0] * BOARDS
    t0 = 1_764_072_000_000
    for k in range(n):
        i = k % BOARDS
        board = f"{SITE}-{i:04d}"
        pub.publish(f"edgekit/{SITE}/{board}/readings", _payload(board, 1, seqs[i], t0 + seqs[i], rnd), qos=1)
        seqs[i] += 10
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with lock:
            if acked >= n:
                break
        time.sleep(0.01)
    pub.loop_stop()
    pub.disconnect()
    if acked < n:
        raise SystemExit(f"the broker acknowledged {acked} of {n} messages")


def child(root: str, port: int, client_id: str, n: int) -> None:
    sys.path.insert(0, root)
    from gateway import ingest
    from gateway.config import MqttConfig

    cfg = MqttConfig(host="127.0.0.1", port=port, client_id=client_id, topics=("edgekit/#",))
    stats = ingest.IngestStats()
    stop = asyncio.Event()
    got = 0
    first = 0.0

    def accept(msgs: list[Any]) -> list[Any]:
        return msgs

    async def process(msgs: list[Any]) -> None:
        nonlocal got
        got += len(msgs)
        if got >= n:
            stop.set()

    reads = 0
    gate_cls: Any = ingest.ReadGate
    own_read = gate_cls._read

    def counted(self: Any) -> None:
        nonlocal reads
        reads += 1
        own_read(self)

    gate_cls._read = counted

    async def main() -> None:
        await ingest.run_durable_ingest(cfg, accept, process, stats, stop)

    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    first = time.perf_counter()
    asyncio.run(main())
    wall = time.perf_counter() - first
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    if got < n:
        raise SystemExit(f"took {got} of {n} messages")
    print(f"{cpu / got * 1e6:.3f} {wall / got * 1e6:.3f} {got / max(1, reads):.2f} {got}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("-n", "--messages", type=int, default=30_000)
    ap.add_argument("-r", "--rounds", type=int, default=5)
    ap.add_argument("--code", action="append", default=[], help="another checkout whose receive path runs too")
    ap.add_argument("--child", nargs=3, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        root, port, client_id = args.child
        child(root, int(port), client_id, args.messages)
        return
    import services

    roots = [str(ROOT), *(str(Path(c).resolve()) for c in args.code)]
    results: dict[str, list[tuple[float, float, float]]] = {r: [] for r in roots}
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        port = services.free_port()
        broker = services.start_mosquitto(Path(tmp), port)
        try:
            for rnd in range(args.rounds):
                order = roots if rnd % 2 == 0 else roots[::-1]
                for root in order:
                    client_id = f"bench-ingest-{rnd}-{roots.index(root)}-{os.getpid()}"
                    preload(port, client_id, args.messages)
                    out = subprocess.run(
                        [sys.executable, __file__, "-n", str(args.messages), "--child", root, str(port), client_id],
                        check=True, capture_output=True, text=True, cwd=root,
                    ).stdout.split()  # fmt: skip
                    cpu, wall, per_read = float(out[0]), float(out[1]), float(out[2])
                    results[root].append((cpu, wall, per_read))
                    print(f"round {rnd + 1} {root}: {cpu:.1f} us CPU, {wall:.1f} us wall a message; "
                          f"{per_read:.2f} messages a read", flush=True)  # fmt: skip
        finally:
            broker.stop()
    print(f"\n{args.messages:,} messages a round, {args.rounds} rounds (median and range):")
    for root, rs in results.items():
        cpus = [r[0] for r in rs]
        walls = [r[1] for r in rs]
        print(
            f"  {root}: CPU {statistics.median(cpus):.1f} ({min(cpus):.1f}-{max(cpus):.1f}) us a message, "
            f"wall {statistics.median(walls):.1f} ({min(walls):.1f}-{max(walls):.1f}), "
            f"{statistics.median(r[2] for r in rs):.2f} messages a read"
        )


if __name__ == "__main__":
    main()
