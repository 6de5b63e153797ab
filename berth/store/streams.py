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

    async def attach(self, request_id: str, owner: str | None = None, ttl_s: int = 0) -> None:
        """A client resumed (through API instance ``owner``): a pending end of the stream is
        off, and the stream lives and dies with ``owner`` from now on."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.delete(keys.detached_key(request_id))
        if owner:
            pipe.set(keys.stream_owner(request_id), owner, ex=max(1, ttl_s))
        await pipe.execute()

    async def owned(self, request_ids: list[str]) -> list[tuple[str | None, bytes | None]]:
        """Per request: the API instance that resumed it last (None: its origin still holds
        it) and its resume record (None: not resumable)."""
        pipe = self._redis.pipeline(transaction=False)
        for request_id in request_ids:
            pipe.get(keys.stream_owner(request_id))
            pipe.get(keys.resume_key(request_id))
        raw = await pipe.execute()
        return [
            (owner.decode() if owner is not None else None, record)
            for owner, record in zip(raw[::2], raw[1::2], strict=True)
        ]

    async def adopt(self, request_id: str, grace_s: float) -> str:
        """The API process holding a resumable stream died: mark the stream detached, or take
        over the mark it set before it died; returns the token ``end_if_detached`` checks."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.set(keys.detached_key(request_id), uuid.uuid4().hex, ex=int(grace_s) + 60, nx=True)
        pipe.get(keys.detached_key(request_id))
        _, token = await pipe.execute()
        return token.decode() if isinstance(token, bytes) else str(token)

    async def end_if_detached(self, request_id: str, token: str) -> bool:
        """True (and the marker gone) when nobody resumed since ``detach`` gave ``token``."""
        return bool(
            await self._scripts["end_detached"](keys=[keys.detached_key(request_id)], args=[token])
        )
