"""GGUF blocks kept quantized (``quantization="gguf"``): block parsing against gguf-py's own dequantizer, the Q4
kernel against the portable path, the row order of llama's Q / K, and on the real SmolLM2 GGUF: every linear
replaced, the float model's logits, greedy tokens and batch invariance kept, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from model_fixtures import make_tiny_model, paged_logits
from pitstop import LLM, SamplingParams
from pitstop.model import load_model
from pitstop.model.cpu_kernels import cpu_kernels, kernel_status
from pitstop.model.gguf_linear import (Q4_ROWS, GGUFBlocks, Q4Linear, dequantize_q4, llama_qk_rows, read_blocks,
                                       use_gguf_linears)
from pitstop.model.int8_linear import GEMV_ROWS, Int8Linear
from pitstop.model.resolve import resolve_model, source_gguf

MODEL = "SmolLM2-135M-Instruct"


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q8_0"])
def test_read_blocks_matches_gguf_py(tmp_path, qtype: str) -> None:
    """A tensor written by gguf-py in ``qtype`` and read back: pitstop's blocks dequantize to gguf-py's values."""
    import gguf

    kind = gguf.GGMLQuantizationType[qtype]
    w = np.random.default_rng(0).standard_normal((6, 96)).astype(np.float32)
    writer = gguf.GGUFWriter(str(tmp_path / "t.gguf"), "llama")
    writer.add_tensor("w", gguf.quants.quantize(w, kind), raw_dtype=kind)
    writer.add_tensor("f", w)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tensors = {t.name: t for t in gguf.GGUFReader(str(tmp_path / "t.gguf")).tensors}
    blocks = read_blocks(tensors["w"])
    want = gguf.quants.dequantize(np.asarray(tensors["w"].data), kind).reshape(6, 96)
    assert blocks is not None and blocks.kind == ("q8" if qtype == "Q8_0" else "q4")
    assert torch.equal(blocks.dequantize(torch.float32), torch.from_numpy(want))
    assert read_blocks(tensors["f"]) is None  # float tensors stay float


def test_llama_qk_rows_is_transformers_order() -> None:
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    for rows, heads in ((576, 9), (192, 3), (64, 4)):
        want = LlamaTensorProcessor()._reverse_permute_weights(np.arange(rows), heads, heads)
        assert llama_qk_rows(rows, heads).tolist() == want.tolist()


def _random_q4(n: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    qs = torch.randint(0, 256, (n, k // 2), generator=gen, dtype=torch.uint8)
    # float16 scales and minimums, as GGUF stores them (d * q is then exact in float32)
    d, m = torch.rand(n, k // 32, generator=gen) / 30, torch.randn(n, k // 32, generator=gen) / 10
    return qs, d.half().float(), m.half().float()


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, GEMV_ROWS + 1, Q4_ROWS, Q4_ROWS + 1, 70])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_q4_kernel_matches_portable(rows: int, bias: bool, dtype: torch.dtype) -> None:
    kernels = cpu_kernels()
    if kernels is None:
        pytest.skip(f"C++ kernels off: {kernel_status()}")
    qs, d, m = _random_q4(40, 96, rows)
    b = torch.randn(40) if bias else None
    fast, portable = Q4Linear(qs, d, m, b, kernels), Q4Linear(qs, d, m, b, None)
    x = torch.randn(rows, 96).to(dtype)
    got, want = fast(x), portable(x)
    assert got.dtype == dtype and got.shape == (rows, 40)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.float(), want.float(), atol=tol, rtol=tol)
    if dtype == torch.float32 and rows <= Q4_ROWS:  # the few-row path sums in the float32 kernel's order
        w = dequantize_q4(qs, d, m)
        assert torch.equal(got, kernels.linear_rows(x, w, b))


@pytest.mark.parametrize("rows", [Q4_ROWS, Q4_ROWS + 1, 70])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_q4_packed_many_rows(rows: int, dtype: torch.dtype) -> None:
    """Above Q4_ROWS rows a layer with a oneDNN-packed copy in the model dtype multiplies that copy (same weights;
    bfloat16 only where this CPU packs it)."""
    from pitstop.model.cpu_packed_linear import pack_weight
    from pitstop.model.few_row_linear import packs

    kernels = cpu_kernels()
    if kernels is None or not packs(dtype):
        pytest.skip(f"C++ kernels or {dtype} pre-packing off on this CPU ({kernel_status()})")
    qs, d, m = _random_q4(40, 96, rows)
    w, b = dequantize_q4(qs, d, m, dtype), torch.randn(40).to(dtype)
    layer = Q4Linear(qs, d, m, b, kernels, pack_weight(w), dtype)
    assert "oneDNN-packed" in repr(layer)
    x = torch.randn(rows, 96).to(dtype)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(layer(x), nn.functional.linear(x, w, b), atol=tol, rtol=tol)


def test_q4_portable_is_dequantized_linear() -> None:
    qs, d, m = _random_q4(8, 64, 1)
    x = torch.randn(3, 64)
    w = dequantize_q4(qs, d, m)
    # nibble order: byte j of a group holds weight j (low) and weight j + 16 (high)
    assert w[0, 0] == d[0, 0] * (qs[0, 0] & 15) + m[0, 0] and w[0, 16] == d[0, 0] * (qs[0, 0] >> 4) + m[0, 0]
    torch.testing.assert_close(Q4Linear(qs, d, m, None, None)(x), x @ w.T)


def test_int8_from_quantized_keeps_values() -> None:
    q = torch.randint(-127, 128, (5, 64), dtype=torch.int8)
    s = torch.rand(5, 2)
    layer = Int8Linear.from_quantized(q, s, None, None)
    assert torch.equal(layer.qweight, q) and layer.in_features == 64 and layer.out_features == 5
    x = torch.randn(2, 64)
    torch.testing.assert_close(layer(x), x @ GGUFBlocks("q8", q, s).dequantize(torch.float32).T)


@pytest.fixture(scope="module")
def smollm2_models():
    """(float32 model, the same with its GGUF blocks kept, the report)."""
    folder, gguf_file = resolve_model(MODEL), source_gguf(MODEL)
    ref = load_model(folder, torch.float32)
    model = load_model(folder, torch.float32)
    report = use_gguf_linears(model, gguf_file, cpu_kernels())
    return ref, model, report


def test_smollm2_every_linear_kept_quantized(smollm2_models) -> None:
    ref, model, report = smollm2_models
    # SmolLM2's GGUF: every layer's q, k, v, o, gate, up, down in Q4_1 (fused: 4 linears a layer), the tied
    # lm_head in Q8_0 (token_embd); none left float
    assert report.replaced == {"Q4_1": 4 * model.num_layers, "Q8_0": 1} and report.kept_float == {}
    assert not any(type(m) is nn.Linear for m in model.modules())
    assert isinstance(model.lm_head, Int8Linear)
    assert torch.equal(model.embed_tokens.weight, ref.embed_tokens.weight)  # the embedding stays float
    qkv = model.layers[0].self_attn.qkv_proj
    weight_bytes = sum(b.numel() * b.element_size() for b in qkv.buffers())
    assert weight_bytes < 0.2 * ref.layers[0].self_attn.qkv_proj.weight.numel() * 4  # 0.75 of 4 bytes a weight


@torch.inference_mode()
def test_smollm2_logits_match_float32(smollm2_models) -> None:
    ref, model, _ = smollm2_models
    ids = torch.randint(0, ref.vocab_size, (40,), generator=torch.Generator().manual_seed(0))
    # the same weights: only the order of float32 sums may differ
    torch.testing.assert_close(paged_logits(model, ids), paged_logits(ref, ids), atol=1e-3, rtol=1e-4)


def test_engine_gguf_tokens_match_float32_and_batch_invariant() -> None:
    prompts = ["Write a haiku about the sea.", "List three uses of Python.", "What is the capital of France?"]
    sp = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    tokens = {}
    for q in ("none", "gguf"):
        # float32 on every CPU (auto is bf16 on AVX-512/AMX, whose kernels round differently from the Q4 kernel)
        llm = LLM(MODEL, dtype="float32", quantization=q, kv_cache_memory="64MiB", max_model_len=256)
        if q == "gguf":
            opts = llm.llm_engine.executor.optimizations
            assert opts["gguf_linears"] == {"Q4_1": 120, "Q8_0": 1}, opts
            packed = [m.packed is not None for m in llm.llm_engine.executor.model.modules() if isinstance(m, Q4Linear)]
            assert all(packed) if opts["prepacked"] else not any(packed)
            alone = [llm.generate([p], sp, use_tqdm=False)[0].outputs[0].token_ids for p in prompts]
        tokens[q] = [o.outputs[0].token_ids for o in llm.generate(prompts, sp, use_tqdm=False)]
    assert tokens["gguf"] == tokens["none"]
    assert alone == tokens["gguf"]


def test_gguf_needs_a_gguf_model(tmp_path) -> None:
    folder = make_tiny_model(tmp_path, "llama")
    assert source_gguf(str(folder)) is None and source_gguf(MODEL).suffix == ".gguf"
    with pytest.raises(ValueError, match="GGUF"):
        LLM(str(folder), dtype="float32", quantization="gguf", kv_cache_memory="8MiB", max_model_len=128,
            skip_tokenizer_init=True)


def test_other_models_file_keeps_float(tmp_path) -> None:
    """A GGUF whose tensors do not match the loaded model's weights replaces nothing (each layer says why)."""
    model = load_model(make_tiny_model(tmp_path, "llama"), torch.float32)
    report = use_gguf_linears(model, source_gguf(MODEL), cpu_kernels())
    assert report.replaced == {} and len(report.kept_float) == 4 * model.num_layers + 1
    assert all("differs" in why or "not in the file" in why for why in report.kept_float.values())
