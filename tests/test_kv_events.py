"""KV events (issue 17): the block pool's BlockStored / BlockRemoved / AllBlocksCleared, hashes equal in every
process, the exact per-replica index and its sequenced transport, the routers on it (simulator and hand-built
loads), and program affinity's load threshold."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pitstop.config import EngineConfig
from pitstop.engine.block_pool import prefix_block_hashes
from pitstop.engine.kv_cache_manager import KVCacheManager
from pitstop.kv_events import AllBlocksCleared, BlockRemoved, BlockStored
from pitstop.request import Request, RequestStatus
from pitstop.sampling_params import SamplingParams
from pitstop.sim.cost_models import ProfiledCostModel
from pitstop.sim.cost_models.profiled import FEATURES
from pitstop.sim.routers import KVEventIndex, KVEventPublisher, LoadView, RouteRequest, get_router
from pitstop.sim.simulator import SimConfig, simulate
from test_sim_cluster import _conversations

BS = 4
LINEAR = ProfiledCostModel(dict(zip(FEATURES, [0.010, 1e-4, 0.0, 0.0, 0.0])))


def _run(kv: KVCacheManager, rid: str, ids: list[int], salt: str | None = None) -> Request:
    """Admit, compute and cache a request's prompt, then free it (its full blocks stay cached)."""
    req = Request(rid, ids, SamplingParams(max_tokens=1), arrival_time=0.0, max_tokens=1, cache_salt=salt)
    hits, n = kv.get_computed_blocks(req)
    assert kv.allocate_slots(req, len(ids) - n, hits) is not None
    req.num_computed_tokens = len(ids)
    kv.cache_blocks(req)
    req.status = RequestStatus.FINISHED_LENGTH
    kv.free(req)
    return req


def test_block_pool_events_name_the_prefix_hashes():
    kv = KVCacheManager(4, BS, enable_kv_cache_events=True)
    ids = list(range(100, 111))  # 2 full blocks + 3 tokens
    _run(kv, "a", ids)
    assert kv.pool.take_events() == [BlockStored(tuple(prefix_block_hashes(ids, BS)))]
    assert kv.pool.take_events() == []  # drained
    _run(kv, "b", list(range(200, 211)))  # needs 3 blocks: 2 free + the LRU cached one evicted
    ev = kv.pool.take_events()
    assert isinstance(ev[0], BlockRemoved) and len(ev[0].block_hashes) == 1
    assert ev[0].block_hashes[0] in prefix_block_hashes(ids, BS)
    assert ev[1] == BlockStored(tuple(prefix_block_hashes(list(range(200, 211)), BS)))
    kv.reset_prefix_cache()
    assert kv.pool.take_events() == [AllBlocksCleared()]
    kv.assert_idle()


def test_events_off_by_default_and_salted_hashes_differ():
    kv = KVCacheManager(8, BS)
    _run(kv, "a", list(range(9)))
    assert kv.pool.events is None and kv.pool.take_events() == []
    kv2 = KVCacheManager(8, BS, enable_kv_cache_events=True)
    _run(kv2, "s", list(range(9)), salt="tenant-a")
    (stored,) = kv2.pool.take_events()
    assert stored.block_hashes == tuple(prefix_block_hashes(list(range(9)), BS, "tenant-a"))
    assert stored.block_hashes[0] != prefix_block_hashes(list(range(9)), BS)[0]


def test_prefix_block_hashes_are_equal_in_every_process():
    """A router in another process (another PYTHONHASHSEED) must compute the replica's names, salt included."""
    code = ("import json; from pitstop.engine.block_pool import prefix_block_hashes as h; "
            "print(json.dumps([h(list(range(40)), 16), h(list(range(40)), 16, 'salt')]))")
    outs = []
    for seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        outs.append(json.loads(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                              check=True).stdout))
    assert outs[0] == outs[1] == [prefix_block_hashes(list(range(40)), 16),
                                  prefix_block_hashes(list(range(40)), 16, "salt")]


def test_index_applies_events_and_matches_leading_blocks():
    h = prefix_block_hashes(list(range(16)), BS)  # 4 chained blocks
    ix = KVEventIndex()
    ix.apply(0, [BlockStored(tuple(h))])
    assert ix.match(0, h) == 4 and ix.match(1, h) == 0
    ix.apply(0, [BlockRemoved((h[1],))])
    assert ix.match(0, h) == 1  # the first miss ends the match (later blocks name longer prefixes)
    ix.apply(0, [AllBlocksCleared()])
    assert ix.num_blocks(0) == 0


def test_transport_repeats_recent_events_and_resyncs_on_gap():
    pub, ix = KVEventPublisher(window=2, snapshot_every=4), KVEventIndex()
    pub.publish([BlockStored((1, 2))])
    ix.apply_report(0, pub.report())  # report 0 carries a snapshot
    assert ix.match(0, [1, 2]) == 2 and not ix.replicas[0].stale
    pub.publish([BlockStored((3,))])
    r1 = pub.report()
    pub.publish([BlockRemoved((1,))])
    ix.apply_report(0, pub.report())  # r1 was missed: this report repeats its events (window 2)
    assert ix.match(0, [2]) == 1 and ix.contains(0, 3) and not ix.contains(0, 1)
    ix.apply_report(0, r1)  # a late, older report changes nothing
    assert not ix.contains(0, 1)
    for k in range(3):  # three publishes missed: more than the window
        pub.publish([BlockStored((10 + k,))])
        pub.report()
    pub.publish([BlockStored((20,))])
    ix.apply_report(0, pub.report())  # report 6: a gap, no snapshot -> stale, the old set kept
    assert ix.replicas[0].stale and ix.num_gaps == 1 and not ix.contains(0, 20)
    pub.publish([])
    ix.apply_report(0, pub.report())  # report 7: still no snapshot
    pub.publish([BlockStored((21,))])
    ix.apply_report(0, pub.report())  # report 8: snapshot
    assert not ix.replicas[0].stale and {10, 11, 12, 20, 21} <= ix.replicas[0].cached
    assert ix.replicas[0].cached == pub.cached


def _loads(*reqs):
    return [LoadView(i, outstanding_requests=n) for i, n in enumerate(reqs)]


def test_prefix_affinity_exact_index_follows_events_not_routing():
    r = get_router("prefix-affinity", index="exact", cache_threshold=0.5)
    r.reset(2)
    h = tuple(prefix_block_hashes(list(range(64)), 16))
    req = RouteRequest("a", 64, 4, block_hashes=h, kv_block_tokens=16)
    assert r.assign(req, _loads(0, 0), 0.0) == 0  # nothing cached: least loaded (ties: lowest index)
    assert r.kv_index.match(0, h) == 0  # routing alone does not fill the exact index
    r.kv_index.apply(1, [BlockStored(h[:3])])
    assert r.assign(RouteRequest("b", 64, 4, block_hashes=h, kv_block_tokens=16), _loads(0, 3), 0.0) == 1
    with pytest.raises(ValueError, match="index"):
        get_router("prefix-affinity", index="fuzzy")


def test_program_affinity_moves_an_overloaded_or_vanished_home():
    r = get_router("program-affinity", load_abs_threshold=2, load_rel_threshold=1.5)
    r.reset(3)
    keys = ("k1", "k2")
    first = RouteRequest("t0", 1024, 4, keys, 512, "p")
    assert r.assign(first, _loads(1, 0, 1), 0.0) == 1
    assert r.assign(RouteRequest("t1", 1024, 4, keys, 512, "p"), _loads(0, 2, 0), 0.0) == 1  # within threshold
    assert r.num_moves == 0
    # replica 1 overloaded (5 vs 0): the turn goes elsewhere and that becomes the home
    to = r.assign(RouteRequest("t2", 1024, 4, keys, 512, "p"), _loads(0, 5, 1), 0.0)
    assert to == 0 and r.num_moves == 1 and r.last_move == ("p", 1, 0, "overloaded") and r.home["p"] == 0
    # home gone (a live deployment's replica set changed): replicas with indexes 1 and 2 remain
    live = [LoadView(1, outstanding_requests=0), LoadView(2, outstanding_requests=0)]
    pos = r.assign(RouteRequest("t3", 1024, 4, keys, 512, "p"), live, 0.0)
    assert live[pos].index == 1  # the longest approximate prefix match (t0, t1 were routed to index 1)
    assert r.moves_by_reason == {"overloaded": 1, "gone": 1} and r.home["p"] == 1


def test_simulator_exact_index_gets_prefix_hits_without_router_keys():
    """Requests without router prefix keys: the approximate index sees nothing to match, the exact one (fed by the
    simulated engines' KV events) finds each conversation's replica."""
    hits = {}
    for index in ("approx", "exact"):
        cfg = SimConfig(model="smollm2-135m", replicas=3, router="prefix-affinity", kv_cache_tokens=8192,
                        max_model_len=2048, router_kwargs={"index": index})
        res, cluster = simulate(cfg, _conversations(6, router_keys=False), cost_model=LINEAR)
        assert res["summary"]["completed"] == 24
        hits[index] = res["summary"]["prefix_cache_hit_rate"]
        if index == "exact":
            for rep in cluster.replicas:
                cached = {b.block_hash for b in rep.engine.kv_manager.pool.blocks if b.block_hash is not None}
                entry = cluster.router.kv_index.replicas.get(rep.index)
                assert (entry.cached if entry is not None else set()) == cached
    assert hits["exact"] > 1.5 * hits["approx"], hits


def test_cluster_refuses_exact_index_without_engine_events():
    from pitstop.sim.cluster import Cluster, Replica
    from pitstop.sim.routers import get_router as gr

    def make(i, clock):
        return Replica(i, EngineConfig(block_size=16, skip_tokenizer_init=True), LINEAR, clock, 64, 1000, 512)

    with pytest.raises(ValueError, match="enable_kv_cache_events"):
        Cluster(2, gr("prefix-affinity", index="exact"), make)
