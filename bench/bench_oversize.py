"""Ten 100 MB messages at the gateway: its peak memory and the growth of its state folder.

Reproduce (from the repository root; needs mosquitto and influxd, as for the tests)::

    python bench/bench_oversize.py                      # 10 x 100 MB, both brokers
    python bench/bench_oversize.py -n 3 --mb 20         # smaller
    python bench/bench_oversize.py --code /path/to/old  # the gateway (and shipped broker config) of another checkout

Two brokers, each a private Mosquitto on a free port: ``shipped`` has the settings of the checkout's
deploy/mosquitto/anonymous.conf (``max_packet_size``, ``autosave_interval``, queue limits), ``unlimited``
the same without ``max_packet_size``. Against each, a gateway subprocess (``python -m gateway run``) takes
honest readings from three devices, then ``-n`` messages of ``--mb`` MB published at QoS 1 by a client
like a board (MQTT 3.1.1), then honest readings again, and finally a sentinel reading that comes after
everything queued before it. Printed per broker: whether the broker acknowledged the big messages, what
its log says of them, the gateway's peak RSS (VmHWM) and its RSS before them, the state folder's size
before and after, the oversize dead letters the gateway counted, and the honest readings that arrived.
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
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import services  # noqa: E402

from sim.fleet import FleetSpec, generate  # noqa: E402
from sim.publish import BrokerConfig, publish  # noqa: E402
from sim.wire import Outgoing  # noqa: E402

SITE = "bench"


def conf_settings(code: Path) -> dict[str, str]:
    text = (code / "deploy" / "mosquitto" / "anonymous.conf").read_text(encoding="utf-8")
    out = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" ")
            out[key] = value.strip()
    return out


def start_broker(run_dir: Path, kind: str, code: Path) -> services.Proc:
    shipped = conf_settings(code)
    limit = shipped.get("max_packet_size") if kind == "shipped" else None
    autosave = shipped.get("autosave_interval")
    queue = [f"{k} {shipped[k]}" for k in ("max_queued_messages", "max_queued_bytes") if k in shipped]
    return services.start_mosquitto(
        run_dir,
        services.free_port(),
        persistence=True,
        max_packet_size=int(limit) if limit else None,
        autosave_interval=int(autosave) if autosave else None,
        extra_conf=queue,
    )


def status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def influx_count(url: str, db: str, where: str) -> int:
    q = urllib.parse.urlencode({"db": db, "q": f"SELECT count(temp_c) FROM reading WHERE {where}"}).encode()
    with urllib.request.urlopen(f"{url}/query", data=q, timeout=10) as resp:
        doc = json.loads(resp.read())
    series = doc["results"][0].get("series")
    return int(series[0]["values"][0][1]) if series else 0


def sentinel(prefix: str, seq: int) -> Outgoing:
    doc = {"v": 1, "dev": "sentinel", "r": [{"b": 1, "s": seq, "t": int(time.time() * 1000), "q": "s",
                                             "m": {"temp_c": 1.0}}]}  # fmt: skip
    return Outgoing(f"{prefix}/{SITE}/sentinel/readings", json.dumps(doc).encode(), "batch", "sentinel")


def wait(cond: Any, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.2)


def run_case(kind: str, args: argparse.Namespace, work: Path, influx: services.Proc) -> None:
    prefix = f"ov{kind[:2]}{os.getpid() % 10000}"
    db = prefix
    services.influx_create_database(influx.url, db)
    broker = start_broker(work / f"broker-{kind}", kind, args.code)
    state = work / f"state-{kind}"
    conf = work / f"gateway-{kind}.toml"
    conf.write_text(
        f'[mqtt]\nurl = "mqtt://{broker.host}:{broker.port}"\nprefix = "{prefix}"\nclient_id = "gw-{prefix}"\n'
        f'[influx]\ntarget = "v1"\nurl = "{influx.url}"\ndatabase = "{db}"\n'
        f'[state]\ndir = "{state}"\ncheckpoint_interval_s = 1.0\n'
    )
    stats_file = work / f"stats-{kind}.json"
    log = open(work / f"gateway-{kind}.log", "wb")
    env = {**os.environ, "PYTHONPATH": str(args.code)}
    gw = subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", "--config", str(conf), "--stats-file", str(stats_file)],
        cwd=args.code, stdout=log, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip

    def stats() -> dict[str, Any]:
        try:
            doc: dict[str, Any] = json.loads(stats_file.read_text())
            return doc
        except (OSError, ValueError):
            return {}

    def through(seq: int) -> None:
        asyncio.run(publish([sentinel(prefix, seq)], BrokerConfig(broker.host, broker.port), client_id=f"s-{prefix}"))
        wait(lambda: influx_count(influx.url, db, f"device = 'sentinel' AND seq = {seq}") == 1
             and stats().get("sink", {}).get("pending") == 0, f"sentinel {seq}")  # fmt: skip

    try:
        wait(lambda: stats().get("mqtt", {}).get("connected"), "the gateway to connect", 60)
        plan = generate(FleetSpec(devices=3, readings_per_device=40, batch_size=10, sites=(SITE,), seed=5,
                                  prefix=prefix))  # fmt: skip
        half = len(plan.messages) // 2
        cfg = BrokerConfig(broker.host, broker.port)
        asyncio.run(publish(plan.messages[:half], cfg, client_id=f"h-{prefix}"))
        through(0)
        rss_before, state_before = status_kb(gw.pid, "VmRSS") / 1024, folder_bytes(state)
        acked = [
            services.publish_big(broker, f"{prefix}/{SITE}/big/readings", args.mb * 2**20, f"big-{prefix}-{i}")
            for i in range(args.n)
        ]
        asyncio.run(publish(plan.messages[half:], cfg, client_id=f"h-{prefix}"))
        through(1)
        peak = status_kb(gw.pid, "VmHWM") / 1024
        broker_peak = status_kb(broker.pid, "VmHWM") / 1024
        state_after = folder_bytes(state)
        dead = stats().get("pipeline", {}).get("dead_by_reason", {}).get("oversize")
        honest = influx_count(influx.url, db, "device != 'sentinel'")
        text = broker.log_file.read_text(errors="replace")
        refused = text.count("disconnected due to oversize packet")
        dropped = text.count(f"Dropping too large outgoing PUBLISH for gw-{prefix}")
        print(
            f"{kind:9} broker: {args.n} x {args.mb} MB: acknowledged by the broker {sum(acked)}/{args.n}; broker log: "
            f"{refused} 'disconnected due to oversize packet', {dropped} 'Dropping too large outgoing PUBLISH'\n"
            f"          gateway RSS {rss_before:.0f} MB before, peak {peak:.0f} MB; state folder "
            f"{state_before / 2**20:.2f} MB before, {state_after / 2**20:.2f} MB after; oversize dead letters: "
            f"{dead}; honest readings in InfluxDB {honest}/{len(plan.readings)}; broker peak RSS {broker_peak:.0f} MB",
            flush=True,
        )
    finally:
        gw.send_signal(signal.SIGTERM)
        gw.wait(120)
        log.close()
        broker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=10, help="big messages (default 10)")
    parser.add_argument("--mb", type=int, default=100, help="size of each, MB (default 100)")
    parser.add_argument("--code", type=Path, default=ROOT, help="checkout whose gateway and broker config to run")
    parser.add_argument("--brokers", default="shipped,unlimited")
    args = parser.parse_args()
    args.code = args.code.resolve()
    work = Path(tempfile.mkdtemp(prefix="bench-oversize-"))
    http_port, rpc_port = services.free_ports(2)
    influx = services.start_influxdb(work / "influx", http_port, rpc_port)
    try:
        print(f"gateway code: {args.code}")
        for kind in args.brokers.split(","):
            run_case(kind, args, work, influx)
    finally:
        influx.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
