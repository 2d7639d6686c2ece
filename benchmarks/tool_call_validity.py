"""Tool-call validity (issue 15): with ``tool_choice="required"`` on the default model, the fraction of responses
whose calls parse and validate (``jsonschema``) against >= 200 real-world tool schemas.

Source of the schemas: the Berkeley Function Calling Leaderboard's data as shipped in the PyPI package
``bfcl-eval`` 2026.3.23 (Apache-2.0, ShishirPatil/gorilla; installed with ``--no-deps`` by ``make install``, only
its data files are read, nothing of it is imported). Files ``BFCL_v4_{simple_python, multiple, parallel,
parallel_multiple, live_simple, live_multiple}.json``: every function definition, first occurrence of each name,
in that order, with the user question of the entry it came from. BFCL writes parameter types in its own
vocabulary (``dict``, ``float``, ``tuple``, ``any``, Java names); they are mapped to JSON Schema types with the
table of ``bfcl_eval/constants/type_mappings.py`` (``GORILLA_TO_OPENAPI``, re-stated below), and dots in names
become underscores, as BFCL's OpenAI handler does.

Each schema is one chat request (``tools=[that tool]``, ``tool_choice="required"``, greedy, ``max_tokens``)
to a ``pitstop serve`` started here (or ``--base-url``). Reported: valid / total, failures by reason (no call,
arguments not JSON, schema violation, length), and the schemas the server rejected with a 400 (unsupported by
the grammar backend, or invalid), grouped by message.

    .venv/bin/python benchmarks/tool_call_validity.py [--limit 240] [--concurrency 8] [--parallel-tool-calls false]
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import jsonschema

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_process import start_serve  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FILES = ("simple_python", "multiple", "parallel", "parallel_multiple", "live_simple", "live_multiple")
TYPE_MAP = {"integer": "integer", "number": "number", "float": "number", "string": "string", "boolean": "boolean",
            "bool": "boolean", "array": "array", "list": "array", "dict": "object", "object": "object",
            "tuple": "array", "any": "string", "byte": "integer", "short": "integer", "long": "integer",
            "double": "number", "char": "string", "ArrayList": "array", "Array": "array", "HashMap": "object",
            "Hashtable": "object", "Queue": "array", "Stack": "array", "Any": "string", "String": "string",
            "Bigint": "integer", "Boolean": "boolean"}
KEY = "validity-key"


def bfcl_data_dir() -> Path:
    """``bfcl_eval/data`` of the installed package (located, not imported)."""
    spec = importlib.util.find_spec("bfcl_eval")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("bfcl-eval is not installed: pip install --no-deps bfcl-eval==2026.3.23 (make install does)")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def to_json_schema(s: object) -> object:
    """A BFCL parameter schema as JSON Schema (types mapped at schema positions only)."""
    if not isinstance(s, dict):
        return s
    out = dict(s)
    if isinstance(out.get("type"), str):
        out["type"] = TYPE_MAP.get(out["type"], out["type"])
    if isinstance(out.get("properties"), dict):
        out["properties"] = {k: to_json_schema(v) for k, v in out["properties"].items()}
    for key in ("items", "additionalProperties"):
        if isinstance(out.get(key), dict):
            out[key] = to_json_schema(out[key])
    for key in ("anyOf", "oneOf", "allOf"):
        if isinstance(out.get(key), list):
            out[key] = [to_json_schema(v) for v in out[key]]
    return out


def load_cases(limit: int) -> list[dict]:
    """The first ``limit`` distinct functions: ``{"id", "question", "tool"}``."""
    data, seen, cases = bfcl_data_dir(), set(), []
    for name in FILES:
        for line in (data / f"BFCL_v4_{name}.json").read_text().splitlines():
            entry = json.loads(line)
            question = entry["question"][0] if entry.get("question") else []
            for fn in entry.get("function") or []:
                fname = re.sub(r"\.", "_", fn["name"])
                if fname in seen:
                    continue
                seen.add(fname)
                tool = {"type": "function", "function": {"name": fname, "description": fn.get("description", ""),
                                                         "parameters": to_json_schema(fn.get("parameters") or {})}}
                cases.append({"id": entry["id"], "question": question, "tool": tool})
                if len(cases) >= limit:
                    return cases
    return cases


def start_server(log: Path) -> tuple[subprocess.Popen, str]:
    return start_serve(["--api-key", KEY, "--max-model-len", "4096", "--kv-cache-memory", "512MiB",
                        "--max-num-seqs", "16", "--max-queue", "512"], log)


def judge(case: dict, status: int, body: dict) -> tuple[str, str]:
    """``(outcome, detail)``: ``valid``, ``rejected`` (400), ``no_call``, ``bad_json``, ``invalid``, ``error``."""
    if status == 400:
        return "rejected", body.get("error", {}).get("message", "")
    if status != 200:
        return "error", f"HTTP {status}: {str(body)[:200]}"
    choice = body["choices"][0]
    calls = choice["message"].get("tool_calls") or []
    if not calls:
        return "no_call", f"finish_reason={choice['finish_reason']}"
    schema = case["tool"]["function"]["parameters"]
    for call in calls:
        if call["function"]["name"] != case["tool"]["function"]["name"]:
            return "invalid", f"wrong name {call['function']['name']!r}"
        try:
            args = json.loads(call["function"]["arguments"])
        except ValueError as e:
            return "bad_json", str(e)
        try:
            jsonschema.validate(args, schema)
        except jsonschema.ValidationError as e:
            return "invalid", e.message[:200]
    return "valid", ""


def run(url: str, cases: list[dict], max_tokens: int, concurrency: int, parallel: bool) -> list[dict]:
    client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=600)

    def one(case: dict) -> dict:
        t0 = time.monotonic()
        r = client.post("/v1/chat/completions", json={
            "messages": case["question"], "tools": [case["tool"]], "tool_choice": "required",
            "parallel_tool_calls": parallel, "temperature": 0, "max_tokens": max_tokens})
        outcome, detail = judge(case, r.status_code, r.json())
        choice = r.json()["choices"][0] if r.status_code == 200 else {}
        msg = choice.get("message") or {}
        raw = msg.get("content") or json.dumps([c["function"] for c in msg.get("tool_calls") or []])
        return {"id": case["id"], "name": case["tool"]["function"]["name"], "outcome": outcome, "detail": detail,
                "finish_reason": choice.get("finish_reason"), "output": raw[:300] if outcome != "valid" else None,
                "latency_s": round(time.monotonic() - t0, 3),
                "completion_tokens": (r.json().get("usage") or {}).get("completion_tokens") if r.status_code == 200
                else None}

    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(one, cases))


def summarize(results: list[dict]) -> dict:
    counts = collections.Counter(r["outcome"] for r in results)
    finishes = collections.Counter(f"{r['outcome']}/{r.get('finish_reason')}" for r in results)
    answered = [r for r in results if r["outcome"] != "rejected"]
    rejected = collections.Counter(re.sub(r"\s+", " ", r["detail"])[:160] for r in results if r["outcome"] == "rejected")
    return {"schemas": len(results), "outcomes": dict(counts), "outcome_by_finish_reason": dict(finishes),
            "valid_fraction_of_answered": counts["valid"] / len(answered) if answered else None,
            "valid_fraction_of_all": counts["valid"] / len(results) if results else None,
            "rejected_by_reason": dict(rejected.most_common()),
            "failures": [r for r in results if r["outcome"] not in ("valid", "rejected")][:50]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--limit", type=int, default=240, help="schemas to try (>= 200 for the issue's figure)")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--parallel-tool-calls", choices=["true", "false"], default="true",
                   help="false: exactly one call per response (the array's maxItems is 1)")
    p.add_argument("--base-url", default=None, help="an already running server (default: start one here)")
    p.add_argument("--output", default=str(ROOT / "benchmarks" / "tool_call_validity" / "result.json"))
    args = p.parse_args(argv)
    cases = load_cases(args.limit)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    proc = None
    url = args.base_url
    if url is None:
        proc, url = start_server(out.with_suffix(".server.log"))
    try:
        t0 = time.monotonic()
        results = run(url, cases, args.max_tokens, args.concurrency, args.parallel_tool_calls == "true")
        wall = time.monotonic() - t0
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(60)
    summary = {"source": "bfcl-eval 2026.3.23 (Apache-2.0), files " + ", ".join(FILES), "wall_s": round(wall, 1),
               "max_tokens": args.max_tokens, "parallel_tool_calls": args.parallel_tool_calls == "true",
               **summarize(results), "results": results}
    out.write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k not in ("results", "failures")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
