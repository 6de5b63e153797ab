"""The webhook outbox: an end writes its event in the same step, once; claims lease each
event to one deliverer; a failed attempt comes due again; a dead deliverer's claim ends."""

from __future__ import annotations

import asyncio
import json

import redis.asyncio

from berth.protocol import keys
from berth.protocol.envelopes import QueuedRequest
from berth.store.jobs import JobStore
from berth.store.webhooks import Outbox

URL = "https://hooks.example.com/berth"


def _queued(job_id: str) -> QueuedRequest:
    return QueuedRequest(id=job_id, model="m", request={"model": "m"}, job=True, lane="job")


async def _job(aredis: redis.asyncio.Redis, job_id: str, webhook: str | None = URL) -> JobStore:
    store = JobStore(aredis, ttl_s=600)
    await store.create(_queued(job_id), tenant="t", webhook=webhook)
    return store


async def test_a_jobs_end_writes_its_event_once(aredis: redis.asyncio.Redis) -> None:
    store = await _job(aredis, "job_1")
    assert await Outbox(aredis).pending() == 0
    assert await store.finish("job_1", None, "succeeded", result={"x": 1})
    assert not await store.finish("job_1", None, "failed")  # a second end writes nothing
    claimed = await Outbox(aredis).claim(10, 60)
    assert [(d.type, d.object, d.url) for d in claimed] == [("job.completed", "job_1", URL)]
    assert claimed[0].id.startswith("evt_") and claimed[0].created_at > 0
    assert await aredis.llen(keys.WEBHOOKS_WAKE) == 1


async def test_a_job_without_a_webhook_writes_none(aredis: redis.asyncio.Redis) -> None:
    store = await _job(aredis, "job_1", webhook=None)
    assert await store.finish("job_1", None, "cancelled")
    assert await Outbox(aredis).pending() == 0


async def test_each_end_has_its_event_type(aredis: redis.asyncio.Redis) -> None:
    ends = {"job_a": "cancelled", "job_b": "failed", "job_c": "expired"}
    for job_id, status in ends.items():
        store = await _job(aredis, job_id)
        await store.finish(job_id, None, status)
    # a job whose worker died once too often fails in requeue_job.lua
    store = await _job(aredis, "job_d")
    await store.claim("job_d", 0, "dead")
    assert await store.requeue(_queued("job_d"), "dead", 1, {}, "{}", "{}") == 2
    claimed = {d.object: d.type for d in await Outbox(aredis).claim(10, 60)}
    assert claimed == {
        "job_a": "job.cancelled",
        "job_b": "job.failed",
        "job_c": "job.failed",
        "job_d": "job.failed",
    }


async def test_a_claim_leases_each_event_to_one_deliverer(aredis: redis.asyncio.Redis) -> None:
    for i in range(20):
        store = await _job(aredis, f"job_{i}")
        await store.finish(f"job_{i}", None, "succeeded")
    outbox = Outbox(aredis)
    claims = await asyncio.gather(*(outbox.claim(7, 60) for _ in range(5)))
    ids = [d.id for claim in claims for d in claim]
    assert len(ids) == len(set(ids)) == 20
    assert await outbox.claim(10, 60) == []  # all leased
    due_in = await outbox.next_due_in()
    assert due_in is not None and 50 < due_in <= 60


async def test_an_ended_lease_and_a_retry_bring_the_event_back(aredis: redis.asyncio.Redis) -> None:
    store = await _job(aredis, "job_1")
    await store.finish("job_1", None, "succeeded")
    outbox = Outbox(aredis)
    (first,) = await outbox.claim(1, 0.05)
    await asyncio.sleep(0.1)  # the deliverer died: its lease ends
    (again,) = await outbox.claim(1, 60)
    assert again == first  # the same event, the same id
    await outbox.again_in(again.id, 0)
    (third,) = await outbox.claim(1, 60)
    assert third.id == first.id
    await outbox.delivered(third.id)
    assert await outbox.pending() == 0
    await outbox.again_in(third.id, 0)  # a late retry of a delivered event adds nothing
    assert await outbox.pending() == 0


async def test_giving_up_keeps_the_event_for_operators(aredis: redis.asyncio.Redis) -> None:
    store = await _job(aredis, "job_1")
    await store.finish("job_1", None, "failed")
    outbox = Outbox(aredis)
    (delivery,) = await outbox.claim(1, 60)
    await outbox.give_up(delivery, "refused: loopback")
    assert await outbox.pending() == 0
    assert await aredis.hlen(keys.WEBHOOKS_EVENTS) == 0
    (failed,) = await outbox.given_up()
    assert failed["id"] == delivery.id and failed["reason"] == "refused: loopback"
    assert failed["object"] == "job_1" and failed["type"] == "job.failed"


async def test_an_entry_reads_back_as_written(aredis: redis.asyncio.Redis) -> None:
    store = await _job(aredis, "job_1")
    await store.finish("job_1", None, "succeeded")
    (raw,) = (await aredis.hgetall(keys.WEBHOOKS_EVENTS)).values()
    assert set(json.loads(raw)) == {"id", "type", "created_at", "object", "url"}
