"""Render a chat-completion request into prompt token ids with the model's chat template.

The tokenizer's own template decides the prompt format (design: "the chat
template from the tokenizer"); berth only chooses its inputs: the messages, the
tools, whether to open a new assistant turn or continue the last one, and the
client's ``chat_template_kwargs`` (plus ``reasoning_effort``, which templates
such as gpt-oss's read).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from berth.protocol.errors import InvalidRequest

if TYPE_CHECKING:
    from berth.protocol.chat import ChatCompletionRequest


def template_kwargs(req: ChatCompletionRequest) -> dict[str, Any]:
    """Extra variables for the template: the client's kwargs and ``reasoning_effort``."""
    kwargs = dict(req.chat_template_kwargs or {})
    if req.reasoning_effort is not None:
        kwargs.setdefault("reasoning_effort", req.reasoning_effort)
    return kwargs


def render_prompt_text(tokenizer: Any, req: ChatCompletionRequest) -> str:
    """The prompt as text; InvalidRequest when the template refuses the conversation."""
    continue_final = bool(req.continue_final_message)
    try:
        text = tokenizer.apply_chat_template(
            req.message_dicts(),
            tools=req.tool_dicts(),
            add_generation_prompt=not continue_final,
            continue_final_message=continue_final,
            tokenize=False,
            **template_kwargs(req),
        )
    except Exception as exc:  # jinja2's TemplateError, raise_exception(), ValueError
        raise InvalidRequest(
            f"the model's chat template cannot render these messages: {exc}", param="messages"
        ) from None
    if not isinstance(text, str):
        raise InvalidRequest("the model's chat template did not render text", param="messages")
    return text


def render_prompt(tokenizer: Any, req: ChatCompletionRequest) -> list[int]:
    """The prompt token ids (the template writes any BOS token itself)."""
    text = render_prompt_text(tokenizer, req)
    return list(tokenizer.encode(text, add_special_tokens=False))
