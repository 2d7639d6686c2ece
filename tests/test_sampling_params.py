"""SamplingParams validation: each invalid field raises ValueError naming the field."""

import pytest

from pitstop.sampling_params import SamplingParams

INVALID = [
    ("n", 0), ("n", 1.5), ("n", True),
    ("temperature", -0.1), ("temperature", float("nan")), ("temperature", float("inf")),
    ("temperature", "1"),
    ("top_p", 0.0), ("top_p", 1.01), ("top_p", float("nan")),
    ("top_k", -2), ("top_k", 2.0), ("top_k", True),
    ("min_p", -0.01), ("min_p", 1.5),
    ("presence_penalty", 2.5), ("presence_penalty", -2.1),
    ("frequency_penalty", 3), ("frequency_penalty", float("inf")),
    ("repetition_penalty", 0.0), ("repetition_penalty", -1.0),
    ("seed", 1.5), ("seed", "7"),
    ("max_tokens", 0), ("max_tokens", 2.0),
    ("min_tokens", -1),
    ("stop", ""), ("stop", ["ok", ""]), ("stop", [3]), ("stop", 5),
    ("stop_token_ids", [-1]), ("stop_token_ids", ["a"]), ("stop_token_ids", 7),
    ("logprobs", -1), ("logprobs", 21), ("logprobs", 1.0),
]


@pytest.mark.parametrize("name,value", INVALID)
def test_invalid_field_raises_naming_it(name: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"SamplingParams\.{name}\b"):
        SamplingParams(**{name: value})


def test_min_tokens_above_max_tokens() -> None:
    with pytest.raises(ValueError, match=r"SamplingParams\.min_tokens"):
        SamplingParams(max_tokens=4, min_tokens=5)


def test_defaults_and_normalisation() -> None:
    p = SamplingParams()
    assert p.stop_list == [] and p.stop_token_ids == [] and not p.greedy
    assert SamplingParams(stop="x").stop_list == ["x"]
    assert SamplingParams(stop=["a", "bc"]).stop_list == ["a", "bc"]
    assert SamplingParams(top_k=-1).top_k == 0
    assert SamplingParams(temperature=0).greedy and SamplingParams(top_k=1).greedy
    SamplingParams(max_tokens=None, min_tokens=100, logprobs=0, top_p=1.0, min_p=1.0, seed=-3)
