"""The waiting queues keep exactly the order the policies' ``order`` gives (the scheduler's behaviour before the
queues), under any mix of arrivals, preemptions (re-adds) and removals, and allow removing the request just yielded
while iterating."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pitstop.policies import get_scheduling_policy
from pitstop.policies.request_queue import FCFSRequestQueue, PolicyOrderedQueue, PriorityRequestQueue
from pitstop.request import Request
from pitstop.sampling_params import SamplingParams

OPS = st.lists(st.tuples(st.sampled_from(["add", "remove", "readd"]), st.floats(0, 10), st.integers(0, 3)),
               max_size=60)


def _request(i: int, arrival: float, priority: int) -> Request:
    return Request(f"r{i}", [1, 2], SamplingParams(), arrival_time=arrival, max_tokens=4, arrival_seq=i,
                   priority=priority)


@pytest.mark.parametrize("policy", ["fcfs", "priority", "program-fcfs", "plas"])
@settings(max_examples=60, deadline=None)
@given(ops=OPS)
def test_queue_order_is_the_policy_order(policy, ops):
    pol = get_scheduling_policy(policy)
    queue, reference = pol.make_queue(), []
    out: list[Request] = []  # removed, may come back (a preemption)
    for i, (op, arrival, priority) in enumerate(ops):
        if op == "add":
            r = _request(i, arrival, priority)
            queue.add(r)
            reference.append(r)
        elif op == "remove" and reference:
            r = reference.pop(priority % len(reference))
            queue.remove(r)
            out.append(r)
        elif op == "readd" and out:
            r = out.pop()
            queue.add(r)
            reference.append(r)
        assert len(queue) == len(reference)
        assert list(queue.in_order(5.0)) == (pol.order(reference, 5.0) if reference else [])
        assert sorted(r.request_id for r in queue) == sorted(r.request_id for r in reference)


@pytest.mark.parametrize("make", [lambda k: FCFSRequestQueue(k), lambda k: PriorityRequestQueue(k),
                                  lambda k: PolicyOrderedQueue(lambda rs, now: sorted(rs, key=k))])
def test_removing_the_request_just_yielded_keeps_the_iteration_going(make):
    key = lambda r: (r.arrival_time, r.arrival_seq)  # noqa: E731
    q = make(key)
    reqs = [_request(i, float(i % 3), 0) for i in range(7)]
    for r in reqs:
        q.add(r)
    seen = []
    for r in q.in_order(0.0):
        seen.append(r)
        if r.arrival_seq % 2 == 0:
            q.remove(r)
    assert seen == sorted(reqs, key=key)
    assert sorted(q, key=key) == [r for r in sorted(reqs, key=key) if r.arrival_seq % 2]
    with pytest.raises(ValueError):
        q.remove(reqs[0])
