"""Turns token events into OpenAI output: SSE chunks for streams, one response otherwise.

Chunks are built as plain dicts and dumped once: this runs per token. Tests
check their shape against the official ``openai`` client's own types.
"""

from __future__ import annotations

from typing import Any

import orjson

from berth.protocol.envelopes import EventChoice, EventUsage, TokenEvent
from berth.protocol.errors import BerthError, error_from_body

DONE = "data: [DONE]\n\n"


def sse_event_id(event: TokenEvent) -> str | None:
    """The SSE ``id:`` of the chunks rendered from ``event``: ``{attempt}-{seq}`` for the
    worker's events (the ones a resumed stream can replay), None for any other."""
    return f"{event.attempt}-{event.seq}" if event.seq >= 0 else None


def parse_sse_event_id(value: str) -> tuple[int, int] | None:
    """(attempt, seq) of an id made by ``sse_event_id``; None when it is not one."""
    attempt, sep, seq = value.strip().partition("-")
    if not sep or not attempt.isdigit() or not seq.isdigit():
        return None
    return int(attempt), int(seq)


# some SSE readers split lines on these inside a JSON string (str.splitlines does); orjson
# escapes every other line break (the C0 controls) itself
_LINE_BREAKS = str.maketrans({"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"})


def _dumps(obj: Any) -> str:
    # orjson: this runs per chunk, and json.dumps was most of the chunk's cost
    text = orjson.dumps(obj).decode()
    return text if text.isascii() else text.translate(_LINE_BREAKS)


def event_error(event: TokenEvent) -> BerthError:
    """The error a non-finished terminal event stands for."""
    if event.type == "cancelled":
        return BerthError("the request was cancelled", code="cancelled")
    return error_from_body(event.error or {}, event.status or 500)


def _usage(event: TokenEvent) -> dict[str, Any]:
    """OpenAI's usage object, details included as OpenAI always sends them."""
    usage = event.usage or EventUsage(prompt_tokens=0, completion_tokens=0)
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


class ChunkWriter:
    """Renders one streaming chat request's events as ``data: ...`` lines."""

    chunk_object = "chat.completion.chunk"

    def __init__(
        self,
        request_id: str,
        model: str,
        created: int,
        n: int,
        include_usage: bool,
        *,
        stream_reasoning: bool = True,
        parallel_tool_calls: bool = True,
        resumed: bool = False,
        event_ids: bool = True,
    ):
        self._head = {
            "id": request_id,
            "object": self.chunk_object,
            "created": created,
            "model": model,
        }
        self._n = n
        self._include_usage = include_usage
        # a resumed stream already sent the role chunk
        self._started = resumed
        # stream_reasoning false: reasoning is held back and sent in one piece when the
        # answer starts (SGLang's behaviour)
        self._held: dict[int, list[str]] | None = None if stream_reasoning else {}
        self._single_call = not parallel_tool_calls
        # ``id:`` lines only where a client can resume: some SSE readers (vLLM's benchmark
        # client among them) take an event for its data line and fail on any other field
        self._event_ids = event_ids

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> str:
        return f"data: {_dumps({**self._head, 'choices': choices, **extra})}\n\n"

    def render(self, event: TokenEvent) -> str:
        """The SSE text of one event; its last SSE event carries the ``id:`` of ``event``
        (a client resuming from it has everything it rendered)."""
        parts: list[str] = []
        if not self._started:
            self._started = True
            parts.extend(self._opening())
        for choice in event.choices:
            rendered = self._choice(choice)
            if rendered is not None:
                parts.append(self._chunk([rendered]))
        if event.type == "finished":
            if self._include_usage:
                parts.append(self._chunk([], usage=_usage(event)))
            parts.append(DONE)
        elif event.terminal:
            parts.append(f"data: {_dumps(event_error(event).body())}\n\n")
            parts.append(DONE)
        if self._event_ids and parts and (event_id := sse_event_id(event)) is not None:
            parts[-1] = f"id: {event_id}\n{parts[-1]}"
        return "".join(parts)

    def _opening(self) -> list[str]:
        """The chunks before the first token: the role, once per choice, as OpenAI sends it."""
        return [
            self._chunk(
                [
                    {
                        "index": i,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                ]
            )
            for i in range(self._n)
        ]

    def _choice(self, choice: EventChoice) -> dict[str, Any] | None:
        delta: dict[str, Any] = {}
        reasoning = choice.reasoning_content
        tool_calls = choice.tool_calls
        if self._single_call and tool_calls:
            # parallel_tool_calls false: only the first call reaches the client
            tool_calls = [c for c in tool_calls if c.get("index", 0) == 0]
        if self._held is not None:
            held = self._held.setdefault(choice.index, [])
            if reasoning:
                held.append(reasoning)
            answer_started = bool(choice.content or tool_calls or choice.finish_reason)
            reasoning = "".join(held) if answer_started else ""
            if answer_started:
                held.clear()
        if reasoning:
            delta["reasoning_content"] = reasoning
        if choice.content:
            delta["content"] = choice.content
        if tool_calls:
            delta["tool_calls"] = tool_calls
        finish = None if choice.finish_reason == "abort" else choice.finish_reason
        if not delta and finish is None and choice.logprobs is None:
            return None
        return {
            "index": choice.index,
            "delta": delta,
            "logprobs": {"content": choice.logprobs} if choice.logprobs is not None else None,
            "finish_reason": finish,
        }


class _Choice:
    __slots__ = ("content", "finish_reason", "logprobs", "reasoning", "tool_calls")

    def __init__(self) -> None:
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.logprobs: list[dict[str, Any]] | None = None
        self.finish_reason: str | None = None


class CompletionAssembler:
    """Collects one non-streaming request's events into a ``chat.completion``."""

    def __init__(
        self,
        request_id: str,
        model: str,
        created: int,
        n: int,
        *,
        parallel_tool_calls: bool = True,
    ) -> None:
        self._id = request_id
        self._model = model
        self._created = created
        self._choices = [_Choice() for _ in range(n)]
        self._single_call = not parallel_tool_calls

    def add(self, event: TokenEvent) -> None:
        for delta in event.choices:
            choice = self._choices[delta.index]
            if delta.content:
                choice.content.append(delta.content)
            if delta.reasoning_content:
                choice.reasoning.append(delta.reasoning_content)
            for call in delta.tool_calls or ():
                if self._single_call and call.get("index", 0) != 0:
                    continue  # parallel_tool_calls false: the first call only
                merged = choice.tool_calls.setdefault(
                    call.get("index", len(choice.tool_calls)),
                    {"id": None, "type": "function", "function": {"name": "", "arguments": ""}},
                )
                merged["id"] = call.get("id") or merged["id"]
                function = call.get("function") or {}
                merged["function"]["name"] += function.get("name") or ""
                merged["function"]["arguments"] += function.get("arguments") or ""
            if delta.logprobs is not None:
                choice.logprobs = (choice.logprobs or []) + delta.logprobs
            if delta.finish_reason is not None:
                choice.finish_reason = delta.finish_reason

    def response(self, final: TokenEvent) -> dict[str, Any]:
        choices = []
        for index, choice in enumerate(self._choices):
            message: dict[str, Any] = {"role": "assistant", "content": "".join(choice.content)}
            if choice.reasoning:
                message["reasoning_content"] = "".join(choice.reasoning)
            if choice.tool_calls:
                message["tool_calls"] = [choice.tool_calls[k] for k in sorted(choice.tool_calls)]
                if not choice.content:
                    message["content"] = None
            choices.append(
                {
                    "index": index,
                    "message": message,
                    "logprobs": {"content": choice.logprobs}
                    if choice.logprobs is not None
                    else None,
                    "finish_reason": choice.finish_reason,
                }
            )
        return {
            "id": self._id,
            "object": "chat.completion",
            "created": self._created,
            "model": self._model,
            "choices": choices,
            "usage": _usage(final),
        }


# --- text completions (/v1/completions) ---------------------------------------------------


def text_logprobs(entries: list[dict[str, Any]], offset: int) -> dict[str, Any]:
    """The engine's per-token logprob entries (OpenAI's chat shape) in the legacy
    completion shape; ``offset``: where the first token starts in the choice's text."""
    tokens, token_logprobs, top, offsets = [], [], [], []
    for entry in entries:
        token = entry["token"]
        tokens.append(token)
        token_logprobs.append(entry["logprob"])
        top.append({alt["token"]: alt["logprob"] for alt in entry.get("top_logprobs") or ()})
        offsets.append(offset)
        offset += len(token)
    return {
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": top,
        "text_offset": offsets,
    }


class _TextOffsets:
    """Characters of each choice's text so far: where its next logprob token starts."""

    def __init__(self) -> None:
        self._sent: dict[int, int] = {}

    def logprobs(self, choice: EventChoice) -> dict[str, Any] | None:
        """The choice's logprobs in the legacy shape (None without any); counts its text."""
        start = self._sent.get(choice.index, 0)
        self._sent[choice.index] = start + len(choice.content)
        if choice.logprobs is None:
            return None
        return text_logprobs(choice.logprobs, start)


class TextChunkWriter(ChunkWriter):
    """Renders one streaming text completion's events as ``data: ...`` lines: no role
    chunk, and each choice's new ``text`` (its logprobs in the legacy shape)."""

    chunk_object = "text_completion"

    def __init__(self, request_id: str, model: str, created: int, n: int, include_usage: bool):
        super().__init__(request_id, model, created, n, include_usage, event_ids=False)
        self._offsets = _TextOffsets()

    def _opening(self) -> list[str]:
        return []

    def _choice(self, choice: EventChoice) -> dict[str, Any] | None:
        logprobs = self._offsets.logprobs(choice)
        finish = None if choice.finish_reason == "abort" else choice.finish_reason
        if not choice.content and finish is None and logprobs is None:
            return None
        return {
            "index": choice.index,
            "text": choice.content,
            "logprobs": logprobs,
            "finish_reason": finish,
        }


class TextCompletionAssembler:
    """Collects one non-streaming text completion's events into a ``text_completion``."""

    def __init__(self, request_id: str, model: str, created: int, n: int) -> None:
        self._id = request_id
        self._model = model
        self._created = created
        self._texts: list[list[str]] = [[] for _ in range(n)]
        self._logprobs: list[list[dict[str, Any]] | None] = [None] * n
        self._finish: list[str | None] = [None] * n

    def add(self, event: TokenEvent) -> None:
        for delta in event.choices:
            i = delta.index
            if delta.content:
                self._texts[i].append(delta.content)
            if delta.logprobs is not None:
                self._logprobs[i] = (self._logprobs[i] or []) + delta.logprobs
            if delta.finish_reason is not None:
                self._finish[i] = delta.finish_reason

    def response(self, final: TokenEvent) -> dict[str, Any]:
        choices = [
            {
                "index": i,
                "text": "".join(text),
                "logprobs": text_logprobs(logprobs, 0) if logprobs is not None else None,
                "finish_reason": finish,
            }
            for i, (text, logprobs, finish) in enumerate(
                zip(self._texts, self._logprobs, self._finish, strict=True)
            )
        ]
        return {
            "id": self._id,
            "object": "text_completion",
            "created": self._created,
            "model": self._model,
            "choices": choices,
            "usage": _usage(final),
        }
