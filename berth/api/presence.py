"""This API process's liveness record: an instance id per process start and a record with a
TTL, refreshed by a supervised loop. Interactive requests carry the id as their ``origin``;
a worker cancels the requests of an API process that died with its clients' connections
(``workers/orphans.py``)."""

from __future__ import annotations

import asyncio
import logging
import uuid

from redis.asyncio import Redis
from redis.exceptions import RedisError

from berth.plumbing.supervise import supervise
from berth.protocol import keys
from berth.store.registry import announce, withdraw

log = logging.getLogger(__name__)


class ApiPresence:
    """Announces one API process in ``keys.APIS_INDEX`` while it runs."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self.instance = uuid.uuid4().hex
        self._task: asyncio.Task[None] | None = None

    async def _announce(self) -> None:
        me = self.instance
        await announce(self._redis, keys.APIS_INDEX, me, keys.api_key(me), b"1", keys.API_ALIVE_S)

    async def _beat(self) -> None:
        while True:
            await self._announce()
            await asyncio.sleep(keys.API_REFRESH_S)

    async def start(self) -> None:
        # the loop announces at once, and keeps trying while Redis is away: the API starts
        # without it. A request served before the first announcement is safe: a worker
        # cancels one only after its origin's record stayed missing for API_ALIVE_S
        self._task = asyncio.get_running_loop().create_task(
            supervise("announcing this API process", self._beat), name="api-presence"
        )
        log.info("api instance %s", self.instance)

    async def close(self) -> None:
        """Withdraw the record: workers then cancel what this process still had open (its
        connections are closed), keeping resumable streams for their grace."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        me = self.instance
        try:
            await withdraw(self._redis, keys.APIS_INDEX, me, keys.api_key(me))
        except RedisError as err:
            log.warning("could not withdraw api instance %s (%s); it will expire", me, err)
