"""Shared stream followers against a real server: backlog then live entries, each once and
in order, for followers joining at any time; a follower that stops reading catches up from
the stream instead of growing its queue; unfollowed streams are no longer read."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

import pytest
import redis.asyncio

from berth.api import followers as followers_module
from berth.api.followers import Entry, StreamFollowers


async def _take(events: AsyncGenerator[Entry | None, None], n: int) -> list[bytes]:
    out: list[bytes] = []
    while len(out) < n:
        entry = await asyncio.wait_for(anext(events), 5)
        if entry is not None:
            out.append(entry.fields[b"n"])
    return out


async def test_followers_get_backlog_then_live_entries_once(aredis: redis.asyncio.Redis) -> None:
    followers = StreamFollowers(aredis)
    await followers.start()
    try:
        for i in range(3):
            await aredis.xadd("s", {"n": i})
        early = followers.follow("s")
        assert await _take(early, 3) == [b"0", b"1", b"2"]
        for i in range(3, 6):
            await aredis.xadd("s", {"n": i})
        late = followers.follow("s")  # joins while the stream is followed and live
        assert await _take(late, 6) == [str(i).encode() for i in range(6)]
        assert await _take(early, 3) == [b"3", b"4", b"5"]
        head: Any = await aredis.xrange("s", count=1)
        first = head[0][0].decode()
        resumed = followers.follow("s", after=first)
        assert await _take(resumed, 5) == [str(i).encode() for i in range(1, 6)]
        await aredis.xadd("s", {"n": 6})
        for events in (early, late, resumed):
            assert await _take(events, 1) == [b"6"]
            await events.aclose()
        assert followers.streams == 0  # nobody follows it: it is no longer read
    finally:
        await followers.close()


async def test_a_stalled_follower_catches_up_from_the_stream(
    aredis: redis.asyncio.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(followers_module, "QUEUE_BOUND", 4)
    followers = StreamFollowers(aredis)
    await followers.start()
    try:
        events = followers.follow("s")
        await aredis.xadd("s", {"n": 0})
        assert await _take(events, 1) == [b"0"]
        for i in range(1, 40):  # far more than its queue holds, while it does not read
            await aredis.xadd("s", {"n": i})
            await asyncio.sleep(0.01)
        assert await _take(events, 39) == [str(i).encode() for i in range(1, 40)]
        await events.aclose()
    finally:
        await followers.close()


async def test_an_idle_follower_is_told_so(aredis: redis.asyncio.Redis) -> None:
    followers = StreamFollowers(aredis)
    await followers.start()
    try:
        events = followers.follow("quiet", idle_s=0.1)
        assert await asyncio.wait_for(anext(events), 5) is None
        await events.aclose()
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
        many = [followers.follow("s", idle_s=0.05) for _ in range(20)]
        for events in many:  # each joins, with an empty backlog, before the entries come
            assert await asyncio.wait_for(anext(events), 5) is None
        for i in range(3):
            await aredis.xadd("s", {"n": i})
        for events in many:
            seen: list[str] = []
            while len(seen) < 3:
                entry = await asyncio.wait_for(anext(events), 5)
                if entry is not None:
                    seen.append(entry.view(frame))
            assert seen == ["frame 0", "frame 1", "frame 2"]
            await events.aclose()
        assert len(made) == 3 and len(set(made)) == 3
    finally:
        await followers.close()
