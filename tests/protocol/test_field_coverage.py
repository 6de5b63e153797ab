"""The request model has every field of both request types, and the docs describe each."""

from __future__ import annotations

import re
from pathlib import Path

from openai.types.chat import completion_create_params

from berth.protocol.chat import ChatCompletionRequest

DOC = Path(__file__).resolve().parents[2] / "docs" / "request-fields.md"

OPENAI_FIELDS = [
    "messages",
    "model",
    "store",
    "reasoning_effort",
    "metadata",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "max_tokens",
    "max_completion_tokens",
    "n",
    "modalities",
    "prediction",
    "audio",
    "presence_penalty",
    "response_format",
    "seed",
    "service_tier",
    "stop",
    "stream",
    "stream_options",
    "temperature",
    "top_p",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "user",
    "function_call",
    "functions",
    "web_search_options",
]
SGLANG_FIELDS = [
    "prompt_cache_key",
    "safety_identifier",
    "verbosity",
    "top_k",
    "min_p",
    "min_tokens",
    "repetition_penalty",
    "regex",
    "ebnf",
    "stop_token_ids",
    "no_stop_trim",
    "ignore_eos",
    "continue_final_message",
    "skip_special_tokens",
    "lora_path",
    "session_params",
    "separate_reasoning",
    "stream_reasoning",
    "chat_template_kwargs",
    "return_hidden_states",
    "sampling_seed",
]
# in the openai client but in neither async-openai's nor SGLang's request type
CLIENT_ONLY = {"moderation", "prompt_cache_retention", "prompt_cache_options"}


def documented_rows() -> set[str]:
    return set(re.findall(r"^\| `([a-z_]+)` \|", DOC.read_text(), flags=re.MULTILINE))


def test_model_has_exactly_the_fields_of_both_request_types() -> None:
    assert set(ChatCompletionRequest.model_fields) == set(OPENAI_FIELDS) | set(SGLANG_FIELDS)


def test_every_field_has_a_row_in_the_docs() -> None:
    missing = set(ChatCompletionRequest.model_fields) - documented_rows()
    assert not missing, f"docs/request-fields.md has no row for {sorted(missing)}"


def test_every_openai_client_parameter_is_known_or_documented_as_unknown() -> None:
    sent = set(completion_create_params.CompletionCreateParamsBase.__annotations__)
    unknown = sent - set(ChatCompletionRequest.model_fields)
    assert unknown <= CLIENT_ONLY
    text = DOC.read_text()
    for name in CLIENT_ONLY:
        assert f"`{name}`" in text
