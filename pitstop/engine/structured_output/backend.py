"""The grammar backend interface: what the structured-output manager needs of a grammar library.

A backend turns a ``StructuredOutputsParams`` into a compiled grammar (slow, off the engine thread), makes one
matcher per sequence from it (cheap), and fills token bitmasks: ``[rows, ceil(vocab / 32)]`` int32, bit ``j`` of
word ``w`` set when token ``32 * w + j`` may come next (the layout llguidance and xgrammar share). The engine
never imports torch: bitmasks are numpy arrays; the executor applies them to the logits
(``pitstop.model.sampler.apply_token_bitmask_``).
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from pitstop.sampling_params import StructuredOutputsParams

GrammarKey = tuple[str, str, bool]
"""Cache key of a grammar: (kind, compact spec text, disable_any_whitespace)."""


def grammar_key(params: StructuredOutputsParams) -> GrammarKey:
    """The cache key of ``params``: JSON specs re-serialised compactly, so equal schemas share a grammar (keys keep
    their order: the order of ``properties`` is the order the output is generated in).

    Raises:
        ValueError: ``json`` is text that does not parse as JSON.
    """
    kind = params.kind
    spec: Any = getattr(params, kind)
    if kind == "json":
        if isinstance(spec, str):
            try:
                spec = json.loads(spec)
            except json.JSONDecodeError as e:
                raise ValueError(f"structured_outputs.json is not valid JSON: {e}") from None
        text = json.dumps(spec, separators=(",", ":"))
    elif kind == "choice":
        text = json.dumps(list(spec))
    elif kind == "json_object":
        text = ""
    else:
        text = spec
    return kind, text, bool(params.disable_any_whitespace)


class GrammarMatcher(Protocol):
    """The state of one sequence in its grammar."""

    def accept_token(self, token_id: int) -> bool:
        """Advance by one sampled token; False if the grammar rejects it (the matcher is then in error)."""
        ...

    def rollback(self, num_tokens: int) -> None:
        """Undo the last ``num_tokens`` accepted tokens."""
        ...

    def validate_tokens(self, token_ids: list[int]) -> int:
        """How many leading tokens of ``token_ids`` the grammar would accept in a row; the state is unchanged
        (speculative decoding cuts a draft there)."""
        ...

    def is_terminated(self) -> bool:
        """The grammar is complete and accepts no further token (only EOS may follow)."""
        ...

    def error(self) -> str:
        """The matcher's error, or "" when none."""
        ...


class GrammarBackend(Protocol):
    """A grammar library behind pitstop's structured outputs.

    Attributes:
        name: the library's name (logs, errors).
        vocab_size: tokens per bitmask row (the model's vocabulary, logits width).
    """

    name: str
    vocab_size: int

    def validate(self, key: GrammarKey) -> None:
        """Cheap checks the library can make without the tokenizer (run at ``add_request`` on the engine thread).

        Raises:
            ValueError: an invalid or unsupported schema, regex or grammar, naming the field and the feature.
        """
        ...

    def compile(self, key: GrammarKey) -> Any:
        """The compiled grammar of ``key`` (slow: runs in the compile thread pool; thread-safe).

        Raises:
            ValueError: the grammar cannot be compiled.
        """
        ...

    def new_matcher(self, compiled: Any) -> GrammarMatcher:
        """A fresh matcher (initial state) of a compiled grammar (cheap; engine thread)."""
        ...

    def allocate_bitmask(self, rows: int) -> Any:
        """A ``[rows, ceil(vocab_size / 32)]`` int32 numpy array."""
        ...

    def fill_bitmask(self, matchers: list[GrammarMatcher], bitmask: Any) -> None:
        """Write row ``i`` of ``bitmask`` with the tokens ``matchers[i]`` allows next (EOS only when the grammar
        accepts)."""
        ...
