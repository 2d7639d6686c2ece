"""Structured outputs (issue 15) on the real default model: every kind through ``LLM.generate``, outputs that parse and
validate (``jsonschema``), batch invariance of constrained greedy decoding (alone, batched, chunked prefill,
preemption), ``n`` > 1, stop strings, prefix caching, abort, and the errors (invalid / unsupported specs at
``add_request``, compile timeout), and unconstrained requests running while a grammar compiles (a hook holds the
compile: no timing luck)."""

from __future__ import annotations

import json
import re
import threading
import uuid

import jsonschema
import pytest

from pitstop import LLM, SamplingParams
from pitstop.sampling_params import StructuredOutputsParams as SO

PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 150}},
          "required": ["name", "age"], "additionalProperties": False}
WEATHER = {"type": "object", "properties": {"location": {"type": "string", "maxLength": 30},
                                            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
           "required": ["location", "unit"], "additionalProperties": False}


@pytest.fixture(scope="module")
def llm(smollm2_dir):
    return LLM(str(smollm2_dir), dtype="float32", kv_cache_memory="128MiB", max_model_len=512)


def chat(llm: LLM, text: str) -> list[int]:
    tok = llm.get_tokenizer()
    s = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
    return list(tok(s, add_special_tokens=False).input_ids)


def greedy(so: SO, max_tokens: int = 64, **kw) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=max_tokens, structured_outputs=so, **kw)


def unique_schema() -> dict:
    """A schema no earlier test compiled (so its compile is not a cache hit): a fresh ``title`` (it does not change
    what may be generated); one required key with three allowed values, so every greedy output is complete well
    within ``greedy``'s 64 tokens (a random key name with an unbounded integer once ran the model into the limit
    mid-number, and a truncated JSON failed the check by chance)."""
    return {"title": f"t{uuid.uuid4().hex[:8]}", "type": "object",
            "properties": {"k": {"type": "integer", "enum": [1, 2, 3]}}, "required": ["k"],
            "additionalProperties": False}


# ---- each kind -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("schema", [PERSON, WEATHER])
@pytest.mark.parametrize("compact", [False, True])
def test_json_schema_output_parses_and_validates(llm, schema, compact):
    prompt = chat(llm, "Describe a person (name, age) or the weather request as JSON.")
    out = llm.generate([prompt], greedy(SO(json=schema, disable_any_whitespace=compact), 96), use_tqdm=False)[0]
    c = out.outputs[0]
    assert out.error is None and c.finish_reason == "stop", c
    jsonschema.validate(json.loads(c.text), schema)
    if compact:
        assert not re.search(r"[\n\t]|: |, ", c.text), c.text


def test_json_schema_as_text_and_json_object(llm):
    prompt = chat(llm, "Reply with the JSON object {\"ok\": true} and nothing else.")
    out = llm.generate([prompt, prompt], [greedy(SO(json=json.dumps(PERSON)), 96), greedy(SO(json_object=True), 96)],
                       use_tqdm=False)
    jsonschema.validate(json.loads(out[0].outputs[0].text), PERSON)
    assert out[1].outputs[0].finish_reason == "stop"
    assert isinstance(json.loads(out[1].outputs[0].text), dict)


def test_regex_choice_and_grammars(llm):
    prompt = chat(llm, "What is the capital of France? Answer briefly.")
    sps = [greedy(SO(regex=r"[A-Z][a-z]{2,8} is [0-9]{1,3}")), greedy(SO(choice=["Paris", "London", "Ber\"lin"])),
           greedy(SO(grammar='start: "The answer is " ANSWER "."\nANSWER: "yes" | "no"')),
           greedy(SO(grammar='root ::= "capital: " [A-Z] [a-z]+'))]
    outs = llm.generate([prompt] * 4, sps, use_tqdm=False)
    texts = [o.outputs[0].text for o in outs]
    assert all(o.outputs[0].finish_reason == "stop" for o in outs), texts
    assert re.fullmatch(r"[A-Z][a-z]{2,8} is [0-9]{1,3}", texts[0]), texts
    assert texts[1] in ("Paris", "London", "Ber\"lin"), texts
    assert texts[2] in ("The answer is yes.", "The answer is no."), texts
    assert re.fullmatch(r"capital: [A-Z][a-z]+", texts[3]), texts


def test_n_greater_than_one_one_matcher_per_sequence(llm):
    eng = llm.llm_engine
    prompt = chat(llm, "Invent a person as JSON.")
    sp = SamplingParams(n=3, temperature=1.0, seed=7, max_tokens=96, structured_outputs=SO(json=PERSON))
    rid = eng.add_request(None, None, sp, prompt_token_ids=prompt)
    assert eng.structured_outputs.num_live == 3
    outs = []
    while eng.has_unfinished_requests():
        outs += [o for o in eng.step() if o.finished]
    assert [o.request_id for o in outs] == [rid]
    texts = [c.text for c in outs[0].outputs]
    for c in outs[0].outputs:
        assert c.finish_reason == "stop", texts
        jsonschema.validate(json.loads(c.text), PERSON)
    assert eng.structured_outputs.num_live == 0


def test_stop_string_ends_constrained_output_and_frees_matcher(llm):
    prompt = chat(llm, "Describe a person as JSON.")
    full = llm.generate([prompt], greedy(SO(json=PERSON, disable_any_whitespace=True)), use_tqdm=False)[0]
    text = full.outputs[0].text
    assert "," in text
    out = llm.generate([prompt], greedy(SO(json=PERSON, disable_any_whitespace=True), stop=[","]),
                       use_tqdm=False)[0].outputs[0]
    assert out.finish_reason == "stop" and out.stop_reason == "," and out.text == text[:text.index(",")]
    assert llm.llm_engine.structured_outputs.num_live == 0


def test_prefix_cache_hit_gives_same_constrained_output(llm):
    prompt = chat(llm, "A person as JSON, please, with a long explanation before it? No, just the JSON object.")
    sp = greedy(SO(json=PERSON))
    first = llm.generate([prompt], sp, use_tqdm=False)[0]
    again = llm.generate([prompt], sp, use_tqdm=False)[0]
    assert again.num_cached_tokens >= 16
    assert again.outputs[0].token_ids == first.outputs[0].token_ids


# ---- batch invariance ------------------------------------------------------------------------------------------------
PROMPTS = ["Describe a person as JSON.", "Who wrote Hamlet? Give the person as JSON.",
           "Give the weather request for Paris as JSON.", "Tell me a story about a dragon.",
           "What is 2 + 2? Answer as JSON with a name and an age."]


def _mixed_params() -> list[SamplingParams]:
    return [greedy(SO(json=PERSON)), greedy(SO(json=PERSON, disable_any_whitespace=True)), greedy(SO(json=WEATHER)),
            SamplingParams(temperature=0, max_tokens=48, ignore_eos=True), greedy(SO(regex=r"\{\"name\": \"[A-Za-z ]{1,12}\", \"age\": [0-9]{1,2}\}"))]


@pytest.fixture(scope="module")
def alone(llm):
    """Each prompt's constrained greedy output generated alone (the reference)."""
    prompts = [chat(llm, p) for p in PROMPTS]
    return prompts, [llm.generate([p], sp, use_tqdm=False)[0].outputs[0].token_ids
                     for p, sp in zip(prompts, _mixed_params())]


def test_constrained_greedy_alone_equals_batched(llm, alone):
    prompts, ref = alone
    outs = llm.generate(prompts, _mixed_params(), use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outs] == ref


def test_constrained_greedy_same_with_chunked_prefill(smollm2_dir, alone):
    prompts, ref = alone
    llm = LLM(str(smollm2_dir), dtype="float32", kv_cache_memory="64MiB", max_model_len=512,
              max_num_batched_tokens=7, block_size=4)
    outs = llm.generate(prompts, _mixed_params(), use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outs] == ref


def test_constrained_greedy_same_after_preemption(smollm2_dir, alone):
    prompts, ref = alone
    # 12 blocks of 16 tokens: five 40-50-token prompts growing by up to 64 tokens must preempt mid-decode
    llm = LLM(str(smollm2_dir), dtype="float32", kv_cache_memory=12 * 16 * 30 * 2 * 3 * 64 * 4,
              max_model_len=192, block_size=16)
    assert llm.llm_engine.kv_manager.num_blocks == 12
    outs = llm.generate(prompts, _mixed_params(), use_tqdm=False)
    assert llm.llm_engine.scheduler.num_preemptions > 0
    assert [o.outputs[0].token_ids for o in outs] == ref


# ---- errors ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("so, pattern", [
    (SO(json={"type": "object", "properties": {"a": {"type": "string", "minLength": "x"}}}),
     r"structured_outputs\.json: invalid JSON Schema at properties/a/minLength: 'x' is not of type 'integer'"),
    (SO(json="{not json"), r"structured_outputs\.json is not valid JSON"),
    (SO(json={"type": "foo"}), r"structured_outputs\.json.*(invalid JSON Schema|Invalid type)"),
    (SO(json={"type": "array", "uniqueItems": True}), r"structured_outputs\.json: unsupported .*uniqueItems"),
    (SO(json={"type": "object", "properties": {"a": {"type": "string", "pattern": "(?<=a)b"}}}),
     r"structured_outputs\.json: unsupported .*look-around"),
    (SO(regex="a(b"), r"structured_outputs\.regex: .*unclosed group"),
    (SO(grammar="start: foo"), r"structured_outputs\.grammar: .*unknown name"),
    (SO(grammar="start: ( "), r"structured_outputs\.grammar: "),
    (SO(grammar='root ::= "a" bad'), r"structured_outputs\.grammar: "),
])
def test_invalid_or_unsupported_spec_is_a_clear_value_error_and_nothing_is_queued(llm, so, pattern):
    eng = llm.llm_engine
    with pytest.raises(ValueError, match="(?s)" + pattern):
        eng.add_request(None, None, greedy(so), prompt_token_ids=[1, 2, 3])
    with pytest.raises(ValueError, match=r"(?s)request 1: " + pattern):
        llm.generate(["Hello", "Hello"], [SamplingParams(max_tokens=2), greedy(so)], use_tqdm=False)
    assert not eng.has_unfinished_requests() and eng.structured_outputs.num_live == 0


def test_engine_without_tokenizer_refuses_structured_outputs():
    from fake_executor import PagedEchoExecutor
    from pitstop.config import EngineConfig
    from pitstop.engine.llm_engine import LLMEngine
    eng = LLMEngine(EngineConfig(), PagedEchoExecutor(64, 16), num_blocks=64, max_model_len=256)
    with pytest.raises(ValueError, match="structured_outputs needs a tokenizer.*simulator"):
        eng.add_request("a", [1, 2, 3], greedy(SO(regex="a+")))
    assert not eng.has_unfinished_requests()


def test_grammar_this_vocabulary_cannot_follow_fails_only_that_request_as_its_own_error(llm):
    """U+40000 is UTF-8 F1 80 80 80 and SmolLM2 has no token holding byte F1: llguidance forces a token its own
    matcher then rejects. That is the request's grammar, not an engine fault: ``invalid_request_error`` (a 400 from
    the server), the other request unharmed, nothing left behind (found by the schema fuzz test)."""
    tok = llm.get_tokenizer()
    assert "ñ" not in tok.get_vocab(), "precondition: no byte-F1 token (byte-level BPE spells byte F1 'ñ')"
    outs = llm.generate(["0", "Hi"], [greedy(SO(regex="\U00040000")),
                                      SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)], use_tqdm=False)
    assert outs[0].error_type == "invalid_request_error", outs[0].error
    assert re.search(r"structured_outputs: the grammar rejected token \d+ .*cannot be followed with this "
                     r"model's tokens", outs[0].error)
    assert "<state>" not in outs[0].error  # llguidance's state dump is cut off
    assert outs[1].error is None and len(outs[1].outputs[0].token_ids) == 4
    assert llm.llm_engine.structured_outputs.num_live == 0


class _HeldCompile:
    """A compile hook that holds every compile until released (and says when one has started)."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.gate = threading.Event()

    def __call__(self, key) -> None:
        self.started.set()
        assert self.gate.wait(600), "compile held too long"


def test_compile_past_the_limit_fails_only_that_request(llm):
    eng = llm.llm_engine
    mgr = eng.structured_outputs
    hold, limit = _HeldCompile(), mgr.compile_timeout_s
    mgr.cache.before_compile, mgr.compile_timeout_s = hold, 0.05
    try:
        outs = llm.generate(["Hello", "Hi"], [greedy(SO(json=unique_schema())),
                                              SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)],
                            use_tqdm=False)
    finally:
        mgr.cache.before_compile, mgr.compile_timeout_s = None, limit
        hold.gate.set()
    assert outs[0].finished and outs[0].outputs[0].token_ids == []
    assert re.search(r"did not compile within 0\.05 s \(grammar_compile_timeout_s\)", outs[0].error)
    assert outs[0].error_type == "invalid_request_error"  # the request's own grammar: the server answers 400
    assert outs[1].error is None and outs[1].error_type is None and len(outs[1].outputs[0].token_ids) == 4
    assert mgr.num_live == 0


def test_unconstrained_requests_run_while_a_grammar_compiles(llm):
    eng = llm.llm_engine
    mgr = eng.structured_outputs
    prompt = chat(llm, "Describe a person as JSON.")
    sp_free = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    ref = llm.generate([prompt], sp_free, use_tqdm=False)[0].outputs[0].token_ids
    hold, limit, schema = _HeldCompile(), mgr.compile_timeout_s, unique_schema()
    mgr.cache.before_compile, mgr.compile_timeout_s = hold, 3600.0
    try:
        eng.add_request("held", None, greedy(SO(json=schema)), prompt_token_ids=prompt)
        eng.add_request("free", None, sp_free, prompt_token_ids=prompt)
        assert hold.started.wait(60)
        done = {}
        for _ in range(1000):
            done.update({o.request_id: o for o in eng.step() if o.finished})
            if "free" in done:
                break
        assert "free" in done and "held" not in done, (done, eng.stats())
        assert done["free"].outputs[0].token_ids == ref
        held = eng.scheduler.requests["held"]
        assert "held" not in done and held.output_token_ids == [] and held.num_computed_tokens == 0
    finally:
        mgr.cache.before_compile, mgr.compile_timeout_s = None, limit
        hold.gate.set()
    while eng.has_unfinished_requests():
        done.update({o.request_id: o for o in eng.step() if o.finished})
    assert done["held"].error is None
    jsonschema.validate(json.loads(done["held"].outputs[0].text), schema)


def test_abort_frees_matcher_and_blocks(llm):
    eng = llm.llm_engine
    mgr = eng.structured_outputs
    rid = eng.add_request(None, None, greedy(SO(json=PERSON), 200), prompt_token_ids=chat(llm, "A person as JSON."))
    for _ in range(200):
        eng.step()
        if len(eng.scheduler.requests[rid].output_token_ids) >= 3:
            break
    assert mgr.num_matchers == 1 and eng.kv_manager.req_blocks
    eng.abort_request(rid)
    assert mgr.num_live == 0 and not eng.kv_manager.req_blocks
    [out] = eng.step()
    assert out.finished and out.outputs[0].finish_reason == "abort"
    eng.scheduler.check_kv_accounting()


def test_abort_while_its_grammar_compiles_frees_the_state(llm):
    eng = llm.llm_engine
    mgr = eng.structured_outputs
    hold = _HeldCompile()
    mgr.cache.before_compile = hold
    try:
        rid = eng.add_request(None, None, greedy(SO(json=unique_schema())), prompt_token_ids=[1, 2, 3])
        assert hold.started.wait(60) and mgr.num_live == 1 and mgr.has_pending
        eng.abort_request(rid)
        assert mgr.num_live == 0 and not mgr.has_pending and not eng.has_unfinished_requests()
    finally:
        mgr.cache.before_compile = None
        hold.gate.set()
    [out] = eng.step()
    assert out.request_id == rid and out.outputs[0].finish_reason == "abort"


class _Recorder:
    """Wraps the executor and keeps each step's (scheduled ids that sample, structured rows)."""

    def __init__(self, inner) -> None:
        self.inner, self.steps = inner, []

    def execute(self, so):
        sampling = {s.request.request_id for s in so.scheduled if s.sample}
        self.steps.append((sampling, None if so.structured is None else dict(so.structured.rows),
                           None if so.structured is None else so.structured.bitmask.shape))
        return self.inner.execute(so)


def test_bitmask_rows_only_for_constrained_sampling_rows_and_none_without_them(smollm2_dir):
    llm = LLM(str(smollm2_dir), dtype="float32", kv_cache_memory="64MiB", max_model_len=512,
              max_num_batched_tokens=16)  # chunked prefill: steps that sample nothing
    eng = llm.llm_engine
    rec = eng.executor = _Recorder(eng.executor)
    prompt = chat(llm, "Describe a person as JSON.")
    llm.generate([prompt], SamplingParams(temperature=0, max_tokens=4), use_tqdm=False)
    assert rec.steps and all(rows is None for _, rows, _ in rec.steps)  # unconstrained: no mask work at all
    assert eng.structured_outputs.num_masked_rows == 0
    rec.steps.clear()
    prompt = chat(llm, "Describe another person as JSON, please.")  # not in the prefix cache: several chunks
    ids = [eng.add_request(f"r{i}", None, sp, prompt_token_ids=prompt) for i, sp in
           enumerate([greedy(SO(json=PERSON), 24), SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)])]
    while eng.has_unfinished_requests():
        eng.step()
    assert any(not sampling for sampling, _, _ in rec.steps)  # prefill chunks
    for sampling, rows, shape in rec.steps:
        want = sampling & {ids[0]}
        assert (rows is None) == (not want), (sampling, rows)
        if rows:
            assert set(rows) == want and shape == (1, (eng.vocab_size + 31) // 32)
