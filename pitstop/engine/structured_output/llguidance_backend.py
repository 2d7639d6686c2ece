"""The grammar backend: llguidance (Microsoft's guidance, Rust; https://github.com/guidance-ai/llguidance).

Why llguidance rather than xgrammar (issue 15 asked to measure both; ``benchmarks/structured_outputs_backends.py``,
figures in ``benchmarks/README.md``): on SmolLM2's 49,152-token vocabulary and 20 tool schemas, llguidance compiles
a schema in 0.7 ms p50 / 2.5 ms p99 against xgrammar's 7 ms / 32 ms (agents send a new tool list with nearly every
request, so compile time is paid often), and its per-token mask costs 21 us p50 / 41 us mean against xgrammar's
2 us / 6 us -- both far below a decode step here (tens of ms). llguidance has no dependencies and fills numpy
bitmasks, so it fits the rule that the engine never imports torch; xgrammar imports torch at import time and
requires triton and transformers. llguidance also refuses JSON Schema keywords it does not implement
(``lenient`` off) instead of ignoring them, drops the GIL while it builds a grammar, and its matchers roll back.

A compiled grammar is a pristine ``LLMatcher`` (the grammar parsed, lexer and parser built); each sequence gets a
``deep_copy`` of it.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import llguidance
import llguidance.numpy as llnp

from pitstop.engine.structured_output.backend import GrammarKey
from pitstop.tools.json_schema import check_json_schema

_FIELD = {"json": "structured_outputs.json", "json_object": "structured_outputs.json_object",
          "regex": "structured_outputs.regex", "choice": "structured_outputs.choice",
          "grammar": "structured_outputs.grammar"}
_WHAT = {"json": "JSON Schema", "json_object": "JSON Schema", "regex": "regex", "choice": "choice",
         "grammar": "grammar"}


class LLGuidanceMatcher:
    """One sequence's ``LLMatcher``."""

    __slots__ = ("m",)

    def __init__(self, m: llguidance.LLMatcher) -> None:
        self.m = m

    def accept_token(self, token_id: int) -> bool:
        return self.m.consume_token(token_id)

    def rollback(self, num_tokens: int) -> None:
        self.m.rollback(num_tokens)

    def validate_tokens(self, token_ids: list[int]) -> int:
        return self.m.validate_tokens(token_ids)

    def is_terminated(self) -> bool:
        return self.m.is_stopped()

    def error(self) -> str:
        return self.m.get_error()


class LLGuidanceBackend:
    """Structured outputs on llguidance.

    Args:
        tokenizer: a Hugging Face *fast* tokenizer (its Rust ``backend_tokenizer`` is serialised for llguidance;
            transformers itself is not imported here).
        vocab_size: the model's vocabulary (logits width; may exceed the tokenizer's).
        eos_token_ids: every EOS id of the model; each is allowed once the grammar accepts.

    Raises:
        ValueError: the tokenizer is not a fast tokenizer.
    """

    name = "llguidance"

    def __init__(self, tokenizer: Any, vocab_size: int, eos_token_ids: frozenset[int]) -> None:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise ValueError("structured outputs need a fast (Rust) Hugging Face tokenizer")
        self._hf_backend = backend
        self.vocab_size = int(vocab_size)
        self._eos = sorted(eos_token_ids) or [tokenizer.eos_token_id]
        self._lltok: llguidance.LLTokenizer | None = None
        self._lock = threading.Lock()

    # ---- validation (engine thread) -----------------------------------------------------------------------------
    def validate(self, key: GrammarKey) -> None:
        """Raises ``ValueError`` naming the field when llguidance rejects the grammar (no tokenizer needed, < 2 ms
        for the tool schemas measured)."""
        kind = key[0]
        if kind == "json":
            check_json_schema(json.loads(key[1]), _FIELD[kind])
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(self._grammar(key))
        if is_error:
            raise ValueError(f"{_FIELD[kind]}: unsupported or invalid {_WHAT[kind]}: {messages[0].strip()}")

    # ---- compile (worker threads) -------------------------------------------------------------------------------
    def compile(self, key: GrammarKey) -> llguidance.LLMatcher:
        m = llguidance.LLMatcher(self._tokenizer(), self._grammar(key), log_level=0)
        if m.is_error():
            raise ValueError(f"{_FIELD[key[0]]}: {_WHAT[key[0]]} does not compile: {m.get_error().strip()}")
        return m

    def _tokenizer(self) -> llguidance.LLTokenizer:
        """The llguidance tokenizer, built once (about 0.6 s for SmolLM2's) in the first compile."""
        with self._lock:
            if self._lltok is None:
                tok = self._hf_backend.__class__.from_str(self._hf_backend.to_str())  # a copy
                tok.no_padding()
                tok.no_truncation()
                self._lltok = llguidance.LLTokenizer(tok.to_str(), n_vocab=self.vocab_size, eos_token=self._eos)
            return self._lltok

    @staticmethod
    def _grammar(key: GrammarKey) -> str:
        kind, text, compact = key
        if kind in ("json", "json_object"):
            schema = text if kind == "json" else '{"type": "object"}'
            return llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=_json_options(compact))
        if kind == "regex":
            return llguidance.LLMatcher.grammar_from_regex(text)
        if kind == "choice":
            return llguidance.LLMatcher.grammar_from_lark(
                "start: " + " | ".join(json.dumps(c) for c in json.loads(text)))
        if "::=" in text:  # GBNF (llama.cpp's EBNF) -> Lark
            from llguidance.gbnf_to_lark import gbnf_to_lark
            try:
                text = gbnf_to_lark(text)
            except Exception as e:  # noqa: BLE001 - the converter raises its own error types
                raise ValueError(f"structured_outputs.grammar: EBNF grammar does not parse: {e}") from None
        return llguidance.LLMatcher.grammar_from_lark(text)

    # ---- per sequence (engine thread) ---------------------------------------------------------------------------
    def new_matcher(self, compiled: llguidance.LLMatcher) -> LLGuidanceMatcher:
        return LLGuidanceMatcher(compiled.deep_copy())

    def allocate_bitmask(self, rows: int) -> Any:
        return llnp.allocate_token_bitmask(rows, self.vocab_size)

    def fill_bitmask(self, matchers: list[LLGuidanceMatcher], bitmask: Any) -> None:
        for i, m in enumerate(matchers):
            llnp.fill_next_token_bitmask(m.m, bitmask, i)


def _json_options(compact: bool) -> dict[str, Any]:
    """llguidance's JSON options: unimplemented keywords are errors (``lenient`` off, the default, kept explicit);
    ``compact`` (``disable_any_whitespace``) forbids free whitespace."""
    opts: dict[str, Any] = {"lenient": False}
    if compact:
        opts["whitespace_flexible"] = False
    return opts
