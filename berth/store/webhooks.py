"""The webhook outbox: end events of jobs and batches waiting to be delivered.

An event is written by the same Lua script that ends its job or batch (``finish_job``,
``requeue_job``, ``commit_batch``: the outbox keys and the event's id and type are part of
each call), so an end is never recorded without its event. The outbox is a sorted set of
event ids by when their next attempt is due, beside a hash of the entries; a deliverer
claims the due ones (``claim_webhooks.lua``), which pushes each a lease ahead, and settles
each attempt: delivered (removed), due again later, or given up (moved to a capped stream).
Several deliverers share the work and never attempt one event twice at once; one that dies
mid-attempt leaves its claims to come due when their lease ends (at least once).
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from berth.protocol import keys
from berth.store.scripts import Scripts

# a job's end status -> its event; an expired job (its deadline passed) did not complete
JOB_EVENT_TYPES = {
    "succeeded": "job.completed",
    "failed": "job.failed",
    "cancelled": "job.cancelled",
    "expired": "job.failed",
}
# a batch's: batch.<status>, as OpenAI names them (written by commit_batch.lua)
BATCH_EVENT_TYPES = {s: f"batch.{s}" for s in ("completed", "failed", "expired", "cancelled")}
# the keys every script that may write an event takes, in this order
OUTBOX_KEYS = (keys.WEBHOOKS_DUE, keys.WEBHOOKS_EVENTS, keys.WEBHOOKS_WAKE)


def new_event_id() -> str:
    """An event's id, its ``webhook-id`` on every attempt (128 random bits)."""
    return f"evt_{secrets.token_hex(16)}"


@dataclass(frozen=True)
class Delivery:
    """One claimed event: what to send (``id``, ``type``, ``created_at``: when the job or
    batch ended, in Unix seconds; ``object``: its id) and where (``url``)."""

    id: str
    type: str
    created_at: float
    object: str
    url: str

    @classmethod
    def from_entry(cls, raw: bytes | str) -> Delivery:
        entry = json.loads(raw)
        return cls(
            id=entry["id"],
            type=entry["type"],
            created_at=float(entry["created_at"]),
            object=entry["object"],
            url=entry["url"],
        )


class Outbox:
    """Every read and write of the outbox's keys, apart from the enqueue inside the end
    scripts."""

    def __init__(self, redis: Redis) -> None:
        self.redis: Any = redis
        self._scripts = Scripts(redis)

    async def claim(self, count: int, lease_s: float) -> list[Delivery]:
        """Up to ``count`` due events, each now leased to the caller for ``lease_s``."""
        reply = await self._scripts["claim_webhooks"](
            keys=[keys.WEBHOOKS_DUE, keys.WEBHOOKS_EVENTS], args=[count, lease_s]
        )
        return [Delivery.from_entry(raw) for raw in reply]

    async def wait(self, timeout_s: float) -> None:
        """Until an event is added or ``timeout_s`` passes, whichever is first (BLPOP on the
        wake list: one waiter per push wakes; the others see it on their next claim)."""
        await self.redis.blpop([keys.WEBHOOKS_WAKE], timeout=timeout_s)

    async def next_due_in(self) -> float | None:
        """Seconds until the earliest event is due by Redis's clock (<= 0: now), None when
        the outbox is empty."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrange(keys.WEBHOOKS_DUE, 0, 0, withscores=True)
        pipe.time()
        first, (seconds, micros) = await pipe.execute()
        return None if not first else float(first[0][1]) - (seconds + micros / 1e6)

    async def delivered(self, event_id: str) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.zrem(keys.WEBHOOKS_DUE, event_id)
        pipe.hdel(keys.WEBHOOKS_EVENTS, event_id)
        await pipe.execute()

    async def again_in(self, event_id: str, delay_s: float) -> None:
        """The event is due again ``delay_s`` from now (unless it left the outbox)."""
        await self._scripts["retry_webhook"](keys=[keys.WEBHOOKS_DUE], args=[event_id, delay_s])

    async def give_up(self, delivery: Delivery, reason: str) -> None:
        """The event leaves the outbox for the stream of those given up on."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.zrem(keys.WEBHOOKS_DUE, delivery.id)
        pipe.hdel(keys.WEBHOOKS_EVENTS, delivery.id)
        pipe.xadd(
            keys.WEBHOOKS_FAILED,
            {
                "id": delivery.id,
                "object": delivery.object,
                "url": delivery.url,
                "type": delivery.type,
                "reason": reason,
                "at": time.time(),
            },
            maxlen=keys.WEBHOOKS_FAILED_MAXLEN,
            approximate=True,
        )
        await pipe.execute()

    async def given_up(self, count: int = 100) -> list[dict[str, str]]:
        """The newest events given up on, newest first."""
        entries = await self.redis.xrevrange(keys.WEBHOOKS_FAILED, count=count)
        return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in entries]

    async def pending(self) -> int:
        """Events waiting in the outbox (due or not)."""
        return int(await self.redis.zcard(keys.WEBHOOKS_DUE))
