"""The delivery loop: claim due events from the outbox, attempt each beside the loop (bounded
in all and per host), and settle each attempt: delivered, due again after a backoff, or given
up. Runs in every scheduler replica; the outbox's claims keep two replicas from attempting
one event at once.

Supervised: a lost Redis is logged and waited out with backoff, attempts in flight go on,
and their settlements are retried until their lease ends (after that the event comes due
again and is sent again with the same ``webhook-id``: at least once). A receiver's slowness
holds at most ``webhook_per_host`` attempts in flight, each for at most ``webhook_timeout_s``,
and as many waiting their turn, of the ``webhook_concurrency`` this replica runs at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter

import httpx
from redis.asyncio import Redis
from redis.exceptions import RedisError

from berth.plumbing.supervise import Backoff, log_failure
from berth.store.webhooks import Delivery, Outbox
from berth.webhooks import metrics
from berth.webhooks.events import event_body, retry_delay
from berth.webhooks.sender import Outcome, new_client, send
from berth.webhooks.settings import DeliverySettings
from berth.webhooks.signing import Signer

log = logging.getLogger(__name__)

# a claim lasts this much longer than an attempt may take: time to settle it afterwards
_SETTLE_S = 30.0
# shortest wait handed to BLPOP (0 would block for ever)
_MIN_WAIT_S = 0.01
# an event for a host with twice its share of attempts claimed is due again this much later
_BUSY_HOST_S = 1.0


def _host(url: str) -> str:
    try:
        return httpx.URL(url).host
    except httpx.InvalidURL:
        return ""


class WebhookDeliverer:
    """One replica's share of the deliveries."""

    def __init__(self, settings: DeliverySettings, redis: Redis) -> None:
        self.settings = settings
        self.outbox = Outbox(redis)
        # an attempt may wait its host's turn (an attempt's time at most), then take its own
        self.lease_s = 2 * settings.webhook_timeout_s + _SETTLE_S
        secret = settings.webhook_secret
        self._signer = Signer(secret) if secret else None
        self._tasks: set[asyncio.Task[None]] = set()
        # attempts per host, in flight or waiting at its gate (webhook_per_host at once)
        self._per_host: Counter[str] = Counter()
        self._gates: dict[str, asyncio.Semaphore] = {}

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set; attempts still in flight then get their timeout to
        end (an attempt cut short is sent again by whoever claims it next)."""
        if self._signer is None:
            log.info("webhooks are off: BERTH_WEBHOOK_SECRET is not set")
            await stop.wait()
            return
        s = self.settings
        async with new_client(s.webhook_concurrency, s.webhook_timeout_s) as client:
            backoff = Backoff()
            while not stop.is_set():
                try:
                    await self._turn(client)
                    backoff.reset()
                except Exception as err:
                    delay = backoff.next_s()
                    log_failure("webhook delivery", err, delay)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await stop.wait()
            if self._tasks:
                await asyncio.wait(self._tasks, timeout=s.webhook_timeout_s)
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _turn(self, client: httpx.AsyncClient) -> None:
        s = self.settings
        free = s.webhook_concurrency - len(self._tasks)
        if free <= 0:
            await asyncio.wait(
                self._tasks, timeout=s.webhook_poll_s, return_when=asyncio.FIRST_COMPLETED
            )
            return
        claimed = await self.outbox.claim(free, self.lease_s)
        for delivery in claimed:
            await self._start(client, delivery)
        if len(claimed) == free:
            return  # more may be due now
        due_in = await self.outbox.next_due_in()
        wait_s = s.webhook_poll_s if due_in is None else min(s.webhook_poll_s, due_in)
        if wait_s >= _MIN_WAIT_S:
            await self.outbox.wait(wait_s)

    async def _start(self, client: httpx.AsyncClient, delivery: Delivery) -> None:
        host = _host(delivery.url)
        per_host = self.settings.webhook_per_host
        if self._per_host[host] >= 2 * per_host:
            # this host has its share in flight and as many waiting: its turn comes again in
            # a moment, without counting as an attempt
            await self.outbox.again_in(delivery.id, _BUSY_HOST_S)
            return
        self._per_host[host] += 1
        gate = self._gates.setdefault(host, asyncio.Semaphore(per_host))
        task = asyncio.get_running_loop().create_task(self._attempt(client, delivery, host, gate))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _attempt(
        self,
        client: httpx.AsyncClient,
        delivery: Delivery,
        host: str,
        gate: asyncio.Semaphore,
    ) -> None:
        s = self.settings
        assert self._signer is not None
        try:
            async with gate:
                outcome = await send(
                    client,
                    delivery,
                    event_body(delivery),
                    self._signer,
                    allow_private=s.webhook_allow_private,
                    timeout_s=s.webhook_timeout_s,
                )
        finally:
            self._per_host[host] -= 1
            if self._per_host[host] <= 0:
                del self._per_host[host]
                self._gates.pop(host, None)
        await self._settle(delivery, outcome)

    async def _settle(self, delivery: Delivery, outcome: Outcome) -> None:
        """Record the attempt's outcome; while Redis is away, keep trying until the claim's
        lease ends (then the event is due again anyway)."""
        age_s = max(0.0, time.time() - delivery.created_at)
        deadline = time.monotonic() + _SETTLE_S
        backoff = Backoff()
        while True:
            try:
                await self._record(delivery, outcome, age_s)
                return
            except (RedisError, OSError) as err:
                if time.monotonic() > deadline:
                    log.warning(
                        "webhook %s: could not record its attempt (%s); it is due again "
                        "when its claim ends",
                        delivery.id,
                        err,
                    )
                    return
                await asyncio.sleep(backoff.next_s())

    async def _record(self, delivery: Delivery, outcome: Outcome, age_s: float) -> None:
        s = self.settings
        if outcome.delivered:
            await self.outbox.delivered(delivery.id)
            metrics.ATTEMPTS.labels("delivered").inc()
            metrics.DELIVERY_AGE.observe(age_s)
            log.debug("webhook %s delivered (%s)", delivery.id, outcome.reason)
            return
        if outcome.refused:
            await self.outbox.give_up(delivery, f"refused: {outcome.reason}")
            metrics.ATTEMPTS.labels("refused").inc()
            log.warning("webhook %s refused: %s", delivery.id, outcome.reason)
            return
        metrics.ATTEMPTS.labels("failed").inc()
        delay = retry_delay(age_s, s.webhook_backoff_s, s.webhook_backoff_max_s)
        if age_s + delay > s.webhook_retry_for_s:
            await self.outbox.give_up(
                delivery, f"not delivered within {s.webhook_retry_for_s:g} s: {outcome.reason}"
            )
            metrics.GIVEN_UP.inc()
            log.error(
                "webhook %s to %s given up after %.0f s: %s",
                delivery.id,
                delivery.url,
                age_s,
                outcome.reason,
            )
            return
        await self.outbox.again_in(delivery.id, delay)
        log.info(
            "webhook %s to %s failed (%s); again in %.1f s",
            delivery.id,
            delivery.url,
            outcome.reason,
            delay,
        )
