"""Many followers, one read: every follower of a Redis stream in this API process (a job's
events today; any stream keyed by name) is served by one reader task that XREADs all
followed streams at once on one connection and fans what it read out to in-process queues.

Followers take entries in batches, so a follower's cost (a wakeup, a write to its client)
scales with its batches, not with the stream's entries: the reader puts the entries of one
XREAD into each follower's queue as one item, then pauses ``FAN_OUT_INTERVAL_S`` so that
what is written meanwhile comes back from the next XREAD as one batch; a follower takes
everything queued when it wakes. A stream written a token at a time thus costs each of its
followers at most ~1/FAN_OUT_INTERVAL_S wakeups a second, however fast the tokens come.

A follower reads its backlog itself (XRANGE, a page per batch; followers asking for the
same page at once share one read), then takes live batches from its queue, skipping what
the backlog already gave. A follower too slow to drain its queue is not allowed to grow
it: past QUEUE_BOUND entries waiting it is marked lagging and catches up from the stream
with XRANGE, so a stalled client costs its own reads, never the reader's memory.

A live entry is one object shared by every follower, so what they derive from it
(``Entry.view``: the parsed event, its SSE frame) is computed once per entry per process,
not once per follower.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

# how long one XREAD blocks: a stream followed meanwhile waits at most this for its live read
BLOCK_MS = 200
# entries one XREAD returns per stream
COUNT = 1000
# entries one XRANGE returns (a follower's backlog and catch-up): a page's entries and
# frames live while its followers write them, so followers joining a long stream at once
# hold a page each at most, never the whole backlog (a long backlog costs a few more XRANGEs)
PAGE = 100
# after a read that returned entries the reader waits this long before the next, so entries
# written meanwhile reach followers as one batch: one wakeup and one write per follower
# instead of one per entry. Followers of a stream (job events) use an asynchronous API, so
# 50 ms later costs them little, while it caps each follower at ~20 wakeups a second however
# fast the stream is written (600 followers of a job at 200 tokens/s would otherwise wake
# 120,000 times a second on one event loop). The first entry after a quiet spell is not
# delayed: the reader is then blocked in XREAD, which returns it at once.
FAN_OUT_INTERVAL_S = 0.05
# entries (in whatever batches) waiting for one follower before it is made to catch up from
# the stream itself; an empty queue takes one batch of any size (at most COUNT)
QUEUE_BOUND = 10_000
# after a Redis error the reader waits this long (doubling to RETRY_MAX_S) and retries
RETRY_S = 0.1
RETRY_MAX_S = 5.0

T = TypeVar("T")


class Entry:
    """One stream entry: its id and fields, and what followers derived from it."""

    __slots__ = ("_views", "fields", "id")

    def __init__(self, entry_id: str, fields: dict[bytes, bytes]) -> None:
        self.id = entry_id
        self.fields = fields
        self._views: dict[Callable[[Entry], Any], Any] = {}

    def view(self, make: Callable[[Entry], T]) -> T:
        """``make(self)``, computed once for this entry whichever follower asks first."""
        try:
            return self._views[make]  # type: ignore[no-any-return]
        except KeyError:
            value = self._views[make] = make(self)
            return value


def _id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass(eq=False)
class _Follower:
    key: str
    # batches, each the entries of one read, shared with the stream's other followers; None
    # from the idle timer
    queue: asyncio.Queue[list[Entry] | None] = field(default_factory=asyncio.Queue)
    # entries in the queue, bounded by QUEUE_BOUND (the queue itself is not: a batch holds
    # up to COUNT entries)
    queued: int = 0
    lagging: bool = False
    # loop time it last took from its queue, and the timer that tells it it is idle
    took_at: float = 0.0
    idle_timer: asyncio.TimerHandle | None = None

    async def take(self) -> list[list[Entry] | None]:
        """Every item queued now, after waiting for one if there is none."""
        items = [await self.queue.get()] if self.queue.empty() else []
        while not self.queue.empty():
            items.append(self.queue.get_nowait())
        self.queued -= sum(len(item) for item in items if item is not None)
        self.took_at = asyncio.get_running_loop().time()
        return items

    def watch_idle(self, idle_s: float) -> None:
        """Queue None whenever ``idle_s`` pass without this follower taking anything. One
        timer, re-armed when it fires, instead of a timeout around each wait: that one is a
        timer made and cancelled per wakeup, as costly as the rest of a wakeup together."""
        loop = asyncio.get_running_loop()

        def check() -> None:
            now = loop.time()
            due = self.took_at + idle_s
            if now >= due:
                if self.queue.empty():
                    self.queue.put_nowait(None)
                # else it has something it has not taken yet: not idle
                due = now + idle_s
            self.idle_timer = loop.call_at(due, check)

        self.took_at = loop.time()
        self.idle_timer = loop.call_at(self.took_at + idle_s, check)

    def stop(self) -> None:
        if self.idle_timer is not None:
            self.idle_timer.cancel()


class StreamFollowers:
    """Follow streams by key; see the module docstring. ``start`` before use, ``close``
    at shutdown."""

    def __init__(self, redis: Redis) -> None:
        # redis-py types replies as unions; this client always answers bytes
        self.redis: Any = redis
        self._followers: dict[str, set[_Follower]] = {}
        # the id each followed stream is read after
        self._cursors: dict[str, str] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # (stream, after) -> the page read out now, shared by whoever asks for it meanwhile
        self._pages: dict[tuple[str, str], asyncio.Task[list[Entry]]] = {}
        # stream -> the start of its following now under way, shared by whoever joins
        # meanwhile (so they ask for their backlog together, and share its pages)
        self._opening: dict[str, asyncio.Task[None]] = {}

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="stream-followers")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @property
    def streams(self) -> int:
        """Streams followed now."""
        return len(self._followers)

    async def follow_batches(
        self, key: str, after: str = "0", idle_s: float | None = None
    ) -> AsyncGenerator[list[Entry] | None, None]:
        """Every entry of stream ``key`` after the id ``after`` ("0": all), then each new
        one as it comes, in order and in batches (never empty; a batch may be shared with
        other followers, so it is read, never changed) until the caller stops iterating;
        None after each ``idle_s`` seconds without one (so the caller can check whether
        more can come)."""
        follower = await self._join(key)
        if idle_s is not None:
            follower.watch_idle(idle_s)
        try:
            last = after
            # read from the stream itself until caught up: the backlog first, and again
            # whenever this follower lagged
            reading = True
            while True:
                if follower.lagging:
                    follower.lagging, reading = False, True
                    follower.queue, follower.queued = asyncio.Queue(), 0
                if reading:
                    page = await self._page(key, last)
                    reading = len(page) == PAGE
                    if page:
                        last = page[-1].id
                        yield page
                    # a page's entries, and the frames made of them, are not kept by this
                    # follower while it waits for the next (a thousand followers would)
                    del page
                    continue
                batches = [item for item in await follower.take() if item is not None]
                if not batches:
                    yield None
                    continue
                fresh = _after(last, batches)
                if fresh:
                    last = fresh[-1].id
                    yield fresh
        finally:
            follower.stop()
            self._leave(follower)

    async def _page(self, key: str, after: str) -> list[Entry]:
        """Up to PAGE entries of the stream after the id ``after`` ("0": from the start).

        Followers asking for the same page while it is being read share the read: hundreds
        joining a job at once (each starting from its first event) cost one XRANGE a page,
        not one each, and the page's entries are the same objects for all of them, so each
        entry's frame (``Entry.view``) is made once. The read runs in a task of its own: a
        follower that leaves does not cancel it for the others."""
        read = self._pages.get((key, after))
        if read is None:
            read = asyncio.get_running_loop().create_task(self._read_page(key, after))
            self._pages[(key, after)] = read
            read.add_done_callback(lambda done: self._read_done(key, after, done))
        return await asyncio.shield(read)

    def _read_done(self, key: str, after: str, read: asyncio.Task[list[Entry]]) -> None:
        self._pages.pop((key, after), None)
        # every follower waiting may have left: nobody else would take a failure from it
        if not read.cancelled():
            read.exception()

    async def _read_page(self, key: str, after: str) -> list[Entry]:
        start = "-" if after == "0" else f"({after}"
        reply = await self.redis.xrange(key, min=start, count=PAGE)
        return [Entry(entry_id.decode(), fields) for entry_id, fields in reply]

    async def _join(self, key: str) -> _Follower:
        follower = _Follower(key)
        while key not in self._followers:
            # one start per stream, however many join while it is under way: they resume
            # together when it ends and so ask for their first backlog page while one read
            # of it is out (each starting its own, they would read it one after another)
            opening = self._opening.get(key)
            if opening is None:
                opening = asyncio.get_running_loop().create_task(self._open(key))
                self._opening[key] = opening
                opening.add_done_callback(lambda done: self._opened(key, done))
            # shielded: a follower that leaves does not cancel the start for the others
            await asyncio.shield(opening)
        self._followers[key].add(follower)
        return follower

    async def _open(self, key: str) -> None:
        # live reads start after the newest entry now; older ones are every follower's
        # backlog, read after joining, so nothing falls between the two
        newest = await self.redis.xrevrange(key, count=1)
        self._followers.setdefault(key, set())
        self._cursors.setdefault(key, newest[0][0].decode() if newest else "0-0")
        self._wake.set()

    def _opened(self, key: str, opening: asyncio.Task[None]) -> None:
        self._opening.pop(key, None)
        # every follower waiting may have left: nobody else would take a failure from it
        if not opening.cancelled():
            opening.exception()

    def _leave(self, follower: _Follower) -> None:
        followers = self._followers.get(follower.key)
        if followers is None:
            return
        followers.discard(follower)
        if not followers:
            del self._followers[follower.key]
            del self._cursors[follower.key]

    async def _run(self) -> None:
        delay = RETRY_S
        task = asyncio.current_task()
        while True:
            if task is not None and task.cancelling():
                # redis-py can swallow a cancellation that lands while a command connects
                # (redis/redis-py#2028) and return as if nothing happened: honour it here,
                # or close() waits for a reader that reads on forever
                raise asyncio.CancelledError
            if not self._cursors:
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                reply = await self.redis.xread(dict(self._cursors), block=BLOCK_MS, count=COUNT)
            except RedisError as err:
                log.warning("reading followed streams failed (%s); retrying in %.1fs", err, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            delay = RETRY_S
            for raw_key, entries in reply or []:
                key = raw_key.decode()
                if key not in self._cursors or not entries:
                    continue  # unfollowed while the read was out
                self._cursors[key] = entries[-1][0].decode()
                self._fan_out(key, [Entry(i.decode(), f) for i, f in entries])
            if reply:
                await self._pause()

    async def _pause(self) -> None:
        """Between a read that returned entries and the next: what is written meanwhile
        comes back from the next read, and reaches each follower, as one batch."""
        await asyncio.sleep(FAN_OUT_INTERVAL_S)

    def _fan_out(self, key: str, batch: list[Entry]) -> None:
        """One queue item per follower for the whole batch: one wakeup each."""
        for follower in self._followers.get(key, ()):
            if follower.lagging:
                continue
            if follower.queued and follower.queued + len(batch) > QUEUE_BOUND:
                # so many waiting means the follower is not reading: it sees the flag next
                # (an empty queue takes a batch of any size: its follower may be waiting)
                follower.lagging = True
                continue
            follower.queued += len(batch)
            follower.queue.put_nowait(batch)


def _after(last: str, batches: list[list[Entry]]) -> list[Entry]:
    """The entries of ``batches`` (in stream order) after the id ``last`` ("0": all)."""
    entries = batches[0] if len(batches) == 1 else [e for batch in batches for e in batch]
    # the usual case, checked on the first entry alone: nothing in them was seen before
    if last == "0" or _id(entries[0].id) > _id(last):
        return entries
    after = _id(last)
    return [entry for entry in entries if _id(entry.id) > after]
