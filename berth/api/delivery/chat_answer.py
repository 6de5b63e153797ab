"""A non-streamed chat or text completion: its events assembled into one OpenAI response
(or the error that ended them), given up when the client leaves."""

from __future__ import annotations

import time
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from berth.api.delivery.chat_run import ChatRun, ended_by_worker
from berth.api.delivery.disconnect import unless_client_leaves
from berth.api.errors import error_response
from berth.protocol.chat import ChatCompletionRequest
from berth.protocol.completion import CompletionRequest
from berth.protocol.errors import BerthError
from berth.protocol.output import CompletionAssembler, TextCompletionAssembler, event_error

Assembler = CompletionAssembler | TextCompletionAssembler


async def respond(
    run: ChatRun, request: Request, chat: ChatCompletionRequest | CompletionRequest
) -> Response:
    """The whole answer, its error, or a 499 if the client left first."""
    assembler: Assembler
    if isinstance(chat, CompletionRequest):
        assembler = TextCompletionAssembler(run.request_id, chat.model, int(time.time()), chat.n)
    else:
        assembler = CompletionAssembler(
            run.request_id,
            chat.model,
            int(time.time()),
            chat.n,
            parallel_tool_calls=chat.parallel_tool_calls is not False,
        )
    result = await unless_client_leaves(request, _collect(run, assembler))
    if result is None:
        # the client left: _collect's cleanup cancels the request in the engine
        return Response(status_code=499)
    if isinstance(result, BerthError):
        return error_response(result)
    return JSONResponse(result, headers={"X-Request-Id": run.request_id})


async def _collect(run: ChatRun, assembler: Assembler) -> dict[str, Any] | BerthError:
    timer = run.timer
    completed = False
    try:
        async for event in run.events:
            assembler.add(event)
            if event.choices:
                timer.token(time.monotonic())
            if event.terminal:
                completed = ended_by_worker(event)
                timer.done(time.monotonic())
                run.account(event)
                if event.type == "finished":
                    return assembler.response(event)
                return event_error(event)
        raise AssertionError("request_events ends with a terminal event")
    finally:
        run.finish_soon(completed)
