"""Events become OpenAI output that the official client's own types accept."""

from __future__ import annotations

import json
from typing import Any

import msgspec
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from berth.protocol.envelopes import TokenEvent
from berth.protocol.output import DONE, ChunkWriter, CompletionAssembler, parse_sse_event_id


def _event(seq: int, type_: str = "delta", **fields: object) -> TokenEvent:
    return msgspec.convert({"id": "r1", "seq": seq, "type": type_, **fields}, TokenEvent)


EVENTS = [
    _event(0, "started", worker="w"),
    _event(
        1,
        choices=[
            {
                "index": 0,
                "content": "Hel",
                "logprobs": [
                    {"token": "Hel", "logprob": -0.5, "bytes": [72, 101, 108], "top_logprobs": []}
                ],
            }
        ],
    ),
    _event(
        2,
        choices=[
            {
                "index": 1,
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get", "arguments": '{"a"'},
                    }
                ],
            }
        ],
    ),
    _event(
        3,
        "finished",
        choices=[
            {
                "index": 0,
                "content": "lo",
                "finish_reason": "stop",
                "logprobs": [
                    {"token": "lo", "logprob": -0.1, "bytes": [108, 111], "top_logprobs": []}
                ],
            },
            {
                "index": 1,
                "tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}],
                "finish_reason": "tool_calls",
            },
        ],
        usage={"prompt_tokens": 7, "completion_tokens": 5},
    ),
]


def _data_lines(text: str) -> list[str]:
    return [line[6:] for line in text.split("\n") if line.startswith("data: ")]


def test_stream_chunks_parse_as_openai_chunks() -> None:
    writer = ChunkWriter("r1", "m", 123, n=2, include_usage=True)
    lines = _data_lines("".join(writer.render(e) for e in EVENTS))
    assert lines[-1] == "[DONE]"
    chunks = [ChatCompletionChunk.model_validate(json.loads(x)) for x in lines[:-1]]
    # the role comes first, once per choice
    assert [(c.choices[0].index, c.choices[0].delta.role) for c in chunks[:2]] == [
        (0, "assistant"),
        (1, "assistant"),
    ]
    text = "".join(
        c.choices[0].delta.content or "" for c in chunks if c.choices and c.choices[0].index == 0
    )
    assert text == "Hello"
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes == ["stop", "tool_calls"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == 12


def test_error_event_ends_stream_with_error_then_done() -> None:
    writer = ChunkWriter("r1", "m", 123, n=1, include_usage=False)
    err = {
        "error": {"message": "boom", "type": "server_error", "param": None, "code": "worker_lost"}
    }
    out = writer.render(_event(0, "started")) + writer.render(
        _event(1, "error", error=err, status=500)
    )
    lines = _data_lines(out)
    assert lines[-1] == DONE.strip()[6:]
    assert json.loads(lines[-2])["error"]["code"] == "worker_lost"


def test_aborted_choice_never_reports_stop() -> None:
    writer = ChunkWriter("r1", "m", 123, n=1, include_usage=False)
    out = writer.render(_event(0, "cancelled", choices=[{"index": 0, "finish_reason": "abort"}]))
    assert '"finish_reason":"stop"' not in out
    assert json.loads(_data_lines(out)[-2])["error"]["code"] == "cancelled"


def test_assembled_response_parses_as_openai_completion() -> None:
    assembler = CompletionAssembler("r1", "m", 123, n=2)
    for event in EVENTS:
        assembler.add(event)
    reply = ChatCompletion.model_validate(assembler.response(EVENTS[-1]))
    assert reply.choices[0].message.content == "Hello"
    assert [t.token for t in reply.choices[0].logprobs.content] == ["Hel", "lo"]  # type: ignore[union-attr]
    call: Any = reply.choices[1].message.tool_calls[0]  # type: ignore[index]
    assert (call.id, call.function.name, call.function.arguments) == ("call_1", "get", '{"a": 1}')
    assert reply.choices[1].finish_reason == "tool_calls"
    assert reply.usage is not None and reply.usage.total_tokens == 12


def test_every_chunk_is_one_line_whatever_the_text() -> None:
    writer = ChunkWriter("r1", "m", 123, n=1, include_usage=False)
    odd = "a\u2028b\u0085c\nd\re\u2029"
    out = writer.render(_event(0, "delta", choices=[{"index": 0, "content": odd}]))
    id_line, chunk = out.split("\n\n")[1].split("\n")  # the event's id:, then one data line
    assert id_line == "id: 0-0" and chunk.startswith("data: ")
    assert json.loads(chunk[6:])["choices"][0]["delta"]["content"] == odd


def test_the_last_sse_event_of_each_worker_event_carries_its_id() -> None:
    writer = ChunkWriter("r1", "m", 123, n=1, include_usage=True)
    out = writer.render(_event(4, "delta", choices=[{"index": 0, "content": "x"}]))
    blocks = [b for b in out.split("\n\n") if b]
    # the role chunk, then the delta: only the last carries the id, so a client resuming
    # from it has both
    assert [b.startswith("id: ") for b in blocks] == [False, True]
    assert parse_sse_event_id(blocks[-1].split("\n")[0][4:]) == (0, 4)
    end = writer.render(_event(5, "finished", usage={"prompt_tokens": 1, "completion_tokens": 1}))
    blocks = [b for b in end.split("\n\n") if b]
    assert blocks[-1] == "id: 0-5\ndata: [DONE]"
    assert ChunkWriter("r1", "m", 1, 1, False, resumed=True).render(_event(2, "delta")) == ""
    # a stream that cannot be resumed has no id: lines (some SSE readers fail on them)
    plain = ChunkWriter("r1", "m", 1, 1, False, event_ids=False)
    assert "id:" not in plain.render(_event(0, "delta", choices=[{"index": 0, "content": "x"}]))
    assert parse_sse_event_id("x") is None and parse_sse_event_id("1-2") == (1, 2)


def _deltas(writer: ChunkWriter, events: list[TokenEvent]) -> list[dict[str, object]]:
    lines = _data_lines("".join(writer.render(e) for e in events))
    return [json.loads(x)["choices"][0]["delta"] for x in lines[:-1] if json.loads(x)["choices"]]


def test_stream_reasoning_false_sends_reasoning_in_one_piece() -> None:
    events = [
        _event(0, "started"),
        _event(1, choices=[{"index": 0, "reasoning_content": "think "}]),
        _event(2, choices=[{"index": 0, "reasoning_content": "hard"}]),
        _event(
            3,
            "finished",
            choices=[{"index": 0, "content": "42", "finish_reason": "stop"}],
            usage={"prompt_tokens": 1, "completion_tokens": 3},
        ),
    ]
    held = _deltas(
        ChunkWriter("r1", "m", 1, n=1, include_usage=False, stream_reasoning=False), events
    )
    assert held[1:] == [{"reasoning_content": "think hard", "content": "42"}]
    live = _deltas(ChunkWriter("r1", "m", 1, n=1, include_usage=False), events)
    assert [d.get("reasoning_content") for d in live[1:]] == ["think ", "hard", None]


def test_parallel_tool_calls_false_keeps_the_first_call() -> None:
    calls = [
        {"index": 0, "id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}},
        {"index": 1, "id": "b", "type": "function", "function": {"name": "g", "arguments": "{}"}},
    ]
    events = [
        _event(0, "started"),
        _event(
            1,
            "finished",
            choices=[{"index": 0, "tool_calls": calls, "finish_reason": "tool_calls"}],
            usage={"prompt_tokens": 1, "completion_tokens": 3},
        ),
    ]
    streamed = _deltas(
        ChunkWriter("r1", "m", 1, n=1, include_usage=False, parallel_tool_calls=False), events
    )
    assert [c["id"] for c in streamed[1]["tool_calls"]] == ["a"]  # type: ignore[index, attr-defined]
    assembler = CompletionAssembler("r1", "m", 1, n=1, parallel_tool_calls=False)
    for e in events:
        assembler.add(e)
    reply = ChatCompletion.model_validate(assembler.response(events[-1]))
    assert [c.id for c in reply.choices[0].message.tool_calls or []] == ["a"]


def test_usage_carries_cached_and_reasoning_tokens_as_openai_does() -> None:
    usage = {
        "prompt_tokens": 40,
        "completion_tokens": 9,
        "cached_tokens": 32,
        "reasoning_tokens": 5,
    }
    final = _event(1, "finished", choices=[{"index": 0, "finish_reason": "stop"}], usage=usage)
    assembler = CompletionAssembler("r1", "m", 123, n=1)
    assembler.add(_event(0, "started"))
    assembler.add(final)
    reply = ChatCompletion.model_validate(assembler.response(final))
    assert reply.usage is not None
    assert reply.usage.total_tokens == 49
    assert reply.usage.prompt_tokens_details is not None
    assert reply.usage.prompt_tokens_details.cached_tokens == 32
    assert reply.usage.completion_tokens_details is not None
    assert reply.usage.completion_tokens_details.reasoning_tokens == 5
    writer = ChunkWriter("r1", "m", 123, n=1, include_usage=True)
    chunks = _data_lines(writer.render(_event(0, "started")) + writer.render(final))
    last = ChatCompletionChunk.model_validate(json.loads(chunks[-2]))
    assert last.usage is not None and last.usage.prompt_tokens_details is not None
    assert last.usage.prompt_tokens_details.cached_tokens == 32
