"""What isolating refused lines costs: write requests and time for a batch with k lines InfluxDB refuses.

Reproduce (from the repository root; starts a private InfluxDB 1.x from the distribution's package)::

    python bench/bench_isolation.py                   # batches of 1,000 lines, k = 0, 1, 10, 100, 1000
    python bench/bench_isolation.py -b 5000 -k 0 1 50

Each batch is ``-b`` reading lines of which ``k``, spread evenly, carry a float for a field that is an integer
in the shard already, so InfluxDB 1.x refuses them ("partial write: field type conflict"). The batch goes
through ``sinks.write_batch`` with the real v1 writer into a fresh database; printed per k: write requests,
seconds, lines written, lines refused (each dead-lettered).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import services  # noqa: E402

from gateway.config import InfluxConfig  # noqa: E402
from gateway.sinks import InfluxV1Writer, Pending, SinkStats, write_batch  # noqa: E402

T0_NS = 1_764_072_000_000 * 1_000_000


class CountingWriter(InfluxV1Writer):
    requests = 0

    async def write(self, lines: list[str]) -> None:
        self.requests += 1
        await super().write(lines)


def batch(size: int, bad: int) -> list[str]:
    every = size // bad if bad else size + 1
    out = []
    for i in range(size):
        field = "level=2.5" if bad and i % every == 0 and i // every < bad else f"temp_c={20 + i / 8}"
        out.append(f'reading,device=d{i % 50},site=s {field},boot=1i,seq={i}i,q="s" {T0_NS + i * 1_000_000_000}')
    return out


async def one(url: str, size: int, bad: int) -> tuple[int, float, SinkStats]:
    db = f"iso_{size}_{bad}"
    services.influx_create_database(url, db)
    services.http_request(
        f"{url}/write?{urllib.parse.urlencode({'db': db})}",
        method="POST",
        data=f"reading,device=old,site=s level=1i {T0_NS}".encode(),
    )
    writer = CountingWriter(InfluxConfig(target="v1", url=url, database=db, timeout_s=30.0))
    await writer.start()
    stats = SinkStats()
    try:
        start = time.perf_counter()
        assert await write_batch(writer, Pending(batch(size, bad)), stats, 1.0)
        took = time.perf_counter() - start
    finally:
        await writer.close()
    return writer.requests, took, stats


async def main_async(args: argparse.Namespace, url: str) -> None:
    logging.getLogger("gateway").setLevel(logging.ERROR)  # one warning per dead letter otherwise
    print(f"batch of {args.batch:,} lines, k of them refused by InfluxDB (field type conflict)")
    print(f"{'k':>6} {'requests':>9} {'seconds':>8} {'written':>8} {'refused':>8} {'dead letters':>13}")
    for k in args.refused:
        requests, took, s = await one(url, args.batch, k)
        print(
            f"{k:>6} {requests:>9} {took:>8.2f} {s.points_written:>8} {s.points_refused:>8} "
            f"{s.dead_letters_written:>13}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-b", "--batch", type=int, default=1000, help="lines in the batch (influx.batch_size)")
    parser.add_argument("-k", "--refused", type=int, nargs="+", default=[0, 1, 10, 100, 1000])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-isolation-") as tmp:
        http_port, rpc_port = services.free_ports(2)
        influx = services.start_influxdb(Path(tmp), http_port, rpc_port)
        try:
            asyncio.run(main_async(args, influx.url))
        finally:
            influx.stop()


if __name__ == "__main__":
    main()
