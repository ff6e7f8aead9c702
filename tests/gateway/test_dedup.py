from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.dedup import DedupSpec

Identity = tuple[str, int, int]
ids = st.tuples(st.sampled_from(["a", "b"]), st.integers(0, 3), st.integers(0, 60))
small_ids = st.tuples(st.sampled_from(["a", "b"]), st.integers(0, 6), st.integers(0, 20))
bounds = st.builds(DedupSpec, max_boots=st.integers(1, 3), max_ranges=st.integers(1, 4))
times = st.lists(st.integers(1_700_000_000_000, 1_700_000_100_000), min_size=97, max_size=97)


def time_of(key: Identity, table: list[int]) -> int:
    """A board re-sends a reading with the event time it had the first time: one time per identity."""
    d, b, s = key
    return table[(b * 31 + s * 7 + (d == "b") * 13) % len(table)]


@given(st.lists(ids, max_size=300), times)
def test_within_the_bounds_it_is_a_set(stream: list[Identity], table: list[int]) -> None:
    dedup = DedupSpec().build()
    seen: set[Identity] = set()
    for key in stream:
        assert dedup.check(*key, time_of(key, table)) == ("duplicate" if key in seen else "new")
        seen.add(key)
    for key in seen:
        assert dedup.seen(*key)
    assert dedup.forgotten == dedup.forgotten_boots == 0


@settings(max_examples=150)
@given(st.lists(small_ids, max_size=300), times, bounds)
def test_whatever_the_bounds_a_reading_is_accepted_at_most_once(
    stream: list[Identity], table: list[int], spec: DedupSpec
) -> None:
    """Against a brute-force reference, the set of every identity ever accepted."""
    dedup = spec.build()
    accepted: set[Identity] = set()
    for key in stream:
        verdict = dedup.check(*key, time_of(key, table))
        if verdict == "new":
            assert key not in accepted, f"{key} accepted twice"
            accepted.add(key)
        elif verdict == "duplicate":
            assert key in accepted, f"{key} called a duplicate but never accepted"
        else:
            assert verdict in ("stale_boot", "stale_seq")


@settings(max_examples=150)
@given(st.lists(st.tuples(small_ids, st.integers(1_700_000_000_000, 1_700_000_000_400)), max_size=300), bounds)
def test_the_same_reading_is_never_accepted_twice_even_when_identities_are_reused(
    stream: list[tuple[Identity, int]], spec: DedupSpec
) -> None:
    """A re-flashed board reuses (boot, seq) with later times: the exact reading (identity and time) still
    goes in at most once, however identities and times mix."""
    dedup = spec.build()
    accepted: set[tuple[Identity, int]] = set()
    for key, t in stream:
        verdict = dedup.check(*key, t)
        assert verdict in ("new", "duplicate", "stale_boot", "stale_seq")
        if verdict == "new":
            assert (key, t) not in accepted
            accepted.add((key, t))


@st.composite
def board_life(draw: st.DrawFn) -> list[tuple[int, int, int]]:
    """One board's readings in the order it takes them: boots (the counter may restart, as after a re-flash),
    sequence numbers from 0 with gaps (readings lost on the way), event times increasing."""
    out: list[tuple[int, int, int]] = []
    t = 1_700_000_000_000
    boot = draw(st.integers(1, 5))
    for _ in range(draw(st.integers(1, 12))):
        seq = 0
        for _ in range(draw(st.integers(1, 12))):
            seq += draw(st.integers(1, 3))
            t += draw(st.integers(1, 5_000))
            out.append((boot, seq, t))
        boot = draw(st.sampled_from([boot + 1, boot + 1, 1, boot]))  # a reset, a re-flash, or the same boot
    return out


@settings(max_examples=150)
@given(board_life(), st.data(), bounds)
def test_a_board_is_never_locked_out_and_its_resends_never_counted(
    life: list[tuple[int, int, int]], data: st.DataObject, spec: DedupSpec
) -> None:
    """Every reading the first time (in the order taken) is accepted, whatever the bounds and even after its
    boot counter restarts; every re-send (of any earlier reading) is turned away."""
    dedup = spec.build()
    picks = data.draw(st.lists(st.lists(st.integers(0, 10**6), max_size=3), min_size=len(life), max_size=len(life)))
    sent: list[tuple[int, int, int]] = []
    for (b, s, t), resend in zip(life, picks, strict=True):
        for b0, s0, t0 in (sent[i % len(sent)] for i in resend) if sent else ():
            assert dedup.check("d", b0, s0, t0) != "new", f"re-sent {(b0, s0, t0)} accepted again"
        assert dedup.check("d", b, s, t) == "new", f"{(b, s, t)} refused the first time"
        sent.append((b, s, t))


@given(st.lists(small_ids, max_size=200), times, bounds, st.integers(0, 200))
def test_snapshot_restore_round_trip(stream: list[Identity], table: list[int], spec: DedupSpec, cut: int) -> None:
    whole = spec.build()
    expected = [whole.check(*k, time_of(k, table)) for k in stream]
    first = spec.build()
    got = [first.check(*k, time_of(k, table)) for k in stream[:cut]]
    second = spec.build()
    second.restore(json.loads(json.dumps(first.snapshot())))
    got += [second.check(*k, time_of(k, table)) for k in stream[cut:]]
    assert got == expected


def test_memory_grows_with_gaps_not_readings() -> None:
    dedup = DedupSpec().build()
    for seq in range(100_000):
        dedup.check("d", 1, seq, 1_700_000_000_000 + seq)
    assert dedup.state["d"][1][1][3] == [[0, 100_000]]


def test_an_old_boot_resent_after_eight_newer_boots_is_stale() -> None:
    dedup = DedupSpec().build()
    t = 1_700_000_000_000
    assert all(dedup.check("d", 1, s, t + s) == "new" for s in range(10))
    for boot in range(2, 10):  # the ninth boot: the oldest (boot 1) is forgotten
        assert dedup.check("d", boot, 0, t + 60_000 * boot) == "new"
    assert sorted(dedup.state["d"][1]) == list(range(2, 10))
    assert dedup.horizon("d") == t + 9
    assert [dedup.check("d", 1, s, t + s) for s in range(3)] == ["stale_boot"] * 3  # every time, not once
    assert [dedup.check("d", 1, s, t + s) for s in range(3)] == ["stale_boot"] * 3
    assert "at most 8 boots a device" in dedup.explain("d", 1, 0, t, "stale_boot")


def test_the_boot_with_the_oldest_readings_is_forgotten_not_the_lowest_number() -> None:
    """After a re-flash the counter starts again at 1: the new low boots must not be the ones forgotten."""
    dedup = DedupSpec(max_boots=2).build()
    t = 1_700_000_000_000
    assert dedup.check("d", 40, 0, t) == "new"
    assert dedup.check("d", 41, 0, t + 10) == "new"
    assert dedup.check("d", 1, 0, t + 20) == "new"  # re-flashed: boot 40 (the oldest readings) goes
    assert sorted(dedup.state["d"][1]) == [1, 41]
    assert dedup.check("d", 1, 0, t + 20) == "duplicate"
    assert dedup.check("d", 40, 0, t) == "stale_boot"


def test_a_reflashed_board_reusing_a_tracked_boot_is_not_taken_for_duplicates() -> None:
    dedup = DedupSpec().build()
    t = 1_700_000_000_000
    assert [dedup.check("d", 1, s, t + s) for s in range(5)] == ["new"] * 5
    # the same identities again, later: not re-sends (a re-send has its first time) but a restarted counter
    assert [dedup.check("d", 1, s, t + 1_000 + s) for s in range(5)] == ["new"] * 5
    assert dedup.check("d", 1, 2, t + 1_002) == "duplicate"
    assert dedup.check("d", 1, 2, t + 2) == "stale_boot"  # the old boot's re-send: forgotten, at the horizon
    assert dedup.forgotten_boots == 1


def test_sequence_numbers_below_the_dropped_ranges_are_stale() -> None:
    dedup = DedupSpec(max_ranges=3).build()
    t = 1_700_000_000_000
    for seq in (0, 2, 4, 6):  # four separate ranges, the bound is three: [0, 1) is dropped
        assert dedup.check("d", 1, seq, t + seq) == "new"
    assert dedup.forgotten == 1
    assert dedup.check("d", 1, 0, t) == "stale_seq"  # re-sent: never accepted twice
    assert dedup.check("d", 1, 0, t) == "stale_seq"
    assert dedup.check("d", 1, 6, t + 6) == "duplicate"
    assert dedup.check("d", 1, 1, t + 1) == "new"  # above the floor (1), not seen: new
    assert "below 1" in dedup.explain("d", 1, 0, t, "stale_seq")


def test_a_snapshot_of_the_older_version_is_restored() -> None:
    dedup = DedupSpec(max_boots=2).build()
    t = 1_700_000_000_000
    dedup.restore({"d": {"1": [[0, 5]], "2": [[0, 3], [4, 6]]}}, {"d": t + 100})
    assert dedup.check("d", 1, 3, t) == "duplicate"
    assert dedup.check("d", 2, 3, t) == "new"
    assert dedup.check("d", 3, 0, t + 200) == "new"  # boot 1 goes; its readings were at or before t + 100
    assert dedup.check("d", 1, 0, t + 50) == "stale_boot"
    fresh = DedupSpec().build()
    fresh.restore({"d": {"1": [[0, 5]]}})  # and without any event time: duplicates are still duplicates
    assert fresh.check("d", 1, 4, t) == "duplicate" and fresh.check("d", 1, 5, t) == "new"
