"""Trace replay shared by the benchmarks (``pitstop.bench``) and the simulator (``pitstop.sim``).

What a replayed request or agent program measured, the closed-loop agent replay, and the summaries and plots of a
run.
"""
