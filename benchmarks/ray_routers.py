"""Replica routers on Ray Serve, measured and simulated (issue 17's "Measured" section).

Three parts, each a subcommand; every real run starts its own ``pitstop serve`` (a fresh Ray instance), warms it
up, resets its prefix cache, replays the workload from this process, reads the replicas' ``/metrics`` and
``/debug/kv``, and stops the server with SIGINT (which shuts Ray down):

    agents    AgentCgroup agent programs (``pitstop bench agents``' replay over HTTP) on 2 replicas, one run per
              router (+ router config); program-fcfs scheduling and Continuum TTL pins on every replica
    mooncake  shared-prefix chat: whole Mooncake conversations (see ``mooncake_workload``), 2 replicas, one run
              per router
    sim       the simulator's prediction of every saved real run (same workload, routers, engine settings, KV
              tokens per replica; profiled cost model --profile), written beside the real results, with the
              relative error of each figure and the ranking of the routers

    flock /work/bench.lock python benchmarks/ray_routers.py agents --output benchmarks/ray/agents.json
    flock /work/bench.lock python benchmarks/ray_routers.py mooncake --output benchmarks/ray/mooncake.json
    python benchmarks/ray_routers.py sim --profile benchmarks/ray/profile_1thread.json \\
        --agents benchmarks/ray/agents.json --mooncake benchmarks/ray/mooncake.json

Ray's own overhead (single replica, Ray-served vs single process) is ``benchmarks/ray_overhead.py``.
See benchmarks/README.md, "Replica routers on Ray Serve (issue 17)".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
MODEL = "SmolLM2-135M-Instruct"
SIM_MODEL = "smollm2-135m"
KV_BYTES_PER_TOKEN_F32 = 46080  # SmolLM2-135M: 30 layers x 2 x 3 kv heads x 64 x 4 bytes

# (label, router, router config)
AGENT_ROUTERS = [
    ("round-robin", "round-robin", {}),
    ("program-affinity", "program-affinity", {}),
    ("prefix-affinity", "prefix-affinity", {}),
    ("prefix-affinity/exact", "prefix-affinity", {"index": "exact"}),
    ("least-loaded", "least-loaded", {}),
    ("program-affinity/exact", "program-affinity", {"index": "exact"}),
]
CHAT_ROUTERS = [
    ("round-robin", "round-robin", {}),
    ("prefix-affinity", "prefix-affinity", {}),
    ("prefix-affinity/exact", "prefix-affinity", {"index": "exact"}),
]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---- server lifecycle ---------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: list[str], logfile: Path, cpus: str | None = None, timeout: float = 240.0
                 ) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [PY, "-m", "pitstop.cli.main", "serve", "--port", str(port), *args]
    if cpus:
        cmd = ["taskset", "-c", cpus, *cmd]
    log("start: " + " ".join(cmd))
    proc = subprocess.Popen(cmd, stdout=open(logfile, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}); see {logfile}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                log(f"server up after {time.time() - t0:.0f} s")
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(1)
    stop_server(proc)
    raise RuntimeError(f"server not healthy after {timeout} s; see {logfile}")


def stop_server(proc: subprocess.Popen) -> None:
    """SIGINT (the server shuts Ray down), wait; then make sure no Ray process of ours is left."""
    tree = descendants(proc.pid)
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            log("server did not exit after SIGINT: SIGTERM to its process group")
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
    left = alive(tree | set(session_processes(proc.pid)))
    if left:  # only the server's own descendants (Ray's raylet, workers...), never another user's Ray
        log(f"processes of the server left after it exited: {sorted(left)}; SIGTERM to each")
        for pid in left:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        time.sleep(5)
        for pid in alive(left):
            os.kill(pid, signal.SIGKILL)
    time.sleep(2)


def descendants(pid: int) -> set[int]:
    """PIDs of every descendant of ``pid`` now."""
    ps = subprocess.run(["ps", "-eo", "pid,ppid"], capture_output=True, text=True).stdout.split("\n")[1:]
    children: dict[int, list[int]] = defaultdict(list)
    for line in ps:
        if line.strip():
            c, par = map(int, line.split())
            children[par].append(c)
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def alive(pids: set[int]) -> set[int]:
    out = set()
    for p in pids:
        try:
            os.kill(p, 0)
            out.add(p)
        except ProcessLookupError:
            pass
        except PermissionError:
            out.add(p)
    return out


def session_processes(sid: int) -> list[int]:
    """PIDs in session ``sid`` (the server was started in a session of its own)."""
    ps = subprocess.run(["ps", "-eo", "pid,sid"], capture_output=True, text=True).stdout.split("\n")[1:]
    return [int(p) for p, s in (line.split() for line in ps if line.strip()) if int(s) == sid]


def metrics(url: str) -> dict[str, float]:
    """``/metrics`` samples as {'name{labels}': value}."""
    out = {}
    for line in httpx.get(url + "/metrics", timeout=30).text.splitlines():
        if line and not line.startswith("#"):
            key, _, val = line.rpartition(" ")
            try:
                out[key] = float(val)
            except ValueError:
                pass
    return out


def per_replica(m: dict[str, float], name: str) -> dict[str, float]:
    """{replica: value} of metric ``name`` (summed over its other labels)."""
    out: dict[str, float] = defaultdict(float)
    for k, v in m.items():
        base, _, labels = k.partition("{")
        if base != name:
            continue
        rep = "0"
        for part in labels.rstrip("}").split(","):
            if part.startswith("replica="):
                rep = part.split("=", 1)[1].strip('"')
        out[rep] += v
    return dict(out)


def delta(after: dict, before: dict) -> dict:
    return {k: v - before.get(k, 0.0) for k, v in after.items()}


REPLICA_METRICS = ("pitstop_prefix_cache_hits_tokens", "pitstop_prefix_cache_queries_tokens",
                   "pitstop_request_success", "pitstop_prompt_tokens", "pitstop_prompt_cached_tokens",
                   "pitstop_generation_tokens", "pitstop_num_preemptions", "pitstop_pins", "pitstop_pin_hits",
                   "pitstop_pin_expiries", "pitstop_pin_releases", "pitstop_program_reused_tokens",
                   "pitstop_program_reprefilled_tokens", "pitstop_router_program_moves_in")


def replica_report(d: dict[str, float]) -> dict:
    """Per-replica counters of a run (metric names that exist on this server; prefix-matched)."""
    names = sorted({k.partition("{")[0] for k in d})
    out = {}
    for want in REPLICA_METRICS:
        for n in names:
            if n == want or n == want + "_total":
                out[n] = per_replica(d, n)
    return out


def others() -> list[str]:
    """Other busy processes on the machine right now (not ours): noise to report."""
    ps = subprocess.run(["ps", "-eo", "pid,ppid,pcpu,args", "--sort=-pcpu"], capture_output=True, text=True).stdout
    mine = {os.getpid()}
    out = []
    for line in ps.splitlines()[1:8]:
        f = line.split(None, 3)
        if len(f) == 4 and float(f[2]) > 20 and int(f[0]) not in mine and "ray" not in f[3] and "pitstop.cli.main serve" not in f[3]:
            out.append(f"{f[2]}% {f[3][:100]}")
    return out


def warm_up(url: str, n: int = 8) -> None:
    """A few requests of random token ids (other kernels' first-use costs), then an empty prefix cache."""
    rng = random.Random(12345)

    async def go():
        async with httpx.AsyncClient(timeout=300) as c:
            await asyncio.gather(*[c.post(url + "/v1/completions", json={
                "model": MODEL, "prompt": [rng.randrange(1000, 40000) for _ in range(64 * (1 + i % 8))],
                "max_tokens": 8, "ignore_eos": True}) for i in range(n)])
    asyncio.run(go())
    r = httpx.post(url + "/reset_prefix_cache", timeout=60)
    log(f"warm-up done; reset_prefix_cache -> {r.status_code}")


def engine_flags(a) -> list[str]:
    return ["--model", MODEL, "--dtype", "float32", "--num-threads", "1", "--kv-cache-memory", a.kv_cache_memory,
            "--max-model-len", str(a.max_model_len), "--max-num-seqs", str(a.max_num_seqs),
            "--max-num-batched-tokens", str(a.max_num_batched_tokens)]


def kv_tokens_of(mem: str) -> int:
    """KV tokens per replica of ``--kv-cache-memory`` (float32), as the engine sizes it (whole 16-token blocks)."""
    units = {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
    for u, f in units.items():
        if mem.endswith(u):
            b = float(mem[:-len(u)]) * f
            return int(b // (KV_BYTES_PER_TOKEN_F32 * 16)) * 16
    return int(int(mem) // (KV_BYTES_PER_TOKEN_F32 * 16)) * 16


# ---- part 1: agent programs ----------------------------------------------------------------------------------------
def agent_args(a) -> argparse.Namespace:
    from pitstop.bench.agents import build_parser
    return build_parser().parse_args([
        "--num-programs", str(a.num_programs), "--program-rate", str(a.program_rate), "--seed", str(a.seed),
        "--max-turns", str(a.max_turns), "--max-model-len", str(a.max_model_len)])


def run_agents(a) -> int:
    from pitstop.bench.agent_http_replay import run_http_backend
    from pitstop.bench.agents import _client_tokenizer, load_programs
    from pitstop.replay.agent_summary import summarize_run
    from pitstop.workloads.agent_program import poisson_program_arrivals

    ba = agent_args(a)
    programs, workload = load_programs(ba)
    arrivals = poisson_program_arrivals(len(programs), ba.program_rate, ba.seed)
    tokenizer, vocab = _client_tokenizer(MODEL)
    kv = kv_tokens_of(a.kv_cache_memory)
    out = Path(a.output)
    res = json.loads(out.read_text()) if out.exists() and a.only else {}
    res.update({"part": "agents", "workload": workload, "kv_tokens_per_replica": kv, "replicas": 2,
                "engine_flags": engine_flags(a) + ["--scheduling-policy", "program-fcfs", "--ttl-policy", "continuum"],
                "bench_args": {k: getattr(ba, k) for k in ("num_programs", "program_rate", "seed", "max_turns",
                                                            "min_turns", "token_scale", "time_scale",
                                                            "max_tool_time", "max_model_len", "datasets")}})
    res.setdefault("runs", {})
    for label, router, cfg in AGENT_ROUTERS:
        if a.only and label not in a.only.split(","):
            continue
        flags = ["--replicas", "2", "--router", router, "--router-config", json.dumps(cfg), "--debug-endpoints",
                 *res["engine_flags"]]
        proc, url = start_server(flags, Path(a.logdir) / f"serve_agents_{label.replace('/', '_')}.log")
        try:
            warm_up(url)
            before = metrics(url)
            started, busy = time.strftime("%H:%M:%S"), others()
            log(f"[{label}] replaying {len(programs)} programs")
            records, wall, info = run_http_backend(url, MODEL, programs, arrivals, vocab, ba.seed, tokenizer,
                                                   None, True, a.timeout)
            after = metrics(url)
            dbg = httpx.get(url + "/debug/kv", timeout=30).json()
        finally:
            stop_server(proc)
        summary = summarize_run(records, wall, None, 2 * kv)
        d = delta(after, before)
        summary["server_metrics_delta"] = info.get("server_metrics_delta")
        res["runs"][label] = {"router": router, "router_config": cfg, "command": "pitstop serve " + " ".join(flags),
                              "summary": summary, "per_replica": replica_report(d), "debug_kv_after": dbg,
                              "started": started, "loadavg_after": os.getloadavg(), "busy_others": busy}
        print(agent_line(label, summary), flush=True)
        out.write_text(json.dumps(res, indent=1, default=str))
    print_agent_table(res)
    return 0


def agent_line(label: str, s: dict) -> str:
    j = s.get("jct_s") or {}
    return (f"{label:<24} done {s.get('programs_completed')}/{s.get('programs_total')}  JCT mean {j.get('mean', 0):7.2f} "
            f"p90 {j.get('p90', 0):7.2f} s  TTFT mean {s['ttft_s']['mean']:6.2f} s  hit {s['prefix_hit_rate']:.3f}  "
            f"re-prefilled {s['reprefilled_tokens']:>7}  makespan {s['makespan_s']:.0f} s")


def print_agent_table(res: dict) -> None:
    print("| router | programs done | JCT mean / p90 (s) | TTFT mean (s) | prefix-hit rate | re-prefilled tokens "
          "| live context / KV (mean) | makespan (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for label, r in res["runs"].items():
        s = r["summary"]
        print(f"| {label} | {s.get('programs_completed')}/{s.get('programs_total')} | {s['jct_s']['mean']:.1f} / "
              f"{s['jct_s']['p90']:.1f} | {s['ttft_s']['mean']:.2f} | {s['prefix_hit_rate']:.3f} | "
              f"{s['reprefilled_tokens']:,} | {s['kv'].get('mean_working_set_over_capacity', float('nan')):.2f}x | "
              f"{s['makespan_s']:.0f} |")


# ---- part 2: shared-prefix chat (Mooncake conversations) ----------------------------------------------------------
def mooncake_workload(num_convs: int, per_conv: int, max_input: int, max_model_len: int):
    """Whole conversations of the Mooncake conversation trace, scaled to this model's context.

    Every request of the trace starts with block 0 (a shared system prompt); a conversation is the set of
    requests with the same second hash id (its history grows turn after turn). A window of consecutive requests
    shares almost nothing but block 0 (~5% of blocks in 60-120 requests), because a conversation's turns are
    minutes apart among ~3 requests/s of others, so we take instead the ``num_convs`` conversations with the most
    requests among those whose longest prompt is <= ``max_input`` tokens, their first ``per_conv`` requests each,
    in trace order; lengths x one factor so that the longest prompt + its output fit ``max_model_len`` (block
    size scaled by the same factor, as ``scale_mooncake``)."""
    from pitstop.workloads.mooncake import load_mooncake, scale_mooncake
    reqs = load_mooncake()
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, r in enumerate(reqs):
        if len(r.hash_ids) > 1:
            groups[r.hash_ids[:2]].append(i)
    ok = [(k, v) for k, v in groups.items() if max(reqs[i].spec.input_len for i in v) <= max_input]
    ok.sort(key=lambda kv: (-len(kv[1]), kv[1][0]))
    picked = sorted(i for _, v in ok[:num_convs] for i in v[:per_conv])
    sel = [reqs[i] for i in picked]
    longest = max(r.spec.input_len + r.spec.output_len for r in sel)
    factor = (max_model_len - 64) / longest
    scaled, block = scale_mooncake(sel, factor, max_model_len)
    ids = [h for r in scaled for h in r.hash_ids]
    info = {"trace": "mooncake conversation_trace.jsonl", "conversations": num_convs, "per_conversation": per_conv,
            "max_input_before_scaling": max_input, "trace_rows": picked, "length_scale": factor,
            "block_tokens": block, "num_requests": len(scaled),
            "mean_input_len": sum(r.spec.input_len for r in scaled) / len(scaled),
            "mean_output_len": sum(r.spec.output_len for r in scaled) / len(scaled),
            "max_input_len": max(r.spec.input_len for r in scaled),
            "repeated_block_fraction": 1 - len(set(ids)) / len(ids)}
    return scaled, block, info


def chat_texts(reqs, block: int, seed: int) -> tuple[list[str], float]:
    """The prompts as text (``pitstop bench serve``'s Mooncake prompts: seeded word tokens per hash id, decoded),
    and the fraction that re-encode to the same ids."""
    from transformers import AutoTokenizer

    from pitstop.bench.serve_workloads import safe_vocab
    from pitstop.model.resolve import resolve_model
    from pitstop.workloads.mooncake import build_block_prompts
    tok = AutoTokenizer.from_pretrained(str(resolve_model(MODEL)))
    prompts = build_block_prompts(reqs, block, safe_vocab(tok), seed)
    texts = [tok.decode(p) for p in prompts]
    ok = sum(tok.encode(t, add_special_tokens=False) == p for t, p in zip(texts, prompts)) / len(prompts)
    return texts, ok


def chat_arrivals(n: int, rate: float, seed: int) -> list[float]:
    from pitstop.replay.serving import gamma_arrivals
    return gamma_arrivals(n, rate, 1.0, seed)


def run_mooncake(a) -> int:
    from pitstop.bench.serve_client import BenchRequest, run_load
    from pitstop.replay.serving import summarize

    reqs, block, info = mooncake_workload(a.conversations, a.per_conversation, a.max_input, a.max_model_len)
    texts, info["roundtrip_fraction"] = chat_texts(reqs, block, a.seed)
    arrivals = chat_arrivals(len(reqs), a.request_rate, a.seed)
    info.update(request_rate=a.request_rate, arrivals="Poisson (seeded)", seed=a.seed)
    bench = [BenchRequest(t, txt, r.spec.input_len, r.spec.output_len) for t, txt, r in zip(arrivals, texts, reqs)]
    kv = kv_tokens_of(a.kv_cache_memory)
    out = Path(a.output)
    res = json.loads(out.read_text()) if out.exists() and a.only else {}
    res.update({"part": "mooncake", "workload": info, "kv_tokens_per_replica": kv, "replicas": 2,
                "engine_flags": engine_flags(a)})
    res.setdefault("runs", {})
    for label, router, cfg in CHAT_ROUTERS:
        if a.only and label not in a.only.split(","):
            continue
        flags = ["--replicas", "2", "--router", router, "--router-config", json.dumps(cfg), "--debug-endpoints",
                 *res["engine_flags"]]
        proc, url = start_server(flags, Path(a.logdir) / f"serve_mooncake_{label.replace('/', '_')}.log")
        try:
            warm_up(url)
            before = metrics(url)
            started, busy = time.strftime("%H:%M:%S"), others()
            log(f"[{label}] {len(bench)} requests at {a.request_rate}/s")
            results, wall, ignore_eos = asyncio.run(run_load(url, MODEL, bench, arrivals))
            after = metrics(url)
            dbg = httpx.get(url + "/debug/kv", timeout=30).json()
        finally:
            stop_server(proc)
        s = summarize(results, wall, {"ttft": 2000.0, "tpot": 200.0})
        d = delta(after, before)
        rep = replica_report(d)
        hits = sum(rep.get("pitstop_prefix_cache_hits_tokens", rep.get("pitstop_prefix_cache_hits_tokens_total", {})).values())
        qs = sum(rep.get("pitstop_prefix_cache_queries_tokens", rep.get("pitstop_prefix_cache_queries_tokens_total", {})).values())
        s["server_prefix_hit_rate"] = hits / qs if qs else None
        s["ignore_eos"] = ignore_eos
        res["runs"][label] = {"router": router, "router_config": cfg, "command": "pitstop serve " + " ".join(flags),
                              "summary": s, "per_replica": rep, "debug_kv_after": dbg,
                              "started": started, "loadavg_after": os.getloadavg(), "busy_others": busy}
        print(chat_line(label, s), flush=True)
        out.write_text(json.dumps(res, indent=1, default=str))
    return 0


def chat_line(label: str, s: dict) -> str:
    return (f"{label:<24} {s['completed']} ok/{s['failed']} failed  TTFT mean {s['ttft_ms']['mean']:7.0f} "
            f"p90 {s['ttft_ms']['p90']:7.0f} ms  TPOT mean {s['tpot_ms']['mean']:5.0f} ms  "
            f"hit {s.get('server_prefix_hit_rate') or 0:.3f}")


# ---- part 3: the simulator's prediction ---------------------------------------------------------------------------
def sim_config(res: dict, router: str, cfg: dict, profile: str, agents: bool):
    from pitstop.sim.simulator import SimConfig
    f = res["engine_flags"]
    val = {f[i]: f[i + 1] for i in range(0, len(f) - 1) if f[i].startswith("--")}
    return SimConfig(model=SIM_MODEL, cost_model="profiled", profile=profile, replicas=res["replicas"], router=router,
                     router_kwargs=dict(cfg), scheduling_policy=val.get("--scheduling-policy", "fcfs"),
                     ttl_policy=val.get("--ttl-policy", "none"), max_num_seqs=int(val["--max-num-seqs"]),
                     max_num_batched_tokens=int(val["--max-num-batched-tokens"]),
                     max_model_len=int(val["--max-model-len"]), kv_cache_tokens=res["kv_tokens_per_replica"],
                     record_steps=False, record_token_times=True)


def cost_model(profile: str, scale: float):
    """The profiled fit, every step x ``scale`` (1: the fit as measured)."""
    from pitstop.sim.cost_models import CostModel, ProfiledCostModel
    cm = ProfiledCostModel.load(profile)
    if scale == 1.0:
        return cm

    class Scaled(CostModel):
        name = cm.name

        def predict(self, shape):
            return scale * cm.predict(shape)

        def describe(self):
            return {**cm.describe(), "scale": scale}
    return Scaled()


def sim_agents(res: dict, router: str, cfg: dict, profile: str, scale: float = 1.0) -> dict:
    from pitstop.bench.agents import load_programs
    from pitstop.sim.agents import AgentDriver, agent_summary
    from pitstop.sim.simulator import build_cluster, model_facts, run_cluster
    from pitstop.workloads.agent_program import poisson_program_arrivals
    sc = sim_config(res, router, cfg, profile, True)
    ba = argparse.Namespace(trace="agentcgroup", trace_path=None, tool_time="tool_max", **res["bench_args"])
    programs, _ = load_programs(ba)
    arrivals = poisson_program_arrivals(len(programs), ba.program_rate, ba.seed)
    cluster = build_cluster(sc, cost_model(profile, scale))
    driver = AgentDriver(cluster, programs, arrivals, ba.seed, model_facts(sc)[0])
    out, _ = run_cluster(sc, cluster, driver.first_requests(), driver.num_turns_planned)
    s = agent_summary(driver, cluster)
    s["replicas"] = out["replicas"]
    return s


def sim_mooncake(res: dict, router: str, cfg: dict, profile: str, seed: int, scale: float = 1.0) -> dict:
    from pitstop.sim.cluster import SimRequest
    from pitstop.sim.simulator import build_cluster, model_facts, run_cluster
    from pitstop.server.ray.routing import BLOCK_TOKENS, text_prefix_keys
    from pitstop.sim.workload import PromptFactory
    w = res["workload"]
    reqs, block, _ = mooncake_workload(w["conversations"], w["per_conversation"], w["max_input_before_scaling"],
                                       int(dict(zip(res["engine_flags"][::2], res["engine_flags"][1::2]))["--max-model-len"]))
    sc = sim_config(res, router, cfg, profile, False)
    pf = PromptFactory(model_facts(sc)[0], block)
    arrivals = chat_arrivals(len(reqs), w["request_rate"], w["seed"])
    # routing keys as the Ray ingress computes them for a text prompt (2,048-character blocks, 512 "tokens" each);
    # the simulated prompt's tokens keep the trace's sharing per hash id (59-token blocks), as the real prompts do
    texts, _ = chat_texts(reqs, block, seed)
    sreqs = [SimRequest(f"m{k}", t, r.spec.input_len, r.spec.output_len, pf.blocks(r.hash_ids, r.spec.input_len),
                        text_prefix_keys(txt), BLOCK_TOKENS) for k, (r, t, txt) in enumerate(zip(reqs, arrivals, texts))]
    cluster = build_cluster(sc, cost_model(profile, scale))
    out, _ = run_cluster(sc, cluster, sreqs)
    s = out["summary"]
    s["replicas"] = out["replicas"]
    return s


AGENT_FIGS = (("JCT mean", lambda s: s["jct_s"]["mean"]), ("JCT p90", lambda s: s["jct_s"]["p90"]),
              ("prefix hit", lambda s: s["prefix_hit_rate"]), ("re-prefilled", lambda s: s["reprefilled_tokens"]))
CHAT_FIGS = (("TTFT mean", lambda s: s["ttft_ms"]["mean"]), ("TTFT p90", lambda s: s["ttft_ms"]["p90"]),
             ("prefix hit", lambda s: s.get("server_prefix_hit_rate", s.get("prefix_cache_hit_rate"))))


def kendall_tau(a: list[float], b: list[float]) -> float:
    n, c, d = len(a), 0, 0
    for i in range(n):
        for j in range(i + 1, n):
            x = (a[i] - a[j]) * (b[i] - b[j])
            c += x > 0
            d += x < 0
    return (c - d) / (n * (n - 1) / 2) if n > 1 else 1.0


def run_sim(a) -> int:
    """Per part: the simulated runs with the fit as measured, and (``--calibrate``) with every step scaled by
    the factor at which the first router's run matches its first figure (a diagnostic of the shared, loaded cores; not a
    prediction: it is fitted on one of the runs it is compared with)."""
    for path, kind in ((a.agents, "agents"), (a.mooncake, "mooncake")):
        if not path:
            continue
        res = json.loads(Path(path).read_text())
        labels = list(res["runs"])
        figs = AGENT_FIGS if kind == "agents" else CHAT_FIGS
        outd: dict = {"profile": a.profile, "real": path, "variants": {}}
        scales = [("as measured", 1.0)]
        for vname, scale in scales:
            pred = simulate_part(res, kind, a.profile, scale)
            outd["variants"][vname] = {"scale": scale, **compare(res, pred, figs)}
            report_sim(kind, vname, res, outd["variants"][vname], figs)
            if a.calibrate and len(scales) == 1:
                first = labels[0]
                f = calibrate(res, kind, a.profile, first, figs[0][1])
                scales.append((f"calibrated: steps x{f:.2f} so that {first}'s {figs[0][0]} matches", f))
        outp = Path(path).with_name(Path(path).stem + "_sim.json")
        outp.write_text(json.dumps(outd, indent=1, default=str))
    return 0


def calibrate(res: dict, kind: str, profile: str, label: str, get) -> float:
    """The step-time scale (bisection on a log scale, 1-16) at which the simulated ``label`` run matches the real
    one's first figure (JCT mean / TTFT mean)."""
    r = res["runs"][label]
    target = get(r["summary"])
    lo, hi = 1.0, 16.0
    for _ in range(12):
        mid = (lo * hi) ** 0.5
        if kind == "agents":
            s = sim_agents(res, r["router"], r["router_config"], profile, mid)
        else:
            s = sim_mooncake(res, r["router"], r["router_config"], profile, res["workload"]["seed"], mid)
        lo, hi = (mid, hi) if get(s) < target else (lo, mid)
    return (lo * hi) ** 0.5


def simulate_part(res: dict, kind: str, profile: str, scale: float) -> dict:
    pred = {}
    for label, r in res["runs"].items():
        t = time.perf_counter()
        if kind == "agents":
            s = sim_agents(res, r["router"], r["router_config"], profile, scale)
        else:
            s = sim_mooncake(res, r["router"], r["router_config"], profile, res["workload"]["seed"], scale)
        pred[label] = {"sim": s, "sim_wall_s": time.perf_counter() - t}
    return pred


def compare(res: dict, pred: dict, figs) -> dict:
    labels = list(res["runs"])
    for k in labels:
        pred[k]["rel_error"] = {}
        for name, get in figs:
            real, sim = get(res["runs"][k]["summary"]), get(pred[k]["sim"])
            if real is not None and sim is not None:
                pred[k]["rel_error"][name] = (sim - real) / real if real else None
    ranking = {}
    for name, get in figs:
        real = [get(res["runs"][k]["summary"]) for k in labels]
        sim = [get(pred[k]["sim"]) for k in labels]
        if None in real or None in sim:
            continue
        ranking[name] = {"real_order": [labels[i] for i in sorted(range(len(labels)), key=lambda i: real[i])],
                         "sim_order": [labels[i] for i in sorted(range(len(labels)), key=lambda i: sim[i])],
                         "kendall_tau": kendall_tau(real, sim)}
    return {"runs": pred, "ranking": ranking}


def report_sim(kind: str, vname: str, res: dict, v: dict, figs) -> None:
    print(f"\n{kind}: real vs simulated, cost model {vname}")
    print("| router | " + " | ".join(f"{n} real / sim (err)" for n, _ in figs) + " |")
    print("|---|" + "---|" * len(figs))
    for k, p in v["runs"].items():
        cells = []
        for n, get in figs:
            rv, sv = get(res["runs"][k]["summary"]), get(p["sim"])
            e = p["rel_error"].get(n)
            cells.append(f"{fmt(rv)} / {fmt(sv)} ({e:+.0%})" if e is not None else f"{fmt(rv)} / {fmt(sv)}")
        print(f"| {k} | " + " | ".join(cells) + " |")
    for n, r in v["ranking"].items():
        print(f"{n}: Kendall tau {r['kendall_tau']:+.2f}; real {' < '.join(r['real_order'])}; "
              f"sim {' < '.join(r['sim_order'])}")


def fmt(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, int) or (isinstance(x, float) and x >= 1000):
        return f"{x:,.0f}"
    return f"{x:.3f}" if x < 1 else f"{x:.1f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="part", required=True)
    for name in ("agents", "mooncake"):
        q = sub.add_parser(name)
        q.add_argument("--output", required=True)
        q.add_argument("--logdir", default="/tmp")
        q.add_argument("--only", default=None, help="comma list of run labels (others kept from --output)")
        q.add_argument("--max-model-len", type=int, default=2048)
        q.add_argument("--max-num-seqs", type=int, default=128)
        q.add_argument("--max-num-batched-tokens", type=int, default=1024)
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--timeout", type=float, default=900.0)
    qa = sub.choices["agents"]
    qa.add_argument("--kv-cache-memory", default="128MiB")
    qa.add_argument("--num-programs", type=int, default=20)
    qa.add_argument("--program-rate", type=float, default=0.6)
    qa.add_argument("--max-turns", type=int, default=16)
    qm = sub.choices["mooncake"]
    qm.add_argument("--kv-cache-memory", default="128MiB")
    qm.add_argument("--conversations", type=int, default=10)
    qm.add_argument("--per-conversation", type=int, default=8)
    qm.add_argument("--max-input", type=int, default=20000)
    qm.add_argument("--request-rate", type=float, default=0.6)
    qs = sub.add_parser("sim")
    qs.add_argument("--profile", required=True)
    qs.add_argument("--agents", default=None)
    qs.add_argument("--mooncake", default=None)
    qs.add_argument("--calibrate", action="store_true",
                    help="also simulate with every step x the factor at which the first router matches its real JCT / TTFT mean")
    a = p.parse_args(argv)
    return {"agents": run_agents, "mooncake": run_mooncake, "sim": run_sim}[a.part](a)


if __name__ == "__main__":
    sys.exit(main())
