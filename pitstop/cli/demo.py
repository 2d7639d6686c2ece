"""``pitstop demo`` (what ``make demo`` runs): a few chat answers from the embedded default model,
streamed, then a short batch and throughput run."""

from __future__ import annotations

import argparse
import time

from pitstop.cli.log import show_engine_log

QUESTIONS = [
    "What is the capital of France?",
    "Give me three tips for writing clean Python code.",
    "Explain in two sentences what a KV cache is in a transformer.",
]


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("demo", help="a short visible demo on the default model")
    p.add_argument("--max-tokens", type=int, default=96)
    p.add_argument("--batch", type=int, default=32, help="requests in the throughput part")
    return p


def run(args: argparse.Namespace) -> int:
    show_engine_log()
    from pitstop import LLM, SamplingParams
    from pitstop.cli.chat import stream_reply
    from pitstop.cli.engine_args import engine_kwargs

    t0 = time.perf_counter()
    llm = LLM(**engine_kwargs(args))
    dtype = llm.llm_engine.executor.kernels.dtype
    print(f"loaded {args.model} ({dtype}) from {llm.model_dir} in {time.perf_counter() - t0:.1f} s; "
          f"KV cache: {llm.llm_engine.kv_manager.num_blocks} blocks of {args.block_size} tokens\n")
    greedy = SamplingParams(temperature=0, max_tokens=args.max_tokens)
    for q in QUESTIONS:
        print(f"user> {q}\nassistant> ", end="", flush=True)
        stream_reply(llm, [{"role": "user", "content": q}], greedy)
        print()
    _throughput(llm, args.batch)
    return 0


def _throughput(llm, batch: int) -> None:
    from pitstop import SamplingParams

    prompts = [[{"role": "user", "content": f"Write a short story about robot number {i}."}] for i in range(batch)]
    sp = SamplingParams(temperature=0.8, top_p=0.95, seed=0, max_tokens=64, ignore_eos=True)
    t0 = time.perf_counter()
    outs = llm.chat(prompts, sp, use_tqdm=True)
    dt = time.perf_counter() - t0
    n_out = sum(len(o.outputs[0].token_ids) for o in outs)
    n_in = sum(len(o.prompt_token_ids) for o in outs)
    cached = sum(o.num_cached_tokens for o in outs)
    print(f"\nbatch of {batch} chats: {n_in} prompt tokens ({cached} from the prefix cache), "
          f"{n_out} generated in {dt:.1f} s -> {n_out / dt:.0f} output tok/s, {batch / dt:.2f} req/s")
    print(f"sample: {outs[0].outputs[0].text[:160]!r}")
