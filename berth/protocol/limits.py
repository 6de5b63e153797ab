"""Bounds on one request, so a single client cannot stall a worker.

The API builds one :class:`RequestLimits` from its settings and passes it to
:func:`berth.protocol.chat.parse_chat_request`; every bound here is checked
before the request is queued, so the worker never compiles a huge grammar or
tokenizes a thousand-message prompt on behalf of a request that breaks them.
``docs/security.md`` lists each bound with the threat it answers.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

# an Idempotency-Key header (Stripe allows 255 characters; OpenAI documents none)
MAX_IDEMPOTENCY_KEY_CHARS = 256


class RequestLimits(BaseModel):
    """Per-request bounds checked while a chat-completion request is validated."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # each choice is a full sequence in the engine's batch
    max_n: int = Field(default=16, ge=1)
    max_messages: int = Field(default=1024, ge=1)
    # regex and grammar compilation cost grows with their size, and happens on the worker
    max_regex_chars: int = Field(default=4096, ge=1)
    max_grammar_chars: int = Field(default=16384, ge=1)
    # nesting depth of a JSON schema (response_format or a tool's parameters)
    max_json_schema_depth: int = Field(default=32, ge=1)
    # a JSON schema (response_format, or one tool's parameters), serialised compactly
    max_json_schema_bytes: int = Field(default=64 * 1024, ge=2)
    # all `properties` entries of one schema, summed over its subschemas
    max_json_schema_properties: int = Field(default=1024, ge=1)
    # all `enum` members of one schema, summed over its subschemas
    max_json_schema_enum: int = Field(default=1024, ge=1)
    # all `pattern` and `patternProperties` regexes of one schema, in characters
    max_json_schema_pattern_chars: int = Field(default=4096, ge=1)
    # minItems, maxItems, minLength, maxLength, minProperties, maxProperties, min/maxContains
    max_json_schema_repetition: int = Field(default=10_000, ge=1)
    # the bounds of a `{m,n}` repetition in a regex (`regex`, a schema's `pattern`) or in
    # `ebnf`; xgrammar turns a schema `pattern` into a grammar in time quadratic in them
    max_regex_repetition: int = Field(default=1000, ge=1)
    max_tools: int = Field(default=128, ge=1)
    # enforced by the API on the raw body, before JSON parsing
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1)
    max_stop_token_ids: int = Field(default=64, ge=0)
    # each stop string is searched for in every decoded chunk of every sequence, and the
    # request carries it through Redis to the worker: vLLM and OpenAI set no length, so
    # this bound is berth's (stop strings are words or short markers in practice)
    max_stop_chars: int = Field(default=256, ge=1)
    # free text that travels with the request (and for jobs into the job record):
    # `user`, `safety_identifier`, `prompt_cache_key` (OpenAI documents 64 characters
    # for `safety_identifier` and `user`; `prompt_cache_key` becomes a scheduling hint)
    max_identifier_chars: int = Field(default=256, ge=1)


DEFAULT_LIMITS = RequestLimits()

_HUGE = 1 << 40
# For re-reading a request the API already admitted under its own (possibly raised) limits:
# the worker must not refuse what the API accepted.
ADMITTED = RequestLimits(**{name: _HUGE for name in RequestLimits.model_fields})
