"""The shared prefix index against a real server."""

from __future__ import annotations

import time

import redis.asyncio

from berth.protocol import keys
from berth.protocol.envelopes import WorkerInfo
from berth.store.prefixes import PrefixIndex


def _worker(wid: str, incarnation: str = "i1") -> WorkerInfo:
    return WorkerInfo(id=wid, model="m", capacity=8, queue=f"q.{wid}", incarnation=incarnation)


async def _note(index: PrefixIndex, worker: WorkerInfo, blocks: list[bytes]) -> None:
    pipe = index.redis.pipeline(transaction=False)
    await index.note(pipe, worker, blocks, time.time())
    await pipe.execute()


async def test_a_second_replica_reads_what_the_first_placed(aredis: redis.asyncio.Redis) -> None:
    first, second = PrefixIndex(aredis, 100), PrefixIndex(aredis, 100)
    w1, w2 = _worker("w1"), _worker("w2")
    await _note(first, w1, [b"a", b"b"])
    # the writer sees its own placement at once; the other replica after its refresh
    assert b"b" in first.cached("w1")
    assert b"a" not in second.cached("w1")
    await second.refresh([w1, w2])
    assert b"a" in second.cached("w1") and b"b" in second.cached("w1")
    assert b"a" not in second.cached("w2")
    # later writes are read incrementally
    await _note(first, w2, [b"c"])
    await second.refresh([w1, w2])
    assert b"c" in second.cached("w2") and b"a" in second.cached("w1")
    ttl = await aredis.ttl(keys.prefix_index("w1", "i1"))
    assert 0 < ttl <= keys.PREFIX_INDEX_TTL_S


async def test_each_worker_keeps_its_newest_blocks(aredis: redis.asyncio.Redis) -> None:
    index = PrefixIndex(aredis, 4)
    w1 = _worker("w1")
    await _note(index, w1, [b"old1", b"old2", b"old3"])
    await _note(index, w1, [b"new1", b"new2", b"new3"])
    key = keys.prefix_index("w1", "i1")
    kept = set(await aredis.zrange(key, 0, -1))
    assert len(kept) == 4 and {b"new1", b"new2", b"new3"} <= kept
    reader = PrefixIndex(aredis, 4)
    await reader.refresh([w1])
    assert b"new3" in reader.cached("w1")


async def test_a_restarted_worker_starts_empty(aredis: redis.asyncio.Redis) -> None:
    writer, reader = PrefixIndex(aredis, 100), PrefixIndex(aredis, 100)
    await _note(writer, _worker("w1", "i1"), [b"a"])
    await reader.refresh([_worker("w1", "i1")])
    assert b"a" in reader.cached("w1")
    # the same id, another process start: nothing of the old one counts
    await reader.refresh([_worker("w1", "i2")])
    assert b"a" not in reader.cached("w1")
    await writer.refresh([_worker("w1", "i2")])
    assert b"a" not in writer.cached("w1")
    # a worker gone from the registry is forgotten
    await reader.refresh([])
    assert b"a" not in reader.cached("w1")


async def test_memory_per_worker_is_bounded(aredis: redis.asyncio.Redis) -> None:
    index = PrefixIndex(aredis, 4096)
    w1 = _worker("w1")
    for start in range(0, 6000, 1000):
        await _note(index, w1, [i.to_bytes(8, "big") for i in range(start, start + 1000)])
    key = keys.prefix_index("w1", "i1")
    assert await aredis.zcard(key) == 4096
    used = await aredis.memory_usage(key)
    assert used is not None and used < 4096 * 120, used
