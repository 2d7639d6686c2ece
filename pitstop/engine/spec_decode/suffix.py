"""SuffixDecoding (Oliaro et al., "SuffixDecoding: Extreme Speculative Decoding for Emerging AI Applications",
arXiv 2411.04975): model-free drafts from suffix trees.

Two trees are matched against the sequence's last tokens (at most ``max_tree_depth``):

- a per-request tree over the request's prompt and its output so far (dropped when the request ends);
- a global tree over the outputs of past (and running) requests, bounded to ``max_cached_requests`` outputs (the
  oldest is evicted first), so the memory is bounded.

From the deepest node matching the context's suffix, the draft follows the most frequent child while the estimated
probability (child count over parent count, multiplied along the path) stays above ``min_token_prob``; the draft is
at most ``max_spec_factor * match_length + max_spec_offset`` tokens (the paper's adaptive speculation length: a long
match earns a long draft). The better scoring of the two trees' drafts is used.

The trees are those of the ``arctic-inference`` package when it is installed (Snowflake's implementation by the
paper's authors, a C++ extension that runs on CPU without vLLM), else ``suffix_tree.PySuffixCache`` (pure Python,
same algorithm); this class feeds them the engine's requests incrementally.
"""

from __future__ import annotations

from pitstop.engine.spec_decode.proposer import Proposer
from pitstop.engine.spec_decode.suffix_tree import PySuffixCache
from pitstop.request import Request


def cache_class(backend: str = "auto"):
    """The suffix-tree cache class: arctic-inference's ``SuffixDecodingCache`` (``"arctic"``), the pure-Python
    ``PySuffixCache`` (``"python"``), or the first when it is installed (``"auto"``).

    Raises:
        ValueError: ``"arctic"`` without the package, or an unknown backend.
    """
    if backend not in ("auto", "arctic", "python"):
        raise ValueError(f"suffix backend must be auto, arctic or python, got {backend!r}")
    if backend != "python":
        try:
            from arctic_inference.suffix_decoding import SuffixDecodingCache
            return SuffixDecodingCache
        except ImportError as e:
            if backend == "arctic":
                raise ValueError("speculative_config suffix_backend 'arctic' needs the arctic-inference package "
                                 "(pip install arctic-inference)") from e
    return PySuffixCache


class SuffixProposer(Proposer):
    """Args:
        max_tree_depth: deepest path of both trees (tokens), also the longest context suffix matched.
        max_cached_requests: past outputs kept in the global tree (0: no global tree).
        max_spec_factor / max_spec_offset: draft length bound ``factor * match_length + offset`` (tokens).
        min_token_prob: stop drafting below this estimated probability.
        backend: "auto", "arctic" or "python" (``cache_class``).

    Raises:
        ValueError: backend "arctic" without ``arctic-inference``, or an unknown backend.
    """

    def __init__(self, max_tree_depth: int = 64, max_cached_requests: int = 10000, max_spec_factor: float = 1.0,
                 max_spec_offset: float = 0.0, min_token_prob: float = 0.1, backend: str = "auto") -> None:
        self.cache = cache_class(backend)(max_tree_depth=max_tree_depth, max_cached_requests=max_cached_requests)
        self.max_tree_depth = max_tree_depth
        self.max_spec_factor = max_spec_factor
        self.max_spec_offset = max_spec_offset
        self.min_token_prob = min_token_prob
        self._seen: dict[str, int] = {}  # request id -> output tokens already added to the trees
        self.last_match_len = 0

    @property
    def num_active(self) -> int:
        """Requests with a per-request tree."""
        return len(self._seen)

    @property
    def num_cached_outputs(self) -> int:
        """Outputs in the global tree."""
        return len(self.cache.cached_requests)

    def observe(self, request: Request) -> None:
        """Add the request's prompt (first call) and its new output tokens to the trees."""
        rid = request.request_id
        seen = self._seen.get(rid)
        if seen is None:
            self.cache.start_request(rid, request.prompt_token_ids)
            seen = 0
        out = request.output_token_ids
        if len(out) > seen:
            self.cache.add_active_response(rid, out[seen:])
        self._seen[rid] = len(out)

    def propose(self, request: Request, max_tokens: int) -> list[int]:
        return self.propose_with_values(request, max_tokens)[0]

    def propose_with_values(self, request: Request, max_tokens: int) -> tuple[list[int], list[float] | None]:
        """The draft and the trees' path probabilities of its tokens (their expected values)."""
        self.observe(request)
        context = request.all_token_ids[-self.max_tree_depth:]
        draft = self.cache.speculate(request.request_id, context, max_spec_tokens=max_tokens,
                                     max_spec_factor=self.max_spec_factor, max_spec_offset=self.max_spec_offset,
                                     min_token_prob=self.min_token_prob)
        self.last_match_len = draft.match_len
        tokens = list(draft.token_ids[:max_tokens])
        probs = list(draft.probs[:len(tokens)])
        return tokens, probs if len(probs) == len(tokens) else None

    def finish(self, request: Request) -> None:
        """Drop the request's tree; its whole output stays in the global tree (until evicted)."""
        rid = request.request_id
        seen = self._seen.pop(rid, None)
        if seen is None:
            return
        out = request.output_token_ids
        if len(out) > seen:
            self.cache.add_active_response(rid, out[seen:])
        self.cache.stop_request(rid)
