#!/usr/bin/env python
"""Check the plain-loop fallbacks of pitstop's C++ kernels on a machine whose compiler targets AVX2 (issue 18).

``pitstop/data/csrc/cpu_kernels.cpp`` uses AVX2 + FMA intrinsics where ``-march=native`` enables them and plain
loops otherwise (ARM, older x86). On an AVX2 machine the plain loops never build, so the suite does not see them.
This script builds the same source with ``-march=x86-64`` (SSE2 only; no ``__AVX2__``) into a temporary folder and
runs the load-time probe (every kernel against PyTorch) and, for the GGUF Q4 linear, the exact-sum check against
``linear_rows`` on the dequantized weight. About 40 s on 2 cores. Not part of ``make test`` (a second build).

Usage: ``.venv/bin/python benchmarks/cpu_kernels_plain_check.py`` (x86 only; exits 1 on a disagreement).
"""

from __future__ import annotations

import platform
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from pitstop.model import cpu_kernels as ck  # noqa: E402
from pitstop.model.gguf_linear import dequantize_q4  # noqa: E402


def main() -> int:
    if platform.machine() not in ("x86_64", "AMD64"):
        print("x86 only (elsewhere -march=native already builds the plain loops)")
        return 0
    from torch.utils.cpp_extension import load

    folder = tempfile.mkdtemp(prefix="pitstop-plain-kernels-")
    module = load(name="pitstop_plain_kernels_check", sources=[str(ck.SOURCE)], build_directory=folder,
                  extra_cflags=["-O3", "-march=x86-64", "-fopenmp-simd"], verbose=False)
    problem = ck.probe(module)
    print(f"probe (plain loops, -march=x86-64): {problem or 'ok'}")
    gen = torch.Generator().manual_seed(0)
    for rows in (1, 3, 5, 16, 17):
        qs = torch.randint(0, 256, (40, 48), generator=gen, dtype=torch.uint8)
        d = (torch.rand(40, 3, generator=gen) / 30).half().float()
        m = (torch.randn(40, 3, generator=gen) / 10).half().float()
        x, w = torch.randn(rows, 96, generator=gen), dequantize_q4(qs, d, m)
        got = module.q4_linear(x, qs, d, m, None, 16)
        err = (got - x @ w.T).abs().max().item()
        exact = rows > 16 or torch.equal(got, module.linear_rows(x, w, None))
        print(f"q4_linear {rows:2d} rows: max |err| {err:.2e}, same sums as linear_rows: {exact}")
        problem = problem or (None if err < 1e-4 and exact else f"q4_linear at {rows} rows")
    return 1 if problem else 0


if __name__ == "__main__":
    sys.exit(main())
