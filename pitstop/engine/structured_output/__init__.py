"""Structured outputs (issue 15): grammar-constrained decoding, one bitmask per step for the constrained rows.

One concept per file: ``backend.py`` (what a grammar library must provide, the cache key),
``llguidance_backend.py`` (the library chosen, and why), ``compile_cache.py`` (compiles off the engine thread,
cached by grammar), ``request_grammar.py`` (one sequence's state), ``manager.py`` (the engine's side: validate,
attach, poll, bitmask, accept).
"""

from pitstop.engine.structured_output.manager import StructuredOutputManager

__all__ = ["StructuredOutputManager"]
