"""Every validation rule of the chat-completion request: status, ``param`` and message."""

from __future__ import annotations

import json
from typing import Any

import pytest

from berth.protocol.chat import ChatCompletionRequest, check_sizes_unparsed, parse_chat_request
from berth.protocol.errors import InvalidRequest, Unsupported
from berth.protocol.limits import RequestLimits

USER = {"role": "user", "content": "hi"}
ASSISTANT = {"role": "assistant", "content": "Hello"}
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


def body(**fields: Any) -> dict[str, Any]:
    return {"model": "tiny", "messages": [USER], **fields}


def nested(depth: int) -> dict[str, Any]:
    """A JSON schema whose objects nest ``depth`` levels deep."""
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth - 1):
        schema = {"type": "array", "items": schema}
    return schema


def refused(data: Any, limits: RequestLimits | None = None) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        parse_chat_request(data, limits)
    err = info.value
    assert err.status_code == 400
    assert err.body()["error"]["type"] == "invalid_request_error"
    assert err.body()["error"]["param"] == err.param
    return err


# (request fields, param, words the message must contain)
INVALID: list[tuple[dict[str, Any], str, str]] = [
    # sampling ranges
    ({"temperature": 3.5}, "temperature", "temperature must be between 0 and 2, got 3.5"),
    ({"temperature": -0.1}, "temperature", "between 0 and 2"),
    ({"temperature": "1"}, "temperature", "temperature must be a number"),
    ({"temperature": float("nan")}, "temperature", "must be a finite number"),
    ({"repetition_penalty": float("inf")}, "repetition_penalty", "must be a finite number"),
    ({"logit_bias": {"5": float("nan")}}, "logit_bias", "between -100 and 100, got nan"),
    ({"top_p": 0}, "top_p", "top_p must be greater than 0 and at most 1, got 0"),
    ({"top_p": 1.5}, "top_p", "at most 1"),
    ({"top_k": 0}, "top_k", "top_k must be -1 (disabled) or at least 1, got 0"),
    ({"top_k": -2}, "top_k", "-1 (disabled)"),
    ({"top_k": 1.5}, "top_k", "must be an integer"),
    ({"min_p": 1.5}, "min_p", "min_p must be between 0 and 1, got 1.5"),
    ({"presence_penalty": 2.5}, "presence_penalty", "between -2 and 2"),
    ({"frequency_penalty": -3}, "frequency_penalty", "between -2 and 2, got -3"),
    ({"repetition_penalty": 0}, "repetition_penalty", "greater than 0, got 0"),
    ({"n": 0}, "n", "n must be between 1 and 16, got 0"),
    ({"n": 17}, "n", "between 1 and 16, got 17"),
    ({"n": True}, "n", "must be an integer"),
    ({"top_logprobs": 25, "logprobs": True}, "top_logprobs", "between 0 and 20, got 25"),
    ({"top_logprobs": 2}, "top_logprobs", "only allowed when logprobs is true"),
    ({"logprobs": "yes"}, "logprobs", "must be a boolean"),
    ({"seed": 1.5}, "seed", "seed must be an integer"),
    ({"seed": 2**64}, "seed", "between"),
    ({"sampling_seed": "7"}, "sampling_seed", "must be an integer"),
    # token counts
    ({"max_completion_tokens": 0}, "max_completion_tokens", "at least 1, got 0"),
    ({"max_tokens": -5}, "max_tokens", "at least 1, got -5"),
    ({"max_tokens": 5, "max_completion_tokens": 6}, "max_tokens", "differ"),
    ({"min_tokens": 10, "max_tokens": 5}, "min_tokens", "at most max_completion_tokens (5)"),
    ({"min_tokens": -1}, "min_tokens", "at least 0"),
    # stop
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4 strings, got 5"),
    ({"stop": ["a", ""]}, "stop[1]", "must not be empty"),
    ({"stop": ""}, "stop[0]", "must not be empty"),
    ({"stop": ["a", 3]}, "stop[1]", "must be a string"),
    ({"stop": 3}, "stop", "must be an array"),
    ({"stop_token_ids": [-1]}, "stop_token_ids[0]", "at least 0"),
    ({"stop_token_ids": list(range(65))}, "stop_token_ids", "at most 64 token ids"),
    # logit_bias
    ({"logit_bias": {"abc": 1}}, "logit_bias", "token ids (strings of digits), got 'abc'"),
    ({"logit_bias": {"-1": 1}}, "logit_bias", "token ids"),
    ({"logit_bias": {"5": 101}}, "logit_bias", "between -100 and 100, got 101"),
    ({"logit_bias": {"5": "x"}}, "logit_bias", "must be numbers"),
    ({"logit_bias": [1]}, "logit_bias", "must be an object"),
    # messages
    ({"messages": []}, "messages", "at least one message"),
    ({"messages": "hi"}, "messages", "must be an array"),
    ({"messages": [USER, {"role": "bot", "content": "x"}]}, "messages[1].role", "got 'bot'"),
    ({"messages": [{"content": "x"}]}, "messages[0].role", "messages[0].role is required"),
    ({"messages": ["hi"]}, "messages[0]", "must be an object"),
    ({"messages": [{"role": "user"}]}, "messages[0].content", "is required"),
    ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content", "string or an array"),
    (
        {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
        "messages[0].content[0].text",
        "is required",
    ),
    (
        {"messages": [{"role": "system", "content": [{"type": "refusal", "refusal": "no"}]}]},
        "messages[0].content[0].type",
        "must be one of 'text'",
    ),
    ({"messages": [{"role": "user", "content": "x", "foo": 1}]}, "messages[0].foo", "Unrecognized"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id", "required"),
    ({"messages": [{"role": "function", "content": "x"}]}, "messages[0].name", "required"),
    ({"messages": [USER, {"role": "assistant"}]}, "messages[1].content", "unless tool_calls"),
    (
        {
            "messages": [
                {
                    "role": "assistant",
                    "tool_calls": [{"id": "1", "type": "function", "function": {"name": "f"}}],
                }
            ]
        },
        "messages[0].tool_calls[0].function.arguments",
        "is required",
    ),
    (
        {
            "messages": [
                {
                    "role": "assistant",
                    "tool_calls": [
                        {"id": "1", "type": "function", "function": {"name": "f", "arguments": 1}}
                    ],
                }
            ]
        },
        "messages[0].tool_calls[0].function.arguments",
        "JSON string or an object",
    ),
    ({"messages": [{"role": "user", "content": "x", "name": 5}]}, "messages[0].name", "string"),
    # model and unknown fields
    ({"model": ""}, "model", "must not be empty"),
    ({"model": 3}, "model", "must be a string"),
    ({"foo": 1}, "foo", "Unrecognized request argument supplied: foo"),
    ({"best_of": 2}, "best_of", "Unrecognized request argument supplied: best_of"),
    # tools
    ({"tool_choice": "auto"}, "tool_choice", "only allowed when tools are given"),
    ({"tool_choice": "sometimes", "tools": [TOOL]}, "tool_choice", "'none', 'auto', 'required'"),
    ({"tool_choice": 3, "tools": [TOOL]}, "tool_choice", "got 3"),
    (
        {"tool_choice": {"type": "function", "function": {"name": "other"}}, "tools": [TOOL]},
        "tool_choice.function.name",
        "'other' is not one of the tools given: get_weather",
    ),
    ({"tools": [{"type": "function", "function": {}}]}, "tools[0].function.name", "required"),
    (
        {"tools": [{"type": "function", "function": {"name": "has space"}}]},
        "tools[0].function.name",
        "1 to 64 characters",
    ),
    ({"tools": [TOOL, TOOL]}, "tools[1].function.name", "duplicates the name 'get_weather'"),
    ({"tools": [{"type": "retrieval"}]}, "tools[0].type", "must be one of 'function'"),
    (
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": nested(33)}}]},
        "tools[0].function.parameters",
        "at most 32 levels deep, got 33",
    ),
    ({"tools": [TOOL], "functions": [{"name": "f"}]}, "functions", "cannot be combined with tools"),
    ({"function_call": "auto"}, "function_call", "only allowed when functions are given"),
    (
        {"functions": [{"name": "f"}], "function_call": {"name": "g"}},
        "function_call.name",
        "'g' is not one of the functions",
    ),
    (
        {"functions": [{"name": "f"}], "function_call": "auto", "tool_choice": "auto"},
        "function_call",
        "cannot be combined with tool_choice",
    ),
    (
        {"function_call": "required", "functions": [{"name": "f"}]},
        "function_call",
        "'none', 'auto'",
    ),
    ({"parallel_tool_calls": "no"}, "parallel_tool_calls", "boolean"),
    # output constraints
    ({"response_format": {"type": "xml"}}, "response_format.type", "got 'xml'"),
    ({"response_format": "json"}, "response_format", "must be an object"),
    (
        {"response_format": {"type": "json_schema"}},
        "response_format.json_schema",
        "is required",
    ),
    (
        {"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}},
        "response_format.json_schema.name",
        "is required",
    ),
    (
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": nested(40)},
            }
        },
        "response_format.json_schema.schema",
        "at most 32 levels deep, got 40",
    ),
    ({"response_format": {"type": "json_object"}, "regex": "a+"}, "regex", "at most one"),
    ({"response_format": {"type": "json_object"}, "ebnf": "root ::= 'a'"}, "ebnf", "at most one"),
    ({"regex": "a+", "ebnf": "root ::= 'a'"}, "ebnf", "ebnf cannot be combined with regex"),
    ({"regex": "a" * 4097}, "regex", "at most 4096 characters, got 4097"),
    ({"regex": ""}, "regex", "must not be empty"),
    ({"ebnf": "a" * 16385}, "ebnf", "at most 16384 characters"),
    (
        {"regex": "a+", "tools": [TOOL], "tool_choice": "required"},
        "tool_choice",
        "cannot be combined with regex",
    ),
    # streaming and continuation
    ({"stream_options": {"include_usage": True}}, "stream_options", "only allowed when stream"),
    ({"stream": True, "stream_options": {"foo": 1}}, "stream_options.foo", "Unrecognized"),
    ({"continue_final_message": True}, "continue_final_message", "got role 'user'"),
    # enums and free-form fields
    ({"service_tier": "gold"}, "service_tier", "'auto', 'default', 'flex', 'scale' or 'priority'"),
    ({"reasoning_effort": "huge"}, "reasoning_effort", "got 'huge'"),
    ({"metadata": {"a": 1}}, "metadata", "values must be strings, got 1 for key 'a'"),
    ({"metadata": {str(i): "v" for i in range(17)}}, "metadata", "at most 16 keys"),
    ({"metadata": {"k": "v" * 513}}, "metadata", "at most 512 characters, got 513 for key 'k'"),
    (
        {"chat_template_kwargs": {"chat_template": "{{x}}"}},
        "chat_template_kwargs",
        "'chat_template'",
    ),
    (
        {"chat_template_kwargs": {"add_generation_prompt": False}},
        "chat_template_kwargs",
        "must not",
    ),
    ({"lora_path": ""}, "lora_path", "must not be empty"),
    ({"user": 5}, "user", "must be a string"),
]


@pytest.mark.parametrize(("fields", "param", "words"), INVALID, ids=[p for _, p, _ in INVALID])
def test_invalid_request_names_the_field(fields: dict[str, Any], param: str, words: str) -> None:
    err = refused(body(**fields))
    assert err.param == param
    assert words in err.message
    assert type(err) is InvalidRequest


# (request fields, param, words) for fields berth knows but cannot honour
UNSUPPORTED: list[tuple[dict[str, Any], str, str]] = [
    ({"modalities": ["text", "audio"]}, "modalities", "text-only"),
    ({"audio": {"voice": "alloy", "format": "mp3"}}, "audio", "no audio output"),
    ({"prediction": {"type": "content", "content": "x"}}, "prediction", "predicted outputs"),
    ({"return_hidden_states": True}, "return_hidden_states", "hidden states"),
    ({"return_hidden_states": "last"}, "return_hidden_states", "hidden states"),
    ({"session_params": {"id": "s"}}, "session_params", "sessions"),
    ({"verbosity": "low"}, "verbosity", "verbosity"),
    ({"web_search_options": {}}, "web_search_options", "web search"),
    (
        {"stream": True, "stream_options": {"include_obfuscation": True}},
        "stream_options.include_obfuscation",
        "pad",
    ),
    ({"response_format": {"type": "structural_tag"}}, "response_format.type", "'structural_tag'"),
    ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0].type", "function tools"),
    (
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is this?"},
                        {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
                    ],
                }
            ]
        },
        "messages[0].content[1].type",
        "only text content parts are supported",
    ),
    (
        {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
        "messages[0].content[0].type",
        "'input_audio' is not supported",
    ),
    (
        {"messages": [{"role": "user", "content": [{"type": "file", "file": {}}]}]},
        "messages[0].content[0].type",
        "'file' is not supported",
    ),
    (
        {"messages": [{"role": "assistant", "audio": {"id": "a1"}}]},
        "messages[0].audio",
        "text-only",
    ),
]


@pytest.mark.parametrize(
    ("fields", "param", "words"), UNSUPPORTED, ids=[p for _, p, _ in UNSUPPORTED]
)
def test_unsupported_field_is_refused_with_reason(
    fields: dict[str, Any], param: str, words: str
) -> None:
    err = refused(body(**fields))
    assert isinstance(err, Unsupported)
    assert err.param == param
    assert err.code == "unsupported_field"
    assert words in err.message
    assert f"{param} " in err.message


@pytest.mark.parametrize(
    "fields",
    [
        {"modalities": ["text"]},
        {"audio": None, "prediction": None, "verbosity": None, "session_params": None},
        {"return_hidden_states": False},
        {"stream": True, "stream_options": {"include_obfuscation": False}},
    ],
)
def test_harmless_values_of_refused_fields_are_accepted(fields: dict[str, Any]) -> None:
    parse_chat_request(body(**fields))


@pytest.mark.parametrize("tier", ["auto", "default", "flex", "scale", "priority"])
def test_service_tiers_are_accepted(tier: str) -> None:
    assert parse_chat_request(body(service_tier=tier)).service_tier == tier


def test_body_must_be_an_object() -> None:
    err = refused([1, 2])
    assert err.param is None
    assert "JSON object" in err.message


def test_body_must_be_json() -> None:
    err = refused(b"{not json")
    assert "not valid JSON" in err.message


def test_unknown_field_is_reported_before_other_errors() -> None:
    err = refused(body(temperature=9, zzz=1))
    assert err.param == "zzz"


def test_first_error_in_field_order_wins() -> None:
    err = refused(body(temperature=9, top_p=9))
    assert err.param == "temperature"


def test_model_and_messages_are_required() -> None:
    assert refused({"messages": [USER]}).param == "model"
    assert refused({"model": "tiny"}).param == "messages"


class TestLimits:
    """The bounds come from ``RequestLimits``, passed per call."""

    limits = RequestLimits(
        max_n=2,
        max_messages=2,
        max_regex_chars=3,
        max_grammar_chars=3,
        max_json_schema_depth=2,
        max_tools=1,
        max_stop_token_ids=1,
        max_stop_chars=3,
        max_identifier_chars=4,
    )

    @pytest.mark.parametrize(
        ("fields", "param", "words"),
        [
            ({"n": 3}, "n", "between 1 and 2, got 3"),
            ({"messages": [USER, ASSISTANT, USER]}, "messages", "at most 2 messages, got 3"),
            ({"regex": "abcd"}, "regex", "at most 3 characters"),
            ({"ebnf": "abcd"}, "ebnf", "at most 3 characters"),
            ({"tools": [TOOL, TOOL]}, "tools", "at most 1 entries, got 2"),
            ({"functions": [{"name": "a"}, {"name": "b"}]}, "functions", "at most 1 entries"),
            ({"stop_token_ids": [1, 2]}, "stop_token_ids", "at most 1 token ids"),
            ({"stop": "abcd"}, "stop", "stop must have at most 3 characters, got 4"),
            ({"stop": ["ab", "abcd"]}, "stop[1]", "stop[1] must have at most 3 characters"),
            ({"stop": ["a"] * 5}, "stop", "at most 4 strings, got 5"),
            ({"user": "abcde"}, "user", "at most 4 characters, got 5"),
            ({"safety_identifier": "abcde"}, "safety_identifier", "at most 4 characters"),
            ({"prompt_cache_key": "abcde"}, "prompt_cache_key", "at most 4 characters"),
            (
                {
                    "response_format": {
                        "type": "json_schema",
                        "json_schema": {"name": "s", "schema": nested(3)},
                    }
                },
                "response_format.json_schema.schema",
                "at most 2 levels deep, got 3",
            ),
        ],
    )
    def test_over_limit(self, fields: dict[str, Any], param: str, words: str) -> None:
        err = refused(body(**fields), self.limits)
        assert err.param == param
        assert words in err.message

    def test_at_limit(self) -> None:
        parse_chat_request(
            body(
                n=2,
                messages=[USER, ASSISTANT],
                regex="abc",
                stop_token_ids=[1],
                stop=["abc", "xyz"],
                user="abcd",
                safety_identifier="abcd",
                prompt_cache_key="abcd",
                tools=[{"type": "function", "function": {"name": "f", "parameters": {"a": {}}}}],
            ),
            self.limits,
        )

    def test_defaults(self) -> None:
        limits = RequestLimits()
        assert (limits.max_n, limits.max_messages, limits.max_tools) == (16, 1024, 128)
        assert limits.max_body_bytes == 4 * 1024 * 1024
        assert (limits.max_regex_chars, limits.max_grammar_chars) == (4096, 16384)
        assert (limits.max_json_schema_depth, limits.max_stop_token_ids) == (32, 64)
        assert (limits.max_stop_chars, limits.max_identifier_chars) == (256, 256)

    def test_counts_are_refused_before_the_model_is_built(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # a body over a count bound is refused from the decoded JSON: no entry is validated
        def no_model(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError("the request model was built")

        monkeypatch.setattr(ChatCompletionRequest, "model_validate", no_model)
        many_tools = [{"type": "function", "function": {"name": f"f{i}"}} for i in range(10_000)]
        many_messages = [USER] * 50_000
        for fields, param in (
            ({"tools": many_tools}, "tools"),
            ({"functions": [t["function"] for t in many_tools]}, "functions"),
            ({"messages": many_messages}, "messages"),
            ({"stop": ["x" * 500_000] * 4}, "stop[0]"),
        ):
            assert refused(body(**fields)).param == param
        # an unknown field is still reported first
        assert refused(body(tools=many_tools, bogus=1)).param == "bogus"

    @pytest.mark.parametrize(
        "fields",
        [
            {"messages": [USER, ASSISTANT, USER]},
            {"tools": [TOOL, TOOL]},
            {"functions": [{"name": "a"}, {"name": "b"}]},
            {"stop_token_ids": [1, 2]},
            {"stop": ["a"] * 5},
            {"regex": "abcd"},
            {"user": "abcde"},
            {"tools": [TOOL, TOOL], "bogus": 1},
        ],
    )
    def test_counts_are_refused_before_the_body_is_parsed(self, fields: dict[str, Any]) -> None:
        # the same refusal as the full parse, from a scan of the raw body
        raw = json.dumps(body(**fields)).encode()
        with pytest.raises(InvalidRequest) as early:
            check_sizes_unparsed(raw, self.limits)
        late = refused(body(**fields), self.limits)
        assert (early.value.param, early.value.message) == (late.param, late.message)

    @pytest.mark.parametrize(
        "raw",
        [
            json.dumps(body(stop=["ab", "xyz"], tools=[TOOL])).encode(),
            # left to the full parse, which says what is wrong with them
            json.dumps(body(stop=["ab", "abcd"])).encode(),
            b'{"model": "tiny", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
            b'{"model": "tiny", "messages": [',
            b"[1, 2]",
        ],
    )
    def test_what_the_scan_cannot_judge_passes_it(self, raw: bytes) -> None:
        check_sizes_unparsed(raw, self.limits)
