"""The offline API, vLLM-style: ``LLM(model=...).generate(prompts, sampling_params)`` and ``chat``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from tqdm.auto import tqdm

from pitstop.config import EngineConfig
from pitstop.entrypoints.engine_builder import build_engine
from pitstop.outputs import RequestOutput, ToolCall
from pitstop.sampling_params import SamplingParams

Prompt = str | list[int]
Message = dict[str, Any]


class LLM:
    """Generate from a batch of prompts with continuous batching on one engine.

    Args:
        model: HF folder, .gguf file, or ``"SmolLM2-135M-Instruct"`` (the embedded default).
        dtype: "auto" (default: bfloat16 where this CPU computes it natively, float32 elsewhere),
            "bfloat16" (emulated and slow without AMX / AVX512-BF16: one warning) or "float32".
        kv_cache_memory: KV cache size: bytes or a string like "1GiB".
        max_model_len: context limit in tokens (default: the model's, capped at 8192).
        enable_prefix_caching: reuse KV blocks of shared prefixes.
        tool_history: ``generated`` (default): an assistant message with ``tool_calls`` that ``chat`` returned is
            rendered, when it comes back in a later conversation, as the text the model generated (the earlier
            turn's KV cache is reused to its end; ``pitstop.tools.raw_turns``); ``template``: as the chat
            template renders the calls.
        **kwargs: any other ``EngineConfig`` field (block_size, max_num_seqs, max_num_batched_tokens,
            enable_chunked_prefill, num_threads, seed, scheduling_policy).

    Raises:
        pitstop.model.resolve.ModelNotFoundError: the model cannot be found or read.
        ValueError: invalid settings.
    """

    def __init__(self, model: str = "SmolLM2-135M-Instruct", dtype: str = "auto",
                 kv_cache_memory: int | str = "1GiB", max_model_len: int | None = None,
                 enable_prefix_caching: bool = True, tool_history: str = "generated", **kwargs: Any) -> None:
        from pitstop.tools.raw_turns import raw_turns_for

        self.raw_turns = raw_turns_for(tool_history)
        config = EngineConfig(model=model, dtype=dtype, kv_cache_memory=kv_cache_memory,
                              max_model_len=max_model_len, enable_prefix_caching=enable_prefix_caching,
                              **kwargs)
        self.llm_engine = build_engine(config)

    @property
    def model_dir(self):
        """Path of the HF folder the weights were loaded from."""
        return self.llm_engine.model_dir

    def get_tokenizer(self):
        return self.llm_engine.tokenizer

    def generate(self, prompts: Prompt | Sequence[Prompt],
                 sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
                 use_tqdm: bool = True, **request_kwargs: Any) -> list[RequestOutput]:
        """Generate completions for every prompt (text or token ids), in input order.

        The whole call is validated before any work: one bad prompt raises ``ValueError`` naming its
        index, and nothing is queued. ``request_kwargs`` (``program_id``, ``priority``, ``cache_salt``)
        are given per request as lists or once for all.

        ``SamplingParams(structured_outputs=StructuredOutputsParams(json=schema))`` (or ``regex``, ``choice``,
        ``grammar``, ``json_object``) constrains a request's output; a request whose grammar fails to compile in
        time comes back finished with ``RequestOutput.error`` set, the others are unaffected.

        Raises:
            ValueError: an empty prompt, a prompt longer than ``max_model_len``, out-of-vocabulary ids,
                a sampling_params list of the wrong length, or an invalid / unsupported ``structured_outputs``
                spec (the message names the request index, the field and the feature).
        """
        if isinstance(prompts, str) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        prompts = list(prompts)
        params = self._params_list(sampling_params, len(prompts))
        engine = self.llm_engine
        token_ids = []
        for i, p in enumerate(prompts):
            ids = engine.tokenize(p) if isinstance(p, str) else list(p)
            engine.validate_prompt(ids, index=i)
            token_ids.append(ids)
        checked: set[int] = set()
        for i, sp in enumerate(params):
            if sp.structured_outputs is not None and id(sp) not in checked:
                engine.validate_structured_outputs(sp, index=i)
                checked.add(id(sp))
        kwargs = [{k: (v[i] if isinstance(v, (list, tuple)) else v) for k, v in request_kwargs.items()}
                  for i in range(len(prompts))]
        ids = [engine.add_request(None, p if isinstance(p, str) else None, sp, prompt_token_ids=t, **kw)
               for p, sp, t, kw in zip(prompts, params, token_ids, kwargs)]
        return self._run(ids, use_tqdm)

    def chat(self, messages: list[Message] | list[list[Message]],
             sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
             use_tqdm: bool = True, add_generation_prompt: bool = True,
             chat_template_kwargs: dict | None = None, tools: list[dict] | None = None,
             tool_choice: str | dict | None = None, parallel_tool_calls: bool = True,
             tool_call_parser: str | None = None, **request_kwargs: Any) -> list[RequestOutput]:
        """Apply the tokenizer's chat template to one conversation or a list of them, then generate.

        ``tools`` (OpenAI function definitions) and ``tool_choice`` (``none``, ``auto``, ``required`` or
        ``{"type": "function", "function": {"name": ...}}``) work as in the server (``pitstop.tools``):
        ``required`` / a named tool constrain decoding (``SamplingParams.structured_outputs``), ``auto``
        parses calls in the ``tool_call_parser`` format (default: inferred from the chat template). Each
        completion's ``tool_calls`` then holds the parsed calls.

        Raises:
            ValueError: a bad tool, ``tool_choice`` or sampling parameter (the message names the field), or
                ``required`` / a named tool with sampling params that already carry ``structured_outputs``.
        """
        from pitstop.tools.chat import apply_chat_template
        from pitstop.tools.choice import constraint, normalize_tools, parse_tool_choice

        conversations = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        tool_defs = normalize_tools(tools)
        choice = parse_tool_choice(tool_choice, tool_defs)
        offered = tool_defs if choice.mode != "none" else []
        parser = self._tool_parser(tool_call_parser)
        tok = self.get_tokenizer()
        prompts = []
        for conv in conversations:
            if self.raw_turns is not None:
                conv = self.raw_turns.restore(None, conv)
            text = apply_chat_template(tok, conv, offered, parser, add_generation_prompt=add_generation_prompt,
                                       **(chat_template_kwargs or {}))
            prompts.append(list(tok(text, add_special_tokens=False).input_ids))
        params = self._params_list(sampling_params, len(prompts))
        so = constraint(tool_defs, choice, parallel_tool_calls, parser)
        if so is not None:
            if any(p.structured_outputs is not None for p in params):
                raise ValueError("tool_choice: 'required', a named tool or strict tools under 'auto' cannot be "
                                 "combined with SamplingParams.structured_outputs")
            params = [replace(p, structured_outputs=so) for p in params]
        outs = self.generate(prompts, params, use_tqdm=use_tqdm, **request_kwargs)
        if offered:
            _attach_tool_calls(outs, choice, parser, tool_defs)
            if self.raw_turns is not None:
                for c in (c for out in outs for c in out.outputs if c.tool_calls):
                    self.raw_turns.remember(None, c.text, c.content, [(t.id, t.name, t.arguments) for t in c.tool_calls])
        return outs

    def _tool_parser(self, name: str | None):
        from pitstop.tools.registry import get_parser, infer_parser
        return get_parser(name or infer_parser(getattr(self.get_tokenizer(), "chat_template", None)))

    @staticmethod
    def _params_list(sp, n: int) -> list[SamplingParams]:
        if sp is None:
            return [SamplingParams() for _ in range(n)]
        if isinstance(sp, SamplingParams):
            return [sp] * n
        sp = list(sp)
        if len(sp) != n:
            raise ValueError(f"sampling_params has {len(sp)} entries for {n} prompts")
        return sp

    def _run(self, ids: list[str], use_tqdm: bool) -> list[RequestOutput]:
        engine = self.llm_engine
        done: dict[str, RequestOutput] = {}
        bar = tqdm(total=len(ids), desc="Processed prompts", disable=not use_tqdm or len(ids) < 2,
                   dynamic_ncols=True)
        try:
            while engine.has_unfinished_requests():
                for out in engine.step():
                    if out.finished:
                        done[out.request_id] = out
                        bar.update(1)
        except BaseException:
            engine.abort_request(ids)  # never leave blocks held by a failed call
            raise
        finally:
            bar.close()
        return [done[i] for i in ids]


def _attach_tool_calls(outs: list[RequestOutput], choice: Any, parser: Any, tools: list[dict]) -> None:
    """Set ``tool_calls`` on every completion: the calls its text makes under ``choice``."""
    import uuid

    from pitstop.tools.base import calls_of, content_of
    from pitstop.tools.choice import extractor_for

    for out in outs:
        for c in out.outputs:
            ex = extractor_for(choice, parser, tools)
            events = ex.feed(c.text) + ex.finish() if ex is not None else []
            c.tool_calls = [ToolCall(f"call_{uuid.uuid4().hex[:24]}", call.name, call.arguments)
                            for call in calls_of(events)]
            c.content = (content_of(events) or "") if ex is not None else c.text
