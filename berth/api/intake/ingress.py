"""Puts validated requests on their model's ingress stream, refusing a tenant over its
limits or its share of a full queue (``berth/limits/quotas.py``)."""

from __future__ import annotations

from redis.asyncio import Redis

from berth.limits import Quotas
from berth.protocol import keys
from berth.protocol.envelopes import QueuedRequest
from berth.store import queue
from berth.store.adapters import AdapterStore


class Ingress:
    """Bounded, per-tenant fair enqueue onto ``berth:ingress:{model}`` streams."""

    def __init__(self, redis: Redis, quotas: Quotas) -> None:
        self._redis = redis
        self.quotas = quotas
        self._known_models: set[str] = set()

    async def admit(self, queued: QueuedRequest) -> str:
        """Count the request against its tenant's limits and its share of the lane's queue,
        and announce the model; returns the stream to add to. Whoever admits a request
        queues it, or calls :meth:`abandon`."""
        stream = keys.ingress_stream(queued.model, queued.lane)
        await self.quotas.admit(queued, stream)
        if queued.model not in self._known_models:
            # the model was resolved against live workers: a registered name, never raw input
            await AdapterStore.add_models(self._redis, {queued.model})
            self._known_models.add(queued.model)
        return stream

    async def enqueue(self, queued: QueuedRequest) -> None:
        await self.admit(queued)
        try:
            await queue.enqueue(self._redis, queued)
        except BaseException:
            await self.abandon(queued)
            raise

    async def abandon(self, queued: QueuedRequest) -> None:
        await self.quotas.abandon(queued)

    async def finished(self, request_id: str) -> None:
        """The request ended at this API: free its tenant's concurrency slot."""
        await self.quotas.release(request_id)

    async def requeue(self, queued: QueuedRequest) -> None:
        """Queue an admitted request again (its worker died first); no bound applies."""
        await queue.enqueue(self._redis, queued)

    async def cancel(self, request_id: str) -> None:
        """Mark a request cancelled (the scheduler drops it) and tell the workers."""
        await queue.cancel(self._redis, request_id)
