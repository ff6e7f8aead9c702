"""Instructions a reading, counted by valgrind (callgrind): the gateway's hot parts, this checkout and others.

Reproduce (from the repository root; valgrind from ``scripts/setup.sh``; each checkout with its compiled build)::

    python bench/bench_instructions.py                          # every part, this checkout
    python bench/bench_instructions.py --against ../base        # and another checkout (its own build), side by side
    python bench/bench_instructions.py --parts cep anomaly -n 2000 --engine pure

Times on this machine move by 10-30 % from run to run (it is shared); the instructions a piece of work executes
do not (they vary by a few in ten thousand with the hash seed, which is fixed here). So a change of a few per cent
to a hot loop shows here where a timed benchmark cannot tell it from the noise. They are not time: a cache miss
or a branch mispredicted costs no more instructions, so a speed-up still needs a timed benchmark beside it
(``bench_e2e.py``, ``bench_inprocess.py``), and the figure is for this x86_64 build only.

Each part runs twice in a child process under ``valgrind --tool=callgrind``: once only making its input and
its objects, once also doing the work; the difference over the readings is the instructions a reading. The
parts (bench_e2e.py's example configuration, 100 boards, messages of 10 readings of four float metrics, one a
second; 30,000 readings are 300 a board, a tenth of them in the detectors' warm-up):

- ``cep``: the example patterns (``gateway/examples/gateway.toml``), ``Cep.process_batch``;
- ``anomaly``: z-score and the multivariate score of ``temp_c`` and ``vib``, ``AnomalyEngine.process``;
- ``window``: the 10-minute tumbling window, ``Engine.process_batch``;
- ``lines``: line protocol of the raw readings, ``points.reading_line``;
- ``decode``: ``protocol.decode`` of each message's payload (msgspec's one pass and the readings made);
- ``pipeline``: all of it through ``Pipeline.handle`` (decoding, dedup, the window, patterns, detectors, lines);
- ``checkpoint``: the gateway's checkpoints (``Gateway.checkpoint``: the snapshot of the keys changed, their rows
  encoded, compared and compressed, the SQLite transaction, the log trimmed) when each covers one message of each
  board, as ``bench_inprocess.py``'s: 100 boards through ``Gateway._process``, a checkpoint after each round of a
  message a board from the third of the rounds on; per reading of the rounds checkpointed. InfluxDB is away (an
  unused port), so each checkpoint also moves the sink's lines in memory (the raw readings) to the spool, as a
  gateway's does while its database is down. The worker threads' instructions count too.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PARTS = ("cep", "anomaly", "window", "lines", "decode", "pipeline", "checkpoint")
T0 = 1_764_000_000_000


def _payload(device: str, seq0: int, t0: int, rnd: random.Random) -> bytes:
    rs = []
    for j in range(10):
        temp, rh = 21.0 + rnd.gauss(0, 0.3), 45 + rnd.random() * 5
        hpa, vib = 1000 + rnd.random(), 0.2 + rnd.random() * 0.2
        rs.append(f'{{"b":1,"s":{seq0 + j},"t":{t0 + j * 1000},"q":"s","m":{{"temp_c":{temp:.2f},"rh":{rh:.1f},'
                  f'"pressure_hpa":{hpa:.1f},"vib":{vib:.3f}}}}}')  # fmt: skip
    return b'{"v":1,"dev":"%s","r":[%s],"flushed":%d}' % (device.encode(), ",".join(rs).encode(), t0 + 9000)


def _checkpoint_rounds(readings: int) -> tuple[int, int]:
    """The ``checkpoint`` part's rounds (of a message of each of 100 boards, 1,000 readings), and the first of them
    followed by a checkpoint."""
    rounds = max(3, readings // 1_000)
    return rounds, rounds // 3


def checkpoints(readings: int, run: bool) -> None:
    """The ``checkpoint`` part: a gateway of the example configuration takes ``readings`` in rounds of a message of
    each of 100 boards, with ``run`` a checkpoint after each round from the third of them on."""
    import asyncio
    import tomllib

    sys.path.insert(0, str(ROOT / "bench"))
    from bench_e2e import example_toml

    from gateway.app import Gateway
    from gateway.config import parse_config

    boards = 100
    rounds, first = _checkpoint_rounds(readings)

    async def go() -> None:
        with tempfile.TemporaryDirectory() as d:
            doc = tomllib.loads(example_toml())
            doc = {**doc, "influx": {"url": "http://127.0.0.1:9", "max_buffered": 10_000_000}, "state": {"dir": d}}
            clock = [T0]
            gw = Gateway(parse_config(doc, env={}), now_ms=lambda: clock[0])
            try:
                await gw.recover()
                rnd = random.Random(1)
                for k in range(rounds):
                    batch = []
                    for b in range(boards):
                        dev = f"b-{b:04d}"
                        payload = _payload(dev, k * 10, T0 + k * 10_000 + b, rnd)
                        batch.append((f"edgekit/bench/{dev}/readings", payload, False))
                    clock[0] = T0 + k * 10_000 + 9_020 + boards
                    await gw._process(gw._accept(batch))
                    if run and k >= first:
                        await gw.checkpoint()
            finally:
                gw.store.close()

    asyncio.run(go())


def child(part: str, readings: int, run: bool) -> None:
    """Make the part's input and objects; with ``run``, also do the work (the code on ``sys.path``)."""
    import tomllib

    import gateway  # the checkout's (PYTHONPATH), before bench_e2e puts this one's on the path

    sys.path.insert(0, str(ROOT / "bench"))
    from bench_e2e import example_toml  # the e2e bench's configuration

    from gateway.config import parse_config

    assert Path(gateway.__file__).resolve().parent.parent == Path(os.environ["PYTHONPATH"]).resolve()
    if part == "checkpoint":
        checkpoints(readings, run)
        return
    from gateway.pipeline import Pipeline
    from gateway.protocol import decode

    doc = tomllib.loads(example_toml())
    cfg = parse_config(doc, env={})
    rnd = random.Random(1)
    boards = 100  # each board's 10th message on is past the detectors' warm-up (30 readings)
    messages = []
    for k in range(max(1, readings // (10 * boards))):
        for b in range(boards):
            dev = f"b-{b:04d}"
            t0 = T0 + k * 10_000 + b
            messages.append((f"edgekit/bench/{dev}/readings", _payload(dev, k * 10, t0, rnd), t0 + 9_020))
    pipeline = Pipeline(cfg)
    batches = [decode(topic, payload, received, types=cfg.metric_types) for topic, payload, received in messages]
    if not run:
        return
    if part == "cep":
        for m in batches:
            pipeline.cep.process_batch(m, m.received_ms)  # type: ignore[union-attr]
    elif part == "anomaly":
        assert pipeline.anomaly is not None
        for m in batches:
            pipeline.anomaly.process(m.readings, m.received_ms, device=m.device, flushed_ms=m.flushed_ms)  # type: ignore[union-attr]
    elif part == "window":
        for m in batches:
            pipeline.engine.process_batch(m, m.received_ms)  # type: ignore[arg-type]
    elif part == "lines":
        from gateway.points import reading_line

        for m in batches:
            for r in m.readings:  # type: ignore[union-attr]
                reading_line(r)
    elif part == "decode":
        for topic, payload, received in messages:
            decode(topic, payload, received, types=cfg.metric_types)
    elif part == "pipeline":
        for topic, payload, received in messages:
            pipeline.handle(topic, payload, received)


def count(checkout: Path, part: str, readings: int, run: bool, engine: str) -> int:
    """Instructions (callgrind's Ir) of a child process for ``part`` in ``checkout``."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "cg.out"
        env = {**os.environ, "PYTHONHASHSEED": "0", "PYTHONPATH": str(checkout)}
        if engine == "pure":
            env["EDGEKIT_ENGINE"] = "pure"
        code = (
            f"import sys; sys.path.insert(0, {str(ROOT / 'bench')!r}); import bench_instructions as b; "
            f"b.child({part!r}, {readings}, {run})"
        )
        cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-c", code]
        subprocess.run(cmd, check=True, cwd=checkout, env=env, capture_output=True)
        for line in out.read_text().splitlines():
            if line.startswith("summary:") or line.startswith("totals:"):
                return int(line.split()[1])
    raise RuntimeError("no totals in callgrind's output")


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    ap.add_argument("-n", "--readings", type=int, default=30_000, help="readings (100 boards, 10 a message)")
    ap.add_argument("--against", action="append", default=[], type=Path, help="another checkout, with its build")
    ap.add_argument("--engine", choices=["compiled", "pure"], default="compiled")
    args = ap.parse_args()
    readings = max(1, args.readings // 1_000) * 1_000
    checkouts = [*(p.resolve() for p in args.against), ROOT]
    print(f"instructions a reading ({readings:,} readings, engine {args.engine}, valgrind --tool=callgrind)")
    for part in args.parts:
        row = []
        for checkout in checkouts:
            made = count(checkout, part, readings, False, args.engine)
            done = count(checkout, part, readings, True, args.engine)
            per = readings
            if part == "checkpoint":  # the readings of the rounds checkpointed
                rounds, first = _checkpoint_rounds(readings)
                per = (rounds - first) * 1_000
            row.append((checkout, (done - made) / per))
        cells = "   ".join(f"{c.name or c}: {ir:8,.0f}" for c, ir in row)
        ratio = f"   this / {row[0][0].name}: {row[-1][1] / row[0][1]:.3f}" if len(row) > 1 and row[0][1] else ""
        print(f"  {part:<9} {cells}{ratio}", flush=True)


if __name__ == "__main__":
    main()
