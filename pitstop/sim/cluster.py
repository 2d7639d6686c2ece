"""N replicas, each pitstop's own ``LLMEngine`` (its ``Scheduler``, ``KVCacheManager`` and scheduling policy,
unchanged) with a ``SimulatedRunner`` and its own KV memory, sharing one ``VirtualClock``; a router places each
arriving request.

The event loop (discrete-event simulation): a step of replica ``r`` is *planned* at its start time ``t0``
(``Scheduler.schedule(t0)`` and the cost model's duration ``dt``) and *applied* at ``t0 + dt``
(``Scheduler.update(..., t0 + dt)``: tokens appended, finished requests freed, first-token and finish times
stamped). The loop always processes the earliest event: the next arrival (routed with the replicas' state at
that instant: a running step's effects are not visible before it ends) or the step that ends first, after which
that replica immediately plans its next step. Requests arriving during a step join the next one, as in the real
engine loop. Arrivals with the same timestamp are all injected before any idle replica starts.

``LLMEngine.step()`` does both phases at once, so a replica performs the same calls split in two
(``Replica.start_step`` / ``Replica.finish_step``); ``tests/test_sim_cluster.py`` checks that the calls of
``LLMEngine.step`` are still the ones mirrored here.
"""

from __future__ import annotations

import heapq
import math
from array import array
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from pitstop.config import EngineConfig
from pitstop.engine.llm_engine import LLMEngine
from pitstop.scheduler_output import ExecutorResult, SchedulerOutput
from pitstop.executor.simulated_runner import SimulatedRunner
from pitstop.outputs import RequestOutput
from pitstop.sampling_params import SamplingParams
from pitstop.clock import VirtualClock
from pitstop.sim.cost_models.interface import CostModel
from pitstop.engine.block_pool import prefix_block_hashes
from pitstop.sim.routers.base import RouteRequest, Router
from pitstop.sim.routers.kv_index import KVEventIndex
from pitstop.sim.routers.migration import MigrationPolicy, ReplicaMigrationView


@dataclass(slots=True)
class SimRequest:
    """One request of a simulated workload.

    Attributes:
        request_id: unique id.
        arrival_s: arrival time, seconds (virtual).
        prompt_len / output_len: tokens (the output length is forced with ``ignore_eos``).
        make_prompt: builds the prompt token ids (called once, when the request arrives, to bound memory).
        prefix_keys: chained per-block hashes of the prompt for routers (see ``RouteRequest``).
        block_tokens: tokens per routing block.
        program_id: agent program id (None: a lone request).
    """

    request_id: str
    arrival_s: float
    prompt_len: int
    output_len: int
    make_prompt: Callable[[], list[int]]
    prefix_keys: tuple = ()
    block_tokens: int = 512
    program_id: str | None = None
    is_last_turn: bool = True
    tool_name: str | None = None

    def route_request(self) -> RouteRequest:
        return RouteRequest(self.request_id, self.prompt_len, self.output_len, self.prefix_keys, self.block_tokens,
                            self.program_id)


@dataclass(frozen=True, slots=True)
class EngineCounts:
    """A replica engine's counters: prompt tokens looked up in / found in the prefix cache, preemptions."""

    prefix_queries: int
    prefix_hits: int
    num_preemptions: int


@dataclass(slots=True)
class _Work:
    """A request's load as the router sees it (tokens): its prompt, all it has to compute (prompt + output - 1),
    and what remains of both."""

    prompt: int
    total: int
    remaining: int
    remaining_prefill: int


@dataclass(slots=True)
class FinishedRequest:
    """Timings (virtual seconds) of one finished request."""

    request_id: str
    replica: int
    arrival_s: float
    first_token_s: float
    finish_s: float
    prompt_len: int
    output_len: int
    num_cached_tokens: int  # prompt tokens found in the prefix cache at first admission (not recompute self-hits)
    num_preemptions: int
    token_times_s: list[float] = field(default_factory=list)
    program_id: str | None = None
    first_scheduled_s: float | None = None
    computed_prompt_tokens: int = 0  # prompt tokens run through the model, recomputes included
    output_token_ids: list[int] | None = None  # kept only when ``Replica.keep_output_ids`` (agents, disaggregation)


class Replica:
    """One engine: ``LLMEngine`` + ``SimulatedRunner`` with ``num_blocks`` KV blocks, and the load counters the
    router reads (``outstanding_requests``, ``outstanding_tokens``, ``queued_prefill_tokens``).

    ``track_token_load`` (set by the cluster from ``Router.reads_replica_state``): keep ``outstanding_tokens`` and
    ``queued_prefill_tokens`` (a pass over each step's batch); when False they stay 0."""

    def __init__(self, index: int, config: EngineConfig, cost_model: CostModel, clock: VirtualClock,
                 num_blocks: int, vocab_size: int, max_model_len: int, record_token_times: bool = True,
                 record_steps: bool = False, fast_block_tables: bool = True) -> None:
        self.index = index
        self.clock = clock
        self.runner = SimulatedRunner(cost_model, clock, vocab_size, advance_clock=False)
        # fast_block_tables: the simulated executor never reads block tables, so the engine skips copying them into
        # each step (allocation, caching and freeing unchanged), and checks the (long, synthetic) prompts' id range
        # with one vectorised pass
        self.engine = LLMEngine(config, executor=self.runner, clock=clock, num_blocks=num_blocks,
                                vocab_size=vocab_size, max_model_len=max_model_len,
                                keep_step_history=False,  # step_history: memory on long runs
                                block_tables=not fast_block_tables,
                                ids_in_range=_ids_in_range if fast_block_tables else None)
        self.scheduler = self.engine.scheduler
        self.kv_capacity_tokens = num_blocks * config.block_size
        self.record_token_times = record_token_times
        self.record_steps = record_steps
        self.keep_output_ids = False
        self.steps: list[tuple] = []  # (t_start, dt, prefill tokens, decode seqs, seqs, preempted)
        self.pending: tuple[SchedulerOutput, ExecutorResult, float] | None = None
        self.outstanding_requests = 0
        self.outstanding_tokens = 0
        self.queued_prefill_tokens = 0
        self.track_token_load = True
        self._work: dict[str, _Work] = {}  # when track_token_load
        self._times: dict[str, list[float]] = {}
        self.finished: list[FinishedRequest] = []
        self.num_steps = 0
        self.busy_s = 0.0
        self._counts: EngineCounts | None = None  # set by ``restore_counts``
        self.kv_index: KVEventIndex | None = None  # fed with the engine's KV events after each step (exact index)

    def engine_counts(self) -> EngineCounts:
        """The engine's prefix-cache and preemption counters (or those ``restore_counts`` gave)."""
        if self._counts is not None:
            return self._counts
        kv = self.engine.kv_manager
        return EngineCounts(kv.prefix_queries, kv.prefix_hits, self.scheduler.num_preemptions)

    def restore_counts(self, counts: EngineCounts) -> None:
        """Report ``counts`` from now on instead of this engine's (a replica simulated in another process,
        ``pitstop.sim.parallel``)."""
        self._counts = counts

    @property
    def busy(self) -> bool:
        return self.pending is not None

    def add(self, sreq: SimRequest, prompt: list[int]) -> None:
        params = SamplingParams(temperature=0.0, max_tokens=sreq.output_len, ignore_eos=True)
        self.engine.add_request(sreq.request_id, None, params, prompt_token_ids=prompt, arrival_time=sreq.arrival_s,
                                program_id=sreq.program_id, is_last_turn=sreq.is_last_turn,
                                tool_name=sreq.tool_name)
        self.outstanding_requests += 1
        if self.track_token_load:
            total = sreq.prompt_len + sreq.output_len - 1
            self._work[sreq.request_id] = _Work(sreq.prompt_len, total, total, sreq.prompt_len)
            self.outstanding_tokens += total
            self.queued_prefill_tokens += sreq.prompt_len
        if self.record_token_times:
            self._times[sreq.request_id] = []

    def start_step(self, now: float) -> float | None:
        """Plan a step at ``now``; returns its end time, or None if nothing can run."""
        so = self.engine.begin_step(now)
        if not so.scheduled:  # so.is_empty
            return None
        res = self.runner.execute(so)
        self.pending = (so, res, now)
        if self.record_steps:
            self.steps.append((now, res.step_time_s, so.num_prefill_tokens, so.num_decode_tokens, len(so.scheduled),
                               len(so.preempted_ids)))
        return now + res.step_time_s

    def finish_step(self, now: float) -> list[FinishedRequest]:
        """Apply the pending step at ``now`` (its end). Returns requests that finished."""
        so, res, t0 = self.pending
        self.pending = None
        self.num_steps += 1
        self.busy_s += res.step_time_s
        # LLMEngine.step()'s second half; outputs only for the requests that finished (the engine drops them)
        outs = self.engine.finish_step(so, res, now, finished_only=True)
        if self.kv_index is not None:
            self.kv_index.apply(self.index, self.engine.take_kv_events())
        if self.track_token_load:
            self._count_work(so)
        if self.record_token_times:
            times = self._times
            for s in so.scheduled:
                if s.sample:  # it received a token (nothing is aborted during a simulated step)
                    times[s.request.request_id].append(now)
        return [self._finish(o) for o in outs] if outs else []

    def _count_work(self, so: SchedulerOutput) -> None:
        """Move ``outstanding_tokens`` / ``queued_prefill_tokens`` by the work an applied step did (its
        preempted requests' work is back)."""
        work = self._work
        d_tok = d_pre = 0
        for s in so.scheduled:
            w = work.get(s.request.request_id)
            if w is None:
                continue
            done = s.request.num_computed_tokens
            rem = w.total - done
            rem = rem if rem > 0 else 0
            pre = w.prompt - done
            pre = pre if pre > 0 else 0
            d_tok += w.remaining - rem
            d_pre += w.remaining_prefill - pre
            w.remaining, w.remaining_prefill = rem, pre
        if so.preempted_ids:  # recompute: the preempted requests' work is back
            for rid in so.preempted_ids:
                w = work.get(rid)
                if w is not None:
                    d_tok -= w.total - w.remaining
                    d_pre -= w.prompt - w.remaining_prefill
                    w.remaining, w.remaining_prefill = w.total, w.prompt
        self.outstanding_tokens -= d_tok
        self.queued_prefill_tokens -= d_pre

    def _finish(self, out: RequestOutput) -> FinishedRequest:
        rid = out.request_id
        self.outstanding_requests -= 1
        if self.track_token_load:
            w = self._work.pop(rid)
            self.outstanding_tokens -= w.remaining
            self.queued_prefill_tokens -= w.remaining_prefill
        m, comp = out.metrics, out.outputs[0]
        # m.num_cached_tokens: set by the scheduler at the request's first admission only
        fr = FinishedRequest(rid, self.index, m.arrival_time, m.first_token_time, m.finished_time,
                             len(out.prompt_token_ids), len(comp.token_ids), m.num_cached_tokens, m.num_preemptions,
                             self._times.pop(rid, []), out.program_id, m.first_scheduled_time,
                             m.num_computed_prompt_tokens, comp.token_ids if self.keep_output_ids else None)
        self.finished.append(fr)
        return fr


def _ids_in_range(ids: list[int], vocab_size: int | None) -> bool:
    """True if every id is an integer in ``[0, vocab_size)`` (no upper bound when None): one C pass into a uint32
    array (negative, too large or non-integer ids raise there) and a vectorised max, ~3x faster than ``min`` +
    ``max`` over the list (``LLMEngine``'s ``ids_in_range`` hook)."""
    try:
        return int(np.frombuffer(array("I", ids), dtype=np.uint32).max()) < (vocab_size or 1 << 32)
    except (OverflowError, TypeError):
        return False


@dataclass
class ClusterStats:
    """Counts of one run."""

    num_events: int = 0  # arrivals + step ends
    num_steps: int = 0
    sim_time_s: float = 0.0
    process_cpu_s: list[float] = field(default_factory=list)  # per process (``pitstop.sim.parallel``), else empty
    migrations: int = 0  # programs whose pinned KV moved to another replica (``Cluster.migration``)
    migrated_blocks: int = 0
    migrated_bytes: int = 0


class Cluster:
    """Replicas + router on one virtual clock.

    Args:
        num_replicas: N.
        router: placement policy.
        make_replica: builds replica ``i`` given (index, clock).

    Hooks for closed-loop workloads and other topologies (``pitstop.sim.agents``, ``pitstop.sim.disagg``):
    ``inject(sreq)`` adds an arrival during a run (e.g. a program's next turn once its tool has run; one due at
    the instant a step ends joins that replica's next step);
    ``on_admitted(sreq, replica, now)`` is called after an arriving request was added to replica ``replica``;
    ``on_finished(done, now)`` is called with the requests that finish at ``now``; subclasses may override
    ``_place`` (route an arriving request and add it to a replica) and ``_on_done`` (what a replica's finished
    requests mean).
    """

    def __init__(self, num_replicas: int, router: Router, make_replica: Callable[[int, VirtualClock], Replica]) -> None:
        if num_replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {num_replicas}")
        self.clock = VirtualClock()
        self.replicas = [make_replica(i, self.clock) for i in range(num_replicas)]
        self.router = router
        self.router.reset(num_replicas)
        for rep in self.replicas:
            rep.track_token_load = router.reads_replica_state
        self.kv_block_size = 0  # > 0: requests carry their KV block hashes (the router's exact index)
        if getattr(router, "wants_kv_events", False):
            config = self.replicas[0].engine.config
            if not config.enable_kv_cache_events:
                raise ValueError("the router matches on KV events (index='exact'): build the replicas' engines with "
                                 "EngineConfig(enable_kv_cache_events=True)")
            self.kv_block_size = config.block_size
            for rep in self.replicas:
                rep.kv_index = router.kv_index
        self.stats = ClusterStats()
        self.assignment: dict[str, int] = {}
        self.on_admitted: Callable[[SimRequest, int, float], None] | None = None
        self.on_finished: Callable[[list[FinishedRequest], float], None] | None = None
        self._later: list[tuple[float, int, SimRequest]] = []  # injected arrivals (time, seq, request), a heap
        self._seq = 0
        self.migration: MigrationPolicy | None = None  # set: after each step, maybe move a waiting program's pin

    @property
    def has_injected_arrivals(self) -> bool:
        """True while arrivals added by ``inject`` wait to be admitted."""
        return bool(self._later)

    def inject(self, sreq: SimRequest) -> None:
        """Add an arrival at ``sreq.arrival_s`` (>= now) to the running simulation."""
        heapq.heappush(self._later, (sreq.arrival_s, self._seq, sreq))
        self._seq += 1

    def _admit(self, sreq: SimRequest, now: float) -> int:
        """Place an arriving request (``_place``) and tell ``on_admitted``; returns the replica index."""
        idx = self._place(sreq, now)
        if self.on_admitted is not None:
            self.on_admitted(sreq, idx, now)
        return idx

    def _place(self, sreq: SimRequest, now: float) -> int:
        """Route an arriving request and add it to its replica; returns the replica index."""
        rr = sreq.route_request()
        prompt = sreq.make_prompt()
        if self.kv_block_size:
            rr.block_hashes = tuple(prefix_block_hashes(prompt, self.kv_block_size))
            rr.kv_block_tokens = self.kv_block_size
        idx = self.router.assign(rr, self.replicas, now)
        self.assignment[sreq.request_id] = idx
        self.replicas[idx].add(sreq, prompt)
        return idx

    def _on_done(self, done: list[FinishedRequest], now: float) -> list[FinishedRequest]:
        """Requests a replica finished at ``now`` -> requests finished for the client."""
        if self.on_finished is not None:
            self.on_finished(done, now)
        return done

    def _migrate(self, now: float) -> None:
        """Ask the migration policy (the one the Ray deployment uses) and move at most one waiting program's
        pinned KV between replicas' engines (export, import, end on the source; public engine calls), then tell
        the router the program's new home. The move is instant here; ``migrated_bytes`` is what a link carries."""
        views = [ReplicaMigrationView(r.index, r.outstanding_requests, r.engine.kv_manager.num_free_blocks,
                                      r.engine.waiting_programs()) for r in self.replicas]
        d = self.migration.choose(views)
        if d is None:
            return
        src, dst = self.replicas[d.src].engine, self.replicas[d.dst].engine
        kv = src.export_program_kv(d.program_id)
        if kv is None or dst.import_program_kv(kv) == 0:
            return
        src.end_program(d.program_id)
        set_home = getattr(self.router, "set_home", None)
        if set_home is not None:
            set_home(d.program_id, d.dst)
        self.stats.migrations += 1
        self.stats.migrated_blocks += kv.num_blocks
        self.stats.migrated_bytes += kv.num_bytes

    def run(self, requests: Sequence[SimRequest], until_s: float = math.inf) -> list[FinishedRequest]:
        """Simulate ``requests`` (any order; sorted by arrival here) to completion. Returns finished requests."""
        reqs = sorted(requests, key=lambda r: r.arrival_s)
        clock, replicas, later = self.clock, self.replicas, self._later
        heap: list[tuple[float, int]] = []
        finished: list[FinishedRequest] = []
        i, n = 0, len(reqs)
        events = 0
        inf = math.inf
        while i < n or heap or later:
            next_arr = reqs[i].arrival_s if i < n else inf
            if later and later[0][0] < next_arr:
                next_arr = later[0][0]
            if heap and heap[0][0] <= next_arr:
                t, r = heapq.heappop(heap)
                if t > until_s:
                    break
                if t > clock.now:  # clock.advance_to(t), inlined: a step never ends before it starts
                    clock.now = t
                rep = replicas[r]
                done = rep.finish_step(t)
                if self.migration is not None:
                    self._migrate(t)
                if done:
                    finished.extend(self._on_done(done, t))
                    while later and later[0][0] <= t:  # follow-ups due now (e.g. after a 0 s tool) join the next
                        events += 1                    # step, as in the engine loop of ``pitstop bench agents``
                        idx = self._admit(heapq.heappop(later)[2], t)
                        if idx != r and not replicas[idx].busy:
                            t_idx = replicas[idx].start_step(t)
                            if t_idx is not None:
                                heapq.heappush(heap, (t_idx, idx))
                events += 1
                t_end = rep.start_step(t)
                if t_end is not None:
                    heapq.heappush(heap, (t_end, r))
                continue
            if next_arr > until_s:
                break
            clock.advance_to(next_arr)
            kicked = set()
            while True:
                if i < n and reqs[i].arrival_s == next_arr:
                    sreq = reqs[i]
                    i += 1
                elif later and later[0][0] == next_arr:
                    sreq = heapq.heappop(later)[2]
                else:
                    break
                events += 1
                idx = self._admit(sreq, next_arr)
                if not replicas[idx].busy:
                    kicked.add(idx)
            for idx in sorted(kicked):
                t_end = replicas[idx].start_step(next_arr)
                if t_end is not None:
                    heapq.heappush(heap, (t_end, idx))
        stuck = [r.index for r in replicas if r.scheduler.has_unfinished_requests() and not r.busy]
        if stuck and until_s == inf:
            raise RuntimeError(f"replicas {stuck} hold requests that can never be scheduled")
        self.stats.num_events += events
        self.stats.num_steps = sum(r.num_steps for r in replicas)
        self.stats.sim_time_s = clock.now
        return finished
