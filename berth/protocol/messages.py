"""The messages of a chat-completion request: one model per OpenAI role.

berth serves text-only models, so content is a string or a list of text parts;
image, audio and file parts are refused with :class:`~berth.protocol.errors.Unsupported`
naming the part (``messages[0].content[1].type``) rather than silently dropped.
Messages are discriminated on ``role``; the request model checks that the role is
one of :data:`ROLES` before the union is tried, so a bad role gets a clear message.
The helpers for such tagged unions (:func:`tagged_by`, :func:`tag_error`,
:func:`objects`) are shared with :mod:`berth.protocol.chat`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    StrictStr,
    Tag,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from berth.protocol.errors import field_error

ROLES = ("system", "developer", "user", "assistant", "tool", "function")
# Content part types OpenAI defines that a text-only engine cannot take.
REFUSED_PART_TYPES = ("image_url", "input_audio", "file")


class _Model(BaseModel):
    """Base of every request-side model: unknown fields are refused, like OpenAI does."""

    model_config = ConfigDict(extra="forbid")


class TextPart(_Model):
    """``{"type": "text", "text": ...}``."""

    type: Literal["text"]
    text: StrictStr


class RefusalPart(_Model):
    """``{"type": "refusal", "refusal": ...}``, only in assistant messages."""

    type: Literal["refusal"]
    refusal: StrictStr


def tag_error(
    kind: Any, allowed: tuple[str, ...], refused: dict[str, str], subpath: str
) -> PydanticCustomError:
    """The error for a tagged object (a content part, a response format) of the wrong kind.

    ``refused`` maps kinds OpenAI or SGLang define but berth cannot honour to the
    reason, so they get :class:`Unsupported` instead of a plain invalid-value error.
    """
    if isinstance(kind, str) and kind in refused:
        return field_error(
            f"{kind!r} is not supported: {refused[kind]}", subpath=subpath, unsupported=True
        )
    allowed_list = ", ".join(repr(a) for a in allowed)
    return field_error(f"must be one of {allowed_list}, got {kind!r}", subpath=subpath)


_TEXT_ONLY = "berth serves text-only models, only text content parts are supported"
REFUSED_PARTS = {kind: _TEXT_ONLY for kind in REFUSED_PART_TYPES}


def objects(items: list[Any]) -> Iterator[tuple[int, dict[str, Any]]]:
    """The raw (dict) items of a list with their index; models already built are skipped."""
    for i, item in enumerate(items):
        if isinstance(item, dict):
            yield i, item
        elif not isinstance(item, BaseModel):
            raise field_error("must be an object", subpath=f"[{i}]")


def _checks_parts(allowed: tuple[str, ...]) -> BeforeValidator:
    """Content is a string or a list of parts whose ``type`` is allowed."""

    def check(value: Any) -> Any:
        if isinstance(value, str):
            return value
        if not isinstance(value, list):
            raise field_error("must be a string or an array of content parts")
        for i, part in objects(value):
            kind = part.get("type")
            if kind not in allowed:
                raise tag_error(kind, allowed, REFUSED_PARTS, f"[{i}].type")
        return value

    return BeforeValidator(check)


def _str_or_parts(value: Any) -> str:
    # A tagged union, so an error inside a part is reported once, at ``content[i]...``,
    # instead of once per union member; the BeforeValidator has already checked the shape.
    return "<str>" if isinstance(value, str) else "<parts>"


def tagged_by(key: str) -> Discriminator:
    """Discriminate a union on ``key`` (``role``, ``type``) with berth's ``<tag>`` tags.

    A BeforeValidator in front of each such union has already refused unknown values,
    so the tag is always found and errors name the field, not the union member.
    """

    def tag(value: Any) -> str:
        kind = value.get(key) if isinstance(value, dict) else getattr(value, key, None)
        return f"<{kind}>"

    return Discriminator(tag)


TextContent = Annotated[
    Annotated[str, Tag("<str>")] | Annotated[list[TextPart], Tag("<parts>")],
    Discriminator(_str_or_parts),
    _checks_parts(("text",)),
]
AssistantPart = Annotated[
    Annotated[TextPart, Tag("<text>")] | Annotated[RefusalPart, Tag("<refusal>")],
    tagged_by("type"),
]
AssistantContent = Annotated[
    Annotated[str, Tag("<str>")] | Annotated[list[AssistantPart], Tag("<parts>")],
    Discriminator(_str_or_parts),
    _checks_parts(("text", "refusal")),
]


def flatten_content(content: str | list[TextPart] | list[AssistantPart] | None) -> str | None:
    """Join text parts into one string, as most chat templates expect plain strings."""
    if content is None or isinstance(content, str):
        return content
    return "\n".join(p.text if isinstance(p, TextPart) else p.refusal for p in content)


class SystemMessage(_Model):
    """Instructions from the operator."""

    role: Literal["system"]
    content: TextContent
    name: StrictStr | None = None


class DeveloperMessage(_Model):
    """OpenAI's newer name for system instructions; rendered as given to the template."""

    role: Literal["developer"]
    content: TextContent
    name: StrictStr | None = None


class UserMessage(_Model):
    """A message from the end user."""

    role: Literal["user"]
    content: TextContent
    name: StrictStr | None = None


class FunctionCall(_Model):
    """A function name and its arguments (a JSON string, or an object as SGLang allows)."""

    name: StrictStr
    arguments: Any

    @field_validator("arguments")
    @classmethod
    def _string_or_object(cls, value: Any) -> Any:
        if not isinstance(value, str | dict):
            raise field_error("must be a JSON string or an object")
        return value


class ToolCall(_Model):
    """A tool call the assistant made earlier in the conversation."""

    id: StrictStr
    type: Literal["function"] = "function"
    function: FunctionCall


class AssistantMessage(_Model):
    """An earlier assistant turn, or the prefix to continue (``continue_final_message``)."""

    role: Literal["assistant"]
    content: AssistantContent | None = None
    refusal: StrictStr | None = None
    name: StrictStr | None = None
    tool_calls: list[ToolCall] | None = None
    # legacy, replaced by tool_calls
    function_call: FunctionCall | None = None
    # SGLang: the reasoning of an earlier turn, for templates that render it
    reasoning_content: StrictStr | None = None
    # OpenAI: a reference to an earlier audio response; only null is accepted
    audio: Any = None
    # Response-side citations a client may echo back; no chat template renders them.
    annotations: list[Any] | None = None

    @field_validator("audio")
    @classmethod
    def _no_audio(cls, value: Any) -> Any:
        if value is not None:
            raise field_error("is not supported: berth serves text-only models", unsupported=True)
        return value

    @model_validator(mode="after")
    def _says_something(self) -> AssistantMessage:
        if (
            self.content is None
            and not self.tool_calls
            and self.function_call is None
            and self.refusal is None
        ):
            raise field_error(
                "is required unless tool_calls, function_call or refusal is given",
                subpath=".content",
            )
        return self


class ToolMessage(_Model):
    """The result of a tool call, answering ``tool_call_id``."""

    role: Literal["tool"]
    content: TextContent
    tool_call_id: StrictStr


class FunctionMessage(_Model):
    """Legacy: the result of a function call (replaced by tool messages)."""

    role: Literal["function"]
    name: StrictStr
    content: StrictStr | None = None


Message = Annotated[
    Annotated[SystemMessage, Tag("<system>")]
    | Annotated[DeveloperMessage, Tag("<developer>")]
    | Annotated[UserMessage, Tag("<user>")]
    | Annotated[AssistantMessage, Tag("<assistant>")]
    | Annotated[ToolMessage, Tag("<tool>")]
    | Annotated[FunctionMessage, Tag("<function>")],
    tagged_by("role"),
]
"""Any request message; :func:`check_roles` runs first so the tag is always found."""


def check_roles(value: Any) -> Any:
    """Name the message whose ``role`` is missing or unknown, before the union is tried."""
    if not isinstance(value, list):
        return value
    for i, message in objects(value):
        role = message.get("role")
        if role is None:
            raise field_error("is required", subpath=f"[{i}].role")
        if role not in ROLES:
            raise tag_error(role, ROLES, {}, f"[{i}].role")
    return value


AnyMessage = (
    SystemMessage
    | DeveloperMessage
    | UserMessage
    | AssistantMessage
    | ToolMessage
    | FunctionMessage
)


def message_dict(message: AnyMessage) -> dict[str, Any]:
    """A message as a plain dict for a tokenizer chat template (no None values)."""
    data = message.model_dump(exclude_none=True, exclude={"annotations", "audio"})
    if hasattr(message, "content"):
        flat = flatten_content(message.content)
        if flat is not None:
            data["content"] = flat
    return data
