"""A request's sampling fields (a chat or a text completion's) → vLLM ``SamplingParams``.

The table "The request: every field, and where it goes" in ``design.md`` is the
spec; each row is one line of :func:`build_sampling_params`. Fields left unset
(None) fall back to the model's generation config (``defaults``), then to
vLLM's own defaults, as vLLM's server does.

Model-dependent checks happen here, before the engine sees the request: the
context length (``max_completion_tokens``, or ``messages`` when the prompt alone
is too long; ``max_tokens`` and ``prompt`` for a text completion) and token ids
against the vocabulary (``logit_bias``, ``stop_token_ids``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from vllm.exceptions import VLLMValidationError
from vllm.sampling_params import RequestOutputKind, SamplingParams, StructuredOutputsParams
from vllm.v1.structured_output.utils import grammar_is_likely_lark

from berth.protocol.chat import ChatCompletionRequest
from berth.protocol.errors import InvalidRequest
from berth.workers.engine.checks import check_token_ids, logit_bias_ids, resolve_max_tokens

if TYPE_CHECKING:
    from berth.workers.engine.base import EngineRequest
    from berth.workers.engine.parsers import RequestParsing

# below this vLLM samples greedily (vllm.sampling_params._SAMPLING_EPS)
_GREEDY = 1e-5

# vLLM's parameter names → the chat request field a client set (a text completion's
# fields have vLLM's names)
_PARAM_NAMES = {
    "max_tokens": "max_completion_tokens",
    "logprobs": "top_logprobs",
    "include_stop_str_in_output": "no_stop_trim",
}


def constraint_param(req: EngineRequest) -> str:
    """The request field that carries the output constraint, for error messages."""
    kind = req.constraint_kind
    if kind in ("json_object", "json_schema"):
        return "response_format"
    if kind is not None:
        return kind
    return "tool_choice"


def structured_outputs(req: EngineRequest) -> StructuredOutputsParams | None:
    """``response_format`` / ``regex`` / ``ebnf`` → vLLM's structured-output constraint."""
    kind = req.constraint_kind
    if kind is None:
        return None
    if kind == "json_object":
        return StructuredOutputsParams(json_object=True)
    if kind == "json_schema" and isinstance(req, ChatCompletionRequest):
        schema = req.response_format.json_schema.schema_  # type: ignore[union-attr]
        return StructuredOutputsParams(json=schema)
    if kind == "regex":
        return StructuredOutputsParams(regex=req.regex)
    return StructuredOutputsParams(grammar=req.ebnf)


def constraint_spec(constraint: StructuredOutputsParams | None) -> tuple[str, str] | None:
    """The constraint as the compile step's ``(kind, spec)``, in the text vLLM's xgrammar
    backend compiles; None when there is nothing worth compiling ahead (no constraint, any
    JSON object, a choice list)."""
    if constraint is None:
        return None
    if constraint.json is not None:
        spec = constraint.json
        return "json", spec if isinstance(spec, str) else json.dumps(spec)
    if constraint.regex is not None:
        return "regex", constraint.regex
    if constraint.grammar is not None:
        lark = grammar_is_likely_lark(constraint.grammar)
        return ("lark" if lark else "ebnf"), constraint.grammar
    if constraint.structural_tag is not None:
        return "structural_tag", constraint.structural_tag
    return None


def build_sampling_params(
    req: EngineRequest,
    *,
    vocab_size: int,
    max_model_len: int,
    prompt_len: int,
    parsing: RequestParsing | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> SamplingParams:
    """The vLLM sampling parameters for ``req``; raises InvalidRequest naming the field.

    ``parsing`` (from :mod:`berth.workers.engine.parsers`) supplies the constraint
    after the tool parser adjusted it (``tool_choice`` required or named) and
    whether special tokens are kept for it; without it the request's own
    constraint applies. ``defaults`` are the model's generation-config defaults
    (``ModelConfig.get_diff_sampling_param()``).
    """
    defaults = defaults or {}

    def pick(value: Any, name: str, fallback: Any) -> Any:
        return value if value is not None else defaults.get(name, fallback)

    max_tokens = resolve_max_tokens(
        req.max_tokens_requested,
        prompt_len=prompt_len,
        max_model_len=max_model_len,
        prompt_param=req.prompt_field,
        max_param=req.max_tokens_field,
    )
    if req.max_tokens_requested is None and defaults.get("max_tokens"):
        max_tokens = min(max_tokens, int(defaults["max_tokens"]))

    bias = logit_bias_ids(req.logit_bias)
    check_token_ids(bias, vocab_size=vocab_size, param="logit_bias")
    stop_ids = list(req.stop_token_ids or [])
    check_token_ids(stop_ids, vocab_size=vocab_size, param="stop_token_ids")

    top_k = pick(req.top_k, "top_k", 0)
    if top_k == -1:
        top_k = 0  # OpenAI/SGLang spell "off" as -1, vLLM prefers 0

    temperature = pick(req.temperature, "temperature", 1.0)
    if req.n > 1 and temperature < _GREEDY:
        # vLLM refuses parallel sampling without randomness: the choices would be equal
        raise InvalidRequest(
            f"n must be 1 when temperature is 0 (greedy decoding), got n={req.n}; "
            "raise the temperature to sample several choices",
            param="n",
        )

    if parsing is not None:
        constraint = parsing.structured_outputs
        skip_special = parsing.skip_special_tokens
    else:
        constraint = structured_outputs(req)
        skip_special = req.skip_special_tokens

    try:
        return SamplingParams(
            n=req.n,
            temperature=temperature,
            top_p=pick(req.top_p, "top_p", 1.0),
            top_k=top_k,
            min_p=pick(req.min_p, "min_p", 0.0),
            presence_penalty=pick(req.presence_penalty, "presence_penalty", 0.0),
            frequency_penalty=pick(req.frequency_penalty, "frequency_penalty", 0.0),
            repetition_penalty=pick(req.repetition_penalty, "repetition_penalty", 1.0),
            min_tokens=req.min_tokens,
            max_tokens=max_tokens,
            seed=req.effective_seed,
            stop=list(req.stop) if req.stop else None,
            stop_token_ids=stop_ids or None,
            ignore_eos=req.ignore_eos,
            skip_special_tokens=skip_special,
            include_stop_str_in_output=req.no_stop_trim,
            # OpenAI: top_logprobs alternatives per token; the sampled token always comes back
            logprobs=req.logprobs_count,
            logit_bias=bias or None,
            structured_outputs=constraint,
            output_kind=RequestOutputKind.DELTA,
        )
    except VLLMValidationError as exc:
        raise invalid_from_vllm(exc, req) from None


def invalid_from_vllm(exc: VLLMValidationError, req: EngineRequest) -> InvalidRequest:
    """vLLM's validation error as berth's, naming the request field."""
    param = getattr(exc, "parameter", None)
    if param is None:
        message = str(exc).lower()
        if "structured output" in message or "grammar" in message or "regex" in message:
            param = constraint_param(req)
    if param and isinstance(req, ChatCompletionRequest):
        param = _PARAM_NAMES.get(param, param)
    return InvalidRequest(exc.args[0] if exc.args else str(exc), param=param)
