"""``pitstop bench serve``: replay a workload against OpenAI-compatible servers and compare them.

Measures pitstop (``--base-url``, or a ``pitstop serve`` this script starts) and, with ``--peer
transformers``, ``transformers serve`` (transformers' own OpenAI-compatible server, continuous batching on
by default) started on another port with the same model folder and dtype. The servers run one after the
other (never together: they would share the CPU cores). For each request rate in ``--rates`` it reports
vLLM's serving metrics; then pitstop/peer ratios of output throughput at ``--request-rate`` and of the
highest swept rate whose SLO attainment (share of requests meeting every ``--slo``) is >= ``--slo-target``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import httpx

from pitstop.bench.serve_client import run_load
from pitstop.replay.serving import gamma_arrivals, parse_slo, results_json, summarize
from pitstop.bench.serve_workloads import TRACES, BenchRequest, build_workload, has_timestamps


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pitstop bench serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-url", default=None, help="pitstop server (default: start one on a free port)")
    p.add_argument("--model", default="SmolLM2-135M-Instruct", help="model name/folder (both servers)")
    p.add_argument("--api-key", default=None)
    p.add_argument("--trace", choices=TRACES, default="azure-conv")
    p.add_argument("--trace-path", default=None, help="trace file (default: full trace or vendored sample)")
    p.add_argument("--num-requests", type=int, default=50)
    p.add_argument("--duration", type=float, default=None, help="send only requests arriving before this (s)")
    p.add_argument("--request-rate", type=float, default=None,
                   help="req/s (Poisson/gamma arrivals); default: trace timestamps, or inf without them")
    p.add_argument("--rates", default=None, help="comma list of rates to sweep (adds --request-rate)")
    p.add_argument("--burstiness", type=float, default=1.0, help="gamma shape of inter-arrivals (1 = Poisson)")
    p.add_argument("--max-concurrency", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time-scale", type=float, default=None, help="multiply trace timestamps (replay mode)")
    p.add_argument("--length-scale", type=float, default=None,
                   help="multiply prompt/output lengths (default: fit p99 in 90%% of --max-model-len)")
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--random-input-len", type=int, default=256)
    p.add_argument("--random-output-len", type=int, default=64)
    p.add_argument("--slo", default="ttft=2000,tpot=200", help="ms limits, e.g. ttft=2000,tpot=200,e2el=20000")
    p.add_argument("--slo-target", type=float, default=0.9, help="SLO attainment a rate must reach")
    p.add_argument("--warmup-requests", type=int, default=16,
                   help="requests of the workload sent as a staggered burst before measuring each server")
    p.add_argument("--peer", choices=["none", "transformers"], default="none")
    p.add_argument("--peer-base-url", default=None, help="an already running peer (skips starting one)")
    p.add_argument("--peer-model", default=None, help="model id the peer expects (default: the model folder)")
    p.add_argument("--no-peer-continuous-batching", action="store_true")
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"],
                   help="auto: bfloat16 where this CPU computes it natively, float32 elsewhere")
    p.add_argument("--num-threads", type=int, default=None, help="torch threads of started servers")
    p.add_argument("--pitstop-args", default="", help="extra flags for the started pitstop serve")
    p.add_argument("--server-cpus", default=None,
                   help="CPU list (taskset -c) for the started servers, e.g. 0; the load generator is then moved "
                        "to the other CPUs, so client and server never share a core")
    p.add_argument("--save-result", default=None, help="JSON path (a PNG with the same stem is written too)")
    return p


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(cmd: list[str], url: str, log: Path, timeout: float = 300.0) -> subprocess.Popen:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[0]} exited ({proc.returncode}); log {log}:\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"{cmd} not healthy after {timeout}s; log {log}")


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def pin_cpus(cmd: list[str], cpus: str | None) -> list[str]:
    """``cmd`` run under ``taskset -c cpus`` (unchanged when ``cpus`` is None).

    Raises:
        RuntimeError: ``taskset`` is not installed.
    """
    if cpus is None:
        return cmd
    if shutil.which("taskset") is None:
        raise RuntimeError("--server-cpus needs taskset (util-linux)")
    return ["taskset", "-c", cpus, *cmd]


def client_cpus(server_cpus: str | None) -> set[int] | None:
    """The CPUs the load generator may use: all this process may use minus ``server_cpus``.

    None when ``server_cpus`` is None or leaves no CPU (then the client stays where it is)."""
    if server_cpus is None:
        return None
    taken: set[int] = set()
    for part in server_cpus.split(","):
        lo, _, hi = part.partition("-")
        taken.update(range(int(lo), int(hi or lo) + 1))
    rest = os.sched_getaffinity(0) - taken
    return rest or None


def _rates(args) -> list[float]:
    rates = [float(x) for x in args.rates.split(",")] if args.rates else []
    if args.request_rate is not None and args.request_rate not in rates:
        rates.append(args.request_rate)
    return sorted(rates)


_SALTS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo",
          "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango", "uniform", "victor",
          "whiskey", "xray", "yankee", "zulu")


def salted(reqs: list[BenchRequest], run: int) -> list[BenchRequest]:
    """The workload with a word unique to ``run`` in front of every prompt: runs of a sweep replay the same
    prompts, and a server with a prefix cache would otherwise serve each run from the previous one's KV.
    Sharing between prompts of one run (Mooncake's hash_ids) is kept: all of them get the same first word."""
    word = _SALTS[run % len(_SALTS)] + ("" if run < len(_SALTS) else str(run))
    return [replace(r, prompt=f" {word}" + r.prompt, prompt_len=r.prompt_len + 1) for r in reqs]


def _sweep(name: str, url: str, model: str, args, workload, rates: list[float], slo: dict) -> dict:
    """Warm up, then one run per rate (or one trace-time replay when no rate is given); every run gets its own
    prompt salt (``salted``), so no run is served from another's prefix cache."""
    # warm-up: a staggered burst, so that the batch shapes of the loaded runs have been seen once (oneDNN and
    # torch build kernels per shape on first use; the first rate of a sweep would otherwise pay for them)
    n = max(1, min(args.warmup_requests, len(workload)))
    asyncio.run(run_load(url, model, salted(workload[:n], 0), [0.05 * i for i in range(n)], args.api_key,
                         use_ignore_eos=True))
    runs = {}
    for i, rate in enumerate(rates or [None]):
        reqs = salted(workload, i + 1)
        if rate is None:
            arrivals = [r.arrival_s for r in reqs] if has_timestamps(args.trace) else [0.0] * len(reqs)
        else:
            arrivals = gamma_arrivals(len(reqs), rate, args.burstiness, args.seed)
        results, wall, ignore_eos = asyncio.run(run_load(url, model, reqs, arrivals, args.api_key,
                                                         args.max_concurrency, args.duration))
        summary = summarize(results, wall, slo)
        summary["ignore_eos"] = ignore_eos
        key = "trace" if rate is None else f"{rate:g}"
        runs[key] = {"rate": rate, "summary": summary, "requests": results_json(results),
                     "_results": results}
        print(f"[{name}] rate={key}: {_line(summary)}", flush=True)
    return runs


def _line(s: dict) -> str:
    return (f"{s['completed']} ok / {s['failed']} failed, {s['request_throughput']:.2f} req/s, "
            f"{s['output_throughput']:.1f} out tok/s, TTFT p50 {s['ttft_ms']['median']:.0f} ms, "
            f"TPOT p50 {s['tpot_ms']['median']:.0f} ms, E2EL p50 {s['e2el_ms']['median']:.0f} ms, "
            f"SLO attainment {s['slo_attainment'] if s['slo_attainment'] is not None else float('nan'):.2f}, "
            f"ignore_eos={s.get('ignore_eos')}")


def _max_rate(runs: dict, target: float) -> float | None:
    ok = [r["rate"] for r in runs.values() if r["rate"] is not None and (r["summary"]["slo_attainment"] or 0) >= target]
    return max(ok) if ok else None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from transformers import AutoTokenizer

    from pitstop.model.cpu_features import choose_kernels
    from pitstop.model.resolve import resolve_model

    slo = parse_slo(args.slo)
    args.dtype = choose_kernels(args.dtype).dtype  # the same concrete dtype for pitstop and the peer
    model_dir = resolve_model(args.model)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    workload, info = build_workload(args.trace, tok, args.num_requests, args.max_model_len, args.seed,
                                    args.length_scale, args.time_scale, args.random_input_len,
                                    args.random_output_len, args.trace_path)
    rates = _rates(args)
    if not rates and not has_timestamps(args.trace):
        rates = [math.inf]
    print(f"workload: {json.dumps(info)}", flush=True)
    logdir = Path(args.save_result).parent if args.save_result else Path(".")
    logdir.mkdir(parents=True, exist_ok=True)
    threads = ["--num-threads", str(args.num_threads)] if args.num_threads else []
    own = client_cpus(args.server_cpus)
    if own is not None:
        os.sched_setaffinity(0, own)
    result: dict = {"args": vars(args), "workload": info, "slo_ms": slo, "servers": {}}

    proc = None
    url = args.base_url
    try:
        if url is None:
            port = _free_port()
            url = f"http://127.0.0.1:{port}"
            cmd = [sys.executable, "-m", "pitstop.cli.main", "serve", "--model", args.model, "--dtype", args.dtype,
                   "--port", str(port), "--max-model-len", str(args.max_model_len), *threads,
                   *args.pitstop_args.split()]
            proc = _start(pin_cpus(cmd, args.server_cpus), url, logdir / "bench_serve_pitstop.log")
        result["servers"]["pitstop"] = _sweep("pitstop", url, args.model, args, workload, rates, slo)
    finally:
        _stop(proc)

    if args.peer == "transformers":
        proc = None
        peer_url = args.peer_base_url
        peer_model = args.peer_model or str(model_dir)
        try:
            if peer_url is None:
                port = _free_port()
                peer_url = f"http://127.0.0.1:{port}"
                exe = Path(sys.executable).with_name("transformers")
                cmd = [str(exe), "serve", str(model_dir), "--host", "127.0.0.1", "--port", str(port),
                       "--device", "cpu", "--dtype", args.dtype]
                if not args.no_peer_continuous_batching:
                    cmd.append("--continuous-batching")
                if args.num_threads:
                    os.environ["OMP_NUM_THREADS"] = str(args.num_threads)
                proc = _start(pin_cpus(cmd, args.server_cpus), peer_url, logdir / "bench_serve_transformers.log")
                result["peer_command"] = " ".join(cmd)
            result["servers"]["transformers"] = _sweep("transformers", peer_url, peer_model, args, workload,
                                                       rates, slo)
        finally:
            _stop(proc)
        result["ratios"] = _ratios(result["servers"], args, rates)
        print(f"ratios (pitstop / transformers): {json.dumps(result['ratios'])}", flush=True)

    if args.save_result:
        from pitstop.replay.serving_plot import plot
        plot(result, Path(args.save_result).with_suffix(".png"))
        for srv in result["servers"].values():
            for run in srv.values():
                run.pop("_results", None)
        Path(args.save_result).write_text(json.dumps(result, indent=1, default=str))
        print(f"saved {args.save_result} and {Path(args.save_result).with_suffix('.png')}")
    return 0


def _ratios(servers: dict, args, rates: list[float]) -> dict:
    a, b = servers["pitstop"], servers["transformers"]
    fixed = f"{args.request_rate:g}" if args.request_rate is not None else (f"{rates[0]:g}" if rates else "trace")
    out: dict = {"fixed_rate": fixed}
    if fixed in a and fixed in b:
        sa, sb = a[fixed]["summary"], b[fixed]["summary"]
        out["output_throughput"] = sa["output_throughput"] / sb["output_throughput"] if sb["output_throughput"] else None
        out["ttft_median_peer_over_pitstop"] = sb["ttft_ms"]["median"] / sa["ttft_ms"]["median"]
        out["tpot_median_peer_over_pitstop"] = sb["tpot_ms"]["median"] / sa["tpot_ms"]["median"]
    ra, rb = _max_rate(a, args.slo_target), _max_rate(b, args.slo_target)
    out["max_rate_within_slo"] = {"pitstop": ra, "transformers": rb,
                                  "ratio": (ra / rb) if ra and rb else None}
    return out


if __name__ == "__main__":
    sys.exit(main())
