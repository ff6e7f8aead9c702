"""The first hour's `make demo`, in a network namespace of its own (tests/test_first_hour.py runs it with
``unshare -n``): a foreign Mosquitto on 1883 and a foreign InfluxDB on 8086/8088 (another checkout's services,
a system service) are already there, holding a database named like the demo's, when the user types
``make demo``. Prints one JSON document: what make printed, its exit code, and the foreign InfluxDB's databases
and points before and after.

    python tests/first_hour.py WORKDIR [make arguments...]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

import services  # noqa: E402

FOREIGN_DB = "edgekit_demo"  # the demo's own database name: the worst case


def query(url: str, q: str, db: str = "") -> list[list[object]]:
    params = urllib.parse.urlencode({"q": q, **({"db": db} if db else {})}).encode()
    with urllib.request.urlopen(f"{url}/query", data=params, timeout=10) as resp:
        doc = json.load(resp)
    return [v for r in doc["results"] for s in r.get("series", []) for v in s["values"]]


def snapshot(url: str) -> dict[str, object]:
    return {
        "databases": sorted(str(v[0]) for v in query(url, "SHOW DATABASES")),
        "points": query(url, 'SELECT * FROM "theirs"', FOREIGN_DB),
        "measurements": sorted(str(v[0]) for v in query(url, "SHOW MEASUREMENTS", FOREIGN_DB)),
    }


def main() -> int:
    work = Path(sys.argv[1])
    make_args = sys.argv[2:]
    foreign = work / "foreign"
    mqtt = services.start_mosquitto(foreign, 1883)
    influx = services.start_influxdb(foreign, 8086, 8088, database=FOREIGN_DB)
    demo_run = work / "demo-run"
    # the set-up is the real one; only the optional compiled engine is not built here if it is missing (a minute
    # of mypyc, nothing to do with the ports); the namespace has no network, so .venv must be up to date
    env = {"EDGEKIT_COMPILE": "0", **os.environ, "EDGEKIT_DEMO_RUN_DIR": str(demo_run)}
    try:
        data = urllib.parse.urlencode({"db": FOREIGN_DB}).encode()
        urllib.request.urlopen(
            urllib.request.Request(f"{influx.url}/write?{data.decode()}", data=b"theirs v=42 1700000000000000000"),
            timeout=10,
        ).close()
        before = snapshot(influx.url)
        done = subprocess.run(
            ["make", "--no-print-directory", "demo", *make_args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        after = snapshot(influx.url)
    finally:
        subprocess.run(
            [sys.executable, str(REPO / "scripts" / "services.py"), "stop", "--run-dir", str(demo_run / "services")],
            capture_output=True,
            timeout=120,
        )
        mqtt.stop()
        influx.stop()
    print(json.dumps({"code": done.returncode, "out": done.stdout, "err": done.stderr, "before": before,
                      "after": after}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
