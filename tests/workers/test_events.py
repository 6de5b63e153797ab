"""One request's events as the worker writes them (``RequestEvents``) against a real server:
how they are numbered, where an interactive request's and a job's events land, and the job
record its last event writes. Redis going away is in test_publisher.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio

from berth.plumbing.redisconn import redis_client
from berth.protocol import keys
from berth.protocol.chat import parse_chat_request
from berth.protocol.envelopes import QueuedRequest
from berth.protocol.errors import Timeout
from berth.store.jobs import JobStore
from berth.workers.engine.base import ChoiceDelta, EngineStep
from berth.workers.events import RequestEvents
from berth.workers.publisher import EventPublisher

_BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
# (type, seq) of a request's events: seq counts from 0 with its start
_STARTED_DELTA_FINISHED = [("started", 0), ("delta", 1), ("finished", 2)]


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    # the publisher's client reads without a per-reply timer, as on a worker
    conn = redis_client(redis_url, 4, socket_timeout=None)
    try:
        yield conn
    finally:
        await conn.aclose()


@pytest.fixture
async def publisher(client: redis.asyncio.Redis) -> AsyncIterator[EventPublisher]:
    running = EventPublisher(client)
    running.start()
    try:
        yield running
    finally:
        await running.close()


def _step(text: str, finish: bool = False) -> EngineStep:
    choice = ChoiceDelta(index=0, content=text, finish_reason="stop" if finish else None)
    return EngineStep(choices=[choice], prompt_tokens=3, completion_tokens=2, finished=finish)


async def _stream(client: redis.asyncio.Redis, stream: str) -> list[tuple[str, Any]]:
    entries: Any = await client.xrange(stream)
    return [(entry_id.decode(), json.loads(fields[b"e"])) for entry_id, fields in entries]


async def test_an_interactive_request_numbers_its_events_in_its_attempts_stream(
    client: redis.asyncio.Redis, publisher: EventPublisher
) -> None:
    queued = QueuedRequest(id="r1", model="m", request=_BODY, attempt=2, origin="api-1")
    events = RequestEvents(publisher, queued, "w1", JobStore(client, 3600), "inc-1")
    events.emit("started")
    events.step(_step("Hel"))
    events.step(_step("lo", finish=True), "finished")
    await publisher.drain()
    entries = await _stream(client, keys.request_events("r1"))
    # an entry holds the events written together, its id "{attempt}-{seq + 1}" of the last:
    # the API reads one attempt's events by seq. The first went at once; the delta waited
    # (STORE_EVERY_S) and went with the last, which goes at once
    assert [entry_id for entry_id, _ in entries] == ["2-1", "2-3"]
    got = [(entry_id, e) for entry_id, batch in entries for e in batch]
    assert [(e["type"], e["seq"]) for _, e in got] == [
        ("started", 0),
        ("delta", 1),
        ("finished", 2),
    ]
    assert {(e["worker"], e["attempt"], e["incarnation"]) for _, e in got} == {("w1", 2, "inc-1")}
    assert got[1][1]["choices"] == [{"index": 0, "content": "Hel"}]
    assert "usage" not in got[1][1]
    assert got[2][1]["choices"] == [{"index": 0, "content": "lo", "finish_reason": "stop"}]
    assert got[2][1]["usage"] == {
        "prompt_tokens": 3,
        "completion_tokens": 2,
        "cached_tokens": 0,
        "reasoning_tokens": 0,
    }
    assert 0 < await client.ttl(keys.request_events("r1")) <= keys.REQUEST_EVENTS_TTL_S
    # a job's stream and record are not touched by an interactive request
    assert not await client.exists(keys.job_events("r1"), keys.job_key("r1"))


async def test_published_events_reach_the_stream_though_no_event_follows(
    client: redis.asyncio.Redis, publisher: EventPublisher
) -> None:
    """A request that falls quiet after a delta (a long step, a stalled engine) still has
    that delta in its stream within STORE_EVERY_S: a reader's gap or silence finds it."""
    queued = QueuedRequest(id="r2", model="m", request=_BODY, origin="api-1")
    events = RequestEvents(publisher, queued, "w1", JobStore(client, 3600))
    events.emit("started")
    events.step(_step("Hel"))
    events.step(_step("lo"))
    await publisher.drain()
    stream = keys.request_events("r2")
    deadline = asyncio.get_running_loop().time() + 10
    while len(entries := await _stream(client, stream)) < 2:
        assert asyncio.get_running_loop().time() < deadline, entries
        await asyncio.sleep(0.02)
    # the first event went at once; both deltas later, together, by the timer
    assert [entry_id for entry_id, _ in entries] == ["0-1", "0-3"]
    assert [e["seq"] for _, batch in entries for e in batch] == [0, 1, 2]


async def test_a_job_streams_its_events_and_its_last_one_stores_the_result(
    client: redis.asyncio.Redis, publisher: EventPublisher
) -> None:
    jobs = JobStore(client, 3600)
    queued = QueuedRequest(id="job-1", model="m", request=_BODY, job=True)
    await jobs.create(queued, tenant="t")
    assert await jobs.claim("job-1", 0, "w1")
    events = RequestEvents(publisher, queued, "w1", jobs)
    events.collect_result(parse_chat_request(_BODY))
    events.emit("started")
    events.step(_step("Hel"))
    events.step(_step("lo", finish=True), "finished")
    await publisher.drain()
    got = [e for _, e in await _stream(client, keys.job_events("job-1"))]
    assert [(e["type"], e["seq"]) for e in got] == _STARTED_DELTA_FINISHED
    assert not await client.exists(keys.request_events("job-1"))
    record = await jobs.get("job-1")
    assert record is not None
    assert record["status"] == "succeeded"
    result = record["result"]
    assert result["id"] == "job-1"
    assert result["choices"][0]["message"] == {"role": "assistant", "content": "Hello"}
    assert result["choices"][0]["finish_reason"] == "stop"
    assert result["usage"]["prompt_tokens"] == 3


async def test_a_job_that_ends_with_an_error_stores_it_and_no_result(
    client: redis.asyncio.Redis, publisher: EventPublisher
) -> None:
    jobs = JobStore(client, 3600)
    queued = QueuedRequest(id="job-2", model="m", request=_BODY, job=True)
    await jobs.create(queued, tenant="t")
    assert await jobs.claim("job-2", 0, "w1")
    events = RequestEvents(publisher, queued, "w1", jobs)
    events.emit("started")
    events.error(Timeout("job-2 expired in the queue before it started"))
    await publisher.drain()
    got = [e for _, e in await _stream(client, keys.job_events("job-2"))]
    assert [(e["type"], e["seq"]) for e in got] == [("started", 0), ("error", 1)]
    record = await jobs.get("job-2")
    assert record is not None
    # a timeout is the job's expiry, any other error its failure
    assert record["status"] == "expired"
    assert record["result"] is None
    assert record["error"] == got[1]["error"]
