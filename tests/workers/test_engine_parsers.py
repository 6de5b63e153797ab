"""vLLM's tool-call and reasoning parsers behind berth's per-choice feed, on known text.

The tiny model only emits gibberish, so these tests stream hand-written model
output through the parsers token by token (with the tiny model's real tokenizer),
and check how ``tool_choice`` becomes a constraint.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from vllm.sampling_params import RequestOutputKind

from berth.protocol.chat import ChatCompletionRequest
from berth.protocol.errors import Unsupported
from berth.workers.engine.chat import render_prompt
from berth.workers.engine.mapping import build_sampling_params, structured_outputs
from berth.workers.engine.parsers import OutputParsers, ParsedDelta

Build = Callable[..., ChatCompletionRequest]

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


@pytest.fixture(scope="module")
def hermes(tiny_tokenizer: Any) -> OutputParsers:
    return OutputParsers(tiny_tokenizer, tool_call_parser="hermes", reasoning_parser=None)


@pytest.fixture(scope="module", params=["deepseek_r1", "qwen3"])
def thinking(request: pytest.FixtureRequest, tiny_tokenizer: Any) -> OutputParsers:
    return OutputParsers(tiny_tokenizer, tool_call_parser="hermes", reasoning_parser=request.param)


def stream(
    parsers: OutputParsers, tokenizer: Any, req: ChatCompletionRequest, output: str
) -> tuple[list[ParsedDelta], bool]:
    """Feed ``output`` one token at a time, as the engine's DELTA outputs arrive."""
    prompt = render_prompt(tokenizer, req)
    parsing = parsers.for_request(
        req,
        structured_outputs(req),
        skip_special_tokens=req.skip_special_tokens,
        chat_template_kwargs=dict(req.chat_template_kwargs or {}),
    )
    choice = parsing.choice_parser(prompt)
    ids = tokenizer.encode(output, add_special_tokens=False)
    deltas = [
        choice.feed(tokenizer.decode([t]), [t], finished=i == len(ids) - 1)
        for i, t in enumerate(ids)
    ]
    return deltas, choice.tools_called


def joined(deltas: list[ParsedDelta]) -> tuple[str, str, list[dict[str, Any]]]:
    calls: dict[int, dict[str, Any]] = {}
    for d in deltas:
        for tc in d.tool_calls or []:
            call = calls.setdefault(tc["index"], {"name": "", "arguments": ""})
            call.update({k: tc[k] for k in ("id", "type") if k in tc})
            call["name"] += (tc.get("function") or {}).get("name") or ""
            call["arguments"] += (tc.get("function") or {}).get("arguments") or ""
    content = "".join(d.content for d in deltas)
    reasoning = "".join(d.reasoning for d in deltas)
    return content, reasoning, [calls[i] for i in sorted(calls)]


def test_markup_tokens_are_single_tokens(tiny_tokenizer: Any) -> None:
    for markup in ("<tool_call>", "</tool_call>", "<think>", "</think>"):
        assert len(tiny_tokenizer.encode(markup, add_special_tokens=False)) == 1


def test_hermes_auto_streams_a_tool_call(
    hermes: OutputParsers, tiny_tokenizer: Any, chat_request: Build
) -> None:
    req = chat_request(tools=TOOLS)
    deltas, called = stream(hermes, tiny_tokenizer, req, "Let me check. " + CALL)
    content, reasoning, calls = joined(deltas)
    assert called
    assert content == "Let me check. " and reasoning == ""
    assert len(calls) == 1
    assert calls[0]["name"] == "get_weather" and calls[0]["type"] == "function"
    assert calls[0]["id"]
    assert json.loads(calls[0]["arguments"]) == {"city": "Paris"}


def test_hermes_two_calls_get_two_indices(
    hermes: OutputParsers, tiny_tokenizer: Any, chat_request: Build
) -> None:
    second = CALL.replace("Paris", "Oslo")
    deltas, _ = stream(hermes, tiny_tokenizer, chat_request(tools=TOOLS), CALL + "\n" + second)
    _, _, calls = joined(deltas)
    assert [json.loads(c["arguments"])["city"] for c in calls] == ["Paris", "Oslo"]
    assert calls[0]["id"] != calls[1]["id"]


def test_plain_text_with_tools_is_content(
    hermes: OutputParsers, tiny_tokenizer: Any, chat_request: Build
) -> None:
    deltas, called = stream(hermes, tiny_tokenizer, chat_request(tools=TOOLS), "Just words.")
    assert joined(deltas) == ("Just words.", "", []) and not called


@pytest.mark.parametrize("fields", [{}, {"tools": TOOLS, "tool_choice": "none"}])
def test_without_tools_markup_stays_content(
    hermes: OutputParsers, tiny_tokenizer: Any, chat_request: Build, fields: dict[str, Any]
) -> None:
    deltas, called = stream(hermes, tiny_tokenizer, chat_request(**fields), CALL)
    assert joined(deltas) == (CALL, "", []) and not called


def test_reasoning_is_split_when_asked(
    thinking: OutputParsers, tiny_tokenizer: Any, chat_request: Build
) -> None:
    deltas, _ = stream(
        thinking, tiny_tokenizer, chat_request(), "<think>Paris is in France.</think>It is sunny."
    )
    content, reasoning, _ = joined(deltas)
    assert reasoning == "Paris is in France." and content == "It is sunny."


def test_reasoning_then_tool_call(
    thinking: OutputParsers, tiny_tokenizer: Any, chat_request: Build
) -> None:
    deltas, called = stream(
        thinking,
        tiny_tokenizer,
        chat_request(tools=TOOLS),
        "<think>Need the weather.</think>" + CALL,
    )
    content, reasoning, calls = joined(deltas)
    assert reasoning == "Need the weather." and content.strip() == ""
    assert called and calls[0]["name"] == "get_weather"


def test_separate_reasoning_false_keeps_it_in_content(
    thinking: OutputParsers, tiny_tokenizer: Any, chat_request: Build
) -> None:
    text = "<think>hmm</think>answer"
    deltas, _ = stream(thinking, tiny_tokenizer, chat_request(separate_reasoning=False), text)
    assert joined(deltas) == (text, "", [])


def test_thinking_disabled_in_the_template_means_content(
    thinking: OutputParsers, tiny_tokenizer: Any, chat_request: Build
) -> None:
    req = chat_request(chat_template_kwargs={"enable_thinking": False})
    deltas, _ = stream(thinking, tiny_tokenizer, req, "answer right away")
    assert joined(deltas) == ("answer right away", "", [])


def test_no_reasoning_parser_means_no_split(
    hermes: OutputParsers, tiny_tokenizer: Any, chat_request: Build
) -> None:
    text = "<think>hmm</think>answer"
    deltas, _ = stream(hermes, tiny_tokenizer, chat_request(), text)
    assert joined(deltas) == (text, "", [])


# --- tool_choice as a constraint ----------------------------------------------------------


def adjusted(parsers: OutputParsers, req: ChatCompletionRequest) -> Any:
    return parsers.for_request(req, structured_outputs(req), skip_special_tokens=True)


def test_required_constrains_to_the_tool_schemas(
    hermes: OutputParsers, chat_request: Build
) -> None:
    parsing = adjusted(hermes, chat_request(tools=TOOLS, tool_choice="required"))
    tag = json.loads(parsing.structured_outputs.structural_tag)
    (call,) = {t["begin"].replace("\n", "").strip() for t in tag["format"]["tags"]}
    assert call == '<tool_call>{"name": "get_weather", "arguments":'
    assert all(
        t["content"]["json_schema"] == TOOLS[0]["function"]["parameters"]
        for t in tag["format"]["tags"]
    )
    assert tag["format"]["at_least_one"] is True
    assert parsing.skip_special_tokens is False  # hermes needs <tool_call> in the text


def test_named_tool_constrains_to_one_call(hermes: OutputParsers, chat_request: Build) -> None:
    req = chat_request(
        tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}}
    )
    tag = json.loads(adjusted(hermes, req).structured_outputs.structural_tag)
    assert tag["format"]["stop_after_first"] is True
    # a forced call is held to the tool's schema
    assert tag["format"]["tags"][0]["content"]["json_schema"] == TOOLS[0]["function"]["parameters"]


def test_parallel_tool_calls_false_allows_one_call(
    hermes: OutputParsers, chat_request: Build
) -> None:
    req = chat_request(tools=TOOLS, tool_choice="required", parallel_tool_calls=False)
    tag = json.loads(adjusted(hermes, req).structured_outputs.structural_tag)
    assert tag["format"]["stop_after_first"] is True


@pytest.mark.parametrize("choice", ["auto", "none", None])
def test_auto_and_none_leave_output_free(
    hermes: OutputParsers, chat_request: Build, choice: str | None
) -> None:
    fields: dict[str, Any] = {"tools": TOOLS}
    if choice is not None:
        fields["tool_choice"] = choice
    assert adjusted(hermes, chat_request(**fields)).structured_outputs is None


def test_response_format_with_auto_tools_keeps_the_format(
    hermes: OutputParsers, chat_request: Build
) -> None:
    req = chat_request(tools=TOOLS, response_format={"type": "json_object"})
    assert adjusted(hermes, req).structured_outputs.json_object is True


def test_forced_tool_without_a_tool_parser_is_unsupported(
    tiny_tokenizer: Any, chat_request: Build
) -> None:
    plain = OutputParsers(tiny_tokenizer, tool_call_parser=None, reasoning_parser=None)
    with pytest.raises(Unsupported) as err:
        adjusted(plain, chat_request(tools=TOOLS, tool_choice="required"))
    assert err.value.param == "tool_choice"
    # auto is fine: the tools go into the prompt and the output stays text
    assert adjusted(plain, chat_request(tools=TOOLS)).structured_outputs is None


def test_unknown_parser_name_fails_at_start(tiny_tokenizer: Any) -> None:
    with pytest.raises(TypeError):
        OutputParsers(tiny_tokenizer, tool_call_parser="no-such-parser", reasoning_parser=None)


def test_sampling_params_carry_the_tool_constraint(
    hermes: OutputParsers, chat_request: Build
) -> None:
    req = chat_request(tools=TOOLS, tool_choice="required")
    parsing = adjusted(hermes, req)
    sp = build_sampling_params(
        req, vocab_size=388, max_model_len=512, prompt_len=10, parsing=parsing
    )
    assert sp.structured_outputs is not None and sp.structured_outputs.structural_tag
    assert sp.skip_special_tokens is False
    assert sp.output_kind is RequestOutputKind.DELTA
