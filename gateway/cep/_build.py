"""Which pattern-matcher modules this process runs: the pure-Python reference or the optional mypyc build.

Imported first by ``gateway.cep``; :func:`gateway._compiled.select` decides (the compiled modules only while
their recorded source hashes match the .py files, and never with ``EDGEKIT_ENGINE=pure``).
"""

from __future__ import annotations

from typing import Final

from .._compiled import COMPILED, select

COMPILED_MODULES: Final = COMPILED[__package__]
"""The hot modules ``scripts/build_compiled.py`` compiles with mypyc (the .py files are the reference)."""

CEP_BUILD: Final = select(__package__)
"""Which build of the pattern matcher this process runs: ``compiled`` (mypyc) or ``pure (...)`` with the reason."""
