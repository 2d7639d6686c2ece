"""Executors run a scheduler's step: the real model runner (``model_runner``), or the simulator's
(``simulated_runner``, step times from a cost model)."""
