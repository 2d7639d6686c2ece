"""Pure-Python suffix trees for SuffixDecoding (Oliaro et al., arXiv 2411.04975), used when the ``arctic-inference``
package (the authors' C++ trees) is not installed. Same interface as the part of its ``SuffixDecodingCache`` that
``SuffixProposer`` uses.

A tree holds every substring of at most ``max_depth`` tokens of its sequences: appending a token extends the (at
most ``max_depth``) suffixes that end at the sequence's last token, so an update costs ``O(max_depth)`` dictionary
steps. Each node counts the occurrences of its path. A draft starts at the node of the longest suffix of the context
present in the tree with a continuation (found by binary search: if a string occurs followed by a token, so does
each of its suffixes), then follows the most
frequent child while the estimated probability (child count over parent count, multiplied along the path) stays at
or above ``min_token_prob``, for at most ``max_spec_factor * match_length + max_spec_offset`` tokens.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field


class _Node:
    __slots__ = ("children", "count")

    def __init__(self) -> None:
        self.children: dict[int, _Node] = {}
        self.count = 0


@dataclass
class Draft:
    """A proposal: ``token_ids``, their estimated probabilities ``probs``, ``score`` (the sum of ``probs``) and the
    length of the context suffix it was matched on (``match_len``)."""

    token_ids: list[int] = field(default_factory=list)
    probs: list[float] = field(default_factory=list)
    score: float = 0.0
    match_len: int = 0


class SuffixTree:
    """Substrings (up to ``max_depth`` tokens) of several sequences, with occurrence counts.

    Args:
        max_depth: longest substring kept (tokens).
    """

    def __init__(self, max_depth: int) -> None:
        self.max_depth = max_depth
        self.root = _Node()
        self._tokens: dict[Hashable, list[int]] = {}
        self._active: dict[Hashable, list[_Node]] = {}  # per sequence: nodes of its suffixes still growing

    @property
    def num_nodes(self) -> int:
        n, stack = 0, [self.root]
        while stack:
            node = stack.pop()
            n += 1
            stack.extend(node.children.values())
        return n

    def extend(self, seq_id: Hashable, tokens: Sequence[int]) -> None:
        """Append ``tokens`` to sequence ``seq_id`` (a new one starts empty): ``O(max_depth)`` per token."""
        seq = self._tokens.setdefault(seq_id, [])
        active = self._active.get(seq_id, [])
        keep = self.max_depth - 1  # suffixes that may still grow (a max_depth-token one stops)
        root = self.root
        for t in tokens:
            grown: list[_Node] = []
            append = grown.append
            for node in active:
                children = node.children
                child = children.get(t)
                if child is None:
                    child = children[t] = _Node()
                child.count += 1
                append(child)
            child = root.children.get(t)
            if child is None:
                child = root.children[t] = _Node()
            child.count += 1
            append(child)
            active = grown[-keep:] if keep > 0 else []
        seq.extend(tokens)
        self._active[seq_id] = active

    def remove(self, seq_id: Hashable) -> None:
        """Take sequence ``seq_id`` out: every count it added is subtracted, nodes left at 0 are dropped."""
        seq = self._tokens.pop(seq_id, None)
        self._active.pop(seq_id, None)
        if not seq:
            return
        for i in range(len(seq)):
            node = self.root
            for t in seq[i:i + self.max_depth]:
                child = node.children[t]
                child.count -= 1
                if child.count == 0:
                    del node.children[t]
                    break
                node = child

    def _walk(self, tokens: Sequence[int]) -> _Node | None:
        node = self.root
        for t in tokens:
            node = node.children.get(t)
            if node is None:
                return None
        return node

    def match(self, context: Sequence[int]) -> tuple[_Node | None, int]:
        """The node of the longest suffix of ``context`` (fewer than ``max_depth`` tokens) that occurs in the tree
        followed by some token, and its length; ``(None, 0)`` when there is none. (The context's own occurrence at
        the end of its sequence has no continuation: an earlier one is needed.)"""
        lo, hi = 0, min(len(context), self.max_depth - 1)
        best = None
        while lo < hi:  # monotone: if a string occurs followed by a token, so does each of its suffixes
            mid = (lo + hi + 1) // 2
            node = self._walk(context[len(context) - mid:])
            if node is None or not node.children:
                hi = mid - 1
            else:
                lo, best = mid, node
        return best, lo

    def speculate(self, context: Sequence[int], max_tokens: int, max_spec_factor: float, max_spec_offset: float,
                  min_token_prob: float) -> Draft:
        node, match_len = self.match(context)
        if node is None:
            return Draft()
        limit = min(max_tokens, int(max_spec_factor * match_len + max_spec_offset))
        draft = Draft(match_len=match_len)
        prob = 1.0
        while len(draft.token_ids) < limit and node.children:
            token, child = max(node.children.items(), key=lambda kv: kv[1].count)
            prob *= child.count / node.count
            if prob < min_token_prob:
                break
            draft.token_ids.append(token)
            draft.probs.append(prob)
            node = child
        draft.score = sum(draft.probs)
        return draft


class PySuffixCache:
    """A per-request tree over each active request's prompt and output, and a global tree over the outputs of the last
    ``max_cached_requests`` requests (oldest evicted first); the interface of arctic-inference's
    ``SuffixDecodingCache`` that ``SuffixProposer`` uses.

    Raises:
        ValueError: a request started twice, or used while not active.
    """

    def __init__(self, max_tree_depth: int = 64, max_cached_requests: int = -1) -> None:
        self.max_tree_depth = max_tree_depth
        self.max_cached_requests = max_cached_requests
        self._global = SuffixTree(max_tree_depth)
        self._local: dict[Hashable, SuffixTree] = {}
        self._cached: OrderedDict[Hashable, None] = OrderedDict()  # outputs in the global tree, oldest first

    @property
    def cached_requests(self):
        return self._cached.keys()

    def start_request(self, req_id: Hashable, prompt_token_ids: Sequence[int]) -> None:
        if req_id in self._local:
            raise ValueError(f"Request '{req_id}' is already active")
        tree = self._local[req_id] = SuffixTree(self.max_tree_depth)
        tree.extend(0, prompt_token_ids)
        if self.max_cached_requests != 0:
            if req_id in self._cached:
                self._evict(req_id)
            while 0 < self.max_cached_requests <= len(self._cached):
                self._evict(next(iter(self._cached)))
            self._cached[req_id] = None

    def _evict(self, req_id: Hashable) -> None:
        del self._cached[req_id]
        self._global.remove(req_id)

    def stop_request(self, req_id: Hashable) -> None:
        if self._local.pop(req_id, None) is None:
            raise ValueError(f"Request '{req_id}' is not active")

    def add_active_response(self, req_id: Hashable, token_ids: Sequence[int]) -> None:
        tree = self._local.get(req_id)
        if tree is None:
            raise ValueError(f"Request '{req_id}' is not active")
        tree.extend(0, token_ids)
        if req_id in self._cached:
            self._global.extend(req_id, token_ids)

    def speculate(self, req_id: Hashable, context: Sequence[int], max_spec_tokens: int, max_spec_factor: float = 1.0,
                  max_spec_offset: float = 0.0, min_token_prob: float = 0.1) -> Draft:
        tree = self._local.get(req_id)
        if tree is None:
            raise ValueError(f"Request '{req_id}' is not active")
        context = context[-self.max_tree_depth:]
        local = tree.speculate(context, max_spec_tokens, max_spec_factor, max_spec_offset, min_token_prob)
        shared = self._global.speculate(context, max_spec_tokens, max_spec_factor, max_spec_offset, min_token_prob)
        return local if local.score >= shared.score else shared
