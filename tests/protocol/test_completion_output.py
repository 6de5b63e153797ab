"""Token events become OpenAI text completions (``text_completion``), streamed and not, in
shapes the official client's own ``Completion`` type accepts."""

from __future__ import annotations

import json
from typing import Any, cast

import msgspec
from openai._models import construct_type
from openai.types import Completion

from berth.protocol.envelopes import TokenEvent
from berth.protocol.output import DONE, TextChunkWriter, TextCompletionAssembler


def _event(seq: int, type_: str = "delta", **fields: object) -> TokenEvent:
    return msgspec.convert({"id": "cmpl-1", "seq": seq, "type": type_, **fields}, TokenEvent)


def _lp(token: str, logprob: float, *alts: tuple[str, float]) -> dict[str, Any]:
    return {
        "token": token,
        "logprob": logprob,
        "bytes": list(token.encode()),
        "top_logprobs": [{"token": t, "logprob": p, "bytes": list(t.encode())} for t, p in alts],
    }


EVENTS = [
    _event(0, "started", worker="w"),
    _event(1, choices=[{"index": 0, "content": "Hel", "logprobs": [_lp("Hel", -0.5, ("He", -1))]}]),
    _event(2, choices=[{"index": 1, "content": "Bye"}]),
    _event(
        3,
        choices=[{"index": 0, "content": "lo", "logprobs": [_lp("lo", -0.25)]}],
    ),
    _event(
        4,
        "finished",
        choices=[
            {"index": 0, "finish_reason": "length"},
            {"index": 1, "finish_reason": "stop"},
        ],
        usage={"prompt_tokens": 3, "completion_tokens": 4},
    ),
]


def test_assembled_response_is_an_openai_completion() -> None:
    assembler = TextCompletionAssembler("cmpl-1", "m", 1700000000, 2)
    for event in EVENTS:
        assembler.add(event)
    body = assembler.response(EVENTS[-1])
    reply = Completion.model_validate(body)
    assert reply.object == "text_completion" and reply.id == "cmpl-1" and reply.model == "m"
    first, second = reply.choices
    assert (first.index, first.text, first.finish_reason) == (0, "Hello", "length")
    assert (second.index, second.text, second.finish_reason) == (1, "Bye", "stop")
    assert second.logprobs is None
    assert first.logprobs is not None
    assert first.logprobs.tokens == ["Hel", "lo"]
    assert first.logprobs.token_logprobs == [-0.5, -0.25]
    assert first.logprobs.top_logprobs == [{"He": -1}, {}]
    assert first.logprobs.text_offset == [0, 3]
    assert reply.usage is not None and reply.usage.total_tokens == 7


def _chunks(text: str) -> list[str]:
    return [part.removeprefix("data: ") for part in text.split("\n\n") if part]


def test_stream_chunks_are_openai_completions_ending_with_usage_and_done() -> None:
    writer = TextChunkWriter("cmpl-1", "m", 1700000000, 2, include_usage=True)
    text = "".join(writer.render(event) for event in EVENTS)
    assert "id:" not in text  # not resumable: no SSE ids (vLLM's bench client fails on them)
    assert text.endswith(DONE)
    parts = _chunks(text)
    assert parts[-1] == "[DONE]"
    bodies = [json.loads(p) for p in parts[:-1]]
    for body in bodies:
        assert set(body) >= {"id", "object", "created", "model", "choices"}
        for choice in body["choices"]:
            assert set(choice) == {"index", "text", "logprobs", "finish_reason"}
    # as the client reads a stream (a chunk's finish_reason is null until its last)
    chunks = [cast(Completion, construct_type(type_=Completion, value=b)) for b in bodies]
    assert all(isinstance(c, Completion) for c in chunks)
    Completion.model_validate(bodies[-2])  # the last choice chunk, whole
    assert all(c.object == "text_completion" and c.id == "cmpl-1" for c in chunks)
    texts: dict[int, str] = {}
    for chunk in chunks[:-1]:
        (choice,) = chunk.choices
        texts[choice.index] = texts.get(choice.index, "") + choice.text
    assert texts == {0: "Hello", 1: "Bye"}
    # logprobs carry on the offsets of the whole text so far
    offsets = [c.choices[0].logprobs.text_offset for c in chunks[:-1] if c.choices[0].logprobs]
    assert offsets == [[0], [3]]
    finishes = {c.choices[0].index: c.choices[0].finish_reason for c in chunks[:-1]}
    assert finishes == {0: "length", 1: "stop"}
    usage = chunks[-1]
    assert usage.choices == [] and usage.usage is not None and usage.usage.completion_tokens == 4


def test_stream_without_usage_and_with_an_error() -> None:
    writer = TextChunkWriter("cmpl-1", "m", 1, 1, include_usage=False)
    text = writer.render(EVENTS[0]) + writer.render(
        _event(
            1,
            "error",
            error={"error": {"message": "boom", "type": "server_error", "code": "x"}},
            status=500,
        )
    )
    parts = _chunks(text)
    assert parts[-1] == "[DONE]"
    assert json.loads(parts[0])["error"]["message"] == "boom"


def test_an_aborted_choice_has_no_finish_reason_in_the_stream() -> None:
    writer = TextChunkWriter("cmpl-1", "m", 1, 1, include_usage=False)
    text = writer.render(_event(1, "cancelled", choices=[{"index": 0, "finish_reason": "abort"}]))
    assert "abort" not in text
