"""``pitstop profile``: measure real engine steps over a grid of batch shapes and fit the ``profiled`` cost model.

Each grid point is a scenario run on the real ``LLMEngine`` (real model, real scheduler): prefill-only steps
(chunk sizes, with and without a cached prefix), decode-only steps (batch sizes x context lengths) and mixed
steps (decodes + one prefill chunk). The measured time of a step is the wall time of the whole
``LLMEngine.step()`` call (schedule + forward + sample + update + outputs), because that is what a request
waits for; the shape of the step (``StepShape``) is recorded by a thin wrapper around the executor. The fit is
``pitstop.sim.cost_models.profiled.fit`` (non-negative least squares on relative error).
"""

from __future__ import annotations

import platform
import random
import time
from dataclasses import asdict

from pitstop.config import EngineConfig
from pitstop.engine.llm_engine import LLMEngine
from pitstop.entrypoints.engine_builder import build_engine
from pitstop.sampling_params import SamplingParams
from pitstop.sim.cost_models.interface import StepShape
from pitstop.sim.cost_models.profiled import ProfiledCostModel

MIXED_PREFIX = 512
"""Context (tokens) of the decodes in the ``mixed`` scenario; they decode 8 more tokens."""

DEFAULT_GRID = {
    "prefill": [32, 64, 128, 256, 512, 1024, 2048],
    "prefill_with_prefix": [(512, 4), (1024, 16), (1536, 4), (512, 128), (512, 512), (1536, 128), (1536, 512)],
    "decode_batches": [1, 2, 4, 8, 16, 48],
    "decode_contexts": [64, 256, 512, 1536],
    "mixed": [(1, 128), (2, 256), (4, 512), (8, 128), (8, 512), (32, 256)],
    "decode_ragged": [(4, 64, 1536), (16, 64, 1536), (16, 256, 1024)],
    "verify": [(1, 4, 256), (1, 16, 256), (4, 8, 512), (16, 4, 256)],
    "decode_steps": 6,
    "distinct_decode_tokens": 16384,
    "repeats": 2,
}
"""The default grid: small decode batches (1-8), short prompts and few-token chunks on a long
cached context (an agent's next turn) as a CPU server sees them, up to 48 sequences and
2,048-token prefills; decode batches of up to ``distinct_decode_tokens`` context tokens in all get
distinct prompts (their own KV blocks), larger ones share a prefix. ``verify``: (batch, draft tokens K, context)
speculative-decoding verify steps (K + 1 tokens per sequence, random drafts)."""


def grid_within(grid: dict, max_model_len: int) -> dict:
    """``grid`` moved inside ``max_model_len`` tokens: every length longer than the room is clipped to it (pairs of
    prefix + chunk scaled down together), so a short-context engine still measures long and ragged decode batches
    (without them the ``decode_padded_ctx`` term cannot be fitted) instead of losing those points."""
    room = max_model_len - grid["decode_steps"] - 16  # decodes and the 8-16 token suffixes the scenarios add

    def clip(n: int) -> int:
        return max(1, min(n, room))

    def clip_pair(c: int, p: int) -> tuple[int, int]:
        f = min(1.0, room / (c + p))
        return max(16, int(c * f) // 16 * 16), max(1, int(p * f))  # whole 16-token blocks of prefix stay cached

    g = dict(grid)
    g["prefill"] = sorted({clip(p) for p in grid["prefill"]})
    g["prefill_with_prefix"] = list(dict.fromkeys(clip_pair(c, p) for c, p in grid["prefill_with_prefix"]))
    g["decode_contexts"] = sorted({clip(c) for c in grid["decode_contexts"]})
    g["mixed"] = [(b, clip(p)) for b, p in grid["mixed"]] if room >= MIXED_PREFIX + 8 else []
    g["decode_ragged"] = [(b, min(clip(lo), clip(hi) // 4), clip(hi)) for b, lo, hi in grid.get("decode_ragged", [])]
    g["verify"] = [(b, k, clip(c + (k + 1) * grid["decode_steps"]) - (k + 1) * grid["decode_steps"])
                   for b, k, c in grid.get("verify", []) if room > (k + 1) * grid["decode_steps"] + 16]
    return g


class StepRecorder:
    """Wraps the real executor and records the shape of each step it runs."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.last: StepShape | None = None

    def execute(self, so):
        self.last = StepShape.from_output(so)
        return self.inner.execute(so)

    def step(self, engine: LLMEngine, clock=time.perf_counter) -> tuple[list, StepShape | None, float]:
        """One ``engine.step()`` (the engine must run this recorder as its executor): its outputs, the shape of the
        step it executed (None when nothing ran) and the wall time of the whole call (seconds, by ``clock``)."""
        t = clock()
        outs = engine.step()
        dt = clock() - t
        shape, self.last = self.last, None
        return outs, shape, dt

    def __getattr__(self, name):
        return getattr(self.inner, name)


class Profiler:
    def __init__(self, config: EngineConfig | None = None, seed: int = 0, engine: LLMEngine | None = None) -> None:
        self.engine = engine if engine is not None else build_engine(config)
        self.rec = StepRecorder(self.engine.executor)
        self.engine.executor = self.rec
        self.vocab = int(self.engine.vocab_size or 32000)
        self.rng = random.Random(seed)
        self.points: list[dict] = []
        self._n = 0

    def _prompt(self, n: int) -> list[int]:
        return [self.rng.randrange(100, self.vocab) for _ in range(n)]

    def _add(self, prompt: list[int], max_tokens: int) -> str:
        self._n += 1
        rid = f"p{self._n}"
        self.engine.add_request(rid, prompt, SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True))
        return rid

    def _step(self, kind: str, keep: bool = True) -> StepShape | None:
        _, sh, dt = self.rec.step(self.engine)
        if keep and sh is not None and sh.num_tokens:
            self.points.append({"kind": kind, "time_s": dt, **asdict(sh)})
        return sh

    def _decode_batch(self, b: int, c: int, n: int, distinct: bool) -> None:
        """``b`` sequences with ``c`` tokens of context decoding together for at least ``n`` steps.

        ``distinct``: every sequence has its own prompt, so its own KV blocks, as in a server's batch (they are
        prefilled in chunks first; those mixed steps are kept as ``decode_setup`` points). Otherwise they share one
        cached prefix and differ in their last 8 tokens: cheap to set up, but the decode attention then reads the
        same blocks ``b`` times (cache-resident): measured 26% faster than distinct prompts at 16 x 512 tokens and
        28% at 8 x 1,000 on this CPU, no different at 2-4 sequences (benchmarks/README.md, "Fidelity, current")."""
        if distinct:
            setup = -(-b * c // self.engine.config.max_num_batched_tokens) + 1
            for _ in range(b):
                self._add(self._prompt(c), n + 2 + setup)
            while (sh := self._step("decode_setup")) is not None and sh.prefill_tokens:
                pass
        else:
            prefix = self._prompt(c)
            self._add(prefix, n + 2)
            self._step("setup", keep=False)
            for _ in range(b - 1):
                self._add(prefix[:-8] + self._prompt(8), n + 2)
            self._step("setup", keep=False)  # the others' short prefills (cached prefix)
        while self.engine.has_unfinished_requests():
            self._step("decode")

    def _verify_batch(self, b: int, k: int, c: int, n: int) -> None:
        """``b`` sequences of ``c`` context tokens, then ``n`` steps verifying ``k`` random draft tokens each (set as
        ``Request.spec_token_ids``, as a proposer would; nearly all rejected, so each step emits about one token)."""
        for _ in range(b):
            self._add(self._prompt(c), n + 2)
        sched = self.engine.scheduler
        while sched.waiting or any(r.num_computed_tokens < r.num_tokens - 1 for r in sched.running):
            self._step("setup", keep=False)
        for _ in range(n):
            if not sched.running:
                break
            for r in sched.running:
                r.spec_token_ids = [self.rng.randrange(100, self.vocab) for _ in range(k)]
            self._step("verify")
        self._drain()

    def _drain(self) -> None:
        while self.engine.has_unfinished_requests():
            self._step("drain", keep=False)

    def run(self, grid: dict, log=print) -> None:
        self._add(self._prompt(64), 4)  # warm-up
        self._drain()
        for rep in range(grid["repeats"]):
            for p in grid["prefill"]:
                self._add(self._prompt(p), 1)
                self._step("prefill")
                self._drain()
            for ctx, p in grid["prefill_with_prefix"]:
                prefix = self._prompt(ctx)
                self._add(prefix + self._prompt(16), 1)
                self._drain()
                self._add(prefix + self._prompt(p), 1)
                self._step("prefill_prefix")
                self._drain()
            for c in grid["decode_contexts"]:
                for b in grid["decode_batches"]:
                    self._decode_batch(b, c, grid["decode_steps"], b * c <= grid.get("distinct_decode_tokens", 0))
                    log(f"  decode b={b} ctx={c}: {self.points[-1]['time_s'] * 1e3:.1f} ms", flush=True)
            for b, short, long in grid.get("decode_ragged", []):
                # one long context and b - 1 short ones: padded decode attention costs b x long
                self._add(self._prompt(long), grid["decode_steps"] + 2)
                for _ in range(b - 1):
                    self._add(self._prompt(short), grid["decode_steps"] + 2)
                self._step("setup", keep=False)
                while self.engine.has_unfinished_requests():
                    self._step("decode_ragged")
                log(f"  ragged decode b={b} ctx={short}/{long}: {self.points[-1]['time_s'] * 1e3:.1f} ms", flush=True)
            for b, k, c in grid.get("verify", []):
                self._verify_batch(b, k, c, grid["decode_steps"])
                log(f"  verify b={b} k={k} ctx={c}: {self.points[-1]['time_s'] * 1e3:.1f} ms", flush=True)
            for b, p in grid["mixed"]:
                prefix = self._prompt(MIXED_PREFIX)
                self._add(prefix, 8)
                self._step("setup", keep=False)
                for _ in range(b - 1):
                    self._add(prefix[:-8] + self._prompt(8), 8)
                self._step("setup", keep=False)
                self._step("decode")
                self._add(self._prompt(p), 1)
                self._step("mixed")
                self._drain()
            log(f"repeat {rep + 1}/{grid['repeats']}: {len(self.points)} points", flush=True)
        self.engine.scheduler.check_kv_accounting()

    def detach(self) -> None:
        """Give the engine its own executor back."""
        self.engine.executor = self.rec.inner

    def attach(self) -> None:
        """Record the engine's steps again after ``detach`` (profiling in segments between other runs)."""
        self.engine.executor = self.rec

    def run_segment(self, grid: dict, segment: int) -> list[dict]:
        """One repeat of ``grid`` between other work on the same engine (attach, run, detach); its points are
        tagged ``"segment": segment`` and returned. Profiling in segments spread over a session lets the fit see
        the machine over the same minutes as the runs it is compared with."""
        n = len(self.points)
        self.attach()
        try:
            self.run(dict(grid, repeats=1), log=lambda *args, **kw: None)
        finally:
            self.detach()
        for p in self.points[n:]:
            p["segment"] = segment
        return self.points[n:]

    def fit(self, meta: dict, points: list[dict] | None = None) -> ProfiledCostModel:
        """Fit on ``points`` (default: all measured); every point fitted gets its ``predicted_s``."""
        points = self.points if points is None else points
        model = fit_points(points, meta)
        for p in points:
            p["predicted_s"] = model.predict(point_shape(p))
        return model


def point_shape(p: dict) -> StepShape:
    """The ``StepShape`` of a profile point (a dict holding its fields)."""
    return StepShape(**{k: p[k] for k in StepShape.__slots__ if k in p})  # older profiles lack draft_tokens


def fit_points(points: list[dict], meta: dict) -> ProfiledCostModel:
    """A ``ProfiledCostModel`` fitted on profile points (dicts with the ``StepShape`` fields and ``time_s``)."""
    return ProfiledCostModel.from_measurements([point_shape(p) for p in points], [p["time_s"] for p in points], meta)


def machine_info() -> dict:
    import os

    import torch
    from pitstop.model.cpu_features import cpu_features

    feats = cpu_features()
    return {"machine": platform.machine(), "processor": platform.processor(), "cpus": os.cpu_count(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "cpu_model": feats.cpu_model, "isa": list(feats.isa_flags), "native_bf16": feats.native_bf16}
