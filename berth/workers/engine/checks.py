"""Checks that need the model (its vocabulary and context length), shared by every engine.

The API validates what it can without the model; these run on the worker, before
the engine sees the request, and raise :class:`InvalidRequest` naming the field.
No vLLM import: the fake engine applies the same rules.
"""

from __future__ import annotations

from collections.abc import Iterable

from berth.protocol.errors import InvalidRequest


def resolve_max_tokens(
    requested: int | None,
    *,
    prompt_len: int,
    max_model_len: int,
    prompt_param: str = "messages",
    max_param: str = "max_completion_tokens",
) -> int:
    """Tokens the request may generate: as asked, or the rest of the context when unset.
    ``prompt_param`` and ``max_param`` name the request's fields (a chat request's, unless
    given) in the errors."""
    if prompt_len >= max_model_len:
        raise InvalidRequest(
            f"the prompt is {prompt_len} tokens long, but this model's context is "
            f"{max_model_len} tokens and at least one token must be left to generate; "
            f"shorten the {prompt_param}",
            param=prompt_param,
            code="context_length_exceeded",
        )
    room = max_model_len - prompt_len
    if requested is None:
        return room
    if requested < 1:
        raise InvalidRequest(f"{max_param} must be at least 1, got {requested}", param=max_param)
    if requested > room:
        raise InvalidRequest(
            f"the prompt ({prompt_len} tokens) plus {max_param} ({requested}) is "
            f"more than this model's context of {max_model_len} tokens; ask for at most "
            f"{room} tokens",
            param=max_param,
            code="context_length_exceeded",
        )
    return requested


def check_token_ids(ids: Iterable[int], *, vocab_size: int, param: str) -> None:
    """Every id must name a token of the vocabulary ``[0, vocab_size)``."""
    bad = sorted({i for i in ids if not 0 <= i < vocab_size})
    if bad:
        shown = ", ".join(str(i) for i in bad[:5]) + (", ..." if len(bad) > 5 else "")
        raise InvalidRequest(
            f"{param} contains token ids outside this model's vocabulary "
            f"(ids must be between 0 and {vocab_size - 1}): {shown}",
            param=param,
        )


def logit_bias_ids(logit_bias: dict[str, float] | dict[int, float] | None) -> dict[int, float]:
    """``logit_bias`` keyed by int token id (OpenAI sends the ids as JSON object keys)."""
    if not logit_bias:
        return {}
    out: dict[int, float] = {}
    for key, bias in logit_bias.items():
        try:
            token_id = int(key)
        except (TypeError, ValueError):
            raise InvalidRequest(
                f"logit_bias keys must be token ids (integers), got {key!r}", param="logit_bias"
            ) from None
        out[token_id] = float(bias)
    return out
