"""Prometheus metrics of one server (a per-app ``CollectorRegistry``, never the global one).

Names follow vLLM's ``vllm:*`` metrics with a ``pitstop_`` prefix; latency histograms are in seconds
with vLLM's bucket edges (``vllm/v1/metrics/loggers.py``). Latencies are measured on the engine clock
(``RequestMetrics``: arrival = when the engine received the request).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from pitstop.outputs import RequestOutput

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0)
E2EL_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
                480.0, 960.0, 1920.0, 7680.0)


class _EngineGauges:
    """Custom collector: reads the engine thread's latest stats snapshot at scrape time."""

    def __init__(self, stats: Callable[[], dict[str, Any]]) -> None:
        self._stats = stats

    def collect(self):
        s = self._stats()
        for name, key, doc in (
                ("pitstop_num_requests_running", "num_running", "Requests in the running batch."),
                ("pitstop_num_requests_waiting", "num_waiting", "Requests waiting to be scheduled."),
                ("pitstop_num_preemptions", "num_preemptions", "Preemptions (recompute) since start."),
                ("pitstop_kv_cache_blocks_total", "kv_num_blocks", "KV cache blocks in the pool."),
                ("pitstop_kv_cache_blocks_used", "kv_used_blocks", "KV cache blocks referenced by requests."),
                ("pitstop_kv_cache_blocks_free", "kv_free_blocks", "KV cache blocks allocatable now "
                                                                    "(free + cached free)."),
                ("pitstop_kv_cache_usage_perc", "kv_usage", "Fraction of KV blocks in use (0..1)."),
                ("pitstop_prefix_cache_queries_tokens", "prefix_queries", "Prompt tokens looked up in the "
                                                                          "prefix cache."),
                ("pitstop_prefix_cache_hits_tokens", "prefix_hits", "Prompt tokens found in the prefix cache."),
                ("pitstop_kv_cache_blocks_pinned", "kv_pinned_blocks", "KV blocks pinned by agent programs "
                                                                        "between turns."),
                ("pitstop_programs", "num_programs", "Live agent programs."),
                ("pitstop_programs_idle_ended", "programs_idle_ended", "Programs ended by the idle timeout or "
                                                                       "to make room under max_programs."),
                ("pitstop_program_turns", "program_turns", "Program turns received since start."),
                ("pitstop_pins", "program_pins", "KV pins created after non-final turns."),
                ("pitstop_pin_hits", "program_pin_hits", "Next turns that found their pinned KV."),
                ("pitstop_pin_expiries", "program_pin_expiries", "Pins whose TTL ran out."),
                ("pitstop_pin_releases", "program_pin_releases", "Pins released early under memory pressure."),
                ("pitstop_program_reused_tokens", "program_reused_tokens", "Program prompt tokens served from "
                                                                           "the prefix cache."),
                ("pitstop_program_reprefilled_tokens", "program_reprefilled_tokens",
                 "Tokens of an earlier turn's context computed again.")):
            g = GaugeMetricFamily(name, doc)
            g.add_metric([], float(s.get(key, 0)))
            yield g
        q = s.get("prefix_queries", 0)
        g = GaugeMetricFamily("pitstop_prefix_cache_hit_rate", "Prefix-cache hits / queries (tokens), since start.")
        g.add_metric([], float(s.get("prefix_hits", 0)) / q if q else 0.0)
        yield g
        if "spec_num_verifies" in s:
            yield from _spec_decode_gauges(s)


def _spec_decode_gauges(s: dict[str, Any]):
    """Speculative decoding (vLLM's ``spec_decode_*`` metrics), from ``SpecDecodeStats`` in the snapshot."""
    for name, key, doc in (
            ("pitstop_spec_decode_num_drafts", "spec_num_verifies", "Sequence-steps that verified draft tokens."),
            ("pitstop_spec_decode_num_draft_tokens", "spec_num_draft_tokens", "Draft tokens verified."),
            ("pitstop_spec_decode_num_accepted_tokens", "spec_num_accepted_tokens", "Draft tokens accepted."),
            ("pitstop_spec_decode_acceptance_rate", "spec_acceptance_rate", "Accepted / drafted tokens since start."),
            ("pitstop_spec_decode_mean_accepted_length", "spec_mean_accepted_length",
             "Tokens emitted per verify (accepted drafts + 1) since start.")):
        g = GaugeMetricFamily(name, doc)
        g.add_metric([], float(s.get(key, 0)))
        yield g
    for name, key, doc in (
            ("pitstop_spec_decode_num_drafts_per_pos", "spec_drafted_per_position",
             "Verifies with a draft token at this position (0-based)."),
            ("pitstop_spec_decode_num_accepted_tokens_per_pos", "spec_accepted_per_position",
             "Draft tokens accepted at this position (0-based).")):
        g = GaugeMetricFamily(name, doc, labels=["position"])
        for pos, n in enumerate(s.get(key, [])):
            g.add_metric([str(pos)], float(n))
        yield g


class ServerMetrics:
    """Counters and histograms of one server; ``render()`` gives the Prometheus text format.

    Args:
        stats: returns the engine's gauge snapshot (``AsyncEngine.stats``).
    """

    def __init__(self, stats: Callable[[], dict[str, Any]]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.http_requests = Counter("pitstop_http_requests", "HTTP responses by endpoint and status code.",
                                     ["endpoint", "status"], registry=r)
        self.request_success = Counter("pitstop_request_success", "Finished engine requests by finish reason.",
                                       ["finished_reason"], registry=r)
        self.prompt_tokens = Counter("pitstop_prompt_tokens", "Prompt tokens of finished requests.", registry=r)
        self.generation_tokens = Counter("pitstop_generation_tokens", "Generated tokens of finished requests.",
                                         registry=r)
        self.cached_tokens = Counter("pitstop_prompt_cached_tokens", "Prompt tokens served from the prefix "
                                                                     "cache (finished requests).", registry=r)
        self.ttft = Histogram("pitstop_time_to_first_token_seconds", "Time to first token (s).",
                              buckets=TTFT_BUCKETS, registry=r)
        self.tpot = Histogram("pitstop_time_per_output_token_seconds", "Time per output token after the "
                                                                        "first (s).", buckets=TPOT_BUCKETS, registry=r)
        self.e2el = Histogram("pitstop_e2e_request_latency_seconds", "End-to-end request latency (s).",
                              buckets=E2EL_BUCKETS, registry=r)
        self.rejected = Counter("pitstop_requests_rejected", "Requests refused before the engine, by reason.",
                                ["reason"], registry=r)
        self.tool_calls = Counter("pitstop_tool_calls", "Tool calls returned to clients.", registry=r)
        self.tool_calls_malformed = Counter("pitstop_tool_calls_malformed", "Tool calls under tool_choice=auto "
                                            "that did not parse (returned as content), by parser.",
                                            ["parser"], registry=r)
        self.program_moves_in = Counter("pitstop_router_program_moves_in", "Program turns a replica router sent "
                                        "here away from the program's home replica, by reason (overloaded, gone).",
                                        ["reason"], registry=r)
        r.register(_EngineGauges(stats))

    def on_finish(self, out: RequestOutput) -> None:
        """Record a finished request (called in the engine thread)."""
        num_out = 0
        for comp in out.outputs:
            self.request_success.labels(comp.finish_reason or "unknown").inc()
            num_out += len(comp.token_ids)
        self.prompt_tokens.inc(len(out.prompt_token_ids))
        self.generation_tokens.inc(num_out)
        self.cached_tokens.inc(out.num_cached_tokens)
        m = out.metrics
        if m is None:
            return
        if m.ttft is not None:
            self.ttft.observe(max(0.0, m.ttft))
        if m.e2el is not None:
            self.e2el.observe(max(0.0, m.e2el))
        n = len(out.outputs[0].token_ids) if out.outputs else 0
        if n > 1 and m.first_token_time is not None and m.finished_time is not None:
            self.tpot.observe(max(0.0, (m.finished_time - m.first_token_time) / (n - 1)))

    def render(self) -> bytes:
        return generate_latest(self.registry)
