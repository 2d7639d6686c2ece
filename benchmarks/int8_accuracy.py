#!/usr/bin/env python
"""Accuracy of ``--quantization int8`` (or ``gguf``) against float32 (issue 18): greedy agreement and perplexity.

1. Greedy token agreement: 64 prompts (the first 24 tokens of 64 distinct prose lines of benchmarks/README.md),
   64 greedy tokens each (``ignore_eos``), with the float32 engine and the int8 (``gguf``) engine; reported: the
   share of the 64 x 64 positions where the two produced the same token, counted up to each pair's first divergence (after
   it the contexts differ, so later positions are not comparable) and, separately, the share of sequences
   identical in full.
2. Perplexity on a held text sample (the repository's README.md, first ``--ppl-tokens`` tokens; not used for
   the prompts), one teacher-forced forward of the whole sample through each model's paged forward:
   ``exp(mean NLL)``; reported with the relative difference int8 vs float32 (target: within 2%).

Usage: ``.venv/bin/python benchmarks/int8_accuracy.py [--model M] [--quantization int8|gguf] [--output-json PATH]``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from pitstop import LLM, SamplingParams  # noqa: E402
from pitstop.model.loader import allocate_kv_cache  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def prompts_from(text: str, tok, n: int, length: int) -> list[list[int]]:
    """``n`` prompts of ``length`` tokens from distinct prose lines of ``text`` (skipping code and tables)."""
    out, seen = [], set()
    for line in text.splitlines():
        line = line.strip()
        if len(line) < 80 or line.startswith(("|", "```", "#", "-", "*", ".", "`")) or line in seen:
            continue
        ids = tok(line).input_ids
        if len(ids) >= length:
            seen.add(line)
            out.append(ids[:length])
        if len(out) == n:
            return out
    raise SystemExit(f"only {len(out)} usable lines for prompts")


@torch.inference_mode()
def perplexity(llm: LLM, ids: list[int]) -> float:
    """exp(mean NLL) of ``ids[1:]`` given their prefixes, one paged forward over the whole sample."""
    runner = llm.llm_engine.executor
    model, bs = runner.model, 16
    blocks = -(-len(ids) // bs)
    caches = allocate_kv_cache(model, blocks, bs, runner.dtype)
    meta = model.attn_backend.build_metadata([len(ids)], [len(ids)], [list(range(blocks))], bs, torch.device("cpu"))
    hidden = model(torch.tensor(ids), torch.arange(len(ids)), caches, meta)
    logits = model.compute_logits(hidden).float()
    nll = torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(ids[1:]))
    return math.exp(nll.item())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="SmolLM2-135M-Instruct")
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--prompt-tokens", type=int, default=24)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--ppl-tokens", type=int, default=2048)
    p.add_argument("--attention-backend", default="cpu")
    p.add_argument("--quantization", default="int8", choices=["int8", "gguf"])
    p.add_argument("--output-json", default=None)
    args = p.parse_args()
    res: dict = {"args": vars(args)}
    runs = {}
    q = args.quantization
    for quant in ("none", q):
        t0 = time.perf_counter()
        llm = LLM(args.model, dtype="float32", quantization=quant, attention_backend=args.attention_backend,
                  kv_cache_memory="512MiB", max_model_len=4096, max_num_batched_tokens=1024)
        tok = llm.get_tokenizer()
        prompts = prompts_from((ROOT / "benchmarks" / "README.md").read_text(), tok, args.num_prompts,
                               args.prompt_tokens)
        sp = SamplingParams(temperature=0, max_tokens=args.new_tokens, ignore_eos=True)
        outs = [list(o.outputs[0].token_ids) for o in llm.generate(prompts, sp, use_tqdm=False)]
        text_ids = tok((ROOT / "README.md").read_text()).input_ids[: args.ppl_tokens]
        runs[quant] = {"tokens": outs, "perplexity": perplexity(llm, text_ids), "ppl_tokens": len(text_ids),
                       "seconds": time.perf_counter() - t0,
                       "optimizations": llm.llm_engine.executor.optimizations}
        del llm
    ref, got = runs["none"]["tokens"], runs[q]["tokens"]
    agree_prefix = sum(next((i for i, (a, b) in enumerate(zip(r, g)) if a != b), len(r)) for r, g in zip(ref, got))
    total = sum(len(r) for r in ref)
    same_seq = sum(r == g for r, g in zip(ref, got))
    ppl32, ppl8 = runs["none"]["perplexity"], runs[q]["perplexity"]
    res.update(
        greedy_agreement_until_divergence=agree_prefix / total, identical_sequences=same_seq,
        num_sequences=len(ref), perplexity_float32=ppl32, **{f"perplexity_{q}": ppl8},
        perplexity_rel_diff=ppl8 / ppl32 - 1, ppl_tokens=runs["none"]["ppl_tokens"],
        optimizations={k: v["optimizations"] for k, v in runs.items()})
    print(f"greedy agreement with float32 ({len(ref)} prompts x {args.new_tokens} tokens): "
          f"{agree_prefix}/{total} = {agree_prefix / total:.1%} of positions before the first divergence; "
          f"{same_seq}/{len(ref)} sequences identical")
    print(f"perplexity on README.md ({res['ppl_tokens']} tokens): float32 {ppl32:.3f}, {q} {ppl8:.3f} "
          f"({res['perplexity_rel_diff']:+.2%})")
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(res, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
