"""The engine's KV block hashes of an HTTP request's prompt, computed at the ingress for the exact prefix index.

A router with ``index="exact"`` matches a request against the block hashes the replicas' KV events name
(``pitstop.kv_events``), so the ingress must name the request's blocks the way the replica's engine will: the
same tokenizer, the same prompt rendering (``ServingCompletions.prompts`` / ``ServingChat.prompt_ids``: chat
template with the offered tools), the same tenant-scoped ``cache_salt``, and
``pitstop.engine.block_pool.prefix_block_hashes``. What the ingress cannot know -- a chat's earlier tool-call
turns restored as the model generated them (``--tool-history generated``, kept on the replica) -- makes the
match stop at the first such turn: shorter, never wrong (hashes are chained).
"""

from __future__ import annotations

import json
from typing import Any

from pitstop.engine.block_pool import prefix_block_hashes
from pitstop.server.tenants import scoped_salt, tenant_of

COMPLETIONS, CHAT = "/v1/completions", "/v1/chat/completions"


class PromptHasher:
    """Tokenizes prompts as the replicas do and returns their KV block hashes.

    Args:
        model: the served model (as ``EngineConfig.model``). block_size: tokens per KV block.
        tool_call_parser: the ``--tool-call-parser`` name (None: from the chat template).
        api_keys: the server's keys (tenants); cache_isolation: ``none`` or ``per-key``.

    Raises:
        pitstop.model.resolve.ModelNotFoundError / ValueError: the model or its tokenizer cannot be loaded.
    """

    def __init__(self, model: str, block_size: int, tool_call_parser: str | None = None,
                 api_keys: list[str] | None = None, cache_isolation: str = "none") -> None:
        from pitstop.entrypoints.engine_builder import load_tokenizer
        from pitstop.model.resolve import resolve_model
        from pitstop.tools.registry import DEFAULT_PARSER, get_parser, infer_parser

        self.tokenizer = load_tokenizer(resolve_model(model))
        name = tool_call_parser or infer_parser(getattr(self.tokenizer, "chat_template", None)) or DEFAULT_PARSER
        self.parser = get_parser(name)
        self.block_size = block_size
        self.api_keys = list(api_keys or [])
        self.cache_isolation = cache_isolation

    def block_hashes(self, path: str, body: bytes, api_key: str | None) -> tuple[int, ...]:
        """The prompt's KV block hashes; empty when the body is not a valid single-prompt request (the replica
        answers it) or cannot be rendered."""
        return self.hash_prompt(path, body, api_key)[1]

    def hash_prompt(self, path: str, body: bytes, api_key: str | None) -> tuple[int | None, tuple[int, ...]]:
        """``(prompt tokens, block hashes)``; ``(None, ())`` when the body is not a valid single-prompt request
        or cannot be rendered. The token count replaces the front's text estimate (routers compare cached tokens
        with it)."""
        try:
            req = json.loads(body)
            ids = self._chat_ids(req) if path == CHAT else self._completion_ids(req)
        except Exception:  # noqa: BLE001 - any invalid body: no hashes, the replica answers with its 400
            return None, ()
        if ids is None:
            return None, ()
        tenant = tenant_of(api_key, self.api_keys) if api_key and self.api_keys else None
        salt = req.get("cache_salt") if isinstance(req.get("cache_salt"), str) else None
        hashes = prefix_block_hashes(ids, self.block_size, scoped_salt(tenant, salt, self.cache_isolation))
        return len(ids), tuple(hashes)

    def _completion_ids(self, req: dict[str, Any]) -> list[int] | None:
        p = req.get("prompt")
        if isinstance(p, str):
            return list(self.tokenizer(p).input_ids)
        if isinstance(p, list) and p and all(isinstance(x, int) for x in p):
            return p
        if isinstance(p, list) and len(p) == 1:
            return self._completion_ids({"prompt": p[0]})
        return None

    def _chat_ids(self, body: dict[str, Any]) -> list[int]:
        from pitstop.server.protocol import ChatCompletionRequest
        from pitstop.tools.chat import apply_chat_template
        from pitstop.tools.choice import normalize_tools, parse_tool_choice

        req = ChatCompletionRequest.model_validate(body)
        tools = normalize_tools(req.tools)
        offered = parse_tool_choice(req.tool_choice, tools).mode != "none"
        text = apply_chat_template(self.tokenizer, [m.as_dict() for m in req.messages], tools if offered else [],
                                   self.parser, add_generation_prompt=req.add_generation_prompt,
                                   **(req.chat_template_kwargs or {}))
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)
