"""Publishes token events, coalescing everything produced in one loop turn into one round trip.

All requests of an engine step wake up in the same event-loop turn, so one
pipelined flush per turn sends that step's deltas for every request together.
A single flusher task keeps each channel's events in order.
"""

from __future__ import annotations

import asyncio
import logging

from redis.asyncio import Redis

log = logging.getLogger(__name__)


class EventPublisher:
    """Buffers (channel, payload) pairs and flushes them with pipelined PUBLISH."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._buffer: list[tuple[str, str]] = []
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="event-publisher")

    def publish(self, channel: str, payload: str) -> None:
        self._buffer.append((channel, payload))
        self._idle.clear()
        self._wakeup.set()

    async def drain(self) -> None:
        """Wait until everything published so far has reached Redis."""
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
                    pipe = self._redis.pipeline(transaction=False)
                    for channel, payload in batch:
                        pipe.publish(channel, payload)
                    await pipe.execute()
                except Exception:
                    log.exception("publishing %d events failed", len(batch))
            if not self._buffer:
                self._idle.set()
