"""Relays token events from Redis pub/sub to the requests waiting for them.

One pub/sub connection serves the whole API process: a reader task routes each
message to the queue of the request whose channel it arrived on. Subscribing
waits for Redis to confirm, so the request is enqueued only after its channel
is live and no event can be missed.

The reader makes the connection itself (a keepalive channel's SUBSCRIBE, supervised: it
backs off and tries again while Redis is away), so the API starts without Redis. A request
opened before that waits for it, at most ``CONNECT_WAIT_S``, then is refused with a 503.

Pub/sub drops what is published while the connection is down. redis-py reconnects
(with the retry policy of ``berth.plumbing.redisconn``) and subscribes every open channel
again; the relay then puts ``RESYNC`` (None) on every open request's queue, telling
its reader (``api/delivery/events.py``) to fetch what it missed from the request's event
stream (``fetch``).

Per message, redis-py's ``get_message`` costs more than everything else the relay does; so
the relay waits for the socket itself (``_read_directly``: the connection's hiredis parser
reads what arrived), takes the messages read straight from the hiredis reader (``_buffered``),
and hands redis-py only what is not a published message (subscribe confirmations, pongs),
as it would have. ``get_message`` still does every read that has more to do than read:
while the connection is down (it reconnects), after a failed read, and when a health
check is due.
"""

from __future__ import annotations

import asyncio
import logging
import types
from collections.abc import Iterator
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError

from berth.plumbing.supervise import supervise
from berth.protocol import keys
from berth.protocol.envelopes import MalformedEvent, TokenEvent, decode_event
from berth.protocol.errors import StoreUnavailable

try:
    # what redis-py's hiredis reader returns while a reply is incomplete
    from redis._parsers.hiredis import NOT_ENOUGH_DATA
except ImportError:  # another redis-py layout: every message through get_message
    NOT_ENOUGH_DATA = None

log = logging.getLogger(__name__)

# put on a request's queue after the pub/sub connection was lost and made again
RESYNC = None
EventQueue = asyncio.Queue[TokenEvent | None]
# entries read per XRANGE when filling a gap
_FETCH_COUNT = 1024
# how long a request waits for the relay's first connection (Redis away since the API
# started, or just back) before it is refused; once made, redis-py makes it again itself
CONNECT_WAIT_S = 5.0


def is_published(reply: Any) -> bool:
    """Whether a hiredis reply is a published message: ``[b"message", channel, data]``, a
    list under RESP2 and a ``hiredis.PushNotification`` (a list's subclass) under RESP3."""
    return isinstance(reply, list) and len(reply) == 3 and reply[0] == b"message"


class TokenRelay:
    """Owns the process's pub/sub connection and its reader task."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._pubsub = redis.pubsub()
        # redis-py registers this attribute (a bound method: it keeps a weak reference) as
        # the connection's connect callback: it subscribes the channels again; then every
        # open request is told to resync
        resubscribe = self._pubsub.on_connect

        async def on_connect(pubsub: PubSub, connection: Connection) -> None:
            await resubscribe(connection)
            self._resync()

        self._pubsub.on_connect = types.MethodType(on_connect, self._pubsub)  # type: ignore[method-assign]
        self.reconnects = 0
        self._queues: dict[bytes, EventQueue] = {}
        self._confirmations: dict[bytes, asyncio.Future[None]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()
        # set once the reader made the pub/sub connection; from then on it exists (redis-py
        # reconnects it), and requests subscribe on it
        self._connected = asyncio.Event()

    async def start(self) -> None:
        """Start the reader, which makes the connection: Redis need not be up yet."""
        self._reader = asyncio.get_running_loop().create_task(self._run(), name="token-relay")

    async def _run(self) -> None:
        await supervise("connecting the token relay", self._subscribe_keepalive)
        self._connected.set()
        await self._read()

    async def _subscribe_keepalive(self) -> None:
        # a channel of our own keeps the connection subscribed while no request is open; the
        # first subscribe makes the connection (only this task does: two would race)
        await self._pubsub.subscribe(f"{keys.PREFIX}:relay-keepalive")

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        await self._pubsub.aclose()

    def _resync(self) -> None:
        self.reconnects += 1
        log.warning("token relay reconnected; %d open requests resync", len(self._queues))
        for queue in self._queues.values():
            queue.put_nowait(RESYNC)

    async def fetch(
        self, request_id: str, attempt: int, first: int, end: int | None = None
    ) -> list[TokenEvent]:
        """Events ``first`` <= seq < ``end`` (``end`` None: all from ``first``) of ``attempt``
        from the request's event stream, in order; what the stream no longer (or never) had
        is absent."""
        stream = keys.request_events(request_id)
        low = keys.event_entry_id(attempt, first)
        high = keys.event_entry_id(attempt, end - 1) if end is not None else "+"
        found: list[TokenEvent] = []
        while True:
            entries: list[Any] = list(
                await self._redis.xrange(stream, low, high, count=_FETCH_COUNT) or ()
            )
            for entry_id, fields in entries:
                if int(entry_id.split(b"-")[0]) != attempt:
                    return found  # a later attempt's entries follow this one's
                try:
                    found.append(decode_event(fields[b"e"]))
                except MalformedEvent:
                    log.error("malformed event in %s: %r", stream, fields)
            if len(entries) < _FETCH_COUNT:
                return found
            low = "(" + entries[-1][0].decode()

    async def open(self, request_id: str) -> EventQueue:
        """Subscribe to the request's channel; returns once Redis confirmed it."""
        channel = keys.token_channel(request_id).encode()
        queue: EventQueue = asyncio.Queue()
        confirmed = asyncio.get_running_loop().create_future()
        self._queues[channel] = queue
        self._confirmations[channel] = confirmed
        try:
            if not self._connected.is_set():
                await self._until_connected()
            await self._pubsub.subscribe(channel)
            await confirmed
        except BaseException:
            self.release(request_id)
            raise
        return queue

    async def _until_connected(self) -> None:
        try:
            async with asyncio.timeout(CONNECT_WAIT_S):
                await self._connected.wait()
        except TimeoutError:
            raise StoreUnavailable(
                "the request queue (Redis) cannot be reached; retry shortly"
            ) from None

    def release(self, request_id: str) -> None:
        """Stop relaying the request's events. Safe to call from a cancelled task:
        the unsubscribe runs in a task of its own."""
        channel = keys.token_channel(request_id).encode()
        self._queues.pop(channel, None)
        self._confirmations.pop(channel, None)
        if not self._connected.is_set():
            return  # never subscribed: open() waited for the connection and gave up
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
                if not await self._read_directly():
                    # no timeout: a timed read arms and cancels a timer per message; a dead
                    # connection still raises (TCP keepalive finds a half-open one)
                    message = await self._pubsub.get_message(timeout=None)
                    if message is not None:
                        self._route(message)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("token relay lost its connection; reconnecting")
                await asyncio.sleep(0.1)
                continue
            try:
                for reply in self._buffered():
                    if is_published(reply):
                        self._deliver(reply[1], reply[2])
                    elif isinstance(reply, Exception):
                        log.error("token relay: error reply %s", reply)
                    else:
                        message = await self._pubsub.handle_message(reply)
                        if message is not None:
                            self._route(message)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("token relay: reading buffered messages failed")

    async def _read_directly(self) -> bool:
        """Wait for the socket and feed what arrived to the connection's hiredis reader;
        False when redis-py's ``get_message`` must read instead: the connection is down (or
        this read found it lost: redis-py makes it again), a health check is due, or the
        parser is not hiredis."""
        connection = self._pubsub.connection
        parser = getattr(connection, "_parser", None)
        if (
            connection is None
            or NOT_ENOUGH_DATA is None
            or getattr(parser, "_reader", None) is None
            or not connection.is_connected
        ):
            return False
        interval = connection.health_check_interval
        if interval and asyncio.get_running_loop().time() > connection.next_health_check:
            return False
        try:
            await parser.read_from_socket()
        except (RedisConnectionError, OSError) as err:
            log.warning("token relay: pub/sub connection lost (%s); reconnecting", err)
            return False
        return True

    def _buffered(self) -> Iterator[Any]:
        """Replies the connection has already read and not parsed yet, straight from its
        hiredis reader (none without hiredis: redis-py then reads each one itself)."""
        connection = self._pubsub.connection
        reader = getattr(getattr(connection, "_parser", None), "_reader", None)
        if reader is None or NOT_ENOUGH_DATA is None:
            return
        while (reply := reader.gets()) is not NOT_ENOUGH_DATA and reply is not False:
            yield reply

    def _route(self, message: dict[str, Any]) -> None:
        channel = message["channel"]
        kind = message["type"]
        if kind == "message":
            self._deliver(channel, message["data"])
        elif kind == "subscribe":
            confirmed = self._confirmations.pop(channel, None)
            if confirmed is not None and not confirmed.done():
                confirmed.set_result(None)

    def _deliver(self, channel: bytes, data: bytes) -> None:
        queue = self._queues.get(channel)
        if queue is None:
            return
        try:
            queue.put_nowait(decode_event(data))
        except MalformedEvent:
            log.error("malformed event on %s: %r", channel, data[:200])
