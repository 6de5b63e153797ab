"""Files (the OpenAI Files API): a metadata hash and the file's lines beside it, both with a
TTL, indexed per tenant by creation time. Batch input is uploaded here; batch output is written
here by the finaliser."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
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


# an upload's lines live this long until the upload completes
PENDING_TTL_S = 3600
# bytes read from Redis per round trip when a file is read back
READ_BYTES = 1 << 20
# lines per RPUSH while an output file is written
WRITE_LINES = 1000


class FileStore:
    """Every file operation. A file lives ``ttl_s`` seconds unless created with its own TTL.

    A file is stored as a list of its lines, appended while it streams in and read back a
    slice at a time, so no process ever holds a whole file and Redis never copies one."""

    def __init__(self, redis: Redis, ttl_s: int) -> None:
        # redis-py types replies as unions; this client always answers bytes
        self.redis: Any = redis
        self.ttl_s = ttl_s

    # -- writing ----------------------------------------------------------------------

    async def append(self, file_id: str, lines: list[bytes]) -> None:
        """Add lines to a file being uploaded (invisible until ``commit``)."""
        if lines:
            pipe = self.redis.pipeline(transaction=False)
            pipe.rpush(keys.file_content_key(file_id), *lines)
            pipe.expire(keys.file_content_key(file_id), PENDING_TTL_S)
            await pipe.execute()

    async def discard(self, file_id: str) -> None:
        """Drop an upload that failed."""
        await self.redis.delete(keys.file_content_key(file_id))

    async def commit(
        self,
        file_id: str,
        tenant: str,
        filename: str,
        purpose: str,
        size: int,
        *,
        last: bytes = b"",
        ttl_s: int | None = None,
    ) -> dict[str, Any]:
        """Publish an uploaded file: ``last`` (what follows its last newline) as its last
        line, its record, its TTL, its place in the tenant's index."""
        now = time.time()
        ttl = ttl_s or self.ttl_s
        record = {
            "id": file_id,
            "tenant": tenant,
            "bytes": size,
            "created_at": now,
            "expires_at": now + ttl,
            "filename": filename,
            "purpose": purpose,
        }
        pipe = self.redis.pipeline(transaction=True)
        pipe.rpush(keys.file_content_key(file_id), last)
        pipe.expire(keys.file_content_key(file_id), ttl)
        pipe.hset(keys.file_key(file_id), mapping=record)
        pipe.expire(keys.file_key(file_id), ttl)
        pipe.zadd(keys.tenant_files(tenant), {file_id: now})
        await pipe.execute()
        return file_view({k.encode(): str(v).encode() for k, v in record.items()})

    async def create(
        self,
        tenant: str,
        filename: str,
        purpose: str,
        content: bytes,
        *,
        ttl_s: int | None = None,
    ) -> dict[str, Any]:
        """Store a whole file (batch output written by the finaliser); returns its view."""
        file_id = new_file_id()
        lines = content.split(b"\n")
        # commit adds the last line: what follows the final newline
        last = lines.pop()
        for start in range(0, len(lines), WRITE_LINES):
            await self.append(file_id, lines[start : start + WRITE_LINES])
        return await self.commit(
            file_id, tenant, filename, purpose, len(content), last=last, ttl_s=ttl_s
        )

    # -- reading ----------------------------------------------------------------------

    async def _record(self, file_id: str, tenant: str) -> dict[bytes, bytes] | None:
        record: dict[bytes, bytes] = await self.redis.hgetall(keys.file_key(file_id))
        if not record or record.get(b"tenant", b"").decode() != tenant:
            return None
        return record

    async def get(self, file_id: str, tenant: str) -> dict[str, Any] | None:
        """The view; None when missing or owned by another tenant."""
        record = await self._record(file_id, tenant)
        return None if record is None else file_view(record)

    async def line_count(self, file_id: str) -> int:
        """Lines stored, counting what follows the last newline as one."""
        return int(await self.redis.llen(keys.file_content_key(file_id)))

    async def lines(self, file_id: str, start: int, stop: int) -> list[bytes]:
        """Lines ``start`` to ``stop`` (exclusive), without their newlines."""
        return list(await self.redis.lrange(keys.file_content_key(file_id), start, stop - 1))

    async def iter_lines(
        self, file_id: str, per_read: int, start: int = 0
    ) -> AsyncIterator[tuple[int, list[bytes]]]:
        """(index of the first, lines) ``per_read`` lines at a time, from ``start``."""
        while True:
            lines = await self.lines(file_id, start, start + per_read)
            if not lines:
                return
            yield start, lines
            start += len(lines)

    async def content(self, file_id: str, tenant: str) -> AsyncIterator[bytes] | None:
        """The file's bytes, a slice of about ``READ_BYTES`` at a time; None when missing."""
        record = await self._record(file_id, tenant)
        if record is None:
            return None
        count = await self.line_count(file_id)
        if not count:
            return None
        # lines per read from the file's mean line length
        per_read = max(1, min(WRITE_LINES, READ_BYTES * count // max(1, int(record[b"bytes"]))))

        async def chunks() -> AsyncIterator[bytes]:
            async for first, lines in self.iter_lines(file_id, per_read):
                last = first + len(lines) == count
                yield b"\n".join(lines) + (b"" if last else b"\n")

        return chunks()

    async def read_all(self, file_id: str, tenant: str) -> bytes | None:
        """The whole file, for tests and small files."""
        chunks = await self.content(file_id, tenant)
        return None if chunks is None else b"".join([c async for c in chunks])

    # -- batches reading a file -------------------------------------------------------

    async def pin(self, file_id: str, batch_id: str, ttl_s: int) -> None:
        """Keep the file's lines at least ``ttl_s`` more seconds and while the batch runs."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.expire(keys.file_content_key(file_id), ttl_s, gt=True)
        pipe.sadd(keys.file_batches(file_id), batch_id)
        pipe.expire(keys.file_batches(file_id), ttl_s, gt=True)
        pipe.expire(keys.file_batches(file_id), ttl_s, nx=True)
        await pipe.execute()

    async def unpin(self, file_id: str, batch_id: str) -> None:
        """The batch ended: a file deleted meanwhile loses its lines once no batch reads them."""
        await self.redis.srem(keys.file_batches(file_id), batch_id)
        gone = not await self.redis.exists(keys.file_key(file_id))
        if gone and not await self.redis.scard(keys.file_batches(file_id)):
            await self.redis.delete(keys.file_content_key(file_id))

    async def delete(self, file_id: str, tenant: str) -> bool:
        if await self._record(file_id, tenant) is None:
            return False
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(keys.file_key(file_id))
        pipe.zrem(keys.tenant_files(tenant), file_id)
        pipe.scard(keys.file_batches(file_id))
        _, _, readers = await pipe.execute()
        if not readers:
            await self.redis.delete(keys.file_content_key(file_id))
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
