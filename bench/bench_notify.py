"""What notifications cost ingest: the gateway's event loop per message, with and without ``[[notify]]``.

Reproduce (from the repository root, with the project's venv)::

    python bench/bench_notify.py                    # 7 rounds of 2,000 messages of 10 readings each
    python bench/bench_notify.py --rounds 9 --messages 5000 --targets 3

The worst case: a fault storm in which every reading raises an alert (a one-step pattern ``temp_c > 80`` over
100 devices, every reading hot). Each round times the same messages through a fresh pipeline twice, in
alternating order: ``off``, the pipeline alone (``Pipeline.handle``, what ingest runs on the loop); ``on``, the
same plus what notifications add on the loop: ``Notifier.offer`` of every alert (the inbox) and
``Notifier.step`` after every ``--step-every`` (100) messages, as the notifier's task does once a tick (0.2 s:
at the pipeline's pace here, about 100 messages): routing to ``--targets`` targets with filters, grouping, quiet
repeats.
Delivery is not in it: it happens once per incident in Apprise's worker threads. Printed: microseconds per
message for each, per round, then the median and range over the rounds, and the overhead in per cent.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from gateway.config import parse_config
from gateway.notify import Notifier
from gateway.pipeline import Pipeline


def messages(n: int, t0: int) -> list[tuple[str, bytes]]:
    out = []
    for i in range(n):
        dev = f"d{i % 100}"
        seq0 = (i // 100) * 10
        rs = [{"b": 1, "s": seq0 + j + 1, "t": t0 + (seq0 + j) * 1000, "q": "s", "m": {"temp_c": 90.0 + j}}
              for j in range(10)]  # fmt: skip
        out.append((f"edgekit/site/{dev}/readings", json.dumps({"v": 1, "dev": dev, "r": rs}).encode()))
    return out


def run(
    cfg_doc: dict[str, object], env: dict[str, str], msgs: list[tuple[str, bytes]], notify: bool, every: int
) -> float:
    cfg = parse_config(cfg_doc, env=env)
    p = Pipeline(cfg)
    clock = [0]
    n = Notifier(cfg.notify, lambda: clock[0], retractions=False) if notify else None  # as the gateway: no on=both
    received = int(time.time() * 1000)
    start = time.perf_counter()
    for i, (topic, payload) in enumerate(msgs):
        out = p.handle(topic, payload, received)
        if n is not None:
            n.offer(out.alerts)
            if i % every == every - 1:
                n.step()
                clock[0] += 200
    elapsed = time.perf_counter() - start
    if n is not None:
        assert n.shed == 0 and all(t.router.matched > 0 for t in n.targets)
    assert p.stats.alerts == 10 * len(msgs)
    return elapsed / len(msgs) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--targets", type=int, default=3)
    ap.add_argument("--step-every", type=int, default=100)
    args = ap.parse_args()
    t0 = (int(time.time() * 1000) - 3_600_000) // 1000 * 1000
    doc: dict[str, object] = {
        "patterns": [{"name": "overheat", "on": "arrival", "severity": "critical",
                      "steps": [{"name": "hot", "where": "temp_c > 80"}]}],
        "notify": [{"name": f"t{i}", "min_severity": "warning", "sites": ["site"]} for i in range(args.targets)],
    }  # fmt: skip
    env = {f"EDGEKIT_NOTIFY_T{i}_URL": f"json://127.0.0.1:9/hook{i}" for i in range(args.targets)}
    msgs = messages(args.messages, t0)
    off: list[float] = []
    on: list[float] = []
    for r in range(args.rounds):
        order = [False, True] if r % 2 == 0 else [True, False]
        for notify in order:
            (on if notify else off).append(run(doc, env, msgs, notify, args.step_every))
        print(f"round {r + 1}: off {off[-1]:.1f} us/message, on {on[-1]:.1f} us/message")

    def summary(xs: list[float]) -> str:
        return f"median {statistics.median(xs):.1f} us/message (range {min(xs):.1f} .. {max(xs):.1f})"

    print(f"off: {summary(off)}")
    print(f"on:  {summary(on)}")
    ratios = [b / a - 1 for a, b in zip(off, on, strict=True)]
    print(f"overhead: median {statistics.median(ratios) * 100:+.1f} % (range {min(ratios) * 100:+.1f} .. "
          f"{max(ratios) * 100:+.1f} %), {10 * args.messages} alerts a round, {args.targets} targets")  # fmt: skip


if __name__ == "__main__":
    main()
