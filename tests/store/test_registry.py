"""The registry index against a real server: live roles are found through their index
sorted set, expired ones pruned from it, and nothing scans the keyspace. And, without a
server, how successive reads judge a worker gone (``WorkerLiveness``)."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
import redis.asyncio

from berth.protocol import keys
from berth.protocol.envelopes import WorkerInfo
from berth.store.registry import (
    PRUNE_AFTER_S,
    SLOW_READ_S,
    WorkerLiveness,
    announce,
    live_schedulers,
    live_workers,
    withdraw,
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


async def test_schedulers(aredis: redis.asyncio.Redis) -> None:
    await announce(aredis, keys.SCHEDULERS_INDEX, "s1", keys.scheduler_key("s1"), b"1", 30)
    await aredis.set(keys.scheduler_key("unindexed"), b"1")
    assert await live_schedulers(aredis) == ["s1"]


# WorkerLiveness: each observe() is one successful registry read at a time (in seconds)


def _beating(worker_id: str, at: float, incarnation: str = "a", ttl_s: float = 3.0) -> WorkerInfo:
    return _info(worker_id, incarnation).model_copy(
        update={
            "heartbeat_at": at,
            "started_at": 0.0 if incarnation == "a" else 1.0,
            "ttl_s": ttl_s,
        }
    )


def test_a_record_missing_for_less_than_its_ttl_keeps_the_worker() -> None:
    live = WorkerLiveness()
    live.observe([_beating("w1", 100.0)], 0.0, 0.0)
    # the record is lost (a failover) and reads find nothing for almost a TTL
    for now in (0.5, 1.0, 2.0, 3.4):
        live.observe([], now, now)
        assert live.is_alive("w1", "a")
        assert [w.id for w in live.present()] == ["w1"]
    # the worker's next beat reaches the new primary: the count starts over
    live.observe([_beating("w1", 104.0)], 3.45, 3.45)
    live.observe([], 6.0, 6.0)
    assert live.is_alive("w1", "a")


def test_no_new_heartbeat_through_a_ttl_of_reads_is_gone() -> None:
    live = WorkerLiveness()
    live.observe([_beating("w1", 100.0)], 0.0, 0.0)
    # killed: its last record is still read (not expired yet), then nothing
    live.observe([_beating("w1", 100.0)], 0.5, 0.5)
    live.observe([_beating("w1", 100.0)], 3.0, 3.0)
    assert live.is_alive("w1")
    live.observe([], 3.5, 3.5)
    assert not live.is_alive("w1") and not live.is_alive("w1", "a")
    assert live.present() == []
    # a worker that beats again is alive again
    live.observe([_beating("w1", 110.0)], 10.0, 10.0)
    assert live.is_alive("w1", "a")


def test_a_failed_read_starts_the_confirmation_over() -> None:
    live = WorkerLiveness()
    live.observe([_beating("w1", 100.0)], 0.0, 0.0)
    live.observe([], 0.5, 0.5)
    live.reset()  # Redis away: the reads in between failed
    live.observe([], 3.6, 3.6)
    live.observe([], 6.0, 6.0)
    assert live.is_alive("w1")
    live.observe([], 6.7, 6.7)
    assert not live.is_alive("w1")


def test_a_read_that_rode_out_an_outage_starts_the_confirmation_over() -> None:
    live = WorkerLiveness()
    live.observe([_beating("w1", 100.0)], 0.0, 0.0)
    live.observe([_beating("w1", 100.0)], 0.5, 0.5)
    # a failover: the next read waits in the client's retries and finds the record lost;
    # the worker's beat waited as long
    live.observe([], 1.0, 1.0 + SLOW_READ_S + 2.0)
    assert live.is_alive("w1")
    live.observe([], 6.0, 6.0)
    assert live.is_alive("w1")
    live.observe([], 7.1, 7.1)
    assert not live.is_alive("w1")


def test_another_incarnation_means_the_one_before_is_gone_at_once() -> None:
    live = WorkerLiveness()
    live.observe([_beating("w1", 100.0, "a")], 0.0, 0.0)
    live.observe([_beating("w1", 100.5, "b")], 0.5, 0.5)  # restarted under the same id
    assert not live.is_alive("w1", "a")
    assert live.is_alive("w1", "b")
    assert live.is_alive("w1", None) and live.is_alive("w1", "")  # not known: any will do
    # an older copy of the first process's record (read after a failover) is no news
    live.observe([_beating("w1", 100.9, "a")], 1.0, 1.0)
    assert [w.incarnation for w in live.present()] == ["b"]
    assert not live.is_alive("w1", "a")


def test_a_worker_no_read_found_is_judged_from_the_next_reads() -> None:
    live = WorkerLiveness()
    assert live.is_alive("w9", "x")  # asked about before any read found it
    live.observe([], 0.0, 0.0)
    live.observe([], keys.WORKER_TTL_S - 0.1, keys.WORKER_TTL_S - 0.1)
    assert live.is_alive("w9", "x")
    live.observe([], keys.WORKER_TTL_S, keys.WORKER_TTL_S)
    assert not live.is_alive("w9", "x")
    assert live.present() == []


def test_a_stopped_record_is_gone_at_once_and_not_counted_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    live = WorkerLiveness()
    live.observe([_beating("w1", 100.0)], 0.0, 0.0)
    draining = _beating("w1", 100.5).model_copy(update={"draining": True})
    live.observe([draining], 0.5, 0.5)
    assert live.is_alive("w1", "a")  # a draining worker still serves what it holds
    assert not live.stopped("w1")
    stopped = _beating("w1", 101.0).model_copy(update={"draining": True, "stopped": True})
    with caplog.at_level(logging.INFO, logger="berth.store.registry"):
        live.observe([stopped], 1.0, 1.0)
        assert not live.is_alive("w1", "a") and live.present() == []
        assert live.stopped("w1")
        # its record expires; no read after that judges it again
        for now in (2.0, 5.0, 9.0):
            live.observe([], now, now)
    assert [r.levelname for r in caplog.records] == ["INFO"]
    assert "stopped" in caplog.records[0].getMessage()
