"""A streamed chat (or text) completion (SSE), from its head to its last chunk: the wait for
the first token (so an early refusal is a real HTTP error), headers and pings when that token
is late, the chunks, and the record that lets a client who left resume a chat stream
(``resume``)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from berth.api import metrics
from berth.api.delivery.chat_run import ChatRun, ended_by_worker, follow
from berth.api.delivery.disconnect import unless_client_leaves
from berth.api.delivery.keepalive import pings_until
from berth.api.errors import error_response
from berth.api.state import ApiState
from berth.protocol import keys
from berth.protocol.chat import ChatCompletionRequest
from berth.protocol.completion import CompletionRequest
from berth.protocol.envelopes import ResumableStream, TokenEvent
from berth.protocol.output import ChunkWriter, TextChunkWriter, event_error
from berth.store.streams import StreamStore

log = logging.getLogger(__name__)

# the request header a client sends to make its stream resumable
RESUMABLE_HEADER = "x-berth-resumable"

# what a stream answers: a chat completion, or a text completion (never resumable)
Streamed = ChatCompletionRequest | CompletionRequest


async def respond(run: ChatRun, request: Request, chat: Streamed) -> Response:
    """The answer to a streamed request: an error, a 499 if the client left first, or the
    stream."""
    state, request_id = run.state, run.request_id
    created = int(time.time())
    # wait for the first token (or an early error) before answering, so a request the
    # worker refuses gets a real HTTP error, as a non-streamed one does; but only so long:
    # then headers go out, and pings keep proxies from closing the quiet connection
    first = asyncio.ensure_future(_head(run.events))
    wait_s = 0.0 if state.settings.stream_headers == "immediate" else state.settings.keepalive_s
    if await unless_client_leaves(request, _within(first, wait_s)) is None:
        first.cancel()
        run.finish_soon(False)
        return Response(status_code=499)
    if not first.done():
        return await _late_stream_response(run, request, chat, created, first)
    head = first.result()
    if head[-1].terminal and head[-1].type != "finished":
        run.finish_soon(ended_by_worker(head[-1]))
        run.timer.done(time.monotonic())
        run.account(head[-1])
        return error_response(event_error(head[-1]))
    resumable = _wants_resume(request, state, chat)
    writer = _writer(request_id, chat, created, event_ids=resumable)
    if resumable and isinstance(chat, ChatCompletionRequest) and not head[-1].terminal:
        await _save_resumable(state, request_id, chat, run.tenant, created, head[-1])
    return _sse(_stream(run, head, writer, resumable), request_id)


async def resume(
    state: ApiState, request_id: str, record: ResumableStream, attempt: int, last: int
) -> StreamingResponse:
    """Continue the resumable stream ``record`` after its event ``attempt``-``last`` (from
    the start when ``last`` is -1)."""
    timer = metrics.RequestTimer(time.monotonic(), record.tenant, record.model)
    # the worker publishes to the API process that queued the request: this one follows
    # the request's event stream
    queue = await state.relay.open(request_id, follow_after=keys.event_entry_id(attempt, last))
    try:
        # from now on the stream lives and dies with this process (workers/orphans.py)
        await StreamStore(state.redis).attach(request_id, state.instance, _resume_ttl(state))
    except BaseException:
        state.relay.release(request_id)
        raise
    log.info("request %s resumed after event %d-%d", request_id, attempt, last)
    events = follow(
        state,
        request_id,
        queue,
        deadline=time.monotonic() + state.settings.request_timeout_s,
        attempt=attempt,
        first_seq=last + 1,
        worker=record.worker,
    )
    writer = ChunkWriter(
        request_id,
        record.model,
        record.created,
        record.n,
        record.include_usage,
        stream_reasoning=record.stream_reasoning,
        parallel_tool_calls=record.parallel_tool_calls,
        resumed=last >= 0,
        event_ids=True,
    )
    run = ChatRun(state, request_id, queue, events, timer)
    return _sse(_pinged(run, asyncio.ensure_future(_head(events)), writer, True), request_id)


def _sse(body: AsyncIterator[str], request_id: str) -> StreamingResponse:
    return StreamingResponse(
        body,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Request-Id": request_id},
    )


def _resume_ttl(state: ApiState) -> int:
    return int(state.settings.request_timeout_s + state.settings.resume_grace_s) + 60


async def _within(work: asyncio.Future[Any], wait_s: float) -> bool:
    """Wait up to ``wait_s`` for ``work`` (never cancelling it); True either way."""
    if wait_s > 0:
        await asyncio.wait({work}, timeout=wait_s)
    return True


def _writer(request_id: str, chat: Streamed, created: int, event_ids: bool) -> ChunkWriter:
    """``event_ids``: SSE ``id:`` lines, for streams a client may resume (some clients, vLLM's
    bench client among them, fail on them, so others go without)."""
    if isinstance(chat, CompletionRequest):
        return TextChunkWriter(request_id, chat.model, created, chat.n, chat.wants_usage)
    return ChunkWriter(
        request_id,
        chat.model,
        created,
        chat.n,
        chat.wants_usage,
        stream_reasoning=chat.stream_reasoning,
        parallel_tool_calls=chat.parallel_tool_calls is not False,
        event_ids=event_ids,
    )


async def _save_resumable(
    state: ApiState,
    request_id: str,
    chat: ChatCompletionRequest,
    tenant: str,
    created: int,
    head: TokenEvent | None,
) -> None:
    """The record a resumed stream reads: ``head`` is the event the stream follows (its
    attempt and worker), None while the request is still queued."""
    record = ResumableStream(
        tenant=tenant,
        model=chat.model,
        created=created,
        n=chat.n,
        include_usage=chat.wants_usage,
        stream_reasoning=chat.stream_reasoning,
        parallel_tool_calls=chat.parallel_tool_calls is not False,
        attempt=head.attempt if head else 0,
        worker=head.worker if head else None,
        grace_s=state.settings.resume_grace_s,
    )
    await StreamStore(state.redis).save(request_id, record, _resume_ttl(state))


async def _late_stream_response(
    run: ChatRun,
    request: Request,
    chat: Streamed,
    created: int,
    first: asyncio.Future[list[TokenEvent]],
) -> StreamingResponse:
    """The answer of a stream whose first token is late: headers now, pings until it comes
    (an early refusal is then an error event in the stream), then the stream."""
    state, request_id, tenant = run.state, run.request_id, run.tenant
    wants_resume = _wants_resume(request, state, chat)
    if wants_resume and isinstance(chat, ChatCompletionRequest):
        # resumable while it waits; saved again with its attempt and worker at the first token
        await _save_resumable(state, request_id, chat, tenant, created, None)

    async def save(head: TokenEvent) -> None:
        assert isinstance(chat, ChatCompletionRequest)
        await _save_resumable(state, request_id, chat, tenant, created, head)

    return _sse(
        _pinged(
            run,
            first,
            _writer(request_id, chat, created, event_ids=wants_resume),
            wants_resume,
            save if wants_resume else None,
        ),
        request_id,
    )


async def _pinged(
    run: ChatRun,
    first: asyncio.Future[list[TokenEvent]],
    writer: ChunkWriter,
    resumable: bool,
    save: Callable[[TokenEvent], Awaitable[None]] | None = None,
) -> AsyncIterator[str]:
    """Pings until ``first`` (the events up to the first token) is done, then the stream.
    Never on the per-token path: once the first token is here, ``_stream`` runs alone."""
    try:
        async for ping in pings_until(first, run.state.settings.keepalive_s):
            yield ping
    finally:
        if not first.done():  # the client left while the request waited
            first.cancel()
            run.finish_soon(False, resumable)
    head = first.result()
    if save is not None and not head[-1].terminal:
        await save(head[-1])
    async for chunk in _stream(run, head, writer, resumable):
        yield chunk


def _wants_resume(request: Request, state: ApiState, chat: Streamed) -> bool:
    """Only a chat stream is resumable: the resume route is a chat completion's."""
    return (
        isinstance(chat, ChatCompletionRequest)
        and state.settings.resume_grace_s > 0
        and request.headers.get(RESUMABLE_HEADER, "").strip().lower() in ("1", "true", "yes")
    )


async def _head(events: AsyncIterator[TokenEvent]) -> list[TokenEvent]:
    """Events up to the first that carries output or ends the request."""
    head = []
    async for event in events:
        head.append(event)
        if event.choices or event.terminal:
            break
    return head


async def _chain(
    head: list[TokenEvent], rest: AsyncIterator[TokenEvent]
) -> AsyncIterator[TokenEvent]:
    for event in head:
        yield event
    if not head or not head[-1].terminal:
        async for event in rest:
            yield event


async def _stream(
    run: ChatRun,
    head: list[TokenEvent],
    writer: ChunkWriter,
    resumable: bool = False,
) -> AsyncIterator[str]:
    """The stream's chunks. Events already waiting in the request's queue when one is
    rendered go out with it in one write: under load that saves a send per event, and no
    event is ever held back for one that has not come."""
    timer, queue = run.timer, run.queue
    completed = ended = False
    parts: list[str] = []
    try:
        async for event in _chain(head, run.events):
            if event.choices:
                timer.token(time.monotonic())
            if event.terminal:
                ended, completed = True, ended_by_worker(event)
                timer.done(time.monotonic())
                run.account(event)
            parts.append(writer.render(event))
            if event.terminal or queue.empty():
                yield parts[0] if len(parts) == 1 else "".join(parts)
                parts.clear()
        if parts:
            yield "".join(parts)
    finally:
        # a stream that ended (even with an error made up here) is not resumed
        run.finish_soon(completed, resumable and not ended)
