"""Step time fitted to steps measured on the real engine (``pitstop profile``).

Vidur (Agrawal et al., MLSys'24) profiles operators and predicts with learned models; here one linear model on
physically meaningful features of the whole step is enough for a single machine (Vidur's decomposition):

    t = c0                                 per-step overhead (Python loop, launches, sampling setup), s
      + c_tok   * num_tokens               token-linear matmul FLOPs (projections, MLP), s/token
      + c_seq   * num_seqs                 per-sequence work (metadata, lm_head row, sampling), s/seq
      + c_pre   * prefill_attn_pairs       causal attention of prefill chunks, s/query-key pair
      + c_dec   * decode_ctx_tokens        decode attention, KV bytes read per context token, s/token
      + c_pad   * decode_padded_ctx        decode attention padded to the batch's longest context
                                           (``decode_seqs * decode_max_ctx``: pitstop's CPU backend gathers whole
                                           blocks up to it and runs one masked SDPA), s/token
      + c_mix   * mixed_decode_seqs        decodes that share a step with a prefill chunk (they then take the
                                           per-sequence attention path), s/seq
      + c_ctx   * prefill_ctx_tokens       context read by the prefill chunks, ``sum (start + q)``: the CPU backend
                                           gathers a chunk's whole cached context once per layer, whatever the chunk
                                           length (an agent's next turn: a few new tokens on a long context), s/token
      + c_one   * single_token             1 for a step of exactly one token (a batch-1 decode): pitstop's CPU
                                           runner then takes ATen's GEMV instead of oneDNN, another kernel with
                                           its own fixed cost, s/step

fitted by non-negative least squares on relative error (each row divided by the model's prediction, iteratively
reweighted from the measured time; see ``fit``), so every coefficient is >= 0 and predictions are monotone in every count. The JSON holds the grid, the measured and
predicted times and the fit error.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pitstop.sim.cost_models.interface import CostModel, StepShape

FEATURES = ("intercept", "num_tokens", "num_seqs", "prefill_attn_pairs", "decode_ctx_tokens", "decode_padded_ctx",
            "mixed_decode_seqs", "single_token", "prefill_ctx_tokens")
# fits saved before these features existed load with 0 for them
_OPTIONAL = ("decode_padded_ctx", "mixed_decode_seqs", "single_token", "prefill_ctx_tokens")


def features(s: StepShape) -> list[float]:
    return [1.0, float(s.num_tokens), float(s.num_seqs), float(s.prefill_attn_pairs), float(s.decode_ctx_tokens),
            float(s.decode_seqs * s.decode_max_ctx), float(s.decode_seqs if s.prefill_tokens else 0),
            1.0 if s.num_tokens == 1 else 0.0, float(s.kv_read_tokens - s.decode_ctx_tokens)]


def nnls(a: np.ndarray, b: np.ndarray, iters: int = 500) -> np.ndarray:
    """Non-negative least squares ``min ||a x - b||, x >= 0`` (Lawson-Hanson active set)."""
    m, n = a.shape
    passive = np.zeros(n, dtype=bool)
    x = np.zeros(n)
    w = a.T @ (b - a @ x)
    for _ in range(iters):
        if passive.all() or w[~passive].max(initial=-np.inf) <= 1e-12:
            break
        j = np.argmax(np.where(passive, -np.inf, w))
        passive[j] = True
        while True:
            z = np.zeros(n)
            z[passive] = np.linalg.lstsq(a[:, passive], b, rcond=None)[0]
            if (z[passive] > 0).all():
                x = z
                break
            neg = passive & (z <= 0)
            alpha = np.min(x[neg] / (x[neg] - z[neg]))
            x = x + alpha * (z - x)
            passive &= x > 1e-15
            x[~passive] = 0.0
        w = a.T @ (b - a @ x)
    return x


def fit(shapes: list[StepShape], times_s: list[float], iters: int = 4) -> tuple[np.ndarray, dict]:
    """Fit coefficients on measured steps; returns (coefficients, fit error stats on the fitted points).

    Relative error is taken against the model's own prediction, by iteratively reweighted least squares (the first
    pass divides by the measured times): dividing by the measured time leans every shape's prediction towards its
    fastest repeats (for repeats ``y_i`` it minimises ``sum ((p - y_i) / y_i)^2``, i.e. ``p < mean y_i``), which under
    this machine's 10-20% step-time noise made the fit underpredict its own grid by 3-9% in total."""
    x = np.array([features(s) for s in shapes])
    y = np.array(times_s, dtype=float)
    scale = x.max(axis=0)
    scale[scale == 0] = 1.0
    xs = x / scale
    w = y
    for _ in range(max(1, iters)):
        coef = nnls(xs / w[:, None], y / w) / scale
        w = np.maximum(x @ coef, 1e-3 * y.mean())
    pred = x @ coef
    rel = np.abs(pred - y) / y
    return coef, {"mean_abs_rel_error": float(rel.mean()), "max_abs_rel_error": float(rel.max()),
                  "median_abs_rel_error": float(np.median(rel)), "num_points": int(len(y))}


class ProfiledCostModel(CostModel):
    """Linear model with non-negative coefficients (seconds per unit of each feature in ``FEATURES``)."""

    name = "profiled"

    def __init__(self, coefficients: dict[str, float], meta: dict | None = None) -> None:
        coefficients = {**{k: 0.0 for k in _OPTIONAL}, **coefficients}
        missing = set(FEATURES) - set(coefficients)
        if missing:
            raise ValueError(f"profiled cost model: missing coefficients {sorted(missing)}")
        self.coefficients = {k: float(coefficients[k]) for k in FEATURES}
        self.meta = meta or {}
        (self.c0, self.c_tok, self.c_seq, self.c_pre, self.c_dec, self.c_pad, self.c_mix, self.c_one, self.c_ctx) = (
            self.coefficients[k] for k in FEATURES)

    def predict(self, s: StepShape) -> float:
        if s.num_tokens == 0:
            return 0.0
        return (self.c0 + self.c_tok * s.num_tokens + self.c_seq * s.num_seqs + self.c_pre * s.prefill_attn_pairs
                + self.c_dec * s.decode_ctx_tokens + self.c_pad * s.decode_seqs * s.decode_max_ctx
                + (self.c_mix * s.decode_seqs if s.prefill_tokens else 0.0)
                + (self.c_one if s.num_tokens == 1 else 0.0)
                + self.c_ctx * (s.kv_read_tokens - s.decode_ctx_tokens))

    @classmethod
    def from_measurements(cls, shapes: list[StepShape], times_s: list[float], meta: dict | None = None
                          ) -> "ProfiledCostModel":
        coef, err = fit(shapes, times_s)
        return cls(dict(zip(FEATURES, coef.tolist())), dict(meta or {}, fit_error=err))

    @classmethod
    def load(cls, path: str | Path) -> "ProfiledCostModel":
        data = json.loads(Path(path).read_text())
        return cls(data["coefficients"], data)

    def save(self, path: str | Path, grid: list[dict] | None = None) -> None:
        data = dict(self.meta, cost_model="profiled", features=list(FEATURES), coefficients=self.coefficients)
        if grid is not None:
            data["grid"] = grid
        Path(path).write_text(json.dumps(data, indent=1))

    def describe(self) -> dict:
        return {"name": self.name, "coefficients": self.coefficients,
                "fit_error": self.meta.get("fit_error"), "model": self.meta.get("model"),
                "machine": self.meta.get("machine")}
