from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.dedup import DedupSpec

ids = st.tuples(st.sampled_from(["a", "b"]), st.integers(0, 3), st.integers(0, 60))


@given(st.lists(ids, max_size=300))
def test_matches_a_set(stream: list[tuple[str, int, int]]) -> None:
    dedup = DedupSpec().build()
    seen: set[tuple[str, int, int]] = set()
    for key in stream:
        assert dedup.check_and_add(*key) == (key not in seen)
        seen.add(key)
    for key in seen:
        assert dedup.seen(*key)


@given(st.lists(ids, max_size=200), st.integers(0, 200))
def test_snapshot_restore_round_trip(stream: list[tuple[str, int, int]], cut: int) -> None:
    whole = DedupSpec().build()
    expected = [whole.check_and_add(*k) for k in stream]
    first = DedupSpec().build()
    got = [first.check_and_add(*k) for k in stream[:cut]]
    second = DedupSpec().build()
    second.restore(first.snapshot())
    got += [second.check_and_add(*k) for k in stream[cut:]]
    assert got == expected


def test_memory_grows_with_gaps_not_readings() -> None:
    dedup = DedupSpec().build()
    for seq in range(100_000):
        dedup.check_and_add("d", 1, seq)
    assert dedup.state["d"][1] == [[0, 100_000]]


def test_bounds_forget_rather_than_lose() -> None:
    dedup = DedupSpec(max_boots=2, max_ranges=3).build()
    for seq in (0, 2, 4, 6):  # four separate ranges, the bound is three
        assert dedup.check_and_add("d", 1, seq)
    assert dedup.forgotten == 1
    assert dedup.check_and_add("d", 1, 0)  # forgotten: accepted again (a possible duplicate, never a loss)
    assert not dedup.check_and_add("d", 1, 6)
    for boot in (2, 3):
        dedup.check_and_add("d", boot, 0)
    assert sorted(dedup.state["d"]) == [2, 3]
    assert dedup.check_and_add("d", 1, 6)  # its boot was forgotten
