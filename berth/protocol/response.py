"""What berth sends back: ``chat.completion``, ``chat.completion.chunk`` and the model list.

These are on the hot path (one chunk per engine step per request), so they are
plain models without validators; serialise them with
``model_dump_json(exclude_none=True)``, which gives exactly the shape the official
``openai`` client parses (absent rather than null for fields not in play).
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, Field

FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "function_call", "abort"]


def _now() -> int:
    return int(time.time())


def completion_id() -> str:
    """A fresh ``chatcmpl-...`` id, shared by every chunk of one completion."""
    return f"chatcmpl-{uuid.uuid4().hex}"


class PromptTokensDetails(BaseModel):
    """Breakdown of prompt tokens (prefix-cache hits)."""

    cached_tokens: int | None = None


class CompletionTokensDetails(BaseModel):
    """Breakdown of completion tokens (reasoning)."""

    reasoning_tokens: int | None = None


class Usage(BaseModel):
    """Token counts of one completion, over all of its choices."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None
    completion_tokens_details: CompletionTokensDetails | None = None

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> Usage:
        """Usage with ``total_tokens`` filled in."""
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )


class TopLogprob(BaseModel):
    """One of the most likely tokens at a position."""

    token: str
    logprob: float
    bytes: list[int] | None = None


class ChatCompletionTokenLogprob(BaseModel):
    """The sampled token at one position, with the alternatives asked for."""

    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChoiceLogprobs(BaseModel):
    """``choices[i].logprobs``: per-token logprobs of the content."""

    content: list[ChatCompletionTokenLogprob] | None = None
    refusal: list[ChatCompletionTokenLogprob] | None = None


class FunctionCall(BaseModel):
    """The function a tool call invokes; ``arguments`` is a JSON string."""

    name: str
    arguments: str


class ToolCall(BaseModel):
    """A complete tool call in a non-streaming response."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class FunctionCallDelta(BaseModel):
    """Part of a function call: the name arrives once, the arguments in pieces."""

    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(BaseModel):
    """A piece of a streamed tool call; ``index`` says which call it extends."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCallDelta | None = None


class ChatMessage(BaseModel):
    """The assistant's message in a non-streaming response."""

    role: Literal["assistant"] = "assistant"
    content: str | None = None
    # SGLang/vLLM extension: the reasoning split from the content by a reasoning parser
    reasoning_content: str | None = None
    tool_calls: list[ToolCall] | None = None
    refusal: str | None = None


class Choice(BaseModel):
    """One of the ``n`` choices of a ``chat.completion``."""

    index: int
    message: ChatMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason | None = None
    # vLLM extension: the stop string or token id that ended the choice
    stop_reason: str | int | None = None


class ChatCompletion(BaseModel):
    """The body of a non-streaming chat-completion response."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[Choice]
    usage: Usage | None = None
    service_tier: str | None = None
    system_fingerprint: str | None = None


class Delta(BaseModel):
    """What one chunk adds to a choice's message."""

    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None
    refusal: str | None = None


class ChunkChoice(BaseModel):
    """One choice's progress in a ``chat.completion.chunk``."""

    index: int
    delta: Delta = Field(default_factory=Delta)
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason | None = None
    stop_reason: str | int | None = None


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a streaming response (``data: {...}``)."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=_now)
    model: str
    # empty on the final usage chunk (``stream_options.include_usage``)
    choices: list[ChunkChoice] = Field(default_factory=list)
    usage: Usage | None = None
    service_tier: str | None = None
    system_fingerprint: str | None = None


class Model(BaseModel):
    """One entry of ``GET /v1/models``: a base model or a LoRA adapter on it."""

    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=_now)
    owned_by: str = "berth"
    # the base model an adapter applies to (vLLM's convention); the model itself otherwise
    root: str | None = None
    parent: str | None = None
    max_model_len: int | None = None


class ModelList(BaseModel):
    """The body of ``GET /v1/models``."""

    object: Literal["list"] = "list"
    data: list[Model] = Field(default_factory=list)


def list_page(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """A page of a list endpoint (jobs, files, batches), as OpenAI's cursor pages read it."""
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }
