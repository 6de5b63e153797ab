"""The live-role registry: workers and scheduler replicas, each a record with a TTL plus a
member of an index sorted set; shared by the API, the scheduler and the worker.

Readers walk the index (O(live roles), whatever else Redis holds), never the keyspace.
The record's TTL, kept by Redis's clock, says whether a role is alive; the index score
(the expiry by the writer's clock) only lets readers prune long-gone members cheaply, so
clocks that disagree by less than ``PRUNE_AFTER_S`` change nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError
from redis.asyncio import Redis

from berth.protocol import keys
from berth.protocol.envelopes import WorkerInfo

log = logging.getLogger(__name__)

# index members whose record expired this long ago (by the reader's clock) are dropped in
# one ZREMRANGEBYSCORE; younger ones with no record are dropped one by one
PRUNE_AFTER_S = 60.0


async def announce(
    redis: Redis, index: str, member: str, key: str, value: str | bytes, ttl_s: float
) -> None:
    """Write a role's record with its TTL and (re)add it to its index, in one transaction."""
    pipe = redis.pipeline(transaction=True)
    pipe.set(key, value, px=max(1, int(ttl_s * 1000)))
    pipe.zadd(index, {member: time.time() + ttl_s})
    await pipe.execute()


async def withdraw(redis: Redis, index: str, member: str, key: str) -> None:
    """Remove a role's record and index entry at a clean shutdown."""
    pipe = redis.pipeline(transaction=True)
    pipe.delete(key)
    pipe.zrem(index, member)
    await pipe.execute()


async def live_records(
    redis: Redis, index: str, key_of: Callable[[str], str]
) -> list[tuple[str, bytes]]:
    """(member, record) of every indexed role whose record has not expired; members whose
    record is gone are pruned from the index on the way. A member pruned while its role
    still lives is back with the role's next refresh."""
    pipe = redis.pipeline(transaction=False)
    pipe.zremrangebyscore(index, "-inf", time.time() - PRUNE_AFTER_S)
    pipe.zrange(index, 0, -1)
    _, raw_members = await pipe.execute()
    members = [m.decode() for m in raw_members]
    if not members:
        return []
    # bytes: berth's clients never decode responses
    records: Any = await redis.mget([key_of(m) for m in members])
    gone = [m for m, raw in zip(members, records, strict=True) if raw is None]
    if gone:
        await redis.zrem(index, *gone)
    return [(m, raw) for m, raw in zip(members, records, strict=True) if raw is not None]


async def live_workers(redis: Redis) -> list[WorkerInfo]:
    """Every worker whose heartbeat has not expired."""
    workers = []
    for _, raw in await live_records(redis, keys.WORKERS_INDEX, keys.worker_key):
        try:
            workers.append(WorkerInfo.model_validate_json(raw))
        except ValidationError:
            log.warning("ignoring a malformed worker record: %r", raw[:200])
    return workers


async def live_schedulers(redis: Redis) -> list[str]:
    """The ids of the scheduler replicas whose liveness record has not expired."""
    return [m for m, _ in await live_records(redis, keys.SCHEDULERS_INDEX, keys.scheduler_key)]


async def worker_incarnation(redis: Redis, worker_id: str) -> str | None:
    """The incarnation of the live worker ``worker_id`` ("" for a record written before
    incarnations existed), or None when it has no live record."""
    raw = await redis.get(keys.worker_key(worker_id))
    if raw is None:
        return None
    try:
        return WorkerInfo.model_validate_json(raw).incarnation
    except ValidationError:
        return ""


def is_same_incarnation(live: str | None, expected: str | None) -> bool:
    """Whether a worker whose live incarnation is ``live`` (None: no record) is the process
    that took work as ``expected`` (None: not known, any live process counts)."""
    if live is None:
        return False
    return expected is None or not expected or not live or live == expected


def models_served(workers: list[WorkerInfo]) -> dict[str, set[str]]:
    """Base model -> adapters offered by at least one live worker."""
    out: dict[str, set[str]] = {}
    for worker in workers:
        out.setdefault(worker.model, set()).update(worker.adapters)
    return out
