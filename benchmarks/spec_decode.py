"""Speculative decoding (issue 19): output tokens/s and TPOT with and without speculation at batch 1, 8 and 32, on
three workloads, with acceptance statistics per workload.

Workloads (all greedy, ``ignore_eos`` off: the model's own outputs, so every method emits the same tokens; the run
checks it, ``same_tokens_as_baseline``):

- ``agent``: agent replay. The two raw Claude Code sessions of the AgentCgroup trace
  (``../shared/data/traces/agentcgroup_claude_code/raw_examples``, GPL-2.0: read at run time, nothing copied) are
  cut at every point where the agent answers (after the task, after each tool result); the prompt is the session so
  far (user text, the agent's earlier text and tool calls as JSON, tool results) in the default model's chat
  template, left-truncated to a context budget (1,536 / 1,024 / 768 tokens: three variants of each cut, so batch
  32 has distinct prompts), and the default model writes the next turn (at most ``--max-tokens``).
- ``code``: code editing where the output copies spans of the prompt. Each prompt is one top-level function of
  pitstop's own source (``pitstop/**/*.py``, 12-60 lines, seeded choice) with the instruction "Rewrite this function
  with the variable `X` renamed to `Y`. Output only the complete new code." (X: the function's first parameter
  other than self).
- ``chat``: plain chat as a control. Output lengths (``max_tokens``) are Azure LLM inference 2023 ``conv`` rows
  (``../shared/data/traces/azure2023``, seeded sample, scaled by 0.433 as ``pitstop bench throughput`` does for a
  2,048-token context, capped at ``--max-tokens``); prompts are open questions (a fixed list) without any text to
  copy.

Batch ``b``: ``b`` requests submitted together to one engine (``max_num_seqs`` 32) and stepped to completion,
``--groups-per-batch`` distinct batches (as many as the workload has prompts for); batch 1 runs
``--batch1-requests`` requests one after the other. The methods' engines are built once and run interleaved
(request by request at batch 1, batch by batch above, rotating the methods' order), so load changes on a shared
machine hit all alike. TPOT per request = (finish - first token) /
(output tokens - 1), averaged over requests with >= 2 tokens; output tokens/s = output tokens / wall time of the
batch (prefill included). The prefix cache is reset before every batch.

    PYTHONPATH=. flock /work/bench.lock .venv/bin/python benchmarks/spec_decode.py --workload code \\
        --output-json benchmarks/spec_decode/code.json

``suffix`` needs the ``arctic-inference`` package importable.
"""

from __future__ import annotations

import argparse
import ast
import csv
import json
import os
import platform
import random
import statistics
import time
from pathlib import Path

from pitstop import LLM, SamplingParams
from pitstop.model.cpu_features import cpu_features

ROOT = Path(__file__).resolve().parents[1]
TRACES = ROOT.parent / "shared" / "data" / "traces"
RAW = TRACES / "agentcgroup_claude_code" / "raw_examples"
AZURE_CONV = TRACES / "azure2023" / "AzureLLMInferenceTrace_conv.csv"
QUESTIONS = [
    "What are the main causes of inflation?", "How do vaccines train the immune system?",
    "Give me three tips for a job interview.", "Why is the sky blue?", "What is the difference between weather and "
    "climate?", "Suggest a name for a bakery and explain it.", "How does a bicycle stay upright?",
    "What should I pack for a weekend hike?", "Explain photosynthesis to a ten-year-old.",
    "What are the pros and cons of remote work?", "How do I start learning the guitar?",
    "Why do cats purr?", "Write a short birthday message for a colleague.", "What is a black hole?",
    "How can I sleep better?", "What was the Renaissance?", "Recommend a healthy breakfast.",
    "How do airplanes fly?", "What is the capital of Australia and why is it not Sydney?",
    "Describe the water cycle.", "How do I make a good cup of coffee?", "What is machine learning?",
    "Why do leaves change colour in autumn?", "What are some ways to save money each month?",
    "How does the stock market work?", "What is the theory of evolution?", "Write a haiku about rain.",
    "Why is exercise good for the brain?", "What are the planets of the solar system?",
    "How do bees make honey?", "What is the difference between a virus and a bacterium?",
    "Give me an idea for a science fair project.",
]


def _chat_ids(tok, msgs: list[dict]) -> list[int]:
    text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    return list(tok(text, add_special_tokens=False).input_ids)


# ---- workloads ------------------------------------------------------------------------------------------------------
def _render_block(block: dict) -> str:
    kind = block.get("type")
    if kind == "text":
        return block.get("text", "")
    if kind == "tool_use":
        return f"[tool call {block.get('name')}] " + json.dumps(block.get("input", {}))
    if kind == "tool_result":
        c = block.get("content")
        if isinstance(c, list):
            c = "\n".join(x.get("text", "") for x in c if isinstance(x, dict))
        return f"[tool result]\n{c}"
    return ""  # thinking blocks are not part of the context the model sees


def agent_prompts(tok, max_tokens: int) -> list[tuple[list[int], int]]:
    """(prompt ids, max_tokens) per agent turn of the raw AgentCgroup sessions, three context budgets each."""
    cuts: list[list[dict]] = []
    for path in sorted(RAW.glob("*__trace.jsonl")):
        rows = [json.loads(line) for line in path.open()]
        msgs: list[dict] = []
        for r in rows:
            if r.get("type") not in ("user", "assistant"):
                continue
            content = r["message"]["content"]
            text = content if isinstance(content, str) else "\n".join(_render_block(b) for b in content)
            if not text.strip():
                continue
            if r["type"] == "assistant" and msgs and msgs[-1]["role"] == "user":
                cuts.append(list(msgs))  # the agent answers here
            if msgs and msgs[-1]["role"] == r["type"]:
                msgs[-1]["content"] += "\n" + text
            else:
                msgs.append({"role": r["type"], "content": text})
    out = []
    for budget in (1536, 1024, 768):
        for msgs in cuts:
            out.append((_chat_ids(tok, msgs)[-budget:], max_tokens))
    return out


def code_prompts(tok, max_tokens: int, n: int, seed: int) -> list[tuple[list[int], int]]:
    """(prompt ids, max_tokens) of ``n`` rename-a-variable edits of pitstop's own functions."""
    funcs = []
    for path in sorted((ROOT / "pitstop").rglob("*.py")):
        src = path.read_text()
        for node in ast.parse(src).body:
            if isinstance(node, ast.FunctionDef) and 12 <= node.end_lineno - node.lineno + 1 <= 60:
                params = [a.arg for a in node.args.args if a.arg not in ("self", "cls")]
                if params and len(params[0]) > 1:
                    funcs.append((ast.get_source_segment(src, node), params[0]))
    rng = random.Random(seed)
    rng.shuffle(funcs)
    out = []
    for code, name in funcs[:n]:
        msg = (f"Rewrite this function with the variable `{name}` renamed to `{name}_new`. Output only the "
               f"complete new code.\n\n```python\n{code}\n```")
        out.append((_chat_ids(tok, [{"role": "user", "content": msg}]), max_tokens))
    return out


def chat_prompts(tok, max_tokens: int, n: int, seed: int) -> list[tuple[list[int], int]]:
    """(prompt ids, max_tokens) of ``n`` open questions with Azure conv output lengths."""
    with AZURE_CONV.open(newline="") as f:
        rows = [int(r["GeneratedTokens"]) for r in csv.DictReader(f) if int(r["GeneratedTokens"]) > 0]
    rng = random.Random(seed)
    lengths = [max(2, min(max_tokens, round(x * 0.433))) for x in rng.sample(rows, n)]
    qs = QUESTIONS * (n // len(QUESTIONS) + 1)
    rng.shuffle(qs)
    out = []
    for q, m in zip(qs, lengths):
        out.append((_chat_ids(tok, [{"role": "user", "content": q}]), m))
    return out


# ---- runs -----------------------------------------------------------------------------------------------------------
def run_batch(llm: LLM, prompts: list[tuple[list[int], int]]) -> dict:
    """Submit ``prompts`` together and step to completion. Returns timings and the outputs' token ids."""
    eng = llm.llm_engine
    eng.reset_prefix_cache()
    before = eng.stats()
    pos_before = _positions(eng)
    t0 = time.perf_counter()
    ids = [eng.add_request(None, p, SamplingParams(temperature=0, max_tokens=m)) for p, m in prompts]
    done = {}
    while eng.has_unfinished_requests():
        for out in eng.step():
            if out.finished:
                done[out.request_id] = out
    wall = time.perf_counter() - t0
    outs = [done[i] for i in ids]
    tpots = []
    for o in outs:
        n = len(o.outputs[0].token_ids)
        m = o.metrics
        if n >= 2:
            tpots.append((m.finished_time - m.first_token_time) / (n - 1))
    after = eng.stats()
    spec = {k: after[k] - before.get(k, 0) for k in ("spec_num_verifies", "spec_num_draft_tokens",
                                                      "spec_num_accepted_tokens") if k in after}
    if eng.drafter is not None:
        spec["positions"] = [[a - b for a, b in zip(now, then + [0] * (len(now) - len(then)))]
                             for now, then in zip(_positions(eng), pos_before)]
    return {"wall_s": wall, "output_tokens": sum(len(o.outputs[0].token_ids) for o in outs), "tpots": tpots,
            "tokens": [o.outputs[0].token_ids for o in outs], **spec}


def _positions(eng) -> list[list[int]]:
    """[drafted per position, accepted per position] so far (empty lists without speculation)."""
    if eng.drafter is None:
        return [[], []]
    st = eng.drafter.stats
    return [list(st.drafted_per_position), list(st.accepted_per_position)]


def summarize(parts: list[dict]) -> dict:
    tpots = [t for p in parts for t in p["tpots"]]
    wall = sum(p["wall_s"] for p in parts)
    out_tokens = sum(p["output_tokens"] for p in parts)
    res = {"requests": sum(len(p["tokens"]) for p in parts), "wall_s": wall, "output_tokens": out_tokens,
           "output_tokens_per_s": out_tokens / wall, "tpot_ms_mean": 1e3 * statistics.mean(tpots) if tpots else None,
           "tpot_ms_median": 1e3 * statistics.median(tpots) if tpots else None,
           "tokens": [t for p in parts for t in p["tokens"]]}
    if any("spec_num_draft_tokens" in p for p in parts):
        drafted = sum(p["spec_num_draft_tokens"] for p in parts)
        verifies = sum(p["spec_num_verifies"] for p in parts)
        accepted = sum(p["spec_num_accepted_tokens"] for p in parts)
        width = max(len(p["positions"][0]) for p in parts)
        dpos = [sum(p["positions"][0][j] for p in parts if j < len(p["positions"][0])) for j in range(width)]
        apos = [sum(p["positions"][1][j] for p in parts if j < len(p["positions"][1])) for j in range(width)]
        res.update(drafted_tokens=drafted, accepted_tokens=accepted, verifies=verifies,
                   acceptance_rate=accepted / drafted if drafted else 0.0,
                   mean_accepted_length=(accepted + verifies) / verifies if verifies else 0.0,
                   acceptance_rate_per_position=[round(a / d, 3) if d else None for a, d in zip(apos, dpos)],
                   drafted_per_position=dpos)
    return res


def run_interleaved(llms: dict[str, LLM], prompts: list, batch: int, batch1_requests: int,
                    groups_per_batch: int) -> dict[str, dict]:
    """Every method on the same batches, interleaved (request by request at batch 1, batch by batch otherwise, the
    methods' order rotating from one batch to the next) so that a change of machine load during the run hits all
    methods alike. Above batch 1, up to ``groups_per_batch`` distinct batches of ``batch`` prompts."""
    parts: dict[str, list] = {m: [] for m in llms}
    if batch == 1:
        groups = [[p] for p in prompts[:batch1_requests]]
    else:
        groups = [prompts[i:i + batch] for i in range(0, len(prompts) - batch + 1, batch)][:groups_per_batch]
    names = list(llms)
    for i, group in enumerate(groups):
        for m in names[i % len(names):] + names[:i % len(names)]:
            parts[m].append(run_batch(llms[m], group))
    return {m: summarize(ps) for m, ps in parts.items()}


def build(method: str, k: int, args) -> LLM:
    spec = None if method == "none" else {"method": method, "num_speculative_tokens": k,
                                          "draft_budget": args.draft_budget}
    llm = LLM(args.model, kv_cache_memory=args.kv_cache_memory, max_model_len=args.max_model_len,
              max_num_seqs=32, max_num_batched_tokens=args.max_num_batched_tokens, speculative_config=spec,
              num_threads=args.num_threads)
    llm.generate(["Hello, hello, hello"], SamplingParams(temperature=0, max_tokens=8), use_tqdm=False)  # warm-up
    return llm


def write_json(args, results: dict, load_before, partial: bool) -> None:
    if not args.output_json:
        return
    try:
        import arctic_inference  # noqa: F401
        suffix_backend = "arctic"
    except ImportError:
        suffix_backend = "python"
    summary = {"workload": args.workload, "args": vars(args), "machine": platform.processor() or platform.machine(),
               "cpu": cpu_features().cpu_model, "suffix_backend": suffix_backend,
               "load_average_before": load_before, "load_average_after": os.getloadavg(), "partial": partial,
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "results": results}
    Path(args.output_json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output_json).write_text(json.dumps(summary, indent=1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", choices=["agent", "code", "chat"], required=True)
    p.add_argument("--methods", nargs="+", default=["none", "ngram", "suffix"])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32])
    p.add_argument("--batch1-requests", type=int, default=4)
    p.add_argument("--groups-per-batch", type=int, default=2,
                   help="distinct batches measured per batch size above 1 (more: less noise, longer)")
    p.add_argument("--num-speculative-tokens", type=int, default=8)
    p.add_argument("--draft-budget", choices=["goodput", "none"], default="goodput",
                   help="goodput: verify only the drafts that pay (default); none: every proposed draft")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--model", default="SmolLM2-135M-Instruct")
    p.add_argument("--kv-cache-memory", default="1GiB")
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--max-num-batched-tokens", type=int, default=1024)
    p.add_argument("--num-threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-json", default=None)
    args = p.parse_args()

    load_before = os.getloadavg()
    llms = {m: build(m, args.num_speculative_tokens, args) for m in args.methods}
    tok = llms[args.methods[0]].get_tokenizer()
    n = max([b * args.groups_per_batch for b in args.batches] + [args.batch1_requests])
    prompts = {"agent": lambda: agent_prompts(tok, args.max_tokens),
               "code": lambda: code_prompts(tok, args.max_tokens, n, args.seed),
               "chat": lambda: chat_prompts(tok, args.max_tokens, n, args.seed)}[args.workload]()
    random.Random(args.seed).shuffle(prompts)
    print(f"{args.workload}: {len(prompts)} prompts, mean prompt {statistics.mean(len(x) for x, _ in prompts):.0f} "
          f"tokens; load average {load_before[0]:.2f}", flush=True)
    results: dict = {m: {} for m in args.methods}
    for b in args.batches:
        by_method = run_interleaved(llms, prompts, b, args.batch1_requests, args.groups_per_batch)
        base_tokens = by_method[args.methods[0]]["tokens"]
        for method, r in by_method.items():
            tokens = r.pop("tokens")
            r["same_tokens_as_baseline"] = sum(a == c for a, c in zip(tokens, base_tokens)) / len(tokens)
            results[method][b] = r
            acc = (f", accepted {r['acceptance_rate']:.2f} of drafts, mean accepted length "
                   f"{r['mean_accepted_length']:.2f}" if "acceptance_rate" in r else "")
            print(f"  {method:6s} batch {b:2d}: {r['output_tokens_per_s']:7.1f} out tok/s, TPOT "
                  f"{r['tpot_ms_mean']:6.1f} ms (mean over {r['requests']} requests, {r['output_tokens']} tokens)"
                  f"{acc}, same tokens {r['same_tokens_as_baseline']:.2f}", flush=True)
        write_json(args, results, load_before, partial=True)  # a run cut short keeps the batches done
    base = results[args.methods[0]]
    for method in args.methods[1:]:
        for b in args.batches:
            r, r0 = results[method][b], base[b]
            r["tpot_speedup_vs_" + args.methods[0]] = r0["tpot_ms_mean"] / r["tpot_ms_mean"]
            r["throughput_ratio_vs_" + args.methods[0]] = r["output_tokens_per_s"] / r0["output_tokens_per_s"]
    write_json(args, results, load_before, partial=False)
    for method in args.methods[1:]:
        for b in args.batches:
            r = results[method][b]
            print(f"{method} batch {b}: TPOT speedup {r['tpot_speedup_vs_' + args.methods[0]]:.2f}x, "
                  f"throughput ratio {r['throughput_ratio_vs_' + args.methods[0]]:.2f}")


if __name__ == "__main__":
    main()
