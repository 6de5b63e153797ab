"""Rendering a request with the model's chat template (the tiny model's ChatML template)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from berth.protocol.chat import ChatCompletionRequest
from berth.protocol.errors import InvalidRequest
from berth.workers.engine.chat import render_prompt, render_prompt_text, template_kwargs

Build = Callable[..., ChatCompletionRequest]

TOOL = {
    "type": "function",
    "function": {"name": "lookup", "description": "Find a thing", "parameters": {"type": "object"}},
}


def test_opens_an_assistant_turn(tiny_tokenizer: Any, chat_request: Build) -> None:
    text = render_prompt_text(tiny_tokenizer, chat_request())
    assert text == (
        "<|im_start|>user\nHello there, how are you?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_token_ids_round_trip(tiny_tokenizer: Any, chat_request: Build) -> None:
    req = chat_request()
    ids = render_prompt(tiny_tokenizer, req)
    assert tiny_tokenizer.decode(ids) == render_prompt_text(tiny_tokenizer, req)
    # special markers are single tokens; no BOS is added on top of the template
    assert ids[0] == tiny_tokenizer.convert_tokens_to_ids("<|im_start|>")


def test_continue_final_message_leaves_the_turn_open(
    tiny_tokenizer: Any, chat_request: Build
) -> None:
    req = chat_request(
        messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "The ans"}],
        continue_final_message=True,
    )
    assert render_prompt_text(tiny_tokenizer, req).endswith("<|im_start|>assistant\nThe ans")


def test_tools_go_into_the_system_prompt(tiny_tokenizer: Any, chat_request: Build) -> None:
    req = chat_request(
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "x"}],
        tools=[TOOL],
    )
    text = render_prompt_text(tiny_tokenizer, req)
    assert text.startswith("<|im_start|>system\nBe brief.")
    assert '"name": "lookup"' in text and "<tools>" in text and "<tool_call>" in text


def test_tool_round_trip_messages(tiny_tokenizer: Any, chat_request: Build) -> None:
    req = chat_request(
        messages=[
            {"role": "developer", "content": "dev rules"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "find"}, {"type": "text", "text": "it"}],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "lookup", "arguments": '{"q": 1}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "found"},
        ],
        tools=[TOOL],
    )
    text = render_prompt_text(tiny_tokenizer, req)
    assert "<|im_start|>system\ndev rules" in text
    assert "<|im_start|>user\nfind\nit<|im_end|>" in text
    assert '<tool_call>\n{"name": "lookup", "arguments": {"q": 1}}\n</tool_call>' in text
    assert "<|im_start|>tool\nfound<|im_end|>" in text


def test_template_kwargs_reach_the_template(tiny_tokenizer: Any, chat_request: Build) -> None:
    req = chat_request(chat_template_kwargs={"enable_thinking": False}, reasoning_effort="low")
    assert template_kwargs(req) == {"enable_thinking": False, "reasoning_effort": "low"}
    text = render_prompt_text(tiny_tokenizer, req)
    assert "Reasoning effort: low" in text
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_client_kwargs_win_over_reasoning_effort(chat_request: Build) -> None:
    req = chat_request(chat_template_kwargs={"reasoning_effort": "high"}, reasoning_effort="low")
    assert template_kwargs(req)["reasoning_effort"] == "high"


def test_template_errors_are_invalid_requests(chat_request: Build) -> None:
    class Refusing:
        def apply_chat_template(self, *args: Any, **kwargs: Any) -> str:
            raise ValueError("Conversation roles must alternate user/assistant")

    with pytest.raises(InvalidRequest) as err:
        render_prompt(Refusing(), chat_request())
    assert err.value.param == "messages"
    assert "alternate" in err.value.message
