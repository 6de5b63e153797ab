"""Batch records (the OpenAI Batch API): a batch is a hash plus the list of its jobs in
input order; each line of the input file becomes an ordinary job in the batch lane when
the batch reaches it (``feed``), a window at a time, so a batch's lines exist once.

A batch moves validating → in_progress → finalizing → completed, or to cancelling →
cancelled, expired, or failed. Every move that could race is a Lua script in ``lua/``:
changing status, recording scan progress (compare-and-set), and taking and committing
the finalisation, so two scheduler replicas finalise a batch once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import LockError

from berth.protocol import keys
from berth.protocol.batch_input import Resolved, batch_request
from berth.protocol.envelopes import QueuedRequest, event_json
from berth.protocol.errors import BerthError, Timeout
from berth.protocol.limits import RequestLimits
from berth.store import queue
from berth.store.adapters import AdapterStore
from berth.store.files import FileStore
from berth.store.jobs import TERMINAL_STATUSES, JobStore, new_job_id
from berth.store.paging import index_page
from berth.store.scripts import Scripts
from berth.store.webhooks import OUTBOX_KEYS, new_event_id

TERMINAL_BATCH_STATUSES = frozenset({"completed", "failed", "expired", "cancelled"})
# jobs created, read or ended per pipeline
CHUNK = 1000
# a process feeding a batch that has not finished within this long is presumed dead
FEED_LOCK_S = 300
# the record's counts of jobs that ended: the scanned prefix and those ended past it (the
# rest of those listed are live, or ended since the last scan)
_ENDED_COUNTS = ("scanned", "ahead_completed", "ahead_failed")
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


def _resolved(raw: bytes) -> dict[tuple[str, str | None], tuple[str, str | None]]:
    return {(name, lora): (model, adapter) for name, lora, model, adapter in json.loads(raw)}


def _requests(
    raws: list[bytes],
    limits: RequestLimits,
    resolved: Resolved,
    tenant: str,
    deadline: float,
) -> list[tuple[str, QueuedRequest]]:
    return [
        batch_request(raw, limits, resolved, job_id=new_job_id(), tenant=tenant, deadline=deadline)
        for raw in raws
    ]


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


async def active_batches(redis: Redis) -> list[str]:
    """The ids of the batches not yet finalised, in order."""
    members: Any = await redis.smembers(keys.BATCHES_ACTIVE)
    return [raw.decode() for raw in sorted(members)]


async def forget_active(redis: Redis, batch_id: str) -> None:
    """The batch is no longer watched (it ended, or its record expired)."""
    await redis.srem(keys.BATCHES_ACTIVE, batch_id)


async def load_record(redis: Redis, batch_id: str) -> dict[bytes, bytes]:
    """A batch's raw record ({} when missing), read before its ``ttl_s`` is known."""
    record: Any = await redis.hgetall(keys.batch_key(batch_id))
    return dict(record)


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
        *,
        input_file_id: str,
        total: int,
        resolved: Resolved,
        limits: RequestLimits,
        window: int,
        endpoint: str,
        completion_window: str,
        created_at: float,
        expires_at: float,
        metadata: dict[str, str] | None = None,
        output_ttl_s: int | None = None,
        webhook: str | None = None,
    ) -> dict[str, Any]:
        """Record a batch of ``total`` requests, the non-blank lines of ``input_file_id``
        (already checked, their models ``resolved``), queue its first ``window`` and start it.

        The lines are never copied: they stay in the input file (kept while the batch runs)
        and ``feed`` turns the next ones into jobs as earlier ones end, so at most
        ``window`` of them exist as job records and queue entries at once. The batch is
        active (watched by finalisers) from the first step, shown as validating until its
        first window is queued; a creation that dies half way is failed by a finaliser
        later (see ``scheduler/batches.py``). ``webhook``: the URL its end event goes to.
        """
        batch_id = new_batch_id()
        ttl = int(expires_at - created_at) + self.ttl_s
        names = {name for name, _ in resolved}
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
            "model": names.pop() if len(names) == 1 else "",
            "total": total,
            "ttl_s": self.ttl_s,
            "output_ttl_s": output_ttl_s or self.ttl_s,
            "window": window,
            "cursor": 0,
            "resolved": json.dumps([[*key, *value] for key, value in resolved.items()]),
            "limits": limits.model_dump_json(),
            "webhook": webhook or "",
        }
        await FileStore(self.redis, self.ttl_s).pin(input_file_id, batch_id, ttl)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(keys.batch_key(batch_id), mapping=record)
        pipe.expire(keys.batch_key(batch_id), ttl)
        pipe.zadd(keys.tenant_batches(tenant), {batch_id: created_at})
        pipe.sadd(keys.BATCHES_ACTIVE, batch_id)
        # the scheduler reads the lanes of every model in this set
        AdapterStore.add_models(pipe, {model for model, _ in resolved.values()})
        await pipe.execute()
        await self.feed(batch_id)
        await self.transition(batch_id, "in_progress", "in_progress_at", ("validating",))
        return await self.get(batch_id) or {}

    # -- feeding ----------------------------------------------------------------------

    def feed_lock(self, batch_id: str) -> Any:
        """The lock that makes feeding a batch, and counting its never-fed lines, one
        process's work at a time."""
        return self.redis.lock(
            keys.batch_feed_lock(batch_id), timeout=FEED_LOCK_S, blocking_timeout=0
        )

    async def feed(self, batch_id: str) -> int:
        """Queue the batch's next lines as jobs, up to its window of live ones; returns how
        many. A no-op unless the batch is validating or in progress, or when another
        process is feeding it."""
        lock = self.feed_lock(batch_id)
        if not await lock.acquire():
            return 0
        try:
            return await self._feed(batch_id)
        finally:
            with contextlib.suppress(LockError):
                await lock.release()

    async def _feed(self, batch_id: str) -> int:
        record = await self.record(batch_id)
        if record is None or _str(record, "status") not in ("validating", "in_progress"):
            return 0
        expires_at = float(record[b"expires_at"])
        listed = int(await self.redis.llen(keys.batch_jobs(batch_id)))
        live = listed - sum(_int(record, f) for f in _ENDED_COUNTS)
        room = min(_int(record, "window") - live, _int(record, "total") - listed)
        fed = 0
        cursor = _int(record, "cursor")
        while fed < room and time.time() < expires_at:
            raws, cursor = await self._next_lines(record, cursor, min(CHUNK, room - fed))
            if not raws:
                break
            await self._queue(batch_id, record, raws, cursor)
            fed += len(raws)
        return fed

    async def _queue(
        self, batch_id: str, record: dict[bytes, bytes], raws: list[bytes], cursor: int
    ) -> None:
        """Create and queue one job per line, and move the cursor past them, in one step."""
        tenant = record[b"tenant"].decode()
        expires_at = float(record[b"expires_at"])
        # parsing a thousand lines takes a moment: off the event loop
        built = await asyncio.to_thread(
            _requests,
            raws,
            RequestLimits.model_validate_json(record[b"limits"]),
            _resolved(record[b"resolved"]),
            tenant,
            expires_at,
        )
        ttl = int(expires_at - time.time()) + self.ttl_s
        jobs = JobStore(self.redis, ttl)
        pipe = self.redis.pipeline(transaction=True)
        for custom_id, queued in built:
            script, script_keys, args = jobs.create_call(
                queued, tenant=tenant, batch_id=batch_id, custom_id=custom_id
            )
            await script(keys=script_keys, args=args, client=pipe)
        pipe.rpush(keys.batch_jobs(batch_id), *(queued.id for _, queued in built))
        pipe.expire(keys.batch_jobs(batch_id), ttl)
        pipe.hset(keys.batch_key(batch_id), "cursor", cursor)
        await pipe.execute()

    async def _next_lines(
        self, record: dict[bytes, bytes], cursor: int, count: int
    ) -> tuple[list[bytes], int]:
        """Up to ``count`` non-blank lines from ``cursor``, and the cursor after them."""
        files = FileStore(self.redis, self.ttl_s)
        file_id = record[b"input_file_id"].decode()
        raws: list[bytes] = []
        while len(raws) < count:
            lines = await files.lines(file_id, cursor, cursor + count - len(raws))
            if not lines:  # the file's lines expired: the batch will expire with the rest
                break
            for line in lines:
                cursor += 1
                if line.strip():
                    raws.append(line)
        return raws, cursor

    async def unfed_lines(self, record: dict[bytes, bytes]) -> AsyncIterator[bytes]:
        """The non-blank lines never turned into jobs (a batch that ended early)."""
        files = FileStore(self.redis, self.ttl_s)
        file_id = record[b"input_file_id"].decode()
        async for _, lines in files.iter_lines(file_id, CHUNK, _int(record, "cursor")):
            for line in lines:
                if line.strip():
                    yield line

    # -- reading ----------------------------------------------------------------------

    async def record(self, batch_id: str, tenant: str | None = None) -> dict[bytes, bytes] | None:
        """The raw record; None when missing or owned by another tenant."""
        record = await load_record(self.redis, batch_id)
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

    async def drop_payloads(self, job_ids: list[str]) -> None:
        """Forget the request of ended jobs: a batch's result files need only their results,
        so a batch's requests never outlive its window of live jobs."""
        if job_ids:
            pipe = self.redis.pipeline(transaction=False)
            for job_id in job_ids:
                pipe.hdel(keys.job_key(job_id), "payload")
            await pipe.execute()

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

    async def listed(self, batch_id: str) -> int:
        """How many of the batch's lines were queued as jobs so far."""
        return int(await self.redis.llen(keys.batch_jobs(batch_id)))

    async def end_all(self, batch_id: str, status: str) -> None:
        """End every job of the batch that has not ended (see ``end_jobs``)."""
        listed = await self.listed(batch_id)
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
            # only workers that may hold it are told: a batch's queued jobs are many
            queue.mark_cancelled(pipe, job_id, tell_workers=bool(worker) or was == b"running")
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
            keys=[
                keys.batch_key(batch_id),
                keys.BATCHES_ACTIVE,
                keys.batch_jobs(batch_id),
                *OUTBOX_KEYS,
            ],
            args=[
                token,
                status,
                time.time(),
                output_file_id or "",
                error_file_id or "",
                json.dumps({"object": "list", "data": errors}) if errors else "",
                ttl_s,
                batch_id,
                new_event_id(),
            ],
        )
        return final.decode() or None
