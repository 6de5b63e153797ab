"""The API's side of the per-tenant limits: admit a request (rates, concurrency, its
tenant's fair share of the queue), free its lease when it ends, and check file storage
and batches. Refusals are 429 with ``Retry-After`` and OpenAI's ``x-ratelimit-*`` headers;
a request that could never fit is 400. Its settings are the API's
(:class:`QuotaSettings`, which ``ApiSettings`` satisfies).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Protocol

from redis.asyncio import Redis

from berth.limits import model as quota
from berth.limits.counting import BurstCounter
from berth.limits.model import Counts, LimitBook, TenantLimits
from berth.limits.store import Admission, QuotaStore
from berth.protocol.envelopes import QueuedRequest
from berth.protocol.errors import InvalidRequest, RateLimited
from berth.store.batches import BatchStore
from berth.store.files import new_file_id

log = logging.getLogger(__name__)

# batch statuses that count against open_batches, and how many recent batches are read
_OPEN_BATCH_STATUSES = frozenset({"validating", "in_progress", "finalizing", "cancelling"})
_OPEN_BATCH_SCAN = 100

# a lease outlives the longest request by this much, so only a dead API's leases lapse
_LEASE_MARGIN_S = 60.0


@dataclass(frozen=True)
class _OverRate:
    """Redis's last word on a tenant over its requests per minute, remembered by this
    process: the counts it read, in which minute, and until when to refuse locally."""

    counts: Counts
    window: int
    until: float


class QuotaSettings(Protocol):
    """The settings the limits read (the API's: ``berth/api/settings.py`` documents each)."""

    tenant_limits: str | None
    tenant_limits_file: str | None
    retry_after_s: int
    rate_memo_s: float
    rate_refusal_hold_s: float
    rate_window_frozen_at: float | None
    assumed_max_tokens: int
    request_timeout_s: float
    max_queue_per_model: int
    fair_share_floor: int

    def tenant_defaults(self) -> TenantLimits: ...


def limit_book(settings: QuotaSettings) -> LimitBook:
    overrides = quota.read_overrides(settings.tenant_limits, settings.tenant_limits_file)
    return LimitBook(settings.tenant_defaults(), overrides)


class Quotas:
    """Per-tenant admission for one API process; the counts live in Redis, shared."""

    def __init__(self, redis: Redis, settings: QuotaSettings, book: LimitBook) -> None:
        frozen_at = settings.rate_window_frozen_at
        # the rate windows' clock: the real one, or (tests only) one stopped at a moment
        self._window = quota.window if frozen_at is None else quota.frozen_window(frozen_at)
        self.store = QuotaStore(redis, self._window)
        self._counter = BurstCounter(self.store)
        self.book = book
        self._settings = settings
        # request id -> tenant, of the requests holding a concurrency lease here
        self._running: dict[str, str] = {}
        # tenant -> how many of those it holds
        self._held: Counter[str] = Counter()
        # tenant -> the rate counts Redis last gave for it, and in which minute
        self._seen: dict[str, tuple[Counts, int]] = {}
        # tenant -> its last refusal for requests per minute, while it is refused locally
        self._over_rate: dict[str, _OverRate] = {}

    def of(self, tenant: str) -> TenantLimits:
        return self.book.of(tenant)

    @property
    def refusing(self) -> bool:
        """Whether this process remembers any tenant over its requests per minute."""
        return bool(self._over_rate)

    def remembered_refusal(self, tenant: str) -> RateLimited | None:
        """The 429 for a tenant this process remembers over its requests per minute, or
        None (then only Redis can tell). No I/O: the ``RefuseOverRate`` middleware asks it
        before FastAPI routes the request, :meth:`count_request` before asking Redis.

        Redis could only refuse such a request too: other API processes add to the counts,
        nothing takes from them but time, and the refusal is recomputed for now (the same
        message, Retry-After and headers, counting down)."""
        memo = self._over_rate.get(tenant)
        if memo is None:
            return None
        limits = self.book.of(tenant)
        now = time.time()
        index, elapsed = self._window(now)
        counts = quota.moved_on(memo.counts, index - memo.window)
        over = quota.used(counts.requests_previous, counts.requests_current, elapsed) + 1
        if now < memo.until and over > limits.requests_per_minute:
            return self._rate_refusal(limits, counts, elapsed)
        del self._over_rate[tenant]
        return None

    def refusal_hold_s(self, tenant: str) -> float:
        """How long to hold a remembered refusal of ``tenant`` before answering it:
        ``rate_refusal_hold_s``, but never past the memo's end (until then the refusal is
        what Redis would answer)."""
        memo = self._over_rate.get(tenant)
        if memo is None:
            return 0.0
        return max(0.0, min(self._settings.rate_refusal_hold_s, memo.until - time.time()))

    async def count_request(self, tenant: str) -> None:
        """Count a request against its tenant's requests per minute as soon as the tenant
        is known, before its body is read, or raise RateLimited: every request counts,
        including those refused later for what they hold, so a tenant flooding bad requests
        meets its own 429s instead of taking the API's CPU from everyone.

        Once Redis refused the tenant, its next requests are refused here, without a round
        trip (:meth:`remembered_refusal`), for ``rate_memo_s`` at most and never past the
        moment the rate would admit one again."""
        limits = self.book.of(tenant)
        if not limits.requests_per_minute:
            return
        refused = self.remembered_refusal(tenant)
        if refused is not None:
            raise refused
        fits, counts, now = await self._counter.count(limits, tenant, time.time())
        index, elapsed = self._window(now)
        self._seen[tenant] = (counts, index)
        if fits:
            return
        if self._settings.rate_memo_s:
            admits_in = quota.wait_s(
                counts.requests_previous,
                counts.requests_current,
                elapsed,
                1,
                limits.requests_per_minute,
            )
            until = now + min(admits_in, self._settings.rate_memo_s)
            self._over_rate[tenant] = _OverRate(counts, index, until)
        raise self._rate_refusal(limits, counts, elapsed)

    def _rate_refusal(self, limits: TenantLimits, counts: Counts, elapsed: float) -> RateLimited:
        retry = quota.retry_after_s(limits, counts, elapsed, 1, self._settings.retry_after_s)
        return RateLimited(
            quota.refusal_message(limits, counts, 1, "", 0, retry),
            retry_after=retry,
            headers=quota.rate_headers(limits, counts, elapsed),
        )

    def refuse_if_all_held(self, queued: QueuedRequest) -> None:
        """Raise the 429 for an interactive request whose tenant already holds every one of
        its concurrency leases in this process. No I/O: the chat route asks before it
        subscribes to the request's events, so such a request costs neither that nor the
        admission script. Redis could only refuse it too: the leases of other API processes
        add to these, and only their requests' ends take from them."""
        tenant = queued.tenant
        if tenant is None or queued.lane != "interactive" or queued.job:
            return
        limits = self.book.of(tenant)
        if not limits.concurrent_requests or self._held[tenant] < limits.concurrent_requests:
            return
        now = time.time()
        index, elapsed = self._window(now)
        seen, window = self._seen.get(tenant, (Counts(allowed=True), index))
        counts = quota.moved_on(seen, index - window).model_copy(
            update={"allowed": False, "refused": "concurrent", "running": self._held[tenant]}
        )
        retry = quota.retry_after_s(limits, counts, elapsed, 1, self._settings.retry_after_s)
        raise RateLimited(
            quota.refusal_message(limits, counts, 1, "", 0, retry),
            retry_after=retry,
            headers=quota.rate_headers(limits, counts, elapsed),
        )

    async def admit(self, queued: QueuedRequest, stream: str) -> None:
        """Count the request against its tenant's token rate, concurrency and share of the
        queue (its request rate was counted by :meth:`count_request`), or raise
        RateLimited."""
        tenant = queued.tenant
        if tenant is None:
            return
        self.refuse_if_all_held(queued)
        limits = self.book.of(tenant)
        chat = queued.request
        cost = quota.request_cost(
            quota.prompt_chars(chat),
            # a chat request's cap, or a text completion's
            chat.get("max_completion_tokens", chat.get("max_tokens")),
            int(chat.get("n") or 1),
            self._settings.assumed_max_tokens,
        )
        if limits.tokens_per_minute and cost > limits.tokens_per_minute:
            # waiting cannot help: say so instead of a 429 the client would retry forever
            raise InvalidRequest(
                f"the request counts {cost} tokens (prompt estimate plus max tokens), more "
                f"than this tenant's {limits.tokens_per_minute} tokens per minute; lower "
                "max_completion_tokens",
                param="max_completion_tokens",
                code="tokens_per_minute_exceeded",
            )
        now = time.time()
        hold = queued.lane == "interactive" and not queued.job
        lease_s = self._settings.request_timeout_s + _LEASE_MARGIN_S
        ask = Admission(
            tenant=tenant,
            request_id=queued.id,
            cost=cost,
            stream=stream,
            queue_bound=self._settings.max_queue_per_model,
            fair_floor=self._settings.fair_share_floor,
            running_until=now + lease_s if hold else 0,
            queued_until=now + lease_s,
        )
        counts = await self.store.admit(limits, ask, now)
        index, elapsed = self._window(now)
        self._seen[tenant] = (counts, index)
        if not counts.allowed:
            retry = quota.retry_after_s(limits, counts, elapsed, cost, self._settings.retry_after_s)
            log.info("request %s refused: tenant=%s limit=%s", queued.id, tenant, counts.refused)
            code = "queue_full" if counts.refused == "queue_full" else None
            raise RateLimited(
                quota.refusal_message(
                    limits,
                    counts,
                    cost,
                    f"{queued.lane} queue for model {queued.model!r}",
                    self._settings.max_queue_per_model,
                    retry,
                ),
                retry_after=retry,
                headers=quota.rate_headers(limits, counts, elapsed),
                code=code,
            )
        if hold:
            self._running[queued.id] = tenant
            self._held[tenant] += 1

    async def release(self, request_id: str) -> None:
        """The request ended at this API (any way): its concurrency slot is free."""
        tenant = self._running.pop(request_id, None)
        if tenant is not None:
            self._held[tenant] -= 1
            if not self._held[tenant]:
                del self._held[tenant]
            await self.store.release_running(tenant, request_id)

    async def abandon(self, queued: QueuedRequest) -> None:
        """The request was admitted but never queued (the XADD failed, or a job with the
        same idempotency key existed): free everything it holds."""
        await self.release(queued.id)
        await self.store.release_queued([queued])

    # -- storage --------------------------------------------------------------------------

    async def reserve_file(self, tenant: str, size: int, ttl_s: int) -> str:
        """Reserve room for a file of ``size`` bytes; returns a provisional id that
        :meth:`file_stored` moves to the stored file (or :meth:`file_dropped` frees)."""
        limits = self.book.of(tenant)
        if limits.file_bytes and size > limits.file_bytes:
            raise InvalidRequest(
                f"the file is {size} bytes, more than this tenant's {limits.file_bytes} bytes "
                "of storage",
                param="file",
                code="storage_limit_exceeded",
            )
        now = time.time()
        provisional = new_file_id()
        usage = await self.store.reserve_file(limits, tenant, provisional, size, now + ttl_s, now)
        if not usage.allowed:
            retry = max(1, usage.earliest_expiry - int(now)) if usage.earliest_expiry else 60
            raise RateLimited(
                f"this tenant stores {usage.files} files of {usage.bytes} bytes; the limits are "
                f"{limits.files or 'unlimited'} files and {limits.file_bytes or 'unlimited'} "
                "bytes: delete files or wait for them to expire",
                retry_after=retry,
                code="storage_limit_exceeded",
            )
        return provisional

    async def file_stored(
        self, tenant: str, provisional: str, file_id: str, size: int, expires_at: float
    ) -> None:
        await self.store.move_file(tenant, provisional, file_id, size, expires_at)

    async def file_dropped(self, tenant: str, file_id: str) -> None:
        await self.store.release_file(tenant, file_id)

    def check_batch_lines(self, tenant: str, lines: int) -> None:
        most = self.book.of(tenant).batch_lines
        if most and lines > most:
            raise InvalidRequest(
                f"the input file has {lines} requests; a batch may have at most {most}",
                param="input_file_id",
                code="batch_too_large",
            )

    async def check_open_batches(self, tenant: str, batches: BatchStore) -> None:
        """Refuse a new batch while the tenant has its limit of batches in progress. Read
        from the tenant's newest batches (open ones are at most a day old, the completion
        window); two creations at the same instant may both pass, by one batch."""
        most = self.book.of(tenant).open_batches
        if not most:
            return
        newest, _ = await batches.list_batches(tenant, after=None, limit=_OPEN_BATCH_SCAN)
        open_batches = sum(1 for batch in newest if batch["status"] in _OPEN_BATCH_STATUSES)
        if open_batches >= most:
            raise RateLimited(
                f"this tenant has {open_batches} batches in progress; at most {most} may be "
                "open at once: wait for one to end or cancel one",
                retry_after=60,
                code="batch_limit_exceeded",
            )
