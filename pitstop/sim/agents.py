"""Agent programs in the cluster simulator (``pitstop simulate --workload agents``).

The programs, their sampling and scaling are ``pitstop bench agents``'s (``pitstop.bench.agents.load_programs``
over the AgentCgroup / TraceLab loaders); the closed loop is the same ``ProgramReplay`` that drives its
in-process and virtual-clock backends (``pitstop.replay.agent_replay``): program ``i`` starts at a Poisson
arrival, turn ``k + 1`` is injected into the running cluster (``Cluster.inject``) when turn ``k`` has finished
(on whatever replica, or prefill + decode pair, served it) and its tool time has passed, with turn ``k``'s
prompt + its generated token ids + the new tokens as prompt. Before a turn is added to its replica, the engine
there is told how long the preceding tool ran (``LLMEngine.report_tool_result``, as the bench does), and a
program's last turn ends it on every replica (``end_program``).

Routing keys: ``program_id`` (the ``program-affinity`` router keeps a program on one replica) and chained
hashes of the prompt's 512-token blocks (``prefix-affinity``, ``two-choice``).
"""

from __future__ import annotations

from typing import Sequence

from pitstop.replay.agent_replay import ProgramReplay, TurnRequest
from pitstop.sim.cluster import Cluster, FinishedRequest, SimRequest
from pitstop.workloads.agent_program import AgentProgram

ROUTING_BLOCK_TOKENS = 512


def prefix_keys(prompt: Sequence[int], block_tokens: int = ROUTING_BLOCK_TOKENS) -> tuple:
    """Chained hash per full ``block_tokens`` block of ``prompt`` (``prefix_keys[i]`` names blocks ``0..i``)."""
    keys, prev = [], 0
    for s in range(0, len(prompt) - block_tokens + 1, block_tokens):
        prev = hash((prev, tuple(prompt[s:s + block_tokens])))
        keys.append(prev)
    return tuple(keys)


class AgentDriver:
    """Closed-loop agent programs on a ``Cluster`` (or ``DisaggCluster``): installs itself as the cluster's
    ``on_finished`` hook, and as its ``on_admitted`` hook to report tool times to the engine that gets each turn.

    Args:
        cluster: the cluster to drive (its replicas are told to keep output token ids).
        programs / arrivals: programs and their start times (s, virtual clock).
        seed: prompt token RNG seed. vocab_size: prompt ids are drawn below it.
        report_tool_results: call ``report_tool_result`` on the engine of each later turn.
    """

    def __init__(self, cluster: Cluster, programs: Sequence[AgentProgram], arrivals: Sequence[float], seed: int,
                 vocab_size: int, report_tool_results: bool = True) -> None:
        self.cluster = cluster
        self.replay = ProgramReplay(programs, arrivals, seed, vocab_size)
        self.report_tool_results = report_tool_results
        self._turns: dict[str, tuple[int, int]] = {}  # request id -> (program index, turn)
        self._prev_tool: dict[str, tuple[str, float]] = {}
        for rep in cluster.replicas:
            rep.keep_output_ids = True
        cluster.on_finished = self._on_finished
        cluster.on_admitted = self._on_admitted

    @property
    def records(self):
        return self.replay.records

    @property
    def num_turns_planned(self) -> int:
        return sum(p.num_turns for p in self.replay.programs)

    def first_requests(self) -> list[SimRequest]:
        """Every program's first turn (pass them to ``Cluster.run``; later turns are injected)."""
        return [self._request(self.replay.start_turn(i, k, t), t) for t, i, k in self.replay.first_turns()]

    def _request(self, tq: TurnRequest, t: float) -> SimRequest:
        self._turns[tq.request_id] = (tq.program, tq.turn)
        if tq.prev_tool is not None:
            self._prev_tool[tq.request_id] = tq.prev_tool
        prompt = tq.prompt
        return SimRequest(tq.request_id, t, len(prompt), tq.max_tokens, lambda: prompt, prefix_keys(prompt),
                          ROUTING_BLOCK_TOKENS, tq.program_id, tq.is_last_turn, tq.tool_name)

    def _on_admitted(self, sreq: SimRequest, replica: int, now: float) -> None:
        """A turn was added to ``replica``: report the tool run that preceded it to that replica's engine."""
        prev = self._prev_tool.pop(sreq.request_id, None)
        if prev is not None and self.report_tool_results:
            self.cluster.replicas[replica].engine.report_tool_result(sreq.program_id, *prev)

    def _on_finished(self, done: list[FinishedRequest], now: float) -> None:
        for f in done:
            turn = self._turns.pop(f.request_id, None)
            if turn is None:  # not a turn of ours
                continue
            i, k = turn
            ids = f.output_token_ids if f.output_token_ids is not None else []
            nxt = self.replay.finish_turn(i, k, ids, f.finish_s, ok=len(ids) == f.output_len,
                                          first_scheduled_s=f.first_scheduled_s, first_token_s=f.first_token_s,
                                          cached_tokens=f.num_cached_tokens,
                                          computed_prompt_tokens=f.computed_prompt_tokens,
                                          preemptions=f.num_preemptions)
            pid = self.replay.programs[i].program_id
            if nxt is not None:
                self.cluster.inject(self._request(self.replay.start_turn(i, k + 1, nxt), nxt))
            else:
                stats = self.cluster.replicas[f.replica].engine.program_stats(pid)
                if isinstance(stats, dict):
                    self.replay.records[i].stats = dict(stats)
                for rep in self.cluster.replicas:
                    rep.engine.end_program(pid)


def agent_summary(driver: AgentDriver, cluster: Cluster) -> dict:
    """``pitstop bench agents``'s per-run summary (JCT, TTFT per turn, re-prefilled tokens, prefix hits, pins, KV
    pressure against the cluster's total KV capacity) of a simulated run, plus the engines' summed counters."""
    from pitstop.replay.agent_summary import summarize_run
    totals: dict = {}
    for rep in cluster.replicas:
        for key, v in rep.engine.stats().items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                totals[key] = totals.get(key, 0) + v
    cap = sum(r.kv_capacity_tokens for r in cluster.replicas)
    return summarize_run(driver.records, cluster.clock.now, totals, cap)
