"""Job records: created with their queue entry in one step, claimed, finished and requeued
atomically, listed per tenant, and their events kept in a capped stream."""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from berth.protocol import keys
from berth.protocol.envelopes import QueuedRequest
from berth.store import queue
from berth.store.paging import index_page
from berth.store.scripts import Scripts
from berth.store.webhooks import JOB_EVENT_TYPES, OUTBOX_KEYS, new_event_id

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled", "expired"})


def terminal_status(event_type: str, http_status: int | None) -> str:
    """A job's status from its request's terminal event."""
    if event_type == "finished":
        return "succeeded"
    if event_type == "cancelled":
        return "cancelled"
    return "expired" if http_status == 504 else "failed"


# events kept per job; a completion of more tokens than this keeps its latest events
EVENTS_MAXLEN = 20_000


def append_command(stream: str, payload: str, maxlen: int) -> tuple[bytes, ...]:
    """A job's event added to its capped stream (``keys.job_events``), as the worker's
    publisher sends it with the other writes of a loop turn."""
    return (b"XADD", stream.encode(), b"MAXLEN", b"~", b"%d" % maxlen, b"*", b"e",
            payload.encode())  # fmt: skip


def new_job_id() -> str:
    """An unguessable id (128 random bits)."""
    return f"job_{secrets.token_hex(16)}"


def _dumps(value: Any) -> str:
    return "" if value is None else json.dumps(value, separators=(",", ":"))


def _loads(raw: bytes | None) -> Any:
    return json.loads(raw) if raw else None


def _num(raw: bytes | None) -> int | None:
    return int(float(raw)) if raw else None


def public_view(record: dict[bytes, bytes]) -> dict[str, Any]:
    """The record as the API shows it."""
    return {
        "id": record[b"id"].decode(),
        "object": "job",
        "status": record[b"status"].decode(),
        "model": record[b"model"].decode(),
        "created_at": _num(record.get(b"created_at")),
        "started_at": _num(record.get(b"started_at")),
        "finished_at": _num(record.get(b"finished_at")),
        "attempts": int(record.get(b"attempt", b"0")) + 1,
        "metadata": _loads(record.get(b"metadata")),
        "batch_id": (record.get(b"batch_id") or b"").decode() or None,
        "custom_id": (record.get(b"custom_id") or b"").decode() or None,
        "result": _loads(record.get(b"result")),
        "error": _loads(record.get(b"error")),
    }


class JobStore:
    """Every job operation; ``scripts`` are the package's Lua scripts on the same client."""

    def __init__(self, redis: Redis, ttl_s: int) -> None:
        # redis-py types replies as unions of str, bytes and awaitables; this client
        # always answers bytes, so the store reads replies untyped
        self.redis: Any = redis
        self.ttl_s = ttl_s
        self._scripts = Scripts(redis)

    async def create(
        self,
        queued: QueuedRequest,
        *,
        tenant: str,
        idempotency_key: str | None = None,
        metadata: dict[str, Any] | None = None,
        batch_id: str | None = None,
        custom_id: str | None = None,
        webhook: str | None = None,
    ) -> tuple[str, bool]:
        """Record and queue a job. Returns (job id, created); an idempotency key seen
        before returns the job it created and queues nothing. ``webhook``: the URL its end
        event goes to."""
        script, script_keys, args = self.create_call(
            queued,
            tenant=tenant,
            idempotency_key=idempotency_key,
            metadata=metadata,
            batch_id=batch_id,
            custom_id=custom_id,
            webhook=webhook,
        )
        job_id = await script(keys=script_keys, args=args)
        job_id = job_id.decode() if isinstance(job_id, bytes) else str(job_id)
        return job_id, job_id == queued.id

    def create_call(
        self,
        queued: QueuedRequest,
        *,
        tenant: str,
        idempotency_key: str | None = None,
        metadata: dict[str, Any] | None = None,
        batch_id: str | None = None,
        custom_id: str | None = None,
        webhook: str | None = None,
    ) -> tuple[AsyncScript, list[str], list[Any]]:
        """The script call that records and queues a job, for running now or in a pipeline
        (a batch creates its jobs a pipeline at a time)."""
        now = time.time()
        fields: dict[str, Any] = {
            "id": queued.id,
            "tenant": tenant,
            "status": "queued",
            "model": queued.request.get("model", queued.model),
            "created_at": now,
            "attempt": queued.attempt,
            "lane": queued.lane,
            "payload": queue.entry_payload(queued),
            "metadata": _dumps(metadata),
            "batch_id": batch_id or "",
            "custom_id": custom_id or "",
            "webhook": webhook or "",
        }
        args: list[Any] = [queued.id, now, self.ttl_s, queue.ENTRY_FIELD, fields["payload"]]
        for name, value in fields.items():
            args += [name, value]
        idem = keys.idempotency_key(tenant, idempotency_key) if idempotency_key else ""
        script_keys = [
            idem,
            keys.job_key(queued.id),
            keys.tenant_jobs(tenant),
            keys.ingress_stream(queued.model, queued.lane),
        ]
        return self._scripts["create_job"], script_keys, args

    async def get(self, job_id: str, tenant: str | None = None) -> dict[str, Any] | None:
        """The public view; None when missing or owned by another tenant."""
        record = await self.redis.hgetall(keys.job_key(job_id))
        if not record or (tenant is not None and record.get(b"tenant", b"").decode() != tenant):
            return None
        return public_view(record)

    async def list_jobs(
        self, tenant: str, *, after: str | None, limit: int
    ) -> tuple[list[dict[str, Any]], bool]:
        """A tenant's jobs, newest first, starting after the job id ``after``."""

        async def load(ids: list[bytes]) -> list[dict[str, Any] | None]:
            return [await self.get(raw.decode(), tenant) for raw in ids]

        return await index_page(
            self.redis, keys.tenant_jobs(tenant), load, after=after, limit=limit
        )

    async def claim(self, job_id: str, attempt: int, worker: str, incarnation: str = "") -> bool:
        """A worker (this ``incarnation`` of it) starts the attempt; False if it is not
        queued any more (a duplicate delivery, or the attempt was requeued)."""
        return bool(
            await self._scripts["claim_job"](
                keys=[keys.job_key(job_id), keys.JOBS_INFLIGHT],
                args=[job_id, attempt, worker, time.time(), incarnation],
            )
        )

    async def mark_dispatched(
        self, job_id: str, attempt: int, worker: str, client: Any = None, incarnation: str = ""
    ) -> Any:
        """Record the worker (and its incarnation) a job's attempt went to (``client``: a
        pipeline to run it in)."""
        return await self._scripts["mark_dispatched"](
            keys=[keys.job_key(job_id), keys.JOBS_INFLIGHT],
            args=[job_id, attempt, worker, time.time(), incarnation],
            client=client,
        )

    def finish_call(
        self,
        job_id: str,
        attempt: int | None,
        status: str,
        *,
        result: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
        event: str = "",
    ) -> tuple[AsyncScript, list[str], list[Any]]:
        """The script call that ends a job, for running now or inside a pipeline."""
        assert status in TERMINAL_STATUSES
        return (
            self._scripts["finish_job"],
            [keys.job_key(job_id), keys.JOBS_INFLIGHT, keys.job_events(job_id), *OUTBOX_KEYS],
            [
                job_id,
                "" if attempt is None else attempt,
                status,
                _dumps(result),
                _dumps(error),
                time.time(),
                self.ttl_s,
                event,
                EVENTS_MAXLEN,
                new_event_id(),
                JOB_EVENT_TYPES[status],
            ],
        )

    async def finish(
        self,
        job_id: str,
        attempt: int | None,
        status: str,
        *,
        result: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
        event: str = "",
    ) -> bool:
        """End the job (``attempt`` None: whatever attempt is live). Only the first end counts;
        ``event`` (a terminal event's JSON) is appended to the job's events with it."""
        script, script_keys, args = self.finish_call(
            job_id, attempt, status, result=result, error=error, event=event
        )
        return bool(await script(keys=script_keys, args=args))

    async def requeue(
        self,
        queued: QueuedRequest,
        dead_worker: str,
        max_attempts: int,
        failure: dict[str, Any],
        failure_event: str,
        requeue_event: str,
        dead_incarnation: str = "",
    ) -> int:
        """0: nothing to do (finished, another replica acted, or the job is held by another
        incarnation than ``dead_incarnation``); 1: next attempt queued; 2: attempts used
        up, the job failed."""
        again = queued.model_copy(update={"attempt": queued.attempt + 1})
        return int(
            await self._scripts["requeue_job"](
                keys=[
                    keys.job_key(queued.id),
                    keys.JOBS_INFLIGHT,
                    keys.ingress_stream(queued.model, queued.lane),
                    keys.job_events(queued.id),
                    *OUTBOX_KEYS,
                ],
                args=[
                    queued.id,
                    queued.attempt,
                    dead_worker,
                    max_attempts,
                    queue.entry_payload(again),
                    time.time(),
                    _dumps(failure),
                    failure_event,
                    requeue_event,
                    EVENTS_MAXLEN,
                    dead_incarnation,
                    queue.ENTRY_FIELD,
                    new_event_id(),
                    JOB_EVENT_TYPES["failed"],
                ],
            )
        )

    async def inflight(self) -> list[tuple[str, int, str, str, bytes]]:
        """(job id, attempt, worker, its incarnation or "", payload) of every job sent to a
        worker and not finished."""
        ids = await self.redis.zrange(keys.JOBS_INFLIGHT, 0, -1)
        if not ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for raw in ids:
            pipe.hmget(
                keys.job_key(raw.decode()),
                ["status", "attempt", "worker", "incarnation", "payload"],
            )
        out = []
        for raw, (status, attempt, worker, incarnation, payload) in zip(
            ids, await pipe.execute(), strict=True
        ):
            if status is None or status.decode() in TERMINAL_STATUSES:
                await self.redis.zrem(keys.JOBS_INFLIGHT, raw)
                continue
            if worker:
                held_by = (incarnation or b"").decode()
                out.append((raw.decode(), int(attempt), worker.decode(), held_by, payload))
        return out

    async def events_after(
        self, job_id: str, after: str, block_ms: int | None
    ) -> list[tuple[str, bytes]]:
        """Events after the stream id ``after`` ("0" for all), waiting up to ``block_ms``."""
        stream = keys.job_events(job_id)
        if block_ms is None:
            entries = await self.redis.xrange(stream, min=f"({after}" if after != "0" else "-")
        else:
            reply = await self.redis.xread({stream: after}, block=block_ms, count=1000)
            entries = reply[0][1] if reply else []
        return [(entry_id.decode(), fields[b"e"]) for entry_id, fields in entries]
