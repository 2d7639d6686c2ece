"""Paged torch backend vs a dense reference attention on random tensors and block tables."""

from __future__ import annotations

import random

import pytest
import torch

from pitstop.model.attention import get_attention_backend

BS = 4


def dense_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_len: int, scale: float) -> torch.Tensor:
    """Causal attention of the last ``q_len`` positions of one sequence; k, v ``[L, Hkv, D]``."""
    group = q.shape[1] // k.shape[1]
    kk, vv = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    scores = torch.einsum("qhd,khd->hqk", q.double(), kk.double()) * scale
    ctx = k.shape[0]
    allowed = torch.arange(ctx)[None, :] <= torch.arange(ctx - q_len, ctx)[:, None]
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), vv.double()).float()


def run_case(query_lens: list[int], seq_lens: list[int], hq: int, hkv: int, d: int = 16, seed: int = 0,
             backend_name: str = "torch") -> None:
    torch.manual_seed(seed)
    rng = random.Random(seed)
    backend = get_attention_backend(backend_name)
    need = [(s + BS - 1) // BS + rng.randrange(2) for s in seq_lens]
    pool = list(range(sum(need) + 2))
    rng.shuffle(pool)
    tables, at = [], 0
    for n in need:
        tables.append(pool[at : at + n])
        at += n
    k_cache = torch.randn(backend.kv_cache_shape(len(pool), BS, hkv, d))
    v_cache = torch.randn_like(k_cache)
    full_k = [torch.randn(s, hkv, d) for s in seq_lens]
    full_v = [torch.randn(s, hkv, d) for s in seq_lens]
    # pre-fill the cached context (positions before this step) through a first prefill pass
    for i, (ql, sl) in enumerate(zip(query_lens, seq_lens)):
        ctx = sl - ql
        if ctx:
            meta = backend.build_metadata([ctx], [ctx], [tables[i]], BS, torch.device("cpu"))
            backend.forward(torch.randn(ctx, hq, d), full_k[i][:ctx], full_v[i][:ctx], (k_cache, v_cache), meta, 0.3)
    qs = [torch.randn(ql, hq, d) for ql in query_lens]
    meta = backend.build_metadata(query_lens, seq_lens, tables, BS, torch.device("cpu"))
    out = backend.forward(
        torch.cat(qs),
        torch.cat([fk[sl - ql :] for fk, ql, sl in zip(full_k, query_lens, seq_lens)]),
        torch.cat([fv[sl - ql :] for fv, ql, sl in zip(full_v, query_lens, seq_lens)]),
        (k_cache, v_cache),
        meta,
        0.3,
    )
    ref = torch.cat([dense_reference(q, fk, fv, ql, 0.3) for q, fk, fv, ql in zip(qs, full_k, full_v, query_lens)])
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("hq,hkv", [(4, 4), (4, 2), (6, 1)])
@pytest.mark.parametrize(
    "query_lens,seq_lens",
    [
        ([7], [7]),  # fresh prefill
        ([5], [13]),  # chunk after cached context
        ([1], [9]),  # single decode
        ([1, 1, 1, 1], [1, 5, 17, 8]),  # decode batch, ragged contexts
        ([6, 3, 1, 1, 1], [6, 11, 4, 20, 1]),  # mixed prefills and decodes
        ([1, 4, 1, 1], [3, 4, 9, 2]),  # 1-token chunk listed among prefills
    ],
)
@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_paged_matches_dense(query_lens: list[int], seq_lens: list[int], hq: int, hkv: int, backend: str) -> None:
    run_case(query_lens, seq_lens, hq, hkv, backend_name=backend)


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_random_batches(backend: str) -> None:
    rng = random.Random(3)
    for seed in range(20):
        n_pre, n_dec = rng.randrange(3), rng.randrange(6)
        if n_pre + n_dec == 0:
            n_dec = 1
        qlens = [rng.randrange(2, 12) for _ in range(n_pre)] + [1] * n_dec
        slens = [q + rng.randrange(0, 15) for q in qlens]
        run_case(qlens, slens, 8, 2, seed=seed, backend_name=backend)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [16, 12, 72])  # 12: the plain-loop path; 72: a 64-wide and an 8-wide chunk
@pytest.mark.parametrize("long", [False, True])  # True: contexts from 512 tokens (the one-pass online softmax)
def test_cpu_decode_kernel_reads_blocks_in_place(dtype: torch.dtype, head_dim: int, long: bool) -> None:
    """The C++ decode kernel (when it builds here) equals the torch backend's gather + SDPA path, per sequence
    whatever the batch around it (batch invariance), in float32 and bfloat16."""
    from pitstop.model.cpu_kernels import cpu_kernels, kernel_status

    kernels = cpu_kernels()
    if kernels is None:
        pytest.skip(f"C++ kernels off: {kernel_status()}")
    gen = torch.Generator().manual_seed(5)
    nblocks = 320 if long else 40
    k_cache = torch.randn(nblocks, BS, 2, head_dim, generator=gen).to(dtype)
    v_cache = torch.randn(nblocks, BS, 2, head_dim, generator=gen).to(dtype)
    lens = [1, 7, 33, 12]
    tables = [[3], [9, 4], [0, 1, 2, 5, 6, 7, 8, 10, 11], [20, 30, 39]]
    if long:  # 530 and 700 tokens over shuffled blocks, with a short one between
        perm = torch.randperm(nblocks, generator=gen).tolist()
        n530, n700 = -(-530 // BS), -(-700 // BS)
        lens = [530, 7, 700, 1]
        tables = [perm[:n530], perm[n530:n530 + 2], perm[n530 + 2:n530 + 2 + n700], [perm[-1]]]
    q = torch.randn(4, 6, head_dim, generator=gen).to(dtype) * 3  # larger scores: a peaked softmax too
    torch_backend, cpu_backend = get_attention_backend("torch"), get_attention_backend("cpu")
    ref_meta = torch_backend.build_metadata([1] * 4, lens, tables, BS, torch.device("cpu"))
    from pitstop.model.attention.torch_paged import _decode_attention

    ref = _decode_attention(ref_meta.backend_data["decode"], q, k_cache, v_cache, 0.25)
    meta = cpu_backend.build_metadata([1] * 4, lens, tables, BS, torch.device("cpu"))
    got = kernels.paged_decode_attention(q, k_cache, v_cache, meta.backend_data["decode_tables"],
                                         meta.backend_data["decode_lens"], 0.25)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.float(), ref.float(), atol=tol, rtol=tol)
    for i in range(4):  # alone == in the batch, bit for bit
        alone = kernels.paged_decode_attention(q[i : i + 1], k_cache, v_cache,
                                               meta.backend_data["decode_tables"][i : i + 1],
                                               meta.backend_data["decode_lens"][i : i + 1], 0.25)
        assert torch.equal(alone[0], got[i])


def test_metadata_layout_and_errors() -> None:
    backend = get_attention_backend()
    meta = backend.build_metadata([3, 1, 1], [5, 2, 6], [[2, 0], [1], [3, 4]], BS, torch.device("cpu"))
    assert (meta.num_prefills, meta.num_prefill_tokens, meta.num_decodes) == (1, 3, 2)
    assert meta.slot_mapping.tolist() == [2 * BS + 2, 2 * BS + 3, 0 * BS + 0, 1 * BS + 1, 4 * BS + 1]
    with pytest.raises(ValueError, match="too short"):
        backend.build_metadata([1], [9], [[0, 1]], BS, torch.device("cpu"))
    with pytest.raises(ValueError, match="unknown attention backend"):
        get_attention_backend("nope")
