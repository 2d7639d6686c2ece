"""``pitstop generate``: complete one or more prompts and print the results."""

from __future__ import annotations

import argparse

from pitstop.cli.log import show_engine_log


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("generate", help="complete prompts")
    p.add_argument("--prompt", action="append", required=True, help="prompt text (repeatable)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--chat", action="store_true", help="wrap each prompt as a user chat message")
    return p


def run(args: argparse.Namespace) -> int:
    show_engine_log()
    from pitstop import LLM, SamplingParams
    from pitstop.cli.engine_args import engine_kwargs

    llm = LLM(**engine_kwargs(args))
    sp = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                        top_k=args.top_k, seed=args.seed)
    if args.chat:
        outs = llm.chat([[{"role": "user", "content": p}] for p in args.prompt], sp, use_tqdm=False)
    else:
        outs = llm.generate(args.prompt, sp, use_tqdm=False)
    for prompt, out in zip(args.prompt, outs):
        print(f"### {prompt}\n{out.outputs[0].text}\n[{len(out.outputs[0].token_ids)} tokens, "
              f"finish_reason={out.outputs[0].finish_reason}]")
    return 0
