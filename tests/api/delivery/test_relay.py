"""The token relay against a real server: one channel per API process, subscribed before any
request opens; each message (a step's events) fans out to the requests it names, in order."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import hiredis
import pytest
import redis.asyncio

from berth.api.delivery import relay as relay_module
from berth.api.delivery.followers import StreamFollowers
from berth.api.delivery.relay import TokenRelay
from berth.plumbing.redisconn import redis_client
from berth.protocol import keys
from berth.protocol.envelopes import event_json, events_message
from berth.protocol.errors import StoreUnavailable
from berth.store.tokens import is_published
from tests.stack import free_port
from tests.valkey import Valkey

CHANNEL = keys.delivery_channel("api-1")


def _step(*events: tuple[str, int, str]) -> bytes:
    """One message as a worker publishes it: the events of one step, (id, seq, type) each."""
    return events_message(
        [event_json(rid, type_, seq=seq).encode() for rid, seq, type_ in events]  # type: ignore[arg-type]
    )


async def test_events_reach_their_request_only(aredis: redis.asyncio.Redis) -> None:
    relay = TokenRelay(aredis, "api-1")
    await relay.start()
    try:
        a = await relay.open("a")
        b = await relay.open("b")
        # open() returned: the channel is live, so nothing published now is lost
        for seq in range(50):
            await aredis.publish(CHANNEL, _step(("a", seq, "delta"), ("x", seq, "delta")))
        await aredis.publish(CHANNEL, _step(("b", 0, "finished")))
        got_a = [await asyncio.wait_for(a.get(), 5) for _ in range(50)]
        got_b = await asyncio.wait_for(b.get(), 5)
        assert [e.seq if e else None for e in got_a] == list(range(50))
        assert got_b is not None and got_b.terminal and a.empty()
        relay.release("a")
        await aredis.publish(CHANNEL, _step(("a", 50, "delta"), ("b", 1, "delta")))
        got = await asyncio.wait_for(b.get(), 5)
        # a released request gets nothing more
        assert got is not None and got.seq == 1 and a.empty()
        # one subscriber for the process, however many requests it holds
        assert (await aredis.pubsub_numsub(CHANNEL))[0][1] == 1
    finally:
        await relay.close()


async def test_a_burst_read_in_one_go_reaches_every_request_in_order(
    aredis: redis.asyncio.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Many messages arrive in one socket read: the relay takes them from the connection's
    reader, each step's events to their requests, with nothing lost or reordered."""
    relay = TokenRelay(aredis, "api-1")
    await relay.start()
    try:
        ids = [f"r{i}" for i in range(8)]
        queues = {rid: await relay.open(rid) for rid in ids}
        pipe = aredis.pipeline(transaction=False)
        for seq in range(200):
            pipe.publish(CHANNEL, _step(*((rid, seq, "delta") for rid in ids)))
        # opened while the burst is on its way
        late = asyncio.ensure_future(relay.open("late"))
        await pipe.execute()
        await asyncio.wait_for(late, 5)
        for rid in ids:
            got = [await asyncio.wait_for(queues[rid].get(), 5) for _ in range(200)]
            assert [e.seq if e else None for e in got] == list(range(200))
            assert queues[rid].empty()
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    finally:
        await relay.close()


async def test_a_killed_connection_is_made_again_and_every_request_resyncs(
    aredis: redis.asyncio.Redis,
) -> None:
    relay = TokenRelay(aredis, "api-1")
    await relay.start()
    try:
        queues = {rid: await relay.open(rid) for rid in ("a", "b")}
        # the server drops the relay's pub/sub connection, as on a network fault
        assert await aredis.execute_command("CLIENT KILL TYPE pubsub") >= 1
        got = await asyncio.wait_for(queues["a"].get(), 10)
        assert got is None  # RESYNC: whatever was published meanwhile is in the stream
        assert (await asyncio.wait_for(queues["b"].get(), 5)) is None
        assert relay.reconnects == 1
        # the channel is live again
        deadline = asyncio.get_running_loop().time() + 5
        while await aredis.publish(CHANNEL, _step(("b", 0, "started"))) == 0:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)
        event = await asyncio.wait_for(queues["b"].get(), 5)
        assert event is not None and event.seq == 0
    finally:
        await relay.close()


async def test_a_malformed_message_is_logged_and_dropped(
    aredis: redis.asyncio.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    relay = TokenRelay(aredis, "api-1")
    await relay.start()
    try:
        queue = await relay.open("a")
        for bad in (
            "not json",
            '{"id":"a","seq":0,"type":"delta"}',  # one event, not a step's array
            '[{"id":"a","seq":"0","type":"delta"}]',  # seq is not an integer
            '[{"id":"a","seq":0,"type":"guess"}]',  # no such event type
            '[{"id":"a","seq":0,"type":"delta","choices":[{"content":"x"}]}]',  # no index
        ):
            await aredis.publish(CHANNEL, bad)
        await aredis.publish(CHANNEL, '[{"id":"a","seq":0,"type":"finished","later":1}]')
        got = await asyncio.wait_for(queue.get(), 5)
        # the relay goes on; a field it does not know is ignored
        assert got is not None and got.seq == 0 and got.type == "finished" and queue.empty()
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 5 and all(m.startswith("malformed events on") for m in errors)
    finally:
        await relay.close()


async def test_a_resumed_stream_is_followed_from_its_event_stream(
    aredis: redis.asyncio.Redis,
) -> None:
    """A stream resumed here was queued by another API process (its worker publishes there):
    its events come from the request's stream, after the last one the client had."""
    followers = StreamFollowers(aredis)
    await followers.start()
    relay = TokenRelay(aredis, "api-2", followers)
    await relay.start()
    stream = keys.request_events("r")
    try:
        # as the worker writes them: an entry holds the events written together
        await aredis.xadd(stream, {"e": _step(("r", 0, "delta"))}, id=keys.event_entry_id(0, 0))
        entry = keys.event_entry_id(0, 2)
        await aredis.xadd(stream, {"e": _step(("r", 1, "delta"), ("r", 2, "delta"))}, id=entry)
        queue = await relay.open("r", follow_after=keys.event_entry_id(0, 1))
        entry = keys.event_entry_id(0, 3)
        await aredis.xadd(stream, {"e": _step(("r", 3, "finished"))}, id=entry)
        got = [await asyncio.wait_for(queue.get(), 5) for _ in range(3)]
        # after the entry of event 1: the one holding 1 and 2 (the reader drops 1 by seq)
        assert [(e.seq, e.type) for e in got if e] == [(1, "delta"), (2, "delta"), (3, "finished")]
        relay.release("r")
    finally:
        await relay.close()
        await followers.close()


async def test_a_relay_started_before_redis_connects_once_it_comes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Started while nothing listens on Redis's port (an API started first): start returns
    at once; a request opened meanwhile waits for the connection, a bounded while, then is
    refused; one opened shortly before Redis comes is served once the relay subscribed."""
    server = Valkey(tmp_path, free_port())
    client = redis_client(server.url)
    relay = TokenRelay(client, "api-1")
    await relay.start()
    try:
        monkeypatch.setattr(relay_module, "CONNECT_WAIT_S", 0.2)
        with pytest.raises(StoreUnavailable):
            await relay.open("early")
        monkeypatch.setattr(relay_module, "CONNECT_WAIT_S", 60.0)
        waiting = asyncio.ensure_future(relay.open("a"))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        await asyncio.to_thread(server.start)
        queue = await asyncio.wait_for(waiting, 60)
        # open() returned: the channel is live
        assert (
            await client.publish(CHANNEL, _step(("early", 0, "finished"), ("a", 0, "finished")))
            == 1
        )
        got = await asyncio.wait_for(queue.get(), 5)
        assert got is not None and got.seq == 0 and got.terminal
        assert relay.reconnects == 0  # a first connection, not a resync
    finally:
        await relay.close()
        await client.aclose()
        server.stop()


@pytest.mark.parametrize(
    ("resp", "published"),
    [
        (b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nx\r\n", True),  # RESP2
        (b">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nx\r\n", True),  # RESP3 push
        (b">3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n", False),
        (b"$4\r\nPONG\r\n", False),
    ],
)
def test_published_messages_are_told_from_other_replies(resp: bytes, published: bool) -> None:
    """The relay routes published messages itself, whichever protocol the reader speaks;
    the rest goes through redis-py."""
    reader = hiredis.Reader()
    reader.feed(resp)
    assert is_published(reader.gets()) is published
