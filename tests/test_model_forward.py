"""pitstop model logits vs transformers on the same weights (fp32, tight tolerance).

Each scenario feeds whole token sequences through the paged cache in a schedule of steps
(full prefill, chunked prefill, prefill chunk mixed with decodes) and compares every produced
logit row with transformers' full-sequence forward.
"""

from __future__ import annotations

import json
import random
from functools import lru_cache
from pathlib import Path

import pytest
import torch

from model_fixtures import TINY_ARCHS, hf_logits, make_tiny_model
from pitstop.model import allocate_kv_cache, kv_cache_bytes_per_block, load_model

ATOL = 1e-4
BLOCK = 4

# a schedule is a list of steps; a step is a list of (sequence index, number of new tokens),
# prefills (or any chunk) first, 1-token decodes last.
FULL = [[(0, 23)]]
CHUNKED = [[(0, 3)], [(0, 5)], [(0, 3)], [(0, 5)], [(0, 3)], [(0, 4)]]
MIXED = [
    [(1, 9), (2, 6)],
    [(0, 5), (1, 1), (2, 1)],
    [(0, 7), (2, 1), (1, 1)],
    [(3, 2), (0, 1), (1, 1), (2, 1)],
    [(0, 1), (1, 1), (2, 1), (3, 1)],
]


@lru_cache(maxsize=8)
def _model(model_dir: str, dtype: torch.dtype, backend: str = "torch"):
    return load_model(model_dir, dtype, attn_backend=backend)


@lru_cache(maxsize=32)
def _reference(model_dir: str, ids: tuple[int, ...]) -> torch.Tensor:
    return hf_logits(Path(model_dir), list(ids))


def _sequences(vocab: int, n: int, length: int, seed: int = 1) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(vocab) for _ in range(length)] for _ in range(n)]


def run_schedule(model, seqs: list[list[int]], schedule, dtype=torch.float32) -> list[torch.Tensor]:
    """Run ``schedule`` over ``seqs``; return the logits ``[n_done_i, vocab]`` of each sequence."""
    max_blocks = max(len(s) for s in seqs) // BLOCK + 1
    pool = list(range(len(seqs) * max_blocks + 3))
    random.Random(7).shuffle(pool)
    tables = [pool[i * max_blocks : (i + 1) * max_blocks] for i in range(len(seqs))]
    caches = allocate_kv_cache(model, len(pool), BLOCK, dtype)
    done = [0] * len(seqs)
    out: list[list[torch.Tensor]] = [[] for _ in seqs]
    for step in schedule:
        ids, pos, qlens, slens, bts = [], [], [], [], []
        for i, n in step:
            ids += seqs[i][done[i] : done[i] + n]
            pos += list(range(done[i], done[i] + n))
            done[i] += n
            qlens.append(n), slens.append(done[i]), bts.append(tables[i][: (done[i] + BLOCK - 1) // BLOCK])
        meta = model.attn_backend.build_metadata(qlens, slens, bts, BLOCK, torch.device("cpu"))
        with torch.inference_mode():
            hidden = model(torch.tensor(ids), torch.tensor(pos), caches, meta)
            logits = model.compute_logits(hidden)
        start = 0
        for (i, n) in step:
            out[i].append(logits[start : start + n])
            start += n
    return [torch.cat(rows) if rows else torch.empty(0) for rows in out]


def _check(model_dir: Path, schedule, n_seqs: int, length: int, atol: float = ATOL, backend: str = "torch",
           model=None) -> None:
    model = model or _model(str(model_dir), torch.float32, backend)
    if backend == "cpu":  # the C++ kernel is really in use wherever it can be (not a silent fallback)
        from pitstop.model.cpu_kernels import kernel_status, kernels_disabled

        assert kernels_disabled() is not None or model.attn_backend.kernels is not None, kernel_status()
    seqs = _sequences(model.vocab_size, n_seqs, length)
    got = run_schedule(model, seqs, schedule)
    for seq, logits in zip(seqs, got):
        ref = _reference(str(model_dir), tuple(seq))[: len(logits)]
        assert logits.dtype == torch.float32
        torch.testing.assert_close(logits, ref, atol=atol, rtol=0)


@pytest.fixture(scope="module", params=TINY_ARCHS)
def tiny_dir(request, tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny"), request.param)


@pytest.mark.parametrize("schedule,n_seqs,length", [(FULL, 1, 23), (CHUNKED, 1, 23), (MIXED, 4, 16)],
                         ids=["full", "chunked", "mixed"])
@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_tiny_matches_hf(tiny_dir: Path, schedule, n_seqs: int, length: int, backend: str) -> None:
    _check(tiny_dir, schedule, n_seqs, length, backend=backend)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny_llama"), "llama")


def test_tiny_compiled_matches_hf(tiny_llama: Path) -> None:
    """torch.compile'd dense parts (pitstop.model.compiled) give the same logits as transformers (one architecture:
    compiling takes tens of seconds on 2 cores; Inductor's disk cache makes reruns fast)."""
    from pitstop.model.compiled import compile_decoder

    tiny_dir = tiny_llama
    model = load_model(tiny_dir, torch.float32, attn_backend="cpu")
    info = compile_decoder(model)
    _check(tiny_dir, MIXED, 4, 16, model=model)
    if info["enabled"]:
        assert model.compiled_pieces.failure is None, model.compiled_pieces.failure


def test_compile_failure_falls_back_to_eager(tiny_llama: Path, monkeypatch) -> None:
    """A compiler failure (simulated) switches the model to eager for good; the outputs stay right."""
    import pitstop.model.compiled as compiled

    def broken(which: str) -> None:
        raise RuntimeError("simulated: C++ compile failed")

    monkeypatch.setattr(compiled, "_compile_failure", broken)
    monkeypatch.setattr(compiled, "_cannot_compile", lambda: None)
    tiny_dir = tiny_llama
    model = load_model(tiny_dir, torch.float32)
    assert compiled.compile_decoder(model)["enabled"]
    _check(tiny_dir, MIXED, 4, 16, model=model)
    assert "simulated" in model.compiled_pieces.failure


@pytest.mark.parametrize("schedule,n_seqs,length", [(FULL, 1, 23), (CHUNKED, 1, 23), (MIXED, 4, 16)],
                         ids=["full", "chunked", "mixed"])
@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_smollm2_matches_hf(smollm2_dir: Path, schedule, n_seqs: int, length: int, backend: str) -> None:
    _check(smollm2_dir, schedule, n_seqs, length, backend=backend)


def test_smollm2_bf16_close(smollm2_dir: Path) -> None:
    """bf16 forward stays close to the fp32 reference (same greedy tokens on most positions)."""
    model = _model(str(smollm2_dir), torch.bfloat16)
    seqs = _sequences(model.vocab_size, 4, 16)
    got = run_schedule(model, seqs, MIXED, torch.bfloat16)
    agree = total = 0
    for seq, logits in zip(seqs, got):
        ref = _reference(str(smollm2_dir), tuple(seq))[: len(logits)]
        agree += int((logits.argmax(-1) == ref.argmax(-1)).sum())
        total += len(logits)
        assert (logits - ref).abs().max() < 0.1 * ref.abs().max()
    assert agree >= 0.8 * total


def test_model_attributes(tiny_dir: Path) -> None:
    model = _model(str(tiny_dir), torch.float32)
    cfg = json.loads((tiny_dir / "config.json").read_text())
    assert model.num_layers == cfg["num_hidden_layers"] and model.num_kv_heads == cfg["num_key_value_heads"]
    assert model.vocab_size == cfg["vocab_size"]
    caches = allocate_kv_cache(model, 5, BLOCK, torch.bfloat16)
    assert len(caches) == model.num_layers
    per_block = sum(c.numel() * c.element_size() for kv in caches for c in kv) // 5
    assert per_block == kv_cache_bytes_per_block(model.hf_config, BLOCK, torch.bfloat16)
    if cfg.get("tie_word_embeddings"):
        assert model.lm_head.weight.data_ptr() == model.embed_tokens.weight.data_ptr()


def test_unsupported_architecture(tmp_path: Path) -> None:
    folder = make_tiny_model(tmp_path, "llama")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="GPT2LMHeadModel.*LlamaForCausalLM"):
        load_model(folder, torch.float32)
