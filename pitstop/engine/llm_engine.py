"""The engine loop: add requests, step the scheduler and executor, abort; outputs come from ``OutputProcessor``.

Data flow of one step (see ARCHITECTURE in the README):
``Scheduler.schedule(now)`` -> ``Executor.execute(output)`` -> ``Scheduler.update(result, now)``
-> ``OutputProcessor.process`` (detokenization, stop strings, ``n > 1`` merge) -> ``RequestOutput`` per request.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pitstop.config import EngineConfig
from pitstop.engine.detokenizer import IncrementalDetokenizer
from pitstop.engine.kv_cache_manager import KVCacheManager
from pitstop.engine.output_processor import OutputProcessor
from pitstop.engine.scheduler import Scheduler, SchedulerConfig
from pitstop.engine.spec_decode.drafter import Drafter
from pitstop.engine.structured_output import StructuredOutputManager
from pitstop.executor.interface import Executor
from pitstop.outputs import RequestOutput
from pitstop.request import RequestStatus
from pitstop.sampling_params import SamplingParams
from pitstop.kv_transfer import ProgramKV
from pitstop.scheduler_output import ExecutorResult, SchedulerOutput


@dataclass
class StepRecord:
    """One executed step: its batch shape and duration (seconds)."""

    num_prefill_tokens: int
    num_decode_tokens: int
    num_seqs: int
    context_tokens: int
    step_time_s: float


class StepFailed(RuntimeError):
    """The executor raised during a step. The requests of that step were aborted (their KV freed); every
    other request is untouched and the engine keeps serving.

    Attributes:
        request_ids: the ids (as ``add_request`` returned them) of the aborted requests.
    """

    def __init__(self, request_ids: list[str], cause: BaseException) -> None:
        super().__init__(f"step failed ({type(cause).__name__}); aborted {len(request_ids)} request(s)")
        self.request_ids = request_ids


class LLMEngine:
    """Synchronous engine: ``add_request`` then call ``step`` until ``has_unfinished_requests`` is False.

    The engine never builds a model: on a real checkpoint use ``pitstop.entrypoints.engine_builder.build_engine``
    (or ``pitstop.LLM``), which loads the model runner and tokenizer and passes them here.

    Args:
        config: engine settings.
        executor: runs each step: the model runner, a simulated executor or a test double. A public attribute:
            it may be replaced between steps (e.g. wrapped to record step times).
        tokenizer: a transformers tokenizer (None for token-id-only use such as simulation: no output text).
        clock: seconds, monotonic; wall time here, a virtual clock in the simulator.
        num_blocks: KV blocks the executor holds.
        eos_token_ids / vocab_size / max_model_len: model facts (tokens; ``max_model_len`` None: the config's,
            else 8192).
        keep_step_history: append a ``StepRecord`` to ``step_history`` every step (the simulator turns it
            off: memory on long runs).
        block_tables: put each scheduled request's block table in ``SchedulerOutput`` (an executor that reads
            no KV, such as the simulator's, may turn it off: the per-step copy is skipped, allocation unchanged).
        ids_in_range: ``(prompt ids, vocab_size) -> bool``, the fast check that every prompt id is a token id
            below ``vocab_size`` (None: no bound); when it says False the engine's own scan finds the precise
            error. The simulator passes a vectorised one for its long synthetic prompts.
        model_dir: the folder the weights came from (reported by the server), if any.

    Raises:
        TypeError: no executor.
        ValueError: the KV cache cannot hold one ``max_model_len`` context.
    """

    def __init__(self, config: EngineConfig, executor: Executor | None = None, tokenizer: Any = None,
                 clock: Callable[[], float] = time.monotonic, num_blocks: int | None = None,
                 eos_token_ids: frozenset[int] = frozenset(), vocab_size: int | None = None,
                 max_model_len: int | None = None, keep_step_history: bool = True, *, block_tables: bool = True,
                 ids_in_range: Callable[[list[int], int | None], bool] | None = None,
                 model_dir: Path | None = None) -> None:
        if executor is None or num_blocks is None:
            raise TypeError("LLMEngine needs an executor and its num_blocks: build one on a model with "
                            "pitstop.entrypoints.engine_builder.build_engine(config)")
        self.config = config
        self.keep_step_history = keep_step_history
        self.clock = clock
        self.model_dir = model_dir
        self._ids_in_range = ids_in_range or _plain_ids_in_range
        self.executor = executor
        self.tokenizer = tokenizer
        self.eos_token_ids = frozenset(eos_token_ids)
        self.vocab_size = vocab_size
        self.max_model_len = int(max_model_len or config.max_model_len or 8192)
        capacity = num_blocks * config.block_size
        if capacity < self.max_model_len:
            raise ValueError(f"the KV cache holds {capacity} tokens ({num_blocks} blocks of {config.block_size}), "
                             f"less than max_model_len={self.max_model_len}: raise kv_cache_memory or lower "
                             f"max_model_len")
        self.kv_manager = KVCacheManager(num_blocks, config.block_size, config.enable_prefix_caching,
                                         config.enable_kv_cache_events)
        self.scheduler = Scheduler(SchedulerConfig(
            max_num_seqs=config.max_num_seqs, max_num_batched_tokens=config.max_num_batched_tokens,
            max_model_len=self.max_model_len, enable_chunked_prefill=config.enable_chunked_prefill,
            scheduling_policy=config.scheduling_policy, ttl_policy=config.ttl_policy,
            ttl_seconds=config.ttl_seconds, program_idle_timeout=config.program_idle_timeout,
            max_programs=config.max_programs, block_tables=block_tables), self.kv_manager)
        self.step_history: list[StepRecord] = []
        self.output_processor = OutputProcessor(tokenizer, self.scheduler, clock, config.enable_prefix_caching)
        self._aborted: list[RequestOutput] = []
        self._counter = 0
        self.drafter: Drafter | None = None
        if config.speculative_config is not None:
            self.drafter = Drafter(config.speculative_config, self.max_model_len)
        self.structured_outputs: StructuredOutputManager | None = None
        if tokenizer is not None:
            self.structured_outputs = StructuredOutputManager(
                self._grammar_backend, config.grammar_compile_timeout_s, config.grammar_compile_threads)

    def _grammar_backend(self):
        """The grammar backend (llguidance), built at the first constrained request."""
        from pitstop.engine.structured_output.llguidance_backend import LLGuidanceBackend
        return LLGuidanceBackend(self.tokenizer, self.vocab_size or len(self.tokenizer), self.eos_token_ids)

    # ---- requests -------------------------------------------------------------------------
    def new_request_id(self) -> str:
        self._counter += 1
        return str(self._counter)

    def tokenize(self, prompt: str) -> list[int]:
        if self.tokenizer is None:
            raise ValueError("this engine has no tokenizer: pass prompt token ids")
        return list(self.tokenizer(prompt).input_ids)

    def validate_prompt(self, prompt_token_ids: list[int], index: int | None = None) -> None:
        """Raise ValueError if the prompt is empty, too long or has out-of-vocabulary ids."""
        if prompt_token_ids and len(prompt_token_ids) < self.max_model_len and self._ids_in_range(
                prompt_token_ids, self.vocab_size):
            return  # the common case, checked at C speed; otherwise the scan below finds the precise error
        where = "" if index is None else f" (request {index})"
        if not prompt_token_ids:
            raise ValueError(f"prompt{where} is empty: at least 1 token is required")
        if len(prompt_token_ids) >= self.max_model_len:
            raise ValueError(f"prompt{where} has {len(prompt_token_ids)} tokens, but max_model_len="
                             f"{self.max_model_len} allows at most {self.max_model_len - 1} prompt tokens "
                             f"(prompt + output <= max_model_len)")
        bad = [t for t in prompt_token_ids if not isinstance(t, int) or t < 0
               or (self.vocab_size is not None and t >= self.vocab_size)]
        if bad:
            raise ValueError(f"prompt{where} has token ids outside [0, {self.vocab_size}): {bad[:5]}")

    def add_request(self, request_id: str | None, prompt: str | list[int] | None,
                    params: SamplingParams | None = None, *, prompt_token_ids: list[int] | None = None,
                    arrival_time: float | None = None, program_id: str | None = None,
                    is_last_turn: bool = True, priority: int = 0, cache_salt: str | None = None,
                    tool_name: str | None = None) -> str:
        """Queue a request (``n`` child sequences). Returns its id.

        ``program_id`` makes it a turn of an agent program; a non-final turn (``is_last_turn=False``)
        keeps its KV pinned afterwards as the TTL policy decides; ``tool_name`` is the tool the client
        runs after this turn (inferred from the output text when absent).

        ``params.structured_outputs`` constrains the output: the spec is validated here, its grammar compiles off
        the engine thread (cached by spec) and the request waits for it in the queue while others run; a compile
        error or one past ``grammar_compile_timeout_s`` ends the request with ``RequestOutput.error``.

        Raises:
            ValueError: empty / too long prompt, bad token ids, a duplicate id, or an invalid or unsupported
                ``structured_outputs`` spec (the message names the field and feature), or structured outputs on an
                engine without a tokenizer (the simulator).
            TooManyPrograms: a new ``program_id`` over ``max_programs`` with no idle program to end.
        """
        params = params or SamplingParams()
        request_id = request_id or self.new_request_id()
        if request_id in self.output_processor:
            raise ValueError(f"duplicate request id {request_id!r}")
        grammar = self._grammar_key(params)
        text = prompt if isinstance(prompt, str) else None
        if prompt_token_ids is None:
            prompt_token_ids = self.tokenize(prompt) if isinstance(prompt, str) else list(prompt or [])
        self.validate_prompt(prompt_token_ids)
        self.scheduler.programs.check_new_program(program_id)
        arrival = self.clock() if arrival_time is None else arrival_time
        max_tokens = self.max_model_len - len(prompt_token_ids)
        if params.max_tokens is not None:
            max_tokens = min(max_tokens, params.max_tokens)
        for req in self.output_processor.add(request_id, text, prompt_token_ids, params, arrival, max_tokens,
                                             self.eos_token_ids, program_id, is_last_turn, priority, cache_salt,
                                             tool_name):
            if grammar is not None:
                self.structured_outputs.attach(req, grammar)
            self.scheduler.add_request(req)
        return request_id

    def validate_structured_outputs(self, params: SamplingParams, index: int | None = None) -> None:
        """Raise ``ValueError`` (naming the request ``index`` when given) if ``params.structured_outputs`` is
        invalid or unsupported, as ``add_request`` would; nothing is queued."""
        try:
            self._grammar_key(params)
        except ValueError as e:
            if index is None:
                raise
            raise ValueError(f"request {index}: {e}") from None

    def _grammar_key(self, params: SamplingParams):
        """The validated grammar key of a constrained request (None: unconstrained)."""
        if params.structured_outputs is None:
            return None
        if self.structured_outputs is None:
            raise ValueError("SamplingParams.structured_outputs needs a tokenizer: this engine has none (the "
                             "simulator and skip_tokenizer_init engines do not support structured outputs)")
        return self.structured_outputs.key_for(params)

    def abort_request(self, request_ids: str | list[str]) -> None:
        """Abort requests (by the ids ``add_request`` returned); their blocks are freed now."""
        ids = [request_ids] if isinstance(request_ids, str) else list(request_ids)
        now = self.clock()
        for rid in ids:
            children = self.output_processor.children_of(rid)
            if children is None:
                continue
            self.scheduler.finish_requests(children, RequestStatus.FINISHED_ABORTED, now)
            self._aborted.append(self.output_processor.final_output(rid))

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished_requests()

    # ---- the loop -------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Run one step: ``begin_step``, the executor, ``finish_step``. Returns an output for each request that
        produced a token or finished (and for requests aborted since the last step).

        Raises:
            StepFailed: the executor raised; that step's requests were aborted, the rest go on.
        """
        so = self.begin_step()
        outputs, self._aborted = self._aborted, []  # after begin_step: it may fail requests (grammar errors)
        if so.is_empty:
            return outputs
        try:
            result = self.executor.execute(so)
        except Exception as e:
            raise self.fail_step(so, e, outputs) from e
        return outputs + self.finish_step(so, result)

    def fail_step(self, so: SchedulerOutput, err: BaseException,
                  pending: list[RequestOutput] | None = None) -> StepFailed:
        """The executor raised on ``so``: abort the requests of that step (KV freed) and return the
        ``StepFailed`` to raise. ``pending``: outputs not yet handed out; the next ``step`` returns them."""
        ids = sorted({s.request.parent_id or s.request.request_id for s in so.scheduled})
        self._aborted = list(pending or []) + self._aborted
        self.abort_request(ids)
        return StepFailed(ids, err)

    def begin_step(self, now: float | None = None) -> SchedulerOutput:
        """First half of a step: the scheduler plans the batch at ``now`` (seconds; default the engine clock).
        An empty output means nothing can run; otherwise execute it, then call ``finish_step``. While some request
        is constrained (structured outputs) the output carries the step's grammar bitmask. Requests whose grammar
        failed to compile, or not in time, are ended first (``step`` returns their outputs, with ``error``); when only
        grammars are left to wait for, it blocks for them a few ms rather than return at once (no spinning)."""
        mgr = self.structured_outputs
        if mgr is not None and mgr.has_pending:
            self._aborted += self._fail_requests(mgr.poll_failures())
        so = self.scheduler.schedule(self.clock() if now is None else now)
        if mgr is not None and mgr.live:
            if so.scheduled:
                mgr.fill_bitmask(so)
            elif mgr.has_pending:
                mgr.wait_pending(_GRAMMAR_WAIT_S)
        return so

    def finish_step(self, so: SchedulerOutput, result: ExecutorResult, now: float | None = None,
                    finished_only: bool = False) -> list[RequestOutput]:
        """Second half of a step: apply the executed batch at ``now`` (seconds; default the engine clock: the
        end of the step), record it, and return an output per request that produced a token or finished.

        ``finished_only``: build outputs only for requests that finished (the simulator, which needs no
        per-token outputs); their engine records are dropped either way.
        """
        touched = self.scheduler.update(so, result, self.clock() if now is None else now)
        failed: list[RequestOutput] = []
        if so.structured is not None:
            failed = self._fail_requests(self.structured_outputs.accept(touched, so.structured))
        if self.keep_step_history:
            self._record(so, result.step_time_s)
        self.scheduler.programs.observe_step(so.num_prefill_tokens, result.step_time_s)
        if finished_only:
            touched = [r for r in touched if r.is_finished]
        outputs = failed + (self.output_processor.process(touched) if touched else [])
        if self.drafter is not None:  # speculative decoding: draft for the next step (after stop-string cuts)
            self.drafter.observe(so, result)
            self.drafter.propose(self.scheduler.running)
        return outputs

    def _fail_requests(self, failures: list[tuple[str, str, str]]) -> list[RequestOutput]:
        """End each ``(user request id, error, error_type)`` alone; their final outputs carry the error and its type
        (``invalid_request_error``: the request's grammar failed to compile, or not in time, or cannot be followed
        with this model's tokens; ``server_error``: an engine fault)."""
        outs = []
        for rid, error, error_type in failures:
            out = self.output_processor.fail_request(rid, error, error_type)
            if out is not None:
                outs.append(out)
        return outs

    def _record(self, so: SchedulerOutput, step_time_s: float) -> None:
        self.step_history.append(StepRecord(
            num_prefill_tokens=so.num_prefill_tokens, num_decode_tokens=so.num_decode_tokens,
            num_seqs=len(so.scheduled), context_tokens=sum(s.start + s.num_tokens for s in so.scheduled),
            step_time_s=step_time_s))

    def detokenizer(self, request_id: str, index: int = 0) -> IncrementalDetokenizer | None:
        """The incremental detokenizer of a running completion (for streaming deltas)."""
        return self.output_processor.detokenizer(request_id, index)

    # ---- programs ----------------------------------------------------------------------------
    def report_tool_result(self, program_id: str, tool_name: str, duration_s: float) -> None:
        """A client reports a finished tool run (seconds); the TTL policy learns from it.

        Raises:
            ValueError: negative or non-finite duration.
        """
        if not (duration_s >= 0 and duration_s != float("inf")):
            raise ValueError(f"duration_s must be a finite number >= 0, got {duration_s!r}")
        self.scheduler.programs.report_tool(program_id, tool_name or "unknown", float(duration_s), self.clock())

    def tag_turn_tools(self, program_id: str, tool_names: list[str]) -> None:
        """The tools a program's finished turn called, parsed from its output by the caller (the server's
        tool-call parser): the pin's TTL is recomputed for them. With parallel calls the first named tool
        stands for the turn (the TTL policy takes one tool); unknown programs are ignored."""
        if tool_names:
            self.scheduler.programs.retag(program_id, tool_names[0], self.clock())

    def end_program(self, program_id: str) -> bool:
        """End a program: its pinned KV is released at once; a turn still running pins nothing when it
        ends, and the program is forgotten then. False if the program is unknown."""
        return self.scheduler.programs.end(program_id)

    def waiting_programs(self) -> list[tuple[str, int]]:
        """Programs between turns that hold a pin (no turn running or waiting): ``(program id, pinned blocks)``,
        most pinned blocks first -- the candidates for migration (``export_program_kv``)."""
        pm = self.scheduler.programs
        out = [(pid, len(p.pinned)) for pid, p in pm.programs.items() if p.has_pin and p.active == 0]
        return sorted(out, key=lambda x: -x[1])

    def export_program_kv(self, program_id: str) -> ProgramKV | None:
        """A waiting program's pinned KV (tokens, hash salt, the executor's K/V payload of the blocks, bytes, TTL
        left), for ``import_program_kv`` on another engine. Nothing changes here: the caller ends the program
        (``end_program``) once the target has it. None when the program is unknown, holds no pin, or has a turn
        running or waiting. The executor's ``read_kv_blocks(block ids)`` gives the payload (a simulated executor
        has none: ``data`` is None) and its ``kv_bytes_per_block`` the size."""
        p = self.scheduler.programs.programs.get(program_id)
        if p is None or not p.has_pin or p.active:
            return None
        blocks = p.pinned
        read = getattr(self.executor, "read_kv_blocks", None)
        data = read([b.block_id for b in blocks]) if read is not None else None
        size = int(getattr(self.executor, "kv_bytes_per_block", 0)) * len(blocks)
        return ProgramKV(program_id, [t for b in blocks for t in b.key[1]], blocks[0].key[2], self.config.block_size,
                         data, size, max(0.0, p.pin_expiry - self.clock()), p.pin_tool)

    def import_program_kv(self, kv: ProgramKV) -> int:
        """Place a migrated program's KV here, pinned for the program (its TTL left at export; the program is
        created if new), registered in the prefix cache so its next turn hits it. Blocks already cached here are
        shared, the others written by the executor's ``write_kv_blocks(block ids, payload, positions)``.
        Returns the blocks pinned; 0 when the pool cannot take them now (nothing changed).

        Raises:
            ValueError: the block size differs, or the payload is missing for an executor that computes KV.
        """
        if kv.block_size != self.config.block_size:
            raise ValueError(f"block_size {kv.block_size} != this engine's {self.config.block_size}")
        write = getattr(self.executor, "write_kv_blocks", None)
        if write is not None and kv.data is None:
            raise ValueError("a program's KV without its K/V payload cannot be imported into a model executor")

        def fill(block_ids: list[int], positions: list[int]) -> None:
            if write is not None:
                write(block_ids, kv.data, positions)

        blocks = self.kv_manager.import_blocks(kv.token_ids, kv.salt, fill)
        if blocks is None:
            return 0
        self.scheduler.programs.adopt_pin(kv.program_id, blocks, kv.ttl_s, kv.tool_name, self.clock())
        return len(blocks)

    def expire_programs(self) -> None:
        """Expire pins whose TTL ran out and end idle programs now (``step`` does this too; a server
        calls it while no request runs)."""
        self.scheduler.programs.expire(self.clock())

    def program_stats(self, program_id: str) -> dict | None:
        """Counters of one live program (None once it has ended)."""
        p = self.scheduler.programs.programs.get(program_id)
        if p is None:
            return None
        out = p.stats.as_dict()
        out.update(attained_service=p.attained_service, pinned_blocks=len(p.pinned),
                   pin_expiry=p.pin_expiry if p.pinned else None, pin_tool=p.pin_tool if p.pinned else None,
                   tool_durations=[{"tool_name": t, "duration_s": d} for t, d in p.tool_durations])
        return out

    # ---- stats -----------------------------------------------------------------------------
    def stats(self) -> dict:
        """Engine-wide counters: requests, KV blocks, prefix cache, pins (summed over programs); with speculative
        decoding also ``spec_*`` (``SpecDecodeStats.as_dict``: drafted, accepted, mean accepted length, acceptance
        rate overall and per draft position)."""
        kv, sched, pm = self.kv_manager, self.scheduler, self.scheduler.programs
        out = pm.totals.as_dict()
        out.update(num_running=sched.num_running, num_waiting=sched.num_waiting,
                   num_preemptions=sched.num_preemptions, num_computed_tokens=sched.num_computed_tokens,
                   kv_blocks_total=kv.num_blocks, kv_blocks_free=kv.num_free_blocks,
                   kv_blocks_pinned=kv.num_pinned_blocks, prefix_queries=kv.prefix_queries,
                   prefix_hits=kv.prefix_hits, prefix_hit_rate=kv.prefix_hits / max(kv.prefix_queries, 1),
                   num_programs=len(pm.programs), programs_idle_ended=pm.idle_ended,
                   prefill_rate=pm.prefill_rate, queue_delay=pm.queue_delay, gap_overhead=pm.gap_overhead)
        if self.drafter is not None:
            out.update(self.drafter.stats.as_dict())
        return out

    def check_kv_invariants(self) -> None:
        self.kv_manager.check_invariants()

    def take_kv_events(self) -> list:
        """The prefix cache's KV events (``pitstop.kv_events``) since the last call, oldest first; empty unless
        ``EngineConfig.enable_kv_cache_events``. Safe to call from another thread than the engine loop's."""
        return self.kv_manager.pool.take_events()

    def reset_prefix_cache(self) -> int:
        """Forget the prefix cache: every cached free KV block becomes plain free (blocks held by requests and
        pinned blocks are untouched). As vLLM's ``reset_prefix_cache``; used between benchmark runs that replay
        the same prompts. Returns the number of blocks dropped."""
        return self.kv_manager.reset_prefix_cache()


_GRAMMAR_WAIT_S = 0.005
"""Seconds ``step`` blocks for a compile when nothing else can run (short: new requests are added between steps)."""


def _plain_ids_in_range(ids: list[int], vocab_size: int | None) -> bool:
    """True if every id is a plain ``int`` in ``[0, vocab_size)`` (C-level passes: type set, min, max)."""
    return set(map(type, ids)) == {int} and min(ids) >= 0 and (vocab_size is None or max(ids) < vocab_size)
