"""The worker's entry in the registry: a record with a TTL, refreshed while the worker lives,
and its member in the workers' index (berth/store/registry.py)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError

from berth.protocol import keys
from berth.protocol.envelopes import WorkerInfo
from berth.store.registry import announce, withdraw

log = logging.getLogger(__name__)


async def heartbeat_loop(
    redis: Redis, info: Callable[[], WorkerInfo], interval: float, ttl: float
) -> None:
    """Refresh the worker's record every ``interval`` seconds; it expires ``ttl`` after the
    last. Never ends on an error: while Redis is away the beats fail (each after the
    client's retries) and the next one goes out as soon as it is back."""
    failing = False
    while True:
        try:
            record = info()
            record.heartbeat_at = time.time()
            record.ttl_s = ttl
            await announce(
                redis,
                keys.WORKERS_INDEX,
                record.id,
                keys.worker_key(record.id),
                record.model_dump_json(),
                ttl,
            )
            if failing:
                log.warning("heartbeat of worker %s resumed", record.id)
            failing = False
        except asyncio.CancelledError:
            raise
        except Exception as err:
            if not failing:
                log.error("heartbeat failed (%s); retrying every %.1f s", err, interval)
            failing = True
        await asyncio.sleep(interval)


async def deregister(redis: Redis, worker_id: str) -> None:
    """Remove the worker's record at a clean shutdown, so nobody sends it more work; if
    Redis is already gone the record expires by itself."""
    try:
        await withdraw(redis, keys.WORKERS_INDEX, worker_id, keys.worker_key(worker_id))
    except RedisError as err:
        log.warning("could not deregister worker %s (%s); its record will expire", worker_id, err)
