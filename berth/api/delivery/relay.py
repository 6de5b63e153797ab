"""Relays token events from Redis pub/sub to the requests waiting for them.

The API process subscribes once, for good, to its own delivery channel
(``store/tokens.py: DeliveryChannel``); a worker publishes there, once per engine step,
every event of that step for the requests this process holds, and the relay decodes the
message in one call and puts each event on the queue of the request it belongs to. Opening
a request is thus local: no SUBSCRIBE per request, no round trip. Its channel is live
before any request is queued, so no event of a request opened here can be missed.

The channel's connection is made by its reader (supervised: it backs off and tries again
while Redis is away), so the API starts without Redis. A request opened before that waits
for it, at most ``CONNECT_WAIT_S``, then is refused with a 503.

Pub/sub drops what is published while the connection is down. redis-py reconnects and
subscribes again; the relay then puts ``RESYNC`` (None) on every open request's queue,
telling its reader (``api/delivery/events.py``) to fetch what it missed from the request's
event stream (``fetch``).

A resumed stream is followed from its event stream instead (``open(..., follow_after=)``):
its worker publishes to the API process that queued it, which need not be this one.
"""

from __future__ import annotations

import asyncio
import logging

from redis.asyncio import Redis

from berth.api.delivery.followers import StreamFollowers
from berth.protocol import keys
from berth.protocol.envelopes import (
    MalformedEvent,
    TokenEvent,
    decode_events,
    decode_stored_events,
)
from berth.protocol.errors import StoreUnavailable
from berth.store import tokens

log = logging.getLogger(__name__)

# put on a request's queue after the pub/sub connection was lost and made again
RESYNC = None
EventQueue = asyncio.Queue[TokenEvent | None]
# how long a request waits for the relay's first connection (Redis away since the API
# started, or just back) before it is refused; once made, redis-py makes it again itself
CONNECT_WAIT_S = 5.0


class TokenRelay:
    """Owns the process's delivery channel and its reader task, and the queue of each
    request this process waits for."""

    def __init__(
        self, redis: Redis, instance: str, followers: StreamFollowers | None = None
    ) -> None:
        self._redis = redis
        self._channel = tokens.DeliveryChannel(redis, instance, self._deliver, self._resync)
        self._followers = followers
        self.reconnects = 0
        self._queues: dict[str, EventQueue] = {}
        # request id -> the task following its stream (a resumed stream)
        self._following: dict[str, asyncio.Task[None]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start the reader, which makes the connection: Redis need not be up yet."""
        self._reader = asyncio.get_running_loop().create_task(
            self._channel.run(), name="token-relay"
        )

    async def close(self) -> None:
        for task in self._following.values():
            task.cancel()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, *self._following.values(), return_exceptions=True)
        await self._channel.close()

    def _resync(self) -> None:
        self.reconnects += 1
        log.warning("token relay reconnected; %d open requests resync", len(self._queues))
        for queue in self._queues.values():
            queue.put_nowait(RESYNC)

    async def fetch(
        self, request_id: str, attempt: int, first: int, end: int | None = None
    ) -> list[TokenEvent]:
        """Events ``first`` <= seq < ``end`` (``end`` None: all from ``first``) of ``attempt``
        from the request's event stream, in order (``store/tokens.py: read_events``)."""
        return await tokens.read_events(self._redis, request_id, attempt, first, end)

    async def open(self, request_id: str, follow_after: str | None = None) -> EventQueue:
        """The queue of the request's events; returns once this process's channel is live.
        ``follow_after`` (an entry id of the request's event stream): also follow the stream
        after it, for a request this process did not queue (a resumed stream)."""
        queue: EventQueue = asyncio.Queue()
        if not self._channel.connected.is_set():
            await self._until_connected()
        self._queues[request_id] = queue
        if follow_after is not None:
            task = asyncio.get_running_loop().create_task(
                self._follow(request_id, follow_after, queue), name=f"follow-{request_id}"
            )
            self._following[request_id] = task
        return queue

    async def _until_connected(self) -> None:
        try:
            async with asyncio.timeout(CONNECT_WAIT_S):
                await self._channel.connected.wait()
        except TimeoutError:
            raise StoreUnavailable(
                "the request queue (Redis) cannot be reached; retry shortly"
            ) from None

    async def _follow(self, request_id: str, after: str, queue: EventQueue) -> None:
        """The request's stream, as it is written, onto its queue (one shared XREAD per
        process, ``followers.py``); the reader drops what it already has by ``seq``."""
        assert self._followers is not None, "following a stream needs the process's followers"
        stream = keys.request_events(request_id)
        async for batch in self._followers.follow_batches(stream, after):
            for entry in batch or ():
                try:
                    events = decode_stored_events(entry.fields[b"e"])
                except (MalformedEvent, KeyError):
                    log.error("malformed events in %s: %r", stream, entry.fields)
                    continue
                for event in events:
                    queue.put_nowait(event)

    def release(self, request_id: str) -> None:
        """Stop relaying the request's events. Safe to call from a cancelled task."""
        self._queues.pop(request_id, None)
        following = self._following.pop(request_id, None)
        if following is not None:
            following.cancel()

    def _deliver(self, data: bytes) -> None:
        """One message: a step's events for requests of this process, each to its queue."""
        try:
            events = decode_events(data)
        except MalformedEvent:
            # what it carried is in the requests' streams: their readers find the gap
            log.error("malformed events on %s: %r", self._channel.channel, data[:200])
            return
        queues = self._queues
        for event in events:
            queue = queues.get(event.id)
            if queue is not None:
                queue.put_nowait(event)
