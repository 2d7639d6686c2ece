"""Soak run of issue 14: mixed traffic against one ``pitstop serve`` for a long time, watching for leaks.

Traffic (Poisson arrivals at ``--rate`` req/s): completions and chat, streamed and not; agent programs whose
non-final turns pin KV; 10% of streams disconnect mid-way, 5% of programs are cancelled with DELETE at a random
point, 5% of requests are invalid (they must get a 4xx). The server runs on core 0 (``taskset``) with
``--debug-endpoints`` and a short ``--program-idle-timeout``; this process is the load generator.

Reported (JSON next to a PNG of the time series): server RSS over time (growth after the first 5 minutes),
KV blocks / pins / programs in use at the end after an idle period, 5xx count, TTFT p50/p99 per window.

Usage: ``.venv/bin/python benchmarks/soak.py [--minutes 30] [--rate 2] [--output benchmarks/soak/soak.json]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from serve_process import start_serve  # noqa: E402

KEY = "soak-key"
WORDS = "agent tool call cache block program turn token prefill decode pin schedule queue".split()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--rate", type=float, default=2.0, help="requests per second (set ~80%% of the measured max)")
    p.add_argument("--window-minutes", type=float, default=5.0)
    p.add_argument("--idle-timeout", type=float, default=20.0, help="the server's --program-idle-timeout (s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--memory-every", type=float, default=5.0,
                   help="minutes between /debug/memory reports (live objects by type; tracemalloc when the server runs "
                        "with PYTHONTRACEMALLOC set)")
    p.add_argument("--output", default=str(ROOT / "benchmarks" / "soak" / "soak.json"))
    return p.parse_args(argv)


def start_server(args: argparse.Namespace, log: Path) -> tuple[subprocess.Popen, str]:
    flags = ["--api-key", KEY, "--debug-endpoints", "--num-threads", "1", "--max-model-len", "2048",
             "--kv-cache-memory", "256MiB", "--max-num-seqs", "16", "--max-queue", "64", "--ttl-policy", "continuum",
             "--scheduling-policy", "program-fcfs", "--program-idle-timeout", str(args.idle_timeout)]
    return start_serve(flags, log, prefix=("taskset", "-c", "0"))


class Soak:
    def __init__(self, args: argparse.Namespace, url: str) -> None:
        self.args, self.rng = args, random.Random(args.seed)
        self.client = httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=300,
                                        limits=httpx.Limits(max_connections=200))
        self.t0 = time.monotonic()
        self.ttfts: list[tuple[float, float]] = []  # (seconds since start, TTFT seconds)
        self.statuses: dict[str, int] = {}
        self.programs = 0

    def _count(self, key: str) -> None:
        self.statuses[key] = self.statuses.get(key, 0) + 1

    def _text(self, n: int) -> str:
        return " ".join(self.rng.choice(WORDS) for _ in range(n))

    async def one(self) -> None:
        r = self.rng.random()
        if r < 0.05:
            await self.invalid()
        elif r < 0.30:
            self.programs += 1
            await self.program(f"soak-{self.programs}")
        else:
            chat = self.rng.random() < 0.5
            await self.request(chat, self.rng.random() < 0.6, self._text(self.rng.randint(8, 120)), {})

    async def invalid(self) -> None:
        body = self.rng.choice([{"prompt": ""}, {"prompt": "x", "max_tokens": -3}, {"messages": "nope"},
                                {"prompt": "x", "n": 999}])
        path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
        resp = await self.client.post(path, json=body)
        self._count(f"invalid_{resp.status_code // 100}xx")

    async def program(self, pid: str) -> None:
        ctx = self._text(self.rng.randint(100, 300))
        turns = self.rng.randint(2, 5)
        cancel_at = self.rng.randint(0, turns - 1) if self.rng.random() < 0.05 else None
        for t in range(turns):
            if t == cancel_at:
                await self.client.delete(f"/v1/programs/{pid}")
                self._count("program_cancelled")
                return
            extra = {"program_id": pid, "is_last_turn": t == turns - 1, "tool_name": "Bash"}
            out = await self.request(False, False, ctx, extra)
            ctx += (out or "") + " " + self._text(self.rng.randint(10, 60))
            await asyncio.sleep(self.rng.expovariate(1.0))  # the tool runs

    async def request(self, chat: bool, stream: bool, text: str, extra: dict) -> str | None:
        body = {"max_tokens": self.rng.randint(8, 48), "temperature": 0.7, "stream": stream, **extra}
        path = "/v1/chat/completions" if chat else "/v1/completions"
        body.update({"messages": [{"role": "user", "content": text}]} if chat else {"prompt": text})
        start = time.monotonic()
        if not stream:
            resp = await self.client.post(path, json=body)
            self._count(f"{resp.status_code // 100}xx")
            if resp.status_code == 200:
                self.ttfts.append((start - self.t0, time.monotonic() - start))
                c = resp.json()["choices"][0]
                return c["message"]["content"] if chat else c["text"]
            return None
        disconnect = self.rng.random() < 0.10
        async with self.client.stream("POST", path, json=body) as resp:
            self._count(f"{resp.status_code // 100}xx")
            n = 0
            async for line in resp.aiter_lines():
                if line.startswith("data: {"):
                    if n == 0:
                        self.ttfts.append((start - self.t0, time.monotonic() - start))
                    n += 1
                    if disconnect and n == 3:
                        self._count("disconnected")
                        return None
        return None

    async def run(self) -> None:
        end = self.t0 + self.args.minutes * 60
        tasks = []
        while time.monotonic() < end:
            tasks.append(asyncio.ensure_future(self.one()))
            await asyncio.sleep(self.rng.expovariate(self.args.rate))
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for res in results:
            if isinstance(res, Exception):
                self._count(f"client_error_{type(res).__name__}")
        await self.client.aclose()


async def sample(proc: psutil.Process, url: str, stop: asyncio.Event, series: list[dict], t0: float,
                 memory: list[dict], memory_every_s: float) -> None:
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120) as c:
        next_memory = 60.0
        while not stop.is_set():
            if time.monotonic() - t0 >= next_memory:
                memory.append({"t": time.monotonic() - t0, **(await c.get("/debug/memory?top=30")).json()})
                next_memory += memory_every_s
            kv = (await c.get("/debug/kv")).json()
            series.append({"t": time.monotonic() - t0, "rss_bytes": proc.memory_info().rss,
                           **{k: kv[k] for k in ("num_used_blocks", "num_pinned_blocks", "num_programs",
                                                  "num_running", "num_waiting")}})
            try:
                await asyncio.wait_for(stop.wait(), timeout=5)
            except asyncio.TimeoutError:
                pass


def windows(ttfts: list[tuple[float, float]], width_s: float, run_s: float) -> list[dict]:
    """TTFT p50/p99 (seconds) of the requests sent in each whole window of ``width_s`` seconds of the run."""
    out = []
    for w in range(max(1, int(run_s // width_s))):
        xs = sorted(v for t, v in ttfts if w * width_s <= t < (w + 1) * width_s)
        if xs:
            out.append({"window": w, "n": len(xs), "ttft_p50_s": statistics.median(xs),
                        "ttft_p99_s": xs[min(len(xs) - 1, int(0.99 * len(xs)))]})
    return out


def plot(series: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t"] / 60 for s in series]
    fig, axes = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    axes[0].plot(t, [s["rss_bytes"] / 2**20 for s in series])
    axes[0].set_ylabel("server RSS (MiB)")
    for key in ("num_used_blocks", "num_pinned_blocks", "num_programs"):
        axes[1].plot(t, [s[key] for s in series], label=key)
    axes[1].set_ylabel("count")
    axes[1].set_xlabel("minutes")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


async def main_async(args: argparse.Namespace) -> dict:
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    proc, url = start_server(args, out.with_suffix(".server.log"))
    if hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, os.sched_getaffinity(0) - {0})
    series: list[dict] = []
    stop = asyncio.Event()
    soak = Soak(args, url)
    memory: list[dict] = []
    sampler = asyncio.ensure_future(sample(psutil.Process(proc.pid), url, stop, series, soak.t0, memory,
                                           args.memory_every * 60))
    try:
        await soak.run()
        await asyncio.sleep(args.idle_timeout + 10)  # idle: pins expire, idle programs end
        stop.set()
        await sampler
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120) as c:
            idle = {"t": time.monotonic() - soak.t0, **(await c.get("/debug/memory?top=30")).json()}
            trimmed = {"t": time.monotonic() - soak.t0, **(await c.get("/debug/memory?top=30&trim=true")).json()}
        memory += [idle, trimmed]
    finally:
        proc.terminate()
        proc.wait(60)
    after5 = [s["rss_bytes"] for s in series if s["t"] >= min(300, series[-1]["t"] / 2)]
    win = windows(soak.ttfts, args.window_minutes * 60, args.minutes * 60)
    res = {"args": vars(args), "statuses": soak.statuses, "series": series, "ttft_windows": win, "ttfts": soak.ttfts,
           "rss_growth_after_warmup": (after5[-1] - after5[0]) / after5[0] if after5 else None,
           "end": series[-1], "memory": memory,
           "rss_idle_before_trim_bytes": memory[-1]["rss_before_trim_bytes"],
           "rss_after_idle_trim_bytes": memory[-1]["rss_bytes"],
           "num_5xx": soak.statuses.get("5xx", 0) + soak.statuses.get("invalid_5xx", 0),
           "last_vs_first_window_ttft_p50": (win[-1]["ttft_p50_s"] / win[0]["ttft_p50_s"]) if len(win) > 1 else None}
    out.write_text(json.dumps(res, indent=1))
    plot(series, out.with_suffix(".png"))
    return res


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    res = asyncio.run(main_async(args))
    print(json.dumps({k: res[k] for k in ("statuses", "rss_growth_after_warmup", "end", "num_5xx",
                                          "rss_idle_before_trim_bytes", "rss_after_idle_trim_bytes",
                                          "ttft_windows", "last_vs_first_window_ttft_p50")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
