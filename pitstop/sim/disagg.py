"""Prefill/decode disaggregation in the cluster simulator, after DistServe (Zhong et al., "DistServe:
Disaggregating Prefill and Decoding for Goodput-optimized Large Language Model Serving", OSDI'24).

A prefill pool of ``P`` replicas and a decode pool of ``D`` replicas; every replica is the engine's own
``LLMEngine``/``Scheduler``/``KVCacheManager`` (``pitstop.sim.cluster.Replica``), unchanged. A request's life:

1. **Prefill leg.** It arrives and is routed (the cluster's router, over the prefill pool only) to a prefill
   replica as the same request with ``max_tokens = 1``: the prefill replica computes the prompt and samples the
   first token (TTFT is stamped there, as in DistServe, where the prefill instance returns the first token).
2. **KV transfer.** When the prefill leg finishes, a decode replica is picked (a second router instance of the
   same kind, over the decode pool) and the prompt's KV is sent over the prefill replica's link:
   ``t = prompt_tokens * kv_bytes_per_token * 8 / (link_gbps * 1e9) + latency`` seconds
   (``kv_transfer_time_s``; ``kv_bytes_per_token = layers * 2 * kv_heads * head_dim * 2`` bytes for bf16, from the
   model config). Transfers leaving one prefill replica share its link first-come first-served (one link per
   replica). Default link: 400 Gb/s, one InfiniBand NDR port (ConnectX-7; a DGX H100 has one per GPU); NVLink 4
   between GPUs of one node is 450 GB/s per direction = 3,600 Gb/s (``--kv-link-gbps 3600``). DistServe places
   prefill and decode instances so that transfers ride NVLink when the cross-node network is slow (25 Gb/s in their
   testbed) and measures the transfer below 0.1% of latency then.
3. **Decode leg.** When the transfer ends, the KV lands in the decode replica's prefix cache (``import_kv``: the
   KV manager allocates the prompt's full blocks, registers them under their chained hashes and releases them to
   the LRU end of the cached-free list, the most recently used) and the request joins that replica as
   prompt + first token with ``max_tokens = output_len - 1``. The decode scheduler admits it with a prefix-cache
   hit on the imported blocks, so it computes only the prompt's last partial block and the first token (< one
   block, the granularity of the engine's prefix cache; a real system would also send the partial block) and
   decodes the rest. If the decode replica's memory cannot take the blocks, or its own later allocations evict
   them before the request is admitted, the decode replica recomputes the prompt (counted in
   ``decode_recomputed_prompt_tokens``), as a real engine would have to.

Every output token is generated once: the first on the prefill replica, the others on the decode replica; the
client-side record (``FinishedRequest``) merges the two legs: arrival, first token and cached prompt tokens of the
prefill leg, finish time of the decode leg, TPOT over transfer + decode.

With agent programs a non-final turn's prefill leg keeps the engine's program hints (a TTL policy may pin the
prompt's KV on the prefill replica); the decode leg is sent as a last turn (no pin on the decode replica: the next
turn's prefill happens on the prefill pool anyway).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Callable, Sequence

from pitstop.sim.cluster import Cluster, FinishedRequest, Replica, SimRequest
from pitstop.sim.routers.base import Router

# One InfiniBand NDR port (400 Gb/s, ConnectX-7), gigabits per second.
DEFAULT_KV_LINK_GBPS = 400.0
# NVLink 4 (H100 SXM), 450 GB/s per direction, in gigabits per second.
NVLINK4_GBPS = 3600.0


def parse_disaggregation(text: str) -> tuple[int, int]:
    """``"P:D"`` -> ``(P, D)``, both >= 1."""
    p, sep, d = text.partition(":")
    try:
        np_, nd = int(p), int(d)
    except ValueError:
        np_ = nd = 0
    if not sep or np_ < 1 or nd < 1:
        raise ValueError(f"--disaggregation takes P:D with P, D >= 1 replicas (e.g. 1:1), got {text!r}")
    return np_, nd


def kv_bytes_per_token(model: str, dtype_bytes: int = 2) -> int:
    """KV bytes of one token over all layers (``layers * 2 * kv_heads * head_dim * dtype_bytes``) of a model
    config (``pitstop/data/model_configs``)."""
    from pitstop.sim.model_configs import load_model_shape
    return load_model_shape(model).kv_bytes_per_token(dtype_bytes)


def kv_transfer_time_s(num_tokens: int, bytes_per_token: int, link_gbps: float, latency_s: float = 0.0) -> float:
    """Seconds to send the KV of ``num_tokens`` tokens over a ``link_gbps`` gigabit/s link:
    ``latency_s + num_tokens * bytes_per_token * 8 / (link_gbps * 1e9)``."""
    if link_gbps <= 0:
        raise ValueError(f"link bandwidth must be > 0 Gb/s, got {link_gbps}")
    return latency_s + num_tokens * bytes_per_token * 8.0 / (link_gbps * 1e9)


def import_kv(replica: Replica, request_id: str, token_ids: list[int], now: float) -> tuple[int, int]:
    """Place the KV of ``token_ids``' full blocks in ``replica``'s prefix cache (``KVCacheManager.import_prefix``:
    they end as cached-free, most recently used). Returns ``(blocks already cached there, blocks written)``;
    ``(0, 0)`` with nothing changed if prefix caching is off or the pool cannot take them."""
    return replica.engine.kv_manager.import_prefix(request_id, token_ids, now)


@dataclass
class DisaggStats:
    """Counters of a disaggregated run (tokens, bytes, seconds)."""

    num_prefill: int = 0
    num_decode: int = 0
    link_gbps: float = DEFAULT_KV_LINK_GBPS
    kv_bytes_per_token: int = 0
    transfers: int = 0
    transfer_bytes: int = 0
    transfer_s_total: float = 0.0  # sum of transfer durations
    transfer_wait_s_total: float = 0.0  # time transfers waited for their link
    kv_blocks_written: int = 0
    kv_blocks_already_cached: int = 0
    kv_imports_failed: int = 0  # the decode replica had no room: it recomputes the prompt
    decode_recomputed_prompt_tokens: int = 0  # prompt tokens the decode legs ran through the model
    finished_on_prefill: int = 0  # requests with one output token: no decode leg

    def as_dict(self) -> dict:
        d = asdict(self)
        d["transfer_s_mean"] = self.transfer_s_total / self.transfers if self.transfers else 0.0
        return d


@dataclass
class _Leg:
    """A request between its prefill leg and the end of its decode leg."""

    sreq: SimRequest
    prompt: list[int]
    prefill: FinishedRequest | None = None
    target: int = -1  # decode replica (cluster index)


class DisaggCluster(Cluster):
    """Prefill pool (replicas ``0..P-1``) + decode pool (``P..P+D-1``) on one virtual clock; see the module
    docstring. Built from a plain ``Cluster`` of ``P + D`` replicas (``from_cluster``) so that replicas are made
    exactly as ``pitstop.sim.simulator.build_cluster`` makes them."""

    def __init__(self, num_prefill: int, num_decode: int, prefill_router: Router, decode_router: Router,
                 make_replica: Callable, bytes_per_token: int, link_gbps: float = DEFAULT_KV_LINK_GBPS,
                 link_latency_s: float = 0.0) -> None:
        if num_prefill < 1 or num_decode < 1:
            raise ValueError(f"need >= 1 prefill and >= 1 decode replica, got {num_prefill}:{num_decode}")
        super().__init__(num_prefill + num_decode, prefill_router, make_replica)
        self.num_prefill = num_prefill
        self.prefill = self.replicas[:num_prefill]
        self.decode = self.replicas[num_prefill:]
        self.router.reset(num_prefill)
        self.decode_router = decode_router
        self.decode_router.reset(num_decode)
        for rep in self.decode:
            rep.track_token_load = decode_router.reads_replica_state
        for j, rep in enumerate(self.prefill):
            rep.name = f"prefill {j}"
            rep.keep_output_ids = True  # the first token goes on to the decode replica
        for j, rep in enumerate(self.decode):
            rep.name = f"decode {j}"
        self.bytes_per_token = bytes_per_token
        self.link_gbps = link_gbps
        self.link_latency_s = link_latency_s
        self.link_free_at = [0.0] * num_prefill
        self.dstats = DisaggStats(num_prefill, num_decode, link_gbps, bytes_per_token)
        self._legs: dict[str, _Leg] = {}

    @classmethod
    def from_cluster(cls, base: Cluster, num_prefill: int, decode_router: Router, bytes_per_token: int,
                     link_gbps: float = DEFAULT_KV_LINK_GBPS, link_latency_s: float = 0.0) -> "DisaggCluster":
        """Adopt ``base``'s replicas (and their clock): the first ``num_prefill`` form the prefill pool, the rest
        the decode pool; ``base.router`` routes over the prefill pool."""
        reps = base.replicas
        self = cls(num_prefill, len(reps) - num_prefill, base.router, decode_router,
                   lambda i, clock: reps[i], bytes_per_token, link_gbps, link_latency_s)
        self.clock = base.clock  # the replicas' engines read this clock
        return self

    # ---- hooks of Cluster.run -----------------------------------------------------------------------
    def _place(self, sreq: SimRequest, now: float) -> int:
        leg = self._legs.get(sreq.request_id)
        if leg is not None and leg.prefill is not None:  # the KV has arrived at its decode replica
            rep = self.replicas[leg.target]
            d_prompt = leg.prompt + list(leg.prefill.output_token_ids or ())
            hit, written = import_kv(rep, sreq.request_id, d_prompt, now)
            if hit + written == 0 and len(d_prompt) > rep.engine.kv_manager.block_size:
                self.dstats.kv_imports_failed += 1
            self.dstats.kv_blocks_already_cached += hit
            self.dstats.kv_blocks_written += written
            rep.add(sreq, d_prompt)
            return leg.target
        rr = sreq.route_request()
        j = self.router.assign(rr, self.prefill, now)
        self.assignment[sreq.request_id] = j
        prompt = sreq.make_prompt()
        self._legs[sreq.request_id] = _Leg(sreq, prompt)
        self.prefill[j].add(replace(sreq, output_len=1), prompt)
        return j

    def _on_done(self, done: list[FinishedRequest], now: float) -> list[FinishedRequest]:
        out: list[FinishedRequest] = []
        for f in done:
            leg = self._legs.get(f.request_id)
            if f.replica < self.num_prefill:
                if leg.sreq.output_len <= 1:  # nothing left to decode
                    del self._legs[f.request_id]
                    self.dstats.finished_on_prefill += 1
                    out.append(f)
                else:
                    leg.prefill = f
                    self._send(leg, f.replica, now)
            else:
                del self._legs[f.request_id]
                self.dstats.decode_recomputed_prompt_tokens += f.computed_prompt_tokens
                out.append(_merge(leg.prefill, f))
        return super()._on_done(out, now) if out else out

    def _send(self, leg: _Leg, src: int, now: float) -> None:
        """Start the KV transfer of a finished prefill leg to a decode replica; its decode leg arrives there
        when the transfer ends."""
        s = leg.sreq
        d_req = SimRequest(s.request_id, 0.0, s.prompt_len + 1, s.output_len - 1, _no_prompt, s.prefix_keys,
                           s.block_tokens, s.program_id, True, None)
        rr = d_req.route_request()
        k = self.decode_router.assign(rr, self.decode, now)
        leg.target = self.num_prefill + k
        start = max(now, self.link_free_at[src])
        dt = kv_transfer_time_s(s.prompt_len, self.bytes_per_token, self.link_gbps, self.link_latency_s)
        self.link_free_at[src] = start + dt
        st = self.dstats
        st.transfers += 1
        st.transfer_bytes += s.prompt_len * self.bytes_per_token
        st.transfer_s_total += dt
        st.transfer_wait_s_total += start - now
        d_req.arrival_s = start + dt
        self.inject(d_req)


def _no_prompt() -> list[int]:
    raise AssertionError("a decode leg's prompt comes from its prefill leg")


def _merge(p: FinishedRequest, d: FinishedRequest) -> FinishedRequest:
    """The client's view of a request served by a prefill leg ``p`` and a decode leg ``d``."""
    ids = None
    if p.output_token_ids is not None and d.output_token_ids is not None:
        ids = list(p.output_token_ids) + list(d.output_token_ids)
    return FinishedRequest(p.request_id, d.replica, p.arrival_s, p.first_token_s, d.finish_s, p.prompt_len,
                           p.output_len + d.output_len, p.num_cached_tokens, p.num_preemptions + d.num_preemptions,
                           list(p.token_times_s) + list(d.token_times_s), p.program_id, p.first_scheduled_s,
                           p.computed_prompt_tokens, ids)


def build_disagg_cluster(base: Cluster, num_prefill: int, router_name: str, router_kwargs: dict,
                         model: str, link_gbps: float | None = None) -> DisaggCluster:
    """A ``DisaggCluster`` from a ``P + D``-replica cluster of ``pitstop.sim.simulator.build_cluster``; the decode
    pool gets its own router of the same kind."""
    from pitstop.sim.routers import get_router
    return DisaggCluster.from_cluster(base, num_prefill, get_router(router_name, **router_kwargs),
                                      kv_bytes_per_token(model), link_gbps or DEFAULT_KV_LINK_GBPS)


def pool_of(replicas: Sequence[Replica], index: int) -> str:
    """``"prefill"``, ``"decode"`` or ``"colocated"`` for a replica (by the name a ``DisaggCluster`` gave it)."""
    name = getattr(replicas[index], "name", "")
    return name.split(" ")[0] if name else "colocated"
