"""POST /v1/completions (OpenAI's legacy text completions): read and queue the request,
then hand its answer to ``delivery`` as a chat completion's (``chat_stream`` streams it,
``chat_answer`` assembles it), rendered in the ``text_completion`` shape.

A text completion's prompt goes to the engine as it is, without a chat template. Its
stream is not resumable (a chat stream's ``X-Berth-Resumable`` is ignored here), and
jobs (``/v1/jobs``) take chat requests only.
"""

from __future__ import annotations

import time
import uuid

from fastapi import APIRouter, Request
from fastapi.responses import Response

from berth.api import metrics
from berth.api.delivery import chat_answer, chat_run, chat_stream
from berth.api.deps import State, Tenant
from berth.api.intake.admission import deadline_from, queued_request, read_completion
from berth.plumbing import logcontext

router = APIRouter()


@router.post("/v1/completions")
async def completions(request: Request, state: State, tenant: Tenant) -> Response:
    timer = metrics.RequestTimer(time.monotonic(), tenant)
    completion = await read_completion(request, state)
    request_id = f"cmpl-{uuid.uuid4().hex}"
    logcontext.bind(request_id=request_id)
    queued = queued_request(
        state,
        completion,
        request_id,
        tenant=tenant,
        lane="interactive",
        deadline=deadline_from(request),
    )
    timer.for_model(queued.model)
    run = await chat_run.start(state, completion, queued, timer)
    if completion.stream:
        return await chat_stream.respond(run, request, completion)
    return await chat_answer.respond(run, request, completion)
