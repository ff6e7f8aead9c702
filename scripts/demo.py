#!/usr/bin/env python3
"""``make demo``: a simulated fleet through a real broker and the gateway into InfluxDB, then a summary.

1. starts Mosquitto, InfluxDB 1.x and VictoriaMetrics on 127.0.0.1 (``scripts/services.py``; kept running);
2. starts the gateway as its own process (``python -m gateway run``) with ``.run/demo/gateway.toml``;
3. publishes a fleet (``sim``): readings with re-sent duplicates and malformed messages mixed in;
4. waits until the gateway has taken every message and written it, stops it, and reads InfluxDB back;
5. prints what was published, what the gateway did, what InfluxDB holds, and whether they agree.

The demo database ``edgekit_demo`` is emptied at each run, so every number printed is this run's.
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
import time
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

import services  # noqa: E402

from sim.commands import report_scenario  # noqa: E402
from sim.fleet import FleetSpec, Plan, generate  # noqa: E402
from sim.publish import BrokerConfig, publish  # noqa: E402

RUN = REPO / ".run" / "demo"
DB = "edgekit_demo"
INFLUX = "http://127.0.0.1:8086"


def query(q: str) -> list[dict[str, Any]]:
    url = f"{INFLUX}/query?" + urllib.parse.urlencode({"db": DB, "q": q, "epoch": "ms"})
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


def post_query(q: str) -> None:
    data = urllib.parse.urlencode({"q": q}).encode()
    urllib.request.urlopen(urllib.request.Request(f"{INFLUX}/query", data=data), timeout=10).close()


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


def write_config(mqtt_port: int) -> Path:
    RUN.mkdir(parents=True, exist_ok=True)
    # each demo run starts from a clean slate: the simulated fleet reuses its identities, which a gateway
    # that remembered the previous run (its durable log and checkpoint) would rightly take as duplicates
    shutil.rmtree(RUN / "gateway-state", ignore_errors=True)
    path = RUN / "gateway.toml"
    path.write_text(
        f"""# written by scripts/demo.py
[mqtt]
url = "mqtt://127.0.0.1:{mqtt_port}"
client_id = "edgekit-demo-gateway"
clean_session = true

[state]
dir = "{RUN / "gateway-state"}"

[influx]
target = "v1"
url = "{INFLUX}"
database = "{DB}"
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
""",
        encoding="utf-8",
    )
    return path


def read_stats(path: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return data
    except (OSError, ValueError):
        return {}


def wait_gateway(stats_file: Path, proc: subprocess.Popen[bytes], cond: Any, what: str, limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    while not cond(read_stats(stats_file)):
        if proc.poll() is not None:
            raise SystemExit(f"the gateway exited early (code {proc.returncode}); see {RUN / 'gateway.log'}")
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for the gateway: {what}; see {RUN / 'gateway.log'}")
        time.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--devices", type=int, default=50)
    ap.add_argument("--readings", type=int, default=120, help="readings per device (one a minute of event time)")
    ap.add_argument("--rate", type=float, default=100.0, help="messages per second (0: as fast as possible)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    started = time.monotonic()

    print("==> starting Mosquitto, InfluxDB and VictoriaMetrics on 127.0.0.1 (kept running afterwards)")
    if services.main(["start"]) != 0:
        return 1
    state = json.loads((services.DEFAULT_RUN_DIR / "mosquitto" / "state.json").read_text())
    mqtt_port = int(state["port"])
    post_query(f'DROP DATABASE "{DB}"')
    post_query(f'CREATE DATABASE "{DB}"')
    cleared = clear_retained(mqtt_port)
    if cleared:
        print(f"==> cleared {cleared} retained status messages left by an earlier run")

    spec = FleetSpec(
        devices=args.devices,
        readings_per_device=args.readings,
        batch_size=10,
        sites=("greenhouse", "orchard"),
        metrics=("temp_c", "rh", "vib"),
        duplicate_rate=0.1,
        malformed=12,
        nan_readings=3,
        old_readings=2,
        seed=args.seed,
    )
    plan = generate(spec)
    counts = plan.counts()

    config = write_config(mqtt_port)
    stats_file = RUN / "gateway-stats.json"
    stats_file.unlink(missing_ok=True)
    log_file = (RUN / "gateway.log").open("wb")
    print(f"==> starting the gateway: python -m gateway run --config {config.relative_to(REPO)}")
    gw = subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", "--config", str(config), "--stats-file", str(stats_file)],
        cwd=REPO,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        wait_gateway(stats_file, gw, lambda s: s.get("mqtt", {}).get("connected"), "connect to the broker", 30)
        print(
            f"==> publishing {counts.messages} messages from {counts.devices} simulated devices "
            f"at {args.rate:g} messages/s"
        )
        result = asyncio.run(
            publish(plan.messages, BrokerConfig("127.0.0.1", mqtt_port), client_id="edgekit-demo-sim", rate=args.rate)
        )
        wait_gateway(
            stats_file,
            gw,
            lambda s: s.get("pipeline", {}).get("messages", 0) >= counts.messages and s["sink"]["pending"] == 0,
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
    # simulator report (sim/report.py): a scenario in virtual time through the gateway's pipeline
    report, verdict = report_scenario(RUN / "report.html")
    print_summary(plan, result.elapsed_s, stats, time.monotonic() - started)
    print(f"Report of the 'flaky-network' scenario ({'matches' if verdict.ok else 'DIFFERS FROM'} its truth): {report}")
    return 0


def print_summary(plan: Plan, publish_s: float, stats: dict[str, Any], total_s: float) -> None:
    c = plan.counts()
    p, s = stats["pipeline"], stats["sink"]
    rows = query("SELECT count(seq) FROM reading GROUP BY device")
    in_db = sum(r["count"] for r in rows)
    dead_rows = query("SELECT count(size) FROM dead_letter GROUP BY reason")
    dead_db = {r["reason"]: r["count"] for r in dead_rows}
    status_rows = query("SELECT count(state) FROM device_status")
    window_rows = query("SELECT count(revision) FROM window GROUP BY metric")
    windows_db = sum(r["count"] for r in window_rows)
    late_rows = query("SELECT count(late_by_ms) FROM late_reading")
    late_db = late_rows[0]["count"] if late_rows else 0
    exact = query("SELECT * FROM reading")
    found = {(r["device"], r["boot"], r["seq"]): r["time"] for r in exact}
    missing = [r for r in plan.readings if found.get((r.device, r.boot, r.seq)) != r.t_ms]
    extra = len(found) - (len(plan.readings) - len(missing))
    sites = sorted({d.site for d in plan.devices})
    span_h = plan.spec.span_ms / 3_600_000

    def reasons(d: dict[str, int]) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(d.items())) or "none"

    ok = not missing and extra == 0 and Counter(dead_db) == Counter(c.dead_letters_by_reason)
    print()
    print(f"edgekit demo: {c.devices} simulated devices at {len(sites)} sites ({', '.join(sites)}), "
          f"{span_h:g} h of event time each")  # fmt: skip
    print()
    print(f"  published   {c.readings} readings in {c.batches} batches, plus {c.duplicates} batches re-sent")
    print(f"              ({c.duplicate_readings} duplicate readings) and {c.malformed} malformed messages, "
          f"in {publish_s:.1f} s")  # fmt: skip
    print(f"  gateway     {p['messages']} messages: {p['readings_accepted']} readings accepted, "
          f"{p['duplicates']} duplicates removed, {p['dead_letters']} dead letters")  # fmt: skip
    print(f"              dead letters by reason: {reasons(p['dead_by_reason'])}")
    print(f"              {s['points_written']} points written in {s['batches_written']} batches, "
          f"{s['points_refused']} refused, {s['write_failures']} failed writes retried")  # fmt: skip
    print(f"  InfluxDB    {in_db} readings in measurement 'reading' of database '{DB}' "
          f"({len(rows)} devices), {sum(dead_db.values())} dead letters, "
          f"{status_rows[0]['count'] if status_rows else 0} status points")  # fmt: skip
    print(f"  windows     {p['window_results']} results of the 10-minute window 'temp_10m' (temp_c, rh) "
          f"-> {windows_db} points in 'window'; {p['late_readings']} late -> {late_db} in 'late_reading'")  # fmt: skip
    verdict = "every valid reading found exactly once, at its event time" if ok else "MISMATCH"
    print(f"  check       {verdict}: {len(missing)} missing, {extra} extra; "
          f"dead letters {'match' if Counter(dead_db) == Counter(c.dead_letters_by_reason) else 'DIFFER'}")  # fmt: skip
    print()
    print(f"Done in {total_s:.0f} s. Look at the data (InfluxQL over HTTP):")
    q = "SELECT mean(temp_c) FROM reading WHERE device='dev-0001' GROUP BY time(10m)"
    print(f'  curl -sG {INFLUX}/query --data-urlencode db={DB} --data-urlencode "q={q}"')
    q3 = "SELECT mean, min, max, count, revision FROM window WHERE device='dev-0001' AND metric='temp_c'"
    print(f'  curl -sG {INFLUX}/query --data-urlencode db={DB} --data-urlencode "q={q3}"')
    q2 = "SELECT reason, detail, topic FROM dead_letter"
    print(f'  curl -sG {INFLUX}/query --data-urlencode db={DB} --data-urlencode "q={q2}"')
    print(f"Gateway log: {(RUN / 'gateway.log').relative_to(REPO)}. "
          "The services keep running: 'make services-stop' stops them.")  # fmt: skip
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    sys.exit(main())
