"""The residual add + RMSNorm kernel (``add_rms_norm``): against the PyTorch path it replaces, and switched on for
float32 models by ``optimize_model``."""

from __future__ import annotations

import pytest
import torch

from model_fixtures import make_tiny_model
from pitstop.model import load_model
from pitstop.model.cpu_kernels import cpu_kernels, kernel_status
from pitstop.model.layers import RMSNorm
from pitstop.model.optimize import optimize_model


@pytest.mark.parametrize("rows", [1, 5, 33])
@pytest.mark.parametrize("size", [576, 100])
@pytest.mark.parametrize("with_residual", [False, True])
def test_add_forward_kernel_matches_torch(rows: int, size: int, with_residual: bool) -> None:
    kernels = cpu_kernels()
    if kernels is None:
        pytest.skip(f"C++ kernels off: {kernel_status()}")
    torch.manual_seed(rows + size)
    norm = RMSNorm(size, 1e-5)
    norm.weight.data = torch.randn(size)
    h = torch.randn(rows, size) * 3
    residual = torch.randn(rows, size) if with_residual else None
    want_out, want_r = norm.add_forward(h, residual)
    norm.kernels = kernels
    out, r = norm.add_forward(h, residual)
    assert torch.equal(r, want_r)  # the add is exact either way
    torch.testing.assert_close(out, want_out, atol=1e-5, rtol=1e-5)
    assert out.shape == (rows, size) and out.dtype == torch.float32


def test_optimize_model_fuses_float32_norms(tmp_path) -> None:
    model = load_model(make_tiny_model(tmp_path, "llama"), torch.float32)
    done = optimize_model(model)
    want = 2 * model.num_layers + 1 if cpu_kernels() is not None else 0
    assert done["fused_norms"] == want
    norms = [m for m in model.modules() if isinstance(m, RMSNorm)]
    assert all((n.kernels is not None) == (want > 0) for n in norms)
    bf16 = load_model(make_tiny_model(tmp_path / "b", "llama"), torch.bfloat16)
    assert optimize_model(bf16)["fused_norms"] == 0  # bfloat16 keeps the PyTorch path
