"""Turns an HTTP request into a queued request: body bounds, validation, model resolution,
lane and deadline, and a job's or batch's webhook. Shared by chat and text completions,
asynchronous jobs and batches."""

from __future__ import annotations

import time
from typing import Any

from fastapi import Request

from berth.api.state import ApiState
from berth.plumbing import tracing
from berth.protocol import jsonbody
from berth.protocol.chat import (
    ChatCompletionRequest,
    check_sizes_unparsed,
    parse_chat_request,
)
from berth.protocol.completion import CompletionRequest, parse_completion_request
from berth.protocol.completion import check_sizes_unparsed as check_completion_sizes
from berth.protocol.envelopes import QueuedRequest
from berth.protocol.errors import InvalidRequest
from berth.webhooks.addresses import check_webhook

DEADLINE_HEADER = "x-deadline-seconds"

# service_tier picks the lane: "priority" is always interactive, "flex" always batch
_TIER_LANES = {"priority": "interactive", "flex": "batch"}


async def read_body(request: Request, limit: int) -> bytes:
    body = await request.body()
    if len(body) > limit:
        raise InvalidRequest(
            f"the request body is {len(body)} bytes; at most {limit} are allowed",
            code="request_too_large",
        )
    return body


async def read_json(request: Request, limit: int) -> Any:
    return jsonbody.loads(await read_body(request, limit))


def deadline_from(request: Request) -> float | None:
    """An absolute deadline from the X-Deadline-Seconds header (seconds from now)."""
    raw = request.headers.get(DEADLINE_HEADER)
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise InvalidRequest(
            f"X-Deadline-Seconds must be a positive number of seconds, got {raw!r}",
            param="X-Deadline-Seconds",
        )
    return time.time() + seconds


def lane_for(chat: ChatCompletionRequest, default: str) -> str:
    return _TIER_LANES.get(chat.service_tier or "", default)


def queued_request(
    state: ApiState,
    chat: ChatCompletionRequest | CompletionRequest,
    request_id: str,
    *,
    tenant: str,
    lane: str,
    deadline: float | None,
    job: bool = False,
) -> QueuedRequest:
    """The envelope for a validated request; raises ModelNotFound for an unknown model, and
    Unavailable for a model no live worker serves that the request may not wait for (a job
    waits for a declared model's worker; a chat up to cold_start_wait_s, when not 0)."""
    may_wait = job or state.settings.cold_start_wait_s > 0
    model, adapter = state.directory.resolve(chat.model, chat.lora_path, may_wait)
    return QueuedRequest(
        id=request_id,
        model=model,
        adapter=adapter,
        request=chat.model_dump(mode="json", exclude_none=True),
        kind="chat" if isinstance(chat, ChatCompletionRequest) else "completion",
        deadline=deadline,
        lane=lane,
        job=job,
        tenant=tenant,
        affinity=chat.prompt_cache_key if isinstance(chat, ChatCompletionRequest) else None,
        # a job needs no connection; an interactive request dies with its API process
        origin=None if job else state.instance or None,
        trace=tracing.carrier(),
    )


async def read_chat(request: Request, state: ApiState) -> ChatCompletionRequest:
    limits = state.settings.limits()
    body = await read_body(request, limits.max_body_bytes)
    with tracing.span("validate"):
        # the counts first, before the body is built into Python objects
        check_sizes_unparsed(body, limits)
        return parse_chat_request(jsonbody.loads(body), limits)


async def read_job(request: Request, state: ApiState) -> tuple[ChatCompletionRequest, Any]:
    """A job's body: a chat request, and the job's own ``webhook`` field (as sent; None when
    absent), which is no chat field."""
    limits = state.settings.limits()
    body = await read_body(request, limits.max_body_bytes)
    with tracing.span("validate"):
        try:
            check_sizes_unparsed(body, limits)
        except InvalidRequest as err:
            # the job's own field, unknown to a chat request: the sizes are checked again
            # on the parsed body without it
            if err.param != "webhook":
                raise
        data = jsonbody.loads(body)
        webhook = data.pop("webhook", None) if isinstance(data, dict) else None
        return parse_chat_request(data, limits), webhook


async def webhook_for(state: ApiState, tenant: str, given: Any) -> str | None:
    """Where a job's or batch's end event goes: the URL it named, checked (400 naming
    ``webhook`` when refused), or else its tenant's default; None for no webhook."""
    settings = state.settings
    if given is None:
        return settings.webhook_default(tenant)
    if not settings.webhook_secret:
        raise InvalidRequest(
            "webhooks are off on this server (no webhook secret is set): send no webhook",
            param="webhook",
        )
    return await check_webhook(given, settings.webhook_allow_private)


async def read_completion(request: Request, state: ApiState) -> CompletionRequest:
    limits = state.settings.limits()
    body = await read_body(request, limits.max_body_bytes)
    with tracing.span("validate"):
        check_completion_sizes(body, limits)
        return parse_completion_request(jsonbody.loads(body), limits)
