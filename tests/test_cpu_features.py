"""dtype="auto" and the ISA-specific fast paths: probed on this CPU, chosen once at load, with a portable
fallback. ``make test`` runs this file twice: natively, and with ``PITSTOP_PORTABLE=1`` plus oneDNN,
ATen and MKL capped at AVX2 (``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2
MKL_ENABLE_INSTRUCTIONS=AVX2``), the path an AVX2-only CPU takes."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from model_fixtures import make_tiny_model
from pitstop import LLM, SamplingParams
from pitstop.cli.info import collect, format_text
from pitstop.cli.main import main as cli_main
from pitstop.model.cpu_features import (CpuFeatures, KernelChoice, Probe, choose_kernels, cpu_features,
                                        portable_requested)
from pitstop.model.cpu_packed_linear import PackedLinear
from reference import compare_greedy, hf_greedy

OK, FAILED = Probe(True, "ran"), Probe(False, "raised: bf16 path needs avx512bw")


def _features(native: bool, prepack: bool = True, gemv: bool = True, torch_isa: bool | None = None) -> CpuFeatures:
    """A described CPU (the record ``cpu_features`` returns), for the pure choice function."""
    return CpuFeatures(cpu_model="test cpu", machine="x86_64", isa_flags=("avx2",), torch_capability="AVX2",
                       torch_bf16_isa=native if torch_isa is None else torch_isa, onednn_bf16=native,
                       bf16=OK if native else Probe(False, "bf16 6.1x slower"),
                       prepack=OK if prepack else FAILED, gemv=OK if gemv else FAILED)


@pytest.mark.parametrize("requested,native,portable,want_dtype,want_prepack,want_gemv,warns", [
    ("auto", True, False, "bfloat16", True, True, False),
    ("auto", False, False, "float32", False, False, False),
    ("auto", True, True, "float32", False, False, False),
    ("float32", True, False, "float32", False, False, False),
    ("bfloat16", True, False, "bfloat16", True, True, False),
    ("bfloat16", False, False, "bfloat16", False, False, True),
    ("bfloat16", True, True, "bfloat16", False, False, True),
])
def test_choice_table(requested: str, native: bool, portable: bool, want_dtype: str, want_prepack: bool,
                      want_gemv: bool, warns: bool) -> None:
    k = choose_kernels(requested, _features(native), portable=portable)
    assert (k.dtype, k.prepack, k.gemv_switch, k.warning is not None) == (want_dtype, want_prepack, want_gemv, warns)
    assert k.dtype in k.summary() and k.linear_kernel in k.summary()
    if warns:
        assert "emulated" in k.warning and "\n" not in k.warning


def test_a_failed_probe_falls_back_per_path() -> None:
    k = choose_kernels("auto", _features(True, prepack=False, gemv=True), portable=False)
    assert (k.dtype, k.prepack, k.gemv_switch) == ("bfloat16", False, True)
    k = choose_kernels("auto", _features(True, prepack=True, gemv=False), portable=False)
    assert (k.dtype, k.prepack, k.gemv_switch) == ("bfloat16", True, False)


def test_torch_isa_alone_is_not_native() -> None:
    """torch reporting AVX512-BF16 is not enough: oneDNN and the timed probe must agree."""
    feats = _features(False, torch_isa=True)
    assert not feats.native_bf16
    assert choose_kernels("auto", feats, portable=False).dtype == "float32"


def test_unknown_dtype_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="dtype must be one of auto, bfloat16, float32"):
        choose_kernels("float16", _features(True), portable=False)


def test_probes_agree_with_the_ops_on_this_cpu() -> None:
    """Each probe's verdict is what running the op directly gives on this very CPU."""
    feats = cpu_features()
    w, x = torch.randn(64, 32).bfloat16(), torch.randn(5, 32).bfloat16()
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(w)
        runs = torch.equal(torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], ""), F.linear(x, w))
    except (RuntimeError, AttributeError):
        runs = False
    assert feats.prepack.ok == runs, feats.prepack.detail
    assert feats.onednn_bf16 == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if not (torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()):
        assert not feats.native_bf16
    if feats.native_bf16:
        assert feats.prepack.ok or "raised" in feats.prepack.detail
    assert cpu_features() is feats  # probed once per process


def test_environment_choice() -> None:
    """What this run chose: the portable run must take every portable path."""
    k = choose_kernels("auto")
    if portable_requested():
        assert (k.dtype, k.prepack, k.gemv_switch, k.portable) == ("float32", False, False, True)
    else:
        assert k.dtype == ("bfloat16" if cpu_features().native_bf16 else "float32")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("cpu"), "llama")


@pytest.mark.parametrize("requested", ["auto", "bfloat16", "float32"])
def test_runner_applies_the_choice(tiny_dir: Path, requested: str) -> None:
    llm = LLM(str(tiny_dir), dtype=requested, kv_cache_memory="4MiB", max_model_len=128, skip_tokenizer_init=True)
    runner = llm.llm_engine.executor
    want = choose_kernels(requested)
    assert runner.kernels == want
    params = list(runner.model.parameters())
    assert {p.dtype for p in params} == {getattr(torch, want.dtype)}
    assert all(k.dtype == getattr(torch, want.dtype) for kv in runner.kv_caches for k in kv)
    packed = [m for m in runner.model.modules() if isinstance(m, PackedLinear)]
    assert bool(packed) == want.prepack
    out = llm.generate([[1, 2, 3, 4, 5]], SamplingParams(temperature=0, max_tokens=6, ignore_eos=True))
    assert len(out[0].outputs[0].token_ids) == 6


def test_explicit_emulated_bf16_warns_in_one_line(tiny_dir: Path, monkeypatch, caplog) -> None:
    monkeypatch.setenv("PITSTOP_PORTABLE", "1")
    with caplog.at_level(logging.INFO, logger="pitstop"):
        llm = LLM(str(tiny_dir), dtype="bfloat16", kv_cache_memory="4MiB", max_model_len=128,
                  skip_tokenizer_init=True)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "pitstop"]
    assert len(warnings) == 1 and "emulated" in warnings[0].getMessage()
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO and r.name == "pitstop"]
    assert any("dtype=bfloat16" in m and "linear=aten" in m for m in infos)
    assert llm.llm_engine.executor.kernels.portable
    assert not any(isinstance(m, PackedLinear) for m in llm.llm_engine.executor.model.modules())


def test_auto_dtype_greedy_on_smollm2(smollm2_dir: Path) -> None:
    """The default engine on the default model, whatever it chose: float32 equals transformers token for
    token (ties reported); bfloat16 stays close (most of the first 16 tokens equal)."""
    llm = LLM(str(smollm2_dir), kv_cache_memory="64MiB", max_model_len=256)
    k = llm.llm_engine.executor.kernels
    assert k.requested_dtype == "auto"
    tok = llm.get_tokenizer()
    prompts = [tok(p).input_ids for p in ("The capital of France is", "def fibonacci(n):", "1, 2, 3, 4,")]
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=16, ignore_eos=True))
    from transformers import AutoModelForCausalLM
    hf = AutoModelForCausalLM.from_pretrained(str(smollm2_dir), dtype=torch.float32).eval()
    refs = [hf_greedy(hf, ids, 16) for ids in prompts]
    if k.dtype == "float32":
        for out, ref in zip(outs, refs):
            compare_greedy(out.outputs[0].token_ids, ref)
    else:
        agree = sum(a == b for out, ref in zip(outs, refs) for a, b in zip(out.outputs[0].token_ids, ref.tokens))
        assert agree >= 0.6 * 16 * len(prompts), agree


def test_info_reports_the_choice() -> None:
    info = collect("auto")
    k = choose_kernels("auto")
    assert info["choice"]["dtype"] == k.dtype and info["choice"]["linear"] == k.linear_kernel
    assert info["cpu"]["torch_capability"] == torch.backends.cpu.get_cpu_capability()
    text = format_text(info)
    assert f"auto -> {k.dtype}" in text and info["cpu"]["cpu_model"] in text
    from pitstop.model.cpu_kernels import kernels_disabled

    cpp = info["cpp_kernels"]  # pitstop's C++ kernels: on unless something turns them off, and then why
    assert cpp["enabled"] == (kernels_disabled() is None)
    assert ("c++ kernels:  on" if cpp["enabled"] else f"off ({cpp['reason']})") in text


def test_info_says_why_cpp_kernels_are_off(monkeypatch) -> None:
    monkeypatch.setenv("PITSTOP_NO_CPU_KERNELS", "1")
    info = collect("auto")
    cpp = info["cpp_kernels"]  # under `make test`'s portable run PITSTOP_PORTABLE is the reason given first
    assert not cpp["enabled"] and cpp["reason"] in ("PITSTOP_NO_CPU_KERNELS is set", "PITSTOP_PORTABLE is set")
    assert f"c++ kernels:  off ({cpp['reason']})" in format_text(info)


def test_info_cli_json(capsys) -> None:
    assert cli_main(["info", "--json", "--dtype", "float32"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["choice"]["dtype"] == "float32" and info["choice"]["linear"] == "aten"
    assert set(info["cpu"]) >= {"cpu_model", "isa_flags", "native_bf16", "prepack", "bf16", "gemv"}


def test_kernel_choice_is_a_plain_record() -> None:
    k = KernelChoice("auto", "float32", "auto: portable", False, False, True)
    assert k.linear_kernel == "aten" and k.gemv_kernel == "aten" and "PITSTOP_PORTABLE=1" in k.summary()
