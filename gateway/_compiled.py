"""Which build of a package's hot modules this process runs: the pure-Python reference or the optional mypyc one.

``scripts/build_compiled.py`` compiles the modules of :data:`COMPILED` (the window engine's, the anomaly
detector's, the pattern matcher's and line protocol's) into extension modules next to their sources; Python's
import system would then always prefer them. :func:`select`, called by each package's ``_build`` module (by
``gateway/__init__.py`` for line protocol's) before the package imports them, decides: the compiled modules are
used only if the package's recorded source hashes (``<package>/_compiled.json``) still match the .py files (a
stale build warns and is ignored) and ``EDGEKIT_ENGINE`` is not ``pure``; otherwise a meta-path finder makes the
.py files load. ``EDGEKIT_ENGINE=compiled`` makes a missing build an error. Each package decides for itself: a
stale engine build does not turn the anomaly detector's or the pattern matcher's off.
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

COMPILED: Final[dict[str, tuple[str, ...]]] = {
    "gateway.engine": ("aggregates", "accs", "windows", "outputs", "operators", "fleet", "engine"),
    "gateway.anomaly": ("detector", "multivariate", "engine"),
    "gateway.cep": ("expr", "automaton", "operator"),
    "gateway": ("lineproto", "points"),
}
"""Package -> the hot modules ``scripts/build_compiled.py`` compiles with mypyc (the .py files are the reference).
``gateway`` itself: line protocol, rendered for every reading (:data:`gateway.LINES_BUILD` says which build)."""

STAMP: Final = "_compiled.json"
"""The file, in each package, with the Python tag and the sha256 of each compiled module's source."""

_ROOT = Path(__file__).resolve().parent


def package_dir(package: str) -> Path:
    """The folder of ``package`` (``gateway.engine`` -> ``.../gateway/engine``)."""
    return _ROOT.joinpath(*package.split(".")[1:])


def source_hashes(package: str) -> dict[str, str]:
    """The sha256 of the source of each of the package's compiled modules, as the build records them."""
    here = package_dir(package)
    return {m: hashlib.sha256((here / f"{m}.py").read_bytes()).hexdigest() for m in COMPILED[package]}


def state(package: str, strict: bool = True) -> str:
    """``compiled`` if a compiled build of ``package`` matching its sources exists and is wanted, else
    ``pure (why)``; with ``EDGEKIT_ENGINE=compiled`` and no such build, ``ImportError`` when ``strict``."""
    want = os.environ.get("EDGEKIT_ENGINE", "")
    if want == "pure":
        return "pure (EDGEKIT_ENGINE=pure)"
    here = package_dir(package)
    try:
        stamp = json.loads((here / STAMP).read_text())
    except (OSError, ValueError):
        reason = "pure (no compiled build)"
    else:
        suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
        if stamp.get("python") != sys.implementation.cache_tag or stamp.get("sources") != source_hashes(package):
            reason = "pure (compiled build is stale: rebuild with scripts/build_compiled.py)"
        elif not all((here / f"{m}{suffix}").exists() for m in COMPILED[package]):
            reason = "pure (compiled build incomplete)"
        else:
            return "compiled"
    if want == "compiled" and strict:
        raise ImportError(f"EDGEKIT_ENGINE=compiled but {package} is {reason}")
    if "stale" in reason:
        warnings.warn(f"{package}: {reason}", RuntimeWarning, stacklevel=3)
    return reason


class _PureFinder(importlib.abc.MetaPathFinder):
    """Imports the .py source of a package's compiled modules even where an extension module sits next to it."""

    def __init__(self, package: str) -> None:
        self.package = package
        self.modules = COMPILED[package]
        self.here = package_dir(package)

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        package, _, name = fullname.rpartition(".")
        if package != self.package or name not in self.modules:
            return None
        return importlib.util.spec_from_file_location(fullname, self.here / f"{name}.py")


def select(package: str, strict: bool = True) -> str:
    """Decide which build of ``package``'s compiled modules is imported (before any of them is) and say which:
    ``compiled`` (mypyc) or ``pure (...)`` with the reason. Not ``strict`` (``gateway`` itself, whose import
    every module and script goes through, ``scripts/build_compiled.py`` too): ``EDGEKIT_ENGINE=compiled`` without
    its build imports the .py files and says why, where a package raises ``ImportError``."""
    build = state(package, strict)
    if build != "compiled":
        sys.meta_path.insert(0, _PureFinder(package))
    return build
