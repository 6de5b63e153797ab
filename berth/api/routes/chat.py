"""POST /v1/chat/completions: queue the request, then stream or collect its events;
GET /v1/chat/completions/{id}/stream: resume a stream whose client left.

A request whose wait ends without its worker's terminal event (its client left, its
timeout passed, its answer could not be completed) is cancelled: in the queue and in the
engine. A streamed request sent with ``X-Berth-Resumable: true`` is instead kept running
for ``resume_grace_s`` after its client left, and cancelled only if nobody resumed it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from berth.api import metrics
from berth.api.admission import deadline_from, lane_for, queued_request, read_chat
from berth.api.delivery.events import request_events
from berth.api.delivery.keepalive import pings_until
from berth.api.delivery.relay import EventQueue
from berth.api.deps import State, Tenant
from berth.api.errors import error_response
from berth.api.state import ApiState
from berth.plumbing import logcontext, tracing
from berth.protocol.chat import ChatCompletionRequest
from berth.protocol.envelopes import ResumableStream, TokenEvent
from berth.protocol.errors import BerthError, InvalidRequest, NotFound
from berth.protocol.output import (
    ChunkWriter,
    CompletionAssembler,
    event_error,
    parse_sse_event_id,
)
from berth.store.streams import StreamStore

log = logging.getLogger(__name__)
router = APIRouter()
T = TypeVar("T")

# the request header a client sends to make its stream resumable
RESUMABLE_HEADER = "x-berth-resumable"


async def _until_disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


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
    # a tenant holding all its leases here is refused before the subscription below
    state.quotas.refuse_if_all_held(queued)
    # subscribe before enqueueing: no event can be published before we listen
    queue = await state.relay.open(request_id)
    try:
        await state.ingress.enqueue(queued)
    except BaseException:
        state.relay.release(request_id)
        raise
    # per request: DEBUG; the one INFO line per request is _account's at its end
    log.debug(
        "request %s queued for %s/%s lane=%s stream=%s tenant=%s user=%s safety_identifier=%s",
        request_id,
        queued.model,
        queued.adapter,
        queued.lane,
        chat.stream,
        tenant,
        chat.user,
        chat.safety_identifier,
    )
    attempts = [queued]

    async def retry(dead: set[str]) -> bool:
        if len(attempts) > state.settings.max_retries:
            return False
        again = queued.model_copy(update={"attempt": len(attempts), "avoid": sorted(dead)})
        attempts.append(again)
        log.warning("request %s: worker died before any token; queued again", request_id)
        await state.ingress.requeue(again)
        return True

    events = _events(
        state,
        request_id,
        queue,
        retry=retry,
        deadline=time.monotonic()
        + min(
            state.settings.request_timeout_s,
            (queued.deadline - time.time()) if queued.deadline else float("inf"),
        ),
    )
    if tracing.enabled():
        events = tracing.traced_relay(events)
    created = int(time.time())
    if chat.stream:
        # wait for the first token (or an early error) before answering, so a request the
        # worker refuses gets a real HTTP error, as a non-streamed one does; but only so long:
        # then headers go out, and pings keep proxies from closing the quiet connection
        first = asyncio.ensure_future(_head(events))
        wait_s = 0.0 if state.settings.stream_headers == "immediate" else state.settings.keepalive_s
        if await _unless_client_leaves(request, _within(first, wait_s)) is None:
            first.cancel()
            _finish_soon(state, request_id, False)
            return Response(status_code=499)
        if not first.done():
            return await _late_stream_response(
                state, request, request_id, chat, tenant, created, timer, first, events, queue
            )
        head = first.result()
        if head[-1].terminal and head[-1].type != "finished":
            _finish_soon(state, request_id, _ended_by_worker(head[-1]))
            timer.done(time.monotonic())
            _account(request_id, tenant, head[-1])
            return error_response(event_error(head[-1]))
        resumable = _wants_resume(request, state)
        writer = _writer(request_id, chat, created, event_ids=resumable)
        if resumable and not head[-1].terminal:
            await _save_resumable(state, request_id, chat, tenant, created, head[-1])
        return StreamingResponse(
            _stream(state, request_id, head, events, writer, timer, queue, resumable),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Request-Id": request_id},
        )
    assembler = CompletionAssembler(
        request_id,
        chat.model,
        created,
        chat.n,
        parallel_tool_calls=chat.parallel_tool_calls is not False,
    )
    result = await _unless_client_leaves(
        request, _collect(state, request_id, events, assembler, timer)
    )
    if result is None:
        # the client left: _collect's cleanup cancels the request in the engine
        return Response(status_code=499)
    if isinstance(result, BerthError):
        return error_response(result)
    return JSONResponse(result, headers={"X-Request-Id": request_id})


def _resume_ttl(state: ApiState) -> int:
    return int(state.settings.request_timeout_s + state.settings.resume_grace_s) + 60


async def _within(work: asyncio.Future[Any], wait_s: float) -> bool:
    """Wait up to ``wait_s`` for ``work`` (never cancelling it); True either way."""
    if wait_s > 0:
        await asyncio.wait({work}, timeout=wait_s)
    return True


def _writer(
    request_id: str, chat: ChatCompletionRequest, created: int, event_ids: bool
) -> ChunkWriter:
    """``event_ids``: SSE ``id:`` lines, for streams a client may resume (some clients, vLLM's
    bench client among them, fail on them, so others go without)."""
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
    state: ApiState,
    request: Request,
    request_id: str,
    chat: ChatCompletionRequest,
    tenant: str,
    created: int,
    timer: metrics.RequestTimer,
    first: asyncio.Future[list[TokenEvent]],
    events: AsyncIterator[TokenEvent],
    queue: EventQueue,
) -> StreamingResponse:
    """The answer of a stream whose first token is late: headers now, pings until it comes
    (an early refusal is then an error event in the stream), then the stream."""
    wants_resume = _wants_resume(request, state)
    if wants_resume:
        # resumable while it waits; saved again with its attempt and worker at the first token
        await _save_resumable(state, request_id, chat, tenant, created, None)

    async def save(head: TokenEvent) -> None:
        await _save_resumable(state, request_id, chat, tenant, created, head)

    return StreamingResponse(
        _pinged(
            state,
            request_id,
            first,
            events,
            _writer(request_id, chat, created, event_ids=wants_resume),
            timer,
            queue,
            wants_resume,
            save if wants_resume else None,
        ),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Request-Id": request_id},
    )


async def _pinged(
    state: ApiState,
    request_id: str,
    first: asyncio.Future[list[TokenEvent]],
    events: AsyncIterator[TokenEvent],
    writer: ChunkWriter,
    timer: metrics.RequestTimer,
    queue: EventQueue,
    resumable: bool,
    save: Callable[[TokenEvent], Awaitable[None]] | None = None,
) -> AsyncIterator[str]:
    """Pings until ``first`` (the events up to the first token) is done, then the stream.
    Never on the per-token path: once the first token is here, ``_stream`` runs alone."""
    try:
        async for ping in pings_until(first, state.settings.keepalive_s):
            yield ping
    finally:
        if not first.done():  # the client left while the request waited
            first.cancel()
            _finish_soon(state, request_id, False, resumable)
    head = first.result()
    if save is not None and not head[-1].terminal:
        await save(head[-1])
    async for chunk in _stream(state, request_id, head, events, writer, timer, queue, resumable):
        yield chunk


def _wants_resume(request: Request, state: ApiState) -> bool:
    return state.settings.resume_grace_s > 0 and request.headers.get(
        RESUMABLE_HEADER, ""
    ).strip().lower() in ("1", "true", "yes")


def _events(
    state: ApiState,
    request_id: str,
    queue: EventQueue,
    *,
    deadline: float,
    retry: Any = None,
    attempt: int = 0,
    first_seq: int = 0,
    worker: str | None = None,
) -> AsyncIterator[TokenEvent]:
    async def fetch(attempt: int, first: int, end: int | None) -> list[TokenEvent]:
        return await state.relay.fetch(request_id, attempt, first, end)

    return request_events(
        request_id,
        queue,
        retry=retry,
        fetch=fetch,
        is_alive=state.directory.is_alive,
        check_every_s=state.settings.liveness_check_s,
        deadline=deadline,
        attempt=attempt,
        first_seq=first_seq,
        worker=worker,
    )


def _ended_by_worker(event: TokenEvent) -> bool:
    """A terminal event its worker wrote: the run is over. Any other (made up here on a
    timeout, a lost worker or a lost part of the answer; or the scheduler's) leaves a run
    that may still be queued or running, so the request is cancelled."""
    return event.seq >= 0


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
    streams = StreamStore(state.redis)
    record = await streams.load(request_id)
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
    timer = metrics.RequestTimer(time.monotonic(), tenant)
    queue = await state.relay.open(request_id)
    try:
        # from now on the stream lives and dies with this process (workers/orphans.py)
        await streams.attach(request_id, state.instance, _resume_ttl(state))
    except BaseException:
        state.relay.release(request_id)
        raise
    log.info("request %s resumed after event %d-%d", request_id, attempt, last)
    events = _events(
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
    return StreamingResponse(
        _pinged(
            state,
            request_id,
            asyncio.ensure_future(_head(events)),
            events,
            writer,
            timer,
            queue,
            True,
        ),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Request-Id": request_id},
    )


async def _unless_client_leaves(request: Request, work: Awaitable[T]) -> T | None:
    """``work``'s result, or None (with ``work`` cancelled) once the client disconnects:
    nothing should keep the engine busy for a client that is gone."""
    task = asyncio.ensure_future(work)
    disconnect = asyncio.ensure_future(_until_disconnected(request))
    await asyncio.wait({task, disconnect}, return_when=asyncio.FIRST_COMPLETED)
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return None
    disconnect.cancel()
    return task.result()


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


def _account(request_id: str, tenant: str, event: TokenEvent) -> None:
    """Per-tenant token counts, and one accounting log line per request."""
    usage = event.usage
    prompt, completion = (usage.prompt_tokens, usage.completion_tokens) if usage else (0, 0)
    metrics.count_tokens(tenant, prompt, completion)
    log.info(
        "request %s ended %s: tenant=%s prompt_tokens=%d completion_tokens=%d",
        request_id,
        event.type,
        tenant,
        prompt,
        completion,
    )


async def _finish(state: ApiState, request_id: str, completed: bool) -> None:
    state.relay.release(request_id)
    await state.ingress.finished(request_id)
    if not completed:
        log.info("request %s: client went away; cancelling", request_id)
        await state.ingress.cancel(request_id)


async def _detach(state: ApiState, request_id: str) -> None:
    """The client of a resumable stream left: keep the request running for the grace, then
    cancel it unless a client resumed it (through any API process) meanwhile."""
    state.relay.release(request_id)
    streams = StreamStore(state.redis)
    grace = state.settings.resume_grace_s
    token = await streams.detach(request_id, grace)
    log.info("request %s: client went away; resumable for %.0fs", request_id, grace)
    await asyncio.sleep(grace)
    # the tenant's concurrency slot is held through the grace, whoever resumes the stream
    await state.ingress.finished(request_id)
    if await streams.end_if_detached(request_id, token):
        log.info("request %s: not resumed within %.0fs; cancelling", request_id, grace)
        await state.ingress.cancel(request_id)


def _finish_soon(
    state: ApiState, request_id: str, completed: bool, resumable: bool = False
) -> None:
    # runs from cancelled code paths, where an await would be cancelled again
    if resumable and not completed:
        work = _detach(state, request_id)
    else:
        work = _finish(state, request_id, completed)
    task = asyncio.get_running_loop().create_task(work)
    _background.add(task)
    task.add_done_callback(_background.discard)


_background: set[asyncio.Task[None]] = set()


async def _collect(
    state: ApiState,
    request_id: str,
    events: AsyncIterator[TokenEvent],
    assembler: CompletionAssembler,
    timer: metrics.RequestTimer,
) -> dict[str, Any] | BerthError:
    completed = False
    try:
        async for event in events:
            assembler.add(event)
            if event.choices:
                timer.token(time.monotonic())
            if event.terminal:
                completed = _ended_by_worker(event)
                timer.done(time.monotonic())
                _account(request_id, timer.tenant, event)
                if event.type == "finished":
                    return assembler.response(event)
                return event_error(event)
        raise AssertionError("request_events ends with a terminal event")
    finally:
        _finish_soon(state, request_id, completed)


async def _stream(
    state: ApiState,
    request_id: str,
    head: list[TokenEvent],
    events: AsyncIterator[TokenEvent],
    writer: ChunkWriter,
    timer: metrics.RequestTimer,
    queue: EventQueue,
    resumable: bool = False,
) -> AsyncIterator[str]:
    """The stream's chunks. Events already waiting in the request's queue when one is
    rendered go out with it in one write: under load that saves a send per event, and no
    event is ever held back for one that has not come."""
    completed = ended = False
    parts: list[str] = []
    try:
        async for event in _chain(head, events):
            if event.choices:
                timer.token(time.monotonic())
            if event.terminal:
                ended, completed = True, _ended_by_worker(event)
                timer.done(time.monotonic())
                _account(request_id, timer.tenant, event)
            parts.append(writer.render(event))
            if event.terminal or queue.empty():
                yield parts[0] if len(parts) == 1 else "".join(parts)
                parts.clear()
        if parts:
            yield "".join(parts)
    finally:
        # a stream that ended (even with an error made up here) is not resumed
        _finish_soon(state, request_id, completed, resumable and not ended)
