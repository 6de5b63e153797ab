"""A streamed chat whose worker stopped mid-answer, queued again to go on from its last token.

The API process holding the client knows what it has sent (``api/delivery/events.py``); when
the worker running the request dies, or hands it back at the end of its drain, the request is
queued again as the next attempt with what was generated so far as the assistant's message to
continue (``continue_final_message``, the chat template's ``add_generation_prompt`` off), the
same seed and what is left of its token budget. The worker that takes it numbers its events
from the next ``seq`` (``QueuedRequest.continuation``), so the client sees one stream.

Only a continuation that can be exact is made; ``continued_request`` says why not otherwise,
and the stream ends with an error event as it did before (docs/reliability.md).
"""

from __future__ import annotations

from typing import Any


class NotContinuable(Exception):
    """The request cannot go on from where it stopped exactly; the message says why."""


def continued_request(body: dict[str, Any], text: str, tokens: int) -> dict[str, Any]:
    """A chat request body (the queued, normalised one) that continues its answer after
    ``text`` (the content its client has, ``tokens`` completion tokens): the text becomes
    the assistant's final message, continued; the caps shrink by what was generated.
    Raises ``NotContinuable`` where a continuation would not be the same answer."""
    if (body.get("n") or 1) > 1:
        raise NotContinuable("n > 1: the choices cannot be continued one by one")
    if body.get("logprobs"):
        raise NotContinuable("logprobs asked: the earlier tokens' logprobs are not kept")
    if body.get("tools") and body.get("tool_choice", "auto") != "none":
        raise NotContinuable("tools given: a tool-call parser may be part-way through a call")
    if body.get("response_format", {}).get("type", "text") != "text" or (
        body.get("regex") is not None or body.get("ebnf") is not None
    ):
        raise NotContinuable("an output constraint starts over from its first token")
    messages = list(body["messages"])
    if body.get("continue_final_message"):
        last = dict(messages[-1])
        content = last.get("content") or ""
        if not isinstance(content, str):
            raise NotContinuable("the final message to continue is not plain text")
        last["content"] = content + text
        messages[-1] = last
    else:
        messages.append({"role": "assistant", "content": text})
    out = {**body, "messages": messages, "continue_final_message": True}
    cap = body.get("max_completion_tokens")
    if cap is not None:
        if cap - tokens < 1:
            raise NotContinuable("its token budget is spent")
        out["max_completion_tokens"] = cap - tokens
    if body.get("min_tokens"):
        out["min_tokens"] = max(0, int(body["min_tokens"]) - tokens)
    return out
