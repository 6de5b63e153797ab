"""The chat-completion request: OpenAI's and SGLang's fields, validated and normalised.

:func:`parse_chat_request` is the one way in. It refuses what berth cannot honour
(400 naming the field) and normalises deprecated spellings, so downstream code
reads one spelling of each fact:

* ``max_tokens`` → ``max_completion_tokens``
* ``functions`` / ``function_call`` → ``tools`` / ``tool_choice``
* ``stop`` → a list of strings (or None)
* ``logit_bias`` → ``{token_id: bias}`` with integer keys

The deprecated fields are None after parsing. ``docs/request-fields.md`` says
where each field goes in the engine.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from berth.protocol import jsonbody
from berth.protocol.constraints import schema_violation
from berth.protocol.errors import InvalidRequest, field_error, invalid_request_from
from berth.protocol.limits import DEFAULT_LIMITS, RequestLimits
from berth.protocol.messages import (
    AnyMessage,
    AssistantMessage,
    Message,
    check_roles,
    message_dict,
    tag_error,
    tagged_by,
)
from berth.protocol.sampling import (
    LogitBias,
    MinP,
    MinTokens,
    NonEmptyStr,
    Penalty,
    PositiveCount,
    RepetitionPenalty,
    Seed,
    StopStrings,
    StopTokenIds,
    StreamOptions,
    StrictModel,
    Temperature,
    TopK,
    TopP,
    between,
    check_lengths,
    check_min_tokens,
    check_n,
    check_repetitions,
    limits_of,
    non_empty,
    refuse,
)

ConstraintKind = Literal["json_object", "json_schema", "regex", "ebnf"]
ServiceTier = Literal["auto", "default", "flex", "scale", "priority"]
ReasoningEffort = Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"]
MAX_TOP_LOGPROBS = 20
# OpenAI's rule for function names, which also keeps them safe inside chat templates.
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
# berth sets these itself when it renders the template; letting a request set them
# would bypass the checks above (``chat_template`` would run arbitrary client Jinja).
RESERVED_TEMPLATE_KWARGS = frozenset(
    {"messages", "tools", "add_generation_prompt", "continue_final_message", "chat_template"}
)


def _check_name(value: str) -> str:
    if not 1 <= len(value) <= 64 or not set(value) <= _NAME_CHARS:
        raise field_error(f"must be 1 to 64 characters of a-z, A-Z, 0-9, '_' or '-', got {value!r}")
    return value


FunctionName = Annotated[StrictStr, AfterValidator(_check_name)]


def schema_depth(value: Any) -> int:
    """How deeply objects and arrays nest in a JSON value (a scalar is 0)."""
    depth = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    # iterative, so a hostile schema cannot hit Python's recursion limit
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        depth = max(depth, level + 1)
        stack.extend((child, level + 1) for child in children)
    return depth


# field → (the RequestLimits attribute bounding its length, what it counts); checked on
# the decoded JSON by :func:`check_sizes`, before any model is built
_LENGTH_LIMITS = {
    "messages": ("max_messages", "messages"),
    "tools": ("max_tools", "entries"),
    "functions": ("max_tools", "entries"),
    "stop_token_ids": ("max_stop_token_ids", "token ids"),
    "regex": ("max_regex_chars", "characters"),
    "ebnf": ("max_grammar_chars", "characters"),
    "user": ("max_identifier_chars", "characters"),
    "safety_identifier": ("max_identifier_chars", "characters"),
    "prompt_cache_key": ("max_identifier_chars", "characters"),
}


def check_sizes(data: Any, limits: RequestLimits) -> None:
    """Refuse a body over a count or length bound, from the decoded JSON alone.

    Runs before the pydantic model is built, so a request with 10,000 tools or 50,000
    messages costs one ``len`` to refuse, not the validation of every entry. Values of
    the wrong type are left to the model, which says what type is expected.
    """
    if not isinstance(data, dict):
        return
    for key in data:
        # unknown fields are reported first, as OpenAI does (and as the model would)
        if key not in ChatCompletionRequest.model_fields:
            raise InvalidRequest(f"Unrecognized request argument supplied: {key}", param=str(key))
    check_lengths(data, limits, _LENGTH_LIMITS)


def check_sizes_unparsed(body: bytes, limits: RequestLimits) -> None:
    """:func:`check_sizes` on a body before it is parsed, from one scan that builds none of
    its entries: 10,000 tools or 50,000 messages are refused in a millisecond or two, not
    after the tens of milliseconds of building them (the API's event loop waits for it)."""
    view = jsonbody.shallow(body, (*_LENGTH_LIMITS, "stop"))
    if view is not None:
        check_sizes(view, limits)


def _check_schema(schema: Any, info: ValidationInfo, subpath: str) -> None:
    """Depth, size, counts and repetitions of a JSON schema the worker will compile."""
    if schema is None:
        return
    limits = limits_of(info)
    depth = schema_depth(schema)
    if depth > limits.max_json_schema_depth:
        raise field_error(
            f"must nest at most {limits.max_json_schema_depth} levels deep, got {depth}",
            subpath=subpath,
        )
    if problem := schema_violation(schema, limits):
        # ":" so the message reads "<param>: minItems must be at most ..."
        raise field_error(f": {problem}", subpath=subpath)


# --- tools ------------------------------------------------------------------------------


class FunctionDefinition(StrictModel):
    """A function the model may call: its name, description and JSON-schema parameters."""

    name: FunctionName
    description: StrictStr | None = None
    parameters: dict[str, Any] | None = None
    strict: StrictBool | None = None


class Tool(StrictModel):
    """``{"type": "function", "function": {...}}``; berth has function tools only."""

    type: Literal["function"] = "function"
    function: FunctionDefinition


def _function_tools_only(value: Any) -> Any:
    if isinstance(value, list):
        for i, tool in enumerate(value):
            if isinstance(tool, dict) and tool.get("type", "function") != "function":
                raise tag_error(
                    tool.get("type"),
                    ("function",),
                    {"custom": "only function tools are supported"},
                    f"[{i}].type",
                )
    return value


class ToolName(StrictModel):
    """``{"name": ...}`` naming a defined tool or function."""

    name: StrictStr


class NamedToolChoice(StrictModel):
    """``{"type": "function", "function": {"name": ...}}``: the model must call this tool."""

    type: Literal["function"] = "function"
    function: ToolName


def _mode_or_object(modes: tuple[str, ...]) -> BeforeValidator:
    """The value is one of the string ``modes`` or an object (checked before the union)."""

    def check(value: Any) -> Any:
        if isinstance(value, dict | BaseModel):
            return value
        if value not in modes:
            raise tag_error(value, modes, {}, "")
        return value

    return BeforeValidator(check)


def _str_or_object(value: Any) -> str:
    return "<mode>" if isinstance(value, str) else "<object>"


ToolChoice = Annotated[
    Annotated[Literal["none", "auto", "required"], Tag("<mode>")]
    | Annotated[NamedToolChoice, Tag("<object>")],
    Discriminator(_str_or_object),
    _mode_or_object(("none", "auto", "required")),
]
LegacyFunctionCall = Annotated[
    Annotated[Literal["none", "auto"], Tag("<mode>")] | Annotated[ToolName, Tag("<object>")],
    Discriminator(_str_or_object),
    _mode_or_object(("none", "auto")),
]


# --- response format ----------------------------------------------------------------------


class JsonSchemaSpec(StrictModel):
    """The ``json_schema`` of a ``json_schema`` response format."""

    model_config = ConfigDict(extra="forbid", validate_by_name=True, serialize_by_alias=True)

    name: FunctionName
    description: StrictStr | None = None
    # ``schema`` would shadow a BaseModel attribute, hence the alias
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: StrictBool | None = None


class TextFormat(StrictModel):
    """``{"type": "text"}``: no constraint."""

    type: Literal["text"]


class JsonObjectFormat(StrictModel):
    """``{"type": "json_object"}``: any JSON object."""

    type: Literal["json_object"]


class JsonSchemaFormat(StrictModel):
    """``{"type": "json_schema", "json_schema": {...}}``: JSON matching the schema."""

    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


_FORMAT_TYPES = ("text", "json_object", "json_schema")


def _known_format(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value
    if not isinstance(value, dict):
        raise field_error(f"must be an object, got {value!r}")
    kind = value.get("type")
    if kind not in _FORMAT_TYPES:
        raise tag_error(
            kind,
            _FORMAT_TYPES,
            {"structural_tag": "use tools with tool_choice, or json_schema, instead"},
            ".type",
        )
    return value


ResponseFormat = Annotated[
    Annotated[TextFormat, Tag("<text>")]
    | Annotated[JsonObjectFormat, Tag("<json_object>")]
    | Annotated[JsonSchemaFormat, Tag("<json_schema>")],
    tagged_by("type"),
    BeforeValidator(_known_format),
]


# --- field normalisers ---------------------------------------------------------------------


def _metadata(value: Any) -> Any:
    # OpenAI's bounds on metadata; it lands in the job record, so it stays small.
    # Checked here, whole, so errors name ``metadata`` rather than a key path.
    if isinstance(value, dict):
        if len(value) > 16:
            raise field_error(f"must have at most 16 keys, got {len(value)}")
        for key, item in value.items():
            if len(key) > 64:
                raise field_error(f"keys must be at most 64 characters, got {len(key)}")
            if not isinstance(item, str):
                raise field_error(f"values must be strings, got {item!r} for key {key!r}")
            if len(item) > 512:
                raise field_error(
                    f"values must be at most 512 characters, got {len(item)} for key {key!r}"
                )
    return value


def _modalities(value: list[str] | None) -> list[str] | None:
    if value is not None and any(m != "text" for m in value):
        raise field_error(
            "is not supported beyond ['text']: berth serves text-only models", unsupported=True
        )
    return value


def _template_kwargs(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value:
        reserved = sorted(RESERVED_TEMPLATE_KWARGS.intersection(value))
        if reserved:
            raise field_error(
                f"must not set {reserved[0]!r}: berth renders the model's own chat template "
                "and sets messages, tools, add_generation_prompt and continue_final_message "
                "from the request itself"
            )
    return value


def _hidden_states(value: Any) -> Any:
    if value is not False and value is not None:
        raise field_error(
            "is not supported: the engine does not return hidden states", unsupported=True
        )
    return value


# --- the request -------------------------------------------------------------------------


class ChatCompletionRequest(StrictModel):
    """``POST /v1/chat/completions``: the union of OpenAI's and SGLang's request fields.

    Build it with :func:`parse_chat_request`, which turns every validation failure
    into an :class:`~berth.protocol.errors.InvalidRequest`. None means "not given":
    the engine's (or the model's generation config's) default applies.
    """

    # OpenAI (CreateChatCompletionRequest)
    messages: list[Message]
    model: Annotated[StrictStr, AfterValidator(non_empty)]
    store: StrictBool | None = None
    reasoning_effort: ReasoningEffort | None = None
    metadata: Annotated[dict[str, StrictStr] | None, BeforeValidator(_metadata)] = None
    frequency_penalty: Penalty = None
    logit_bias: LogitBias = None
    logprobs: StrictBool = False
    top_logprobs: Annotated[StrictInt | None, between(0, MAX_TOP_LOGPROBS)] = None
    max_tokens: PositiveCount = None
    max_completion_tokens: PositiveCount = None
    n: StrictInt = 1
    modalities: Annotated[list[Literal["text", "audio"]] | None, AfterValidator(_modalities)] = None
    prediction: Annotated[Any, refuse("vLLM has no per-request predicted outputs; omit it")] = None
    audio: Annotated[Any, refuse("berth serves text-only models (no audio output)")] = None
    presence_penalty: Penalty = None
    response_format: ResponseFormat | None = None
    seed: Seed = None
    service_tier: ServiceTier | None = None
    stop: StopStrings = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    temperature: Temperature = None
    top_p: TopP = None
    tools: Annotated[list[Tool] | None, BeforeValidator(_function_tools_only)] = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: StrictBool = True
    user: StrictStr | None = None
    function_call: LegacyFunctionCall | None = None
    functions: list[FunctionDefinition] | None = None
    web_search_options: Annotated[
        Any, refuse("berth has no web search; give the model a tool instead")
    ] = None

    # SGLang (ChatCompletionRequest) and newer OpenAI fields it mirrors
    prompt_cache_key: StrictStr | None = None
    safety_identifier: StrictStr | None = None
    verbosity: Annotated[
        Any,
        refuse("open-weight chat templates have no verbosity setting; ask in the prompt"),
    ] = None
    top_k: TopK = None
    min_p: MinP = None
    min_tokens: MinTokens = 0
    repetition_penalty: RepetitionPenalty = None
    regex: NonEmptyStr = None
    ebnf: NonEmptyStr = None
    stop_token_ids: StopTokenIds = None
    no_stop_trim: StrictBool = False
    ignore_eos: StrictBool = False
    continue_final_message: StrictBool = False
    skip_special_tokens: StrictBool = True
    lora_path: NonEmptyStr = None
    session_params: Annotated[
        Any, refuse("vLLM has no SGLang sessions; send the whole conversation")
    ] = None
    separate_reasoning: StrictBool = True
    stream_reasoning: StrictBool = True
    chat_template_kwargs: Annotated[dict[str, Any] | None, AfterValidator(_template_kwargs)] = None
    # SGLang takes true, false or "last"; only false (or null) is honoured
    return_hidden_states: Annotated[Any, AfterValidator(_hidden_states)] = False
    sampling_seed: Seed = None

    # --- field checks that need the limits ---

    @field_validator("messages", mode="before")
    @classmethod
    def _messages_given(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise field_error("must contain at least one message")
        return check_roles(value)

    @field_validator("n")
    @classmethod
    def _n_bounded(cls, value: int, info: ValidationInfo) -> int:
        return check_n(value, info)

    @field_validator("response_format")
    @classmethod
    def _schema_bounded(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, JsonSchemaFormat):
            _check_schema(value.json_schema.schema_, info, ".json_schema.schema")
        return value

    @field_validator("regex", "ebnf")
    @classmethod
    def _repetitions_bounded(cls, value: str | None, info: ValidationInfo) -> str | None:
        return check_repetitions(value, info)

    @field_validator("tools", "functions")
    @classmethod
    def _tools_checked(cls, value: Any, info: ValidationInfo) -> Any:
        seen: set[str] = set()
        for i, item in enumerate(value or []):
            function = item.function if isinstance(item, Tool) else item
            prefix = f"[{i}].function" if isinstance(item, Tool) else f"[{i}]"
            _check_schema(function.parameters, info, f"{prefix}.parameters")
            if function.name in seen:
                raise field_error(
                    f"duplicates the name {function.name!r}", subpath=f"{prefix}.name"
                )
            seen.add(function.name)
        return value

    # --- checks across fields, then normalisation ---

    @model_validator(mode="before")
    @classmethod
    def _known_fields_only(cls, data: Any) -> Any:
        # before field validation, so an unknown field is reported first, as OpenAI does
        if not isinstance(data, dict):
            raise InvalidRequest(
                f"The request body must be a JSON object, got {type(data).__name__}"
            )
        for key in data:
            if key not in cls.model_fields:
                raise InvalidRequest(
                    f"Unrecognized request argument supplied: {key}", param=str(key)
                )
        return data

    @model_validator(mode="after")
    def _consistent(self) -> ChatCompletionRequest:
        # errors about the tool choice name the field the client actually sent
        choice_param = "tool_choice" if self.function_call is None else "function_call"
        self._normalise_max_tokens()
        self._normalise_functions()
        self._check_tools()
        self._check_sampling()
        self._check_constraints(choice_param)
        if self.stream_options is not None and not self.stream:
            raise InvalidRequest(
                "stream_options is only allowed when stream is true", param="stream_options"
            )
        if self.continue_final_message and not isinstance(self.messages[-1], AssistantMessage):
            raise InvalidRequest(
                "continue_final_message needs the last message to be the assistant's, "
                f"got role {self.messages[-1].role!r}",
                param="continue_final_message",
            )
        return self

    def _normalise_max_tokens(self) -> None:
        if self.max_tokens is not None:
            if (
                self.max_completion_tokens is not None
                and self.max_completion_tokens != self.max_tokens
            ):
                raise InvalidRequest(
                    f"max_tokens ({self.max_tokens}) and max_completion_tokens "
                    f"({self.max_completion_tokens}) differ; give only max_completion_tokens",
                    param="max_tokens",
                )
            self.max_completion_tokens = self.max_tokens
            self.max_tokens = None

    def _normalise_functions(self) -> None:
        if self.functions is not None:
            if self.tools is not None:
                raise InvalidRequest(
                    "functions cannot be combined with tools; give only tools", param="functions"
                )
            self.tools = [Tool(function=f) for f in self.functions]
            self.functions = None
        if self.function_call is not None:
            if self.tool_choice is not None:
                raise InvalidRequest(
                    "function_call cannot be combined with tool_choice; give only tool_choice",
                    param="function_call",
                )
            if isinstance(self.function_call, ToolName):
                names = {t.function.name for t in self.tools or []}
                if self.function_call.name not in names:
                    raise InvalidRequest(
                        f"function_call.name {self.function_call.name!r} is not one of the "
                        "functions given",
                        param="function_call.name",
                    )
                self.tool_choice = NamedToolChoice(function=self.function_call)
            elif self.tools is not None or self.function_call == "none":
                self.tool_choice = self.function_call
            else:
                raise InvalidRequest(
                    "function_call is only allowed when functions are given",
                    param="function_call",
                )
            self.function_call = None

    def _check_tools(self) -> None:
        choice = self.tool_choice
        if choice is None or choice == "none":
            return
        if not self.tools:
            raise InvalidRequest(
                "tool_choice is only allowed when tools are given (except 'none')",
                param="tool_choice",
            )
        if isinstance(choice, NamedToolChoice):
            names = [t.function.name for t in self.tools]
            if choice.function.name not in names:
                raise InvalidRequest(
                    f"tool_choice.function.name {choice.function.name!r} is not one of the "
                    f"tools given: {', '.join(names)}",
                    param="tool_choice.function.name",
                )

    def _check_sampling(self) -> None:
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidRequest(
                "top_logprobs is only allowed when logprobs is true", param="top_logprobs"
            )
        check_min_tokens(self.min_tokens, self.max_completion_tokens, "max_completion_tokens")

    def _check_constraints(self, choice_param: str) -> None:
        given = [name for name in ("regex", "ebnf") if getattr(self, name) is not None]
        if self.constraint_kind in ("json_object", "json_schema"):
            given.insert(0, "response_format")
        if len(given) > 1:
            raise InvalidRequest(
                f"{given[1]} cannot be combined with {given[0]}: give at most one output "
                "constraint (response_format json_object/json_schema, regex or ebnf)",
                param=given[1],
            )
        if given and (
            self.tool_choice == "required" or isinstance(self.tool_choice, NamedToolChoice)
        ):
            raise InvalidRequest(
                f"{choice_param} {self.tool_choice_label!r} constrains the output to the "
                f"tools' schema and cannot be combined with {given[0]}",
                param=choice_param,
            )

    # --- accessors for downstream code ---

    @property
    def tool_choice_label(self) -> str | None:
        """``tool_choice`` as a string: the mode, or the named tool's name."""
        if isinstance(self.tool_choice, NamedToolChoice):
            return self.tool_choice.function.name
        return self.tool_choice

    @property
    def max_tokens_requested(self) -> int | None:
        """The client's cap on completion tokens (``max_completion_tokens`` or ``max_tokens``)."""
        return self.max_completion_tokens

    @property
    def prompt_field(self) -> str:
        """The field that carries the prompt, for errors about its length."""
        return "messages"

    @property
    def max_tokens_field(self) -> str:
        """The field that caps the completion, for errors about it."""
        return "max_completion_tokens"

    @property
    def logprobs_count(self) -> int | None:
        """Alternatives per sampled token to return (None: no logprobs at all)."""
        return (self.top_logprobs or 0) if self.logprobs else None

    @property
    def constraint_kind(self) -> ConstraintKind | None:
        """Which output constraint the request asks for, if any (at most one is allowed)."""
        fmt = self.response_format
        if isinstance(fmt, JsonSchemaFormat):
            # a json_schema format without a schema only asks for some JSON object
            return "json_schema" if fmt.json_schema.schema_ is not None else "json_object"
        if isinstance(fmt, JsonObjectFormat):
            return "json_object"
        if self.regex is not None:
            return "regex"
        if self.ebnf is not None:
            return "ebnf"
        return None

    @property
    def effective_seed(self) -> int | None:
        """The sampling seed: SGLang's ``sampling_seed`` wins over OpenAI's ``seed``.

        ``sampling_seed`` is the engine-level field; a client that sets both is
        addressing the engine directly and means it.
        """
        return self.sampling_seed if self.sampling_seed is not None else self.seed

    @property
    def wants_usage(self) -> bool:
        """Whether a streaming client asked for a final usage chunk."""
        return bool(self.stream_options and self.stream_options.include_usage)

    def message_dicts(self) -> list[dict[str, Any]]:
        """The messages as plain dicts for a chat template: no None values, text parts joined."""
        return [message_dict(m) for m in self.messages]

    def tool_dicts(self) -> list[dict[str, Any]] | None:
        """The tools as plain dicts for a chat template (None when there are none)."""
        if self.tools is None:
            return None
        return [t.model_dump(exclude_none=True) for t in self.tools]


def parse_chat_request(data: Any, limits: RequestLimits | None = None) -> ChatCompletionRequest:
    """Validate and normalise a chat-completion request body.

    ``data`` is the decoded JSON object (or the raw JSON text/bytes). Raises
    :class:`~berth.protocol.errors.InvalidRequest` (or its subclass ``Unsupported``)
    whose ``param`` names the first offending field; never a pydantic error.
    """
    if isinstance(data, str | bytes | bytearray):
        try:
            data = json.loads(data)
        except ValueError as exc:
            raise InvalidRequest(f"The request body is not valid JSON: {exc}") from None
    limits = limits or DEFAULT_LIMITS
    check_sizes(data, limits)
    context = {"limits": limits}
    try:
        return ChatCompletionRequest.model_validate(data, context=context)
    except ValidationError as exc:
        raise invalid_request_from(exc) from None


__all__ = [
    "AnyMessage",
    "ChatCompletionRequest",
    "ConstraintKind",
    "FunctionDefinition",
    "JsonObjectFormat",
    "JsonSchemaFormat",
    "JsonSchemaSpec",
    "NamedToolChoice",
    "StreamOptions",
    "TextFormat",
    "Tool",
    "ToolName",
    "check_sizes",
    "check_sizes_unparsed",
    "parse_chat_request",
    "schema_depth",
]
