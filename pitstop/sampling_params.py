"""Sampling parameters of one request, validated at construction (vLLM-compatible names)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


STRUCTURED_OUTPUT_KINDS = ("json", "regex", "choice", "grammar", "json_object")


@dataclass
class StructuredOutputsParams:
    """A constraint on the generated text (vLLM's ``StructuredOutputsParams``): set exactly one kind.

    Attributes:
        json: a JSON Schema (a dict, or its JSON text) the output must validate against.
        regex: a regular expression the whole output must match.
        choice: the output is exactly one of these strings.
        grammar: an EBNF/Lark grammar the output must parse under.
        json_object: any syntactically valid JSON object (OpenAI's ``response_format: json_object``).
        disable_any_whitespace: no free whitespace between JSON tokens (compact output).

    Raises:
        ValueError: not exactly one kind is set, or a kind has the wrong type. Whether a schema, regex or
            grammar is *supported* is decided by the grammar backend when the request is added.
    """

    json: str | dict | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None
    disable_any_whitespace: bool = False

    def __post_init__(self) -> None:
        kinds = [k for k in STRUCTURED_OUTPUT_KINDS if getattr(self, k) not in (None, False)]
        _check(len(kinds) == 1, "structured_outputs",
               f"must set exactly one of {', '.join(STRUCTURED_OUTPUT_KINDS)}; got {kinds or 'none'}")
        _check(self.json is None or isinstance(self.json, (str, dict)), "structured_outputs.json",
               "must be a JSON Schema (dict or JSON text)")
        _check(self.regex is None or isinstance(self.regex, str), "structured_outputs.regex", "must be a string")
        _check(self.grammar is None or isinstance(self.grammar, str), "structured_outputs.grammar",
               "must be a string")
        _check(self.choice is None or (isinstance(self.choice, (list, tuple)) and len(self.choice) > 0
                                       and all(isinstance(c, str) and c for c in self.choice)),
               "structured_outputs.choice", "must be a non-empty list of non-empty strings")

    @property
    def kind(self) -> str:
        """The one kind that is set: ``json``, ``regex``, ``choice``, ``grammar`` or ``json_object``."""
        return next(k for k in STRUCTURED_OUTPUT_KINDS if getattr(self, k) not in (None, False))


@dataclass
class SamplingParams:
    """How to sample the continuation of one prompt.

    Field names and defaults follow vLLM's ``SamplingParams``. Validation runs in
    ``__post_init__``; an invalid value raises ``ValueError`` naming the field and its limit.

    Attributes:
        n: number of completions for the prompt (they share the prompt's KV blocks).
        temperature: softmax temperature; 0 means greedy (argmax).
        top_p: nucleus sampling mass in (0, 1].
        top_k: keep the k most likely tokens; 0 or -1 disables.
        min_p: drop tokens whose probability is below ``min_p`` times the top probability.
        presence_penalty / frequency_penalty: OpenAI penalties on generated tokens, in [-2, 2].
        repetition_penalty: CTRL-style penalty (> 0, 1 disables) on prompt and generated tokens.
        seed: per-request seed; the same seed gives the same samples whatever the batch.
        max_tokens: most tokens to generate (None: up to the model's context length).
        min_tokens: EOS and stop token ids are ignored before this many tokens.
        stop: strings that end generation; the stop string is trimmed from the text.
        stop_token_ids: token ids that end generation (kept in ``token_ids``).
        ignore_eos: keep generating after EOS (benchmarks use it to force output lengths).
        logprobs: number of top log-probabilities to return per generated token (None: none).
        skip_special_tokens: drop special tokens when detokenizing.
        include_stop_str_in_output: keep the matched stop string in the text.
        structured_outputs: constrain the output (JSON Schema, regex, choice, grammar); None: free text.
        speculative: let the engine's speculative decoding draft tokens for this request (when the engine has a
            ``speculative_config``); False opts this request out.
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    max_tokens: int | None = 16
    min_tokens: int = 0
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    logprobs: int | None = None
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    structured_outputs: StructuredOutputsParams | None = None
    speculative: bool = True
    stop_list: list[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        _check(self.stop is None or isinstance(self.stop, (str, list, tuple)), "stop",
               f"must be a string or a list of strings, got {self.stop!r}")
        _check(self.stop_token_ids is None or isinstance(self.stop_token_ids, (list, tuple)),
               "stop_token_ids", f"must be a list of integers, got {self.stop_token_ids!r}")
        if isinstance(self.stop, str):
            self.stop_list = [self.stop]
        else:
            self.stop_list = list(self.stop or [])
        self.stop_token_ids = list(self.stop_token_ids or [])
        if self.top_k == -1:
            self.top_k = 0
        _check(self.structured_outputs is None or isinstance(self.structured_outputs, StructuredOutputsParams),
               "structured_outputs", "must be a StructuredOutputsParams or None")
        self._validate()

    @property
    def greedy(self) -> bool:
        """True when sampling reduces to argmax."""
        return self.temperature < 1e-5 or self.top_k == 1

    def _validate(self) -> None:
        _check(_int(self.n) and self.n >= 1, "n", f"must be an integer >= 1, got {self.n!r}")
        _check(_num(self.temperature) and self.temperature >= 0, "temperature",
               f"must be >= 0, got {self.temperature!r}")
        _check(_num(self.top_p) and 0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p!r}")
        _check(_int(self.top_k) and self.top_k >= 0, "top_k",
               f"must be 0 or -1 (disabled) or a positive integer, got {self.top_k!r}")
        _check(_num(self.min_p) and 0 <= self.min_p <= 1, "min_p", f"must be in [0, 1], got {self.min_p!r}")
        for name in ("presence_penalty", "frequency_penalty"):
            v = getattr(self, name)
            _check(_num(v) and -2 <= v <= 2, name, f"must be in [-2, 2], got {v!r}")
        _check(_num(self.repetition_penalty) and self.repetition_penalty > 0, "repetition_penalty",
               f"must be > 0, got {self.repetition_penalty!r}")
        _check(self.seed is None or _int(self.seed), "seed", f"must be an integer, got {self.seed!r}")
        _check(self.max_tokens is None or (_int(self.max_tokens) and self.max_tokens >= 1),
               "max_tokens", f"must be an integer >= 1, got {self.max_tokens!r}")
        _check(_int(self.min_tokens) and self.min_tokens >= 0, "min_tokens",
               f"must be an integer >= 0, got {self.min_tokens!r}")
        if self.max_tokens is not None and _int(self.min_tokens):
            _check(self.min_tokens <= self.max_tokens, "min_tokens",
                   f"must be <= max_tokens ({self.max_tokens}), got {self.min_tokens}")
        _check(all(isinstance(s, str) and s for s in self.stop_list), "stop", "must be non-empty strings")
        _check(all(_int(t) and t >= 0 for t in self.stop_token_ids), "stop_token_ids",
               "must be non-negative integers")
        _check(self.logprobs is None or (_int(self.logprobs) and 0 <= self.logprobs <= 20),
               "logprobs", f"must be an integer in [0, 20], got {self.logprobs!r}")


def _num(v: object) -> bool:
    """A finite int or float (not bool, NaN or infinity)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int(v: object) -> bool:
    """An int that is not a bool."""
    return isinstance(v, int) and not isinstance(v, bool)


def _check(ok: bool, name: str, msg: str) -> None:
    if not ok:
        raise ValueError(f"SamplingParams.{name} {msg}")
