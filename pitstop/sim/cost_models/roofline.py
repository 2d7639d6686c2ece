"""Analytical step time from a hardware spec and a model config: a per-operator-group roofline.

Source: GenZ (Bambhaniya et al., "Demystifying platform requirements for diverse LLM inference use cases",
arXiv 2406.01698): each operator takes ``max(FLOPs / achievable FLOP/s, bytes / achievable bandwidth)`` and a
step is the sum over operators; the roofline itself is Williams, Waterman, Patterson (CACM 2009). Formulas of
the FLOPs and bytes are the ones of ``pitstop.bench.roofline`` (the decode bound), extended to prefill chunks:

Per step with ``T`` tokens, ``S`` sampled rows, ``L`` layers, hidden ``H``, heads ``n_h``, head dim ``d``:

- linear group (q/k/v/o projections, gated MLP, lm_head):
  FLOPs = ``2 * L * linear_params_per_layer * T + 2 * vocab * H * S`` (lm_head only on sampled rows);
  bytes = all weights once (``total_params * dtype_bytes / tp``) + activations in/out
  (``4 * T * H * L * dtype_bytes``, small).
- attention group (FlashAttention-style, scores never hit memory):
  FLOPs = ``4 * L * n_h * d * (prefill query-key pairs + decode context tokens)`` (QK^T and PV);
  bytes = KV read ``kv_read_tokens * kv_bytes_per_token`` + KV written ``T * kv_bytes_per_token``.
- each group: ``max(FLOPs / (peak * flops_efficiency * tp), bytes / (bandwidth * bandwidth_efficiency * tp))``.
- tensor parallelism (Megatron): 2 all-reduces of ``T * H * dtype_bytes`` per layer, ring cost
  ``2 * (tp - 1) / tp * bytes / interconnect_bandwidth``.
- plus ``step_overhead_s + seq_overhead_s * num_seqs``.

A decode step of a small batch is memory-bound (weights dominate); the linear group turns compute-bound once
``T`` exceeds about ``(peak * eff_f) / (bandwidth * eff_b) * dtype_bytes / 2`` tokens (~330 for bf16 on H100 with
the shipped efficiencies).
"""

from __future__ import annotations

from dataclasses import dataclass

from pitstop.model.shape import ModelShape
from pitstop.scheduler_output import SchedulerOutput
from pitstop.sim.cost_models.interface import CostModel, StepShape
from pitstop.sim.hardware import HardwareSpec


@dataclass(frozen=True)
class StepBreakdown:
    """Seconds per group and which bound (``"compute"`` or ``"memory"``) each one hit."""

    linear_s: float
    attention_s: float
    comm_s: float
    overhead_s: float
    linear_regime: str
    attention_regime: str

    @property
    def total_s(self) -> float:
        return self.linear_s + self.attention_s + self.comm_s + self.overhead_s


class RooflineCostModel(CostModel):
    """GenZ-style roofline of one replica (``tp`` devices of ``hardware``) serving ``shape``.

    Args:
        hardware: device spec.
        shape: model dimensions (``pitstop.model.shape.ModelShape``).
        tp: tensor-parallel degree (devices per replica).
        dtype_bytes: bytes per weight / KV element (2 = bf16).
    """

    name = "roofline"

    def __init__(self, hardware: HardwareSpec, shape: ModelShape, tp: int = 1, dtype_bytes: int = 2) -> None:
        if tp < 1:
            raise ValueError(f"tp must be >= 1, got {tp}")
        self.hw, self.shape, self.tp, self.dtype_bytes = hardware, shape, tp, dtype_bytes
        self._flops = hardware.peak_bf16_flops * hardware.flops_efficiency * tp
        self._bw = hardware.memory_bandwidth * hardware.bandwidth_efficiency * tp
        self._lin_per_token = 2.0 * shape.num_layers * shape.layer_linear_params()
        self._head_per_row = 2.0 * shape.vocab_size * shape.hidden_size
        self._weight_bytes = float(shape.total_params() * dtype_bytes)
        self._act_per_token = 4.0 * shape.hidden_size * shape.num_layers * dtype_bytes
        self._attn_per_pair = 4.0 * shape.num_layers * shape.num_heads * shape.head_dim
        self._kv_per_token = float(shape.kv_bytes_per_token(dtype_bytes))
        ic = hardware.interconnect_bandwidth
        self._comm_per_token = (2 * shape.num_layers * 2.0 * (tp - 1) / tp * shape.hidden_size * dtype_bytes / ic
                                if tp > 1 and ic > 0 else 0.0)
        self._consts = (self._lin_per_token, self._head_per_row, self._flops, self._weight_bytes, self._act_per_token,
                        self._bw, self._attn_per_pair, self._kv_per_token, self._comm_per_token,
                        hardware.step_overhead_s, hardware.seq_overhead_s)  # step_time's operands, one load

    def breakdown(self, s: StepShape) -> StepBreakdown:
        lin_f = self._lin_per_token * s.num_tokens + self._head_per_row * s.num_sampled
        lin_b = self._weight_bytes + self._act_per_token * s.num_tokens
        att_f = self._attn_per_pair * (s.prefill_attn_pairs + s.decode_ctx_tokens)
        att_b = self._kv_per_token * (s.kv_read_tokens + s.num_tokens)
        lc, lm = lin_f / self._flops, lin_b / self._bw
        ac, am = att_f / self._flops, att_b / self._bw
        return StepBreakdown(
            linear_s=max(lc, lm), attention_s=max(ac, am), comm_s=self._comm_per_token * s.num_tokens,
            overhead_s=self.hw.step_overhead_s + self.hw.seq_overhead_s * s.num_seqs,
            linear_regime="compute" if lc > lm else "memory", attention_regime="compute" if ac > am else "memory")

    def predict(self, s: StepShape) -> float:
        if s.num_tokens == 0:
            return 0.0
        lin = max((self._lin_per_token * s.num_tokens + self._head_per_row * s.num_sampled) / self._flops,
                  (self._weight_bytes + self._act_per_token * s.num_tokens) / self._bw)
        att = max(self._attn_per_pair * (s.prefill_attn_pairs + s.decode_ctx_tokens) / self._flops,
                  self._kv_per_token * (s.kv_read_tokens + s.num_tokens) / self._bw)
        return (lin + att + self._comm_per_token * s.num_tokens + self.hw.step_overhead_s
                + self.hw.seq_overhead_s * s.num_seqs)

    def step_time(self, so: SchedulerOutput) -> float:
        """``predict(StepShape.from_output(so))`` in one pass over the batch (the simulator calls this every
        step): the same sums and the same roofline arithmetic in the same order (``predict``, inlined), so the
        same seconds to the last bit."""
        t = sampled = kv = dctx = 0
        pairs = 0.0
        for e in so.scheduled:
            q, start = e.num_tokens, e.start
            t += q
            if e.sample:
                sampled += 1
                if e.draft_token_ids:  # a speculative verify: logits at each of its K + 1 positions
                    sampled += len(e.draft_token_ids)
            kv += start + q
            if q > 1:
                pairs += q * (start + (q + 1) * 0.5)
            else:
                dctx += start + 1
        if t == 0:
            return 0.0
        lin_tok, head_row, flops, weights, act_tok, bw, attn_pair, kv_tok, comm_tok, step_oh, seq_oh = self._consts
        lc = (lin_tok * t + head_row * sampled) / flops
        lm = (weights + act_tok * t) / bw
        ac = attn_pair * (pairs + dctx) / flops
        am = kv_tok * (kv + t) / bw
        return ((lm if lm > lc else lc) + (am if am > ac else ac) + comm_tok * t + step_oh
                + seq_oh * len(so.scheduled))  # x if x > y else y: what max(y, x) returns

    def describe(self) -> dict:
        return {"name": self.name, "hardware": self.hw.to_dict(), "tp": self.tp, "dtype_bytes": self.dtype_bytes,
                "weight_bytes": self._weight_bytes, "kv_bytes_per_token": self._kv_per_token}
