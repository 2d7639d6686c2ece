#!/usr/bin/env python
"""Where a decode step of B sequences (300-token prompts) spends its time, per module, 1 thread (issue 18, third
round; a measurement script: it wraps module methods with timers). Usage:
taskset -c 0 .venv/bin/python benchmarks/speed18/step_breakdown.py gguf|none|int8 B"""
import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).resolve().parents[2]))
import torch, sys, time, collections
torch.set_num_threads(1)
from pitstop import LLM, SamplingParams
from pitstop.bench.throughput import make_prompts
from pitstop.model.gguf_linear import Q4Linear
from pitstop.model.int8_linear import Int8Linear
from pitstop.model.layers import RMSNorm
B = int(sys.argv[2])
llm = LLM("SmolLM2-135M-Instruct", quantization=sys.argv[1], kv_cache_memory="1GiB", max_model_len=2048, num_threads=1, enable_prefix_caching=False)
eng = llm.llm_engine
model = eng.executor.model
acc = collections.defaultdict(float)
def wrap(cls, name, meth="forward"):
    orig = getattr(cls, meth)
    def f(self, *a, **k):
        t = time.perf_counter(); r = orig(self, *a, **k); acc[name] += time.perf_counter() - t; return r
    setattr(cls, meth, f)
wrap(Q4Linear, "q4"); wrap(Int8Linear, "int8"); wrap(RMSNorm, "norm", "add_forward")
attn_cls = type(model.layers[0].self_attn)
wrap(attn_cls, "attn_module")
be = type(model.attn_backend)
wrap(be, "attn_backend_forward")
wrap(type(model.layers[0].mlp), "mlp")
wrap(type(model), "model_forward")
wrap(type(model), "compute_logits", "compute_logits")
prompts = make_prompts([300] * B, 49152, 1)
sp = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)
for i, p in enumerate(prompts): eng.add_request(str(i), p, sp)
for _ in range(8): eng.step()
acc.clear()
t = time.perf_counter()
for _ in range(10): eng.step()
tot = (time.perf_counter() - t) / 10
print(f"B={B} step {tot*1e3:.1f} ms")
for k, v in sorted(acc.items(), key=lambda kv: -kv[1]): print(f"  {k}: {v/10*1e3:.1f} ms")
while eng.has_unfinished_requests(): eng.step()
