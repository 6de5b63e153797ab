"""Reads the worker registry (heartbeat records with a TTL); shared by the API and scheduler."""

from __future__ import annotations

import logging

from pydantic import ValidationError
from redis.asyncio import Redis

from berth.protocol import keys
from berth.protocol.envelopes import WorkerInfo

log = logging.getLogger(__name__)


async def live_workers(redis: Redis) -> list[WorkerInfo]:
    """Every worker whose heartbeat has not expired."""
    names = [name async for name in redis.scan_iter(match=f"{keys.WORKER_KEY_PREFIX}*", count=500)]
    if not names:
        return []
    workers = []
    for raw in await redis.mget(names):
        if raw is None:  # expired between SCAN and MGET
            continue
        try:
            workers.append(WorkerInfo.model_validate_json(raw))
        except ValidationError:
            log.warning("ignoring a malformed worker record: %r", raw[:200])
    return workers


def models_served(workers: list[WorkerInfo]) -> dict[str, set[str]]:
    """Base model -> adapters offered by at least one live worker."""
    out: dict[str, set[str]] = {}
    for worker in workers:
        out.setdefault(worker.model, set()).update(worker.adapters)
    return out
