"""Complex event processing: declared patterns compiled to an automaton, matched per key in event time.

Pure and synchronous (no I/O, no asyncio, no wall clock). See ``docs/cep.md``.

>>> from gateway.cep import Cep, CepSpec, Pattern
>>> failed = Pattern.begin("failed").where('status == "FAILED"').at_least(3).within("5m").build("failed_3x")
>>> cep = Cep(CepSpec((failed,)))
"""

from __future__ import annotations

from ._build import CEP_BUILD, COMPILED_MODULES
from .automaton import Automaton, compile_pattern
from .config import parse_pattern, parse_patterns
from .expr import Comparison, ExprError, Ref, parse_condition
from .operator import Cep, CepSpec, Match
from .pattern import SKIP_STRATEGIES, Pattern, PatternError, PatternSpec, StepSpec, validate

__all__ = [
    "CEP_BUILD",
    "COMPILED_MODULES",
    "SKIP_STRATEGIES",
    "Automaton",
    "Cep",
    "CepSpec",
    "Comparison",
    "ExprError",
    "Match",
    "Pattern",
    "PatternError",
    "PatternSpec",
    "Ref",
    "StepSpec",
    "compile_pattern",
    "parse_condition",
    "parse_pattern",
    "parse_patterns",
    "validate",
]
