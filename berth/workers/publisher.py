"""Writes events to Redis, coalescing everything produced in one loop turn into one round trip.

All requests of an engine step wake up in the same event-loop turn, so one
pipelined flush per turn sends that step's deltas for every request together.
A single flusher task keeps every request's writes in order, including the
script that finishes a job after its last delta.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

log = logging.getLogger(__name__)

_PUBLISH, _APPEND, _SCRIPT = 0, 1, 2


class EventPublisher:
    """Buffers writes (PUBLISH, capped XADD, scripts) and flushes them pipelined, in order."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._buffer: list[tuple[int, Any, Any]] = []
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="event-publisher")

    def _push(self, op: tuple[int, Any, Any]) -> None:
        self._buffer.append(op)
        self._idle.clear()
        self._wakeup.set()

    def publish(self, channel: str, payload: str) -> None:
        self._push((_PUBLISH, channel, payload))

    def append(self, stream: str, payload: str, maxlen: int) -> None:
        """Add an event to a capped stream (a job's events)."""
        self._push((_APPEND, stream, (payload, maxlen)))

    def script(self, script: AsyncScript, keys: Sequence[str], args: Sequence[Any]) -> None:
        """Run a Lua script after everything buffered before it."""
        self._push((_SCRIPT, script, (keys, args)))

    async def drain(self) -> None:
        """Wait until everything buffered so far has reached Redis."""
        await self._idle.wait()

    async def close(self) -> None:
        await self.drain()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            batch, self._buffer = self._buffer, []
            if batch:
                try:
                    try:
                        await self._flush(batch)
                    except NoScriptError:
                        # Redis restarted during the flush's retries and lost its script
                        # cache: a new pipeline loads the scripts again (i10-resilience)
                        await self._flush(batch)
                except Exception:
                    log.exception("writing %d events failed", len(batch))
            if not self._buffer:
                self._idle.set()

    async def _flush(self, batch: list[tuple[int, Any, Any]]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for kind, target, data in batch:
            if kind == _PUBLISH:
                pipe.publish(target, data)
            elif kind == _APPEND:
                payload, maxlen = data
                pipe.xadd(target, {"e": payload}, maxlen=maxlen, approximate=True)
            else:
                keys, args = data
                await target(keys=keys, args=args, client=pipe)
        await pipe.execute()
