"""Async load generator for any OpenAI-compatible ``/v1/completions`` endpoint (one ``RequestResult`` each).

TTFT = first non-empty text chunk minus send time; ITL = gaps between text chunks; E2EL = last byte minus send
time. The summary of the results (``pitstop.replay.serving``) follows vLLM's ``benchmarks/benchmark_serving.py``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import httpx

from pitstop.bench.serve_workloads import BenchRequest
from pitstop.replay.serving import RequestResult


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
