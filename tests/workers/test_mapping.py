"""Request → real ``vllm.SamplingParams``, row by row of the design table, without an engine."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vllm.sampling_params import RequestOutputKind, SamplingParams

from berth.protocol.chat import ChatCompletionRequest, parse_chat_request
from berth.protocol.errors import InvalidRequest
from berth.workers.engine.mapping import build_sampling_params, structured_outputs

VOCAB = 388
CONTEXT = 512
PROMPT = 20


def request(**fields: Any) -> ChatCompletionRequest:
    return parse_chat_request(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    )


def params(
    prompt_len: int = PROMPT, defaults: dict[str, Any] | None = None, **fields: Any
) -> SamplingParams:
    return build_sampling_params(
        request(**fields),
        vocab_size=VOCAB,
        max_model_len=CONTEXT,
        prompt_len=prompt_len,
        defaults=defaults,
    )


def test_unset_fields_take_vllm_defaults() -> None:
    sp = params()
    assert isinstance(sp, SamplingParams)
    assert sp.n == 1
    assert sp.temperature == 1.0 and sp.top_p == 1.0 and sp.top_k == 0 and sp.min_p == 0.0
    assert sp.presence_penalty == 0.0 and sp.frequency_penalty == 0.0
    assert sp.repetition_penalty == 1.0
    assert sp.min_tokens == 0
    assert sp.max_tokens == CONTEXT - PROMPT  # the rest of the context
    assert sp.seed is None
    assert sp.stop == [] and sp.stop_token_ids == []
    assert sp.ignore_eos is False and sp.skip_special_tokens is True
    assert sp.include_stop_str_in_output is False
    assert sp.logprobs is None and sp.logit_bias is None and sp.structured_outputs is None
    assert sp.output_kind is RequestOutputKind.DELTA


@pytest.mark.parametrize(
    ("fields", "attribute", "expected"),
    [
        ({"max_completion_tokens": 7}, "max_tokens", 7),
        ({"max_tokens": 9}, "max_tokens", 9),
        ({"temperature": 0.3}, "temperature", 0.3),
        ({"top_p": 0.5}, "top_p", 0.5),
        ({"top_k": 40}, "top_k", 40),
        ({"top_k": -1}, "top_k", 0),
        ({"min_p": 0.1}, "min_p", 0.1),
        ({"presence_penalty": 1.5}, "presence_penalty", 1.5),
        ({"frequency_penalty": -0.5}, "frequency_penalty", -0.5),
        ({"repetition_penalty": 1.2}, "repetition_penalty", 1.2),
        ({"min_tokens": 3}, "min_tokens", 3),
        ({"n": 3}, "n", 3),
        ({"seed": 11}, "seed", 11),
        ({"sampling_seed": 12}, "seed", 12),
        ({"seed": 11, "sampling_seed": 12}, "seed", 12),
        ({"stop": "END"}, "stop", ["END"]),
        ({"stop": ["a", "b"]}, "stop", ["a", "b"]),
        ({"stop_token_ids": [5, 6]}, "stop_token_ids", [5, 6]),
        ({"ignore_eos": True}, "ignore_eos", True),
        ({"skip_special_tokens": False}, "skip_special_tokens", False),
        ({"no_stop_trim": True}, "include_stop_str_in_output", True),
        ({"logprobs": True}, "logprobs", 0),
        ({"logprobs": True, "top_logprobs": 5}, "logprobs", 5),
        ({"logprobs": False}, "logprobs", None),
        ({"logit_bias": {"17": -100, "3": 2.5}}, "logit_bias", {17: -100.0, 3: 2.5}),
    ],
)
def test_each_field_lands_in_sampling_params(
    fields: dict[str, Any], attribute: str, expected: Any
) -> None:
    assert getattr(params(**fields), attribute) == expected


def test_temperature_zero_is_greedy() -> None:
    sp = params(temperature=0.0, top_p=0.5, top_k=5)
    assert sp.temperature == 0.0
    # vLLM turns the other samplers off for greedy decoding
    assert sp.top_p == 1.0 and sp.top_k == 0


def test_several_choices_need_sampling() -> None:
    with pytest.raises(InvalidRequest) as err:
        params(n=2, temperature=0.0)
    assert err.value.param == "n"
    with pytest.raises(InvalidRequest):
        params(n=2, defaults={"temperature": 0.0})
    assert params(n=2, temperature=0.1).n == 2


def test_generation_config_defaults_fill_unset_fields_only() -> None:
    defaults = {"temperature": 0.6, "top_p": 0.9, "top_k": 20, "repetition_penalty": 1.1}
    sp = params(defaults=defaults)
    assert (sp.temperature, sp.top_p, sp.top_k, sp.repetition_penalty) == (0.6, 0.9, 20, 1.1)
    sp = params(defaults=defaults, temperature=1.0, top_k=-1)
    assert sp.temperature == 1.0 and sp.top_k == 0 and sp.top_p == 0.9


def test_generation_config_max_tokens_caps_the_default_only() -> None:
    assert params(defaults={"max_tokens": 50}).max_tokens == 50
    assert params(defaults={"max_tokens": 50}, max_completion_tokens=80).max_tokens == 80


@pytest.mark.parametrize(
    ("fields", "kind", "value"),
    [
        ({"response_format": {"type": "json_object"}}, "json_object", True),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "object"}},
                }
            },
            "json",
            {"type": "object"},
        ),
        # a json_schema format without a schema only asks for some JSON object
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
            "json_object",
            True,
        ),
        ({"regex": "[a-z]+"}, "regex", "[a-z]+"),
        ({"ebnf": 'root ::= "a"'}, "grammar", 'root ::= "a"'),
    ],
)
def test_constraints_become_structured_outputs(
    fields: dict[str, Any], kind: str, value: Any
) -> None:
    so = params(**fields).structured_outputs
    assert so is not None and getattr(so, kind) == value
    others = {"json", "regex", "grammar", "json_object", "choice", "structural_tag"} - {kind}
    assert all(getattr(so, other) is None for other in others)


def test_text_format_is_no_constraint() -> None:
    assert structured_outputs(request(response_format={"type": "text"})) is None
    assert params(response_format={"type": "text"}).structured_outputs is None


def test_max_tokens_filling_the_context_exactly_is_allowed() -> None:
    assert params(max_completion_tokens=CONTEXT - PROMPT).max_tokens == CONTEXT - PROMPT


def test_max_tokens_beyond_the_context_names_max_completion_tokens() -> None:
    with pytest.raises(InvalidRequest) as err:
        params(max_completion_tokens=CONTEXT - PROMPT + 1)
    assert err.value.param == "max_completion_tokens"
    assert str(CONTEXT - PROMPT) in err.value.message


@pytest.mark.parametrize("prompt_len", [CONTEXT, CONTEXT + 100])
def test_prompt_filling_the_context_names_messages(prompt_len: int) -> None:
    with pytest.raises(InvalidRequest) as err:
        params(prompt_len=prompt_len)
    assert err.value.param == "messages"
    assert err.value.code == "context_length_exceeded"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"logit_bias": {str(VOCAB): 1}}, "logit_bias"),
        ({"logit_bias": {"99999999": 1}}, "logit_bias"),
        ({"stop_token_ids": [VOCAB]}, "stop_token_ids"),
        ({"stop_token_ids": [1, 2, 100000]}, "stop_token_ids"),
    ],
)
def test_token_ids_are_checked_against_the_vocabulary(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        params(**fields)
    assert err.value.param == param
    assert str(VOCAB - 1) in err.value.message


def test_last_token_of_the_vocabulary_is_fine() -> None:
    sp = params(logit_bias={str(VOCAB - 1): 1}, stop_token_ids=[VOCAB - 1])
    assert sp.logit_bias == {VOCAB - 1: 1.0} and sp.stop_token_ids == [VOCAB - 1]


# --- property: every request the protocol accepts maps without error ----------------------

_finite: dict[str, Any] = {"allow_nan": False, "allow_infinity": False}
_optional = {
    "temperature": st.floats(0, 2, **_finite),
    "top_p": st.floats(0.01, 1, **_finite),
    "top_k": st.one_of(st.just(-1), st.integers(1, 1000)),
    "min_p": st.floats(0, 1, **_finite),
    "presence_penalty": st.floats(-2, 2, **_finite),
    "frequency_penalty": st.floats(-2, 2, **_finite),
    "repetition_penalty": st.floats(0.01, 5, **_finite),
    "n": st.integers(1, 4),
    "seed": st.integers(-(2**63), 2**63 - 1),
    "sampling_seed": st.integers(0, 2**32),
    "stop": st.lists(st.text(min_size=1, max_size=5), min_size=1, max_size=4),
    "stop_token_ids": st.lists(st.integers(0, VOCAB - 1), max_size=5),
    "ignore_eos": st.booleans(),
    "skip_special_tokens": st.booleans(),
    "no_stop_trim": st.booleans(),
    "logit_bias": st.dictionaries(
        st.integers(0, VOCAB - 1).map(str), st.floats(-100, 100, **_finite), max_size=5
    ),
    "regex": st.sampled_from(["[a-z]+", r"\d{3}", "(yes|no)"]),
}


@st.composite
def valid_bodies(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    for name in draw(st.sets(st.sampled_from(sorted(_optional)))):
        body[name] = draw(_optional[name])
    if body.get("temperature", 1.0) < 1e-5:
        body["n"] = 1  # greedy decoding has a single choice (see the test below)
    max_tokens = draw(st.one_of(st.none(), st.integers(1, CONTEXT - PROMPT)))
    if max_tokens is not None:
        body["max_completion_tokens"] = max_tokens
        body["min_tokens"] = draw(st.integers(0, max_tokens))
    if draw(st.booleans()):
        body["logprobs"] = True
        body["top_logprobs"] = draw(st.one_of(st.none(), st.integers(0, 20)))
    return body


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_bodies())
def test_valid_requests_always_map(body: dict[str, Any]) -> None:
    req = parse_chat_request(body)
    sp = build_sampling_params(req, vocab_size=VOCAB, max_model_len=CONTEXT, prompt_len=PROMPT)
    assert sp.n == req.n
    assert sp.max_tokens == (req.max_completion_tokens or CONTEXT - PROMPT)
    # vLLM reads seed -1 as no seed (SamplingParams.__post_init__)
    assert sp.seed == (None if req.effective_seed == -1 else req.effective_seed)
    assert sp.output_kind is RequestOutputKind.DELTA
    if req.logprobs:
        assert sp.logprobs == (req.top_logprobs or 0)


@settings(max_examples=100, deadline=None)
@given(
    prompt_len=st.integers(1, 2 * CONTEXT),
    max_tokens=st.one_of(st.none(), st.integers(1, 2 * CONTEXT)),
)
def test_context_check_is_exact(prompt_len: int, max_tokens: int | None) -> None:
    fields: dict[str, Any] = {} if max_tokens is None else {"max_completion_tokens": max_tokens}
    if prompt_len >= CONTEXT:
        with pytest.raises(InvalidRequest, match="context") as err:
            params(prompt_len=prompt_len, **fields)
        assert err.value.param == "messages"
    elif max_tokens is not None and prompt_len + max_tokens > CONTEXT:
        with pytest.raises(InvalidRequest) as err:
            params(prompt_len=prompt_len, **fields)
        assert err.value.param == "max_completion_tokens"
    else:
        assert params(prompt_len=prompt_len, **fields).max_tokens == (
            max_tokens if max_tokens is not None else CONTEXT - prompt_len
        )
