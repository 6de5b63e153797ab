"""Loads the Lua scripts of this package once per Redis client."""

from __future__ import annotations

from functools import cache
from importlib import resources

from redis.asyncio import Redis
from redis.commands.core import AsyncScript


@cache
def _source(name: str) -> str:
    return resources.files("berth.store").joinpath("lua", f"{name}.lua").read_text()


class Scripts:
    """The store's scripts registered on one client (EVALSHA, loading on first use)."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._scripts: dict[str, AsyncScript] = {}

    def __getitem__(self, name: str) -> AsyncScript:
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = self._redis.register_script(_source(name))
        return script
