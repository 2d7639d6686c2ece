"""Migration of a waiting program's pinned KV between two Ray Serve replicas (issue 17, Llumnix): bytes moved and
the time the move takes, against what the program's next turn pays without it (a re-prefill on the other replica).

    flock /work/bench.lock .venv/bin/python benchmarks/ray_migration.py --sizes 256,1024,2048 --repeats 3 \\
        --output benchmarks/ray/migration.json

One server: `pitstop serve --replicas 2 --router program-affinity --ttl-policy fixed` with migration on but never
triggered by load (threshold 10^6); each program is moved by hand (`POST /debug/migration {"move": ID}`). Per
context size (tokens, random ids): for each repeat,
- *migrated*: a program's first turn (prompt of that size, 1 output token) pins its KV on replica H; the move to
  the other replica is timed (export + object store + import + end on H: `seconds`) and its `bytes` counted; the
  next turn (the same context + 16 new tokens, 1 output token) is routed to the new home: its TTFT and cached
  tokens are recorded;
- *re-prefill* (control): under round-robin (`POST /debug/router`), a lone request with a fresh context of the same
  size, then the same context + 16 new tokens, which round-robin sends to the other replica (nothing cached there):
  its TTFT is what the next turn costs where its pin is not.
The table: size, bytes, move seconds (median), next-turn TTFT after the move vs with a re-prefill.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
MODEL = "SmolLM2-135M-Instruct"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "pitstop.cli.main", "serve", "--model", MODEL, "--port", str(port),
           "--host", "127.0.0.1", "--replicas", "2", "--router", "program-affinity", "--num-threads", "1",
           "--kv-cache-memory", args.kv_cache_memory, "--max-model-len", str(args.max_model_len),
           "--ttl-policy", "fixed", "--ttl-seconds", "600", "--debug-endpoints",
           "--migration-config", json.dumps({"load_abs_threshold": 1_000_000, "period_s": 5.0})]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(REPO))
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError("server did not become healthy")


def turn(client: httpx.Client, prompt: list[int], program: str | None, last: bool) -> tuple[float, dict, str]:
    """(TTFT seconds, usage, replica) of a streamed 1-token completion."""
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 1, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    if program is not None:
        body.update(program_id=program, is_last_turn=last)
    t0 = time.perf_counter()
    ttft, usage = None, {}
    with client.stream("POST", "/v1/completions", json=body) as r:
        r.raise_for_status()
        replica = r.headers["x-pitstop-replica"]
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            ev = json.loads(line[6:])
            if ev.get("choices") and ttft is None:
                ttft = time.perf_counter() - t0
            if ev.get("usage"):
                usage = ev["usage"]
    return ttft, usage, replica


def run(args) -> dict:
    port = free_port()
    proc = start(args, port)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300)
    rng = random.Random(0)
    rows = []
    try:
        turn(client, [rng.randrange(100, 40000) for _ in range(64)], None, True)  # warm-up
        for size in args.sizes:
            for rep in range(args.repeats):
                ctx = [rng.randrange(100, 40000) for _ in range(size)]
                new = [rng.randrange(100, 40000) for _ in range(16)]
                pid = f"mig-{size}-{rep}"
                _, _, home = turn(client, ctx, pid, False)
                moved = client.post("/debug/migration", json={"move": pid}).json()["moved"]
                assert moved is not None and moved["from"] == home, moved
                ttft_m, usage_m, where = turn(client, ctx + new, pid, True)
                assert where == moved["to"], (where, moved)
                # control: the same size, the next turn on the other replica (round-robin), nothing cached there
                ctx2 = [rng.randrange(100, 40000) for _ in range(size)]
                client.post("/debug/router", json={"router": "round-robin"}).raise_for_status()
                try:
                    _, _, home2 = turn(client, ctx2, None, True)
                    t_r, usage_r, where_r = turn(client, ctx2 + new, None, True)
                finally:
                    client.post("/debug/router", json={"router": None}).raise_for_status()
                rows.append({"size": size, "repeat": rep, "bytes": moved["bytes"], "blocks": moved["blocks"],
                             "move_s": moved["seconds"], "ttft_after_move_s": ttft_m,
                             "cached_after_move": usage_m.get("prompt_tokens_details", {}).get("cached_tokens"),
                             "ttft_reprefill_s": t_r if where_r != home2 else None,
                             "cached_reprefill": usage_r.get("prompt_tokens_details", {}).get("cached_tokens")})
                print(json.dumps(rows[-1]), flush=True)
    finally:
        client.close()
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    table = []
    for size in args.sizes:
        rs = [r for r in rows if r["size"] == size]
        med = lambda k: statistics.median(r[k] for r in rs if r[k] is not None) if any(  # noqa: E731
            r[k] is not None for r in rs) else None
        table.append({"size": size, "bytes": rs[0]["bytes"], "move_s": med("move_s"),
                      "ttft_after_move_s": med("ttft_after_move_s"), "ttft_reprefill_s": med("ttft_reprefill_s"),
                      "cached_after_move": med("cached_after_move"), "cached_reprefill": med("cached_reprefill")})
    return {"cpu": _cpu(), "args": vars(args), "rows": rows, "table": table}


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="256,1024,2048", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--kv-cache-memory", default="512MiB")
    p.add_argument("--max-model-len", type=int, default=4096)
    p.add_argument("--output", default=None)
    args = p.parse_args()
    res = run(args)
    print(f"{'tokens':>7} {'MB moved':>9} {'move s':>7} {'TTFT after move':>16} {'TTFT re-prefill':>16}")
    for r in res["table"]:
        rp = f"{r['ttft_reprefill_s']:.3f}" if r["ttft_reprefill_s"] is not None else "n/a"
        print(f"{r['size']:>7} {r['bytes'] / 2**20:>9.1f} {r['move_s']:>7.3f} {r['ttft_after_move_s']:>16.3f} "
              f"{rp:>16}")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
