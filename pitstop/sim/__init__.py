"""Discrete-event simulator: pitstop's own scheduler, KV manager and policies driven by a virtual clock and a
cost model instead of a model (see ``pitstop.sim.simulator``)."""
