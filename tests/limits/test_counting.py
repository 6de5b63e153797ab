"""A burst of one tenant's requests is counted in one call (berth/limits/counting.py), with
the same outcome as counting them one by one, against a real Valkey."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import redis.asyncio

from berth.limits import QuotaStore, TenantLimits
from berth.limits.counting import BurstCounter

RATE = 30


async def _scripts_run(r: redis.asyncio.Redis) -> int:
    stats: Any = await r.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("evalsha", "eval"))


async def test_a_burst_is_counted_in_one_call(aredis: redis.asyncio.Redis) -> None:
    counter = BurstCounter(QuotaStore(aredis))
    limits = TenantLimits(requests_per_minute=RATE)
    now = time.time()
    before = await _scripts_run(aredis)
    results = await asyncio.gather(*(counter.count(limits, "a", now) for _ in range(50)))
    # the first RATE fit, in the order they came; the rest are refused and not counted
    assert [fits for fits, _, _ in results] == [True] * RATE + [False] * (50 - RATE)
    counts = results[-1][1]
    assert (counts.requests_current, counts.refused) == (RATE, "requests")
    # one call for all fifty (the script's first load may add one)
    assert await _scripts_run(aredis) - before <= 2
    # alone, a request is counted at once; another tenant counts apart
    assert (await counter.count(limits, "a", time.time()))[0] is False
    assert (await counter.count(limits, "b", time.time()))[0] is True


async def test_requests_arriving_while_a_call_is_out_wait_for_the_next(
    aredis: redis.asyncio.Redis,
) -> None:
    counter = BurstCounter(QuotaStore(aredis))
    limits = TenantLimits(requests_per_minute=RATE)
    first = asyncio.ensure_future(counter.count(limits, "a", time.time()))
    await asyncio.sleep(0)  # its call is out now
    later = [asyncio.ensure_future(counter.count(limits, "a", time.time())) for _ in range(40)]
    results = [await first, *[await f for f in later]]
    assert sum(fits for fits, _, _ in results) == RATE
    # the forty went together: all of them saw the same counts
    assert all(counts == results[1][1] for _, counts, _ in results[1:])


async def test_a_failed_call_fails_its_batch_and_not_the_next(
    aredis: redis.asyncio.Redis, redis_url: str
) -> None:
    # a client on a port nothing listens on: every call fails
    dead = redis.asyncio.Redis(port=1, socket_connect_timeout=0.2)
    counter = BurstCounter(QuotaStore(dead))
    limits = TenantLimits(requests_per_minute=RATE)
    outcomes = await asyncio.gather(
        *(counter.count(limits, "a", time.time()) for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(o, redis.ConnectionError) for o in outcomes)
    await dead.aclose()
    # a counter over a live server is not held by anything left behind
    live = BurstCounter(QuotaStore(aredis))
    assert (await live.count(limits, "a", time.time()))[0]
