"""Snapshot/restore contract (a restored operator gives identical output) and the bounds on state."""

from __future__ import annotations

import json
import random

from cep_helpers import NOW, SITE, T0, Row, arrival_order, feed, ids, make_cep
from test_cep_examples import CASES, example_cep

from gateway.cep import Cep, Match, Pattern
from gateway.model import Batch, Reading


def publish(cep: Cep, rows: list[Row]) -> list[Match]:
    out: list[Match] = []
    for d, seq, t, m in rows:
        out.extend(cep.process_batch(Batch(SITE, d, "t", NOW, (Reading(SITE, d, 1, seq, t, "s", m),), ()), NOW))
    return out


def test_snapshot_restore_at_every_cut_gives_identical_output() -> None:
    rows = arrival_order([r for rs, _ in CASES.values() for r in rs], random.Random(3))
    full = example_cep()
    want = ids(publish(full, rows)) + ids(feed(full, [], flush=False))
    for cut in range(0, len(rows), 3):
        first = example_cep()
        got = ids(publish(first, rows[:cut]))
        snap = json.loads(json.dumps(first.snapshot()))  # JSON-able, and nothing shared with the original
        second = example_cep()
        second.restore(snap)
        got += ids(publish(second, rows[cut:]))
        assert got == want, cut
        assert second.snapshot() == full.snapshot(), cut


def test_restore_refuses_other_patterns() -> None:
    snap = example_cep().snapshot()
    other = make_cep([Pattern.begin("a").where("x > 1").build("other")])
    try:
        other.restore(snap)
    except ValueError as exc:
        assert "patterns" in str(exc)
    else:
        raise AssertionError("restore accepted a snapshot of other patterns")


def test_partial_matches_stay_bounded_and_evictions_are_counted() -> None:
    # every reading starts a run that can never finish: a flood of partial matches
    never = Pattern.begin("a").where("x >= 0").followed_by("b").where("x < 0").build("never")
    cep = make_cep([never], max_runs=50)
    rows = [("d1", i, T0 + i, {"x": i}) for i in range(500)]
    publish(cep, rows)
    cep.flush_key("d:d1", T0 + 1_000)  # release the buffer
    assert cep.partial_matches() == 50
    assert cep.stats["evicted"] == 500 - 50


def test_within_times_runs_out_on_the_watermark() -> None:
    p = Pattern.begin("a").where("x == 1").followed_by("b").where("x == 2").within("10s").build("p")
    cep = make_cep([p])
    publish(cep, [("d1", 0, T0, {"x": 1})])
    assert cep.partial_matches() == 0 and cep.buffered() == 1  # held until the watermark passes it
    publish(cep, [("d1", 1, T0 + 6_000, {"x": 0})])
    assert cep.partial_matches() == 1
    publish(cep, [("d1", 2, T0 + 16_000, {"x": 0})])  # watermark 11 s: the run can no longer finish
    assert cep.partial_matches() == 0 and cep.stats["timeouts"] == 1


def test_the_buffer_is_bounded() -> None:
    p = Pattern.begin("a").where("x == 1").build("p")
    cep = make_cep([p], bound_ms=3_600_000, max_buffered=10)
    matches = publish(cep, [("d1", i, T0 + i, {"x": 1}) for i in range(25)])
    assert cep.buffered() == 10 and cep.stats["forced"] == 15 and len(matches) == 15


def test_site_key_merges_devices_and_waits_for_the_slowest() -> None:
    p = (
        Pattern.begin("a").where('door == "open"').followed_by("b").where('door == "open"')
        .within("1m").build("two_doors", key="site")
    )  # fmt: skip
    cep = make_cep([p])
    publish(cep, [("d1", 0, T0, {"door": "open"}), ("d2", 0, T0 + 1_000, {"door": "closed"})])
    publish(cep, [("d1", 1, T0 + 20_000, {"x": 1})])  # d1's watermark moves, d2's holds the site back
    assert cep.stats["matches"] == 0
    got = publish(cep, [("d2", 1, T0 + 2_000, {"door": "open"}), ("d2", 2, T0 + 30_000, {"x": 1})])
    assert [(m.key, m.readings) for m in got] == [("site-a", (("d1", 1, 0), ("d2", 1, 1)))]
