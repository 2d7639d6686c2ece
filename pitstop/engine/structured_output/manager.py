"""The structured-output manager: grammars of the engine's requests, from ``add_request`` to the step's bitmask.

Life of a constrained request (engine thread unless said):

1. ``add_request`` -> ``key_for(params)``: the spec is canonicalised and validated by the backend (a bad schema,
   regex or grammar raises ``ValueError`` naming the field and feature: the server answers 400; nothing queued).
2. ``attach(request, key)`` per sequence: the compile is submitted to the thread pool (or shared from the cache);
   the request waits in the scheduler's queue (``RequestGrammar.ready``) while other requests run.
3. ``poll_failures`` (each step): a compile error, or no grammar by the deadline (``grammar_compile_timeout_s``),
   fails that request alone.
4. ``fill_bitmask(so)`` (each step, only while some request is constrained): one ``[rows, ceil(V/32)]`` int32
   bitmask for the scheduled sequences that sample a token and have a grammar, shipped in
   ``SchedulerOutput.structured``; prefill chunks that sample nothing get no row.
5. ``accept(touched)`` after the step: each matcher advances by its sequence's new token.
6. The scheduler frees the state when the request ends (finished, aborted, failed): ``RequestGrammar.free``.

Where ``min_tokens`` would forbid EOS although the grammar is complete (only EOS allowed), the grammar wins (the
sampler keeps such a row's grammar mask). ``stop_token_ids`` are not added to the grammar's allowed tokens.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, wait
from typing import Any

from pitstop.engine.structured_output.backend import GrammarBackend, GrammarKey, grammar_key
from pitstop.engine.structured_output.compile_cache import CompileCache
from pitstop.engine.structured_output.request_grammar import RequestGrammar
from pitstop.request import Request
from pitstop.sampling_params import SamplingParams
from pitstop.scheduler_output import SchedulerOutput, StructuredBatch


class StructuredOutputManager:
    """Grammars of one engine's requests.

    Args:
        backend_factory: builds the grammar backend on first use (so an engine that never sees a constrained
            request never builds it).
        compile_timeout_s: seconds a request may wait for its grammar (from ``attach``) before it fails.
        compile_threads: worker threads compiling grammars.
        clock: seconds, monotonic (the deadline's clock; wall time: compiles take real time).
    """

    def __init__(self, backend_factory: Callable[[], GrammarBackend], compile_timeout_s: float = 10.0,
                 compile_threads: int = 1, clock: Callable[[], float] = time.monotonic) -> None:
        self._backend_factory = backend_factory
        self._backend: GrammarBackend | None = None
        self.compile_timeout_s = compile_timeout_s
        self.clock = clock
        self.cache = CompileCache(lambda key: self.backend.compile(key), compile_threads)
        self.live: dict[str, RequestGrammar] = {}
        self._pending: dict[str, RequestGrammar] = {}
        self.mask_time_s = 0.0  # seconds spent filling bitmasks (engine thread), all steps
        self.num_masked_rows = 0

    @property
    def backend(self) -> GrammarBackend:
        if self._backend is None:
            self._backend = self._backend_factory()
        return self._backend

    @property
    def num_live(self) -> int:
        """Sequences holding a grammar state (waiting for it or matching)."""
        return len(self.live)

    @property
    def num_matchers(self) -> int:
        """Sequences holding a matcher."""
        return sum(1 for g in self.live.values() if g.matcher is not None)

    # ---- add ------------------------------------------------------------------------------------------------------
    def key_for(self, params: SamplingParams) -> GrammarKey:
        """The grammar key of ``params.structured_outputs``, validated (skipped for a grammar already compiled).

        Raises:
            ValueError: invalid JSON, an invalid JSON Schema, or a schema / regex / grammar the backend rejects or
                does not support (the message names the field and the feature).
        """
        assert params.structured_outputs is not None
        key = grammar_key(params.structured_outputs)
        if not self.cache.compiled(key):
            self.backend.validate(key)
        return key

    def attach(self, request: Request, key: GrammarKey) -> None:
        """Give ``request`` its grammar state (compile submitted or shared); it waits in the queue until ready."""
        g = RequestGrammar(self, request.request_id, request.parent_id or request.request_id, self.cache.get(key),
                           self.clock() + self.compile_timeout_s)
        request.grammar = g
        self.live[g.request_id] = g
        self._pending[g.request_id] = g

    def release(self, g: RequestGrammar) -> None:
        self.live.pop(g.request_id, None)
        self._pending.pop(g.request_id, None)

    # ---- each step ------------------------------------------------------------------------------------------------
    def poll_failures(self) -> list[tuple[str, str, str]]:
        """``(parent id, error, "invalid_request_error")`` of the requests whose grammar failed to compile or is past
        its deadline, one per parent; requests whose grammar is ready stop being polled."""
        if not self._pending:
            return []
        now = self.clock()
        failed: dict[str, str] = {}
        for rid, g in list(self._pending.items()):
            if g.ready():
                del self._pending[rid]
            elif g.error is not None:
                failed.setdefault(g.parent_id, g.error)
            elif now >= g.deadline:
                failed.setdefault(g.parent_id, f"structured_outputs: the grammar did not compile within "
                                               f"{self.compile_timeout_s:g} s (grammar_compile_timeout_s)")
        return [(rid, error, "invalid_request_error") for rid, error in failed.items()]

    @property
    def has_pending(self) -> bool:
        return bool(self._pending)

    def wait_pending(self, timeout_s: float) -> None:
        """Block up to ``timeout_s`` seconds for a pending compile to finish (the engine has nothing else to run)."""
        futures = {g.future for g in self._pending.values()}
        if futures:
            wait(futures, timeout=timeout_s, return_when=FIRST_COMPLETED)

    def fill_bitmask(self, so: SchedulerOutput) -> None:
        """Set ``so.structured``: one bitmask row per scheduled sequence that samples and has a grammar (None
        when there is none)."""
        matchers: list[Any] = []
        rows: dict[str, int] = {}
        verifies: list[tuple[Any, list[int], int]] = []
        for s in so.scheduled:
            if not s.sample:
                continue
            req = s.request
            g = req.grammar
            if g is None or g.matcher is None:
                continue
            g.sync(req.output_token_ids)
            rows[req.request_id] = len(matchers)
            matchers.append(g.matcher)
            if s.draft_token_ids:  # one row per verified position: after 0, 1, .., K drafts
                verifies.append((g.matcher, list(s.draft_token_ids), len(matchers)))
                matchers.extend([None] * len(s.draft_token_ids))
        if not matchers:
            return
        t0 = time.perf_counter()
        backend = self.backend
        bitmask = backend.allocate_bitmask(len(matchers))
        if verifies:
            _fill_verify_rows(backend, matchers, verifies, bitmask)
        else:
            backend.fill_bitmask(matchers, bitmask)
        self.mask_time_s += time.perf_counter() - t0
        self.num_masked_rows += len(matchers)
        so.structured = StructuredBatch(bitmask=bitmask, rows=rows)

    def accept(self, touched: list[Request], batch: StructuredBatch) -> list[tuple[str, str, str]]:
        """Advance each live sequence's matcher by its new token; ``(parent id, error, error_type)`` for those the
        grammar rejected (they must be failed).

        ``error_type`` says whose fault it is. ``invalid_request_error``: the token was one ``batch`` (this step's
        bitmask) allowed, or the row allowed none -- the request's grammar cannot be followed with this model's
        tokens (e.g. a regex needing a byte no token carries; the grammar library then forces a token it rejects).
        ``server_error``: the token was masked out, so the engine sampled against its own mask (a bug).
        """
        failed = []
        for req in touched:
            g = req.grammar
            if g is None or g.matcher is None:
                continue
            if g.num_accepted < len(req.output_token_ids) - 1:
                g.sync(req.output_token_ids[:-1])
            token = req.output_token_ids[-1]
            if not g.accept(token):
                kind = _rejection_type(batch, req.request_id, token)
                error = g.error or "structured_outputs: grammar error"
                if kind == "invalid_request_error":
                    error += "; the grammar cannot be followed with this model's tokens"
                failed.append((g.parent_id, error, kind))
        return failed

    def shutdown(self) -> None:
        self.cache.shutdown()


def _fill_verify_rows(backend: GrammarBackend, matchers: list[Any], verifies: list[tuple[Any, list[int], int]],
                      bitmask: Any) -> None:
    """Fill ``bitmask`` where a verify's K drafts take rows ``first - 1 .. first + K - 1`` (``None`` in ``matchers``):
    row ``first + j`` is the grammar's mask after drafts ``0..j``, made by advancing the matcher through the drafts
    (the drafter kept only a prefix the grammar accepts) and rolling it back afterwards."""
    plain = [(i, m) for i, m in enumerate(matchers) if m is not None]
    for i, m in plain:
        backend.fill_bitmask([m], bitmask[i:i + 1])
    for matcher, drafts, first in verifies:
        done = 0
        for j, tok in enumerate(drafts):
            if not matcher.accept_token(tok):  # cannot happen for a validated draft: its rows then allow nothing
                bitmask[first + j:first + len(drafts)] = 0
                break
            done += 1
            backend.fill_bitmask([matcher], bitmask[first + j:first + j + 1])
        if done:
            matcher.rollback(done)


def _rejection_type(batch: StructuredBatch, request_id: str, token_id: int) -> str:
    """``invalid_request_error`` when ``batch`` allowed ``token_id`` for ``request_id`` or allowed it nothing (the
    grammar cannot be followed with this vocabulary), else ``server_error`` (see ``accept``)."""
    row = batch.rows.get(request_id)
    if row is None:
        return "server_error"
    words = batch.bitmask[row]
    word = token_id // 32
    allowed = word < len(words) and (int(words[word]) >> (token_id % 32)) & 1
    return "invalid_request_error" if allowed or not words.any() else "server_error"
