"""Block pool and KV cache manager: unit tests and hypothesis property tests of the accounting."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from pitstop.engine.block_pool import BlockPool, hash_block
from pitstop.engine.kv_cache_manager import KVCacheManager
from pitstop.request import Request, RequestStatus
from pitstop.sampling_params import SamplingParams


def make_req(rid: str, tokens: list[int], salt: str | None = None) -> Request:
    return Request(rid, list(tokens), SamplingParams(max_tokens=100), 0.0, 100, cache_salt=salt)


def test_allocate_free_balances():
    pool = BlockPool(8)
    blocks = pool.allocate(5)
    assert pool.num_free_blocks == 3 and all(b.ref_cnt == 1 for b in blocks)
    pool.free(blocks)
    assert pool.num_free_blocks == 8
    pool.check_invariants()
    with pytest.raises(RuntimeError):
        pool.free(blocks[:1])
    with pytest.raises(RuntimeError):
        pool.allocate(9)


def test_cached_blocks_evicted_lru_and_after_plain_free():
    pool = BlockPool(4)
    a, b, c, d = pool.allocate(4)
    for blk, tok in ((a, 1), (b, 2), (c, 3)):
        pool.cache(blk, *hash_block(None, (tok,)))
    pool.free([b])
    pool.free([a])
    pool.free([c])
    pool.free([d])  # uncached: reused first
    assert pool.allocate(1)[0] is d
    assert pool.allocate(1)[0] is b  # then the least recently freed cached block
    assert pool.lookup(*hash_block(None, (2,))) is None
    assert pool.lookup(*hash_block(None, (1,))) is a
    assert pool.num_evictions == 1
    pool.check_invariants()


def test_lookup_checks_stored_key_not_just_hash():
    pool = BlockPool(2)
    (blk,) = pool.allocate(1)
    h, key = hash_block(None, (1, 2))
    pool.cache(blk, h, key)
    assert pool.lookup(h, (None, (9, 9), None)) is None  # same hash, different tokens: no hit


def test_prefix_hit_needs_same_salt_and_leaves_one_token():
    kv = KVCacheManager(num_blocks=16, block_size=4)
    a = make_req("a", list(range(10)))
    assert kv.allocate_slots(a, 10) is not None
    a.num_computed_tokens = 10
    kv.cache_blocks(a)
    b = make_req("b", list(range(10)) + [50, 51])
    hits, n = kv.get_computed_blocks(b)
    assert n == 8 and [h.block_id for h in hits] == kv.block_ids("a")[:2]
    same = make_req("same", list(range(8)))
    assert kv.get_computed_blocks(same)[1] == 4  # a full hit stops one block early
    salted = make_req("s", list(range(10)), salt="tenant-2")
    assert kv.get_computed_blocks(salted)[1] == 0
    a.status = RequestStatus.FINISHED_STOPPED
    kv.free(a)
    assert kv.get_computed_blocks(b)[1] == 8  # still cached after the owner ended
    kv.assert_idle()


class KVMachine(RuleBasedStateMachine):
    """Random allocate / append / share / free / evict sequences keep the accounting balanced."""

    def __init__(self) -> None:
        super().__init__()
        self.kv = KVCacheManager(num_blocks=12, block_size=4)
        self.live: dict[str, Request] = {}
        self.n = 0

    @rule(prefix=st.sampled_from([[], [1, 2, 3, 4], [1, 2, 3, 4, 5, 6, 7, 8]]),
          tail=st.lists(st.integers(0, 5), min_size=1, max_size=9), salt=st.sampled_from([None, "x"]))
    def admit(self, prefix, tail, salt):
        self.n += 1
        req = make_req(str(self.n), prefix + tail, salt)
        hits, num_cached = self.kv.get_computed_blocks(req)
        req.num_computed_tokens = 0
        if self.kv.allocate_slots(req, req.num_tokens - num_cached, hits) is not None:
            req.num_computed_tokens = req.num_tokens
            self.kv.cache_blocks(req)
            self.live[req.request_id] = req

    @precondition(lambda self: self.live)
    @rule(data=st.data(), k=st.integers(1, 6))
    def append(self, data, k):
        req = self.live[data.draw(st.sampled_from(sorted(self.live)))]
        new = self.kv.allocate_slots(req, k)
        if new is not None:
            req.all_token_ids.extend([7] * k)
            req.output_token_ids.extend([7] * k)
            req.num_computed_tokens += k
            self.kv.cache_blocks(req)

    @precondition(lambda self: self.live)
    @rule(data=st.data(), finish=st.booleans())
    def free(self, data, finish):
        req = self.live.pop(data.draw(st.sampled_from(sorted(self.live))))
        if finish:
            req.status = RequestStatus.FINISHED_STOPPED
        self.kv.free(req)

    @rule()
    def reset_cache(self):
        self.kv.reset_prefix_cache()

    @invariant()
    def balanced(self):
        self.kv.check_invariants()
        held = sum(len(v) for v in self.kv.req_blocks.values())
        assert sum(b.ref_cnt for b in self.kv.pool.blocks) == held
        for req in self.live.values():
            assert len(self.kv.req_blocks[req.request_id]) * 4 >= req.num_computed_tokens

    def teardown(self):
        for req in self.live.values():
            req.status = RequestStatus.FINISHED_ABORTED
            self.kv.free(req)
        self.kv.assert_idle()


TestKVMachine = KVMachine.TestCase
TestKVMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
