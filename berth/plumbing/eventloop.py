"""The event loop every berth role runs on: uvloop where installed (``uvicorn[standard]``
brings it; the API already runs on it through uvicorn), asyncio's own otherwise.

The worker's engine loop and the scheduler's loop run per-token and per-request
callbacks; uvloop's loop and transports cost less CPU for each of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on ``new_loop()``."""
    with asyncio.Runner(loop_factory=new_loop) as runner:
        return runner.run(main)
