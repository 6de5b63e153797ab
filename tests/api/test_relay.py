"""The token relay against a real server: subscribe first, then every event arrives in order."""

from __future__ import annotations

import asyncio

import redis.asyncio

from berth.api.relay import TokenRelay
from berth.protocol import keys


async def test_events_reach_their_request_only(aredis: redis.asyncio.Redis) -> None:
    relay = TokenRelay(aredis)
    await relay.start()
    try:
        a = await relay.open("a")
        b = await relay.open("b")
        # open() returned: the subscription is live, so nothing published now is lost
        for seq in range(50):
            await aredis.publish(
                keys.token_channel("a"), f'{{"id":"a","seq":{seq},"type":"delta"}}'
            )
        await aredis.publish(keys.token_channel("b"), '{"id":"b","seq":0,"type":"finished"}')
        got_a = [await asyncio.wait_for(a.get(), 5) for _ in range(50)]
        got_b = await asyncio.wait_for(b.get(), 5)
        assert [e.seq for e in got_a] == list(range(50))
        assert got_b.terminal and a.empty()
        relay.release("a")
        await asyncio.sleep(0.05)
        assert await aredis.publish(keys.token_channel("a"), "x") == 0
    finally:
        await relay.close()
