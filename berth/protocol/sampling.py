"""The sampling fields chat and text completions share: their types, checks and
normalisers, defined once for both request models (``chat.py``, ``completion.py``).

Each check raises ``field_error``, so a failure becomes a 400 naming the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    AllowInfNan,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Strict,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationInfo,
    field_validator,
)

from berth.protocol.constraints import repetition_violation
from berth.protocol.errors import InvalidRequest, field_error
from berth.protocol.limits import DEFAULT_LIMITS, RequestLimits

MAX_STOP_STRINGS = 4
INT64 = (-(2**63), 2**63 - 1)


class StrictModel(BaseModel):
    """A request model: unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")


def between(lo: float, hi: float) -> AfterValidator:
    def check(value: float | None) -> float | None:
        if value is not None and not lo <= value <= hi:
            raise field_error(f"must be between {lo} and {hi}, got {value}")
        return value

    return AfterValidator(check)


def positive(value: float | None) -> float | None:
    if value is not None and value <= 0:
        raise field_error(f"must be greater than 0, got {value}")
    return value


def at_least_one(value: int | None) -> int | None:
    if value is not None and value < 1:
        raise field_error(f"must be at least 1, got {value}")
    return value


def not_negative(value: int) -> int:
    if value < 0:
        raise field_error(f"must be at least 0, got {value}")
    return value


def check_top_p(value: float | None) -> float | None:
    if value is not None and not 0 < value <= 1:
        raise field_error(f"must be greater than 0 and at most 1, got {value}")
    return value


def check_top_k(value: int | None) -> int | None:
    if value is not None and value != -1 and value < 1:
        raise field_error(f"must be -1 (disabled) or at least 1, got {value}")
    return value


def non_empty(value: str | None) -> str | None:
    if value is not None and not value:
        raise field_error("must not be empty")
    return value


def refuse(reason: str) -> AfterValidator:
    """A field berth knows but cannot honour: any value but null is Unsupported."""

    def check(value: Any) -> Any:
        if value is not None:
            raise field_error(f"is not supported: {reason}", unsupported=True)
        return value

    return AfterValidator(check)


# a JSON number; NaN and Infinity (which Python's json module accepts) are refused
Number = Annotated[float, Strict(), AllowInfNan(False)]
Temperature = Annotated[Number | None, between(0, 2)]
Penalty = Annotated[Number | None, between(-2, 2)]
Seed = Annotated[StrictInt | None, between(*INT64)]
PositiveCount = Annotated[StrictInt | None, AfterValidator(at_least_one)]
NonEmptyStr = Annotated[StrictStr | None, AfterValidator(non_empty)]


class StreamOptions(StrictModel):
    """Options for ``stream: true``."""

    include_usage: StrictBool | None = None
    # vLLM's extension (usage on every chunk); only false is honoured
    continuous_usage_stats: StrictBool | None = None
    # OpenAI pads chunks against length side channels; berth does not, so only false
    include_obfuscation: StrictBool | None = None

    @field_validator("continuous_usage_stats", "include_obfuscation")
    @classmethod
    def _only_false(cls, value: bool | None, info: ValidationInfo) -> bool | None:
        if value:
            reason = _STREAM_OPTION_REASONS[str(info.field_name)]
            raise field_error(
                f"is not supported: {reason}; send false or omit it", unsupported=True
            )
        return value


_STREAM_OPTION_REASONS = {
    "continuous_usage_stats": "berth sends usage once, in the final chunk (include_usage)",
    "include_obfuscation": "berth does not pad stream chunks",
}


def stop_list(value: Any) -> Any:
    """``"x"`` → ``["x"]``; ``[]`` → None; at most four non-empty strings."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return value
    if not value:
        return None
    if len(value) > MAX_STOP_STRINGS:
        raise field_error(f"must have at most {MAX_STOP_STRINGS} strings, got {len(value)}")
    for i, item in enumerate(value):
        if isinstance(item, str) and not item:
            raise field_error("must not be empty", subpath=f"[{i}]")
    return value


def normalise_logit_bias(value: Any) -> Any:
    """JSON object keys are strings: ``{"50256": -100}`` → ``{50256: -100.0}``."""
    if not isinstance(value, dict):
        return value
    out: dict[int, float] = {}
    for key, bias in value.items():
        if isinstance(key, int) and not isinstance(key, bool):
            token = key
        elif isinstance(key, str) and key.isascii() and key.isdigit():
            token = int(key)
        else:
            raise field_error(f"keys must be token ids (strings of digits), got {key!r}")
        if isinstance(bias, bool) or not isinstance(bias, int | float):
            raise field_error(f"values must be numbers, got {bias!r} for token {key}")
        if not -100 <= bias <= 100:
            raise field_error(f"values must be between -100 and 100, got {bias} for token {key}")
        out[token] = float(bias)
    return out


def limits_of(info: ValidationInfo) -> RequestLimits:
    context = info.context or {}
    limits = context.get("limits") if isinstance(context, dict) else None
    return limits if isinstance(limits, RequestLimits) else DEFAULT_LIMITS


TopP = Annotated[Number | None, AfterValidator(check_top_p)]
TopK = Annotated[StrictInt | None, AfterValidator(check_top_k)]
MinP = Annotated[Number | None, between(0, 1)]
MinTokens = Annotated[StrictInt, AfterValidator(not_negative)]
RepetitionPenalty = Annotated[Number | None, AfterValidator(positive)]
StopStrings = Annotated[list[StrictStr] | None, BeforeValidator(stop_list)]
LogitBias = Annotated[dict[int, float] | None, BeforeValidator(normalise_logit_bias)]
StopTokenIds = list[Annotated[StrictInt, AfterValidator(not_negative)]] | None


def check_n(value: int, info: ValidationInfo) -> int:
    """``n`` within 1 … the limits' ``max_n``."""
    limit = limits_of(info).max_n
    if not 1 <= value <= limit:
        raise field_error(f"must be between 1 and {limit}, got {value}")
    return value


def check_repetitions(value: str | None, info: ValidationInfo) -> str | None:
    """A ``regex`` or ``ebnf`` whose ``{m,n}`` repetitions stay within the limits."""
    if value is not None:
        limit = limits_of(info).max_regex_repetition
        if problem := repetition_violation(value, limit, ebnf=info.field_name == "ebnf"):
            raise field_error(f": {problem}")
    return value


def check_min_tokens(min_tokens: int, max_tokens: int | None, max_param: str) -> None:
    """``min_tokens`` may not exceed the request's cap on completion tokens."""
    if max_tokens is not None and min_tokens > max_tokens:
        raise InvalidRequest(
            f"min_tokens must be at most {max_param} ({max_tokens}), got {min_tokens}",
            param="min_tokens",
        )


def check_lengths(
    data: Mapping[str, Any], limits: RequestLimits, bounds: Mapping[str, tuple[str, str]]
) -> None:
    """Refuse a field over its length bound, from the decoded JSON alone: ``bounds`` maps a
    field to (the ``RequestLimits`` attribute bounding its length, what it counts); the
    ``stop`` strings are counted and measured too. Values of the wrong type are left to the
    model, which says what type is expected."""
    for name, (attr, unit) in bounds.items():
        value = data.get(name)
        if isinstance(value, list | str):
            limit = getattr(limits, attr)
            if len(value) > limit:
                raise InvalidRequest(
                    f"{name} must have at most {limit} {unit}, got {len(value)}", param=name
                )
    stop = data.get("stop")
    strings = [stop] if isinstance(stop, str) else stop if isinstance(stop, list) else []
    if len(strings) > MAX_STOP_STRINGS:
        raise InvalidRequest(
            f"stop must have at most {MAX_STOP_STRINGS} strings, got {len(strings)}", param="stop"
        )
    for i, item in enumerate(strings):
        if isinstance(item, str) and len(item) > limits.max_stop_chars:
            param = "stop" if isinstance(stop, str) else f"stop[{i}]"
            raise InvalidRequest(
                f"{param} must have at most {limits.max_stop_chars} characters, got {len(item)}",
                param=param,
            )
