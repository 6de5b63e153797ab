"""The worker's entry in the registry: a record with a TTL, refreshed while the worker lives,
and its member in the workers' index (berth/store/registry.py); and, from the same loop,
its local proof of life for the liveness probe (berth/plumbing/liveness.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError

from berth.plumbing.liveness import LivenessFile
from berth.protocol import keys
from berth.protocol.envelopes import WorkerInfo
from berth.store.registry import announce

log = logging.getLogger(__name__)


class _Beats:
    """Writes beats to Redis and says once when they start failing and when they resume."""

    def __init__(self, redis: Redis, ttl: float, interval: float) -> None:
        self.redis = redis
        self.ttl = ttl
        self.interval = interval
        self.failing = False

    def failed(self, err: object) -> None:
        if not self.failing:
            log.error("heartbeat failed (%s); retrying every %.1f s", err, self.interval)
        self.failing = True

    async def send(self, record: WorkerInfo) -> None:
        try:
            await announce(
                self.redis,
                keys.WORKERS_INDEX,
                record.id,
                keys.worker_key(record.id),
                record.model_dump_json(),
                self.ttl,
            )
        except asyncio.CancelledError:
            raise
        except Exception as err:
            self.failed(err)
            return
        if self.failing:
            log.warning("heartbeat of worker %s resumed", record.id)
        self.failing = False


async def heartbeat_loop(
    redis: Redis,
    info: Callable[[], WorkerInfo],
    interval: float,
    ttl: float,
    proof: LivenessFile,
    wake: asyncio.Event | None = None,
) -> None:
    """Every ``interval`` seconds: refresh the worker's local proof of life (its liveness
    probe's, plumbing/liveness.py) and its record in Redis, which expires ``ttl`` after the
    last beat. The Redis write runs beside this loop, one at a time: while Redis is away a
    write waits out the client's retries (minutes, when the server hangs without an
    answer), and the proof goes on being refreshed meanwhile, for a worker is alive
    whatever Redis does. Never ends on an error: the next beat goes out as soon as Redis
    is back. Setting ``wake`` sends the next beat now (a drain that began)."""
    beats = _Beats(redis, ttl, interval)
    beat: asyncio.Task[None] | None = None
    try:
        while True:
            try:
                record = info()
            except Exception as err:
                # the engine cannot say its state: no proof and no beat vouch for it
                beats.failed(err)
            else:
                record.heartbeat_at = time.time()
                record.ttl_s = ttl
                proof.refresh()
                if beat is None or beat.done():
                    beat = asyncio.create_task(beats.send(record), name="heartbeat write")
            if wake is None:
                await asyncio.sleep(interval)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), interval)
            wake.clear()
    finally:
        # no beat may land after the deregistration that follows a clean stop
        if beat is not None:
            beat.cancel()
            await asyncio.gather(beat, return_exceptions=True)


async def retire(redis: Redis, record: WorkerInfo) -> None:
    """At a clean stop, replace the worker's record with its last one, marked ``stopped``:
    every reader counts it gone at once and not lost (``store/registry.py:
    WorkerLiveness``), and nobody sends it more work; it expires with its TTL. If Redis is
    already gone the last heartbeat expires by itself."""
    record = record.model_copy(update={"stopped": True, "heartbeat_at": time.time()})
    try:
        await announce(
            redis,
            keys.WORKERS_INDEX,
            record.id,
            keys.worker_key(record.id),
            record.model_dump_json(),
            record.ttl_s,
        )
    except RedisError as err:
        log.warning("could not retire worker %s (%s); its record will expire", record.id, err)
