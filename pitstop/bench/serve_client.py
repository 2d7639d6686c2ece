"""Async load generator for any OpenAI-compatible ``/v1/completions`` endpoint, and its metrics.

Metrics as vLLM's ``benchmarks/benchmark_serving.py`` defines them: TTFT = first non-empty text chunk
minus send time; TPOT = (E2EL - TTFT) / (output tokens - 1); ITL = gaps between text chunks; E2EL = last
byte minus send time (all ms in reports); goodput = completed requests meeting every SLO per second.
Arrivals: trace times, or a gamma process with mean rate ``request_rate`` and shape ``burstiness``
(1.0 = Poisson), as vLLM's ``--burstiness``.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field

import httpx

from pitstop.bench.serve_workloads import BenchRequest
from pitstop.workloads.lengths import percentile


@dataclass
class RequestResult:
    """What one request measured (seconds, relative to the run's start for ``start_s``)."""

    ok: bool
    start_s: float = 0.0
    prompt_len: int = 0
    output_len: int = 0
    ttft_s: float = 0.0
    e2el_s: float = 0.0
    itl_s: list[float] = field(default_factory=list)
    chunk_times_s: list[float] = field(default_factory=list)
    error: str = ""

    @property
    def tpot_s(self) -> float:
        return (self.e2el_s - self.ttft_s) / (self.output_len - 1) if self.output_len > 1 else 0.0


def gamma_arrivals(n: int, rate: float, burstiness: float, seed: int) -> list[float]:
    """Arrival times (s) with gamma inter-arrival gaps: mean ``1/rate``, shape ``burstiness``."""
    if math.isinf(rate):
        return [0.0] * n
    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(n):
        out.append(t)
        t += rng.gammavariate(burstiness, 1.0 / (rate * burstiness))
    return out


async def probe_ignore_eos(client: httpx.AsyncClient, url: str, model: str) -> bool:
    """True if the server accepts ``ignore_eos`` (vLLM extra); servers that reject unknown fields say 4xx."""
    try:
        r = await client.post(url, json={"model": model, "prompt": "hi", "max_tokens": 1, "ignore_eos": True})
    except httpx.HTTPError:
        return False
    return r.status_code == 200


class StreamError(Exception):
    """A streamed OpenAI response failed: a non-200 status or an ``error`` event (message <= 200 chars)."""


async def sse_json(r: httpx.Response) -> AsyncIterator[dict]:
    """The JSON payloads of an OpenAI server-sent-event stream, up to ``data: [DONE]``.

    Raises:
        StreamError: the response is not 200, or the stream carries an ``{"error": ...}`` event.
        json.JSONDecodeError: a malformed event.
    """
    if r.status_code != 200:
        raise StreamError(f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
    async for line in r.aiter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        msg = json.loads(data)
        if "error" in msg:
            raise StreamError(str(msg["error"])[:200])
        yield msg


async def _one(client: httpx.AsyncClient, url: str, model: str, req: BenchRequest, ignore_eos: bool,
               t0: float) -> RequestResult:
    body = {"model": model, "prompt": req.prompt, "max_tokens": req.output_len, "temperature": 0.0,
            "stream": True, "stream_options": {"include_usage": True}}
    if ignore_eos:
        body["ignore_eos"] = True
    res = RequestResult(ok=False, prompt_len=req.prompt_len)
    start = time.perf_counter()
    res.start_s = start - t0
    last = start
    chunks = 0
    usage_out = None
    try:
        async with client.stream("POST", url, json=body) as r:
            async for msg in sse_json(r):
                if msg.get("usage"):
                    usage_out = msg["usage"].get("completion_tokens")
                    res.prompt_len = msg["usage"].get("prompt_tokens") or res.prompt_len
                choices = msg.get("choices") or []
                if choices and choices[0].get("text"):
                    now = time.perf_counter()
                    if chunks == 0:
                        res.ttft_s = now - start
                    else:
                        res.itl_s.append(now - last)
                    res.chunk_times_s.append(now - t0)
                    last = now
                    chunks += 1
        res.e2el_s = time.perf_counter() - start
        res.output_len = usage_out if usage_out is not None else chunks
        res.ok = chunks > 0
        if not res.ok:
            res.error = "no text received"
    except StreamError as e:
        res.error = str(e)
    except (httpx.HTTPError, json.JSONDecodeError) as e:
        res.error = repr(e)[:200]
    return res


async def run_load(base_url: str, model: str, requests: list[BenchRequest], arrivals: list[float],
                   api_key: str | None = None, max_concurrency: int | None = None, duration_s: float | None = None,
                   use_ignore_eos: bool = True, timeout_s: float = 600.0) -> tuple[list[RequestResult], float, bool]:
    """Send ``requests`` at ``arrivals`` (s); returns (results, wall time in s, whether ignore_eos was used).

    Requests whose arrival is past ``duration_s`` are not sent.
    """
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    url = base_url.rstrip("/") + "/v1/completions"
    limits = httpx.Limits(max_connections=max_concurrency or 1000, max_keepalive_connections=100)
    async with httpx.AsyncClient(headers=headers, timeout=timeout_s, limits=limits) as client:
        ignore_eos = use_ignore_eos and await probe_ignore_eos(client, url, model)
        sem = asyncio.Semaphore(max_concurrency) if max_concurrency else None
        t0 = time.perf_counter()

        async def fire(req: BenchRequest, at: float) -> RequestResult:
            delay = at - (time.perf_counter() - t0)
            if delay > 0:
                await asyncio.sleep(delay)
            if sem is None:
                return await _one(client, url, model, req, ignore_eos, t0)
            async with sem:
                return await _one(client, url, model, req, ignore_eos, t0)

        pairs = [(r, a) for r, a in zip(requests, arrivals) if duration_s is None or a <= duration_s]
        results = await asyncio.gather(*[fire(r, a) for r, a in pairs])
        return list(results), time.perf_counter() - t0, ignore_eos


def parse_slo(text: str | None) -> dict[str, float]:
    """``"ttft=2000,tpot=200,e2el=20000"`` (ms) -> ``{"ttft": 2000.0, ...}``."""
    out: dict[str, float] = {}
    for part in (text or "").split(","):
        if part.strip():
            k, _, v = part.partition("=")
            if k.strip() not in ("ttft", "tpot", "e2el"):
                raise ValueError(f"--slo: unknown metric {k!r} (use ttft, tpot, e2el)")
            out[k.strip()] = float(v)
    return out


def meets_slo(r: RequestResult, slo: dict[str, float]) -> bool:
    vals = {"ttft": r.ttft_s * 1e3, "tpot": r.tpot_s * 1e3, "e2el": r.e2el_s * 1e3}
    return r.ok and all(vals[k] <= v for k, v in slo.items())


def _stats(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {"mean": float("nan"), "median": float("nan"), "p90": float("nan"), "p99": float("nan")}
    return {"mean": sum(xs) / len(xs), "median": percentile(xs, 50), "p90": percentile(xs, 90),
            "p99": percentile(xs, 99)}


def summarize(results: list[RequestResult], wall_s: float, slo: dict[str, float]) -> dict:
    """vLLM-style summary: counts, throughputs (per s), latency stats in ms, goodput and SLO attainment."""
    done = [r for r in results if r.ok]
    out_tokens = sum(r.output_len for r in done)
    in_tokens = sum(r.prompt_len for r in done)
    good = [r for r in done if meets_slo(r, slo)]
    return {
        "completed": len(done), "failed": len(results) - len(done), "duration_s": wall_s,
        "total_input_tokens": in_tokens, "total_output_tokens": out_tokens,
        "request_throughput": len(done) / wall_s, "input_throughput": in_tokens / wall_s,
        "output_throughput": out_tokens / wall_s, "total_token_throughput": (in_tokens + out_tokens) / wall_s,
        "goodput": len(good) / wall_s if slo else None,
        "slo_attainment": len(good) / len(results) if slo and results else None,
        "ttft_ms": _stats([r.ttft_s * 1e3 for r in done]),
        "tpot_ms": _stats([r.tpot_s * 1e3 for r in done if r.output_len > 1]),
        "itl_ms": _stats([x * 1e3 for r in done for x in r.itl_s]),
        "e2el_ms": _stats([r.e2el_s * 1e3 for r in done]),
        "errors": sorted({r.error for r in results if not r.ok})[:5],
    }


def results_json(results: list[RequestResult]) -> list[dict]:
    return [{k: v for k, v in asdict(r).items() if k not in ("itl_s", "chunk_times_s")} | {"tpot_s": r.tpot_s}
            for r in results]
