"""A cut stream's request continued: the answer so far as the assistant's message to go on,
the budget shrunk by it, and refused where a continuation would not be the same answer."""

from __future__ import annotations

from typing import Any

import pytest

from berth.protocol.chat import parse_chat_request
from berth.protocol.continuation import NotContinuable, continued_request


def _queued(**extra: Any) -> dict[str, Any]:
    """A body as the API queues it: validated, normalised, None fields dropped."""
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}
    return parse_chat_request(body).model_dump(mode="json", exclude_none=True)


def test_the_answer_so_far_becomes_the_assistant_message_to_continue() -> None:
    body = _queued(max_tokens=10, min_tokens=4, seed=7, temperature=0.5)
    out = continued_request(body, "the quick ", 2)
    assert out["messages"][-1] == {"role": "assistant", "content": "the quick "}
    assert out["messages"][:-1] == body["messages"]
    assert out["continue_final_message"] is True
    assert out["max_completion_tokens"] == 8 and out["min_tokens"] == 2
    assert out["seed"] == 7 and out["temperature"] == 0.5
    assert body["messages"] == [{"role": "user", "content": "hi"}]  # the original is kept
    # the continued body is a request the worker reads like any other
    assert parse_chat_request(out).continue_final_message


def test_a_client_continuing_its_own_message_gets_it_extended() -> None:
    body = _queued(
        messages=[
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "Once "},
        ],
        continue_final_message=True,
    )
    out = continued_request(body, "upon a ", 2)
    assert out["messages"][-1]["content"] == "Once upon a "
    assert len(out["messages"]) == 2


@pytest.mark.parametrize(
    ("extra", "why"),
    [
        ({"n": 2}, "n > 1"),
        ({"logprobs": True}, "logprobs"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
            "tool",
        ),
        ({"response_format": {"type": "json_object"}}, "constraint"),
        ({"regex": "[a-z]+"}, "constraint"),
        ({"max_tokens": 2}, "budget"),
    ],
)
def test_where_a_continuation_cannot_be_exact_it_is_refused(
    extra: dict[str, Any], why: str
) -> None:
    with pytest.raises(NotContinuable, match=why):
        continued_request(_queued(**extra), "the quick ", 2)


def test_tools_the_model_may_not_call_do_not_stop_a_continuation() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    out = continued_request(_queued(tools=tools, tool_choice="none"), "x ", 1)
    assert out["continue_final_message"] is True
