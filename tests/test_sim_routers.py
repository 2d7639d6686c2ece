"""Router policies on hand-built replica states."""

from __future__ import annotations

import pytest

from pitstop.sim.routers import LoadView, ROUTERS, RouteRequest, get_router


def views(*tokens, reqs=None, queued=None, cap=1 << 20):
    return [LoadView(i, outstanding_requests=(reqs or [0] * len(tokens))[i], outstanding_tokens=t,
                     queued_prefill_tokens=(queued or [0] * len(tokens))[i], kv_capacity_tokens=cap)
            for i, t in enumerate(tokens)]


def rr(rid, keys=(), program=None, prompt_len=None, block=512):
    return RouteRequest(rid, prompt_len or max(1, len(keys)) * block, 10, tuple(keys), block, program)


def route(router, req, reps, now=0.0):
    i = router.route(req, reps, now)
    router.on_routed(req, i, now)
    return i


def test_registry_names_and_errors():
    assert set(ROUTERS) == {"round-robin", "least-loaded", "prefix-affinity", "two-choice", "program-affinity"}
    with pytest.raises(ValueError, match="unknown router"):
        get_router("random-walk")


def test_round_robin_cycles():
    r = get_router("round-robin")
    r.reset(3)
    reps = views(0, 0, 0)
    assert [route(r, rr(str(i)), reps) for i in range(7)] == [0, 1, 2, 0, 1, 2, 0]


def test_least_loaded_picks_fewest_outstanding_tokens_ties_by_requests():
    r = get_router("least-loaded")
    r.reset(3)
    assert route(r, rr("a"), views(500, 20, 300)) == 1
    assert route(r, rr("b"), views(20, 20, 300, reqs=[5, 2, 0])) == 1


def test_prefix_affinity_follows_cache_then_falls_back_to_load():
    r = get_router("prefix-affinity", cache_threshold=0.5, balance_abs_threshold=4, balance_rel_threshold=1.5)
    r.reset(3)
    shared = ["sys", "doc1", "doc2", "q1"]
    # first request: no match anywhere -> least loaded (replica 2)
    assert route(r, rr("a", shared), views(100, 50, 0)) == 2
    # same long prefix: goes to replica 2 although it is now the busiest (match 3/4 > 0.5)
    assert route(r, rr("b", shared[:3] + ["q2"]), views(0, 0, 900, reqs=[0, 1, 3])) == 2
    # short match (1 of 4 blocks) is below the threshold -> least loaded
    assert route(r, rr("c", ["sys", "x", "y", "z"]), views(0, 10, 900, reqs=[0, 1, 3])) == 0
    # imbalance (8 vs 0 outstanding requests > abs 4 and rel 1.5) overrides affinity
    assert route(r, rr("d", shared), views(100, 5, 900, reqs=[1, 0, 8])) == 1
    # ties on match length break by load
    r2 = get_router("prefix-affinity")
    r2.reset(2)
    assert route(r2, rr("a", ["p"]), views(0, 5)) == 0
    assert route(r2, rr("b", ["p"]), views(5, 0)) == 0  # full match on 0 beats the lighter 1
    assert r2.indexes[0].match(["p"]) == 1 and r2.indexes[1].match(["p"]) == 0


def test_prefix_index_is_lru_bounded():
    r = get_router("prefix-affinity")
    r.reset(1)
    route(r, rr("a", ["k1", "k2", "k3"], block=16), views(0, cap=48))  # capacity 3 blocks
    route(r, rr("b", ["j1", "j2"], block=16), views(0, cap=48))
    assert r.indexes[0].match(["k1"]) == 0 and r.indexes[0].match(["k3"]) == 1 and r.indexes[0].match(["j1", "j2"]) == 2


def test_two_choice_meets_on_the_same_two_replicas_and_dodges_overload():
    r = get_router("two-choice", prefix_blocks=1, ttft_slo_s=1.0, prefill_tokens_per_s=10_000)
    r.reset(8)
    reps = views(*([0] * 8))
    a, b = r.candidates(rr("x", ["sys", "u1"]), 8)
    assert a != b
    picks = {route(r, rr(f"q{i}", ["sys", f"u{i}"]), reps) for i in range(20)}
    assert picks <= {a, b}  # every request with the same prefix lands on one of its two candidates
    # the candidate holding the prefix is preferred while its estimated TTFT meets the SLO
    first = route(r, rr("p0", ["sys", "doc", "q"]), reps)
    other = ({a, b} - {first}).pop()
    busy = views(*([0] * 8), queued=[5000 if i == first else 0 for i in range(8)])
    assert route(r, rr("p1", ["sys", "doc", "q2"]), busy) == first  # 0.5 s + uncached < 1 s SLO
    overloaded = views(*([0] * 8), queued=[50_000 if i == first else 0 for i in range(8)])
    assert route(r, rr("p2", ["sys", "doc", "q3"]), overloaded) == other


def test_program_affinity_keeps_a_program_on_its_first_replica():
    r = get_router("program-affinity")
    r.reset(3)
    assert route(r, rr("t1", program="P"), views(50, 0, 10)) == 1
    assert route(r, rr("t2", program="P"), views(50, 900, 10)) == 1  # sticky even when busy
    assert route(r, rr("u1", program="Q"), views(50, 900, 10)) == 2
    assert route(r, rr("lone"), views(0, 900, 10)) == 0
    r.forget("P")
    assert route(r, rr("t3", program="P"), views(50, 900, 10)) == 2
