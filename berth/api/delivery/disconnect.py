"""A client that leaves ends the work done for it: nothing should keep the engine busy for a
client that is gone."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request

T = TypeVar("T")


async def _until_disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def unless_client_leaves(request: Request, work: Awaitable[T]) -> T | None:
    """``work``'s result, or None (with ``work`` cancelled) once the client disconnects."""
    task = asyncio.ensure_future(work)
    disconnect = asyncio.ensure_future(_until_disconnected(request))
    await asyncio.wait({task, disconnect}, return_when=asyncio.FIRST_COMPLETED)
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return None
    disconnect.cancel()
    return task.result()
