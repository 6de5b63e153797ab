"""The model catalog (``keys.CATALOG``): every read and write of the declared models.

Each role writes the entries of its ``BERTH_MODELS_FILE`` at start (``seed``), so whichever
starts first, Redis holds them; the admin API adds and removes entries at run time. A
declared adapter is also registered in the adapter registry (``store/adapters.py``), where
workers look adapters up by name and the API resolves them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from redis.asyncio import Redis

from berth.protocol import keys
from berth.protocol.catalog import CatalogModel
from berth.store.adapters import AdapterStore


class Catalog:
    """The declared models, shared by every role."""

    def __init__(self, redis: Redis) -> None:
        self.redis: Any = redis

    async def seed(self, models: Iterable[CatalogModel]) -> None:
        """Declare a file's models (each replacing the entry of its name) in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for model in models:
            self._put_into(pipe, model)
        await pipe.execute()

    async def put(self, model: CatalogModel) -> None:
        pipe = self.redis.pipeline(transaction=False)
        self._put_into(pipe, model)
        await pipe.execute()

    @staticmethod
    def _put_into(pipe: Any, model: CatalogModel) -> None:
        record = {"adapters": [a.model_dump(exclude_none=True) for a in model.adapters]}
        pipe.hset(keys.CATALOG, model.name, json.dumps(record, separators=(",", ":")))
        with_path = {a.name: a.path for a in model.adapters if a.path}
        without = [a.name for a in model.adapters if not a.path]
        if with_path:
            AdapterStore.register_into(pipe, model.name, with_path)
        if without:
            AdapterStore.announce_into(pipe, model.name, without)

    async def remove(self, name: str) -> bool:
        """False when no model of that name was declared. Its adapters stay registered."""
        return bool(await self.redis.hdel(keys.CATALOG, name))

    async def read(self) -> dict[str, CatalogModel]:
        raw = await self.redis.hgetall(keys.CATALOG)
        return {
            name.decode(): CatalogModel(name=name.decode(), **json.loads(value))
            for name, value in raw.items()
        }

    async def names(self) -> set[str]:
        return {name.decode() for name in await self.redis.hkeys(keys.CATALOG)}
