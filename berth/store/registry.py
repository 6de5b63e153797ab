"""The live-role registry: workers and scheduler replicas, each a record with a TTL plus a
member of an index sorted set; shared by the API, the scheduler and the worker.

Readers walk the index (O(live roles), whatever else Redis holds), never the keyspace.
The record's TTL, kept by Redis's clock, says whether a role is alive (a worker's is
judged over successive reads, ``WorkerLiveness``: a failover may lose it); the index score
(the expiry by the writer's clock) only lets readers prune long-gone members cheaply, so
clocks that disagree by less than ``PRUNE_AFTER_S`` change nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
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
    """Every worker whose record has not expired (for whether it is alive, pass them to
    ``WorkerLiveness.observe``)."""
    workers = []
    for _, raw in await live_records(redis, keys.WORKERS_INDEX, keys.worker_key):
        try:
            workers.append(WorkerInfo.model_validate_json(raw))
        except ValidationError:
            log.warning("ignoring a malformed worker record: %r", raw[:200])
    return workers


async def announce_scheduler(redis: Redis, scheduler_id: str) -> None:
    """A scheduler replica's loop turns: its record lives SCHEDULER_ALIVE_S more."""
    await announce(
        redis,
        keys.SCHEDULERS_INDEX,
        scheduler_id,
        keys.scheduler_key(scheduler_id),
        b"1",
        keys.SCHEDULER_ALIVE_S,
    )


async def withdraw_scheduler(redis: Redis, scheduler_id: str) -> None:
    await withdraw(redis, keys.SCHEDULERS_INDEX, scheduler_id, keys.scheduler_key(scheduler_id))


async def scheduler_alive(redis: Redis, scheduler_id: str) -> bool:
    return bool(await redis.exists(keys.scheduler_key(scheduler_id)))


async def apis_alive(redis: Redis, instances: list[str]) -> list[bool]:
    """Whether each API process's liveness record is there now (one read: a caller judges
    an API gone only once it stayed missing, see ``workers/orphans.py``)."""
    records = await redis.mget([keys.api_key(i) for i in instances])
    return [raw is not None for raw in records]


async def live_schedulers(redis: Redis) -> list[str]:
    """The ids of the scheduler replicas whose liveness record has not expired."""
    return [m for m, _ in await live_records(redis, keys.SCHEDULERS_INDEX, keys.scheduler_key)]


# a registry read that took longer than this rode out an outage in the client's retries (a
# failover, a restart): the workers' beats were held up as long, so it counts as a failed
# read (a worker's beat is due every second by default: a read this slow missed one)
SLOW_READ_S = 1.0
# a worker counted as gone is forgotten this long after (reader's clock); asked about again,
# it is judged afresh
FORGET_AFTER_S = 600.0


@dataclass
class _Watched:
    # the newest record read (None: asked about before any read found it)
    record: WorkerInfo | None
    # the first successful read since which no newer heartbeat came
    stale_since: float | None = None
    gone_since: float | None = None
    # gone by a clean stop (its last record said so), not lost
    stopped: bool = False


class WorkerLiveness:
    """Which workers are alive, judged over successive reads of the registry; the one
    judgement behind the API's directory and streams and the scheduler's placement and
    requeueing. Pure: the caller reads Redis and hands over what it read.

    A worker is gone once no newer heartbeat of it was read through a full heartbeat TTL
    (its record's ``ttl_s``) of successful reads, whether its record is missing or old. A
    missing record alone proves nothing: after a Sentinel failover, or a Redis restart that
    lost recent writes, it is missing until the worker's next beat reaches the new primary.
    A failed read, or one that rode out an outage in the client's retries, starts every
    confirmation over (nobody can tell, and work keeps running).
    A record of another incarnation means the incarnation before it is gone at once; a
    record older than the one read before (a copy from before a failover) is no news. A
    record marked ``stopped`` (the last one of a worker that drained and exited) is gone at
    once, and not counted lost.
    A dead worker is noticed about a TTL after its last beat, when its record expires too.
    """

    def __init__(self) -> None:
        self._watched: dict[str, _Watched] = {}

    def observe(self, records: list[WorkerInfo], started: float, now: float) -> None:
        """Take one successful read (every live record), sent at ``started`` and answered
        at ``now`` (monotonic times). A read slower than ``SLOW_READ_S`` went through an
        outage the workers' beats went through too: it starts every confirmation over."""
        if now - started > SLOW_READ_S:
            self.reset()
        fresh = set()
        for record in records:
            seen = self._watched.get(record.id)
            if seen is None or seen.record is None or _beat(record) > _beat(seen.record):
                self._watched[record.id] = _Watched(record)
                fresh.add(record.id)
                if record.stopped:
                    # a clean stop (after its drain): gone now, and nothing was lost
                    self._watched[record.id].gone_since = now
                    self._watched[record.id].stopped = True
                    log.info("worker %s stopped", record.id)
        for worker_id, seen in list(self._watched.items()):
            if worker_id in fresh:
                continue
            if seen.gone_since is not None:
                if now - seen.gone_since >= FORGET_AFTER_S:
                    del self._watched[worker_id]
                continue
            if seen.stale_since is None:
                seen.stale_since = now
            ttl = seen.record.ttl_s if seen.record is not None else keys.WORKER_TTL_S
            if now - seen.stale_since >= ttl:
                seen.gone_since = now
                log.warning(
                    "worker %s: no new heartbeat through %.1f s of registry reads; counted gone",
                    worker_id,
                    ttl,
                )

    def reset(self) -> None:
        """A read failed: no worker is judged gone on what was read before it."""
        for seen in self._watched.values():
            seen.stale_since = None

    def present(self) -> list[WorkerInfo]:
        """The newest record of every worker not gone (old ones included: not yet judged)."""
        return [
            seen.record
            for seen in self._watched.values()
            if seen.record is not None and seen.gone_since is None
        ]

    def is_alive(self, worker_id: str, incarnation: str | None = None) -> bool:
        """Whether the worker is not gone and, given ``incarnation`` (None or "": not known,
        any process start counts), is still that process start. A worker no read found yet
        counts as alive and is judged from the next read on."""
        seen = self._watched.get(worker_id)
        if seen is None:
            self._watched[worker_id] = _Watched(None)
            return True
        if seen.gone_since is not None:
            return False
        live = seen.record.incarnation if seen.record is not None else ""
        return not incarnation or not live or live == incarnation

    def stopped(self, worker_id: str) -> bool:
        """Whether the worker is gone by a clean stop (its drain over), not lost."""
        seen = self._watched.get(worker_id)
        return seen is not None and seen.stopped


def _beat(record: WorkerInfo) -> tuple[float, float]:
    # a later process start is newer whatever its heartbeat says
    return record.started_at, record.heartbeat_at


def models_served(workers: list[WorkerInfo]) -> dict[str, set[str]]:
    """Base model -> adapters offered by at least one live worker."""
    out: dict[str, set[str]] = {}
    for worker in workers:
        out.setdefault(worker.model, set()).update(worker.adapters)
    return out
