"""Memory report of the serving process for leak hunting (``GET /debug/memory``, ``--debug-endpoints`` only).

Three views of the same process, so a growing RSS can be told apart as a leak or allocator growth:
resident set size (bytes, from ``psutil``), live Python objects by type after a full ``gc.collect()``, and,
when the process runs with ``PYTHONTRACEMALLOC`` set, ``tracemalloc``'s top allocation sites. With
``trim=True`` glibc's ``malloc_trim(0)`` runs first and the RSS before and after it is reported: what a trim
releases was free memory the allocator kept, not a leak.
"""

from __future__ import annotations

import gc
import tracemalloc
from collections import Counter

import psutil

from pitstop.executor.malloc_tuning import trim_malloc


def object_counts(top: int) -> dict[str, int]:
    """The ``top`` most numerous live Python object types (after a full collection), name -> count."""
    gc.collect()
    counts = Counter(type(o).__name__ for o in gc.get_objects())
    return dict(counts.most_common(top))


def tracemalloc_top(top: int) -> list[dict] | None:
    """``tracemalloc``'s ``top`` allocation sites by size (bytes), or None when it is not tracing."""
    if not tracemalloc.is_tracing():
        return None
    stats = tracemalloc.take_snapshot().statistics("lineno")[:top]
    return [{"site": str(s.traceback[0]), "size_bytes": s.size, "count": s.count} for s in stats]


def memory_report(top: int = 25, trim: bool = False) -> dict:
    """RSS (bytes), live object counts by type and tracemalloc's top sites; ``trim`` runs ``malloc_trim`` first.

    Returns a JSON-ready dict: ``rss_bytes``, ``rss_before_trim_bytes`` (only with ``trim``), ``gc_objects``,
    ``objects_by_type``, ``tracemalloc_top`` (None unless tracing).
    """
    proc = psutil.Process()
    out: dict = {}
    if trim:
        out["rss_before_trim_bytes"] = proc.memory_info().rss
        trim_malloc()
    out["objects_by_type"] = object_counts(top)
    out["gc_objects"] = len(gc.get_objects())
    out["tracemalloc_top"] = tracemalloc_top(top)
    out["rss_bytes"] = proc.memory_info().rss
    return out
