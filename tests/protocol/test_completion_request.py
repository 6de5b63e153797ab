"""The text-completion request: every field's check (a 400 naming the field), the prompt's
forms, and the normalisations the engine relies on."""

from __future__ import annotations

from typing import Any

import pytest
from openai.types import completion_create_params

from berth.protocol.completion import (
    DEFAULT_MAX_TOKENS,
    CompletionRequest,
    check_sizes_unparsed,
    parse_completion_request,
)
from berth.protocol.errors import InvalidRequest, Unsupported
from berth.protocol.limits import RequestLimits

BASE: dict[str, Any] = {"model": "m", "prompt": "Once upon a time"}


def parse(**fields: Any) -> CompletionRequest:
    return parse_completion_request({**BASE, **fields})


def refused(**fields: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        parse_completion_request({k: v for k, v in {**BASE, **fields}.items() if v is not ...})
    return caught.value


def test_defaults_are_openais() -> None:
    req = parse()
    assert req.max_tokens == DEFAULT_MAX_TOKENS == 16
    assert req.n == 1 and not req.stream and not req.echo and req.logprobs is None
    assert req.prompt_text == "Once upon a time" and req.prompt_ids is None
    assert req.max_tokens_requested == 16 and req.logprobs_count is None
    assert req.prompt_field == "prompt" and req.max_tokens_field == "max_tokens"


@pytest.mark.parametrize(
    ("prompt", "text", "ids"),
    [
        ("hello", "hello", None),
        (["hello"], "hello", None),
        ([1, 2, 3], None, [1, 2, 3]),
        ([[1, 2, 3]], None, [1, 2, 3]),
    ],
)
def test_one_prompt_in_any_of_its_forms(prompt: Any, text: str | None, ids: Any) -> None:
    req = parse(prompt=prompt)
    assert (req.prompt_text, req.prompt_ids) == (text, ids)


@pytest.mark.parametrize(
    ("prompt", "param", "words"),
    [
        (["a", "b"], "prompt", "must be one prompt, got 2"),
        ([[1], [2]], "prompt", "must be one prompt, got 2"),
        ("", "prompt", "must not be empty"),
        ([], "prompt", "must not be empty"),
        ([[]], "prompt", "must not be empty"),
        (5, "prompt", "must be a string, an array of token ids"),
        ([1, "a"], "prompt", "must be a string, an array of token ids"),
        ([1, True], "prompt", "must be a string, an array of token ids"),
        ({"text": "x"}, "prompt", "must be a string"),
        ([1, -2], "prompt[1]", "token ids must be at least 0, got -2"),
        (..., "prompt", "prompt is required"),
    ],
)
def test_bad_prompts_are_400s_naming_prompt(prompt: Any, param: str, words: str) -> None:
    err = refused(prompt=prompt)
    assert err.param == param and words in err.message, err.message


@pytest.mark.parametrize(
    ("field", "value", "param", "words"),
    [
        ("model", "", "model", "must not be empty"),
        ("model", 3, "model", "string"),
        ("max_tokens", 0, "max_tokens", "must be at least 1"),
        ("max_tokens", 1.5, "max_tokens", "integer"),
        ("temperature", 2.5, "temperature", "between 0 and 2"),
        ("temperature", "hot", "temperature", "number"),
        ("top_p", 0, "top_p", "greater than 0"),
        ("n", 0, "n", "between 1 and 16"),
        ("n", 17, "n", "between 1 and 16"),
        ("stream", "yes", "stream", "boolean"),
        ("logprobs", 6, "logprobs", "between 0 and 5"),
        ("logprobs", -1, "logprobs", "between 0 and 5"),
        ("logprobs", True, "logprobs", "integer"),
        ("echo", "no", "echo", "boolean"),
        ("stop", ["a", "b", "c", "d", "e"], "stop", "at most 4"),
        ("stop", [""], "stop[0]", "must not be empty"),
        ("presence_penalty", 3, "presence_penalty", "between -2 and 2"),
        ("frequency_penalty", -3, "frequency_penalty", "between -2 and 2"),
        ("best_of", 2, "best_of", "best_of must equal n (1)"),
        ("logit_bias", {"x": 1}, "logit_bias", "token ids"),
        ("logit_bias", {"5": 101}, "logit_bias", "between -100 and 100"),
        ("seed", 2**64, "seed", "between"),
        ("user", 5, "user", "string"),
        ("top_k", 0, "top_k", "-1 (disabled) or at least 1"),
        ("min_p", 1.5, "min_p", "between 0 and 1"),
        ("repetition_penalty", 0, "repetition_penalty", "greater than 0"),
        ("min_tokens", -1, "min_tokens", "at least 0"),
        ("min_tokens", 17, "min_tokens", "at most max_tokens (16)"),
        ("ignore_eos", 1, "ignore_eos", "boolean"),
        ("skip_special_tokens", "x", "skip_special_tokens", "boolean"),
        ("stop_token_ids", [-1], "stop_token_ids[0]", "at least 0"),
        ("no_stop_trim", 2, "no_stop_trim", "boolean"),
        ("regex", "", "regex", "must not be empty"),
        ("regex", "a{5000}", "regex", "repetition"),
        ("ebnf", "", "ebnf", "must not be empty"),
        ("lora_path", "", "lora_path", "must not be empty"),
        ("stream_options", {"include_usage": True}, "stream_options", "only allowed when"),
        ("messages", [], "messages", "Unrecognized request argument"),
    ],
)
def test_each_field_is_checked_and_named(field: str, value: Any, param: str, words: str) -> None:
    err = refused(**{field: value})
    assert err.param == param and words in err.message, err.message


def test_fields_the_engine_cannot_honour_are_unsupported() -> None:
    err = refused(suffix="the end")
    assert isinstance(err, Unsupported) and err.param == "suffix"
    assert parse(suffix=None).suffix is None


def test_combinations_refused() -> None:
    err = refused(echo=True, logprobs=1)
    assert err.param == "echo" and "logprobs" in err.message
    err = refused(regex="a+", ebnf='root ::= "a"')
    assert err.param == "ebnf"
    err = refused(stream=True, stream_options={"include_usage": True, "x": 1})
    assert err.param == 'stream_options["x"]' or err.param == "stream_options.x"
    err = refused(stream=True, stream_options={"continuous_usage_stats": True})
    assert isinstance(err, Unsupported) and err.param == "stream_options.continuous_usage_stats"


def test_normalisations() -> None:
    req = parse(
        stop="\n",
        logit_bias={"50": -100},
        best_of=2,
        n=2,
        logprobs=0,
        regex="[a-z]+",
        seed=7,
        stream=True,
        stream_options={"include_usage": True},
        max_tokens=None,
    )
    assert req.stop == ["\n"] and req.logit_bias == {50: -100.0}
    assert req.logprobs_count == 0 and req.constraint_kind == "regex"
    assert req.effective_seed == 7 and req.wants_usage
    assert req.max_tokens_requested is None  # null: the rest of the context, as vLLM's


def test_not_an_object() -> None:
    with pytest.raises(InvalidRequest, match="must be a JSON object"):
        parse_completion_request(["x"])


def test_sizes_checked_before_parsing() -> None:
    limits = RequestLimits(max_stop_token_ids=2, max_identifier_chars=4)
    with pytest.raises(InvalidRequest) as caught:
        check_sizes_unparsed(b'{"model": "m", "prompt": "x", "stop_token_ids": [1, 2, 3]}', limits)
    assert caught.value.param == "stop_token_ids"
    with pytest.raises(InvalidRequest) as caught:
        check_sizes_unparsed(b'{"model": "m", "prompt": "x", "user": "12345"}', limits)
    assert caught.value.param == "user"
    with pytest.raises(InvalidRequest) as caught:
        check_sizes_unparsed(b'{"model": "m", "prompt": "x", "nope": 1}', limits)
    assert caught.value.param == "nope"


def test_every_openai_field_is_known() -> None:
    """Each field of the official client's completion request is a field here (accepted,
    or refused by name), so no client argument is met with "Unrecognized"."""
    openai_fields = set(completion_create_params.CompletionCreateParamsBase.__annotations__)
    assert openai_fields <= set(CompletionRequest.model_fields), openai_fields - set(
        CompletionRequest.model_fields
    )
