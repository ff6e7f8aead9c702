"""The gateway's whole path in process, without MQTT: the durable log, the pipeline, the sink's memory and the
checkpoints, per reading, with the default and the example configuration (the sizing's known gap,
docs/scale-out.md).

Reproduce (from the repository root)::

    python bench/bench_inprocess.py            # 3 rounds, 1,000 boards, 11 messages of 10 readings each
    python bench/bench_inprocess.py --code /path/to/main   # the gateway of another checkout, same load
    python bench/bench_inprocess.py --config e2e -r 5      # one configuration

The configurations: ``default`` (raw readings), ``example`` (gateway/examples/gateway.toml: its patterns) and
``e2e`` (bench_e2e.py's example configuration: those patterns, a 10-minute window and anomaly detection).

The messages are bench_e2e.py's (four float metrics with noise, a flushed marker); a checkpoint is taken every 2 s
of their time, as ``state.checkpoint_interval_s`` does. Printed per configuration: microseconds of CPU per reading,
of which the checkpoints, the median and range over the rounds. The checkpoints' figure also holds the sink's
lines moved to the spool (InfluxDB is away); ``rows`` is the state's own part, per device: at the end of a round,
every board's row made as a checkpoint makes it (the snapshot of its keys, ``split_rows``, ``encode_row``, its
digest and its compression, zstd or in a checkout before checkpoint version 6 zlib), the median of five times.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import statistics
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))


def _payload(device: str, seq0: int, t0: int, rnd: random.Random) -> bytes:
    rs = []
    for j in range(10):
        temp = 21.0 + rnd.gauss(0, 0.3)
        rh, hpa, vib = 45 + rnd.random() * 5, 1000 + rnd.random(), 0.2 + rnd.random() * 0.2
        rs.append(f'{{"b":1,"s":{seq0 + j},"t":{t0 + j},"q":"s","m":{{"temp_c":{temp:.2f},"rh":{rh:.1f},'
                  f'"pressure_hpa":{hpa:.1f},"vib":{vib:.3f}}}}}')  # fmt: skip
    return b'{"v":1,"dev":"%s","r":[%s],"flushed":%d}' % (device.encode(), ",".join(rs).encode(), t0 + 9)


def _rows_us(gw: Any, boards: int) -> float:
    """CPU microseconds a device of every key's row as a checkpoint makes them (median of five), the garbage
    collector paused as a checkpoint pauses it."""
    import gc
    import zlib

    from gateway import state
    from gateway.ckpt_rows import encode_row, split_rows
    from gateway.state import CHECKPOINT_LEVEL, row_digest

    compress = getattr(state, "compress_row", None) or (lambda text: zlib.compress(text, CHECKPOINT_LEVEL))

    times = []
    gc.collect()
    gc.disable()
    for _ in range(5):
        started = time.process_time()
        rows = split_rows({"pipeline": gw.pipeline.snapshot(None, rows=2)})
        for row in rows.values():
            text = encode_row(row)
            row_digest(text)
            compress(text)
        times.append((time.process_time() - started) * 1e6 / boards)
        del rows
    gc.enable()
    return statistics.median(times)


async def _round(doc: dict[str, Any], boards: int, messages: int) -> tuple[float, float, float]:
    from gateway.app import Gateway
    from gateway.config import parse_config

    with tempfile.TemporaryDirectory() as d:
        doc = {**doc, "influx": {"url": "http://127.0.0.1:9", "max_buffered": 10_000_000}, "state": {"dir": d}}
        rnd = random.Random(1)
        now0 = int(time.time() * 1000) - 3_600_000
        clock = [now0]
        gw = Gateway(parse_config(doc, env={}), now_ms=lambda: clock[0])
        try:
            await gw.recover()
            msgs = [(f"edgekit/s/b-{b:04d}/readings", _payload(f"b-{b:04d}", k * 10, now0 + k * 10_000 + b, rnd),
                     now0 + k * 10_000 + b + 20) for k in range(messages + 1) for b in range(boards)]  # fmt: skip
            for topic, p, t in msgs[:boards]:  # every board admitted first
                clock[0] = t
                await gw._process(gw._accept([(topic, p, False)]))
            ck = 0.0
            last = msgs[boards][2]
            started = time.process_time()
            for i in range(boards, len(msgs), 100):
                batch = msgs[i : i + 100]
                clock[0] = batch[-1][2]
                await gw._process(gw._accept([(tp, p, False) for tp, p, _ in batch]))
                if clock[0] - last >= 2000:
                    await gw._tick()
                    c = time.process_time()
                    await gw.checkpoint()
                    ck += time.process_time() - c
                    last = clock[0]
            n = (len(msgs) - boards) * 10
            total = (time.process_time() - started) * 1e6 / n
            return total, ck * 1e6 / n, _rows_us(gw, boards)
        finally:
            gw.store.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-r", "--rounds", type=int, default=3)
    ap.add_argument("-b", "--boards", type=int, default=1000)
    ap.add_argument("-m", "--messages", type=int, default=11)
    ap.add_argument("--config", nargs="+", choices=["default", "example", "e2e"], help="only these configurations")
    ap.add_argument("--code", type=Path, default=REPO, help="the checkout whose gateway runs (default: this one)")
    args = ap.parse_args()
    from bench_e2e import example_toml  # the e2e bench's configuration (it puts this checkout on the path)

    sys.path.insert(0, str(args.code.resolve()))
    import gateway

    print(f"gateway from {Path(gateway.__file__).parent}", flush=True)
    logging.disable(logging.WARNING)
    example = tomllib.loads((REPO / "gateway/examples/gateway.toml").read_text(encoding="utf-8"))
    example.pop("mqtt", None)
    example.pop("influx", None)
    configs = {"default": {}, "example": example, "e2e": tomllib.loads(example_toml())}
    configs = {k: v for k, v in configs.items() if not args.config or k in args.config}
    got: dict[str, list[tuple[float, float, float]]] = {k: [] for k in configs}
    for r in range(args.rounds):
        for name in configs if r % 2 == 0 else reversed(list(configs)):
            got[name].append(asyncio.run(_round(configs[name], args.boards, args.messages)))
    for name, runs in got.items():
        total = [t for t, _, _ in runs]
        ck = [c for _, c, _ in runs]
        rows = [w for _, _, w in runs]
        print(
            f"{name:<8} {statistics.median(total):5.1f} us a reading (range {min(total):.1f}-{max(total):.1f}), "
            f"checkpoints {statistics.median(ck):.1f} ({min(ck):.1f}-{max(ck):.1f}); "
            f"rows {statistics.median(rows):.1f} us a device ({min(rows):.1f}-{max(rows):.1f}); {args.rounds} rounds"
        )


if __name__ == "__main__":
    main()
