"""Batch records (the OpenAI Batch API): a batch is a hash plus the list of its jobs in
input order; each line of the input file is an ordinary job in the batch lane.

A batch moves validating → in_progress → finalizing → completed, or to cancelling →
cancelled, expired, or failed. Every move that could race is a Lua script in ``lua/``:
changing status, recording scan progress (compare-and-set), and taking and committing
the finalisation, so two scheduler replicas finalise a batch once.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from berth.protocol import keys
from berth.protocol.envelopes import QueuedRequest, event_json
from berth.protocol.errors import BerthError, Timeout
from berth.store.adapters import AdapterStore
from berth.store.jobs import TERMINAL_STATUSES, JobStore
from berth.store.paging import index_page
from berth.store.scripts import Scripts

TERMINAL_BATCH_STATUSES = frozenset({"completed", "failed", "expired", "cancelled"})
# jobs created, read or ended per pipeline
CHUNK = 1000
# what ending a job needs to know of it: whether it is live, and whether a worker has it
LIVE_FIELDS = ("status", "worker")
# the public view's optional timestamps
_STAMPS = (
    "in_progress_at",
    "expires_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
)


def new_batch_id() -> str:
    """An unguessable id (128 random bits)."""
    return f"batch_{secrets.token_hex(16)}"


def _str(record: dict[bytes, bytes], name: str) -> str | None:
    return (record.get(name.encode()) or b"").decode() or None


def _int(record: dict[bytes, bytes], name: str) -> int:
    raw = record.get(name.encode())
    return int(float(raw)) if raw else 0


def batch_view(record: dict[bytes, bytes]) -> dict[str, Any]:
    """The record as the API shows it (OpenAI's ``Batch``)."""
    errors = _str(record, "errors")
    view: dict[str, Any] = {
        "id": _str(record, "id"),
        "object": "batch",
        "endpoint": _str(record, "endpoint"),
        "errors": json.loads(errors) if errors else None,
        "input_file_id": _str(record, "input_file_id"),
        "completion_window": _str(record, "completion_window"),
        "status": _str(record, "status"),
        "output_file_id": _str(record, "output_file_id"),
        "error_file_id": _str(record, "error_file_id"),
        "created_at": _int(record, "created_at"),
    }
    for stamp in _STAMPS:
        view[stamp] = _int(record, stamp) or None
    metadata = _str(record, "metadata")
    view["metadata"] = json.loads(metadata) if metadata else None
    view["model"] = _str(record, "model")
    view["request_counts"] = {
        "total": _int(record, "total"),
        "completed": _int(record, "done_completed") + _int(record, "ahead_completed"),
        "failed": _int(record, "done_failed") + _int(record, "ahead_failed"),
    }
    return view


@dataclass(frozen=True)
class BatchLine:
    """One input line as a job to create."""

    custom_id: str
    queued: QueuedRequest


@dataclass(frozen=True)
class Scan:
    """What one pass over a batch's jobs found; ``scanned`` counts the terminal prefix."""

    scanned: int
    total: int

    @property
    def done(self) -> bool:
        return self.scanned >= self.total


def ending_event(job_id: str, status: str, err: BerthError) -> str:
    """The terminal event of a job ended from outside (the batch was cancelled or expired)."""
    return event_json(job_id, "cancelled" if status == "cancelled" else "error", error=err)


class BatchStore:
    """Every batch operation. Batch records, job lists and jobs live ``ttl_s`` seconds
    past the end of the completion window; a finished batch ``ttl_s`` past its end."""

    def __init__(self, redis: Redis, ttl_s: int) -> None:
        # redis-py types replies as unions; this client always answers bytes
        self.redis: Any = redis
        self.ttl_s = ttl_s
        self._scripts = Scripts(redis)

    # -- creation ---------------------------------------------------------------------

    async def create(
        self,
        tenant: str,
        lines: Sequence[BatchLine],
        *,
        input_file_id: str,
        endpoint: str,
        completion_window: str,
        created_at: float,
        expires_at: float,
        metadata: dict[str, str] | None = None,
        output_ttl_s: int | None = None,
    ) -> dict[str, Any]:
        """Record the batch, then create and queue its jobs a pipeline at a time, then start it.

        The batch is active (watched by finalisers) from the first step, shown as
        validating until every job is queued; a creation that dies half way is failed by
        a finaliser later (see ``scheduler/batches.py``).
        """
        batch_id = new_batch_id()
        ttl = int(expires_at - created_at) + self.ttl_s
        models = {line.queued.request.get("model", line.queued.model) for line in lines}
        record: dict[str, Any] = {
            "id": batch_id,
            "tenant": tenant,
            "endpoint": endpoint,
            "input_file_id": input_file_id,
            "completion_window": completion_window,
            "status": "validating",
            "created_at": created_at,
            "expires_at": expires_at,
            "metadata": json.dumps(metadata) if metadata else "",
            "model": models.pop() if len(models) == 1 else "",
            "total": len(lines),
            "ttl_s": self.ttl_s,
            "output_ttl_s": output_ttl_s or self.ttl_s,
        }
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(keys.batch_key(batch_id), mapping=record)
        pipe.expire(keys.batch_key(batch_id), ttl)
        pipe.zadd(keys.tenant_batches(tenant), {batch_id: created_at})
        pipe.sadd(keys.BATCHES_ACTIVE, batch_id)
        # the scheduler reads the lanes of every model in this set
        if lines:
            AdapterStore.add_models(pipe, {line.queued.model for line in lines})
        await pipe.execute()

        jobs = JobStore(self.redis, ttl)
        for start in range(0, len(lines), CHUNK):
            chunk = lines[start : start + CHUNK]
            pipe = self.redis.pipeline(transaction=False)
            for line in chunk:
                script, script_keys, args = jobs.create_call(
                    line.queued, tenant=tenant, batch_id=batch_id, custom_id=line.custom_id
                )
                await script(keys=script_keys, args=args, client=pipe)
            pipe.rpush(keys.batch_jobs(batch_id), *(line.queued.id for line in chunk))
            pipe.expire(keys.batch_jobs(batch_id), ttl)
            await pipe.execute()
        await self.transition(batch_id, "in_progress", "in_progress_at", ("validating",))
        return await self.get(batch_id) or {}

    # -- reading ----------------------------------------------------------------------

    async def record(self, batch_id: str, tenant: str | None = None) -> dict[bytes, bytes] | None:
        """The raw record; None when missing or owned by another tenant."""
        record: dict[bytes, bytes] = await self.redis.hgetall(keys.batch_key(batch_id))
        if not record or (tenant is not None and _str(record, "tenant") != tenant):
            return None
        return record

    async def get(self, batch_id: str, tenant: str | None = None) -> dict[str, Any] | None:
        record = await self.record(batch_id, tenant)
        return None if record is None else batch_view(record)

    async def list_batches(
        self, tenant: str, *, after: str | None, limit: int
    ) -> tuple[list[dict[str, Any]], bool]:
        """A tenant's batches, newest first, starting after the batch id ``after``."""

        async def load(ids: list[bytes]) -> list[dict[str, Any] | None]:
            pipe = self.redis.pipeline(transaction=False)
            for raw in ids:
                pipe.hgetall(keys.batch_key(raw.decode()))
            return [batch_view(r) if r else None for r in await pipe.execute()]

        return await index_page(
            self.redis, keys.tenant_batches(tenant), load, after=after, limit=limit
        )

    async def job_ids(self, batch_id: str, start: int, stop: int) -> list[str]:
        """Job ids ``start`` to ``stop`` (exclusive) in input order."""
        raw = await self.redis.lrange(keys.batch_jobs(batch_id), start, stop - 1)
        return [r.decode() for r in raw]

    async def job_fields(self, job_ids: list[str], *fields: str) -> list[list[bytes | None]]:
        """``fields`` of each job, pipelined (a job whose record expired reads as Nones)."""
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hmget(keys.job_key(job_id), list(fields))
        return list(await pipe.execute())

    # -- state changes ----------------------------------------------------------------

    async def transition(
        self, batch_id: str, status: str, stamp: str, allowed: Sequence[str]
    ) -> str | None:
        """Move the batch to ``status`` if it is in one of ``allowed``; returns the status it
        had (None: no such batch)."""
        before = await self._scripts["transition_batch"](
            keys=[keys.batch_key(batch_id)], args=[status, stamp, time.time(), *allowed]
        )
        return before.decode() or None

    async def cancel(self, batch_id: str) -> str | None:
        """Start cancelling: returns the status the batch had; when that was validating or
        in_progress, every job not yet ended is cancelled now (a finaliser repeats this for
        jobs a creation still adds, then ends the batch as cancelled)."""
        before = await self.transition(
            batch_id, "cancelling", "cancelling_at", ("validating", "in_progress")
        )
        if before in ("validating", "in_progress"):
            await self.end_all(batch_id, "cancelled")
        return before

    async def end_all(self, batch_id: str, status: str) -> None:
        """End every job of the batch that has not ended (see ``end_jobs``)."""
        listed = await self.redis.llen(keys.batch_jobs(batch_id))
        for start in range(0, listed, CHUNK):
            ids = await self.job_ids(batch_id, start, start + CHUNK)
            await self.end_jobs(ids, await self.job_fields(ids, *LIVE_FIELDS), status)

    async def end_jobs(
        self, job_ids: list[str], rows: list[list[bytes | None]], status: str
    ) -> int:
        """End the jobs among ``job_ids`` that are not terminal (``rows``: their LIVE_FIELDS
        as read) with ``status``, cancelled or expired. The scheduler drops a queued one on
        its cancel marker, a worker claims none that ended, and a worker holding one aborts
        it when told. Returns how many were ended."""
        err: BerthError
        if status == "cancelled":
            err = BerthError("the batch was cancelled", code="batch_cancelled")
        else:
            err = Timeout("the batch expired before the request ran", code="batch_expired")
        jobs = JobStore(self.redis, self.ttl_s)
        pipe = self.redis.pipeline(transaction=False)
        ended = 0
        for job_id, (was, worker) in zip(job_ids, rows, strict=True):
            if was is None or was.decode() in TERMINAL_STATUSES:
                continue
            ended += 1
            script, script_keys, args = jobs.finish_call(
                job_id, None, status, error=err.body(), event=ending_event(job_id, status, err)
            )
            await script(keys=script_keys, args=args, client=pipe)
            pipe.set(keys.cancelled_key(job_id), b"1", ex=3600)
            # only workers that may hold it are told: a batch's queued jobs are many
            if worker or was == b"running":
                pipe.publish(keys.CANCEL_CHANNEL, job_id)
        if ended:
            await pipe.execute()
        return ended

    async def record_scan(
        self,
        batch_id: str,
        read: int,
        scanned: int,
        done: Mapping[str, int],
        ahead: Mapping[str, int],
    ) -> bool:
        """Store a scan's progress unless another scan from the same position won."""
        return bool(
            await self._scripts["advance_batch"](
                keys=[keys.batch_key(batch_id)],
                args=[
                    read,
                    scanned,
                    done.get("succeeded", 0),
                    done.get("failed", 0),
                    done.get("expired", 0),
                    ahead.get("succeeded", 0),
                    ahead.get("failed", 0),
                ],
            )
        )

    async def claim(self, batch_id: str, token: str, stale_s: float) -> bool:
        """Take the batch for finalisation unless a live finaliser holds it."""
        return bool(
            await self._scripts["claim_batch"](
                keys=[keys.batch_key(batch_id)], args=[token, time.time(), stale_s]
            )
        )

    async def commit(
        self,
        batch_id: str,
        token: str,
        status: str,
        *,
        ttl_s: int,
        output_file_id: str | None = None,
        error_file_id: str | None = None,
        errors: list[dict[str, Any]] | None = None,
    ) -> str | None:
        """Record the outcome if ``token`` still holds the batch; returns the final status."""
        final = await self._scripts["commit_batch"](
            keys=[keys.batch_key(batch_id), keys.BATCHES_ACTIVE, keys.batch_jobs(batch_id)],
            args=[
                token,
                status,
                time.time(),
                output_file_id or "",
                error_file_id or "",
                json.dumps({"object": "list", "data": errors}) if errors else "",
                ttl_s,
                batch_id,
            ],
        )
        return final.decode() or None
