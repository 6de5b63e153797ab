"""The model and adapter registry: every base model a worker ever served (``keys.MODELS_SET``)
and every named LoRA adapter (``keys.ADAPTERS``: name -> JSON {"model", "path"}).

Workers announce their model and configured adapters at start, and the API adds a model
when it first queues a request for it; the model catalog (``store/catalog.py``) registers
its declared adapters; the admin API registers
and removes adapters; workers follow the registry to load adapters by name; the API reads
it to tell an unavailable model (503) from an unknown one (404). No record expires.

Beside the registry, ``OpenAdapters``: the adapters the scheduler replicas have opened on
each worker (``keys.open_adapters``), for LoRA placement.
"""

from __future__ import annotations

import json
from typing import Any

from redis.asyncio import Redis

from berth.protocol import keys
from berth.store.scripts import Scripts


class AdapterStore:
    """Every read and write of the model set and the adapter registry."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def announce(self, model: str, adapters: list[str]) -> None:
        """A worker's model and configured adapters, known for good (an adapter already
        registered keeps its record: the admin's path wins over a worker's default)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.sadd(keys.MODELS_SET, model)
        self.announce_into(pipe, model, adapters)
        await pipe.execute()

    @staticmethod
    def announce_into(pipe: Any, model: str, adapters: list[str]) -> None:
        """Adapters of ``model`` without a path, unless registered already (into ``pipe``)."""
        for name in adapters:
            pipe.hsetnx(keys.ADAPTERS, name, json.dumps({"model": model}))

    @staticmethod
    def register_into(pipe: Any, model: str, paths: dict[str, str]) -> None:
        """Adapters of ``model`` with their directories (into ``pipe``)."""
        for name, path in paths.items():
            pipe.hset(keys.ADAPTERS, name, json.dumps({"model": model, "path": path}))

    @staticmethod
    def add_models(client: Any, models: set[str]) -> Any:
        """Make models known (``client``: the store's Redis, or a pipeline to add it to)."""
        return client.sadd(keys.MODELS_SET, *models)

    async def known_models(self) -> set[str]:
        raw: Any = await self.redis.smembers(keys.MODELS_SET)
        return {m.decode() for m in raw}

    async def is_known_model(self, model: str) -> bool:
        return bool(await self.redis.sismember(keys.MODELS_SET, model))

    async def records(self) -> dict[str, dict[str, Any]]:
        """Adapter name -> {"model": base model, "path": directory (absent for an adapter a
        worker configured itself)}."""
        raw: Any = await self.redis.hgetall(keys.ADAPTERS)
        return {name.decode(): json.loads(value) for name, value in raw.items()}

    async def parents(self) -> dict[str, str]:
        """Adapter name -> the base model it applies to."""
        return {name: record["model"] for name, record in (await self.records()).items()}

    async def paths_for(self, model: str) -> dict[str, str]:
        """Adapter name -> directory, of the adapters registered with a path for ``model``."""
        return {
            name: record["path"]
            for name, record in (await self.records()).items()
            if record.get("model") == model and record.get("path")
        }

    async def register(self, name: str, model: str, path: str) -> dict[str, str]:
        record = {"model": model, "path": path}
        await self.redis.hset(keys.ADAPTERS, name, json.dumps(record))
        return record

    async def remove(self, name: str) -> bool:
        """False when no adapter had that name."""
        return bool(await self.redis.hdel(keys.ADAPTERS, name))


class OpenAdapters:
    """The adapters opened on each worker, shared by every scheduler replica: each replica
    opens one through ``open_adapter.lua`` against the table as it read it."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._scripts = Scripts(redis)

    async def read(self, worker_ids: list[str]) -> list[dict[str, float]]:
        """Per worker: adapter -> when its quantum started, in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for worker_id in worker_ids:
            pipe.hgetall(keys.open_adapters(worker_id))
        return [
            {name.decode(): float(start) for name, start in table.items()}
            for table in await pipe.execute()
        ]

    async def open(
        self,
        worker_id: str,
        adapter: str,
        start: float,
        closes: str | None,
        closes_start: float,
        max_loras: int,
    ) -> bool:
        """Open ``adapter`` on the worker from ``start`` on, closing ``closes`` (opened at
        ``closes_start`` as read); False when another replica changed the table first."""
        return bool(
            await self._scripts["open_adapter"](
                keys=[keys.open_adapters(worker_id)],
                args=[
                    adapter,
                    repr(start),
                    closes or "",
                    repr(closes_start) if closes else "0",
                    max_loras,
                ],
            )
        )

    async def forget(self, worker_ids: list[str]) -> None:
        """The workers are gone: so are the adapters opened on them."""
        await self.redis.delete(*(keys.open_adapters(w) for w in worker_ids))
