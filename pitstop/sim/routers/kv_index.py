"""The exact per-replica prefix index built from the replicas' KV events (llm-d's "precise" prefix-cache scoring,
NVIDIA Dynamo's KV router), and the sequenced transport that carries the events from a replica to a router.

``KVEventIndex``: per replica, the set of block hashes (``pitstop.engine.block_pool.prefix_block_hashes``) its
prefix cache holds; ``match`` counts the leading blocks of a request's hashes present (a chained hash names the
whole prefix, so the first miss ends the match). The simulator feeds it each replica's events after every step
(``apply``); a live deployment feeds it ``KVEventPublisher`` reports (``apply_report``).

``KVEventPublisher`` (on the replica): numbers each event, keeps the events of its last ``window`` reports, and
every ``snapshot_every``-th report (and the first) adds a snapshot of every cached hash. A report therefore
repeats recent events, so a consumer that misses a report (Ray Serve's routing stats are a latest-value channel:
a slow consumer skips values) still sees every event; one that missed more (a gap in the sequence numbers)
marks the replica stale and resynchronises on the next snapshot, matching against its old set meanwhile.
Report format (JSON-friendly): ``{"seq": last event seq, "events": [[seq, kind, [hashes]], ...],
"snapshot": {"seq": s, "hashes": [...]} | None}`` with kind ``stored`` / ``removed`` / ``cleared``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from pitstop.kv_events import AllBlocksCleared, BlockRemoved, BlockStored, KVEvent

STORED, REMOVED, CLEARED = "stored", "removed", "cleared"


def _encode(event: KVEvent) -> tuple[str, list[int]]:
    if isinstance(event, BlockStored):
        return STORED, list(event.block_hashes)
    if isinstance(event, BlockRemoved):
        return REMOVED, list(event.block_hashes)
    if isinstance(event, AllBlocksCleared):
        return CLEARED, []
    raise TypeError(f"not a KV event: {event!r}")


def _apply(cached: set, kind: str, hashes: Iterable[int]) -> None:
    if kind == STORED:
        cached.update(hashes)
    elif kind == REMOVED:
        cached.difference_update(hashes)
    elif kind == CLEARED:
        cached.clear()
    else:
        raise ValueError(f"unknown KV event kind {kind!r}")


@dataclass
class _ReplicaEntry:
    cached: set = field(default_factory=set)
    seq: int = -1  # last event applied (reports)
    stale: bool = True  # reports: waiting for a snapshot (a new replica starts so)


class KVEventIndex:
    """Exact index: which prefix blocks each replica's cache holds, from its KV events. Replicas are keyed by
    the router's replica index (``ReplicaLoad.index``)."""

    def __init__(self) -> None:
        self.replicas: dict[int, _ReplicaEntry] = {}
        self.num_events = 0
        self.num_gaps = 0  # reports after which the consumer had to wait for a snapshot

    def _entry(self, replica: int) -> _ReplicaEntry:
        e = self.replicas.get(replica)
        if e is None:
            e = self.replicas[replica] = _ReplicaEntry()
        return e

    def apply(self, replica: int, events: Iterable[KVEvent]) -> None:
        """Apply ``events`` of ``replica`` in order (a lossless feed, as the simulator's)."""
        e = self._entry(replica)
        e.stale = False
        for event in events:
            kind, hashes = _encode(event)
            _apply(e.cached, kind, hashes)
            self.num_events += 1

    def apply_report(self, replica: int, report: dict | None) -> None:
        """Apply a ``KVEventPublisher.report`` of ``replica`` (events already applied are skipped)."""
        if not report:
            return
        e = self._entry(replica)
        if not e.stale and report.get("seq", -1) <= e.seq:
            return  # nothing new (the same report seen again)
        snap = report.get("snapshot")
        if snap is not None and (e.stale or snap["seq"] > e.seq):
            e.cached = set(snap["hashes"])
            e.seq, e.stale = snap["seq"], False
        events = [ev for ev in report.get("events", ()) if ev[0] > e.seq]
        if events and events[0][0] != e.seq + 1:
            if not e.stale:
                self.num_gaps += 1
            e.stale = True  # a gap: wait for the next snapshot (matching against the old set meanwhile)
            return
        for seq, kind, hashes in events:
            _apply(e.cached, kind, hashes)
            e.seq = seq
            self.num_events += 1

    def drop(self, replica: int) -> None:
        """Forget a replica (gone)."""
        self.replicas.pop(replica, None)

    def match(self, replica: int, block_hashes: Sequence[int]) -> int:
        """Leading blocks of ``block_hashes`` cached on ``replica``."""
        e = self.replicas.get(replica)
        if e is None:
            return 0
        cached, n = e.cached, 0
        for h in block_hashes:
            if h not in cached:
                break
            n += 1
        return n

    def num_blocks(self, replica: int) -> int:
        """Blocks the index holds for ``replica``."""
        e = self.replicas.get(replica)
        return len(e.cached) if e is not None else 0

    def contains(self, replica: int, block_hash: int) -> bool:
        e = self.replicas.get(replica)
        return e is not None and block_hash in e.cached


class KVEventPublisher:
    """A replica's side of the event transport (see the module docstring).

    Args:
        window: reports whose events each report repeats (>= 1).
        snapshot_every: a snapshot in every this-many-th report (and the first).
    """

    def __init__(self, window: int = 8, snapshot_every: int = 10) -> None:
        if window < 1 or snapshot_every < 1:
            raise ValueError("window and snapshot_every must be >= 1")
        self.seq = -1
        self.cached: set[int] = set()
        self.chunks: deque[list] = deque(maxlen=window)
        self.snapshot_every = snapshot_every
        self.num_reports = 0

    def publish(self, events: Iterable[KVEvent]) -> None:
        """Number and keep ``events`` (oldest first) for the next reports."""
        chunk = []
        for event in events:
            kind, hashes = _encode(event)
            self.seq += 1
            _apply(self.cached, kind, hashes)
            chunk.append([self.seq, kind, hashes])
        self.chunks.append(chunk)

    def report(self) -> dict:
        """The events of the last ``window`` publishes, and a snapshot every ``snapshot_every``-th report."""
        snap = None
        if self.num_reports % self.snapshot_every == 0:
            snap = {"seq": self.seq, "hashes": list(self.cached)}
        self.num_reports += 1
        return {"seq": self.seq, "events": [ev for chunk in self.chunks for ev in chunk], "snapshot": snap}
