"""Loads a package's Lua scripts (its ``lua/*.lua``) once per Redis client: the store's own
(``berth/store/lua/``) and those of a concern that owns records of its own, such as the
per-tenant limits (``berth/limits/lua/``)."""

from __future__ import annotations

from functools import cache
from importlib import resources

from redis.asyncio import Redis
from redis.commands.core import AsyncScript


@cache
def _source(package: str, name: str) -> str:
    return resources.files(package).joinpath("lua", f"{name}.lua").read_text()


class Scripts:
    """One package's scripts registered on one client (EVALSHA, loading on first use)."""

    def __init__(self, redis: Redis, package: str = "berth.store") -> None:
        self._redis = redis
        self._package = package
        self._scripts: dict[str, AsyncScript] = {}

    def __getitem__(self, name: str) -> AsyncScript:
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = self._redis.register_script(_source(self._package, name))
        return script
