"""``RequestLimits`` on request bodies (the server path is tested in test_server_errors.py)."""

from __future__ import annotations

import pytest

from pitstop.server.errors import APIError
from pitstop.server.limits import RequestLimits
from pitstop.server.protocol import ChatCompletionRequest, CompletionRequest


def test_defaults_let_ordinary_requests_through():
    RequestLimits().check(CompletionRequest(prompt="hi", n=16, stop=["a", "b"], logprobs=5), 5, 16)


@pytest.mark.parametrize("limits,req,logprobs,max_tokens,param", [
    (RequestLimits(max_tokens=100), CompletionRequest(prompt="hi", max_tokens=101), None, 101, "max_tokens"),
    (RequestLimits(max_n=2), CompletionRequest(prompt="hi", n=3), None, 16, "n"),
    (RequestLimits(max_logprobs=3), ChatCompletionRequest(messages=[{"role": "user", "content": "x"}],
                                                          logprobs=True, top_logprobs=4), 4, None, "top_logprobs"),
    (RequestLimits(max_stop=1), CompletionRequest(prompt="hi", stop=["a", "b"]), None, 16, "stop"),
    (RequestLimits(max_stop_chars=3), CompletionRequest(prompt="hi", stop="abcd"), None, 16, "stop"),
])
def test_each_limit_names_its_field(limits, req, logprobs, max_tokens, param):
    with pytest.raises(APIError) as e:
        limits.check(req, logprobs, max_tokens)
    assert e.value.status == 400 and e.value.param == param and "<=" in e.value.message
    RequestLimits().check(req, logprobs, max_tokens)  # the same request is fine under the defaults


def test_a_grammar_the_engine_could_not_compile_is_a_400_naming_structured_outputs():
    """The engine ends a request whose grammar failed to compile, or not in time, with ``error_type``
    ``invalid_request_error``; the async engine raises it as a ``ValueError``, which becomes this 400."""
    from pitstop.server.errors import from_value_error

    err = from_value_error(ValueError("structured_outputs: the grammar did not compile within 10 s "
                                      "(grammar_compile_timeout_s)"))
    assert (err.status, err.param, err.code) == (400, "structured_outputs", "invalid_grammar")
    assert from_value_error(ValueError("something else")).code is None
