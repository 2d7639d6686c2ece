"""Where the time of an engine step goes: model compute vs everything else (issue 18).

:class:`StepProfiler` wraps, for the duration of a ``with`` block, the engine's ``step`` and the model's
``forward`` and ``compute_logits`` (instance attributes, removed afterwards) and records per step:

- ``wall_s``: from this step's start to the next step's start (the last step: to its end), i.e. everything the
  offline loop spends per step: scheduling, input preparation, attention metadata, the model, sampling, output
  processing and detokenization, and ``LLM.generate``'s own loop;
- ``executor_s``: the executor's ``step_time_s`` (inputs, metadata, model, sampling);
- ``model_s``: time inside the decoder forward and ``compute_logits`` (the model compute).

``overhead_share = 1 - model_s / wall_s`` is the share of a step that is not model compute.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any


@dataclass
class StepSample:
    """One engine step (seconds; batch shape from the engine's ``StepRecord``)."""

    num_prefill_tokens: int
    num_seqs: int
    start: float
    end: float
    executor_s: float
    model_s: float
    wall_s: float = 0.0


class StepProfiler:
    """Context manager recording a :class:`StepSample` per step of ``llm``'s engine (see module docstring)."""

    def __init__(self, llm: Any) -> None:
        self.engine = llm.llm_engine
        self.model = self.engine.executor.model
        self.samples: list[StepSample] = []
        self._model_s = 0.0

    def _timed(self, fn):
        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._model_s += time.perf_counter() - t
        return wrapper

    def __enter__(self) -> "StepProfiler":
        engine, model = self.engine, self.model
        step, forward, logits = engine.step, model.forward, model.compute_logits

        def profiled_step():
            self._model_s = 0.0
            n = len(engine.step_history)
            t0 = time.perf_counter()
            out = step()
            t1 = time.perf_counter()
            if len(engine.step_history) > n:
                rec = engine.step_history[-1]
                self.samples.append(StepSample(rec.num_prefill_tokens, rec.num_seqs, t0, t1, rec.step_time_s,
                                               self._model_s))
            return out

        engine.step = profiled_step
        model.forward = self._timed(forward)
        model.compute_logits = self._timed(logits)
        return self

    def __exit__(self, *exc: object) -> None:
        for obj, name in ((self.engine, "step"), (self.model, "forward"), (self.model, "compute_logits")):
            obj.__dict__.pop(name, None)
        for a, b in zip(self.samples, self.samples[1:]):
            a.wall_s = b.start - a.start
        if self.samples:
            self.samples[-1].wall_s = self.samples[-1].end - self.samples[-1].start

    def decode_summary(self, batch: int) -> dict[str, float] | None:
        """Medians over the decode-only steps of exactly ``batch`` sequences (None when there are none):
        wall, executor and model seconds, ``overhead_share`` (not model compute) and its two parts,
        ``executor_overhead_share`` (inputs, metadata, sampling) and ``engine_overhead_share`` (the rest)."""
        steps = [s for s in self.samples if s.num_prefill_tokens == 0 and s.num_seqs == batch]
        steps = steps[:-1] or steps  # the last step's wall has no next start
        if not steps:
            return None
        wall = statistics.median(s.wall_s for s in steps)
        execu = statistics.median(s.executor_s for s in steps)
        model = statistics.median(s.model_s for s in steps)
        return {"num_steps": len(steps), "wall_s": wall, "executor_s": execu, "model_s": model,
                "overhead_share": 1 - model / wall, "executor_overhead_share": (execu - model) / wall,
                "engine_overhead_share": (wall - execu) / wall}
