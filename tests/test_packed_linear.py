"""oneDNN pre-packed bf16 linears give exactly ``F.linear``'s results, alone and inside the model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from model_fixtures import make_tiny_model
from pitstop.model import load_model
from pitstop.model.cpu_packed_linear import (EXACT_ROWS, PackedLinear, can_prepack, pack_weight, packed_linear,
                                             prepack_linears, row_bucket)
from test_model_forward import MIXED, _sequences, run_schedule

needs_prepack = pytest.mark.skipif(not can_prepack(torch.bfloat16, torch.device("cpu")),
                                   reason="this CPU cannot run oneDNN bf16 weight pre-packing (its probe failed: pitstop info)")


@needs_prepack
@pytest.mark.parametrize("out_features,in_features,bias", [(960, 576, False), (576, 1536, True), (40, 24, True)])
@pytest.mark.parametrize("rows", [1, 2, 7, 16, 17, 33, 100, 160])
def test_packed_linear_bit_identical(out_features: int, in_features: int, bias: bool, rows: int) -> None:
    gen = torch.Generator().manual_seed(rows)
    w = torch.randn(out_features, in_features, generator=gen).bfloat16()
    b = torch.randn(out_features, generator=gen).bfloat16() if bias else None
    x = torch.randn(rows, in_features, generator=gen).bfloat16()
    got = packed_linear(x, w, pack_weight(w), b)
    assert got.shape == (rows, out_features) and got.dtype == torch.bfloat16
    assert torch.equal(got, F.linear(x, w, b))


def test_fp32_model_is_not_packed(tmp_path: Path) -> None:
    model = load_model(make_tiny_model(tmp_path, "llama"), torch.float32)
    assert prepack_linears(model) == 0
    assert not any(isinstance(m, PackedLinear) for m in model.modules())


@needs_prepack
def test_prepacked_model_matches_plain(tmp_path: Path) -> None:
    """Every nn.Linear is packed, and a mixed prefill/decode schedule gives the very same bf16 logits."""
    model_dir = make_tiny_model(tmp_path, "llama")
    plain = load_model(model_dir, torch.bfloat16)
    packed = load_model(model_dir, torch.bfloat16)
    num_linears = sum(type(m) is nn.Linear for m in packed.modules())
    assert prepack_linears(packed) == num_linears > 0
    assert all(type(m) is not nn.Linear for m in packed.modules())
    seqs = _sequences(plain.vocab_size, 4, 16)
    want = run_schedule(plain, seqs, MIXED, torch.bfloat16)
    got = run_schedule(packed, seqs, MIXED, torch.bfloat16)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


def test_row_bucket_bounds_shapes_and_padding() -> None:
    """Exact up to EXACT_ROWS; above, never fewer rows and fewer than max(EXACT_ROWS, M/8) padding rows,
    monotone, and few distinct shapes (what bounds oneDNN's per-shape primitives)."""
    buckets = [row_bucket(m) for m in range(1, 4097)]
    assert buckets[:EXACT_ROWS] == list(range(1, EXACT_ROWS + 1))
    for m, b in enumerate(buckets, start=1):
        assert b >= m
        assert b - m < max(EXACT_ROWS, m / 8)
    assert buckets == sorted(buckets)
    assert all(row_bucket(b) == b for b in buckets)  # a bucket is its own bucket
    assert len(set(buckets)) <= EXACT_ROWS + 8 * 9


_GROWTH = """
import sys, psutil, torch
from pitstop.model.cpu_packed_linear import pack_weight, packed_linear
torch.set_num_threads(1)
w = torch.randn(1536, 576).bfloat16()
pw = pack_weight(w)
proc = psutil.Process()
before = proc.memory_info().rss
for m in range(2, 402):
    x = torch.randn(m, 576).bfloat16()
    if sys.argv[1] == "buckets":
        packed_linear(x, w, pw)
    else:
        torch.ops.mkldnn._linear_pointwise(x, pw, None, "none", [], "")
print(proc.memory_info().rss - before)
"""


@needs_prepack
def test_row_buckets_bound_onednn_memory() -> None:
    """400 row counts through one packed linear: with buckets the process grows far less than with one oneDNN
    primitive per row count (measured: +34 vs +614 MiB over 800 row counts). Run in fresh processes, the
    same primitive cache bound in both."""
    import subprocess
    import sys

    env = {**os.environ, "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "1024"}
    grow = {mode: int(subprocess.run([sys.executable, "-c", _GROWTH, mode], env=env, check=True, text=True,
                                     capture_output=True).stdout.split()[-1]) for mode in ("buckets", "exact")}
    assert grow["exact"] > 0
    assert grow["buckets"] < 0.3 * grow["exact"], grow
