"""SSE keepalives: comment lines (``: ping``) on an event stream that has nothing to say,
so proxies and load balancers that close idle connections (often after 60 s) keep it open.
Clients skip comment lines (the SSE specification; the openai client does too)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

PING = ": ping\n\n"


async def pings_until(work: asyncio.Future[Any], interval_s: float) -> AsyncIterator[str]:
    """A ping every ``interval_s`` until ``work`` is done (never cancels it)."""
    while not work.done():
        done, _ = await asyncio.wait({work}, timeout=interval_s)
        if not done:
            yield PING
