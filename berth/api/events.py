"""Waits for a request's events and guarantees the wait ends: a terminal event always comes.

Workers send the terminal event; when they cannot (the worker died, the request
outlived its deadline), this module makes one up, so no client ever hangs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from berth.protocol.envelopes import OUTSIDE_SEQ, TokenEvent, worker_ref
from berth.protocol.errors import BerthError, Timeout, WorkerLost


def synthetic_error(request_id: str, err: BerthError) -> TokenEvent:
    """An error event made up here (the worker cannot send one); never written to Redis."""
    return TokenEvent(
        id=request_id, seq=OUTSIDE_SEQ, type="error", error=err.body(), status=err.status_code
    )


async def request_events(
    request_id: str,
    queue: asyncio.Queue[TokenEvent],
    *,
    is_alive: Callable[[str, str | None], Awaitable[bool]],
    check_every_s: float,
    deadline: float,
    retry: Callable[[set[str]], Awaitable[bool]] | None = None,
) -> AsyncIterator[TokenEvent]:
    """Yield the request's events in order, ending with exactly one terminal event.

    When the worker holding the request dies before any token was produced, ``retry``
    (if given, called with the dead workers to avoid) queues the request again and the
    wait goes on, invisible to the client; once tokens flowed, the client gets an error
    event instead.

    Incarnations: ``is_alive(worker, incarnation)`` is false once that process start of the
    worker is gone, even when the worker was restarted under the same id; ``dead`` holds
    ``worker_ref``s (id/incarnation), which ``retry`` passes on as workers to avoid.
    """
    expected = 0
    worker: str | None = None
    incarnation: str | None = None
    produced = False
    dead: set[str] = set()
    while True:
        try:
            if queue.empty():
                # asyncio.timeout, not wait_for: no extra task per event on this hot path
                async with asyncio.timeout(check_every_s):
                    event = await queue.get()
            else:
                event = queue.get_nowait()
        except TimeoutError:
            if worker is not None and not await is_alive(worker, incarnation):
                dead.add(worker_ref(worker, incarnation))
                if not produced and retry is not None and await retry(dead):
                    worker, incarnation, expected = None, None, 0
                    continue
                yield synthetic_error(
                    request_id, WorkerLost(f"worker {worker} stopped while serving the request")
                )
                return
            if time.monotonic() > deadline:
                yield synthetic_error(
                    request_id, Timeout("the request did not finish before its timeout")
                )
                return
            continue
        if event.worker is not None and (
            event.worker in dead or worker_ref(event.worker, event.incarnation) in dead
        ):
            continue  # a late event of an attempt given up on
        if event.type == "dispatched":
            worker, incarnation = event.worker, event.incarnation
            continue
        if event.seq >= 0 and event.seq < expected:
            continue  # a duplicate; each event counts once
        expected = event.seq + 1
        if event.worker:
            same = event.worker == worker
            worker = event.worker
            incarnation = event.incarnation or (incarnation if same else None)
        produced = produced or bool(event.choices)
        yield event
        if event.terminal:
            return
