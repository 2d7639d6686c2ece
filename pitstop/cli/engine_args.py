"""The engine flags shared by every subcommand that builds an engine, and the ``EngineConfig`` fields they give."""

from __future__ import annotations

import argparse

from pitstop.config import QUANTIZATIONS
from pitstop.config import speculative_config_arg as speculative_config


def add_engine_args(p: argparse.ArgumentParser) -> None:
    """Engine flags shared by every subcommand that builds an engine."""
    p.add_argument("--model", default="SmolLM2-135M-Instruct",
                   help="HF folder, .gguf file or a known name (default: %(default)s)")
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"],
                   help="auto: bfloat16 where this CPU computes it natively, float32 elsewhere")
    p.add_argument("--kv-cache-memory", default="1GiB", help="KV cache size, e.g. 512MiB, 2GiB")
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--max-num-seqs", type=int, default=128)
    p.add_argument("--max-num-batched-tokens", type=int, default=1024)
    p.add_argument("--no-prefix-caching", action="store_true")
    p.add_argument("--num-threads", type=int, default=None)
    p.add_argument("--scheduling-policy", default="fcfs", choices=["fcfs", "program-fcfs", "plas", "priority"])
    p.add_argument("--ttl-policy", default="none", choices=["none", "fixed", "continuum"],
                   help="KV pin policy between an agent program's turns")
    p.add_argument("--attention-backend", default="cpu", choices=["cpu", "torch"],
                   help="cpu: decodes read the paged KV in place (C++ kernel, built once; torch path where it "
                        "cannot be built); torch: plain PyTorch ops")
    p.add_argument("--quantization", default="none", choices=list(QUANTIZATIONS),
                   help="int8: weight-only int8 linears (a scale per 32 weights); gguf: keep a GGUF model's "
                        "Q4_0/Q4_1/Q8_0 blocks instead of dequantizing them at load")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the decoder's dense parts (falls back to eager if compilation fails)")
    p.add_argument("--ttl-seconds", type=float, default=None,
                   help="TTL of the fixed policy / upper bound of the continuum policy (seconds)")
    p.add_argument("--speculative-config", type=speculative_config, default=None,
                   help='speculative decoding as JSON, e.g. \'{"method": "suffix", "num_speculative_tokens": 16}\' '
                        '(methods: suffix, ngram; see pitstop.config.SpeculativeConfig)')


def engine_kwargs(args: argparse.Namespace) -> dict:
    return dict(model=args.model, dtype=args.dtype, kv_cache_memory=args.kv_cache_memory,
                max_model_len=args.max_model_len, block_size=args.block_size, max_num_seqs=args.max_num_seqs,
                max_num_batched_tokens=args.max_num_batched_tokens,
                enable_prefix_caching=not args.no_prefix_caching, num_threads=args.num_threads,
                scheduling_policy=args.scheduling_policy, ttl_policy=args.ttl_policy, ttl_seconds=args.ttl_seconds,
                speculative_config=getattr(args, "speculative_config", None),
                attention_backend=args.attention_backend, quantization=args.quantization, compile=args.compile)
