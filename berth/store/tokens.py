"""The token path: each interactive request's event stream (``keys.request_events``) and the
pub/sub channel of each API process (``keys.delivery_channel``), which carries the events of
every request that process holds, one message per worker per engine step. Both ends live
here, so that the path can move (a Redis of its own, a Cluster with ``SPUBLISH`` and
``SSUBSCRIBE``) by changing this module alone.

- The worker (``workers/publisher.py``, once per loop turn, which is one engine step):
  ``step_commands`` gives the step's commands: the stream writes due (each an ``XADD`` of
  a request's events not yet in its stream, as one entry, and now and then its
  ``EXPIRE``), then ONE ``PUBLISH`` per destination API process with every event of the
  step for it (``events_message``). A running request's events go to its stream at most
  ``STORE_EVERY_S`` after they were published (``workers/events.py``), its first and last
  event at once, before they are published.
- The scheduler: ``notify`` sends one event (``dispatched``, or the end of a request that
  never reached a worker) to the API process waiting for it.
- The API (``api/delivery/relay.py``): ``DeliveryChannel`` holds the process's one pub/sub
  connection, subscribed to its own channel for good, and hands each message to the relay,
  which decodes the step's events in one call and fans them out to its requests;
  ``read_events`` reads a request's stream (a gap, a silence, a reconnect).

A stream entry holds the events written together (a JSON array, field ``e``) and its id is
the last one's (``keys.event_entry_id``): a reader asking from event N gets every entry
whose last event is N or later, and drops what it already has by ``seq``.
"""

from __future__ import annotations

import asyncio
import logging
import types
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError

from berth.plumbing.supervise import supervise
from berth.protocol import keys
from berth.protocol.envelopes import (
    MalformedEvent,
    TokenEvent,
    decode_stored_events,
    events_message,
)

try:
    # what redis-py's hiredis reader returns while a reply is incomplete
    from redis._parsers.hiredis import NOT_ENOUGH_DATA
except ImportError:  # another redis-py layout: every message through get_message
    NOT_ENOUGH_DATA = None

log = logging.getLogger(__name__)

# entries read per XRANGE when filling a gap
_FETCH_COUNT = 1024


# How long a running request's published events may wait before they are written to its
# stream: one XADD then carries every event of that while (a few engine steps at
# concurrency 32, dozens at concurrency 1) instead of one XADD per event. A reader that
# finds a gap waits this long (twice, and a little) before it counts events lost.
STORE_EVERY_S = 0.1


class Publish(NamedTuple):
    """An event for the API process that holds its request."""

    channel: str
    payload: bytes


class Store(NamedTuple):
    """Events of one request (``payload``: an ``events_message``) written to its stream as
    one entry, ``entry_id`` the last one's."""

    stream: str
    entry_id: str
    payload: bytes
    maxlen: int
    # (re)set the stream's expiry to this, or leave it
    expire_s: int | None


Command = tuple[bytes, ...]


def step_commands(stores: Sequence[Store], publishes: Sequence[Publish]) -> list[Command]:
    """The commands of one step: every stream write in order, then one PUBLISH per channel
    carrying that channel's events in order."""
    commands: list[Command] = []
    for stream, entry_id, payload, maxlen, expire_s in stores:
        key = stream.encode()
        commands.append(
            (b"XADD", key, b"MAXLEN", b"~", b"%d" % maxlen, entry_id.encode(), b"e", payload)
        )
        if expire_s is not None:
            commands.append((b"EXPIRE", key, b"%d" % expire_s))
    by_channel: dict[str, list[bytes]] = {}
    for channel, payload in publishes:
        by_channel.setdefault(channel, []).append(payload)
    for channel, payloads in by_channel.items():
        commands.append((b"PUBLISH", channel.encode(), events_message(payloads)))
    return commands


def notify(client: Any, origin: str | None, event: str) -> Any:
    """Send one event to the API process ``origin`` (``client``: a Redis client, or a
    pipeline to add it to); nothing listens without an origin."""
    return client.publish(keys.delivery_channel(origin or ""), events_message([event.encode()]))


async def read_events(
    redis: Redis, request_id: str, attempt: int, first: int, end: int | None = None
) -> list[TokenEvent]:
    """Events ``first`` <= seq < ``end`` (``end`` None: all from ``first``) of ``attempt``
    from the request's event stream, in order; what the stream does not have (yet, or any
    more) is absent."""
    stream = keys.request_events(request_id)
    # entries whose last event is ``first`` or later, up to the attempt's end
    low, high = keys.event_entry_id(attempt, first), f"({attempt + 1}-0"
    found: list[TokenEvent] = []
    while True:
        entries: list[Any] = list(await redis.xrange(stream, low, high, count=_FETCH_COUNT) or ())
        for _, fields in entries:
            try:
                events = decode_stored_events(fields[b"e"])
            except (MalformedEvent, KeyError):
                log.error("malformed events in %s: %r", stream, fields)
                continue
            for event in events:
                if end is not None and event.seq >= end:
                    return found
                if event.seq >= first:
                    found.append(event)
        if len(entries) < _FETCH_COUNT:
            return found
        low = "(" + entries[-1][0].decode()


def is_published(reply: Any) -> bool:
    """Whether a hiredis reply is a published message: ``[b"message", channel, data]``, a
    list under RESP2 and a ``hiredis.PushNotification`` (a list's subclass) under RESP3."""
    return isinstance(reply, list) and len(reply) == 3 and reply[0] == b"message"


class DeliveryChannel:
    """An API process's one pub/sub connection, subscribed to its delivery channel.

    ``run`` makes the connection (supervised: it backs off and tries again while Redis is
    away, so the API starts without Redis), sets ``connected``, then reads: ``deliver``
    gets each published message's data. Pub/sub drops what is published while the
    connection is down; redis-py makes it again (with the retry policy of
    ``berth.plumbing.redisconn``) and subscribes again, and then ``reconnected`` is called:
    the reader must fetch what it missed from the streams.

    Per message, redis-py's ``get_message`` costs more than everything else done with it; so
    this waits for the socket itself (``_read_directly``: the connection's hiredis parser
    reads what arrived), takes the messages read straight from the hiredis reader
    (``_buffered``), and hands redis-py only what is not a published message (subscribe
    confirmations, pongs), as it would have. ``get_message`` still does every read that has
    more to do than read: while the connection is down (it reconnects), after a failed
    read, and when a health check is due.
    """

    def __init__(
        self,
        redis: Redis,
        instance: str,
        deliver: Callable[[bytes], None],
        reconnected: Callable[[], None],
    ) -> None:
        self.channel = keys.delivery_channel(instance)
        self._deliver = deliver
        self._pubsub = redis.pubsub()
        # redis-py registers this attribute (a bound method: it keeps a weak reference) as
        # the connection's connect callback on every connection after the first: it
        # subscribes the channel again; then the reader is told
        resubscribe = self._pubsub.on_connect

        async def on_connect(pubsub: PubSub, connection: Connection) -> None:
            await resubscribe(connection)
            reconnected()

        self._pubsub.on_connect = types.MethodType(on_connect, self._pubsub)  # type: ignore[method-assign]
        self.connected = asyncio.Event()

    async def run(self) -> None:
        await supervise("connecting the token relay", self._subscribe)
        self.connected.set()
        await self._read()

    async def _subscribe(self) -> None:
        # the first subscribe makes the connection (only this task does: two would race);
        # every relay also joins one channel they share, on which nothing is published: an
        # API process's connection is the one with two subscriptions, as tools (and the
        # fault tests) find it among the other subscribers (workers' cancel listeners)
        await self._pubsub.subscribe(self.channel, keys.RELAYS_CHANNEL)

    async def close(self) -> None:
        await self._pubsub.aclose()

    async def _read(self) -> None:
        while True:
            try:
                if not await self._read_directly():
                    # no timeout: a timed read arms and cancels a timer per message; a dead
                    # connection still raises (TCP keepalive finds a half-open one)
                    message = await self._pubsub.get_message(timeout=None)
                    if message is not None and message["type"] == "message":
                        self._deliver(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("token relay lost its connection; reconnecting")
                await asyncio.sleep(0.1)
                continue
            try:
                for reply in self._buffered():
                    if is_published(reply):
                        self._deliver(reply[2])
                    elif isinstance(reply, Exception):
                        log.error("token relay: error reply %s", reply)
                    else:
                        message = await self._pubsub.handle_message(reply)
                        if message is not None and message["type"] == "message":
                            self._deliver(message["data"])
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
