"""Pydantic models of the OpenAI-compatible API (completions, chat completions, models, errors).

Field names follow OpenAI's API reference (https://platform.openai.com/docs/api-reference) and vLLM's
extra sampling parameters (``top_k``, ``min_p``, ``ignore_eos``, ``priority``, ``cache_salt``, ...;
vLLM ``vllm/entrypoints/openai/protocol.py``). Unknown fields are ignored, as OpenAI does; a known
field of the wrong type is a 400 (see ``errors.py``).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pitstop.sampling_params import SamplingParams, StructuredOutputsParams


def random_id(prefix: str) -> str:
    """An OpenAI-style id such as ``chatcmpl-1f0c...`` (32 hex digits)."""
    return f"{prefix}-{uuid.uuid4().hex}"


class _Base(BaseModel):
    """Request and response bodies. Strict types: a JSON value is accepted only with the type the OpenAPI
    document gives (``false`` is not the number 0, ``"3"`` not the integer 3; an integer is a number), so the
    document says exactly what the server accepts."""

    model_config = ConfigDict(extra="ignore", strict=True)


class StreamOptions(_Base):
    include_usage: bool = False
    continuous_usage_stats: bool = False


class JsonSchemaFormat(_Base):
    """``response_format.json_schema``: ``schema`` is a JSON Schema; pitstop always constrains to it
    (``strict`` true or false)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, strict=True)
    name: str | None = None
    description: str | None = None
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Base):
    """OpenAI ``response_format``: ``text``, ``json_object`` or ``json_schema`` (an unknown type is a 400)."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class _SamplingRequest(_Base):
    """Parameters shared by completions and chat completions (OpenAI + vLLM extras)."""

    model: str | None = None
    n: int = 1
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    # vLLM extras
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    min_tokens: int = 0
    ignore_eos: bool = False
    stop_token_ids: list[int] | None = None
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    priority: int = 0
    cache_salt: str | None = None
    return_token_ids: bool = False  # vLLM: add token_ids (and prompt_token_ids) to the choices
    speculative: bool = True  # pitstop: False opts this request out of the engine's speculative decoding
    # agent programs (pitstop), with Continuum's names accepted for drop-in use
    program_id: str | None = None
    is_last_turn: bool | None = None
    tool_name: str | None = None
    job_id: str | None = None
    is_last_step: bool | None = None
    # structured outputs: OpenAI's response_format, vLLM's structured_outputs and its older guided_* names
    response_format: ResponseFormat | None = None
    structured_outputs: dict[str, Any] | None = None
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None

    def program_kwargs(self) -> dict:
        """``program_id`` / ``is_last_turn`` / ``tool_name`` for the engine (``job_id`` and
        ``is_last_step`` are Continuum's names for the first two)."""
        last = self.is_last_turn if self.is_last_turn is not None else self.is_last_step
        return {"program_id": self.program_id if self.program_id is not None else self.job_id,
                "is_last_turn": True if last is None else last, "tool_name": self.tool_name}

    def structured(self) -> StructuredOutputsParams | None:
        """The decoding constraint the body asks for (``response_format``, ``structured_outputs`` or a
        ``guided_*`` field; at most one), or None.

        Raises:
            ValueError: starting with the field: more than one given, a json_schema without ``schema``, an
                invalid JSON Schema, or a bad ``structured_outputs`` object.
        """
        from pitstop.tools.json_schema import check_json_schema

        given = [f for f in ("response_format", "structured_outputs", "guided_json", "guided_regex",
                             "guided_choice", "guided_grammar") if getattr(self, f) is not None]
        if self.response_format is not None and self.response_format.type == "text":
            given.remove("response_format")
        if len(given) > 1:
            raise ValueError(f"{given[1]}: only one of {', '.join(given)} may be given")
        if not given:
            return None
        field = given[0]
        if field == "response_format":
            rf = self.response_format
            if rf.type == "json_object":
                return StructuredOutputsParams(json_object=True)
            schema = rf.json_schema.json_schema if rf.json_schema is not None else None
            if schema is None:
                raise ValueError("response_format.json_schema.schema: required for type json_schema")
            check_json_schema(schema, "response_format.json_schema.schema")
            return StructuredOutputsParams(json=schema)
        if field == "structured_outputs":
            try:
                so = StructuredOutputsParams(**self.structured_outputs)
            except TypeError as e:
                raise ValueError(f"structured_outputs: {e}") from None
        else:
            so = StructuredOutputsParams(**{field.removeprefix("guided_"): getattr(self, field)})
        if so.json is not None:
            schema = so.json
            if isinstance(schema, str):
                try:
                    schema = json.loads(schema)
                except ValueError as e:
                    raise ValueError(f"{field}: not valid JSON: {e}") from None
            check_json_schema(schema, field)
        return so

    def sampling_params(self, max_tokens: int | None, logprobs: int | None,
                        structured: StructuredOutputsParams | None = None) -> SamplingParams:
        """The engine's ``SamplingParams`` (raises ValueError naming the field on a bad value)."""
        return SamplingParams(
            n=self.n, temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p, top_k=self.top_k or 0,
            min_p=self.min_p or 0.0, presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            repetition_penalty=1.0 if self.repetition_penalty is None else self.repetition_penalty,
            seed=self.seed, max_tokens=max_tokens, min_tokens=self.min_tokens, stop=self.stop,
            stop_token_ids=self.stop_token_ids, ignore_eos=self.ignore_eos, logprobs=logprobs,
            skip_special_tokens=self.skip_special_tokens,
            include_stop_str_in_output=self.include_stop_str_in_output, structured_outputs=structured,
            speculative=self.speculative)


TokenId = Annotated[int, Field(ge=0)]
TokenIds = Annotated[list[TokenId], Field(min_length=1)]


class CompletionRequest(_SamplingRequest):
    """``POST /v1/completions``. ``prompt``: text, token ids, or a non-empty list of either (ids >= 0; an id
    beyond the vocabulary is a 400 from the server, which knows the vocabulary)."""

    prompt: str | Annotated[list[str], Field(min_length=1)] | TokenIds | Annotated[list[TokenIds], Field(min_length=1)]
    max_tokens: int | None = 16
    logprobs: int | None = None
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None


class TextPart(_Base):
    """A text content part (``{"type": "text", "text": ...}``): the only part type this server reads."""

    type: Literal["text"]
    text: str


class FunctionCall(_Base):
    name: str
    arguments: str


class ToolCallParam(_Base):
    """An earlier tool call in an assistant message (``id``, ``type: function``, ``function``)."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class _Message(_Base):
    """Fields every message has (OpenAI's chat message params); ``as_dict`` gives the chat template's dict."""

    name: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The message for the chat template: unset fields left out, text parts joined into one string,
        ``developer`` as the template's ``system``."""
        content = getattr(self, "content", None)
        if isinstance(content, list):  # text parts: one text, joined by newlines (as vLLM)
            content = "\n".join(part.text for part in content)
        out = self.model_dump(exclude_none=True) | {"content": content}
        if out["role"] == "developer":
            out["role"] = "system"
        return out


class SystemMessage(_Message):
    role: Literal["system"]
    content: str | list[TextPart]


class DeveloperMessage(_Message):
    role: Literal["developer"]
    content: str | list[TextPart]


class UserMessage(_Message):
    role: Literal["user"]
    content: str | list[TextPart]


class AssistantMessage(_Message):
    """An earlier reply: ``content``, ``tool_calls``, or both (at least one)."""

    role: Literal["assistant"]
    content: str | list[TextPart] | None = None
    tool_calls: list[ToolCallParam] | None = None

    @model_validator(mode="after")
    def _content_or_calls(self) -> "AssistantMessage":
        if self.content is None and not self.tool_calls:
            raise ValueError("an assistant message needs content or tool_calls")
        return self


class ToolMessage(_Message):
    """A tool's result for the call ``tool_call_id``."""

    role: Literal["tool"]
    content: str | list[TextPart]
    tool_call_id: str


ChatMessage = Annotated[SystemMessage | DeveloperMessage | UserMessage | AssistantMessage | ToolMessage,
                        Field(discriminator="role")]
"""One message of ``messages``: its ``role`` (system, developer, user, assistant, tool) decides its fields, as in
OpenAI's API (``tool`` needs ``tool_call_id``; ``assistant`` may have ``tool_calls`` instead of content)."""


class ChatCompletionRequest(_SamplingRequest):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    add_generation_prompt: bool = True
    chat_template_kwargs: dict[str, Any] | None = None
    # function calling (OpenAI); tools are checked in pitstop.tools.choice (400 naming the field)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool = True


class PromptTokensDetails(_Base):
    cached_tokens: int = 0


class UsageInfo(_Base):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails | None = None


class ModelCard(_Base):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "pitstop"
    root: str | None = None
    max_model_len: int | None = None


class ModelList(_Base):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ToolResult(_Base):
    """``POST /v1/programs/{program_id}/tool_result``: a finished tool run of a program."""

    tool_name: str = "unknown"
    duration_s: float
