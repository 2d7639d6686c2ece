"""``simulate()``: a workload on N simulated replicas of pitstop's engine; the core of ``pitstop simulate``.

What is real and what is modelled:

- real (imported, unchanged): ``LLMEngine`` request intake, ``Scheduler`` (token budget, chunked prefill,
  preemption), ``KVCacheManager`` / ``BlockPool`` (paged KV, prefix caching with chained hashes, LRU eviction),
  the scheduling policy (``pitstop.policies``);
- modelled: the step time (a cost model: ``roofline`` from a hardware spec, or ``profiled`` from measured steps),
  the sampled token values (synthetic, lengths forced by the workload), and time (a virtual clock);
- the cluster: a router per ``pitstop.sim.routers`` and one event loop (``pitstop.sim.cluster``).

Sources: Vidur (Agrawal et al., MLSys'24) for simulating the real scheduler against a profiled cost model;
GenZ (arXiv 2406.01698) for the roofline; the router papers cited in each router file.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field

from pitstop.config import EngineConfig
from pitstop.executor.acceptance import AcceptanceModel
from pitstop.sim.cluster import Cluster, FinishedRequest, Replica, SimRequest
from pitstop.sim.cost_models import CostModel, build_cost_model
from pitstop.sim.metrics import summarize_sim
from pitstop.sim.parallel import partitionable, run_in_processes
from pitstop.sim.routers import get_router


@dataclass
class SimConfig:
    """One simulated deployment.

    Attributes:
        model: model config name (``pitstop/data/model_configs``) or config.json path.
        hardware: hardware spec name or YAML (roofline; also sizes the KV cache).
        cost_model: ``roofline`` or ``profiled``.
        profile: JSON of a profiled fit (default: next to the model config).
        replicas / tp: replicas, devices per replica.
        migration: ``MigrationPolicy`` arguments (e.g. ``{"load_abs_threshold": 2}``): move waiting programs'
            pinned KV between replicas (Llumnix); None: never.
        router: router name. router_kwargs: its constructor arguments (e.g. ``{"index": "exact"}``: prefix
            matching on the replicas' KV events instead of the router's own approximate index).
        scheduling_policy: ``pitstop.policies`` name.
        ttl_policy / ttl_seconds: KV pin policy between a program's turns (``EngineConfig``).
        block_size / max_num_seqs / max_num_batched_tokens / enable_prefix_caching / enable_chunked_prefill:
            engine settings, as ``EngineConfig``.
        max_model_len: context limit (None: the model config's).
        kv_cache_tokens: KV capacity per replica in tokens (None: from the hardware memory after weights).
        slo_ms: SLOs for goodput, e.g. ``{"ttft": 2000, "tpot": 100}``.
        speculative_config: speculative decoding what-if, e.g. ``{"num_speculative_tokens": 8, "acceptance_rate":
            0.6}`` (the method is always "simulated": each step drafts K placeholder tokens per decoding sequence, the
            cost model prices the K + 1-token verify, and the acceptance model draws how many pass); None: off.
        record_steps: keep each step for the trace-event JSON.
        record_token_times: keep every token's time (ITL); costs memory on long runs.
        fast_block_tables: skip copying block tables into each step (the simulated executor never reads them).
    """

    model: str = "llama-3.1-8b"
    hardware: str = "H100-SXM"
    cost_model: str = "roofline"
    profile: str | None = None
    replicas: int = 1
    tp: int = 1
    router: str = "round-robin"
    router_kwargs: dict = field(default_factory=dict)
    migration: dict | None = None
    scheduling_policy: str = "fcfs"
    ttl_policy: str = "none"
    ttl_seconds: float | None = None
    block_size: int = 16
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    max_model_len: int | None = None
    kv_cache_tokens: int | None = None
    slo_ms: dict = field(default_factory=lambda: {"ttft": 2000.0, "tpot": 100.0})
    record_steps: bool = True
    record_token_times: bool = True
    fast_block_tables: bool = True
    speculative_config: dict | None = None


def model_facts(cfg: SimConfig) -> tuple[int, int]:
    """(vocab_size, max_model_len) of the configured model."""
    from pitstop.sim.model_configs import load_model_config
    hf = load_model_config(cfg.model)
    mml = cfg.max_model_len or int(hf.get("max_position_embeddings", 8192))
    return int(hf["vocab_size"]), mml


def kv_tokens(cfg: SimConfig) -> int:
    if cfg.kv_cache_tokens is not None:
        return cfg.kv_cache_tokens
    from pitstop.sim.hardware import load_hardware
    from pitstop.sim.model_configs import load_model_shape
    return load_hardware(cfg.hardware).kv_cache_tokens(load_model_shape(cfg.model), cfg.tp)


def build_cluster(cfg: SimConfig, cost_model: CostModel | None = None) -> Cluster:
    cm = cost_model or build_cost_model(cfg.cost_model, cfg.model, cfg.hardware, cfg.tp, cfg.profile)
    vocab, mml = model_facts(cfg)
    num_blocks = kv_tokens(cfg) // cfg.block_size
    if num_blocks * cfg.block_size < mml and cfg.max_model_len is None:
        mml = num_blocks * cfg.block_size  # the model's own context would not fit: use what the KV cache holds
    # an explicit max_model_len the KV cache cannot hold: the engine's own check raises, as the real engine's
    econf = EngineConfig(model=cfg.model, block_size=cfg.block_size, max_model_len=mml, max_num_seqs=cfg.max_num_seqs,
                         max_num_batched_tokens=cfg.max_num_batched_tokens,
                         enable_prefix_caching=cfg.enable_prefix_caching,
                         enable_chunked_prefill=cfg.enable_chunked_prefill, scheduling_policy=cfg.scheduling_policy,
                         ttl_policy=cfg.ttl_policy, ttl_seconds=cfg.ttl_seconds, skip_tokenizer_init=True,
                         speculative_config=_simulated_spec(cfg.speculative_config))
    router = get_router(cfg.router, **cfg.router_kwargs)
    econf.enable_kv_cache_events = getattr(router, "wants_kv_events", False)  # index="exact": engines publish

    block_bytes = kv_block_bytes(cfg)

    def make(i, clock):
        rep = Replica(i, econf, cm, clock, num_blocks, vocab, mml, record_token_times=cfg.record_token_times,
                      record_steps=cfg.record_steps, fast_block_tables=cfg.fast_block_tables)
        rep.runner.kv_bytes_per_block = block_bytes
        if econf.speculative_config is not None:  # each verify's accepted length is drawn (seeded per replica)
            rep.runner.acceptance = AcceptanceModel(econf.speculative_config.acceptance_rate, seed=i)
        return rep

    cluster = Cluster(cfg.replicas, router, make)
    if cfg.migration is not None:
        from pitstop.sim.routers.migration import MigrationPolicy
        cluster.migration = MigrationPolicy(**cfg.migration)
    return cluster


def kv_block_bytes(cfg: SimConfig) -> int:
    """KV bytes of one block of the configured model (bfloat16 K/V; what a migration moves per block)."""
    from pitstop.sim.model_configs import load_model_shape
    return load_model_shape(cfg.model).kv_bytes_per_token(2) * cfg.block_size


def _simulated_spec(spec: dict | None) -> dict | None:
    """The simulator's speculative config: the method is "simulated" (K placeholder drafts a step, accepted per the
    acceptance model: ``acceptance_rate``, the probability that each draft passes given the ones before did), so
    what-ifs take ``{"num_speculative_tokens": K, "acceptance_rate": a}`` measured on the real engine."""
    if spec is None:
        return None
    return dict(spec, method="simulated")


def effective_max_model_len(cfg: SimConfig) -> int:
    vocab, mml = model_facts(cfg)
    if cfg.max_model_len is not None:
        return mml
    return min(mml, (kv_tokens(cfg) // cfg.block_size) * cfg.block_size)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector for a run (restored after, even on error).

    A run allocates millions of small, acyclic, long-lived objects (block hashes, KV blocks, per-step batch
    records); the collector's periodic passes over them took ~40% of the run's CPU time while finding
    almost nothing (a few cyclic objects per request, freed when the collector is back). Reference counting
    still frees everything else at once, so memory is unchanged.

    The objects that survive the run are moved to the oldest generation before the collector is back
    (``freeze`` + ``unfreeze``), so that re-enabling it does not start a young-generation pass over all of them
    (~0.5 s per 2,000 Mooncake requests); cyclic garbage among them is still found by the next full collection.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.freeze()
            gc.unfreeze()
            gc.enable()


def simulate(cfg: SimConfig, requests: list[SimRequest], cost_model: CostModel | None = None,
             processes: int = 1) -> tuple[dict, Cluster]:
    """Run ``requests`` on the configured cluster. Returns (result dict, the cluster for traces/plots).

    ``processes`` > 1: simulate groups of replicas in that many forked processes when the router reads no replica
    state (round-robin; same result to the last bit, see ``pitstop.sim.parallel``); ignored otherwise."""
    cluster = build_cluster(cfg, cost_model)
    result, _ = run_cluster(cfg, cluster, requests, processes=processes)
    return result, cluster


def run_cluster(cfg: SimConfig, cluster: Cluster, requests: Sequence[SimRequest],
                num_sent: int | None = None, processes: int = 1) -> tuple[dict, list[FinishedRequest]]:
    """Simulate ``requests`` (plus whatever the cluster's hooks inject: agent turns, disaggregated decode legs)
    to completion on a built ``cluster``. Returns (result dict with ``config``, ``cost_model``, ``summary``,
    ``replicas``, ``sim``; the requests finished as the client sees them).

    Args:
        cfg: the ``SimConfig`` the cluster was built from (reported under ``config``).
        num_sent: requests the workload meant to send (default ``len(requests)``); missing ones count as failed.
        processes: > 1 runs groups of replicas in forked processes if ``partitionable(cluster)`` (round-robin).
    """
    t_wall = time.perf_counter()
    with gc_paused():
        if processes > 1 and partitionable(cluster):
            finished = run_in_processes(cluster, requests, processes)
        else:
            finished = cluster.run(requests)
    wall = time.perf_counter() - t_wall
    summary = summarize_sim(finished, cfg.slo_ms, num_sent=len(requests) if num_sent is None else num_sent)
    st = cluster.stats
    reps = []
    for r in cluster.replicas:
        c = r.engine_counts()
        reps.append({"replica": r.index, "pool": getattr(r, "name", f"replica {r.index}").split(" ")[0],
                     "requests": len(r.finished), "steps": r.num_steps, "busy_s": r.busy_s,
                     "utilization": r.busy_s / st.sim_time_s if st.sim_time_s else 0.0,
                     "prefix_cache_hit_rate": c.prefix_hits / c.prefix_queries if c.prefix_queries else 0.0,
                     "preemptions": c.num_preemptions, "kv_capacity_tokens": r.kv_capacity_tokens})
    result = {
        "config": asdict(cfg),
        "cost_model": cluster.replicas[0].runner.cost_model.describe(),
        "summary": summary,
        "replicas": reps,
        "sim": {"wall_s": wall, "events": st.num_events, "steps": st.num_steps, "sim_time_s": st.sim_time_s,
                "events_per_s": st.num_events / wall if wall else 0.0,
                "steps_per_s": st.num_steps / wall if wall else 0.0,
                "speedup_vs_real_time": st.sim_time_s / wall if wall else 0.0,
                **({"process_cpu_s": st.process_cpu_s} if st.process_cpu_s else {}),
                **({"migrations": st.migrations, "migrated_blocks": st.migrated_blocks,
                    "migrated_bytes": st.migrated_bytes} if cluster.migration is not None else {})},
    }
    return result, finished
