"""Where librt has no build for the platform (32-bit ARM), the pure engine keeps a sliding window's pane columns in
lists (``gateway/engine/_vecs.py``): the same outputs and snapshots as with ``librt.vecs``."""

from __future__ import annotations

from helpers import run_build

STREAM = r"""
import hashlib, json, random, sys
if sys.argv[1] == "lists":
    sys.modules["librt.vecs"] = None  # importing it fails, as where it is not installed
from gateway.engine import ENGINE_BUILD, Engine, parse_engine
from gateway.engine import operators
from gateway.model import Batch, Reading

T0 = 1_764_072_000_000
cfg = {"windows": [
    {"name": "s", "kind": "sliding", "size": "60s", "slide": "1s", "metrics": ["x", "y", "z"],
     "allowed_lateness": "20s"},
    {"name": "w", "kind": "sliding", "size": "10m", "slide": "5m", "metrics": ["x", "y", "z", "u"]},
]}
rng = random.Random(5)
h = hashlib.sha256()
e = Engine(parse_engine(cfg))
outs = 0
for i in range(3000):
    dev = f"d{i % 5}"
    now = T0 + (i // 5) * 1000 + rng.randrange(1000)
    t = now - rng.choice([0, 0, 0, 300, 2500, 15_000, 45_000])
    names = rng.sample(["x", "y", "z", "u"], rng.randrange(1, 5))
    vals = {m: rng.choice([rng.uniform(-9, 9), -0.0, 1e300]) for m in names}
    r = Reading("a", dev, rng.choice([1, 2000, 0x7FFFFFFF]), i, t, "s", vals)
    for o in e.process_batch(Batch("a", dev, "", now, (r,), ()), now + 5):
        h.update(repr(o).encode())
        outs += 1
    if i % 700 == 699:  # a snapshot, and on from its restore
        snap = json.dumps(e.snapshot(), sort_keys=True)
        h.update(snap.encode())
        e = Engine(parse_engine(cfg))
        e.restore(json.loads(snap))
print(json.dumps({"build": ENGINE_BUILD, "vec": operators.vec.__module__, "outputs": outs, "digest": h.hexdigest()}))
"""


def test_the_pure_engine_without_librt_gives_the_same_outputs() -> None:
    with_librt = run_build("pure", STREAM, "librt")
    lists = run_build("pure", STREAM, "lists")
    assert with_librt["build"].startswith("pure") and lists["build"].startswith("pure")
    assert lists["vec"] == "gateway.engine._vecs" and with_librt["vec"] != "gateway.engine._vecs"
    assert with_librt["outputs"] > 5000
    assert lists["outputs"] == with_librt["outputs"] and lists["digest"] == with_librt["digest"]
