"""Routing keys of an HTTP request, computed by the ingress and read by the request router (no Ray here).

Prefix keys come from text chunks, not tokens: the ingress holds no tokenizer, so a completion prompt (or a chat's
messages, serialized as ``role\\ncontent\\n`` per message) is cut into ``CHARS_PER_BLOCK``-character blocks and each
block gets a chained blake2b hash (``keys[i]`` names blocks ``0..i``; equal text prefixes give equal leading keys).
A block counts as ``BLOCK_TOKENS`` tokens for the routers (about 4 characters a token). A prompt given as token
ids is cut into ``BLOCK_TOKENS``-token blocks instead.
"""

from __future__ import annotations

import hashlib
import json

from pitstop.server.tenants import scoped_program
from dataclasses import asdict, dataclass
from typing import Any

BLOCK_TOKENS = 512  # tokens per router block
CHARS_PER_BLOCK = 4 * BLOCK_TOKENS  # characters per router block of a text prompt

# ``RouteInfo.kind``: how the request router places the request
KIND_ROUTE = "route"  # a generation request: the pitstop router chooses
KIND_PROGRAM = "program"  # a program endpoint: the replica that last got a turn of the program
KIND_REPLICA = "replica"  # a broadcast part: the ``replica_index``-th replica (sorted by replica id)
KIND_STATE = "state"  # debug: the request router writes its state into the call (``state``), any replica echoes it


@dataclass
class RouteInfo:
    """What the request router reads about one request (the first argument of every replica call).

    Attributes:
        kind: ``route``, ``program`` or ``replica`` (see the module constants).
        request_id: unique id of the HTTP request (ingress-side).
        prompt_len: estimated prompt tokens. output_len: ``max_tokens`` (or 16 when not given), tokens.
        prefix_keys: chained hashes of the prompt's router blocks. block_tokens: tokens per router block.
        program_key: the agent program, as the engine names it (``program_key``; None: a lone request).
        is_last_turn: the request ends its program.
        replica_index: for ``replica``: the index among the replicas sorted by id.
        router: override of the deployment's router name (the ingress' ``/debug/router``; None: the default).
        block_hashes: the engine's KV block hashes of the prompt (only for a router with the exact index; see
            ``prompt_hashes``). kv_block_tokens: tokens per KV block.
        moved: set by the request router when it moved a program's turn away from its home replica
            (``overloaded`` / ``gone``); the receiving replica counts it in its metrics.
        home: the replica (unique id) that now holds the program's KV (it was migrated there): the router makes
            it the program's home before routing.
        state: for ``state``: the request router's state (replicas, moves, exact-index matches of
            ``block_hashes``), written by the router, returned by the replica.
    """

    kind: str = KIND_ROUTE
    request_id: str = ""
    prompt_len: int = 0
    output_len: int = 16
    prefix_keys: tuple = ()
    block_tokens: int = BLOCK_TOKENS
    program_key: str | None = None
    is_last_turn: bool = True
    replica_index: int = 0
    router: str | None = None
    block_hashes: tuple = ()
    kv_block_tokens: int = 16
    moved: str | None = None
    state: dict | None = None
    home: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RouteInfo":
        d = dict(d)
        d["prefix_keys"] = tuple(d.get("prefix_keys", ()))
        d["block_hashes"] = tuple(d.get("block_hashes", ()))
        return cls(**d)


def _chain(blocks: list[bytes]) -> tuple:
    keys, prev = [], b""
    for b in blocks:
        prev = hashlib.blake2b(prev + b, digest_size=8).digest()
        keys.append(int.from_bytes(prev, "little"))
    return tuple(keys)


def text_prefix_keys(text: str, chars_per_block: int = CHARS_PER_BLOCK) -> tuple:
    """Chained hash per full ``chars_per_block``-character block of ``text``."""
    return _chain([text[s:s + chars_per_block].encode("utf-8", "surrogatepass")
                   for s in range(0, len(text) - chars_per_block + 1, chars_per_block)])


def token_prefix_keys(ids: list[int], block_tokens: int = BLOCK_TOKENS) -> tuple:
    """Chained hash per full ``block_tokens``-token block of ``ids``."""
    return _chain([json.dumps(ids[s:s + block_tokens]).encode()
                   for s in range(0, len(ids) - block_tokens + 1, block_tokens)])


def program_key(tenant: str | None, program_id: str) -> str:
    """A program's routing key: the engine's own id of the program (``pitstop.server.tenants.scoped_program``:
    the client's id, scoped by the caller's tenant when API keys are set), so that what a replica reports about
    its programs (migration) names them as the router does."""
    return scoped_program(tenant, program_id)


def chat_text(messages: Any) -> str:
    """The text of a chat's messages (``role\\ncontent\\n`` each; list contents: their text parts)."""
    parts = []
    for m in messages if isinstance(messages, list) else []:
        if not isinstance(m, dict):
            continue
        content = m.get("content")
        if isinstance(content, list):
            content = "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        parts.append(f"{m.get('role', '')}\n{content or ''}\n")
    return "".join(parts)


def route_info(path: str, body: bytes, tenant: str | None, request_id: str) -> RouteInfo:
    """Routing keys of a ``POST /v1/completions`` or ``/v1/chat/completions`` body (a body that does not parse
    gives a keyless ``RouteInfo``; the replica answers it with the single server's 400). ``tenant``: the caller's
    (``pitstop.server.tenants.tenant_of``; None without API keys)."""
    info = RouteInfo(request_id=request_id)
    try:
        req = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return info
    if not isinstance(req, dict):
        return info
    if path == "/v1/chat/completions":
        text = chat_text(req.get("messages"))
        info.prefix_keys, info.prompt_len = text_prefix_keys(text), len(text) // 4
    else:
        prompt = req.get("prompt")
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            prompt = prompt[0]  # several prompts: route by the first
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], list):
            prompt = prompt[0]
        if isinstance(prompt, str):
            info.prefix_keys, info.prompt_len = text_prefix_keys(prompt), len(prompt) // 4
        elif isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
            info.prefix_keys, info.prompt_len = token_prefix_keys(prompt), len(prompt)
    max_tokens = req.get("max_completion_tokens") or req.get("max_tokens")
    info.output_len = max_tokens if isinstance(max_tokens, int) and max_tokens > 0 else 16
    pid = req.get("program_id", req.get("job_id"))
    if isinstance(pid, str):
        info.program_key = program_key(tenant, pid)
        last = req.get("is_last_turn", req.get("is_last_step"))
        info.is_last_turn = True if last is None else bool(last)
    return info


def bearer_token(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The ``Authorization: Bearer`` token of ASGI headers, or None."""
    for k, v in headers:
        if k.lower() == b"authorization":
            auth = v.decode("latin-1")
            return auth[7:].strip() if auth.lower().startswith("bearer ") else None
    return None
