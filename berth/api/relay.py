"""Relays token events from Redis pub/sub to the requests waiting for them.

One pub/sub connection serves the whole API process: a reader task routes each
message to the queue of the request whose channel it arrived on. Subscribing
waits for Redis to confirm, so the request is enqueued only after its channel
is live and no event can be missed.
"""

from __future__ import annotations

import asyncio
import logging

from pydantic import ValidationError
from redis.asyncio import Redis

from berth.protocol import keys
from berth.protocol.envelopes import TokenEvent

log = logging.getLogger(__name__)


class TokenRelay:
    """Owns the process's pub/sub connection and its reader task."""

    def __init__(self, redis: Redis) -> None:
        self._pubsub = redis.pubsub()
        self._queues: dict[bytes, asyncio.Queue[TokenEvent]] = {}
        self._confirmations: dict[bytes, asyncio.Future[None]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        # a channel of our own keeps the connection subscribed while no request is open
        await self._pubsub.subscribe(f"{keys.PREFIX}:relay-keepalive")
        self._reader = asyncio.get_running_loop().create_task(self._read(), name="token-relay")

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        await self._pubsub.aclose()

    async def open(self, request_id: str) -> asyncio.Queue[TokenEvent]:
        """Subscribe to the request's channel; returns once Redis confirmed it."""
        channel = keys.token_channel(request_id).encode()
        queue: asyncio.Queue[TokenEvent] = asyncio.Queue()
        confirmed = asyncio.get_running_loop().create_future()
        self._queues[channel] = queue
        self._confirmations[channel] = confirmed
        try:
            await self._pubsub.subscribe(channel)
            await confirmed
        except BaseException:
            self.release(request_id)
            raise
        return queue

    def release(self, request_id: str) -> None:
        """Stop relaying the request's events. Safe to call from a cancelled task:
        the unsubscribe runs in a task of its own."""
        channel = keys.token_channel(request_id).encode()
        self._queues.pop(channel, None)
        self._confirmations.pop(channel, None)
        task = asyncio.get_running_loop().create_task(self._unsubscribe(channel))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _unsubscribe(self, channel: bytes) -> None:
        try:
            await self._pubsub.unsubscribe(channel)
        except Exception:
            log.warning("unsubscribing from %s failed", channel, exc_info=True)

    async def _read(self) -> None:
        while True:
            try:
                message = await self._pubsub.get_message(timeout=1.0)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("token relay lost its connection; reconnecting")
                await asyncio.sleep(0.1)
                continue
            if message is None:
                continue
            channel = message["channel"]
            kind = message["type"]
            if kind == "message":
                queue = self._queues.get(channel)
                if queue is None:
                    continue
                try:
                    queue.put_nowait(TokenEvent.model_validate_json(message["data"]))
                except ValidationError:
                    log.error("malformed event on %s: %r", channel, message["data"][:200])
            elif kind == "subscribe":
                confirmed = self._confirmations.pop(channel, None)
                if confirmed is not None and not confirmed.done():
                    confirmed.set_result(None)
