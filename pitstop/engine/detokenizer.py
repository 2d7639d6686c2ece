"""Incremental detokenization with stop-string matching and hold-back for streaming.

Fast (Rust ``tokenizers``) tokenizers use ``tokenizers.decoders.DecodeStream``, which buffers
tokens until they form complete UTF-8 text. The stream is primed with the last few prompt tokens
(when they decode cleanly) so that SentencePiece/Metaspace tokenizers keep the leading space of
the first generated word, as vLLM does; for byte-level tokenizers (Qwen, GPT-2, SmolLM2) the text
equals ``tokenizer.decode(output_ids)``. Slow tokenizers fall back to the prefix/read offset
algorithm (decode a window, emit only text that does not end in U+FFFD).
"""

from __future__ import annotations

from typing import Any

from tokenizers import Tokenizer
from tokenizers.decoders import DecodeStream

from pitstop.sampling_params import SamplingParams

PROMPT_PRIME_TOKENS = 4
"""How many trailing prompt tokens prime the decoder (leading-space context)."""

_REPLACEMENT = "\ufffd"


def backend_of(tokenizer: Any) -> Tokenizer | None:
    """The Rust ``tokenizers.Tokenizer`` behind ``tokenizer``, or None for a slow tokenizer."""
    if isinstance(tokenizer, Tokenizer):
        return tokenizer
    for name in ("backend_tokenizer", "_tokenizer"):
        backend = getattr(tokenizer, name, None)
        if isinstance(backend, Tokenizer):
            return backend
    return None


class _StreamDecoder:
    """Token-to-text deltas via ``DecodeStream`` (fast tokenizers)."""

    def __init__(self, backend: Tokenizer, skip_special: bool, prompt_ids: list[int]) -> None:
        self._backend = backend
        self._skip = skip_special
        prime = list(prompt_ids[-PROMPT_PRIME_TOKENS:])
        if _REPLACEMENT in backend.decode(prime, skip_special_tokens=skip_special):
            prime = []  # a prompt ending mid-character would shift the stream's offsets
        self._stream = DecodeStream(ids=prime or None, skip_special_tokens=skip_special)
        self._pending: list[int] = []  # ids stepped since the last emitted text

    def step(self, token_id: int) -> str:
        """Text completed by ``token_id`` ('' while a character is still incomplete)."""
        self._pending.append(token_id)
        try:
            text = self._stream.step(self._backend, token_id)
        except Exception:  # e.g. "Invalid prefix encountered": restart without context
            self._stream = DecodeStream(skip_special_tokens=self._skip)
            text = self._stream.step(self._backend, self._pending)
        if text is None:
            return ""
        self._pending.clear()
        return text

    def flush(self) -> str:
        """Decode of the still-incomplete tail (U+FFFD for dangling bytes), as ``decode`` would."""
        tail, self._pending = self._pending, []
        return self._backend.decode(tail, skip_special_tokens=self._skip) if tail else ""


class _WindowDecoder:
    """Prefix/read offset algorithm over ``tokenizer.decode`` (slow tokenizers)."""

    def __init__(self, tokenizer: Any, skip_special: bool, prompt_ids: list[int]) -> None:
        self._tok = tokenizer
        self._skip = skip_special
        self._ids: list[int] = list(prompt_ids[-PROMPT_PRIME_TOKENS:])
        if _REPLACEMENT in self._decode(self._ids):
            self._ids = []
        self._prefix = 0
        self._read = len(self._ids)

    def _decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=self._skip) if ids else ""

    def step(self, token_id: int) -> str:
        """Text completed by ``token_id`` ('' while the window ends in an incomplete character)."""
        self._ids.append(token_id)
        return self._advance(final=False)

    def _advance(self, final: bool) -> str:
        prefix_text = self._decode(self._ids[self._prefix:self._read])
        text = self._decode(self._ids[self._prefix:])
        if len(text) <= len(prefix_text) or (text.endswith(_REPLACEMENT) and not final):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return text[len(prefix_text):]

    def flush(self) -> str:
        """Emit whatever the window still holds back (dangling bytes become U+FFFD)."""
        return self._advance(final=True) if self._read < len(self._ids) else ""


class IncrementalDetokenizer:
    """Turns a request's generated token ids into text, matching stop strings as it goes.

    Attributes:
        output_text: text generated so far (trimmed at a matched stop string).
        stop_reason: the matched stop string, or None.
        finished: True after a stop string matched or ``finish()`` was called.
    """

    def __init__(self, tokenizer: Any, params: SamplingParams, prompt_token_ids: list[int]) -> None:
        """Args: ``tokenizer`` is a transformers tokenizer or a ``tokenizers.Tokenizer``."""
        self.params = params
        self.output_text = ""
        self.stop_reason: str | None = None
        self.finished = False
        self._stops = list(params.stop_list)
        self._hold = max((len(s) for s in self._stops), default=1) - 1
        self._emitted = 0
        skip = params.skip_special_tokens
        backend = backend_of(tokenizer)
        self._decoder: _StreamDecoder | _WindowDecoder = (
            _StreamDecoder(backend, skip, prompt_token_ids) if backend is not None
            else _WindowDecoder(tokenizer, skip, prompt_token_ids))

    def update(self, new_token_ids: list[int]) -> str | None:
        """Append tokens; return the stop string if one matched (text then trimmed), else None.

        After a match (or ``finish()``) further tokens are ignored and None is returned.
        """
        if self.finished:
            return None
        return self._append("".join(self._decoder.step(t) for t in new_token_ids))

    def _append(self, text: str) -> str | None:
        if not text:
            return None
        scan_from = max(0, len(self.output_text) - self._hold)
        self.output_text += text
        match = _earliest_stop(self.output_text, self._stops, scan_from)
        if match is None:
            return None
        start, stop = match
        end = start + len(stop) if self.params.include_stop_str_in_output else start
        self.output_text = self.output_text[:end]
        self.stop_reason, self.finished = stop, True
        return stop

    def finish(self) -> None:
        """Mark the request finished: flush incomplete trailing tokens and held-back text."""
        if not self.finished:
            self._append(self._decoder.flush())
        self.finished = True

    def get_delta(self) -> str:
        """Text produced since the last call, holding back ``len(longest stop) - 1`` characters
        (which a later stop match could trim) until the request is finished."""
        end = len(self.output_text) if self.finished else len(self.output_text) - self._hold
        if end <= self._emitted:
            return ""
        delta = self.output_text[self._emitted:end]
        self._emitted = end
        return delta


def _earliest_stop(text: str, stops: list[str], start: int) -> tuple[int, str] | None:
    """The stop string occurrence in ``text[start:]`` that ends first (ties: starts first).

    Ending first is what a character-by-character stream would hit first, so the result does not
    depend on how the text was split into tokens. Returns ``(index, stop)`` or None.
    """
    best: tuple[int, int, str] | None = None
    for stop in stops:
        i = text.find(stop, start)
        if i >= 0 and (best is None or (i + len(stop), i) < best[:2]):
            best = (i + len(stop), i, stop)
    return None if best is None else (best[1], best[2])
