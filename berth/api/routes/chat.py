"""POST /v1/chat/completions: read and queue the request, then hand its answer to
``delivery`` (``chat_stream`` streams it, ``chat_answer`` assembles it);
GET /v1/chat/completions/{id}/stream: resume a stream whose client left.

What ends or cancels a request, and when a streamed one stays resumable, is
``delivery/chat_run.py``'s to say.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.responses import Response, StreamingResponse

from berth.api import metrics
from berth.api.delivery import chat_answer, chat_run, chat_stream
from berth.api.deps import State, Tenant
from berth.api.intake.admission import deadline_from, lane_for, queued_request, read_chat
from berth.plumbing import logcontext
from berth.protocol.errors import InvalidRequest, NotFound
from berth.protocol.output import parse_sse_event_id
from berth.store.streams import StreamStore

router = APIRouter()


@router.post("/v1/chat/completions")
async def chat_completions(request: Request, state: State, tenant: Tenant) -> Response:
    timer = metrics.RequestTimer(time.monotonic(), tenant)
    chat = await read_chat(request, state)
    request_id = f"chatcmpl-{uuid.uuid4().hex}"
    logcontext.bind(request_id=request_id)
    queued = queued_request(
        state,
        chat,
        request_id,
        tenant=tenant,
        lane=lane_for(chat, "interactive"),
        deadline=deadline_from(request),
    )
    timer.for_model(queued.model)
    run = await chat_run.start(state, chat, queued, timer)
    if chat.stream:
        return await chat_stream.respond(run, request, chat)
    return await chat_answer.respond(run, request, chat)


@router.get("/v1/chat/completions/{request_id}/stream")
async def resume_stream(
    request_id: str,
    request: Request,
    state: State,
    tenant: Tenant,
    last_event_id: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    """Continue a resumable stream after the event ``Last-Event-ID`` (from the start
    without it). Only the tenant that made the request can resume it."""
    record = await StreamStore(state.redis).load(request_id)
    if record is None or record.tenant != tenant:
        raise NotFound(f"no resumable chat completion stream {request_id!r}", param="request_id")
    attempt, last = record.attempt, -1
    if last_event_id is not None:
        parsed = parse_sse_event_id(last_event_id)
        if parsed is None:
            raise InvalidRequest(
                f"Last-Event-ID must be an id: of this stream, got {last_event_id!r}",
                param="Last-Event-ID",
            )
        attempt, last = parsed
    return await chat_stream.resume(state, request_id, record, attempt, last)
