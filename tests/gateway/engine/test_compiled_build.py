"""The optional compiled engine (scripts/build_compiled.py) against the pure-Python reference.

The whole engine suite runs with either: ``python -m pytest tests/gateway/engine`` uses the compiled modules
when a matching build exists, ``EDGEKIT_ENGINE=pure python -m pytest tests/gateway/engine`` the .py files.
Here: the build this process loaded is the one ``ENGINE_BUILD`` reports, and - when a compiled build is
present - a fixed stream gives exactly the same outputs and snapshot (floats included) both ways.
"""

from __future__ import annotations

import importlib.machinery

from helpers import run_build, run_compiled

import gateway.engine
from gateway.engine import COMPILED_MODULES, ENGINE_BUILD
from gateway.memsize import block

SCRIPT = r"""
import json, random, sys
from gateway.engine import ENGINE_BUILD, Engine, parse_engine
from gateway.model import Batch, Reading

engine = Engine(parse_engine({"windows": [
    {"name": "t", "kind": "tumbling", "size": "10s", "metrics": ["x", "y"], "allowed_lateness": "5s"},
    {"name": "s", "kind": "sliding", "size": "30s", "slide": "5s", "metrics": ["x", "y"], "allowed_lateness": "5s"},
    {"name": "g", "kind": "session", "gap": "7s", "metrics": ["x"], "allowed_lateness": "3s"},
    {"name": "site", "kind": "tumbling", "size": "20s", "metrics": ["x"], "key": "site"},
    {"name": "te", "kind": "tumbling", "size": "10s", "metrics": ["x", "y"], "early_every": "2s", "early_count": 4},
    {"name": "se", "kind": "sliding", "size": "30s", "slide": "10s", "metrics": ["x"], "early_every": "5s"},
    {"name": "ge", "kind": "session", "gap": "7s", "metrics": ["x"], "allowed_lateness": "3s", "early_count": 2},
]}))
rng = random.Random(7)
T0 = 1_764_072_000_000
out = []
for i in range(3000):
    dev = f"d{rng.randrange(5)}"
    t = T0 + i * 300 - rng.choice([0, 0, 0, 800, 4000, 20000])
    vals = {"x": rng.uniform(-5, 5), "y": rng.randrange(3)} if rng.random() < 0.8 else {"x": rng.uniform(0, 1)}
    r = Reading("a", dev, 1, i, t, "s", vals)
    flushed = t if rng.random() < 0.05 else None
    out += engine.process_batch(Batch("a", dev, "", T0 + i * 300, (r,), (), flushed), T0 + i * 300 + 50)
    if i % 100 == 0:
        out += engine.advance(T0 + i * 300 + 60_000)
    if i % 7 == 0:
        out += engine.on_processing_time(T0 + i * 300 + 100)
lines = [repr(o) + " " + o.to_line() for o in out]  # to_line: emitted_ms too
json.dump({"build": ENGINE_BUILD, "outputs": lines, "snapshot": engine.snapshot()}, sys.stdout)
"""


def test_loaded_modules_are_the_reported_build() -> None:
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    for name in COMPILED_MODULES:
        module = getattr(gateway.engine, name, None) or __import__(f"gateway.engine.{name}", fromlist=["_"])
        compiled = str(module.__file__).endswith(suffixes)
        assert compiled == (ENGINE_BUILD == "compiled"), (name, module.__file__, ENGINE_BUILD)


def test_compiled_engine_gives_identical_outputs() -> None:
    pure = run_build("pure", SCRIPT)
    assert pure["build"] == "pure (EDGEKIT_ENGINE=pure)"
    compiled = run_compiled(SCRIPT)
    if compiled is None:
        # set-up was told not to build it: then the pure engine must be the one in use
        assert ENGINE_BUILD.startswith("pure"), ENGINE_BUILD
        return
    assert compiled["build"] == "compiled"
    assert len(pure["outputs"]) > 1000
    assert compiled["outputs"] == pure["outputs"]
    assert compiled["snapshot"] == pure["snapshot"]


UNTRACKED = r"""
import gc, json, sys
from gateway.engine import ENGINE_BUILD
from gateway.engine.accs import acc_empty, part_empty
from gateway.engine.operators import KeyCell, Panes, WmCell, _SlideKey

panes = Panes(3, 1000, 0)
panes.insert_reading(0, [1.0, None, 2.0], 5, 1, 2)
objs = {
    "WmCell": WmCell(0),
    "KeyCell": KeyCell(0),
    "_SlideKey": _SlideKey(0, panes),
    "Panes": panes,
    "Acc3": acc_empty(3),
    "Part3": part_empty(3),
}
json.dump({"build": ENGINE_BUILD, "tracked": {k: gc.is_tracked(v) for k, v in objs.items()},
           "sizes": {k: sys.getsizeof(v) for k, v in objs.items()}}, sys.stdout)
"""


def test_compiled_cells_panes_and_accumulators_are_not_tracked_by_the_collector() -> None:
    """Compiled, a key's watermark cell and record, its panes, an accumulator and a front stack entry: marked acyclic,
    they carry no garbage collector header (16 bytes each) and its passes never visit them.
    ``WmCell`` had lost its mark when ``key_list`` was written between the decorator and the class (48 bytes
    instead of 32, three a device in bench_state.py)."""
    compiled = run_compiled(UNTRACKED)
    if compiled is None:  # set-up was told not to build it: then the pure engine must be the one in use
        assert ENGINE_BUILD.startswith("pure"), ENGINE_BUILD
        return
    assert compiled["build"] == "compiled"
    names = ["WmCell", "KeyCell", "_SlideKey", "Panes", "Acc3", "Part3"]
    assert compiled["tracked"] == dict.fromkeys(names, False)
    # a sliding key's panes are not tracked either (since 6 December 2026; gateway.memsize reads their columns' buffers
    # and map of accumulators through their attributes). The object is the object header and vtable, four vecs of 16
    # bytes inline, ten ints, the list of accumulators and a bool (192 bytes, 208 with the collector's header): a field
    # more, or a flag word mypyc adds, would show
    sizes = compiled["sizes"]
    assert block(sizes["Panes"]) == 192, sizes
    # a key's record: its watermark and site (40 bytes), and a sliding key's ten fields of state (128 in all)
    assert block(sizes["KeyCell"]) == 48 and block(sizes["_SlideKey"]) == 128, sizes
    # an accumulator of three metrics: the object header, vtable and start, and 12 fields a metric (the boot and seq
    # of its first and last readings in one int each: 14 fields, 368 bytes, until 6 December 2026)
    assert sizes["Acc3"] == 320, sizes
