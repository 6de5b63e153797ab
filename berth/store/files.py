"""Files (the OpenAI Files API): a metadata hash and the bytes beside it, both with a TTL,
indexed per tenant by creation time. Batch input is uploaded here; batch output is written
here by the finaliser."""

from __future__ import annotations

import secrets
import time
from typing import Any

from redis.asyncio import Redis

from berth.protocol import keys
from berth.store.paging import index_page

# what a client may upload, and what berth writes for a finished batch
UPLOAD_PURPOSES = ("batch",)
OUTPUT_PURPOSE = "batch_output"


def new_file_id() -> str:
    """An unguessable id (128 random bits)."""
    return f"file-{secrets.token_hex(16)}"


def file_view(record: dict[bytes, bytes]) -> dict[str, Any]:
    """The record as the API shows it (OpenAI's ``FileObject``)."""
    return {
        "id": record[b"id"].decode(),
        "object": "file",
        "bytes": int(record[b"bytes"]),
        "created_at": int(float(record[b"created_at"])),
        "expires_at": int(float(record[b"expires_at"])),
        "filename": record[b"filename"].decode(),
        "purpose": record[b"purpose"].decode(),
        "status": "processed",
        "status_details": None,
    }


class FileStore:
    """Every file operation. A file lives ``ttl_s`` seconds unless created with its own TTL."""

    def __init__(self, redis: Redis, ttl_s: int) -> None:
        # redis-py types replies as unions; this client always answers bytes
        self.redis: Any = redis
        self.ttl_s = ttl_s

    async def create(
        self,
        tenant: str,
        filename: str,
        purpose: str,
        content: bytes,
        *,
        ttl_s: int | None = None,
    ) -> dict[str, Any]:
        """Store a file; returns its view."""
        file_id = new_file_id()
        now = time.time()
        ttl = ttl_s or self.ttl_s
        record = {
            "id": file_id,
            "tenant": tenant,
            "bytes": len(content),
            "created_at": now,
            "expires_at": now + ttl,
            "filename": filename,
            "purpose": purpose,
        }
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(keys.file_content_key(file_id), content, ex=ttl)
        pipe.hset(keys.file_key(file_id), mapping=record)
        pipe.expire(keys.file_key(file_id), ttl)
        pipe.zadd(keys.tenant_files(tenant), {file_id: now})
        await pipe.execute()
        return file_view({k.encode(): str(v).encode() for k, v in record.items()})

    async def _record(self, file_id: str, tenant: str) -> dict[bytes, bytes] | None:
        record: dict[bytes, bytes] = await self.redis.hgetall(keys.file_key(file_id))
        if not record or record.get(b"tenant", b"").decode() != tenant:
            return None
        return record

    async def get(self, file_id: str, tenant: str) -> dict[str, Any] | None:
        """The view; None when missing or owned by another tenant."""
        record = await self._record(file_id, tenant)
        return None if record is None else file_view(record)

    async def content(self, file_id: str, tenant: str) -> bytes | None:
        if await self._record(file_id, tenant) is None:
            return None
        content: bytes | None = await self.redis.get(keys.file_content_key(file_id))
        return content

    async def delete(self, file_id: str, tenant: str) -> bool:
        if await self._record(file_id, tenant) is None:
            return False
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(keys.file_key(file_id), keys.file_content_key(file_id))
        pipe.zrem(keys.tenant_files(tenant), file_id)
        await pipe.execute()
        return True

    async def list_files(
        self,
        tenant: str,
        *,
        after: str | None,
        limit: int,
        descending: bool = True,
        purpose: str | None = None,
    ) -> tuple[list[dict[str, Any]], bool]:
        """A tenant's files by creation time (newest first unless ``descending`` is false)."""

        async def load(ids: list[bytes]) -> list[dict[str, Any] | None]:
            pipe = self.redis.pipeline(transaction=False)
            for raw in ids:
                pipe.hgetall(keys.file_key(raw.decode()))
            return [file_view(r) if r else None for r in await pipe.execute()]

        return await index_page(
            self.redis,
            keys.tenant_files(tenant),
            load,
            after=after,
            limit=limit,
            descending=descending,
            keep=lambda f: purpose is None or f["purpose"] == purpose,
        )
