"""A/B of the profiler's two ways to build a decode batch (Profiler._decode_batch): b sequences of c context tokens
sharing one cached prefix vs distinct prompts, alternated three times on one engine; median decode step each.

    taskset -c 0 .venv/bin/python benchmarks/profile_shared_vs_distinct.py      # ~2.5 min
"""
import random, statistics, time
from pitstop.config import EngineConfig
from pitstop.entrypoints.engine_builder import build_engine
from pitstop.sim.profiler import Profiler
eng = build_engine(EngineConfig(model="SmolLM2-135M-Instruct", kv_cache_memory="512MiB", max_model_len=1100,
                             max_num_batched_tokens=1024, skip_tokenizer_init=True, num_threads=1))
prof = Profiler(engine=eng)
res = {}
for rep in range(3):
    for b, c in ((2, 1000), (4, 1000), (8, 1000), (16, 512)):
        for distinct in (False, True):
            n = len(prof.points)
            prof._decode_batch(b, c, 10, distinct)
            ts = [p["time_s"] for p in prof.points[n:] if p["kind"] == "decode" and p["decode_seqs"] == b]
            res.setdefault((b, c, distinct), []).append(statistics.median(ts))
for (b, c, d), v in sorted(res.items()):
    print(b, c, "distinct" if d else "shared  ", " ".join(f"{1e3*x:6.1f}" for x in v), f"median {1e3*statistics.median(v):.1f} ms")
