"""float32 few-row linears (issue 18): the C++ ``linear_rows`` kernel against ``F.linear`` (1 to FEW_ROWS + 1
rows, with and without bias, lengths with and without a tail), the wrapper's dispatch, and the engine's use of it
(parameters shared, not copied; a tiny model's logits equal to the plain model's)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from model_fixtures import make_tiny_model
from pitstop import LLM, SamplingParams
from pitstop.model import load_model
from pitstop.model.cpu_kernels import cpu_kernels, kernel_status
from pitstop.model.few_row_linear import FEW_ROWS, FewRowLinear, probe_fp32_prepack, use_few_row_linears


def _kernels():
    kernels = cpu_kernels()
    if kernels is None:
        pytest.skip(f"C++ kernels off: {kernel_status()}")
    return kernels


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 7, FEW_ROWS, FEW_ROWS + 1, 50])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("in_features", [96, 100])
def test_kernel_matches_f_linear(rows: int, bias: bool, in_features: int) -> None:
    kernels = _kernels()
    torch.manual_seed(rows + in_features)
    lin = nn.Linear(in_features, 70, bias=bias)
    x = torch.randn(rows, in_features)
    ref = nn.functional.linear(x, lin.weight, lin.bias)
    torch.testing.assert_close(kernels.linear_rows(x, lin.weight.detach(), lin.bias), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(FewRowLinear(lin, kernels)(x), ref, atol=1e-5, rtol=1e-5)
    if probe_fp32_prepack():  # many rows on the oneDNN-packed weight (rows padded to a bucket, then cut)
        packed = FewRowLinear(lin, kernels, prepack=True)
        assert packed.packed is not None
        torch.testing.assert_close(packed(x), ref, atol=1e-5, rtol=1e-5)


def test_wrapper_dispatch() -> None:
    calls = []

    class Spy:  # records which calls reach the kernel; the real kernel is tested above
        def linear_rows(self, x, w, b):
            calls.append(x.shape[0])
            return nn.functional.linear(x, w, b)

    lin = FewRowLinear(nn.Linear(8, 4), Spy())
    lin(torch.randn(FEW_ROWS, 8))
    lin(torch.randn(FEW_ROWS + 1, 8))  # too many rows: F.linear
    FewRowLinear(nn.Linear(8, 4).bfloat16(), Spy())(torch.randn(2, 8).bfloat16())  # not float32: F.linear
    lin(torch.randn(1, 2, 8))  # not 2-D: F.linear
    assert calls == [FEW_ROWS]


@pytest.mark.parametrize("arch", ["llama_tied_llama3rope", "qwen2"])
@torch.inference_mode()
def test_model_logits_match_plain_model(tmp_path, arch: str) -> None:
    kernels = _kernels()
    folder = make_tiny_model(tmp_path, arch)
    plain, model = load_model(folder, torch.float32), load_model(folder, torch.float32)
    head_weight = model.lm_head.weight
    assert use_few_row_linears(model, kernels) == 4 * model.num_layers + 1  # qkv, o, gate_up, down + lm_head
    assert model.lm_head.weight is head_weight  # shared, not copied (a tied head stays tied)
    from pitstop.model import allocate_kv_cache

    for rows in (3, FEW_ROWS + 4):  # 3 rows: the kernel; more than FEW_ROWS: oneDNN's packed weight (if it runs)
        ids = torch.randint(0, model.vocab_size, (rows,), generator=torch.Generator().manual_seed(rows))
        outs = []
        for m in (plain, model):
            caches = allocate_kv_cache(m, 8, 4, torch.float32)
            meta = m.attn_backend.build_metadata([rows], [rows], [list(range(8))], 4, torch.device("cpu"))
            outs.append(m.compute_logits(m(ids, torch.arange(rows), caches, meta)))
        torch.testing.assert_close(outs[1], outs[0], atol=1e-4, rtol=1e-4)


def test_engine_uses_kernel(tmp_path) -> None:
    _kernels()
    folder = make_tiny_model(tmp_path, "llama")
    llm = LLM(str(folder), dtype="float32", kv_cache_memory="8MiB", max_model_len=128, skip_tokenizer_init=True)
    opts = llm.llm_engine.executor.optimizations
    assert opts["few_row_linears"] == 4 * llm.llm_engine.executor.model.num_layers + 1
    assert opts["fp32_prepacked"] == probe_fp32_prepack()
    out = llm.generate([[5, 6, 7, 8], [9, 10]], SamplingParams(temperature=0, max_tokens=6, ignore_eos=True),
                       use_tqdm=False)
    assert [len(o.outputs[0].token_ids) for o in out] == [6, 6]
