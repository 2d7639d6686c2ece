"""The scheduler: continuous batching under a token budget, chunked prefill mixed with decodes,
prefix-cache-aware admission, preemption by recompute.

Sources: Orca (iteration-level scheduling, OSDI'22), vLLM (paged KV, preemption by recompute,
SOSP'23), Sarathi-Serve (stall-free chunked prefill: running decodes first, then prefill chunks
fill the remaining token budget, OSDI'24).

Speculative decoding (``pitstop.engine.spec_decode``): a decoding request with draft tokens
(``Request.spec_token_ids``, set by the engine's drafter after the previous step) is scheduled as a verify of
``1 + K`` tokens, K cut to the budget; when its blocks cannot be allocated it decodes without drafts before anything
is preempted. After the step only the accepted tokens count as computed and the blocks past them are freed
(``KVCacheManager.rollback_slots``).

The scheduler never imports torch and never reads a clock: ``now`` is passed in (wall time in the
engine, virtual time in the simulator).
"""

from __future__ import annotations

from dataclasses import dataclass

from pitstop.engine.kv_cache_manager import KVCacheManager
from pitstop.engine.program_manager import ProgramManager
from pitstop.request import Request, RequestStatus
from pitstop.scheduler_output import ExecutorResult, ScheduledRequest, SchedulerOutput
from pitstop.policies import SchedulingPolicy, TTLPolicy, get_scheduling_policy, get_ttl_policy


@dataclass
class SchedulerConfig:
    """Batching limits.

    Attributes:
        max_num_seqs: most requests in one step.
        max_num_batched_tokens: token budget of one step (prefill chunks + decodes).
        max_model_len: context limit (tokens, prompt + output).
        enable_chunked_prefill: split long prompts across steps; if False a prompt must fit the budget.
        scheduling_policy: name of the ordering policy (``pitstop.policies``).
        ttl_policy / ttl_seconds: how long a program's KV stays pinned between turns.
        program_idle_timeout: seconds after which a program with no running or waiting turn is ended
            (None: never). max_programs: most live programs (None: unbounded).
        block_tables: give every scheduled request its block table (False: an empty list, for executors that
            read no KV, such as the simulator's; allocation, caching and freeing are unchanged).
    """

    max_num_seqs: int = 128
    max_num_batched_tokens: int = 2048
    max_model_len: int = 8192
    enable_chunked_prefill: bool = True
    scheduling_policy: str = "fcfs"
    ttl_policy: str = "none"
    ttl_seconds: float | None = None
    program_idle_timeout: float | None = None
    max_programs: int | None = None
    block_tables: bool = True

    def __post_init__(self) -> None:
        for name in ("max_num_seqs", "max_num_batched_tokens", "max_model_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


class Scheduler:
    """Decides, each step, which requests run and how many tokens each computes."""

    def __init__(self, config: SchedulerConfig, kv_manager: KVCacheManager,
                 policy: SchedulingPolicy | None = None, ttl_policy: TTLPolicy | None = None) -> None:
        self.config = config
        self.kv = kv_manager
        self.policy = policy or get_scheduling_policy(config.scheduling_policy)
        self.programs = ProgramManager(kv_manager, ttl_policy or get_ttl_policy(config.ttl_policy,
                                                                                 config.ttl_seconds),
                                       config.program_idle_timeout, config.max_programs)
        self.policy.bind(self.programs.programs)
        self.waiting = self.policy.make_queue()  # a RequestQueue in the policy's order
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        self._prefill_done: set[str] = set()  # ids whose prompt prefill finished (gates n>1 siblings)
        self.num_preemptions = 0
        self.num_computed_tokens = 0  # tokens run through the model, all steps (prefill + decode)
        self._seq = 0

    # ---- queue management -----------------------------------------------------------------
    def add_request(self, request: Request) -> None:
        if request.request_id in self.requests:
            raise ValueError(f"duplicate request id {request.request_id!r}")
        request.arrival_seq = self._seq
        self._seq += 1
        request.status = RequestStatus.WAITING
        self.requests[request.request_id] = request
        self.waiting.add(request)
        self.programs.on_arrival(request)

    def has_unfinished_requests(self) -> bool:
        return bool(self.waiting or self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    def finish_requests(self, request_ids: list[str], status: RequestStatus, now: float) -> list[Request]:
        """End requests early (abort, stop string). Unknown or finished ids are ignored."""
        done = []
        for rid in request_ids:
            req = self.requests.get(rid)
            if req is None or req.is_finished:
                continue
            if req in self.running:
                self.running.remove(req)
            else:  # a live request is running or waiting
                self.waiting.remove(req)
            self._finish(req, status, now)
            done.append(req)
        return done

    def _finish(self, req: Request, status: RequestStatus, now: float) -> None:
        req.status = status
        req.metrics.finished_time = now
        if req.grammar is not None:  # structured outputs: the matcher goes with the request
            req.grammar.free()
            req.grammar = None
        if not self.programs.on_finish(req, status, now):
            self.kv.free(req)  # the request is finished: its memoised block hashes go too
        self.programs.after_finish(req)
        self.requests.pop(req.request_id, None)
        self._prefill_done.add(req.request_id)  # never block siblings on a finished request

    def _preempt(self, req: Request, now: float) -> None:
        """Preemption by recompute: free the blocks (they stay in the prefix cache) and requeue. Every output token
        is kept (and re-prefilled), so a structured-output matcher keeps its state: it reflects exactly those tokens
        (``RequestGrammar.sync`` checks it before each bitmask)."""
        self.running.remove(req)
        self.kv.free(req)
        req.status = RequestStatus.PREEMPTED
        req.num_computed_tokens = 0
        req.metrics.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.add(req)

    # ---- one step -------------------------------------------------------------------------
    def schedule(self, now: float) -> SchedulerOutput:
        """Build the next step: running requests first (decodes and unfinished prefill chunks), then
        waiting requests in policy order while budget, sequence slots and blocks last."""
        self.programs.expire(now)
        budget = self.config.max_num_batched_tokens
        scheduled: list[ScheduledRequest] = []
        preempted: list[str] = []
        if self.running:
            budget = self._schedule_running(now, budget, scheduled, preempted)
        if not preempted and self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            self._schedule_waiting(now, budget, scheduled)  # (else it would stop before its first request)
        if len(scheduled) > 1:  # prefills first, then decodes (a stable partition)
            prefills = [s for s in scheduled if s.num_tokens > 1]
            if prefills and len(prefills) < len(scheduled):
                scheduled = prefills + [s for s in scheduled if s.num_tokens <= 1]
        return SchedulerOutput(scheduled=scheduled, preempted_ids=preempted)

    def _schedule_running(self, now: float, budget: int, out: list[ScheduledRequest],
                          preempted: list[str]) -> int:
        """Schedule running requests (``out`` holds nothing else yet); returns the budget left. The entries
        are built inline (as ``_entry``): this loop runs for every request of every step."""
        kv = self.kv
        block_ids = kv.block_ids if self.config.block_tables else _no_block_ids
        running_status = RequestStatus.RUNNING
        running = self.running
        for req in (running[:] if len(running) < 2 else self.policy.order(running, now)):  # a snapshot
            if budget <= 0:
                break
            if req.status is not running_status:
                continue  # preempted earlier in this loop
            start = req.num_computed_tokens
            num_tokens = len(req.all_token_ids)
            num_new = num_tokens - start
            if num_new > budget:
                num_new = budget
            drafts = req.spec_token_ids
            if drafts:  # speculative decoding: verify the drafts in this step (budget permitting)
                req.spec_token_ids = []
                drafts = drafts[:budget - 1] if num_new == 1 else ()
                num_new += len(drafts)
            while kv.allocate_slots(req, num_new) is None:
                if drafts:  # no room for the drafts: decode without them before releasing anything
                    num_new -= len(drafts)
                    drafts = ()
                    continue
                if self.programs.release_one():
                    continue  # pins go before running requests
                done = {e.request.request_id for e in out}  # scheduled in this loop: never preempted
                candidates = [r for r in self.running if r.request_id not in done]
                victim = self.policy.pick_victim(candidates, now)
                self._preempt(victim, now)
                preempted.append(victim.request_id)
                if victim is req:
                    break
            if req.status is not running_status:
                continue
            if drafts:
                out.append(ScheduledRequest(req, num_new, start, block_ids(req.request_id), True, drafts))
            else:
                out.append(ScheduledRequest(req, num_new, start, block_ids(req.request_id),
                                            start + num_new == num_tokens))
            budget -= num_new
        return budget

    def _schedule_waiting(self, now: float, budget: int, out: list[ScheduledRequest]) -> None:
        """Admit waiting requests in the queue's order while budget, sequence slots and blocks last (the first
        that does not fit stops admission: no skipping ahead)."""
        for req in self.waiting.in_order(now):
            if budget <= 0 or len(self.running) >= self.config.max_num_seqs:
                break
            if req.wait_for is not None and req.wait_for not in self._prefill_done:
                continue  # n > 1: share the sibling's prompt blocks once its prefill is done
            if req.grammar is not None and not req.grammar.ready():
                continue  # its grammar is still compiling (off this thread): the others go ahead
            computed, num_cached = self.kv.get_computed_blocks(req)
            num_new = req.num_tokens - num_cached
            if num_new > budget and not self.config.enable_chunked_prefill:
                break
            num_new = min(num_new, budget)
            if not self._allocate_waiting(req, num_new, computed):
                break  # out of blocks: keep policy order, do not skip ahead
            self.waiting.remove(req)
            self.running.append(req)
            req.status = RequestStatus.RUNNING
            req.num_computed_tokens = num_cached
            if req.metrics.first_scheduled_time is None:  # counters of the first admission only
                req.metrics.first_scheduled_time = now
                req.metrics.num_cached_tokens = num_cached
                self.kv.record_prefix_lookup(req.num_tokens, num_cached)
                self.programs.on_admit(req, num_cached, now)
            out.append(self._entry(req, num_new))
            budget -= num_new

    def _allocate_waiting(self, req: Request, num_new: int, computed: list) -> bool:
        """Allocate for a waiting request. Pins of other programs are released only when nothing
        is running (else the request waits: pins are bounded by their TTL). While pins are held, a
        request is admitted only if one block per running request stays free afterwards, so that
        running requests can grow without releasing pins (a watermark, as vLLM's block manager keeps)."""
        if self.running and self.programs.has_pins and not self.kv.can_allocate(
                req, num_new + len(self.running) * self.kv.block_size, computed):
            return False
        while self.kv.allocate_slots(req, num_new, computed) is None:
            if self.running or not self.programs.release_one(exclude=req.program_id):
                return False
        return True

    def _entry(self, req: Request, num_new: int) -> ScheduledRequest:
        start = req.num_computed_tokens
        table = self.kv.block_ids(req.request_id) if self.config.block_tables else _NO_BLOCKS
        return ScheduledRequest(req, num_new, start, table, start + num_new == len(req.all_token_ids))

    # ---- after the step -----------------------------------------------------------------
    def update(self, output: SchedulerOutput, result: ExecutorResult, now: float) -> list[Request]:
        """Advance computed tokens, append sampled tokens, stop finished requests.

        Returns the requests that received a token this step (finished ones included).
        """
        touched = []
        kv, programs, prefill_done = self.kv, self.programs, self._prefill_done
        bs = kv.block_size
        running_status = RequestStatus.RUNNING
        for s in output.scheduled:
            req = s.request
            if req.status is not running_status:
                continue  # aborted during the step
            if s.draft_token_ids:
                self._update_verify(s, result, now, touched)
                continue
            n = s.num_tokens
            computed = req.num_computed_tokens + n
            req.num_computed_tokens = computed
            programs.on_compute(req, n)
            num_prompt = len(req.prompt_token_ids)
            if s.start < num_prompt:
                end = s.start + n
                req.metrics.num_computed_prompt_tokens += (end if end < num_prompt else num_prompt) - s.start
            self.num_computed_tokens += n
            if computed // bs != (computed - n) // bs:  # a block filled up: register it in the prefix cache
                kv.cache_blocks(req)
            if not s.sample:
                continue
            rid = req.request_id
            prefill_done.add(rid)
            token = result.sampled[rid]
            req.append_output(token, result.logprobs.get(rid))
            req.num_new_tokens = 1
            metrics = req.metrics
            if metrics.first_token_time is None:
                metrics.first_token_time = now
            metrics.last_token_time = now
            touched.append(req)
            status = self._check_stop(req, token)
            if status is not None:
                self.running.remove(req)
                self._finish(req, status, now)
        return touched

    def _update_verify(self, s: ScheduledRequest, result: ExecutorResult, now: float,
                       touched: list[Request]) -> None:
        """Apply a speculative verify: the request's last known token and its accepted drafts are computed (their K/V
        written this step), the rejected drafts' blocks are rolled back, and the emitted tokens (accepted drafts
        plus the target's token) are appended one at a time until a stop condition (EOS, stop token, max_tokens,
        max_model_len) ends the request: tokens after it are dropped, as if generated one per step."""
        req = s.request
        rid = req.request_id
        emitted = result.spec_tokens[rid]
        logprobs = result.logprobs.get(rid)  # one record per emitted token, when the request asks
        status = None
        req.num_new_tokens = 0
        for i, token in enumerate(emitted):
            req.append_output(token, logprobs[i] if logprobs is not None else None)
            req.num_new_tokens += 1
            status = self._check_stop(req, token)
            if status is not None:
                break
        # K/V now valid: the last known token and the accepted drafts (those kept, when a stop cut the run)
        n = s.num_known_tokens + min(len(emitted) - 1, req.num_new_tokens)
        computed = req.num_computed_tokens + n
        req.num_computed_tokens = computed
        self.programs.on_compute(req, n)
        self.num_computed_tokens += s.num_tokens
        kv = self.kv
        kv.rollback_slots(req)
        if computed // kv.block_size != (computed - n) // kv.block_size:
            kv.cache_blocks(req)
        self._prefill_done.add(rid)
        metrics = req.metrics
        if metrics.first_token_time is None:
            metrics.first_token_time = now
        metrics.last_token_time = now
        touched.append(req)
        if status is not None:
            self.running.remove(req)
            self._finish(req, status, now)

    def _check_stop(self, req: Request, token: int) -> RequestStatus | None:
        params = req.sampling_params
        num_output = len(req.output_token_ids)
        if num_output >= params.min_tokens:
            if token in params.stop_token_ids:
                req.stop_reason = token
                return RequestStatus.FINISHED_STOPPED
            if not params.ignore_eos and token in req.eos_token_ids:
                return RequestStatus.FINISHED_STOPPED
        if num_output >= req.max_tokens or len(req.all_token_ids) >= self.config.max_model_len:
            return RequestStatus.FINISHED_LENGTH
        return None

    # ---- accounting -----------------------------------------------------------------------
    def check_kv_accounting(self) -> None:
        """Assert the KV accounting: the pool balances, only live requests hold blocks, every
        reference is held by a request, and nothing is referenced once all requests have ended."""
        self.kv.check_invariants()
        live = {rid for rid, r in self.requests.items() if not r.is_finished}
        holders = set(self.kv.req_blocks)
        assert holders <= live, f"ended requests still hold blocks: {sorted(holders - live)[:5]}"
        refs = sum(b.ref_cnt for b in self.kv.pool.blocks)
        held = sum(len(v) for v in self.kv.req_blocks.values())
        pinned = self.programs.pinned_refs()
        assert pinned == self.kv.num_pinned_blocks, f"pins hold {pinned}, KV manager counts {self.kv.num_pinned_blocks}"
        assert refs == held + pinned, f"{refs} block references but requests hold {held} and pins {pinned}"
        if not self.has_unfinished_requests():
            self.kv.assert_idle()


_NO_BLOCKS: list[int] = []  # the block table of every request when ``SchedulerConfig.block_tables`` is off


def _no_block_ids(request_id: str) -> list[int]:
    return _NO_BLOCKS
