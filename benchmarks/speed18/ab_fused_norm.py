#!/usr/bin/env python
"""Same-process A/B of the fused residual add + RMSNorm (issue 18, third round): batch-1 decode of 48 tokens,
median of 6 alternating runs with the kernel on and off. Usage:
taskset -c 0 .venv/bin/python benchmarks/speed18/ab_fused_norm.py gguf|none|int8"""
import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).resolve().parents[2]))
import time, torch, statistics, sys
torch.set_num_threads(1)
from pitstop import LLM, SamplingParams
from pitstop.model.layers import RMSNorm
llm = LLM("SmolLM2-135M-Instruct", quantization=sys.argv[1], kv_cache_memory="64MiB", max_model_len=512, num_threads=1)
model = llm.llm_engine.executor.model
norms = [m for m in model.modules() if isinstance(m, RMSNorm)]
k = norms[0].kernels
sp = SamplingParams(max_tokens=48, temperature=0, ignore_eos=True)
res = {"fused": [], "aten": []}
for rep in range(6):
    for mode in ("fused", "aten"):
        for n in norms: n.kernels = k if mode == "fused" else None
        t = time.perf_counter(); llm.generate(["Tell me about the ocean."], sp, use_tqdm=False); res[mode].append((time.perf_counter() - t) / 48)
for m, v in res.items(): print(sys.argv[1], m, f"{statistics.median(v)*1e3:.2f} ms/token")
