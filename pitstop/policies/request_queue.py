"""The scheduler's waiting queue: one interface, with FCFS, priority and policy-ordered implementations.

Source: vLLM's ``RequestQueue`` (v1 ``core/sched/request_queue.py``): FCFS and priority queues behind one interface,
so the scheduler neither sorts the whole waiting list every step nor removes from it in O(n). A policy whose order
moves with time or program state (``program-fcfs``, ``plas``) keeps the sort-at-read queue.
"""

from __future__ import annotations

import bisect
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterable, Iterator

from pitstop.request import Request


class RequestQueue(ABC):
    """Waiting requests. ``in_order(now)`` yields them in service order (most deserving first); while iterating,
    the caller may ``remove`` the request just yielded (an admission) and nothing else."""

    @abstractmethod
    def add(self, request: Request) -> None:
        """Queue a request (new, or preempted and back)."""

    @abstractmethod
    def remove(self, request: Request) -> None:
        """Take a queued request out (admitted, aborted or stopped).

        Raises:
            ValueError: the request is not queued.
        """

    @abstractmethod
    def in_order(self, now: float) -> Iterator[Request]:
        """The queued requests in service order at ``now`` (seconds)."""

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def __iter__(self) -> Iterator[Request]:
        """Every queued request (in no promised order)."""

    def __bool__(self) -> bool:
        return len(self) > 0


class _StaticKeyQueue(RequestQueue):
    """Requests kept sorted by a key fixed when they are queued (a total order: keys end with ``arrival_seq``) in
    ``_items``, a deque or a list."""

    _items: deque[Request] | list[Request]

    def __init__(self, key: Callable[[Request], tuple]) -> None:
        self.key = key

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Request]:
        return iter(list(self._items))

    def in_order(self, now: float) -> Iterator[Request]:
        q = self._items
        i = 0
        while i < len(q):
            req = q[i]
            yield req
            if i < len(q) and q[i] is req:
                i += 1  # else the caller removed it: the next one moved to ``i``


class FCFSRequestQueue(_StaticKeyQueue):
    """First come, first served: a deque in ``key`` order (``(arrival_time, arrival_seq)``). Arrivals in time order
    append (O(1)), a preempted request goes back to the front (O(1)); admission pops the front (O(1))."""

    def __init__(self, key: Callable[[Request], tuple]) -> None:
        super().__init__(key)
        self._items: deque[Request] = deque()

    def add(self, request: Request) -> None:
        q, key = self._items, self.key
        k = key(request)
        if not q or key(q[-1]) <= k:
            q.append(request)
        elif k <= key(q[0]):
            q.appendleft(request)
        else:  # out of order in the middle (an arrival time given out of order): O(n)
            items = list(q)
            items.insert(bisect.bisect_left(items, k, key=key), request)
            self._items = deque(items)

    def remove(self, request: Request) -> None:
        q = self._items
        if q and q[0] is request:
            q.popleft()
        else:
            q.remove(request)


class PriorityRequestQueue(_StaticKeyQueue):
    """vLLM's ``priority``: a list sorted by ``key`` (``(priority, arrival_time, arrival_seq)``), smaller first;
    binary search to insert and to find a request to remove."""

    def __init__(self, key: Callable[[Request], tuple]) -> None:
        super().__init__(key)
        self._items: list[Request] = []

    def add(self, request: Request) -> None:
        bisect.insort(self._items, request, key=self.key)

    def remove(self, request: Request) -> None:
        items = self._items
        i = bisect.bisect_left(items, self.key(request), key=self.key)
        if i < len(items) and items[i] is request:
            del items[i]
        else:
            items.remove(request)


class PolicyOrderedQueue(RequestQueue):
    """For orders that move with time or program state (``program-fcfs``: pins; ``plas``: attained service and
    starvation): requests in arrival order (O(1) add and remove), sorted by ``order(requests, now)`` once per
    ``in_order`` call (a snapshot: keys that change during a scheduling pass do not reorder it)."""

    def __init__(self, order: Callable[[Iterable[Request], float], list[Request]]) -> None:
        self.order = order
        self._items: dict[str, Request] = {}

    def add(self, request: Request) -> None:
        self._items[request.request_id] = request

    def remove(self, request: Request) -> None:
        if self._items.pop(request.request_id, None) is None:
            raise ValueError(f"request {request.request_id!r} is not queued")

    def in_order(self, now: float) -> Iterator[Request]:
        items = self._items.values()
        return iter(list(items) if len(items) < 2 else self.order(items, now))

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Request]:
        return iter(list(self._items.values()))
