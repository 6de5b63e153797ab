"""berth's response models serialise to what the ``openai`` types validate."""

from __future__ import annotations

import json

import openai.types
import openai.types.chat as oai
from hypothesis import given
from hypothesis import strategies as st

from berth.protocol.response import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionTokenLogprob,
    ChatMessage,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    CompletionTokensDetails,
    Delta,
    FunctionCall,
    FunctionCallDelta,
    Model,
    ModelList,
    PromptTokensDetails,
    ToolCall,
    ToolCallDelta,
    TopLogprob,
    Usage,
    completion_id,
)

OPENAI_FINISH = ("stop", "length", "tool_calls", "content_filter", "function_call")


def wire(model: ChatCompletion | ChatCompletionChunk | ModelList | Model) -> dict[str, object]:
    return json.loads(model.model_dump_json(exclude_none=True))


def token_logprob(token: str, logprob: float) -> ChatCompletionTokenLogprob:
    return ChatCompletionTokenLogprob(
        token=token,
        logprob=logprob,
        bytes=list(token.encode()),
        top_logprobs=[TopLogprob(token=token, logprob=logprob, bytes=list(token.encode()))],
    )


def test_completion_validates_as_openai() -> None:
    done = ChatCompletion(
        id=completion_id(),
        model="tiny",
        choices=[
            Choice(
                index=0,
                message=ChatMessage(content="hi", reasoning_content="hmm"),
                logprobs=ChoiceLogprobs(content=[token_logprob("hi", -0.1)]),
                finish_reason="stop",
                stop_reason="\n",
            ),
            Choice(
                index=1,
                message=ChatMessage(
                    tool_calls=[ToolCall(id="c", function=FunctionCall(name="f", arguments="{}"))]
                ),
                finish_reason="tool_calls",
            ),
        ],
        usage=Usage(
            prompt_tokens=4,
            completion_tokens=3,
            total_tokens=7,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=2),
            completion_tokens_details=CompletionTokensDetails(reasoning_tokens=1),
        ),
    )
    theirs = oai.ChatCompletion.model_validate(wire(done))
    assert theirs.object == "chat.completion"
    assert theirs.choices[0].message.role == "assistant"
    assert theirs.choices[0].logprobs is not None
    assert theirs.choices[0].logprobs.content is not None
    assert theirs.choices[0].logprobs.content[0].top_logprobs[0].token == "hi"
    assert theirs.choices[1].message.tool_calls is not None
    assert theirs.choices[1].message.tool_calls[0].type == "function"
    assert theirs.usage is not None and theirs.usage.prompt_tokens_details is not None
    assert theirs.usage.prompt_tokens_details.cached_tokens == 2


def test_none_fields_are_absent_on_the_wire() -> None:
    chunk = ChatCompletionChunk(
        id="c", model="m", choices=[ChunkChoice(index=0, delta=Delta(content="x"))]
    )
    assert wire(chunk) == {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": chunk.created,
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": "x"}}],
    }


def test_chunks_validate_as_openai() -> None:
    chunks = [
        ChatCompletionChunk(
            id="c",
            model="m",
            choices=[ChunkChoice(index=0, delta=Delta(role="assistant", content=""))],
        ),
        ChatCompletionChunk(
            id="c",
            model="m",
            choices=[
                ChunkChoice(
                    index=0,
                    delta=Delta(
                        tool_calls=[
                            ToolCallDelta(
                                index=0,
                                id="t",
                                type="function",
                                function=FunctionCallDelta(name="f"),
                            )
                        ]
                    ),
                    logprobs=ChoiceLogprobs(content=[token_logprob("x", -1.0)]),
                )
            ],
        ),
        ChatCompletionChunk(
            id="c", model="m", choices=[ChunkChoice(index=0, finish_reason="length")]
        ),
        ChatCompletionChunk(id="c", model="m", usage=Usage.of(1, 2)),
    ]
    for chunk in chunks:
        theirs = oai.ChatCompletionChunk.model_validate(wire(chunk))
        assert theirs.id == "c"
    assert oai.ChatCompletionChunk.model_validate(wire(chunks[-1])).usage.total_tokens == 3  # type: ignore[union-attr]


def test_models_validate_as_openai() -> None:
    listing = ModelList(data=[Model(id="tiny"), Model(id="a", root="/ad/a", parent="tiny")])
    data = wire(listing)
    assert data["object"] == "list"
    for entry in data["data"]:  # type: ignore[attr-defined]
        model = openai.types.Model.model_validate(entry)
        assert model.object == "model"


@given(
    content=st.text(),
    reasoning=st.none() | st.text(),
    finish=st.sampled_from(OPENAI_FINISH),
    logprob=st.floats(max_value=0, allow_nan=False, allow_infinity=False),
    n=st.integers(1, 4),
)
def test_any_completion_round_trips_through_openai(
    content: str, reasoning: str | None, finish: str, logprob: float, n: int
) -> None:
    done = ChatCompletion(
        id=completion_id(),
        model="tiny",
        choices=[
            Choice(
                index=i,
                message=ChatMessage(content=content, reasoning_content=reasoning),
                logprobs=ChoiceLogprobs(content=[token_logprob(content[:3], logprob)]),
                finish_reason=finish,  # type: ignore[arg-type]
            )
            for i in range(n)
        ],
        usage=Usage.of(1, n),
    )
    theirs = oai.ChatCompletion.model_validate(wire(done))
    assert [c.message.content for c in theirs.choices] == [content] * n
    assert theirs.choices[0].logprobs.content[0].logprob == logprob  # type: ignore[union-attr,index]
    assert getattr(theirs.choices[0].message, "reasoning_content", None) == reasoning


@given(
    content=st.none() | st.text(),
    arguments=st.none() | st.text(),
    finish=st.none() | st.sampled_from(OPENAI_FINISH),
)
def test_any_chunk_round_trips_through_openai(
    content: str | None, arguments: str | None, finish: str | None
) -> None:
    calls = [ToolCallDelta(index=0, function=FunctionCallDelta(arguments=arguments))]
    chunk = ChatCompletionChunk(
        id="c",
        model="m",
        choices=[
            ChunkChoice(
                index=0,
                delta=Delta(content=content, tool_calls=calls),
                finish_reason=finish,  # type: ignore[arg-type]
            )
        ],
    )
    theirs = oai.ChatCompletionChunk.model_validate(wire(chunk))
    assert theirs.choices[0].delta.content == content
    assert theirs.choices[0].finish_reason == finish
    assert theirs.choices[0].delta.tool_calls[0].function.arguments == arguments  # type: ignore[index,union-attr]
