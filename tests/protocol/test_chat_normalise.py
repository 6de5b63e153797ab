"""Normalisation of deprecated spellings, defaults, and the accessors downstream code uses."""

from __future__ import annotations

from typing import Any

import pytest

from berth.protocol.chat import (
    ChatCompletionRequest,
    NamedToolChoice,
    Tool,
    parse_chat_request,
    schema_depth,
)

USER = {"role": "user", "content": "hi"}
WEATHER = {"name": "get_weather", "description": "Weather", "parameters": {"type": "object"}}


def parse(**fields: Any) -> ChatCompletionRequest:
    return parse_chat_request({"model": "tiny", "messages": [USER], **fields})


def test_defaults() -> None:
    req = parse()
    assert (req.n, req.stream, req.logprobs, req.ignore_eos) == (1, False, False, False)
    assert (req.skip_special_tokens, req.no_stop_trim, req.continue_final_message) == (
        True,
        False,
        False,
    )
    assert (req.separate_reasoning, req.stream_reasoning, req.parallel_tool_calls) == (
        True,
        True,
        True,
    )
    assert req.return_hidden_states is False
    assert req.min_tokens == 0
    # None: the engine's or the model's generation-config default applies
    for name in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "seed"):
        assert getattr(req, name) is None
    assert req.max_tokens_requested is None
    assert req.constraint_kind is None
    assert req.effective_seed is None
    assert req.wants_usage is False


def test_max_tokens_becomes_max_completion_tokens() -> None:
    req = parse(max_tokens=64)
    assert req.max_completion_tokens == 64
    assert req.max_tokens is None
    assert req.max_tokens_requested == 64


def test_equal_max_tokens_and_max_completion_tokens_are_accepted() -> None:
    req = parse(max_tokens=64, max_completion_tokens=64)
    assert (req.max_completion_tokens, req.max_tokens) == (64, None)


def test_functions_become_tools() -> None:
    req = parse(functions=[WEATHER], function_call={"name": "get_weather"})
    assert req.functions is None and req.function_call is None
    assert req.tools == [Tool.model_validate({"type": "function", "function": WEATHER})]
    assert isinstance(req.tool_choice, NamedToolChoice)
    assert req.tool_choice.function.name == "get_weather"
    assert req.tool_choice_label == "get_weather"


@pytest.mark.parametrize("mode", ["none", "auto"])
def test_function_call_modes_become_tool_choice(mode: str) -> None:
    req = parse(functions=[WEATHER], function_call=mode)
    assert req.tool_choice == mode
    assert req.function_call is None


def test_function_call_none_without_functions() -> None:
    assert parse(function_call="none").tool_choice == "none"


def test_tool_choice_none_without_tools_is_accepted() -> None:
    assert parse(tool_choice="none").tool_choice == "none"


def test_tool_dicts_for_the_template() -> None:
    req = parse(tools=[{"type": "function", "function": WEATHER}], tool_choice="required")
    assert req.tool_dicts() == [{"type": "function", "function": WEATHER}]
    assert parse().tool_dicts() is None


@pytest.mark.parametrize(
    ("stop", "expected"),
    [("\n", ["\n"]), (["a", "b"], ["a", "b"]), ([], None), (None, None)],
)
def test_stop_becomes_a_list(stop: Any, expected: list[str] | None) -> None:
    assert parse(stop=stop).stop == expected


def test_logit_bias_keys_become_token_ids() -> None:
    req = parse(logit_bias={"50256": -100, "7": 2.5})
    assert req.logit_bias == {50256: -100.0, 7: 2.5}


@pytest.mark.parametrize(
    ("fields", "kind"),
    [
        ({"response_format": {"type": "text"}}, None),
        ({"response_format": {"type": "json_object"}}, "json_object"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "s", "schema": {}},
                }
            },
            "json_schema",
        ),
        # OpenAI allows a json_schema format without a schema: any JSON object
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "s"}}}, "json_object"),
        ({"regex": "[a-z]+"}, "regex"),
        ({"ebnf": 'root ::= "yes" | "no"'}, "ebnf"),
        ({"response_format": {"type": "text"}, "regex": "x"}, "regex"),
    ],
)
def test_constraint_kind(fields: dict[str, Any], kind: str | None) -> None:
    assert parse(**fields).constraint_kind == kind


def test_json_schema_keeps_its_schema_under_the_openai_name() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "s", "schema": schema, "strict": True}}
    req = parse(response_format=fmt)
    assert req.model_dump(exclude_none=True)["response_format"] == fmt


@pytest.mark.parametrize(
    ("fields", "seed"),
    [({"seed": 1}, 1), ({"sampling_seed": 2}, 2), ({"seed": 1, "sampling_seed": 2}, 2)],
)
def test_sampling_seed_wins_over_seed(fields: dict[str, Any], seed: int) -> None:
    assert parse(**fields).effective_seed == seed


def test_usage_option() -> None:
    assert parse(stream=True, stream_options={"include_usage": True}).wants_usage
    assert not parse(stream=True, stream_options={"include_usage": False}).wants_usage


def test_message_dicts_are_ready_for_a_chat_template() -> None:
    req = parse(
        messages=[
            {
                "role": "system",
                "content": [{"type": "text", "text": "Be"}, {"type": "text", "text": "brief"}],
            },
            {"role": "user", "content": "Weather?", "name": "ann"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                    }
                ],
                "audio": None,
                "annotations": [],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "rain"},
            {"role": "assistant", "content": "It", "reasoning_content": "look it up"},
        ],
        continue_final_message=True,
    )
    assert req.message_dicts() == [
        {"role": "system", "content": "Be\nbrief"},
        {"role": "user", "content": "Weather?", "name": "ann"},
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "rain"},
        {"role": "assistant", "content": "It", "reasoning_content": "look it up"},
    ]


def test_every_role_is_accepted() -> None:
    req = parse(
        messages=[
            {"role": "developer", "content": "rules"},
            {"role": "system", "content": "sys", "name": "op"},
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
            {"role": "assistant", "refusal": "no"},
            {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]},
            {"role": "function", "name": "f", "content": None},
            {"role": "assistant", "function_call": {"name": "f", "arguments": "{}"}},
            {"role": "tool", "tool_call_id": "x", "content": [{"type": "text", "text": "ok"}]},
        ]
    )
    assert [m["role"] for m in req.message_dicts()] == [
        "developer",
        "system",
        "user",
        "assistant",
        "assistant",
        "function",
        "assistant",
        "tool",
    ]


def test_sglang_engine_fields_are_kept() -> None:
    req = parse(
        top_k=40,
        min_p=0.05,
        min_tokens=2,
        repetition_penalty=1.1,
        stop_token_ids=[2],
        no_stop_trim=True,
        ignore_eos=True,
        skip_special_tokens=False,
        lora_path="adapter-a",
        separate_reasoning=False,
        stream_reasoning=False,
        chat_template_kwargs={"enable_thinking": False},
        prompt_cache_key="k",
        safety_identifier="u1",
        reasoning_effort="low",
        service_tier="flex",
        metadata={"team": "a"},
        store=True,
        user="u",
    )
    assert (req.top_k, req.min_p, req.min_tokens, req.repetition_penalty) == (40, 0.05, 2, 1.1)
    assert req.chat_template_kwargs == {"enable_thinking": False}
    assert req.lora_path == "adapter-a"


def test_integers_are_accepted_for_float_fields() -> None:
    req = parse(temperature=1, top_p=1, presence_penalty=-2, repetition_penalty=2)
    assert req.temperature == 1.0


def test_schema_depth() -> None:
    assert schema_depth(None) == 0
    assert schema_depth({}) == 1
    assert schema_depth({"a": [{"b": 1}]}) == 3
    deep: Any = 0
    for _ in range(5000):  # deeper than Python's recursion limit
        deep = [deep]
    assert schema_depth(deep) == 5000


def test_parse_accepts_raw_json() -> None:
    req = parse_chat_request(b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}')
    assert req.model == "tiny"
