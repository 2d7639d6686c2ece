#!/usr/bin/env python
"""Micro-benchmark of issue 18's kernels against the PyTorch paths they replace, on SmolLM2-135M shapes.

1. Decode attention of one layer (Hq 9, Hkv 3, D 64, block 16) at several (batch, context): the torch backend's
   gather + masked SDPA vs the C++ kernel reading blocks in place (``paged_decode_attention``); max abs difference.
2. All linears of one decode step (30 layers' qkv / o / gate_up / down + the 49,152-row lm_head) at several row
   counts: float32 ``F.linear`` vs the float32 few-row kernel (``linear_rows``, up to 32 rows) and the int8 kernel
   (``int8_linear``, scales per 32 weights), and ATen's ``_weight_int8pack_mm`` (float32 and bf16 activations,
   per-row scales: what it takes) as the alternative that was evaluated. Weights are random (fresh tensors, 540 MB in
   float32, far above the caches, so every call streams them from memory).

Best of ``--repeats`` wall times in ms, on ``--threads`` torch threads. Usage:
``.venv/bin/python benchmarks/cpu_kernels_micro.py --threads 2``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from pitstop.model.attention.torch_paged import _decode_attention, _decode_plan, _padded_block_tables  # noqa: E402
from pitstop.bench.roofline import best_time  # noqa: E402
from pitstop.model.cpu_features import cpu_features  # noqa: E402
from pitstop.model.cpu_kernels import cpu_kernels, kernel_status  # noqa: E402
from pitstop.model.int8_linear import GEMV_ROWS, quantize_weight  # noqa: E402


def best_ms(fn, repeats: int) -> float:
    return best_time(fn, repeats) * 1e3


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--rows", default="1,2,4,8,16,32,128")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    k = cpu_kernels()
    f = cpu_features()
    print(f"cpu: {f.cpu_model} ({f.torch_capability}; {' '.join(f.isa_flags)}), threads {args.threads}; "
          f"kernels {kernel_status()}")
    if k is None:
        return 1
    bs, hkv, hq, d = 16, 3, 9, 64
    print("decode attention, one layer: torch gather+SDPA ms | C++ in-place ms | speedup | max abs diff")
    for b, ctx in ((1, 260), (8, 260), (32, 264), (32, 1000), (128, 280)):
        nb = -(-ctx // bs)
        kc = torch.randn(b * nb + 4, bs, hkv, d)
        vc = torch.randn_like(kc)
        tables = torch.randperm(b * nb + 4)[: b * nb].view(b, nb)
        q = torch.randn(b, hq, d)
        lens = torch.full((b,), ctx)
        plan = _decode_plan(lens, _padded_block_tables([ctx] * b, tables.tolist(), bs), bs, torch.device("cpu"))
        t32 = tables.to(torch.int32)
        ta = best_ms(lambda: _decode_attention(plan, q, kc, vc, 0.125), args.repeats)
        tk = best_ms(lambda: k.paged_decode_attention(q, kc, vc, t32, lens, 0.125), args.repeats)
        diff = (_decode_attention(plan, q, kc, vc, 0.125) - k.paged_decode_attention(q, kc, vc, t32, lens, 0.125))
        print(f"  B={b:<4} ctx={ctx:<5} {ta:8.3f} | {tk:8.3f} | x{ta / tk:5.2f} | {diff.abs().max().item():.1e}")
    shapes = [(576 + 2 * 192, 576), (576, 576), (3072, 576), (576, 1536)]
    gen = torch.Generator().manual_seed(0)
    weights = [[torch.randn(n, kk, generator=gen) / kk ** 0.5 for n, kk in shapes] for _ in range(30)]
    weights.append([torch.randn(49152, 576, generator=gen) / 24])
    quant = [[quantize_weight(w) for w in ws] for ws in weights]  # groups of 32 (the engine's int8)
    quant_row = [[(q, sc.squeeze(1)) for q, sc in (quantize_weight(w, None) for w in ws)] for ws in weights]
    print("all linears of one step (30 layers + lm_head): fp32 F.linear ms | fp32 few-row kernel ms | "
          "int8 kernel ms (groups of 32) | aten _weight_int8pack_mm fp32 / bf16 activations ms (per-row scales)")
    for m in [int(x) for x in args.rows.split(",")]:
        x = {kk: torch.randn(m, kk) for kk in (576, 1536)}
        xb = {kk: v.bfloat16() for kk, v in x.items()}
        qb = [[(qq, s.bfloat16()) for qq, s in qs] for qs in quant_row]

        def fp32():
            for ws in weights:
                for w in ws:
                    torch.nn.functional.linear(x[w.shape[1]], w)

        def rows():
            for ws in weights:
                for w in ws:
                    k.linear_rows(x[w.shape[1]], w, None)

        def int8():
            for qs in quant:
                for qq, s in qs:
                    k.int8_linear(x[qq.shape[1]], qq, s, None, GEMV_ROWS)

        def aten(xs, qss):
            for qs in qss:
                for qq, s in qs:
                    torch.ops.aten._weight_int8pack_mm(xs[qq.shape[1]], qq, s)

        t32, t8 = best_ms(fp32, args.repeats), best_ms(int8, args.repeats)
        tr = best_ms(rows, args.repeats) if m <= 32 else float("nan")
        ta32 = best_ms(lambda: aten(x, quant_row), 1) if m <= 8 else float("nan")
        ta16 = best_ms(lambda: aten(xb, qb), 1)
        print(f"  M={m:<4} {t32:8.1f} | {tr:8.1f} (x{t32 / tr:.2f}) | {t8:8.1f} (x{t32 / t8:.2f}) | "
              f"{ta32:8.1f} / {ta16:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
