"""The registry index against a real server: live roles are found through their index
sorted set, expired ones pruned from it, and nothing scans the keyspace."""

from __future__ import annotations

import asyncio
import time

import redis.asyncio

from berth.protocol import keys
from berth.protocol.envelopes import WorkerInfo
from berth.registry import (
    PRUNE_AFTER_S,
    announce,
    is_same_incarnation,
    live_schedulers,
    live_workers,
    withdraw,
    worker_incarnation,
)


def _info(worker_id: str, incarnation: str = "a") -> WorkerInfo:
    return WorkerInfo(
        id=worker_id, model="m", capacity=4, queue=keys.worker_queue(worker_id),
        incarnation=incarnation,
    )  # fmt: skip


async def _beat(r: redis.asyncio.Redis, info: WorkerInfo, ttl_s: float) -> None:
    await announce(
        r, keys.WORKERS_INDEX, info.id, keys.worker_key(info.id), info.model_dump_json(), ttl_s
    )


async def test_live_workers_come_from_the_index_and_expired_ones_are_pruned(
    aredis: redis.asyncio.Redis,
) -> None:
    # plenty of unrelated keys, some of them looking like worker records but not indexed:
    # the reader never sees them, whatever the keyspace holds
    await aredis.mset({f"berth:job:{i}": b"x" for i in range(500)})
    await aredis.set(keys.worker_key("stray"), _info("stray").model_dump_json())
    await _beat(aredis, _info("w1"), 30)
    await _beat(aredis, _info("w2"), 0.2)
    assert sorted(w.id for w in await live_workers(aredis)) == ["w1", "w2"]
    await asyncio.sleep(0.4)  # w2's record expires
    assert [w.id for w in await live_workers(aredis)] == ["w1"]
    # the expired member is gone from the index too; the live one stays
    assert await aredis.zrange(keys.WORKERS_INDEX, 0, -1) == [b"w1"]
    # a member long past its expiry (by score) goes in one range removal
    await aredis.zadd(keys.WORKERS_INDEX, {"ancient": time.time() - 2 * PRUNE_AFTER_S})
    await live_workers(aredis)
    assert await aredis.zscore(keys.WORKERS_INDEX, "ancient") is None
    await withdraw(aredis, keys.WORKERS_INDEX, "w1", keys.worker_key("w1"))
    assert await live_workers(aredis) == []
    assert await aredis.zcard(keys.WORKERS_INDEX) == 0


async def test_schedulers_and_incarnations(aredis: redis.asyncio.Redis) -> None:
    await announce(aredis, keys.SCHEDULERS_INDEX, "s1", keys.scheduler_key("s1"), b"1", 30)
    await aredis.set(keys.scheduler_key("unindexed"), b"1")
    assert await live_schedulers(aredis) == ["s1"]
    await _beat(aredis, _info("w1", "first"), 30)
    assert await worker_incarnation(aredis, "w1") == "first"
    await _beat(aredis, _info("w1", "second"), 30)  # restarted under the same id
    live = await worker_incarnation(aredis, "w1")
    assert not is_same_incarnation(live, "first")
    assert is_same_incarnation(live, "second")
    assert is_same_incarnation(live, None)  # who holds the work is not known: any will do
    assert not is_same_incarnation(await worker_incarnation(aredis, "gone"), None)
