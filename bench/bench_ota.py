"""What an update over the air costs a board: the awake time (radio on) and the heap of the wake that fetches
and stages a build, against the publishing wakes around it, with the real firmware under the MicroPython
unix port (the native launcher) and a Mosquitto of its own on loopback. Each run is one board on a fresh
flash: a few publishing wakes, then ``edgekit-ota publish-build`` for it, the staging wake, the wake that runs
the new build and confirms it. Two brokers, Mosquitto's default (Nagle's algorithm on) and with deploy/'s
``set_tcp_nodelay true``, and the chunk sizes alternate between runs (in one process, side by side).

    python bench/bench_ota.py [--runs 6] [--chunks 512,1024,2048]

Loopback has no Wi-Fi latency: on a board each SUBSCRIBE round trip (four chunks) adds the access point's
round trip, a few ms; the numbers here are the firmware's own work (MQTT, flash writes, sha256).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.config import MqttConfig
from gateway.ota import build_files, publish_build
from sim.board.launcher import native_micropython
from sim.board.runner import BOARD_VALUES, REPO, BoardSpec, Fleet, Hook, host_ms
from sim.board.soak import Mosquitto

MIN = 60_000


def one_run(root: Path, port: int, chunk: int, k: int) -> dict[str, float]:
    start = host_ms() - 60 * MIN
    cfg = {"site": "b", "broker": "127.0.0.1", "port": port, "sleep_s": 300, "publish_every": 1,
           "wifi_ssid": "sim", "wifi_timeout_s": 1, "net_timeout_s": 2, "wake_timeout_s": 30}  # fmt: skip
    name = f"bo-{k}"
    build = build_files(REPO / "firmware", f"9.{k}")
    m = MqttConfig(host="127.0.0.1", port=port)
    native = native_micropython(REPO / ".run" / "micropython-native")
    spec = BoardSpec(name, cfg, {"values": BOARD_VALUES})
    fleet = Fleet(root / name, [spec], start_vt=start, micropython=native, compiled_shims=True)
    fleet.prepare()
    try:
        wakes = fleet.run(
            start + 27 * MIN, hooks=[Hook(start + 12 * MIN, lambda _f: publish_build(m, build, [name], chunk))]
        )
    finally:
        fleet.stop_ntp()

    def awake(w: object) -> int:
        line = next(x for x in w.output.splitlines() if x.startswith("EK sleep"))  # type: ignore[attr-defined]
        return int(line.split()[-1])

    def mem(w: object) -> int:
        line = next(x for x in w.output.splitlines() if x.startswith("EK mem publish"))  # type: ignore[attr-defined]
        return int(line.split()[3])

    staged = next(i for i, w in enumerate(wakes) if "EK ota staged" in w.output)
    assert "EK ota confirmed" in wakes[staged + 1].output, wakes[staged + 1].output[-2000:]
    normal = [w for i, w in enumerate(wakes) if i not in (0, staged, staged + 1)]
    return {
        "stage_ms": awake(wakes[staged]),
        "normal_ms": statistics.median(awake(w) for w in normal),
        "stage_heap": mem(wakes[staged]),
        "normal_heap": statistics.median(mem(w) for w in normal),
        "bytes": sum(len(b) for b in build.files.values()) + len(build.index),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=6)
    ap.add_argument("--chunks", default="1024")
    a = ap.parse_args()
    chunks = [int(x) for x in a.chunks.split(",")]
    root = Path(tempfile.mkdtemp(prefix="edgekit-bench-ota-"))
    brokers = {}
    for nodelay in (False, True):  # Mosquitto's default (Nagle on), and deploy/'s set_tcp_nodelay true
        b = brokers[nodelay] = Mosquitto(root / f"mosquitto-{nodelay}")
        if nodelay:
            b.conf.write_text(b.conf.read_text() + "set_tcp_nodelay true\n")
        b.start()
    res: dict[tuple[int, bool], list[dict[str, float]]] = {(c, n): [] for c in chunks for n in brokers}
    try:
        k = 0
        for _ in range(a.runs):
            for c, n in res:  # alternating, so that the machine's load falls on every case alike
                k += 1
                res[(c, n)].append(one_run(root, brokers[n].port, c, k))
    finally:
        for b in brokers.values():
            b.stop()
    print(f"one board, {a.runs} runs per chunk size; awake ms of a wake (radio on for most of it), heap in use")
    head = f"{'chunk':>6} {'nodelay':>7} {'build B':>8} {'staging wake ms':>22} {'other wakes ms':>18}"
    print(head + f" {'heap staging':>14} {'heap other':>11}")
    for (c, n), rs in res.items():
        st = sorted(r["stage_ms"] for r in rs)
        no = sorted(r["normal_ms"] for r in rs)
        heap_s = statistics.median(r["stage_heap"] for r in rs)
        heap_n = statistics.median(r["normal_heap"] for r in rs)
        print(f"{c:>6} {n!s:>7} {int(rs[0]['bytes']):>8} {statistics.median(st):>8.0f} ({st[0]:.0f}-{st[-1]:.0f}) "
              f"{statistics.median(no):>8.0f} ({no[0]:.0f}-{no[-1]:.0f}) {heap_s:>14.0f} {heap_n:>11.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
