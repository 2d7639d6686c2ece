"""One sequence's grammar state: the compile it waits for, then its matcher and how many tokens it has accepted."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Protocol

from pitstop.engine.structured_output.backend import GrammarBackend, GrammarMatcher


class GrammarOwner(Protocol):
    """What a state needs of its manager (``StructuredOutputManager``; a protocol so the two files stay acyclic)."""

    @property
    def backend(self) -> GrammarBackend: ...

    def release(self, g: "RequestGrammar") -> None: ...


class RequestGrammar:
    """The grammar of one sequence (``Request.grammar``), owned by a ``StructuredOutputManager``.

    Attributes:
        request_id / parent_id: the sequence and the user request it belongs to.
        future: the compile of its grammar (shared with every request of the same grammar).
        deadline: engine-clock seconds by which the grammar must be compiled, else the request fails.
        matcher: its matcher once the grammar is compiled (None before, and after ``free``).
        num_accepted: output tokens the matcher has accepted (kept equal to the request's output length).
        error: why the request fails (a compile error or timeout, a rejected token), else None.
    """

    __slots__ = ("request_id", "parent_id", "future", "deadline", "matcher", "num_accepted", "error", "_owner")

    def __init__(self, owner: GrammarOwner, request_id: str, parent_id: str, future: Future,
                 deadline: float) -> None:
        self._owner = owner
        self.request_id = request_id
        self.parent_id = parent_id
        self.future = future
        self.deadline = deadline
        self.matcher: GrammarMatcher | None = None
        self.num_accepted = 0
        self.error: str | None = None

    def ready(self) -> bool:
        """True once the matcher exists (made here, on the engine thread, when the compile has just finished);
        False while compiling or after a compile error (``error`` is then set)."""
        if self.matcher is not None:
            return True
        if self.error is not None or not self.future.done():
            return False
        exc = self.future.exception()
        if exc is not None:
            self.error = str(exc) if isinstance(exc, ValueError) else \
                f"structured_outputs: grammar compile failed ({type(exc).__name__}: {exc})"
            return False
        self.matcher = self._backend.new_matcher(self.future.result())
        return True

    @property
    def _backend(self) -> GrammarBackend:
        return self._owner.backend

    def sync(self, output_token_ids: list[int]) -> None:
        """Make the matcher reflect exactly ``output_token_ids``: roll back tokens the request no longer has,
        accept ones it has not seen (recompute preemption keeps every output token, so normally a no-op)."""
        n = len(output_token_ids)
        if n == self.num_accepted or self.matcher is None:
            return
        if n < self.num_accepted:
            self.matcher.rollback(self.num_accepted - n)
            self.num_accepted = n
            return
        for tok in output_token_ids[self.num_accepted:]:
            self.accept(tok)

    def valid_prefix(self, output_token_ids: list[int], draft_token_ids: list[int]) -> list[int]:
        """The longest prefix of ``draft_token_ids`` the grammar accepts after ``output_token_ids`` (speculative
        decoding: a draft the grammar forbids is cut before verification); the matcher's state is unchanged but
        for ``sync``. [] while the matcher does not exist."""
        if self.matcher is None or self.error is not None:
            return []
        self.sync(output_token_ids)
        return draft_token_ids[:self.matcher.validate_tokens(draft_token_ids)]

    def accept(self, token_id: int) -> bool:
        """Advance the matcher by one sampled token; False (and ``error`` set) if the grammar rejects it."""
        assert self.matcher is not None
        self.num_accepted += 1
        if self.matcher.accept_token(token_id):
            return True
        reason = self.matcher.error().strip().split("\n", 1)[0]  # llguidance appends a multi-line state dump
        self.error = f"structured_outputs: the grammar rejected token {token_id} ({reason or 'no reason given'})"
        return False

    def free(self) -> None:
        """Drop the matcher and leave the manager (the request has ended)."""
        self.matcher = None
        self._owner.release(self)
