"""``GET /debug/memory``'s report (``pitstop.server.debug_memory``), in process: what the soak run reads."""

from __future__ import annotations

import gc

import psutil

from pitstop.server.debug_memory import memory_report, object_counts


class _Marker:
    pass


def test_object_counts_see_new_live_objects() -> None:
    keep = [_Marker() for _ in range(5000)]
    counts = object_counts(top=1000)
    assert counts.get("_Marker", 0) >= len(keep)
    del keep
    gc.collect()
    assert object_counts(top=1000).get("_Marker", 0) == 0


def test_report_fields_and_trim() -> None:
    rep = memory_report(top=5, trim=True)
    assert 0 < rep["rss_bytes"] and 0 < rep["rss_before_trim_bytes"]
    assert abs(rep["rss_bytes"] - psutil.Process().memory_info().rss) < 256 << 20
    assert len(rep["objects_by_type"]) == 5 and rep["gc_objects"] >= sum(rep["objects_by_type"].values())
    assert rep["tracemalloc_top"] is None  # not tracing in the tests
    assert "rss_before_trim_bytes" not in memory_report(top=1)
