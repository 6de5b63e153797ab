"""Resumable chat streams: who may resume one and how it renders (``keys.resume_key``), and
the marker of a stream whose client left (``keys.detached_key``). The events themselves are
in the request's event stream, written by the worker."""

from __future__ import annotations

import uuid

from redis.asyncio import Redis

from berth.protocol import keys
from berth.protocol.envelopes import ResumableStream
from berth.store.scripts import Scripts


class StreamStore:
    """The API's records of resumable streams."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._scripts = Scripts(redis)

    async def save(self, request_id: str, record: ResumableStream, ttl_s: int) -> None:
        await self._redis.set(keys.resume_key(request_id), record.model_dump_json(), ex=ttl_s)

    async def load(self, request_id: str) -> ResumableStream | None:
        """The record while the request can be resumed: its events are still kept."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.get(keys.resume_key(request_id))
        pipe.exists(keys.request_events(request_id))
        raw, events = await pipe.execute()
        if raw is None or not events:
            return None
        return ResumableStream.model_validate_json(raw)

    async def detach(self, request_id: str, grace_s: float) -> str:
        """Note that the client left; returns the token ``end_if_detached`` checks."""
        token = uuid.uuid4().hex
        await self._redis.set(keys.detached_key(request_id), token, ex=int(grace_s) + 60)
        return token

    async def attach(self, request_id: str) -> None:
        """A client resumed: a pending end of the stream is off."""
        await self._redis.delete(keys.detached_key(request_id))

    async def end_if_detached(self, request_id: str, token: str) -> bool:
        """True (and the marker gone) when nobody resumed since ``detach`` gave ``token``."""
        return bool(
            await self._scripts["end_detached"](keys=[keys.detached_key(request_id)], args=[token])
        )
