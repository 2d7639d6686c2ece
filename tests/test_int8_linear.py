"""Weight-only int8 linears (``--quantization int8``): quantization error bound, the C++ kernel against the
portable path (few rows and many rows, with bias), a tiny model's logits close to float32, engine options."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from model_fixtures import make_tiny_model, paged_logits
from pitstop import LLM, SamplingParams
from pitstop.config import EngineConfig
from pitstop.model import load_model
from pitstop.model.cpu_kernels import cpu_kernels, kernel_status
from pitstop.model.int8_linear import GEMV_ROWS, Int8Linear, dequantize_weight, quantize_linears, quantize_weight


@pytest.mark.parametrize("cols,group,groups", [(50, 32, 1), (64, 32, 2), (64, None, 1)])
def test_quantize_weight_error_bound(cols: int, group, groups: int) -> None:
    w = torch.randn(37, cols)
    w[3] = 0  # an all-zero row keeps scale 1, q 0
    q, scale = quantize_weight(w, group)
    assert q.dtype == torch.int8 and scale.shape == (37, groups) and int(q.abs().max()) <= 127
    assert (scale[3] == 1).all() and not q[3].any()
    # rounding error at most half a step per element, each element on its own group's step
    step = scale.repeat_interleave(cols // groups, dim=1)
    assert ((dequantize_weight(q, scale) - w).abs() <= step / 2 + 1e-7).all()
    # a group's scale is its largest magnitude / 127: a big weight in one group leaves the other group's steps small
    if groups == 2:
        w2 = torch.randn(4, 64)
        w2[:, 0] = 100.0
        _, s2 = quantize_weight(w2, group)
        assert (s2[:, 1] < s2[:, 0] / 10).all()


@pytest.mark.parametrize("rows", [1, 2, 3, 6, GEMV_ROWS, GEMV_ROWS + 1, 70])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("in_features", [96, 100])  # 100: a tail after the kernel's 16/32-wide steps
@pytest.mark.parametrize("group", [32, None])  # 100 inputs: one scale per row either way
def test_kernel_matches_portable(rows: int, bias: bool, in_features: int, group) -> None:
    kernels = cpu_kernels()
    if kernels is None:
        pytest.skip(f"C++ kernels off: {kernel_status()}")
    torch.manual_seed(rows)
    lin = nn.Linear(in_features, 200, bias=bias)
    fast, portable = Int8Linear(lin, kernels, group), Int8Linear(lin, None, group)
    x = torch.randn(rows, in_features)
    torch.testing.assert_close(fast(x), portable(x), atol=1e-5, rtol=1e-5)
    # and both are the dequantized weight's linear
    ref = nn.functional.linear(x, dequantize_weight(fast.qweight, fast.scale), lin.bias)
    torch.testing.assert_close(fast(x), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("rows", [GEMV_ROWS, GEMV_ROWS + 1, 70])
def test_packed_many_rows_multiply_the_dequantized_weight(rows: int) -> None:
    """With ``pack()``, calls above GEMV_ROWS rows run oneDNN on the dequantized weight: the same weights as the
    kernel's, so the same result up to float32 summation order."""
    from pitstop.model.few_row_linear import probe_fp32_prepack

    kernels = cpu_kernels()
    if kernels is None or not probe_fp32_prepack():
        pytest.skip(f"C++ kernels or float32 pre-packing off: {kernel_status()}")
    torch.manual_seed(rows)
    layer = Int8Linear(nn.Linear(96, 40), kernels)
    layer.pack()
    assert "oneDNN-packed" in repr(layer)
    x = torch.randn(rows, 96)
    ref = nn.functional.linear(x, dequantize_weight(layer.qweight, layer.scale), layer.bias)
    torch.testing.assert_close(layer(x), ref, atol=1e-5, rtol=1e-5)


@torch.inference_mode()
def test_tiny_model_int8_logits_close(tmp_path) -> None:
    folder = make_tiny_model(tmp_path, "qwen2")
    ref_model = load_model(folder, torch.float32)
    model = load_model(folder, torch.float32)
    n = quantize_linears(model, cpu_kernels())
    assert n == 4 * model.num_layers + 1  # qkv, o, gate_up, down per layer + lm_head
    assert not any(type(m) is nn.Linear for m in model.modules())
    ids = torch.randint(0, model.vocab_size, (12,), generator=torch.Generator().manual_seed(0))
    outs = [paged_logits(m, ids, 4) for m in (ref_model, model)]
    err = (outs[0] - outs[1]).abs().max() / outs[0].abs().max()
    assert err < 0.05, err


def test_engine_int8_option(tmp_path) -> None:
    folder = make_tiny_model(tmp_path, "llama")
    llm = LLM(str(folder), dtype="float32", quantization="int8", kv_cache_memory="8MiB", max_model_len=128,
              skip_tokenizer_init=True)
    runner = llm.llm_engine.executor
    assert runner.optimizations["quantization"] == "int8" and runner.optimizations["int8_linears"] > 0
    packed = [m.packed is not None for m in runner.model.modules() if isinstance(m, Int8Linear)]
    assert all(packed) if runner.optimizations["prepacked"] else not any(packed)
    out = llm.generate([[5, 6, 7, 8]], SamplingParams(temperature=0, max_tokens=6, ignore_eos=True), use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == 6
    with pytest.raises(ValueError, match="quantization"):
        EngineConfig(quantization="int4")
    with pytest.raises(ValueError, match="attention_backend"):
        EngineConfig(attention_backend="flash")
