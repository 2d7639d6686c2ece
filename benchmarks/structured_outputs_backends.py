"""llguidance vs xgrammar on pitstop's workload: how the grammar backend was chosen (issue 15).

For each tool schema of ``benchmarks/tool_schemas.py`` on SmolLM2-135M-Instruct's tokenizer (49,152 tokens):
compile time (schema -> ready matcher, no cache) and the time to fill one step's token bitmask, per token of a
valid instance of the schema (tokenized by the model's tokenizer) fed through the matcher.

xgrammar is not a pitstop dependency (it imports torch and pulls in triton); install it aside to run this:
``pip install --no-deps --target /tmp/xgr_site xgrammar apache-tvm-ffi`` then
``PYTHONPATH=/tmp/xgr_site nice -n 19 .venv/bin/python benchmarks/structured_outputs_backends.py``.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tool_schemas import TOOL_SCHEMAS  # noqa: E402

_FORMATS = {"date-time": "2025-01-02T03:04:05Z", "date": "2025-01-02", "email": "ann@example.com",
            "uri": "https://example.com/a"}


def instance(schema: dict[str, Any]) -> Any:
    """A small valid instance of ``schema`` (the subset ``tool_schemas`` uses)."""
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][0]
    if "anyOf" in schema:
        return instance(schema["anyOf"][0])
    t = schema.get("type")
    t = t[0] if isinstance(t, list) else t
    if t == "object":
        props = schema.get("properties", {})
        return {k: instance(props[k]) for k in schema.get("required", [])}
    if t == "array":
        return [instance(schema["items"])] * max(1, schema.get("minItems", 1))
    if t == "integer":
        return max(1, schema.get("minimum", 1))
    if t == "number":
        return 2.5
    if t == "boolean":
        return True
    if "format" in schema:
        return _FORMATS[schema["format"]]
    if "pattern" in schema:
        return "ABC"
    return "abc" if schema.get("minLength", 0) <= 3 else "a" * schema["minLength"]


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def bench_llguidance(tok, texts: list[list[int]]) -> tuple[list[float], list[float]]:
    import llguidance
    import llguidance.hf
    import llguidance.numpy as lnp
    t0 = time.perf_counter()
    lltok = llguidance.hf.from_tokenizer(tok)
    print("llguidance: "
          f"tokenizer {1e3 * (time.perf_counter() - t0):.0f} ms")
    compile_ms, mask_us = [], []
    bm = lnp.allocate_token_bitmask(1, lltok.vocab_size)
    for schema, ids in zip(TOOL_SCHEMAS, texts):
        t0 = time.perf_counter()
        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema)
        m = llguidance.LLMatcher(lltok, grammar)
        assert not m.is_error(), m.get_error()
        compile_ms.append(1e3 * (time.perf_counter() - t0))
        for t in ids:
            t0 = time.perf_counter()
            lnp.fill_next_token_bitmask(m, bm, 0)
            mask_us.append(1e6 * (time.perf_counter() - t0))
            assert m.consume_token(t), (schema, tok.decode(ids), m.get_error())
        assert m.is_accepting()
    return compile_ms, mask_us


def bench_xgrammar(tok, texts: list[list[int]]) -> tuple[list[float], list[float]]:
    import xgrammar as xgr
    t0 = time.perf_counter()
    info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=len(tok))
    print(f"xgrammar: tokenizer {1e3 * (time.perf_counter() - t0):.0f} ms")
    compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
    compile_ms, mask_us = [], []
    bm = xgr.allocate_token_bitmask(1, info.vocab_size)
    for schema, ids in zip(TOOL_SCHEMAS, texts):
        t0 = time.perf_counter()
        m = xgr.GrammarMatcher(compiler.compile_json_schema(json.dumps(schema)))
        compile_ms.append(1e3 * (time.perf_counter() - t0))
        for t in ids:
            t0 = time.perf_counter()
            m.fill_next_token_bitmask(bm)
            mask_us.append(1e6 * (time.perf_counter() - t0))
            assert m.accept_token(t), (schema, tok.decode(ids))
    return compile_ms, mask_us


def main() -> None:
    from pitstop.entrypoints.engine_builder import load_tokenizer
    from pitstop.model.resolve import resolve_model
    tok = load_tokenizer(resolve_model("SmolLM2-135M-Instruct"))
    texts = [tok(json.dumps(instance(s)), add_special_tokens=False).input_ids for s in TOOL_SCHEMAS]
    print(f"{len(TOOL_SCHEMAS)} schemas, {sum(map(len, texts))} tokens, vocab {len(tok)}")
    for name, fn in (("llguidance", bench_llguidance), ("xgrammar", bench_xgrammar)):
        try:
            c, m = fn(tok, texts)
        except ImportError as e:
            print(f"{name}: not installed ({e})")
            continue
        print(f"{name}: compile ms p50 {statistics.median(c):.2f} p99 {_pct(c, 99):.2f} max {max(c):.2f}; "
              f"mask us/token p50 {statistics.median(m):.0f} p99 {_pct(m, 99):.0f} mean {statistics.mean(m):.0f}")


if __name__ == "__main__":
    main()
