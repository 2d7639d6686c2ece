#!/usr/bin/env python
"""Every decoder linear of one SmolLM2 step at 4-32 activation rows (1 thread): the GGUF Q4 kernel, the float32
few-row kernel and oneDNN on packed float32 weights (issue 18, third round; benchmarks/README.md).
Usage: taskset -c 0 .venv/bin/python benchmarks/speed18/q4_crossover.py [rows ...]"""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import torch  # noqa: E402

torch.set_num_threads(1)
from pitstop.model.resolve import resolve_model, source_gguf
from pitstop.model.loader import load_model
from pitstop.model.cpu_kernels import cpu_kernels
from pitstop.model.gguf_linear import use_gguf_linears
from pitstop.model.cpu_packed_linear import pack_weight, packed_linear
k = cpu_kernels()
m = load_model(resolve_model("SmolLM2-135M-Instruct"), torch.float32, "cpu")
W = {n: mod.weight.clone() for n, mod in m.named_modules() if isinstance(mod, torch.nn.Linear) and n != "lm_head"}
P = {n: pack_weight(w) for n, w in W.items()}
use_gguf_linears(m, source_gguf("SmolLM2-135M-Instruct"), k)
Q = {n: m.get_submodule(n) for n in W}
def t(f):
    best = []
    for _ in range(3):
        s = time.perf_counter(); f(); best.append(time.perf_counter() - s)
    return min(best) * 1e3
for rows in [int(r) for r in sys.argv[1:]] or (4, 8, 16, 17, 24, 32):
    xs = {n: torch.randn(rows, w.shape[1]) for n, w in W.items()}
    tq = t(lambda: [k.q4_linear(xs[n], q.qs, q.d, q.m, None, 64) for n, q in Q.items()])
    tf = t(lambda: [k.linear_rows(xs[n], W[n], None) for n in W])
    tp = t(lambda: [packed_linear(xs[n], W[n], P[n], None) for n in W])
    print(f"rows {rows:3d}: q4 kernel {tq:6.1f}  fp32 kernel {tf:6.1f}  packed fp32 {tp:6.1f} ms (decoder linears)")
