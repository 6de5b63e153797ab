"""Job state changes are atomic: one claim, one result, one requeue, whoever races."""

from __future__ import annotations

import asyncio
import json

import redis.asyncio

from berth.protocol import keys
from berth.protocol.envelopes import QueuedRequest
from berth.store.jobs import JobStore


def _queued(job_id: str = "job_1", attempt: int = 0) -> QueuedRequest:
    return QueuedRequest(
        id=job_id, model="m", request={"model": "m"}, job=True, lane="job", attempt=attempt
    )


async def _store(aredis: redis.asyncio.Redis) -> JobStore:
    store = JobStore(aredis, ttl_s=600)
    job_id, created = await store.create(_queued(), tenant="t")
    assert (job_id, created) == ("job_1", True)
    return store


async def test_create_queues_and_idempotency_returns_the_first(aredis: redis.asyncio.Redis) -> None:
    store = JobStore(aredis, ttl_s=600)
    first = await store.create(_queued("job_1"), tenant="t", idempotency_key="k")
    again = await store.create(_queued("job_2"), tenant="t", idempotency_key="k")
    assert first == ("job_1", True) and again == ("job_1", False)
    assert await aredis.xlen(keys.ingress_stream("m", "job")) == 1
    assert await store.get("job_1", "other-tenant") is None
    assert 0 < await aredis.ttl(keys.job_key("job_1")) <= 600


async def test_only_one_claim_wins(aredis: redis.asyncio.Redis) -> None:
    store = await _store(aredis)
    wins = await asyncio.gather(*(store.claim("job_1", 0, f"w{i}") for i in range(5)))
    assert sorted(wins) == [False] * 4 + [True]
    assert not await store.claim("job_1", 1, "w9")  # a future attempt cannot claim either


async def test_stale_attempt_cannot_finish(aredis: redis.asyncio.Redis) -> None:
    store = await _store(aredis)
    await store.claim("job_1", 0, "w1")
    assert not await store.finish("job_1", 1, "succeeded", result={"x": 1})
    assert await store.finish("job_1", 0, "succeeded", result={"x": 1}, event='{"type":"finished"}')
    assert not await store.finish("job_1", 0, "failed", error={"e": 1})
    job = await store.get("job_1")
    assert job is not None and job["status"] == "succeeded" and job["result"] == {"x": 1}
    assert len(await aredis.xrange(keys.job_events("job_1"))) == 1  # type: ignore[arg-type]


async def test_requeue_once_then_fail_after_max_attempts(aredis: redis.asyncio.Redis) -> None:
    store = await _store(aredis)
    await store.claim("job_1", 0, "dead")
    args = ({"error": "lost"}, json.dumps({"type": "error"}), json.dumps({"type": "requeued"}))
    outcomes = await asyncio.gather(*(store.requeue(_queued(), "dead", 2, *args) for _ in range(3)))
    assert sorted(outcomes) == [0, 0, 1]
    assert await aredis.xlen(keys.ingress_stream("m", "job")) == 2  # the first run and the retry
    assert await store.claim("job_1", 1, "dead2")
    assert await store.requeue(_queued(attempt=1), "dead2", 2, *args) == 2
    job = await store.get("job_1")
    assert job is not None and job["status"] == "failed" and job["error"] == {"error": "lost"}
    assert await store.inflight() == []
