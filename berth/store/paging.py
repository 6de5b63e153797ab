"""Cursor pages over a tenant's index (a sorted set of ids by creation time), as OpenAI's list
endpoints page: ``after`` an id, up to ``limit``, and whether more follow. Jobs, files and
batches all page through here."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

Loader = Callable[[list[bytes]], Awaitable[list[dict[str, Any] | None]]]


async def index_page(
    redis: Any,
    index: str,
    load: Loader,
    *,
    after: str | None,
    limit: int,
    descending: bool = True,
    keep: Callable[[dict[str, Any]], bool] = lambda _: True,
) -> tuple[list[dict[str, Any]], bool]:
    """Up to ``limit`` objects of a tenant's index (a sorted set by creation time) after the id
    ``after``, and whether more follow. ``load`` turns ids into objects (None: expired, and
    then dropped from the index); ``keep`` filters them."""
    start = 0
    if after is not None:
        rank = await (redis.zrevrank if descending else redis.zrank)(index, after)
        if rank is None:
            return [], False
        start = rank + 1
    read = redis.zrevrange if descending else redis.zrange
    out: list[dict[str, Any]] = []
    while True:
        ids = await read(index, start, start + limit)
        if not ids:
            return out, False
        start += len(ids)
        loaded = await load(ids)
        gone = [raw for raw, obj in zip(ids, loaded, strict=True) if obj is None]
        if gone:
            await redis.zrem(index, *gone)
        for obj in loaded:
            if obj is None or not keep(obj):
                continue
            if len(out) == limit:
                return out, True
            out.append(obj)
