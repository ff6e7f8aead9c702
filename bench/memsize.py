"""``deep_size`` and ``block_size``: the bytes an object graph holds (``gateway/memsize.py`` of this checkout, loaded
by its path, so a benchmark that measures another checkout can import it before that checkout's gateway)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "_edgekit_memsize", Path(__file__).resolve().parent.parent / "gateway" / "memsize.py"
)
assert _spec is not None and _spec.loader is not None
_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_module)
deep_size = _module.deep_size
block_size = _module.block_size

__all__ = ["block_size", "deep_size"]
