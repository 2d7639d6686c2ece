"""Replays agent programs closed-loop against an OpenAI-compatible server (``pitstop bench agents --backend http``).

Requests go to ``/v1/completions`` with pitstop's (and Continuum's) program hints.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Sequence

import httpx

from pitstop.bench.serve_client import StreamError, sse_json
from pitstop.replay.agent_replay import ProgramRecord, ProgramReplay, PromptBuilder, TurnRecord
from pitstop.workloads.agent_program import AgentProgram


async def _http_turn(client, url: str, model: str, prompt: list[int], max_tokens: int, program_id: str,
                     last: bool, tool_name: str | None, t0: float, tr: TurnRecord) -> tuple[list[int] | None, str]:
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}, "return_token_ids": True,
            "program_id": program_id, "is_last_turn": last, "job_id": program_id, "is_last_step": last}
    if tool_name is not None and not last:
        body["tool_name"] = tool_name
    text, ids, got_ids = [], [], False
    try:
        async with client.stream("POST", url + "/v1/completions", json=body) as r:
            async for msg in sse_json(r):
                usage = msg.get("usage")
                if usage:
                    tr.output_len = usage.get("completion_tokens") or tr.output_len
                    details = usage.get("prompt_tokens_details") or {}
                    tr.cached_tokens = int(details.get("cached_tokens") or 0)
                for ch in msg.get("choices") or []:
                    if ch.get("token_ids"):
                        ids.extend(ch["token_ids"])
                        got_ids = True
                    if ch.get("text"):
                        if tr.first_token_s is None:
                            tr.first_token_s = time.perf_counter() - t0
                        text.append(ch["text"])
    except StreamError as e:  # non-200 or an error event
        tr.ok, tr.error = False, str(e)
        return None, ""
    except (httpx.HTTPError, OSError, ValueError) as e:  # transport, protocol and JSON errors
        tr.ok, tr.error = False, repr(e)[:200]
        return None, ""
    tr.finished_s = time.perf_counter() - t0
    if tr.first_token_s is None:
        tr.first_token_s = tr.finished_s
    tr.computed_prompt_tokens = tr.prompt_len - tr.cached_tokens  # the server's view; recomputes not visible
    return (ids if got_ids else None), "".join(text)


def run_http_backend(base_url: str, model: str, programs: Sequence[AgentProgram], arrivals: Sequence[float],
                     vocab_size: int, seed: int = 0, tokenizer: Any = None, api_key: str | None = None,
                     report_tool_results: bool = True, timeout_s: float = 3600.0
                     ) -> tuple[list[ProgramRecord], float, dict]:
    """Replay over HTTP. Output ids carried to the next turn: the server's ``token_ids`` if it returns them
    (vLLM ``return_token_ids``), else the output text re-encoded with ``tokenizer``, else random ids of the
    reported length (then the output part of the context is not reused; counted in ``info``)."""
    url = base_url.rstrip("/")
    if url.endswith("/v1"):
        url = url[:-3]
    info = {"turns_with_server_token_ids": 0, "turns_retokenized": 0, "turns_random_output_ids": 0}

    replay = ProgramReplay(programs, arrivals, seed, vocab_size)

    async def main() -> tuple[list[ProgramRecord], float]:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=200)
        async with httpx.AsyncClient(headers=headers, timeout=timeout_s, limits=limits) as client:
            t0 = time.perf_counter()

            async def program(i: int, prog: AgentProgram) -> ProgramRecord:
                next_at: float | None = arrivals[i]
                for k in range(prog.num_turns):
                    delay = next_at - (time.perf_counter() - t0)
                    if delay > 0:
                        await asyncio.sleep(delay)
                    prev = prog.turns[k - 1] if k else None
                    if prev is not None and report_tool_results:
                        try:
                            await client.post(f"{url}/v1/programs/{prog.program_id}/tool_result",
                                              json={"tool_name": prev.tool_name or "unknown",
                                                    "duration_s": prev.tool_time_s})
                        except httpx.HTTPError:
                            pass
                    tq = replay.start_turn(i, k, time.perf_counter() - t0)
                    tr = replay.records[i].turns[k]
                    ids, text = await _http_turn(client, url, model, tq.prompt, tq.max_tokens, tq.program_id,
                                                 tq.is_last_turn, tq.tool_name, t0, tr)
                    if not tr.ok:
                        break
                    if ids is not None:
                        info["turns_with_server_token_ids"] += 1
                    elif tokenizer is not None and text:
                        info["turns_retokenized"] += 1
                    else:
                        info["turns_random_output_ids"] += 1
                    if ids is None:
                        ids = _fallback_ids(replay.builders[i], tokenizer, text, tr)
                    next_at = replay.finish_turn(i, k, ids, tr.finished_s, first_token_s=tr.first_token_s,
                                                 cached_tokens=tr.cached_tokens,
                                                 computed_prompt_tokens=tr.computed_prompt_tokens)
                    if next_at is None:
                        break
                try:
                    await client.delete(f"{url}/v1/programs/{prog.program_id}")
                except httpx.HTTPError:
                    pass
                return replay.records[i]

            before = await _scrape_program_metrics(client, url)
            recs = await asyncio.gather(*[program(i, p) for i, p in enumerate(programs)])
            wall = time.perf_counter() - t0
            after = await _scrape_program_metrics(client, url)
            info["server_metrics_delta"] = {k: v - before.get(k, 0.0) for k, v in after.items()}
            return list(recs), wall

    records, wall = asyncio.run(main())
    return records, wall, info


async def _scrape_program_metrics(client, url: str) -> dict[str, float]:
    """Counters about pins / reuse / re-prefill from a Prometheus ``/metrics`` (empty if there is none)."""
    try:
        r = await client.get(url + "/metrics")
    except (httpx.HTTPError, OSError):
        return {}
    if r.status_code != 200:
        return {}
    out: dict[str, float] = {}
    for line in r.text.splitlines():
        if line and not line.startswith("#") and any(w in line for w in ("pin", "reprefill", "reused", "expir")):
            key, _, val = line.rpartition(" ")
            try:
                out[key] = float(val)
            except ValueError:
                pass
    return out


def _fallback_ids(builder: PromptBuilder, tokenizer: Any, text: str, tr: TurnRecord) -> list[int]:
    # No server token ids: re-encoding the text is lossy but keeps most of the output reusable.
    ids = list(tokenizer(text, add_special_tokens=False).input_ids) if tokenizer is not None and text else []
    ids = ids[:tr.output_len]  # keep the planned context length (programs were clipped to max_model_len)
    return ids + [builder.rng.randint(builder.lo, builder.hi) for _ in range(tr.output_len - len(ids))]
