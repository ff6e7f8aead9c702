"""The decoder per message: ``decode`` (msgspec's one pass first) against ``decode_reference`` (json and checks
field by field), side by side in one process, alternating in every round.

Reproduce (from the repository root)::

    python bench/bench_decode.py              # 5 rounds of 5,000 messages of each kind
    python bench/bench_decode.py -r 9 -n 20000

Kinds of message (bench_e2e.py's: 10 readings of four float metrics and a flushed marker, 1,000 boards):

- ``board``: as boards send them;
- ``declared``: the same, with ``[metric_types]`` declaring a metric the messages do not carry an integer
  (msgspec's general shape: each value checked as the reference checks it);
- ``one rejected``: one reading in each message too far in the future, so ``decode`` tries the fast path, steps
  aside and the reference decodes the message: what trying first costs when it does not answer.

Printed per kind: CPU microseconds per message, median (range) over the rounds, and the ratio of the medians.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_inprocess import _payload  # noqa: E402

from gateway.config import parse_config  # noqa: E402
from gateway.protocol import decode, decode_reference  # noqa: E402
from gateway.schema import NO_TYPES  # noqa: E402

NOW = 1_764_072_000_000


def messages(n: int, future: bool) -> list[tuple[str, bytes]]:
    rnd = random.Random(1)
    out = []
    for k in range(n):
        device = f"b-{k % 1000:04d}"
        payload = _payload(device, k * 10, NOW - 60_000 + k, rnd)
        if future:  # the last reading 10 minutes ahead of the gateway's clock: time_in_future, the others kept
            t_last = str(NOW - 60_000 + k + 9).encode()
            payload = payload.replace(b'"t":' + t_last, b'"t":' + str(NOW + 600_000).encode())
        out.append((f"edgekit/s/{device}/readings", payload))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-r", "--rounds", type=int, default=5)
    ap.add_argument("-n", "--messages", type=int, default=5000)
    args = ap.parse_args()
    declared = parse_config({"metric_types": {"integer": ["count"]}}, env={}).metric_types
    kinds = {
        "board": (messages(args.messages, False), NO_TYPES),
        "declared": (messages(args.messages, False), declared),
        "one rejected": (messages(args.messages, True), NO_TYPES),
    }
    for name, (msgs, types) in kinds.items():
        r = decode(*msgs[0], NOW, types=types)
        assert r == decode_reference(*msgs[0], NOW, types=types)
        assert len(getattr(r, "rejected", ())) == (name == "one rejected"), name
    print(f"decode against decode_reference, {args.messages:,} messages of 10 readings, {args.rounds} rounds:")
    for name, (msgs, types) in kinds.items():
        times: dict[str, list[float]] = {"decode": [], "decode_reference": []}
        for r in range(args.rounds):
            order = [decode, decode_reference] if r % 2 == 0 else [decode_reference, decode]
            for fn in order:
                started = time.process_time()
                for topic, payload in msgs:
                    fn(topic, payload, NOW, types=types)
                times[fn.__name__].append((time.process_time() - started) * 1e6 / len(msgs))
        med = {k: statistics.median(v) for k, v in times.items()}
        cells = ", ".join(f"{k} {med[k]:.1f} ({min(v):.1f}-{max(v):.1f})" for k, v in times.items())
        print(f"  {name:13s} us a message: {cells}; ratio {med['decode'] / med['decode_reference']:.2f}")


if __name__ == "__main__":
    main()
