"""Puts validated requests on their model's ingress stream, refusing when it is full."""

from __future__ import annotations

from redis.asyncio import Redis

from berth.protocol import keys
from berth.protocol.envelopes import QueuedRequest
from berth.protocol.errors import QueueFull
from berth.store.adapters import AdapterStore


class Ingress:
    """Bounded enqueue onto ``berth:ingress:{model}`` streams."""

    def __init__(self, redis: Redis, max_queue: int, retry_after_s: int) -> None:
        self._redis = redis
        self._max_queue = max_queue
        self._retry_after_s = retry_after_s
        self._known_models: set[str] = set()

    async def admit(self, queued: QueuedRequest) -> str:
        """Check the lane's bound and announce the model; returns the stream to add to."""
        stream = keys.ingress_stream(queued.model, queued.lane)
        # the scheduler deletes what it dispatched, so XLEN is what still waits
        if await self._redis.xlen(stream) >= self._max_queue:
            raise QueueFull(
                f"the {queued.lane} queue for model {queued.model!r} is full "
                f"({self._max_queue} requests); retry after {self._retry_after_s}s",
                retry_after=self._retry_after_s,
            )
        if queued.model not in self._known_models:
            await AdapterStore.add_models(self._redis, {queued.model})
            self._known_models.add(queued.model)
        return stream

    async def enqueue(self, queued: QueuedRequest) -> None:
        stream = await self.admit(queued)
        await self._redis.xadd(stream, {"r": queued.model_dump_json(exclude_none=True)})

    async def requeue(self, queued: QueuedRequest) -> None:
        """Queue an admitted request again (its worker died first); no bound applies."""
        stream = keys.ingress_stream(queued.model, queued.lane)
        await self._redis.xadd(stream, {"r": queued.model_dump_json(exclude_none=True)})

    async def cancel(self, request_id: str) -> None:
        """Mark a request cancelled (the scheduler drops it) and tell the workers."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.set(keys.cancelled_key(request_id), b"1", ex=3600)
        pipe.publish(keys.CANCEL_CHANNEL, request_id)
        await pipe.execute()
