"""Bounds on one request, so a single client cannot stall a worker.

The API builds one :class:`RequestLimits` from its settings and passes it to
:func:`berth.protocol.chat.parse_chat_request`; every bound here is checked
before the request is queued, so the worker never compiles a huge grammar or
tokenizes a thousand-message prompt on behalf of a request that breaks them.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


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
    max_tools: int = Field(default=128, ge=1)
    # enforced by the API on the raw body, before JSON parsing
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1)
    max_stop_token_ids: int = Field(default=64, ge=0)


DEFAULT_LIMITS = RequestLimits()

# For re-reading a request the API already admitted under its own (possibly raised) limits:
# the worker must not refuse what the API accepted.
ADMITTED = RequestLimits(
    max_n=1 << 20,
    max_messages=1 << 30,
    max_regex_chars=1 << 30,
    max_grammar_chars=1 << 30,
    max_json_schema_depth=1 << 20,
    max_tools=1 << 20,
    max_body_bytes=1 << 40,
    max_stop_token_ids=1 << 20,
)
