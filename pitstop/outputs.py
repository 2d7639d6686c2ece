"""Output records returned by ``LLM.generate`` / ``LLMEngine.step`` (vLLM-compatible names)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Logprob:
    """Log-probability of one token (natural log) and its rank in the distribution (1 = most likely)."""

    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


# One dict per generated token: token id -> Logprob (the sampled token plus the top-N).
SampleLogprobs = list[dict[int, Logprob]]


@dataclass
class RequestMetrics:
    """Timestamps (seconds, engine clock) and counters of one request.

    Attributes:
        arrival_time: when the request was added.
        first_scheduled_time: when it was first given a step (None until then).
        first_token_time: when its first output token was sampled.
        last_token_time: when its latest output token was sampled.
        finished_time: when it finished (None while running).
        num_cached_tokens: prompt tokens served from the prefix cache at (last) admission.
        num_computed_prompt_tokens: prompt tokens actually run through the model, re-runs included.
        num_preemptions: times it was preempted (recompute).
    """

    arrival_time: float
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    last_token_time: float | None = None
    finished_time: float | None = None
    num_cached_tokens: int = 0
    num_computed_prompt_tokens: int = 0
    num_preemptions: int = 0

    @property
    def ttft(self) -> float | None:
        """Time to first token, seconds."""
        if self.first_token_time is None:
            return None
        return self.first_token_time - self.arrival_time

    @property
    def e2el(self) -> float | None:
        """End-to-end latency, seconds."""
        if self.finished_time is None:
            return None
        return self.finished_time - self.arrival_time


@dataclass
class ToolCall:
    """A tool call parsed from a completion (``LLM.chat(tools=...)``), OpenAI's shape.

    Attributes:
        id: ``call_`` and 24 random hex digits.
        name: the function's name.
        arguments: its arguments as a JSON text.
    """

    id: str
    name: str
    arguments: str
    type: str = "function"


@dataclass
class CompletionOutput:
    """One of the ``n`` completions of a request.

    Attributes:
        index: which of the ``n`` completions.
        text: detokenized output (stop string trimmed).
        token_ids: generated token ids.
        finish_reason: "stop" (EOS, stop token or stop string), "length", "abort", or None while running.
        stop_reason: the matched stop string or stop token id, if any.
        logprobs: per generated token, when requested.
        tool_calls: the calls parsed from ``text`` when ``LLM.chat`` offered tools (``[]``: none made);
            None when no tools were offered. ``text`` stays the raw output.
        content: with ``tool_calls``, the text outside the calls (the assistant message's ``content``).
    """

    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    logprobs: SampleLogprobs | None = None
    cumulative_logprob: float | None = None
    tool_calls: list[ToolCall] | None = None
    content: str | None = None

    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestOutput:
    """The state of one request after a step (or at the end of ``generate``).

    Attributes:
        request_id: the caller's id.
        prompt: the prompt text (None when given as token ids).
        prompt_token_ids: the prompt's token ids.
        outputs: ``n`` completions.
        finished: True when every completion has finished.
        metrics: timings and cache counters of the first completion's request.
        num_cached_tokens: prompt tokens served from the prefix cache.
        error: why the request was ended by the engine (e.g. its detokenization failed), else None.
        error_type: whose fault ``error`` is, in OpenAI's error types: ``invalid_request_error`` (the request's own
            input, e.g. its grammar did not compile or not in time) or ``server_error``; None without an error.
    """

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    metrics: RequestMetrics | None = None
    num_cached_tokens: int = 0
    program_id: str | None = None
    extra: dict = field(default_factory=dict)
    error: str | None = None
    error_type: str | None = None
