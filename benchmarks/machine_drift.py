"""How steady this machine is: a fixed loop (8 x 256-token random prompts, 20 output tokens each) on the real
engine, median prefill and decode step per 10 s window. Run it before and after a long benchmark to see drift.

    taskset -c 0 .venv/bin/python benchmarks/machine_drift.py 40     # seconds
"""
import random, statistics, sys, time
from pitstop.config import EngineConfig
from pitstop.entrypoints.engine_builder import build_engine
from pitstop.sampling_params import SamplingParams
eng = build_engine(EngineConfig(model="SmolLM2-135M-Instruct", kv_cache_memory="512MiB", max_model_len=1024,
                             max_num_batched_tokens=1024, skip_tokenizer_init=True, num_threads=1))
rng = random.Random(0)
P = lambda n: [rng.randrange(100, 30000) for _ in range(n)]
T = float(sys.argv[1]); t_end = time.time() + T; k = 0
while time.time() < t_end:
    w_end = time.time() + 10; pre = []; dec = []
    while time.time() < w_end:
        k += 1
        for i in range(8): eng.add_request(f"r{k}_{i}", P(256), SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True))
        while eng.has_unfinished_requests():
            t = time.perf_counter(); eng.step(); dt = time.perf_counter() - t
            h = eng.step_history[-1]
            (pre if h.num_prefill_tokens else dec).append(dt)
    print(time.strftime("%T"), f"prefill(2048 tok) median {1e3*statistics.median(pre):6.1f} ms  decode b=8 median {1e3*statistics.median(dec):5.1f} ms", flush=True)
