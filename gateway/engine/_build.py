"""Which engine modules this process runs: the pure-Python reference or the optional mypyc build.

``scripts/build_compiled.py`` compiles :data:`COMPILED_MODULES` into extension modules next to their
sources; Python's import system would then always prefer them. This module, imported first by
``gateway.engine``, decides: the compiled modules are used only if their recorded source hashes still match
the .py files (a stale build warns and is ignored) and ``EDGEKIT_ENGINE`` is not ``pure``; otherwise a
meta-path finder makes the .py files load. ``EDGEKIT_ENGINE=compiled`` makes a missing build an error.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Final

COMPILED_MODULES: Final = ("aggregates", "accs", "windows", "outputs", "operators", "engine")
"""The hot modules ``scripts/build_compiled.py`` compiles with mypyc (the .py files are the reference)."""

_HERE = Path(__file__).resolve().parent


def _compiled_state() -> str:
    """``compiled`` if a compiled build matching these sources exists and is wanted, else why not."""
    want = os.environ.get("EDGEKIT_ENGINE", "")
    if want == "pure":
        return "pure (EDGEKIT_ENGINE=pure)"
    try:
        stamp = json.loads((_HERE / "_compiled.json").read_text())
    except (OSError, ValueError):
        return "pure (no compiled build)"
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    current = {m: hashlib.sha256((_HERE / f"{m}.py").read_bytes()).hexdigest() for m in COMPILED_MODULES}
    if stamp.get("python") != sys.implementation.cache_tag or stamp.get("sources") != current:
        reason = "pure (compiled build is stale: rebuild with scripts/build_compiled.py)"
    elif not all((_HERE / f"{m}{suffix}").exists() for m in COMPILED_MODULES):
        reason = "pure (compiled build incomplete)"
    else:
        return "compiled"
    if want == "compiled":
        raise ImportError(f"EDGEKIT_ENGINE=compiled but the engine is {reason}")
    if "stale" in reason:
        warnings.warn(f"gateway.engine: {reason}", RuntimeWarning, stacklevel=2)
    return reason


class _PureFinder(importlib.abc.MetaPathFinder):
    """Imports the .py source of the compiled modules even where an extension module sits next to it."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        package, _, name = fullname.rpartition(".")
        if package != __package__ or name not in COMPILED_MODULES:
            return None
        return importlib.util.spec_from_file_location(fullname, _HERE / f"{name}.py")


ENGINE_BUILD = _compiled_state()
"""Which engine this process runs: ``compiled`` (mypyc) or ``pure (...)`` with the reason."""
if ENGINE_BUILD != "compiled":
    sys.meta_path.insert(0, _PureFinder())
