"""Injected faults (issue 14): an executor that raises in one step fails only that step's requests and the
engine keeps serving (engine API and HTTP, SSE error event); an engine thread that dies turns /health to
503 and the server process exits non-zero within a bound."""

from __future__ import annotations

import json
import time

import pytest

from fake_executor import PagedEchoExecutor
from pitstop.engine.llm_engine import StepFailed
from pitstop.sampling_params import SamplingParams
from server_helpers import own_server, start_server
from test_programs import make_engine, run

pytestmark = pytest.mark.timeout(180)


class _RaiseOnce(PagedEchoExecutor):
    """The paged echo executor, raising in its ``fail_at``-th step."""

    fail_at = 2

    def execute(self, so):
        if len(self.steps) + 1 == self.fail_at:
            self.steps.append(so)
            raise RuntimeError("boom")
        return super().execute(so)


def test_a_failed_step_aborts_only_its_requests():
    eng, _, _ = make_engine(num_blocks=40, max_num_seqs=1)
    eng.executor = _RaiseOnce(40, 4)
    sp = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    eng.add_request("r1", list(range(1, 10)), sp)
    eng.add_request("r2", list(range(20, 30)), sp)  # waits: max_num_seqs=1
    eng.step()
    with pytest.raises(StepFailed) as e:
        eng.step()
    assert e.value.request_ids == ["r1"]
    eng.scheduler.check_kv_accounting()
    done = run(eng)
    assert done["r1"].outputs[0].finish_reason == "abort"
    assert done["r2"].outputs[0].finish_reason == "length" and len(done["r2"].outputs[0].token_ids) == 6


server, kv_balanced_after = own_server("faults")


def test_step_fault_ends_its_stream_with_an_error_and_the_server_goes_on(server):
    body = {"prompt": list(range(100, 140)), "max_tokens": 300, "temperature": 0, "ignore_eos": True, "stream": True}
    with server._client.stream("POST", "/v1/completions", json=body) as resp:
        lines = resp.iter_lines()
        next(ln for ln in lines if ln.startswith("data: "))  # running
        assert server.post("/debug/fault", json={"kind": "step"}).status_code == 200
        events = [ln[6:] for ln in lines if ln.startswith("data: ")]
    assert events[-1] == "[DONE]"
    err = json.loads(events[-2])["error"]
    assert err["type"] == "server_error" and ".py" not in err["message"]
    ok = server.post("/v1/completions", json={"prompt": "The capital of France is", "max_tokens": 4})
    assert ok.status_code == 200 and server.get("/health").status_code == 200


def test_unknown_fault_kind_is_400(server):
    assert server.post("/debug/fault", json={"kind": "meteor"}).status_code == 400


def test_a_dead_engine_thread_makes_health_503_and_the_process_exit_nonzero(tmp_path):
    srv = start_server(tmp_path)
    try:
        assert srv.post("/debug/fault", json={"kind": "thread"}).status_code == 200
        deadline = time.monotonic() + 60
        codes = []
        while srv.proc.poll() is None and time.monotonic() < deadline:
            try:
                codes.append(srv.get("/health").status_code)
            except Exception:  # noqa: BLE001 - the server is going away
                pass
            time.sleep(0.1)
        assert srv.proc.wait(timeout=1) == 3, srv.log()
        assert "engine thread died" in srv.log()
        assert 200 not in codes[1:], codes  # never healthy again once it died
    finally:
        srv.stop()


class _PoisonedTokenizer:
    """A slow tokenizer (no Rust backend, so the window decoder calls ``decode``) whose ``decode`` raises
    once a given token id is in the window; everything else is the real SmolLM2 tokenizer's."""

    def __init__(self, real, poison: int) -> None:
        self.real, self.poison = real, poison

    def decode(self, ids, **kw):
        if self.poison in list(ids):
            raise ValueError("cannot decode this token")
        return self.real.decode(ids, **kw)

    def __getattr__(self, name):
        if name in ("backend_tokenizer", "_tokenizer"):
            raise AttributeError(name)
        return getattr(self.real, name)


def test_a_detokenizer_error_ends_only_its_request(smollm2_dir):
    from transformers import AutoTokenizer

    from fake_executor import Clock
    from pitstop.config import EngineConfig
    from pitstop.engine.llm_engine import LLMEngine

    ex = PagedEchoExecutor(64, 4)
    bad_prompt, good_prompt = [11, 12, 13], [21, 22, 23, 24]
    poison = ex.next_token(bad_prompt)  # the first token the bad request generates
    ctx = list(good_prompt)
    for _ in range(6):
        ctx.append(ex.next_token(ctx))
    assert poison not in ctx  # the good request never meets it
    tok = _PoisonedTokenizer(AutoTokenizer.from_pretrained(str(smollm2_dir)), poison)
    eng = LLMEngine(EngineConfig(block_size=4), executor=ex, tokenizer=tok, clock=Clock(), num_blocks=64,
                    vocab_size=1000, max_model_len=64)
    sp = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    eng.add_request("bad", None, sp, prompt_token_ids=bad_prompt)
    eng.add_request("good", None, sp, prompt_token_ids=good_prompt)
    done = run(eng)
    assert done["bad"].error == "detokenization failed (ValueError)"
    assert done["bad"].outputs[0].finish_reason == "abort"
    assert done["good"].error is None and done["good"].outputs[0].token_ids == ctx[len(good_prompt):]
    assert done["good"].outputs[0].text == tok.real.decode(ctx[len(good_prompt):])
    eng.scheduler.check_kv_accounting()
