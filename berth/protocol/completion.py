"""The text-completion request (``POST /v1/completions``, OpenAI's legacy endpoint): its
fields validated and normalised, the sampling ones checked as the chat request checks them
(``sampling.py``).

:func:`parse_completion_request` is the one way in. It refuses what berth cannot honour
(400 naming the field) and normalises:

* ``prompt`` → one string or one list of token ids (``["text"]`` and ``[[1, 2]]`` are
  unwrapped; several prompts are refused: a request is one sequence in the queue, and
  a client batches by sending several requests, which the engine batches anyway)
* ``stop`` → a list of strings (or None)
* ``logit_bias`` → ``{token_id: bias}`` with integer keys

``docs/request-fields.md`` says where each field goes in the engine.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from berth.protocol import jsonbody
from berth.protocol.errors import InvalidRequest, field_error, invalid_request_from
from berth.protocol.limits import DEFAULT_LIMITS, RequestLimits
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
    non_empty,
    refuse,
)

# OpenAI's bound on the legacy endpoint's ``logprobs`` (alternatives per token)
MAX_COMPLETION_LOGPROBS = 5
# OpenAI's default for the legacy endpoint (and vLLM's): a completion is short unless asked
DEFAULT_MAX_TOKENS = 16

CompletionConstraint = Literal["regex", "ebnf"]

# field → (the RequestLimits attribute bounding its length, what it counts), as for chat
_LENGTH_LIMITS = {
    "stop_token_ids": ("max_stop_token_ids", "token ids"),
    "regex": ("max_regex_chars", "characters"),
    "ebnf": ("max_grammar_chars", "characters"),
    "user": ("max_identifier_chars", "characters"),
}


def _is_token_ids(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in value
    )


def _one_prompt(value: Any) -> Any:
    """``"text"``, ``["text"]``, ``[1, 2]`` or ``[[1, 2]]`` → ``"text"`` or ``[1, 2]``."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str | list):
        value = value[0]
    elif isinstance(value, list) and value and all(isinstance(p, str | list) for p in value):
        raise field_error(
            f"must be one prompt, got {len(value)}: berth queues each prompt as its own "
            "request; send one request per prompt (the engine batches them all the same)"
        )
    if isinstance(value, str):
        if not value:
            raise field_error("must not be empty")
        return value
    if not _is_token_ids(value):
        raise field_error(
            "must be a string, an array of token ids, or an array holding one of these"
        )
    if not value:
        raise field_error("must not be empty")
    for i, token in enumerate(value):
        if token < 0:
            raise field_error(f"token ids must be at least 0, got {token}", subpath=f"[{i}]")
    return value


Prompt = Annotated[StrictStr | list[StrictInt], BeforeValidator(_one_prompt)]


class CompletionRequest(StrictModel):
    """``POST /v1/completions``: OpenAI's legacy completion fields and the SGLang/vLLM
    sampling extras that apply without a chat template.

    Build it with :func:`parse_completion_request`. None means "not given": the engine's
    (or the model's generation config's) default applies.
    """

    # OpenAI (CreateCompletionRequest)
    model: Annotated[StrictStr, AfterValidator(non_empty)]
    prompt: Prompt
    best_of: StrictInt | None = None
    echo: StrictBool = False
    frequency_penalty: Penalty = None
    logit_bias: LogitBias = None
    logprobs: Annotated[StrictInt | None, between(0, MAX_COMPLETION_LOGPROBS)] = None
    max_tokens: PositiveCount = DEFAULT_MAX_TOKENS
    n: StrictInt = 1
    presence_penalty: Penalty = None
    seed: Seed = None
    stop: StopStrings = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    suffix: Annotated[
        Any,
        refuse(
            "the engine generates after the prompt only and cannot fill in before a suffix; "
            "put the whole context in prompt"
        ),
    ] = None
    temperature: Temperature = None
    top_p: TopP = None
    user: StrictStr | None = None

    # SGLang / vLLM sampling extras
    top_k: TopK = None
    min_p: MinP = None
    min_tokens: MinTokens = 0
    repetition_penalty: RepetitionPenalty = None
    regex: NonEmptyStr = None
    ebnf: NonEmptyStr = None
    stop_token_ids: StopTokenIds = None
    no_stop_trim: StrictBool = False
    ignore_eos: StrictBool = False
    skip_special_tokens: StrictBool = True
    lora_path: NonEmptyStr = None

    @field_validator("n")
    @classmethod
    def _n_bounded(cls, value: int, info: ValidationInfo) -> int:
        return check_n(value, info)

    @field_validator("regex", "ebnf")
    @classmethod
    def _repetitions_bounded(cls, value: str | None, info: ValidationInfo) -> str | None:
        return check_repetitions(value, info)

    @model_validator(mode="before")
    @classmethod
    def _known_fields_only(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise InvalidRequest(
                f"The request body must be a JSON object, got {type(data).__name__}"
            )
        _check_known(data)
        return data

    @model_validator(mode="after")
    def _consistent(self) -> CompletionRequest:
        if self.best_of is not None and self.best_of != self.n:
            raise InvalidRequest(
                f"best_of must equal n ({self.n}) or be omitted, got {self.best_of}: the "
                "engine returns every sequence it samples and cannot rank extra ones",
                param="best_of",
            )
        if self.echo and self.logprobs is not None:
            raise InvalidRequest(
                "echo cannot be combined with logprobs: the engine does not score the "
                "prompt's tokens; omit one of them",
                param="echo",
            )
        check_min_tokens(self.min_tokens, self.max_tokens, "max_tokens")
        if self.regex is not None and self.ebnf is not None:
            raise InvalidRequest(
                "ebnf cannot be combined with regex: give at most one output constraint",
                param="ebnf",
            )
        if self.stream_options is not None and not self.stream:
            raise InvalidRequest(
                "stream_options is only allowed when stream is true", param="stream_options"
            )
        return self

    # --- accessors the engine reads on either request kind ---

    @property
    def prompt_field(self) -> str:
        """The field that carries the prompt, for errors about its length."""
        return "prompt"

    @property
    def max_tokens_field(self) -> str:
        """The field that caps the completion, for errors about it."""
        return "max_tokens"

    @property
    def max_tokens_requested(self) -> int | None:
        """The client's cap on completion tokens (None: the rest of the context)."""
        return self.max_tokens

    @property
    def logprobs_count(self) -> int | None:
        """Alternatives per sampled token to return (None: no logprobs at all)."""
        return self.logprobs

    @property
    def constraint_kind(self) -> CompletionConstraint | None:
        """Which output constraint the request asks for, if any (at most one is allowed)."""
        if self.regex is not None:
            return "regex"
        if self.ebnf is not None:
            return "ebnf"
        return None

    @property
    def effective_seed(self) -> int | None:
        """The sampling seed."""
        return self.seed

    @property
    def wants_usage(self) -> bool:
        """Whether a streaming client asked for a final usage chunk."""
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def prompt_text(self) -> str | None:
        """The prompt when it was given as text (None for token ids)."""
        return self.prompt if isinstance(self.prompt, str) else None

    @property
    def prompt_ids(self) -> list[int] | None:
        """The prompt when it was given as token ids (None for text)."""
        return self.prompt if isinstance(self.prompt, list) else None


def _check_known(data: dict[Any, Any]) -> None:
    # unknown fields are reported first, as OpenAI does
    for key in data:
        if key not in CompletionRequest.model_fields:
            raise InvalidRequest(f"Unrecognized request argument supplied: {key}", param=str(key))


def check_sizes(data: Any, limits: RequestLimits) -> None:
    """Refuse a body over a count or length bound, from the decoded JSON alone (as the chat
    request's ``check_sizes``); the prompt is bounded by the body's size."""
    if isinstance(data, dict):
        _check_known(data)
        check_lengths(data, limits, _LENGTH_LIMITS)


def check_sizes_unparsed(body: bytes, limits: RequestLimits) -> None:
    """:func:`check_sizes` on a body before it is parsed, from one scan that builds none of
    its values."""
    view = jsonbody.shallow(body, (*_LENGTH_LIMITS, "stop"))
    if view is not None:
        check_sizes(view, limits)


def parse_completion_request(data: Any, limits: RequestLimits | None = None) -> CompletionRequest:
    """Validate and normalise a text-completion request body (the decoded JSON object).

    Raises :class:`~berth.protocol.errors.InvalidRequest` (or ``Unsupported``) whose
    ``param`` names the first offending field; never a pydantic error.
    """
    limits = limits or DEFAULT_LIMITS
    check_sizes(data, limits)
    try:
        return CompletionRequest.model_validate(data, context={"limits": limits})
    except ValidationError as exc:
        raise invalid_request_from(exc) from None


__all__ = [
    "DEFAULT_MAX_TOKENS",
    "MAX_COMPLETION_LOGPROBS",
    "CompletionRequest",
    "check_sizes",
    "check_sizes_unparsed",
    "parse_completion_request",
]
