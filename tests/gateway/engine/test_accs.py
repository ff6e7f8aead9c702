"""Accumulators (``gateway/engine/accs.py``): each metric of an ``Acc`` behaves exactly as a ``Stat``.

``Acc1`` ... ``Acc4`` are written by ``scripts/gen_accs.py`` with the code of ``Stat`` inlined per metric;
``AccN`` keeps one ``Stat`` per metric. Over random sequences of adds (with and without variance, with
missing values and ties in time), copies and merges, every metric of every width must hold what a ``Stat``
given the same operations holds, to the bit, and snapshot as it would.
"""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.engine.accs import Acc, Acc1, Acc2, Acc3, Acc4, AccN, acc_empty, acc_from_json, part_empty
from gateway.engine.aggregates import Stat

ROOT = Path(__file__).resolve().parents[3]

value = st.one_of(st.none(), st.floats(-1e6, 1e6, allow_nan=False), st.sampled_from([0.0, -0.0, 1.5]))
stamp = st.tuples(st.integers(0, 6), st.integers(0, 2), st.integers(0, 3))  # (t, boot, seq): many ties


def _ops(value: st.SearchStrategy[float | None]) -> st.SearchStrategy[tuple[object, ...]]:
    return st.one_of(
        st.tuples(st.just("add"), st.integers(0, 2), st.booleans(), stamp, st.lists(value, min_size=6, max_size=6)),
        st.tuples(st.just("merge"), st.integers(0, 2), st.integers(0, 2)),
        st.tuples(st.just("set"), st.integers(0, 2), st.integers(0, 2)),
        st.tuples(st.just("clear"), st.integers(0, 2)),
        st.tuples(st.just("one"), st.integers(0, 2), stamp, st.lists(value, min_size=4, max_size=4)),
    )


op = _ops(value)
# values that tie often, -0.0 against 0.0 too: a merge that takes the other's min or max on a tie changes a bit
tied = _ops(st.one_of(st.none(), st.sampled_from([0.0, -0.0, 1.5])))


def stat_fields(x: Stat) -> str:
    return repr((x.n, x.total, x.lo, x.hi, x.mean, x.m2, x.ft, x.fb, x.fs, x.fv, x.lt, x.lb, x.ls, x.lv))


def as_stat(acc: Acc, i: int) -> Stat:
    r = Stat()
    acc.put(i, r)
    return r


def _apply(accs: list[Acc], refs: list[list[Stat]], o: tuple[object, ...]) -> None:
    """One operation on the accumulators and the same on their reference Stats."""
    width = len(refs[0])
    kind = o[0]
    if kind == "add":
        _, j, var, (t, b, s), vals = o
        values = list(vals)[:width]  # type: ignore[call-overload]
        (accs[j].add_var if var else accs[j].add)(values, t, b, s)  # type: ignore[index]
        for i, v in enumerate(values):
            if v is not None:
                (refs[j][i].add_var if var else refs[j][i].add)(v, t, b, s)  # type: ignore[index]
    elif kind == "merge":
        _, j, k = o
        if j != k:
            accs[j].merge_from(accs[k])  # type: ignore[index]
            for i in range(width):
                refs[j][i].merge_from(refs[k][i])  # type: ignore[index]
    elif kind == "set":
        _, j, k = o
        accs[j].set(accs[k])  # type: ignore[index]
        for i in range(width):
            refs[j][i].set(refs[k][i])  # type: ignore[index]
    elif kind == "one":  # merge in the accumulator of one reading of up to four metrics, without making it
        _, j, (t, b, s), vals = o
        vs = [0.0 if v is None else v for v in vals]  # type: ignore[attr-defined]
        mask = sum(1 << i for i, v in enumerate(vals) if v is not None and i < width)  # type: ignore[arg-type]
        accs[j].merge_reading(mask, vs[0], vs[1], vs[2], vs[3], t, b, s)  # type: ignore[index]
        for i in range(min(width, 4)):
            if mask & (1 << i):
                one = Stat()
                one.add(vs[i], t, b, s)
                refs[j][i].merge_from(one)  # type: ignore[index]
    else:
        accs[o[1]].clear()  # type: ignore[index]
        for x in refs[o[1]]:  # type: ignore[index]
            x.clear()


def _same(accs: list[Acc], refs: list[list[Stat]]) -> None:
    for acc, ref in zip(accs, refs, strict=True):
        for i in range(len(ref)):
            assert acc.count(i) == ref[i].n
            assert stat_fields(as_stat(acc, i)) == stat_fields(ref[i])
            base, want = Stat(), Stat()  # merge_put into a Stat with values, as Stat.merge_from
            for x in (base, want):
                x.add_var(3.0, 2, 1, 1)
                x.add_var(-7.5, 40, 0, 2)
            acc.merge_put(i, base)
            want.merge_from(ref[i])
            assert stat_fields(base) == stat_fields(want)


def test_factory_picks_the_class_for_the_width() -> None:
    assert [type(acc_empty(k)) for k in range(1, 7)] == [Acc1, Acc2, Acc3, Acc4, AccN, AccN]


def test_generated_module_is_what_the_script_writes() -> None:
    spec = importlib.util.spec_from_file_location("gen_accs", ROOT / "scripts" / "gen_accs.py")
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    same = (ROOT / "gateway" / "engine" / "accs.py").read_text() == gen.generate()
    assert same, "gateway/engine/accs.py is not what scripts/gen_accs.py writes: run python scripts/gen_accs.py"


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 6), st.lists(st.one_of(op, tied), min_size=10, max_size=40))
def test_every_metric_of_an_acc_is_a_stat(width: int, ops: list[tuple[object, ...]]) -> None:
    accs = [acc_empty(width) for _ in range(3)]
    refs = [[Stat() for _ in range(width)] for _ in range(3)]
    for o in ops:
        _apply(accs, refs, o)
    for acc, ref in zip(accs, refs, strict=True):
        for i in range(width):
            assert acc.count(i) == ref[i].n
            assert stat_fields(as_stat(acc, i)) == stat_fields(ref[i])
        flat = acc.to_json()
        assert flat == [f for x in ref for f in x.to_json()]  # the snapshot form of a tuple of Stats
        again = acc_from_json(flat)
        assert type(again) is type(acc) and again.to_json() == flat
    _same(accs, refs)


@pytest.mark.parametrize("far_share", [0.0, 0.1])
@pytest.mark.parametrize("width", range(1, 7))
def test_long_random_runs_of_every_width(width: int, far_share: float) -> None:
    """Many operations per accumulator, so that merges of unequal counts, long first/last contests and
    copies of merged accumulators all happen (short hypothesis examples mostly merge one value into one)."""
    rng = random.Random(width * 10 + int(far_share * 10))
    accs = [acc_empty(width) for _ in range(3)]
    refs = [[Stat() for _ in range(width)] for _ in range(3)]
    for step in range(3000):
        u = rng.random()
        if u < 0.8:
            # mostly close values (merges where one side's min or max beats the other's by a little) and ties,
            # some far ones; few distinct (t, boot, seq), so first/last see exact ties too
            far = rng.random() < far_share
            vals = [
                None if rng.random() < 0.15 else rng.uniform(-1e3, 1e3) if far else round(rng.uniform(0, 3), 2)
                for _ in range(6)
            ]
            stamp = (rng.randrange(20), rng.randrange(2), rng.randrange(3))
            o: tuple[object, ...] = ("add", rng.randrange(3), rng.random() < 0.8, stamp, vals)
        elif u < 0.93:
            o = ("merge", rng.randrange(3), rng.randrange(3))
        elif u < 0.98:
            o = ("set", rng.randrange(3), rng.randrange(3))
        else:
            o = ("clear", rng.randrange(3))
        _apply(accs, refs, o)
        if step % 50 == 0:
            _same(accs, refs)
    _same(accs, refs)


def _kept(x: Stat) -> str:
    """What a front stack entry keeps of a metric, as text: -0.0 and 0.0 told apart (the bits, not ``==``)."""
    return repr((x.n, x.total, x.lo, x.hi, x.mean, x.m2))


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 6), st.lists(st.one_of(op, tied), min_size=10, max_size=40))
def test_a_front_entry_merges_as_its_accumulator_to_the_bit(width: int, ops: list[tuple[object, ...]]) -> None:
    """A sliding window's front stack entry or back (``Part``) is merged into directly (``merge_acc``,
    ``merge_reading``, ``copy``, ``clear``) and into a result (``merge_put``): each kept field must be what the
    accumulator's own merge gives, bit for bit, whatever the operations before (the stacks' aggregates are made this
    way, and the outputs must not depend on it)."""
    accs = [acc_empty(width) for _ in range(3)]
    refs = [[Stat() for _ in range(width)] for _ in range(3)]
    parts = [part_empty(width) for _ in range(3)]
    for o in ops:
        kind = o[0]
        if kind == "merge" and o[1] != o[2]:
            parts[o[1]].merge_acc(accs[o[2]])  # type: ignore[index]
        elif kind == "set":
            parts[o[1]].copy(parts[o[2]])  # type: ignore[index]
        elif kind == "clear":
            parts[o[1]].clear()  # type: ignore[index]
        elif kind == "one":
            _, j, _stamp, vals = o
            vs = [0.0 if v is None else v for v in vals]  # type: ignore[attr-defined]
            mask = sum(1 << i for i, v in enumerate(vals) if v is not None and i < width)  # type: ignore[arg-type]
            parts[j].merge_reading(mask, vs[0], vs[1], vs[2], vs[3])  # type: ignore[index]
        _apply(accs, refs, o)
        if kind == "add":  # no such merge into a Part: it takes the result
            parts[o[1]].take(accs[o[1]])  # type: ignore[index]
    for acc, part in zip(accs, parts, strict=True):
        for i in range(width):
            r = Stat()
            part.put(i, r)
            assert part.count(i) == acc.count(i)
            assert _kept(r) == _kept(as_stat(acc, i))
            for fresh in (True, False):  # merged into a result, as a window's back is: as the accumulator merges
                got, want = Stat(), Stat()
                if not fresh:
                    for x in (got, want):
                        x.add_var(3.0, 2, 1, 1)
                        x.add_var(-0.0, 40, 0, 2)
                part.merge_put(i, got)
                acc.merge_put(i, want)
                assert _kept(got) == _kept(want)
