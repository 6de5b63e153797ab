"""Shared stream followers against a real server: backlog then live entries, each once and
in order, for followers joining at any time; entries written between two reads reach a
follower as one batch; a follower that stops reading catches up from the stream instead of
growing its queue; unfollowed streams are no longer read."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

import pytest
import redis.asyncio

from berth.api.delivery import followers as followers_module
from berth.api.delivery.followers import Entry, StreamFollowers

Batches = AsyncGenerator[list[Entry] | None, None]


async def _take(batches: Batches, n: int) -> list[bytes]:
    out: list[bytes] = []
    while len(out) < n:
        batch = await asyncio.wait_for(anext(batches), 5)
        if batch is not None:
            assert batch, "an empty batch"
            out += [entry.fields[b"n"] for entry in batch]
    return out


async def _joined(followers: StreamFollowers, key: str) -> Batches:
    """A follower of ``key`` that has joined and found nothing yet: live from here on."""
    batches = followers.follow_batches(key, idle_s=0.05)
    assert await asyncio.wait_for(anext(batches), 5) is None
    return batches


async def test_followers_get_backlog_then_live_entries_once(aredis: redis.asyncio.Redis) -> None:
    followers = StreamFollowers(aredis)
    await followers.start()
    try:
        for i in range(3):
            await aredis.xadd("s", {"n": i})
        early = followers.follow_batches("s")
        assert await _take(early, 3) == [b"0", b"1", b"2"]
        for i in range(3, 6):
            await aredis.xadd("s", {"n": i})
        late = followers.follow_batches("s")  # joins while the stream is followed and live
        assert await _take(late, 6) == [str(i).encode() for i in range(6)]
        assert await _take(early, 3) == [b"3", b"4", b"5"]
        head: Any = await aredis.xrange("s", count=1)
        first = head[0][0].decode()
        resumed = followers.follow_batches("s", after=first)
        assert await _take(resumed, 5) == [str(i).encode() for i in range(1, 6)]
        await aredis.xadd("s", {"n": 6})
        for batches in (early, late, resumed):
            assert await _take(batches, 1) == [b"6"]
            await batches.aclose()
        assert followers.streams == 0  # nobody follows it: it is no longer read
    finally:
        await followers.close()


async def test_a_long_backlog_comes_a_page_at_a_time(
    aredis: redis.asyncio.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(followers_module, "PAGE", 4)
    followers = StreamFollowers(aredis)
    await followers.start()
    try:
        for i in range(10):
            await aredis.xadd("s", {"n": i})
        batches = followers.follow_batches("s")
        sizes = []
        for _ in range(3):
            batch = await asyncio.wait_for(anext(batches), 5)
            assert batch is not None
            sizes.append(len(batch))
        assert sizes == [4, 4, 2]
        await aredis.xadd("s", {"n": 10})
        assert await _take(batches, 1) == [b"10"]
        await batches.aclose()
    finally:
        await followers.close()


async def test_the_entries_of_one_read_are_one_batch(aredis: redis.asyncio.Redis) -> None:
    followers = StreamFollowers(aredis)
    await followers.start()
    try:
        many = [await _joined(followers, "s") for _ in range(3)]
        async with aredis.pipeline(transaction=True) as pipe:  # all visible to one read
            for i in range(50):
                pipe.xadd("s", {"n": i})
            await pipe.execute()
        for batches in many:
            batch = await asyncio.wait_for(anext(batches), 5)
            assert batch is not None
            assert [e.fields[b"n"] for e in batch] == [str(i).encode() for i in range(50)]
            await batches.aclose()
    finally:
        await followers.close()


class _HeldPause(StreamFollowers):
    """The real reader, its pause after a read held until the test lets it go on."""

    def __init__(self, redis: redis.asyncio.Redis) -> None:
        super().__init__(redis)
        self.paused = asyncio.Event()
        self.go_on = asyncio.Event()

    async def _pause(self) -> None:
        self.paused.set()
        await self.go_on.wait()
        self.go_on.clear()

    async def held(self) -> None:
        """Once the reader pauses after a read (its entries handed out)."""
        await asyncio.wait_for(self.paused.wait(), 5)
        self.paused.clear()


async def test_entries_written_during_the_pause_are_one_batch(
    aredis: redis.asyncio.Redis,
) -> None:
    # a stream written an entry at a time, as a worker writes tokens: the first after a
    # quiet spell comes alone, the ones written while the reader pauses come together
    followers = _HeldPause(aredis)
    await followers.start()
    try:
        batches = await _joined(followers, "s")
        await aredis.xadd("s", {"n": 0})
        assert await _take(batches, 1) == [b"0"]
        await followers.held()
        for i in range(1, 6):
            await aredis.xadd("s", {"n": i})  # each its own write
        followers.go_on.set()
        batch = await asyncio.wait_for(anext(batches), 5)
        assert batch is not None
        assert [e.fields[b"n"] for e in batch] == [str(i).encode() for i in range(1, 6)]
        await batches.aclose()
    finally:
        await followers.close()


async def test_a_follower_takes_every_batch_queued_while_it_was_busy(
    aredis: redis.asyncio.Redis,
) -> None:
    # a follower still writing its last batch (a slow client) when more reads came takes
    # them all at its next wakeup, as one batch
    followers = _HeldPause(aredis)
    await followers.start()
    try:
        batches = await _joined(followers, "s")
        for i in range(3):  # three reads, one entry each, while the follower does not take
            await aredis.xadd("s", {"n": i})
            await followers.held()
            followers.go_on.set()
        batch = await asyncio.wait_for(anext(batches), 5)
        assert batch is not None
        assert [e.fields[b"n"] for e in batch] == [b"0", b"1", b"2"]
        await batches.aclose()
    finally:
        await followers.close()


async def test_a_stalled_follower_catches_up_from_the_stream(
    aredis: redis.asyncio.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(followers_module, "QUEUE_BOUND", 4)
    monkeypatch.setattr(followers_module, "PAGE", 8)  # it catches up in several pages
    monkeypatch.setattr(followers_module, "FAN_OUT_INTERVAL_S", 0)  # a read per entry
    followers = StreamFollowers(aredis)
    await followers.start()
    try:
        batches = followers.follow_batches("s")
        await aredis.xadd("s", {"n": 0})
        assert await _take(batches, 1) == [b"0"]
        for i in range(1, 40):  # far more than its queue holds, while it does not read
            await aredis.xadd("s", {"n": i})
            await asyncio.sleep(0.01)
        assert await _take(batches, 39) == [str(i).encode() for i in range(1, 40)]
        await batches.aclose()
    finally:
        await followers.close()


async def test_an_idle_follower_is_told_so(aredis: redis.asyncio.Redis) -> None:
    # each time it has taken nothing for idle_s: before its first entry, after it, again
    followers = StreamFollowers(aredis)
    await followers.start()
    try:
        batches = followers.follow_batches("quiet", idle_s=0.1)
        assert await asyncio.wait_for(anext(batches), 5) is None
        await aredis.xadd("quiet", {"n": 0})
        assert await _take(batches, 1) == [b"0"]
        assert await asyncio.wait_for(anext(batches), 5) is None
        assert await asyncio.wait_for(anext(batches), 5) is None
        await batches.aclose()
    finally:
        await followers.close()


async def test_a_live_entry_is_derived_once_for_all_followers(
    aredis: redis.asyncio.Redis,
) -> None:
    # what followers make of an entry (the jobs route: its parsed type and SSE frame) is
    # computed once per entry per process, however many follow the stream
    made: list[str] = []

    def frame(entry: Entry) -> str:
        made.append(entry.id)
        return f"frame {entry.fields[b'n'].decode()}"

    followers = StreamFollowers(aredis)
    await followers.start()
    try:
        many = [await _joined(followers, "s") for _ in range(20)]
        for i in range(3):
            await aredis.xadd("s", {"n": i})
        for batches in many:
            seen: list[str] = []
            while len(seen) < 3:
                batch = await asyncio.wait_for(anext(batches), 5)
                if batch is not None:
                    seen += [entry.view(frame) for entry in batch]
            assert seen == ["frame 0", "frame 1", "frame 2"]
            await batches.aclose()
        assert len(made) == 3 and len(set(made)) == 3
    finally:
        await followers.close()


async def test_followers_joining_at_once_share_each_backlog_read(
    aredis: redis.asyncio.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(followers_module, "PAGE", 4)
    followers = StreamFollowers(aredis)
    await followers.start()
    try:
        pipe = aredis.pipeline(transaction=False)
        for i in range(10):
            pipe.xadd("shared", {"n": i})
        await pipe.execute()
        stats: Any = await aredis.info("commandstats")
        before = int(stats.get("cmdstat_xrange", {}).get("calls", 0))
        many = [followers.follow_batches("shared") for _ in range(20)]
        firsts = await asyncio.gather(*(asyncio.wait_for(anext(b), 5) for b in many))
        # one page read for all twenty, its entries the same objects for each
        assert all(batch is not None and batch[0] is firsts[0][0] for batch in firsts)  # type: ignore[index]
        rest = await asyncio.gather(*(_take(b, 6) for b in many))
        assert all(r == [str(i).encode() for i in range(4, 10)] for r in rest)
        stats = await aredis.info("commandstats")
        # three pages (4, 4, 2), each read once whatever the number of followers
        assert int(stats.get("cmdstat_xrange", {}).get("calls", 0)) - before == 3
        for batches in many:
            await batches.aclose()
    finally:
        await followers.close()
