"""What the official ``openai`` client sends parses; what berth answers, the client reads.

The client runs for real; only its HTTP transport is replaced by an
``httpx.MockTransport`` that captures the request body and replies with what
berth's serving code (``protocol/output.py``, the model directory) writes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import msgspec
import openai
import pytest
from openai.types.chat import ChatCompletionMessageFunctionToolCall
from pydantic import BaseModel

from berth.api.directory import model_cards
from berth.protocol.chat import ChatCompletionRequest, NamedToolChoice, parse_chat_request
from berth.protocol.envelopes import TokenEvent
from berth.protocol.errors import Unsupported
from berth.protocol.output import ChunkWriter, CompletionAssembler

Handler = Callable[[httpx.Request], httpx.Response]
USER = {"role": "user", "content": "hi"}


def event(seq: int, type_: str = "delta", **fields: Any) -> TokenEvent:
    return msgspec.convert({"id": "r1", "seq": seq, "type": type_, **fields}, TokenEvent)


def assembled(*events: TokenEvent) -> dict[str, Any]:
    """The non-streamed body berth answers for these events."""
    assembler = CompletionAssembler("chatcmpl-1", "tiny", 123, n=1)
    for e in events:
        assembler.add(e)
    return assembler.response(events[-1])


def completion(content: str = "hello") -> dict[str, Any]:
    return assembled(
        event(
            0,
            "finished",
            choices=[{"index": 0, "content": content, "finish_reason": "stop"}],
            usage={"prompt_tokens": 3, "completion_tokens": 1},
        )
    )


def json_response(body: dict[str, Any]) -> httpx.Response:
    return httpx.Response(200, json=body)


def sse_response(events: list[TokenEvent]) -> httpx.Response:
    writer = ChunkWriter("chatcmpl-1", "tiny", 123, n=1, include_usage=True, stream_reasoning=True)
    text = "".join(writer.render(e) for e in events)
    return httpx.Response(200, content=text.encode(), headers={"content-type": "text/event-stream"})


def client_for(handler: Handler) -> openai.OpenAI:
    return openai.OpenAI(
        api_key="test",
        base_url="http://berth.test/v1",
        # openai 3.x types this as its own httpx2 client but accepts httpx's; httpx works
        # with every openai version berth allows (>= 1.40)
        http_client=httpx.Client(transport=httpx.MockTransport(handler)),  # type: ignore[arg-type]
        max_retries=0,
    )


class Capture:
    """A fake server that records the bodies the client sends."""

    def __init__(self, reply: Callable[[], httpx.Response] | None = None) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.reply = reply or (lambda: json_response(completion()))

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.content:
            self.bodies.append(json.loads(request.content))
        return self.reply()


@pytest.fixture
def capture() -> Capture:
    return Capture()


@pytest.fixture
def client(capture: Capture) -> Iterator[openai.OpenAI]:
    with client_for(capture) as c:
        yield c


def sent(client: openai.OpenAI, capture: Capture, **kwargs: Any) -> ChatCompletionRequest:
    """Call ``chat.completions.create`` and parse the body the client put on the wire."""
    client.chat.completions.create(**{"model": "tiny", "messages": [USER], **kwargs})
    return parse_chat_request(capture.bodies[-1])


def test_plain_request(client: openai.OpenAI, capture: Capture) -> None:
    req = sent(client, capture)
    assert req.model == "tiny"
    assert req.message_dicts() == [USER]


def test_every_openai_sampling_field(client: openai.OpenAI, capture: Capture) -> None:
    req = sent(
        client,
        capture,
        temperature=0.7,
        top_p=0.9,
        n=2,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        logit_bias={"42": -100},
        logprobs=True,
        top_logprobs=5,
        max_completion_tokens=32,
        seed=7,
        stop=["\n\n"],
        user="u-1",
        metadata={"team": "search"},
        store=True,
        service_tier="flex",
        reasoning_effort="low",
        parallel_tool_calls=False,
        prompt_cache_key="conv-1",
        safety_identifier="hash-1",
        modalities=["text"],
    )
    assert req.logit_bias == {42: -100.0}
    assert (req.n, req.top_logprobs, req.max_completion_tokens, req.effective_seed) == (2, 5, 32, 7)
    assert req.service_tier == "flex"


def test_sglang_fields_through_extra_body(client: openai.OpenAI, capture: Capture) -> None:
    req = sent(
        client,
        capture,
        max_tokens=16,
        extra_body={
            "regex": r"\d{3}",
            "top_k": 20,
            "min_p": 0.1,
            "min_tokens": 1,
            "repetition_penalty": 1.05,
            "stop_token_ids": [2],
            "no_stop_trim": True,
            "ignore_eos": True,
            "skip_special_tokens": False,
            "lora_path": "sql-adapter",
            "separate_reasoning": False,
            "stream_reasoning": False,
            "chat_template_kwargs": {"enable_thinking": False},
            "sampling_seed": 11,
        },
    )
    assert req.constraint_kind == "regex"
    assert (req.top_k, req.max_completion_tokens, req.max_tokens) == (20, 16, None)
    assert req.effective_seed == 11


def test_tools_and_tool_history(client: openai.OpenAI, capture: Capture) -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            "strict": True,
        },
    }
    req = sent(
        client,
        capture,
        messages=[
            {"role": "developer", "content": "Use tools."},
            USER,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "rain"},
        ],
        tools=[tool],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    assert isinstance(req.tool_choice, NamedToolChoice)
    assert req.tool_dicts() == [tool]


def test_legacy_functions(client: openai.OpenAI, capture: Capture) -> None:
    req = sent(
        client,
        capture,
        functions=[{"name": "lookup", "parameters": {"type": "object"}}],
        function_call={"name": "lookup"},
    )
    assert req.tools is not None and req.tools[0].function.name == "lookup"
    assert req.functions is None and req.function_call is None


def test_json_schema_response_format(client: openai.OpenAI, capture: Capture) -> None:
    fmt = {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": {"type": "object"}, "strict": True},
    }
    req = sent(client, capture, response_format=fmt)
    assert req.constraint_kind == "json_schema"
    assert req.model_dump(exclude_none=True)["response_format"] == fmt


def test_parse_with_a_pydantic_model(capture: Capture) -> None:
    class Answer(BaseModel):
        city: str
        celsius: float

    def reply() -> httpx.Response:
        return json_response(completion('{"city": "Oslo", "celsius": 4.5}'))

    capture.reply = reply
    with client_for(capture) as client:
        parsed = client.chat.completions.parse(
            model="tiny", messages=[{"role": "user", "content": "hi"}], response_format=Answer
        )
    assert parsed.choices[0].message.parsed == Answer(city="Oslo", celsius=4.5)
    req = parse_chat_request(capture.bodies[-1])
    assert req.constraint_kind == "json_schema"


def test_text_parts_and_continuation(client: openai.OpenAI, capture: Capture) -> None:
    req = sent(
        client,
        capture,
        messages=[
            {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
            {"role": "user", "content": [{"type": "text", "text": "Count:"}]},
            {"role": "assistant", "content": "1, 2,"},
        ],
        extra_body={"continue_final_message": True},
    )
    assert req.message_dicts()[-1] == {"role": "assistant", "content": "1, 2,"}


def test_image_parts_are_refused(client: openai.OpenAI, capture: Capture) -> None:
    client.chat.completions.create(
        model="tiny",
        messages=[
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": "https://x/cat.png"}}],
            }
        ],
    )
    with pytest.raises(Unsupported) as info:
        parse_chat_request(capture.bodies[-1])
    assert info.value.param == "messages[0].content[0].type"


def test_streaming_round_trip(capture: Capture) -> None:
    events = [
        event(0, "started", worker="w"),
        event(1, choices=[{"index": 0, "reasoning_content": "think "}]),
        event(2, choices=[{"index": 0, "content": "Hel"}]),
        event(
            3,
            choices=[
                {
                    "index": 0,
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "f", "arguments": '{"a"'},
                        }
                    ],
                }
            ],
        ),
        event(
            4,
            "finished",
            choices=[
                {
                    "index": 0,
                    "tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}],
                    "finish_reason": "tool_calls",
                }
            ],
            usage={"prompt_tokens": 5, "completion_tokens": 4},
        ),
    ]
    capture.reply = lambda: sse_response(events)
    with client_for(capture) as client:
        stream = client.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        got = list(stream)
    req = parse_chat_request(capture.bodies[-1])
    assert req.stream and req.wants_usage
    assert {c.id for c in got} == {"chatcmpl-1"}
    assert "".join(c.choices[0].delta.content or "" for c in got if c.choices) == "Hel"
    reasoning = [getattr(c.choices[0].delta, "reasoning_content", None) for c in got if c.choices]
    assert "think " in reasoning
    args = "".join(
        tc.function.arguments or ""
        for c in got
        if c.choices and c.choices[0].delta.tool_calls
        for tc in c.choices[0].delta.tool_calls
        if tc.function
    )
    assert json.loads(args) == {"a": 1}
    finishes = [c.choices[0].finish_reason for c in got if c.choices]
    assert finishes[-1] == "tool_calls"
    assert got[-1].choices == [] and got[-1].usage is not None
    assert got[-1].usage.total_tokens == 9


def test_non_streaming_response_with_tool_calls(capture: Capture) -> None:
    done = assembled(
        event(0, "started", worker="w"),
        event(1, choices=[{"index": 0, "reasoning_content": "need weather"}]),
        event(
            2,
            "finished",
            choices=[
                {
                    "index": 0,
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "f", "arguments": "{}"},
                        }
                    ],
                    "finish_reason": "tool_calls",
                }
            ],
            usage={"prompt_tokens": 10, "completion_tokens": 5},
        ),
    )
    capture.reply = lambda: json_response(done)
    with client_for(capture) as client:
        got = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}]
        )
    message = got.choices[0].message
    assert message.content is None
    assert message.tool_calls is not None
    call = message.tool_calls[0]
    assert isinstance(call, ChatCompletionMessageFunctionToolCall) and call.function.name == "f"
    assert getattr(message, "reasoning_content", None) == "need weather"
    assert got.usage is not None and got.usage.completion_tokens == 5


def test_model_list(capture: Capture) -> None:
    body = {"object": "list", "data": model_cards({"tiny": {"sql-adapter"}}, 123)}
    capture.reply = lambda: json_response(body)
    with client_for(capture) as client:
        got = list(client.models.list())
    assert [m.id for m in got] == ["tiny", "sql-adapter"]
    assert got[1].owned_by == "berth" and getattr(got[1], "parent", None) == "tiny"
