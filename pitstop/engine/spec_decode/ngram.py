"""Prompt lookup decoding (n-gram proposer): find the most recent earlier occurrence of the sequence's last ``n``
tokens, ``n`` from ``max_n`` down to ``min_n``, and propose the tokens that followed it.

Source: Saxena, "Prompt Lookup Decoding" (2023); vLLM's ``ngram`` speculative method. Agents and code editing copy
long spans of their context (file contents, earlier tool output), which this drafts for free.
"""

from __future__ import annotations

from array import array

from pitstop.engine.spec_decode.proposer import Proposer
from pitstop.request import Request

_ITEM = array("i").itemsize  # bytes per token in the search buffer (4)


class NgramProposer(Proposer):
    """Args:
        min_n / max_n: n-gram lengths tried, longest first (tokens; ``1 <= min_n <= max_n``).

    The search runs at C speed: the tokens are packed into an int32 buffer and ``bytes.rfind`` looks for the
    pattern's bytes (matches not aligned to a token boundary are skipped).
    """

    def __init__(self, min_n: int = 2, max_n: int = 5) -> None:
        if not 1 <= min_n <= max_n:
            raise ValueError(f"need 1 <= min_n ({min_n}) <= max_n ({max_n})")
        self.min_n = min_n
        self.max_n = max_n

    def propose(self, request: Request, max_tokens: int) -> list[int]:
        return propose_ngram(request.all_token_ids, self.min_n, self.max_n, max_tokens)


def propose_ngram(tokens: list[int], min_n: int, max_n: int, max_tokens: int) -> list[int]:
    """Up to ``max_tokens`` tokens that followed the latest earlier occurrence of the longest suffix of ``tokens``
    of length in ``[min_n, max_n]`` that occurs earlier; [] when none does."""
    size = len(tokens)
    if size <= min_n or max_tokens < 1:
        return []
    buf = array("i", tokens).tobytes()
    for n in range(min(max_n, size - 1), min_n - 1, -1):
        pattern = buf[(size - n) * _ITEM:]
        last_start = (size - n - 1) * _ITEM  # the latest start of an earlier occurrence (it may overlap the suffix)
        while last_start >= 0:
            at = buf.rfind(pattern, 0, last_start + len(pattern))
            if at < 0:
                break
            if at % _ITEM == 0:
                first = at // _ITEM + n
                return tokens[first:first + max_tokens]
            last_start = (at // _ITEM) * _ITEM  # a hit across token boundaries: look left of it
    return []
