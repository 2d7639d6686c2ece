"""Turns the scheduler's updated requests into ``RequestOutput``s.

Its parts: ``n > 1`` fan-out (child sequences) and merge, incremental detokenization, stop strings, tool-name
inference for agent turns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pitstop.engine.detokenizer import IncrementalDetokenizer
from pitstop.engine.scheduler import Scheduler
from pitstop.engine.tool_parse import infer_tool_name
from pitstop.outputs import CompletionOutput, RequestOutput
from pitstop.request import Request, RequestStatus
from pitstop.sampling_params import SamplingParams


@dataclass
class _Parent:
    """A user request: ``n`` child sequences sharing one prompt."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    children: list[Request]
    detoks: list[IncrementalDetokenizer | None]
    program_id: str | None = None
    error: str | None = None
    error_type: str | None = None


class OutputProcessor:
    """Owns the user requests in flight: builds the ``n`` child sequences of each, and the outputs of their steps.

    Args:
        tokenizer: detokenizes outputs and checks stop strings (None: no text; token ids only).
        scheduler: ends a child early when a stop string appears, learns inferred tool names.
        clock: seconds, monotonic (the engine's).
        share_prompt_blocks: children after the first wait for its prefill and share its prompt blocks
            (prefix caching on).
    """

    def __init__(self, tokenizer: Any, scheduler: Scheduler, clock: Callable[[], float],
                 share_prompt_blocks: bool) -> None:
        self.tokenizer = tokenizer
        self.scheduler = scheduler
        self.clock = clock
        self.share_prompt_blocks = share_prompt_blocks
        self._parents: dict[str, _Parent] = {}
        self._child_to_parent: dict[str, str] = {}

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._parents

    def add(self, request_id: str, prompt: str | None, prompt_token_ids: list[int], params: SamplingParams,
            arrival: float, max_tokens: int, eos_token_ids: frozenset[int], program_id: str | None,
            is_last_turn: bool, priority: int, cache_salt: str | None, tool_name: str | None) -> list[Request]:
        """Register a user request and return its ``params.n`` child sequences (ids ``request_id`` when ``n`` is 1,
        else ``request_id-i``), to be queued in the scheduler. ``arrival``: seconds; ``max_tokens``: output limit."""
        children, detoks = [], []
        for i in range(params.n):
            cid = request_id if params.n == 1 else f"{request_id}-{i}"
            req = Request(request_id=cid, prompt_token_ids=list(prompt_token_ids), sampling_params=params,
                          arrival_time=arrival, max_tokens=max_tokens, eos_token_ids=eos_token_ids,
                          parent_id=request_id, index=i,
                          wait_for=children[0].request_id if i and self.share_prompt_blocks else None,
                          program_id=program_id, is_last_turn=is_last_turn, priority=priority,
                          cache_salt=cache_salt, tool_name=tool_name)
            children.append(req)
            detoks.append(IncrementalDetokenizer(self.tokenizer, params, prompt_token_ids)
                          if self.tokenizer is not None else None)
        self._parents[request_id] = _Parent(request_id, prompt, list(prompt_token_ids), children, detoks,
                                            program_id)
        for req in children:
            self._child_to_parent[req.request_id] = request_id
        return children

    def children_of(self, request_id: str) -> list[str] | None:
        """The ids of a user request's child sequences, or None if it is unknown (finished or never added)."""
        parent = self._parents.get(request_id)
        return None if parent is None else [c.request_id for c in parent.children]

    def final_output(self, request_id: str) -> RequestOutput:
        """The output of a user request as it stands (e.g. once the scheduler has aborted its children); the
        request is forgotten.

        Raises:
            KeyError: unknown request id.
        """
        parent = self._parents[request_id]
        out = self._make_output(parent)
        self._drop(parent)
        return out

    def process(self, touched: list[Request]) -> list[RequestOutput]:
        """Outputs of the user requests whose children got a token this step (``Scheduler.update``'s list):
        detokenize each new token, end a child whose text hits a stop string, infer the tool a finished
        non-final turn calls; finished user requests are forgotten."""
        parents: dict[str, _Parent] = {}
        for req in touched:
            parent = self._parents.get(self._child_to_parent.get(req.request_id, ""))
            if parent is None:
                continue
            detok = parent.detoks[req.index]
            if detok is not None and parent.error is None:
                try:
                    self._detokenize(req, detok)
                except Exception as e:  # noqa: BLE001 - a tokenizer failure ends this request only
                    self._fail(parent, f"detokenization failed ({type(e).__name__})")
            parents[parent.request_id] = parent
        outs = []
        for parent in parents.values():
            out = self._make_output(parent)
            outs.append(out)
            if out.finished:
                self._drop(parent)
        return outs

    def _detokenize(self, req: Request, detok: IncrementalDetokenizer) -> None:
        new = req.num_new_tokens
        if new <= 1:
            stop = detok.update([req.output_token_ids[-1]])
        else:  # a speculative verify appended several tokens: one at a time, cut after the one ending a stop string
            stop = None
            out = req.output_token_ids
            for i in range(len(out) - new, len(out)):
                stop = detok.update([out[i]])
                if stop is not None:
                    _truncate_output(req, i + 1)
                    break
        if stop is not None and not req.is_finished:
            self.scheduler.finish_requests([req.request_id], RequestStatus.FINISHED_STOPPED, self.clock())
            req.stop_reason = stop
        elif stop is not None:
            req.status, req.stop_reason = RequestStatus.FINISHED_STOPPED, stop
        if req.is_finished:
            detok.finish()
            self._infer_tool(req, detok.output_text)

    def fail_request(self, request_id: str, error: str, error_type: str = "server_error") -> RequestOutput | None:
        """End a user request on an error of its own (e.g. its grammar did not compile): its children are aborted
        (KV and grammar state freed) and its final output, carrying ``error``, is returned; the request is
        forgotten. None if it is unknown (already ended)."""
        parent = self._parents.get(request_id)
        if parent is None:
            return None
        self._fail(parent, error, error_type)
        return self.final_output(request_id)

    def _fail(self, parent: _Parent, error: str, error_type: str = "server_error") -> None:
        """End every child of ``parent`` (aborted, KV freed); its output carries ``error`` and ``error_type``."""
        parent.error, parent.error_type = error, error_type
        live = [c.request_id for c in parent.children if not c.is_finished]
        self.scheduler.finish_requests(live, RequestStatus.FINISHED_ABORTED, self.clock())

    def detokenizer(self, request_id: str, index: int = 0) -> IncrementalDetokenizer | None:
        """The incremental detokenizer of a running completion (for streaming deltas)."""
        parent = self._parents.get(request_id)
        return parent.detoks[index] if parent is not None else None

    def _make_output(self, parent: _Parent) -> RequestOutput:
        completions = []
        for req, detok in zip(parent.children, parent.detoks):
            want_lp = req.sampling_params.logprobs is not None
            completions.append(CompletionOutput(
                index=req.index, text=detok.output_text if detok is not None else "",
                token_ids=list(req.output_token_ids), finish_reason=req.status.finish_reason,
                stop_reason=req.stop_reason, logprobs=list(req.logprobs) if want_lp else None))
        first = parent.children[0]
        return RequestOutput(request_id=parent.request_id, prompt=parent.prompt,
                             prompt_token_ids=parent.prompt_token_ids, outputs=completions,
                             finished=all(c.is_finished for c in parent.children), metrics=first.metrics,
                             num_cached_tokens=first.metrics.num_cached_tokens, program_id=parent.program_id,
                             error=parent.error, error_type=parent.error_type)

    def _drop(self, parent: _Parent) -> None:
        self._parents.pop(parent.request_id, None)
        for c in parent.children:
            self._child_to_parent.pop(c.request_id, None)

    def _infer_tool(self, req: Request, text: str) -> None:
        if req.program_id is None or req.is_last_turn or req.tool_name is not None:
            return
        tool = infer_tool_name(text)
        if tool is not None:
            req.tool_name = tool
            self.scheduler.programs.retag(req.program_id, tool, self.clock())


def _truncate_output(req: Request, num_output: int) -> None:
    """Drop the output tokens past ``num_output`` (a stop string ended the text inside a speculative run: what
    non-speculative decoding would have emitted ends there)."""
    drop = len(req.output_token_ids) - num_output
    if drop > 0:
        del req.output_token_ids[num_output:]
        del req.all_token_ids[len(req.all_token_ids) - drop:]
        del req.logprobs[num_output:]
        req.num_new_tokens -= drop
