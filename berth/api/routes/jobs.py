"""Asynchronous jobs: submit, poll, follow the events (resumable), cancel, list."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

from berth.api.delivery.followers import Entry
from berth.api.delivery.keepalive import PING
from berth.api.deps import State, Tenant
from berth.api.intake.admission import (
    deadline_from,
    lane_for,
    queued_request,
    read_job,
    webhook_for,
)
from berth.api.state import ApiState
from berth.plumbing import logcontext
from berth.protocol import keys
from berth.protocol.envelopes import event_json
from berth.protocol.errors import BerthError, InvalidRequest, NotFound
from berth.protocol.limits import MAX_IDEMPOTENCY_KEY_CHARS
from berth.protocol.response import list_page
from berth.store.jobs import TERMINAL_STATUSES, new_job_id

router = APIRouter(prefix="/v1/jobs")

# how long a follower waits without an event before checking the job has not ended
_QUIET_CHECK_S = 5.0
_PING = PING.encode()
# frames joined into one write up to about this size: a follower's backlog (up to a page of
# COUNT events) goes out in a few writes, so a slow client's follower holds no more than one
# of them beyond what its transport buffers, as when each event was a write of its own
_WRITE_BYTES = 64 * 1024


def _not_found(job_id: str) -> NotFound:
    return NotFound(f"no job {job_id!r}", param="job_id")


def _shown(state: ApiState, job: dict[str, Any]) -> dict[str, Any]:
    """The job as a client sees it: a queued job whose model no live worker serves (a
    declared model scaled to zero, or one whose workers are starting) waits for a worker."""
    job["waiting_for_worker"] = job["status"] == "queued" and not state.directory.serves(
        job["model"]
    )
    return job


@router.post("")
async def submit_job(
    request: Request,
    state: State,
    tenant: Tenant,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> JSONResponse:
    if idempotency_key is not None and len(idempotency_key) > MAX_IDEMPOTENCY_KEY_CHARS:
        raise InvalidRequest(
            f"Idempotency-Key must have at most {MAX_IDEMPOTENCY_KEY_CHARS} characters, "
            f"got {len(idempotency_key)}",
            param="Idempotency-Key",
        )
    chat, given_webhook = await read_job(request, state)
    if chat.stream:
        raise InvalidRequest(
            "jobs are not streamed: submit with stream false and follow "
            "GET /v1/jobs/{id}/events instead",
            param="stream",
        )
    queued = queued_request(
        state,
        chat,
        new_job_id(),
        tenant=tenant,
        lane=lane_for(chat, "job"),
        deadline=deadline_from(request),
        job=True,
    )
    logcontext.bind(job_id=queued.id)
    webhook = await webhook_for(state, tenant, given_webhook)
    await state.ingress.admit(queued)
    try:
        job_id, created = await state.jobs.create(
            queued,
            tenant=tenant,
            idempotency_key=idempotency_key,
            metadata=chat.metadata,
            webhook=webhook,
        )
    except BaseException:
        await state.ingress.abandon(queued)
        raise
    if not created:  # the key named an earlier job: nothing new was queued
        await state.ingress.abandon(queued)
    job = await state.jobs.get(job_id, tenant)
    if job is None:  # the key named a job that expired meanwhile
        raise _not_found(job_id)
    return JSONResponse(
        _shown(state, job),
        status_code=202 if created else 200,
        headers={"Location": f"/v1/jobs/{job_id}"},
    )


@router.get("")
async def list_jobs(
    state: State,
    tenant: Tenant,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> dict[str, Any]:
    jobs, more = await state.jobs.list_jobs(tenant, after=after, limit=limit)
    return list_page([_shown(state, job) for job in jobs], more)


@router.get("/{job_id}")
async def get_job(job_id: str, state: State, tenant: Tenant) -> dict[str, Any]:
    job = await state.jobs.get(job_id, tenant)
    if job is None:
        raise _not_found(job_id)
    return _shown(state, job)


@router.delete("/{job_id}")
async def cancel_job(job_id: str, state: State, tenant: Tenant) -> dict[str, Any]:
    job = await state.jobs.get(job_id, tenant)
    if job is None:
        raise _not_found(job_id)
    if job["status"] not in TERMINAL_STATUSES:
        err = BerthError("the job was cancelled", code="cancelled")
        event = event_json(job_id, "cancelled", error=err)
        await state.jobs.finish(job_id, None, "cancelled", error=err.body(), event=event)
        # a queued attempt is dropped by the scheduler, a running one aborted by its worker
        await state.ingress.cancel(job_id)
    return _shown(state, await state.jobs.get(job_id, tenant) or job)


@router.get("/{job_id}/events")
async def job_events(
    job_id: str,
    state: State,
    tenant: Tenant,
    last_event_id: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    if await state.jobs.get(job_id, tenant) is None:
        raise _not_found(job_id)
    start = last_event_id or "0"
    if start != "0" and not _is_stream_id(start):
        raise InvalidRequest(
            f"Last-Event-ID must be an event id from this stream, got {start!r}",
            param="Last-Event-ID",
        )
    return StreamingResponse(
        _follow(state, job_id, tenant, start),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache"},
    )


def _is_stream_id(value: str) -> bool:
    ms, sep, seq = value.partition("-")
    return ms.isdigit() and (not sep or seq.isdigit())


def _sse(event_id: str, payload: bytes) -> tuple[bytes, bool]:
    """An event's SSE frame, and whether it is the job's last. Bytes, so a frame shared by
    many followers is not encoded again for each (StreamingResponse encodes a str chunk)."""
    kind = json.loads(payload).get("type", "message")
    frame = b"id: %s\nevent: %s\ndata: %s\n\n" % (event_id.encode(), kind.encode(), payload)
    return frame, kind in ("finished", "error", "cancelled")


def _entry_sse(entry: Entry) -> tuple[bytes, bool]:
    return _sse(entry.id, entry.fields[b"e"])


async def _follow(state: ApiState, job_id: str, tenant: str, after: str) -> AsyncIterator[bytes]:
    """Every event after ``after``, once each, ending after the terminal one; a ping when
    nothing was sent for keepalive_s (a job waiting in the queue). Reads are shared with
    every other follower of the job in this process (``api/delivery/followers.py``), and so is each
    live event's frame: parsed once, however many follow. Events come in batches (what the
    shared reader got in one read, or what queued while this follower wrote), each sent in
    one write: a follower costs a wakeup per batch, not per token."""
    keepalive_s = state.settings.keepalive_s
    idle_s = min(_QUIET_CHECK_S, keepalive_s) if keepalive_s > 0 else _QUIET_CHECK_S
    batches = state.followers.follow_batches(keys.job_events(job_id), after, idle_s=idle_s)
    sent_at = time.monotonic()
    try:
        async for batch in batches:
            if batch is not None:
                after = batch[-1].id
                for chunk, ended in _writes(batch):
                    yield chunk
                    if ended:
                        return
                # not kept while this follower waits for the next batch: a backlog page and
                # its write are this follower's own, up to a page of frames each
                del batch, chunk
                sent_at = time.monotonic()
                continue
            if keepalive_s > 0 and time.monotonic() - sent_at >= keepalive_s:
                sent_at = time.monotonic()
                yield _PING
            job = await state.jobs.get(job_id, tenant)
            if job is None or job["status"] in TERMINAL_STATUSES:
                # ended: its terminal event (written with the status) is in the stream
                # unless the events expired or were trimmed; nothing more will come
                for event_id, payload in await state.jobs.events_after(job_id, after, None):
                    frame, terminal = _sse(event_id, payload)
                    yield frame
                    if terminal:
                        return
                return
    finally:
        await batches.aclose()


def _writes(batch: list[Entry]) -> Iterator[tuple[bytes, bool]]:
    """The SSE frames of a batch joined into writes of about _WRITE_BYTES at most (one for
    a live batch), up to its terminal event if it has one; with each, whether it ends."""
    frames: list[bytes] = []
    size = 0
    for entry in batch:
        frame, terminal = entry.view(_entry_sse)
        frames.append(frame)
        size += len(frame)
        if terminal:
            yield b"".join(frames), True
            return
        if size >= _WRITE_BYTES:
            yield b"".join(frames), False
            frames, size = [], 0
    if frames:
        yield b"".join(frames), False
