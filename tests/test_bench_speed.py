"""Benchmark helpers of issue 18: the per-step profile (not-model-compute share) and the llama.cpp peer's
failure handling (the peer itself is never built by the test suite)."""

from __future__ import annotations

from model_fixtures import make_tiny_model
from pitstop import LLM, SamplingParams
from pitstop.bench import peer_llamacpp
from pitstop.bench.step_profile import StepProfiler


def test_step_profiler_splits_model_and_overhead(tmp_path) -> None:
    folder = make_tiny_model(tmp_path, "llama")
    llm = LLM(str(folder), dtype="float32", kv_cache_memory="8MiB", max_model_len=128, skip_tokenizer_init=True)
    with StepProfiler(llm) as prof:
        llm.generate([[5, 6, 7], [9, 10, 11]], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True),
                     use_tqdm=False)
    assert "step" not in llm.llm_engine.__dict__  # unwrapped again
    summary = prof.decode_summary(2)
    assert summary is not None and summary["num_steps"] >= 5
    assert 0 < summary["model_s"] <= summary["executor_s"] <= summary["wall_s"]
    assert 0 <= summary["overhead_share"] < 1
    assert abs(summary["overhead_share"] - summary["executor_overhead_share"]
               - summary["engine_overhead_share"]) < 1e-9
    assert prof.decode_summary(7) is None


def test_llamacpp_peer_reports_failures(monkeypatch) -> None:
    def no_build(log=print):
        raise RuntimeError("pip install llama-cpp-python failed: no compiler")

    monkeypatch.setattr(peer_llamacpp, "ensure_installed", no_build)
    res = peer_llamacpp.run_peer("SmolLM2-135M-Instruct", [1, 2, 3], threads=1, log=lambda m: None)
    assert "no compiler" in res["error"]
    assert peer_llamacpp.run_peer("/nope/model-folder", [1], threads=1)["error"].startswith("no GGUF")
    gguf = peer_llamacpp.gguf_for("SmolLM2-135M-Instruct")
    assert gguf is not None and gguf.name.endswith("Q4_1.gguf") and gguf.exists()
