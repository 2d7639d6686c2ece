"""Engine configuration: one dataclass gathering model, cache and scheduler settings."""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass, fields
from typing import Any

_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "ki": 2**10, "mi": 2**20, "gi": 2**30}


DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
"""Bytes per element of the KV cache in each concrete dtype."""
QUANTIZATIONS = ("none", "int8", "gguf")  # EngineConfig.quantization


def kv_cache_num_blocks(kv_cache_memory: int | float | str, bytes_per_token: int, block_size: int) -> int:
    """KV blocks that ``kv_cache_memory`` (bytes, or e.g. ``"64MiB"``) holds, at ``bytes_per_token`` (K and V of
    all layers, in the cache's dtype) and ``block_size`` tokens per block. The one computation behind the real
    engine's cache (``ModelRunner``) and the simulator's.

    Raises:
        ValueError: unparsable memory, or not even one block.
    """
    memory = parse_bytes(kv_cache_memory)
    per_block = bytes_per_token * block_size
    n = int(memory // per_block)
    if n < 1:
        raise ValueError(f"kv_cache_memory={memory} B holds no KV block (one block of {block_size} tokens needs "
                         f"{per_block} B)")
    return n


def parse_bytes(value: int | float | str) -> int:
    """Parse a memory size: an int (bytes) or a string like ``"512MiB"``, ``"2GiB"``, ``"1.5GB"``.

    Raises:
        ValueError: unparsable or not positive.
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        n = int(value)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(value))
        if not m or m.group(2).lower() not in _UNITS:
            raise ValueError(f"kv_cache_memory: cannot parse {value!r} (use bytes or e.g. '512MiB', '2GiB')")
        n = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if n <= 0:
        raise ValueError(f"kv_cache_memory must be > 0 bytes, got {value!r}")
    return n


SPEC_METHODS = ("suffix", "ngram", "simulated")
"""Speculative-decoding proposers: ``suffix`` (SuffixDecoding), ``ngram`` (prompt lookup), ``simulated`` (the
simulator's: K placeholder drafts whose acceptance a model decides)."""


@dataclass
class SpeculativeConfig:
    """Speculative decoding (vLLM's ``speculative_config``): a proposer drafts up to ``num_speculative_tokens``
    tokens per running sequence, verified in the next step's forward with the other requests.

    Attributes:
        method: "suffix" (SuffixDecoding, Oliaro et al., arXiv 2411.04975), "ngram" (prompt lookup) or "simulated"
            (the simulator only).
        num_speculative_tokens: most draft tokens per sequence and step (K).
        prompt_lookup_min / prompt_lookup_max: n-gram lengths tried by ``ngram``, longest first.
        suffix_max_tree_depth: deepest suffix-tree path (tokens) of ``suffix``; also the context it matches.
        suffix_max_cached_requests: past outputs kept in the global suffix tree (oldest evicted first).
        suffix_max_spec_factor / suffix_max_spec_offset: ``suffix`` drafts at most ``factor * match_length +
            offset`` tokens (the paper's adaptive speculation length).
        suffix_min_token_prob: ``suffix`` stops a draft where the tree's estimated probability (count of the child
            over count of the node, multiplied along the path) falls below this.
        suffix_backend: the suffix trees of ``suffix``: "arctic" (the ``arctic-inference`` package), "python"
            (pitstop's own, pure Python) or "auto" (arctic when installed).
        acceptance_rate: ``simulated`` only: probability that each draft position is accepted (given the previous
            one was), the simulator's acceptance model.
        draft_budget: "goodput" (default): verify only the draft tokens that raise the step's expected tokens per
            second, from the learned step time and acceptance rates (SmartSpec, arXiv 2406.14066;
            ``pitstop.engine.spec_decode.draft_budget``); "none": verify every proposed draft token.
        disable_by_batch_size: no drafts while more than this many requests run (vLLM's key; None: no limit).

    Raises:
        ValueError: an unknown method or key, or a value out of range.
    """

    method: str = "ngram"
    num_speculative_tokens: int = 8
    prompt_lookup_min: int = 2
    prompt_lookup_max: int = 5
    suffix_max_tree_depth: int = 64
    suffix_max_cached_requests: int = 10000
    suffix_max_spec_factor: float = 1.0
    suffix_max_spec_offset: float = 0.0
    suffix_min_token_prob: float = 0.1
    suffix_backend: str = "auto"
    acceptance_rate: float = 0.7
    draft_budget: str = "goodput"
    disable_by_batch_size: int | None = None

    def __post_init__(self) -> None:
        if self.method not in SPEC_METHODS:
            raise ValueError(f"speculative_config.method must be one of {', '.join(SPEC_METHODS)}, "
                             f"got {self.method!r}")
        if not isinstance(self.num_speculative_tokens, int) or not 1 <= self.num_speculative_tokens <= 64:
            raise ValueError(f"speculative_config.num_speculative_tokens must be an integer in [1, 64], "
                             f"got {self.num_speculative_tokens!r}")
        if not 1 <= self.prompt_lookup_min <= self.prompt_lookup_max:
            raise ValueError(f"speculative_config: need 1 <= prompt_lookup_min ({self.prompt_lookup_min}) <= "
                             f"prompt_lookup_max ({self.prompt_lookup_max})")
        if not 1 <= self.suffix_max_tree_depth <= 1024:
            raise ValueError(f"speculative_config.suffix_max_tree_depth must be in [1, 1024], "
                             f"got {self.suffix_max_tree_depth}")
        if self.suffix_max_cached_requests < 0:
            raise ValueError(f"speculative_config.suffix_max_cached_requests must be >= 0, "
                             f"got {self.suffix_max_cached_requests}")
        if self.suffix_backend not in ("auto", "arctic", "python"):
            raise ValueError(f"speculative_config.suffix_backend must be auto, arctic or python, "
                             f"got {self.suffix_backend!r}")
        if self.draft_budget not in ("goodput", "none"):
            raise ValueError(f"speculative_config.draft_budget must be goodput or none, got {self.draft_budget!r}")
        if self.disable_by_batch_size is not None and (
                not isinstance(self.disable_by_batch_size, int) or self.disable_by_batch_size < 1):
            raise ValueError(f"speculative_config.disable_by_batch_size must be an integer >= 1 or null, "
                             f"got {self.disable_by_batch_size!r}")
        if not 0 <= self.suffix_min_token_prob <= 1 or not 0 <= self.acceptance_rate <= 1:
            raise ValueError("speculative_config: suffix_min_token_prob and acceptance_rate must be in [0, 1]")

    @classmethod
    def parse(cls, value: "SpeculativeConfig | dict[str, Any] | None") -> "SpeculativeConfig | None":
        """A config from a dict (vLLM's keys; ``prompt_lookup_*`` and ``suffix_*`` extras), passed through if
        already one; None stays None.

        Raises:
            ValueError: not a dict, an unknown key, or an invalid value.
        """
        if value is None or isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"speculative_config must be a dict (JSON object), got {type(value).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"speculative_config: unknown key(s) {unknown}; known: {sorted(known)}")
        if "method" not in value:
            raise ValueError("speculative_config needs a 'method' (suffix or ngram)")
        return cls(**value)


def speculative_config_arg(text: str) -> dict:
    """``--speculative-config``: a JSON object (vLLM's flag), e.g. ``{"method": "suffix", "num_speculative_tokens":
    16}``; checked by :class:`SpeculativeConfig`.

    Raises:
        argparse.ArgumentTypeError: not JSON, not an object, or an invalid config (unknown method or key).
    """
    try:
        value = json.loads(text)
        SpeculativeConfig.parse(value)
    except (json.JSONDecodeError, ValueError, TypeError) as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return value


@dataclass
class EngineConfig:
    """Everything needed to build an engine.

    Attributes:
        model: HF folder, .gguf file, or a known name (``SmolLM2-135M-Instruct``).
        dtype: "auto" (default: bfloat16 where this CPU computes it natively, AMX or AVX512-BF16 as a
            probe at load confirms; float32 elsewhere), "bfloat16" or "float32". Resolved by the model
            runner (``pitstop.model.cpu_features.choose_kernels``), not here.
        kv_cache_memory: bytes for the KV cache (int or a string like "1GiB").
        block_size: tokens per KV block.
        max_model_len: context limit in tokens (None: the model's, capped at 8192).
        max_num_seqs: most requests per step.
        max_num_batched_tokens: token budget per step.
        enable_prefix_caching / enable_chunked_prefill: features on by default.
        scheduling_policy: ordering policy name ("fcfs", "program-fcfs", "plas", "priority").
        ttl_policy: KV pin policy between a program's turns ("none", "fixed", "continuum").
        ttl_seconds: the fixed TTL, or the continuum policy's upper bound (seconds).
        attention_backend: "cpu" (default: decodes read the paged KV in place with pitstop's C++ kernel, built once
            per machine; the "torch" path where it cannot be built or ``PITSTOP_PORTABLE`` is set) or "torch"
            (plain PyTorch ops: gather the blocks, then SDPA).
        quantization: "none", "int8" (weight-only int8 linears, a scale per 32 weights;
            ``pitstop.model.int8_linear``) or "gguf" (a GGUF model's Q4_0 / Q4_1 / Q8_0 blocks kept as the file
            has them instead of dequantized; ``pitstop.model.gguf_linear``; the model must be a .gguf file or a
            known GGUF name).
        compile: run the decoder's dense parts through ``torch.compile`` (Inductor; falls back to eager when no
            C++ compiler exists or compilation fails; ``pitstop.model.compiled``).
        num_threads: torch intra-op threads (None: leave torch's default).
        seed: seed of the global sampling generator (unseeded requests).
        skip_tokenizer_init: do not load a tokenizer (prompts must be token ids; no output text).
        program_idle_timeout: seconds after which an agent program with no running or waiting turn is
            ended, its pins released (None: never; ``pitstop serve`` defaults to 600).
        max_programs: most live programs; a new one over the bound ends the least recently active idle
            program or is refused (``TooManyPrograms``, HTTP 429). None: unbounded (``serve``: 10,000).
        grammar_compile_timeout_s: seconds a structured-output request may wait for its grammar to compile (from
            ``add_request``); past it the request fails with an error naming this limit. Other requests run on.
        grammar_compile_threads: threads compiling grammars off the engine thread.
        enable_kv_cache_events: record the prefix cache's ``BlockStored`` / ``BlockRemoved`` events
            (``LLMEngine.take_kv_events``) for routers with an exact per-replica index (vLLM's flag name).
        speculative_config: speculative decoding (a ``SpeculativeConfig`` or its dict, e.g. ``{"method": "suffix",
            "num_speculative_tokens": 16}``); None: off.
    """

    model: str = "SmolLM2-135M-Instruct"
    dtype: str = "auto"
    kv_cache_memory: int | str = "1GiB"
    block_size: int = 16
    max_model_len: int | None = None
    max_num_seqs: int = 128
    max_num_batched_tokens: int = 1024
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    scheduling_policy: str = "fcfs"
    ttl_policy: str = "none"
    ttl_seconds: float | None = None
    attention_backend: str = "cpu"
    quantization: str = "none"
    compile: bool = False
    num_threads: int | None = None
    seed: int = 0
    skip_tokenizer_init: bool = False
    program_idle_timeout: float | None = None
    max_programs: int | None = None
    grammar_compile_timeout_s: float = 10.0
    grammar_compile_threads: int = 1
    enable_kv_cache_events: bool = False
    speculative_config: SpeculativeConfig | dict | None = None

    def __post_init__(self) -> None:
        self.speculative_config = SpeculativeConfig.parse(self.speculative_config)
        self.kv_cache_memory = parse_bytes(self.kv_cache_memory)
        if self.dtype not in ("auto", "bfloat16", "float32"):
            raise ValueError(f"dtype must be 'auto', 'bfloat16' or 'float32', got {self.dtype!r}")
        if self.program_idle_timeout is not None and not self.program_idle_timeout > 0:
            raise ValueError(f"program_idle_timeout must be > 0 seconds, got {self.program_idle_timeout}")
        if self.max_programs is not None and self.max_programs < 1:
            raise ValueError(f"max_programs must be >= 1, got {self.max_programs}")
        if not self.grammar_compile_timeout_s > 0:
            raise ValueError(f"grammar_compile_timeout_s must be > 0 seconds, got {self.grammar_compile_timeout_s}")
        if self.grammar_compile_threads < 1:
            raise ValueError(f"grammar_compile_threads must be >= 1, got {self.grammar_compile_threads}")
        if self.quantization not in QUANTIZATIONS:
            raise ValueError(f"quantization must be one of {', '.join(map(repr, QUANTIZATIONS))}, "
                             f"got {self.quantization!r}")
        if self.attention_backend not in ("cpu", "torch"):
            raise ValueError(f"attention_backend must be 'cpu' or 'torch', got {self.attention_backend!r}")
        if self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")
