"""The ingress queue against a real server: entries round-trip, a read entry leaves the
queue once acknowledged, a dead replica's entries are claimed, and the cancel and run
marks carry their lifetimes."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import redis.asyncio

from berth.protocol import keys
from berth.protocol.envelopes import QueuedRequest
from berth.store import queue
from berth.store.jobs import JobStore

STREAM = keys.ingress_stream("m")


def _queued(request_id: str, **fields: object) -> QueuedRequest:
    return QueuedRequest.model_validate(
        {"id": request_id, "model": "m", "request": {"model": "m"}, "enqueued_at": 1.0} | fields
    )


def _raw(fields: Mapping[Any, Any]) -> dict[bytes, bytes]:
    return {str(k).encode(): str(v).encode() for k, v in fields.items()}


def test_an_entry_decodes_to_the_request_it_encodes() -> None:
    queued = _queued("r1", lane="batch", attempt=2, job=True)
    assert queue.decode_entry(_raw(queue.encode_entry(queued))) == queued
    assert queue.decode_entry({b"other": b"{}"}) is None
    assert queue.decode_entry(_raw({queue.ENTRY_FIELD: "not json"})) is None


async def test_enqueue_read_acknowledge(aredis: redis.asyncio.Redis) -> None:
    await queue.create_group(aredis, STREAM)
    await queue.create_group(aredis, STREAM)  # a second replica: the group is kept
    await queue.enqueue(aredis, _queued("r1"))
    await queue.enqueue(aredis, _queued("r2", lane="job"))
    assert await queue.lengths(aredis, [STREAM, keys.ingress_stream("m", "job")]) == [1, 1]

    (stream, entries), *rest = await queue.read(aredis, "s1", [STREAM], ">", 10, None)
    assert (stream, rest) == (STREAM, [])
    [(entry_id, fields)] = entries
    assert fields is not None and queue.decode_entry(fields) == _queued("r1")
    # not acknowledged: delivered to s1 again from its own pending entries
    assert await queue.read(aredis, "s1", [STREAM], ">", 10, None) == []
    [(_, again)] = await queue.read(aredis, "s1", [STREAM], "0", 10, None)
    assert [entry for entry, _ in again] == [entry_id]

    pipe = aredis.pipeline(transaction=False)
    queue.acknowledge(pipe, STREAM, [entry_id])
    await pipe.execute()
    assert await queue.lengths(aredis, [STREAM]) == [0]
    assert await queue.read(aredis, "s1", [STREAM], "0", 10, None) == [(STREAM, [])]


async def test_a_job_is_queued_in_the_entry_encoding(aredis: redis.asyncio.Redis) -> None:
    job = _queued("job_1", job=True, lane="job")
    stream = keys.ingress_stream("m", "job")
    await queue.create_group(aredis, stream)
    await JobStore(aredis, ttl_s=600).create(job, tenant="t")
    [(_, [(_, fields)])] = await queue.read(aredis, "s1", [stream], ">", 10, None)
    assert fields is not None and queue.decode_entry(fields) == job


async def test_a_dead_replicas_entries_are_reclaimed(aredis: redis.asyncio.Redis) -> None:
    await queue.create_group(aredis, STREAM)
    for i in range(3):
        await queue.enqueue(aredis, _queued(f"r{i}"))
    await queue.read(aredis, "dead", [STREAM], ">", 10, None)
    assert dict(await queue.consumers(aredis, STREAM)) == {"dead": 3}
    assert await queue.consumers(aredis, keys.ingress_stream("nothing")) == []

    claimed = await queue.reclaim(aredis, STREAM, "dead", 3, "alive")
    assert [queue.decode_entry(f or {}) for _, f in claimed] == [_queued(f"r{i}") for i in range(3)]
    # every entry claimed: the dead replica left the group
    assert dict(await queue.consumers(aredis, STREAM)) == {"alive": 3}

    # a replica that died holding nothing just leaves
    await queue.read(aredis, "idle", [STREAM], ">", 10, None)
    assert await queue.reclaim(aredis, STREAM, "idle", 0, "alive") == []
    assert dict(await queue.consumers(aredis, STREAM)) == {"alive": 3}


async def test_cancel_marks_and_their_announcement(aredis: redis.asyncio.Redis) -> None:
    pubsub = aredis.pubsub()
    await pubsub.subscribe(keys.CANCEL_CHANNEL)
    await pubsub.get_message(timeout=1)  # the subscribe confirmation
    await queue.cancel(aredis, "r1")
    pipe = aredis.pipeline(transaction=False)
    queue.mark_cancelled(pipe, "r2", tell_workers=False)
    await pipe.execute()

    assert await queue.cancelled(aredis, ["r1", "r2", "r3"]) == [True, True, False]
    ttl = await aredis.ttl(keys.cancelled_key("r1"))
    assert keys.CANCEL_MARK_TTL_S - 5 < ttl <= keys.CANCEL_MARK_TTL_S
    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
    assert message is not None and message["data"] == b"r1"
    # r2's mark was not announced
    assert await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2) is None
    await pubsub.aclose()


async def test_start_runs_sets_one_run_marker_per_attempt(aredis: redis.asyncio.Redis) -> None:
    group = [_queued("r1"), _queued("r2"), _queued("job_1", job=True, lane="job")]
    await queue.cancel(aredis, "r2")
    first, second = await asyncio.gather(
        queue.start_runs(aredis, group, "w1"), queue.start_runs(aredis, group, "w2")
    )
    assert first[0] == second[0] == [False, True, False]
    # one worker runs each interactive attempt; a job is claimed through its record instead
    assert sorted([first[1][:2], second[1][:2]]) == [[False, False], [True, True]]
    assert first[1][2] and second[1][2]
    winner = b"w1" if first[1][0] else b"w2"
    assert await aredis.get(keys.run_key("r1", 0)) == winner
    ttl = await aredis.ttl(keys.run_key("r1", 0))
    assert keys.RUN_MARK_TTL_S - 5 < ttl <= keys.RUN_MARK_TTL_S
    assert await aredis.exists(keys.run_key("job_1", 0)) == 0
    # the next attempt is a run of its own
    [_, [claimed]] = await queue.start_runs(aredis, [_queued("r1", attempt=1)], "w2")
    assert claimed


async def test_notify_waiting_publishes_on_the_channel_of_the_requests_api_process(
    aredis: redis.asyncio.Redis,
) -> None:
    pubsub = aredis.pubsub()
    await pubsub.subscribe(keys.delivery_channel("api-1"))
    await pubsub.get_message(timeout=1)
    request = QueuedRequest(id="r1", model="m", request={}, origin="api-1")
    assert await queue.notify_waiting(aredis, request, '{"id":"r1"}') == 1
    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
    # one event, as the workers' messages carry a step's: a JSON array
    assert message is not None and message["data"] == b'[{"id":"r1"}]'
    await pubsub.aclose()
