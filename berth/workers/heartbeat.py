"""The worker's entry in the registry: a record with a TTL, refreshed while the worker lives."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError

from berth.protocol import keys
from berth.protocol.envelopes import WorkerInfo

log = logging.getLogger(__name__)


async def heartbeat_loop(
    redis: Redis, info: Callable[[], WorkerInfo], interval: float, ttl: float
) -> None:
    """Refresh the worker's record every ``interval`` seconds; it expires ``ttl`` after the last."""
    while True:
        record = info()
        record.heartbeat_at = time.time()
        try:
            await redis.set(
                keys.worker_key(record.id), record.model_dump_json(), px=int(ttl * 1000)
            )
        except Exception:
            log.exception("heartbeat of worker %s failed", record.id)
        await asyncio.sleep(interval)


async def deregister(redis: Redis, worker_id: str) -> None:
    """Remove the worker's record at a clean shutdown, so nobody sends it more work; if
    Redis is already gone the record expires by itself."""
    try:
        await redis.delete(keys.worker_key(worker_id))
    except RedisError as err:
        log.warning("could not deregister worker %s (%s); its record will expire", worker_id, err)
