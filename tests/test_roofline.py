"""Roofline formula on a hand-made config: regimes and exact byte / FLOP counts (no timing)."""

from __future__ import annotations

import pytest

from pitstop.bench.roofline import ModelShape, decode_bound, decode_roofline_s

# SmolLM2-135M-like shape, written by hand.
CONFIG = {
    "num_hidden_layers": 30, "hidden_size": 576, "num_attention_heads": 9, "num_key_value_heads": 3,
    "intermediate_size": 1536, "vocab_size": 49152, "tie_word_embeddings": True,
}
PEAK = 1e12  # FLOP/s
BW = 50e9  # bytes/s


def test_shape_counts() -> None:
    s = ModelShape.from_hf_config(CONFIG)
    assert s.head_dim == 64
    per_layer = 576 * 576 * 2 + 576 * 192 * 2 + 3 * 576 * 1536
    assert s.layer_linear_params() == per_layer
    assert s.total_params() == 49152 * 576 + 30 * (per_layer + 2 * 576) + 576
    assert 134e6 < s.total_params() < 135e6  # SmolLM2-135M
    assert s.params_per_token() == 30 * per_layer + 49152 * 576
    assert s.kv_bytes_per_token(2) == 30 * 2 * 3 * 64 * 2


def test_untied_head_counted() -> None:
    tied = ModelShape.from_hf_config(CONFIG)
    untied = ModelShape.from_hf_config({**CONFIG, "tie_word_embeddings": False})
    assert untied.total_params() - tied.total_params() == 49152 * 576


def test_batch1_is_memory_bound() -> None:
    b = decode_bound(CONFIG, batch=1, context_len=256, dtype_bytes=2, peak_flops=PEAK, bandwidth=BW)
    assert b.regime == "memory"
    assert b.bound_s == pytest.approx(b.bytes_moved / BW)


def test_large_batch_is_compute_bound() -> None:
    b = decode_bound(CONFIG, batch=512, context_len=16, dtype_bytes=2, peak_flops=PEAK, bandwidth=BW)
    assert b.regime == "compute"
    assert b.bound_s == pytest.approx(b.flops / PEAK)


def test_exact_terms() -> None:
    s = ModelShape.from_hf_config(CONFIG)
    b = decode_bound(CONFIG, batch=8, context_len=100, dtype_bytes=2, peak_flops=PEAK, bandwidth=BW)
    assert b.bytes_moved == s.total_params() * 2 + 8 * 100 * 30 * 2 * 3 * 64 * 2
    assert b.flops == 2 * s.params_per_token() * 8 + 4 * 8 * 100 * 30 * 9 * 64
    assert decode_roofline_s(CONFIG, 8, 100, 2, PEAK, BW) == pytest.approx(max(b.memory_s, b.compute_s))


def test_bound_grows_with_batch_and_context() -> None:
    times = [decode_roofline_s(CONFIG, b, 256, 2, PEAK, BW) for b in (1, 8, 32, 128, 512)]
    assert times == sorted(times)
    assert decode_roofline_s(CONFIG, 8, 4096, 2, PEAK, BW) > decode_roofline_s(CONFIG, 8, 256, 2, PEAK, BW)


def test_namespace_config_and_defaults() -> None:
    from types import SimpleNamespace

    cfg = SimpleNamespace(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128,
                          vocab_size=100, num_key_value_heads=None, head_dim=None)
    s = ModelShape.from_hf_config(cfg)
    assert (s.num_kv_heads, s.head_dim, s.tied_embeddings) == (4, 16, False)
