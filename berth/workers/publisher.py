"""Writes events to Redis, coalescing everything produced in one loop turn into one round trip.

All requests of an engine step wake up in the same event-loop turn, so one
pipelined flush per turn sends that step's events for every request together: the stream
writes due (each request's events of the last ``STORE_EVERY_S`` as one XADD), then one
PUBLISH per API process with every event of the step for it
(``store/tokens.py: step_commands``), not two commands per token per request. A single
flusher task keeps every request's writes in order, including the script that finishes a
job after its last delta.

While Redis is away, writes wait in a bounded buffer and go out, in order, once
it answers again: the engine loop never waits for Redis. A write refused because
the buffer is full is reported to its writer, which ends its request with an
error once the buffer drains (``when_drained``) instead of losing events silently.
A flush cut by a lost connection is sent again whole: a reader drops what it
already has by ``seq``, and a stream entry whose id exists is refused by Redis.

The flush is this process's per-token cost, so a batch of events only (no script) is
written as RESP built here and sent on one pooled connection: redis-py's pipeline packs
each command in Python and arms a read timer per reply, which cost more than the rest of
the worker's work per token. Its client should read without a per-reply timeout
(``redis_client(..., socket_timeout=None)``); one timeout bounds the whole flush instead.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError, NoScriptError, ResponseError, TimeoutError

from berth.plumbing.redisconn import SOCKET_TIMEOUT_S
from berth.store import tokens
from berth.store.jobs import append_command

log = logging.getLogger(__name__)

_PUBLISH, _APPEND, _EVENT, _STORE, _SCRIPT = 0, 1, 2, 3, 4

# writes held while Redis is away; beyond them writes are refused (see module docstring)
MAX_BUFFERED = 100_000
# writes per pipeline: a backlog after an outage goes out in bounded round trips
_FLUSH_MAX = 4096
# pause between attempts while Redis is away (each attempt already retried inside redis-py)
_BACKOFF_S = (0.2, 2.0)
# longest one flush may take before it counts as a lost connection (a frozen server)
FLUSH_TIMEOUT_S = SOCKET_TIMEOUT_S


class EventPublisher:
    """Buffers writes (PUBLISH, capped XADD, scripts) and flushes them pipelined, in order."""

    def __init__(self, redis: Redis, max_buffered: int = MAX_BUFFERED) -> None:
        self._redis = redis
        self._max = max_buffered
        self._buffer: deque[tuple[int, Any, Any]] = deque()
        self._drained: list[Callable[[], None]] = []
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="event-publisher")

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def _push(self, op: tuple[int, Any, Any], force: bool) -> bool:
        if not force and len(self._buffer) >= self._max:
            return False
        self._buffer.append(op)
        self._idle.clear()
        self._wakeup.set()
        return True

    def has_room(self) -> bool:
        """Whether a write that may be refused would be taken now."""
        return len(self._buffer) < self._max

    def publish(self, channel: str, payload: str, *, force: bool = False) -> bool:
        """PUBLISH; False when the buffer is full (``force``: take it anyway)."""
        return self._push((_PUBLISH, channel, payload), force)

    def append(self, stream: str, payload: str, maxlen: int, *, force: bool = False) -> bool:
        """Add an event to a capped stream (a job's events)."""
        return self._push((_APPEND, stream, (payload, maxlen)), force)

    def event(self, channel: str, payload: bytes, *, force: bool = False) -> bool:
        """An interactive request's event for its API process (``channel``), published with
        the other events of the loop turn for that channel, in one message."""
        return self._push((_EVENT, None, tokens.Publish(channel, payload)), force)

    def store(
        self,
        stream: str,
        entry_id: str,
        payload: bytes,
        maxlen: int,
        expire_s: int | None,
        *,
        force: bool = False,
    ) -> bool:
        """Events of an interactive request written to its capped stream as one entry (XADD,
        before the loop turn's publishes). ``expire_s`` (re)sets the stream's expiry."""
        return self._push(
            (_STORE, None, tokens.Store(stream, entry_id, payload, maxlen, expire_s)), force
        )

    def script(
        self, script: AsyncScript, keys: Sequence[str], args: Sequence[Any], *, force: bool = False
    ) -> bool:
        """Run a Lua script after everything buffered before it."""
        return self._push((_SCRIPT, script, (keys, args)), force)

    def when_drained(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (on this loop) once the buffer has room again after it refused a
        write and Redis has taken what was buffered before."""
        self._drained.append(callback)
        self._wakeup.set()

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
            while self._buffer or self._drained:
                if self._drained and len(self._buffer) < self._max // 2:
                    callbacks, self._drained = self._drained, []
                    for callback in callbacks:
                        callback()
                if not self._buffer:
                    continue
                count = min(len(self._buffer), _FLUSH_MAX)
                batch = [self._buffer[i] for i in range(count)]
                try:
                    # a builtin TimeoutError (an OSError) when it runs out: redis-py drops
                    # the connection it cut, and the batch is sent again
                    async with asyncio.timeout(FLUSH_TIMEOUT_S):
                        try:
                            await self._flush(batch)
                        except NoScriptError:
                            # Redis restarted during the flush's retries and lost its script
                            # cache: a new pipeline loads the scripts again
                            await self._flush(batch)
                except (ConnectionError, TimeoutError, OSError) as err:
                    # keep the batch at the head of the buffer and try again: running work
                    # goes on, its events wait (bounded) until Redis is back
                    log.warning(
                        "Redis unreachable; %d events wait for it (%s)", len(self._buffer), err
                    )
                    await asyncio.sleep(random.uniform(*_BACKOFF_S))
                    continue
                except Exception:
                    log.exception("writing %d events failed", count)
                for _ in range(count):
                    self._buffer.popleft()
            self._idle.set()

    async def _flush(self, batch: list[tuple[int, Any, Any]]) -> None:
        # interactive events: their stream writes, then one publish per API process (so a
        # request's first and last events are in its stream before they are published);
        # jobs' writes keep their order among themselves (a job's appends before its script)
        stores = [data for kind, _, data in batch if kind == _STORE]
        events = [data for kind, _, data in batch if kind == _EVENT]
        if all(kind != _SCRIPT for kind, _, _ in batch):
            commands = tokens.step_commands(stores, events)
            for kind, target, data in batch:
                if kind == _PUBLISH:
                    commands.append((b"PUBLISH", target.encode(), data.encode()))
                elif kind == _APPEND:
                    commands.append(append_command(target, *data))
            await self._send_raw(commands)
            return
        pipe = self._redis.pipeline(transaction=False)
        for command in tokens.step_commands(stores, events):
            pipe.execute_command(*command)
        for kind, target, data in batch:
            if kind == _PUBLISH:
                pipe.publish(target, data)
            elif kind == _APPEND:
                pipe.execute_command(*append_command(target, *data))
            elif kind == _SCRIPT:
                keys, args = data
                await target(keys=keys, args=args, client=pipe)
        for result in await pipe.execute(raise_on_error=False):
            if isinstance(result, (ConnectionError, TimeoutError)):
                raise result
            if isinstance(result, ResponseError):
                _refused(result)

    async def _send_raw(self, commands: list[tuple[bytes, ...]]) -> None:
        """The commands as one RESP write, then their replies, on one connection."""
        parts = [_resp(*command) for command in commands]
        pool = self._redis.connection_pool
        connection = await pool.get_connection()
        try:
            # a lost connection raises here and is dropped by redis-py; the caller sends
            # the whole batch again
            await connection.send_packed_command(parts)
            for _ in parts:
                try:
                    await connection.read_response()
                except ResponseError as err:
                    _refused(err)
        finally:
            await pool.release(connection)


def _resp(*args: bytes) -> bytes:
    """One command in RESP, the protocol's request form."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(out)


def _refused(err: ResponseError) -> None:
    # an entry id already present is a write sent twice across a reconnect
    if "equal or smaller" not in str(err):
        log.error("an event write failed: %s", err)
