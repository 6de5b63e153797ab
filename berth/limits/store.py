"""Every read and write of the per-tenant limit counters (``berth:quota:*``): admission of
a request (rates, concurrency, a fair share of the queue) in one script call, the release
of its leases, and file storage reservations, through the scripts in ``lua/``. The
arithmetic is in ``berth/limits/model.py``; the scheduler releases queue leases through
:func:`release_queued` (with :func:`limit_scripts`) when it takes requests off a stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from berth.limits.model import WINDOW_S, Counts, TenantLimits, Windows, window
from berth.protocol import keys
from berth.protocol.envelopes import QueuedRequest
from berth.store.scripts import Scripts

_RATE_TTL_S = 2 * WINDOW_S + 5


def limit_scripts(redis: Redis) -> Scripts:
    """The limits' own Lua scripts (``berth/limits/lua/``) on ``redis``."""
    return Scripts(redis, "berth.limits")


def lease_member(tenant: str, request_id: str) -> str:
    return f"{tenant}\n{request_id}"


@dataclass(frozen=True)
class Admission:
    """One request's place in the limits: what it costs and how long its leases last."""

    tenant: str
    request_id: str
    cost: int
    # the ingress stream it waits in, or None when it is not queued through the API's bound
    stream: str | None
    queue_bound: int
    fair_floor: int
    # absolute expiries (0: not held)
    running_until: float
    queued_until: float


@dataclass(frozen=True)
class FileUsage:
    allowed: bool
    files: int
    bytes: int
    earliest_expiry: int


class QuotaStore:
    """The counters behind the per-tenant limits, shared by every API process."""

    def __init__(self, redis: Redis, windows: Windows = window) -> None:
        self.redis: Any = redis
        self._scripts = limit_scripts(redis)
        # which rate window a moment counts in (model.frozen_window in tests)
        self._window = windows

    async def count_request(self, limits: TenantLimits, tenant: str, now: float) -> Counts:
        """Count one request against the tenant's requests per minute, or refuse it
        (``refused`` "requests"; a refused request is not counted)."""
        return (await self.count_requests(limits, tenant, now, 1))[1]

    async def count_requests(
        self, limits: TenantLimits, tenant: str, now: float, asked: int
    ) -> tuple[int, Counts]:
        """Count ``asked`` requests of the tenant at once: how many of them fit (the first
        ones; the rest are refused and not counted), and the counts after counting those.
        ``allowed`` is whether all of them fit."""
        index, elapsed = self._window(now)
        raw = await self._scripts["count_request"](
            keys=[
                keys.quota_rate(tenant, "requests", index - 1),
                keys.quota_rate(tenant, "requests", index),
                keys.quota_rate(tenant, "tokens", index - 1),
                keys.quota_rate(tenant, "tokens", index),
            ],
            args=[elapsed, limits.requests_per_minute, _RATE_TTL_S, asked],
        )
        admitted, rp, rc, tp, tc = (int(n) for n in raw)
        return admitted, Counts(
            allowed=admitted == asked,
            refused="" if admitted == asked else "requests",
            requests_previous=rp,
            requests_current=rc,
            tokens_previous=tp,
            tokens_current=tc,
        )

    async def admit(self, limits: TenantLimits, ask: Admission, now: float) -> Counts:
        """Admit a request whose rate :meth:`count_request` already counted: tokens,
        concurrency and its share of the queue."""
        index, elapsed = self._window(now)
        t = ask.tenant
        stream = ask.stream or ""
        keys_ = [
            keys.quota_rate(t, "requests", index - 1),
            keys.quota_rate(t, "requests", index),
            keys.quota_rate(t, "tokens", index - 1),
            keys.quota_rate(t, "tokens", index),
            keys.quota_running(t),
            keys.quota_queue_leases(stream),
            keys.quota_queue_counts(stream),
            stream or keys.quota_queue_counts(stream),
        ]
        args: list[str | int | float] = [
            now,
            elapsed,
            t,
            ask.request_id,
            ask.cost,
            limits.requests_per_minute,
            limits.tokens_per_minute,
            limits.concurrent_requests,
            limits.queued_requests,
            ask.queue_bound,
            ask.fair_floor,
            ask.running_until,
            ask.queued_until if ask.stream else 0,
            _RATE_TTL_S,
            # past twice its bound a queue refuses everyone: fairness lets newcomers in
            # over a full queue, but never without end
            2 * ask.queue_bound,
        ]
        raw = await self._scripts["admit_tenant"](keys=keys_, args=args)
        allowed, refused, *numbers = raw
        rp, rc, tp, tc, running, queued, share = (int(n) for n in numbers)
        return Counts(
            allowed=bool(allowed),
            refused=refused.decode() if isinstance(refused, bytes) else str(refused),
            requests_previous=rp,
            requests_current=rc,
            tokens_previous=tp,
            tokens_current=tc,
            running=running,
            queued=queued,
            queue_limit=share,
        )

    async def release_running(self, tenant: str, request_id: str) -> None:
        await self.redis.zrem(keys.quota_running(tenant), request_id)

    async def release_queued(self, requests: list[QueuedRequest]) -> None:
        """Requests left their queue (or never entered it)."""
        pipe = self.redis.pipeline(transaction=False)
        await release_queued(pipe, self._scripts, requests)
        await pipe.execute()

    async def reserve_file(
        self,
        limits: TenantLimits,
        tenant: str,
        file_id: str,
        size: int,
        expires_at: float,
        now: float,
    ) -> FileUsage:
        raw = await self._scripts["reserve_file"](
            keys=[keys.quota_files(tenant), keys.quota_file_bytes(tenant)],
            args=[now, file_id, size, expires_at, limits.files, limits.file_bytes],
        )
        allowed, files, used, earliest = (int(n) for n in raw)
        return FileUsage(bool(allowed), files, used, earliest)

    async def move_file(
        self, tenant: str, old_id: str, new_id: str, size: int, expires_at: float
    ) -> None:
        """Carry a reservation made under a provisional id over to the stored file's id."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.zrem(keys.quota_files(tenant), old_id)
        pipe.hdel(keys.quota_file_bytes(tenant), old_id)
        pipe.zadd(keys.quota_files(tenant), {new_id: expires_at})
        pipe.hset(keys.quota_file_bytes(tenant), new_id, size)
        await pipe.execute()

    async def release_file(self, tenant: str, file_id: str) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrem(keys.quota_files(tenant), file_id)
        pipe.hdel(keys.quota_file_bytes(tenant), file_id)
        await pipe.execute()


async def release_queued(client: Any, scripts: Scripts, requests: list[QueuedRequest]) -> None:
    """Add to ``client`` (a pipeline) the release of these requests' queue leases, grouped
    by stream. Releasing a lease that is gone (or was never taken) does nothing."""
    by_stream: dict[str, list[str]] = {}
    for request in requests:
        if request.tenant is None:
            continue
        stream = keys.ingress_stream(request.model, request.lane)
        by_stream.setdefault(stream, []).append(lease_member(request.tenant, request.id))
    for stream, members in by_stream.items():
        # with a pipeline as client this queues the call; the pipeline's execute runs it
        await scripts["release_queued"](
            keys=[keys.quota_queue_leases(stream), keys.quota_queue_counts(stream)],
            args=members,
            client=client,
        )
