"""The per-tenant counters (berth/limits/store.py and its Lua scripts) against a real Valkey."""

from __future__ import annotations

import time

import pytest
import redis.asyncio

from berth.limits import Admission, QuotaStore, TenantLimits
from berth.limits.model import frozen_window
from berth.protocol import keys
from berth.protocol.envelopes import QueuedRequest

STREAM = keys.ingress_stream("m")
# the start of the next minute: real time, since the keys' expiries are absolute
NOW = float((int(time.time()) // 60 + 1) * 60)


@pytest.fixture(autouse=True)
def _now_is_now() -> None:
    """NOW is taken again for each test: a suite runs for minutes, and a NOW taken when the
    module was imported would put the expiries these tests write in the past."""
    global NOW
    NOW = float((int(time.time()) // 60 + 1) * 60)


def _ask(
    tenant: str,
    rid: str,
    *,
    cost: int = 1,
    bound: int = 100,
    floor: int = 2,
    running: bool = False,
    queued: bool = True,
    now: float | None = None,
) -> Admission:
    now = NOW if now is None else now
    return Admission(
        tenant=tenant,
        request_id=rid,
        cost=cost,
        stream=STREAM if queued else None,
        queue_bound=bound,
        fair_floor=floor,
        running_until=now + 600 if running else 0,
        queued_until=now + 600 if queued else 0,
    )


async def test_requests_per_minute_slide_over_the_minute(aredis: redis.asyncio.Redis) -> None:
    store = QuotaStore(aredis)
    limits = TenantLimits(requests_per_minute=3)
    results = [await store.count_request(limits, "a", NOW) for _ in range(4)]
    assert [r.allowed for r in results] == [True, True, True, False]
    assert (results[-1].refused, results[-1].requests_current) == ("requests", 3)
    # the refused one was not counted; another tenant counts apart
    assert (await store.count_request(limits, "b", NOW)).allowed
    # half a minute into the next minute, the three count as 1.5 -> 1: two more fit
    later = NOW + 90
    assert (await store.count_request(limits, "a", later)).allowed
    assert (await store.count_request(limits, "a", later)).allowed
    assert not (await store.count_request(limits, "a", later)).allowed


async def test_frozen_windows_never_turn(aredis: redis.asyncio.Redis) -> None:
    # what the e2e tests run with (rate_window_frozen_at): a request counted just before a
    # minute's turn still counts in full after it, however late
    store = QuotaStore(aredis, frozen_window(NOW - 1))
    limits = TenantLimits(requests_per_minute=2)
    assert (await store.count_request(limits, "a", NOW - 1)).allowed
    assert (await store.count_request(limits, "a", NOW - 0.5)).allowed
    for later in (NOW + 0.1, NOW + 90):
        refused = await store.count_request(limits, "a", later)
        assert (refused.allowed, refused.requests_current) == (False, 2)
    # on the real clock the turn forgets one of the two: floor(2 * (1 - 0.1/60)) = 1
    assert (await QuotaStore(aredis).count_request(limits, "a", NOW + 0.1)).allowed


async def test_admission_reads_the_request_rate_without_counting_it(
    aredis: redis.asyncio.Redis,
) -> None:
    store = QuotaStore(aredis)
    limits = TenantLimits(requests_per_minute=1)
    assert (await store.count_request(limits, "a", NOW)).allowed
    # admission checks tokens, concurrency and the queue; the rate was counted already
    admitted = await store.admit(limits, _ask("a", "r1"), NOW)
    assert (admitted.allowed, admitted.requests_current) == (True, 1)
    assert (await store.admit(limits, _ask("a", "r2"), NOW)).requests_current == 1


async def test_tokens_per_minute_count_the_cost(aredis: redis.asyncio.Redis) -> None:
    store = QuotaStore(aredis)
    limits = TenantLimits(tokens_per_minute=100)
    assert (await store.admit(limits, _ask("a", "r1", cost=60), NOW)).allowed
    refused = await store.admit(limits, _ask("a", "r2", cost=60), NOW)
    assert (refused.allowed, refused.refused, refused.tokens_current) == (False, "tokens", 60)
    assert (await store.admit(limits, _ask("a", "r3", cost=40), NOW)).allowed
    # the count keys expire on their own
    assert 0 < await aredis.ttl(keys.quota_rate("a", "tokens", int(NOW // 60))) <= 125


async def test_concurrency_is_held_until_released_or_the_lease_lapses(
    aredis: redis.asyncio.Redis,
) -> None:
    store = QuotaStore(aredis)
    limits = TenantLimits(concurrent_requests=2)
    ask = lambda rid: _ask("a", rid, running=True, queued=False)  # noqa: E731
    assert (await store.admit(limits, ask("r1"), NOW)).allowed
    assert (await store.admit(limits, ask("r2"), NOW)).allowed
    assert (await store.admit(limits, ask("r3"), NOW)).refused == "concurrent"
    await store.release_running("a", "r1")
    assert (await store.admit(limits, ask("r3"), NOW)).allowed
    # an API process that died leaves its leases: they lapse at their expiry
    after = NOW + 601
    assert (
        await store.admit(limits, _ask("a", "r4", running=True, queued=False, now=after), after)
    ).allowed
    assert await aredis.zcard(keys.quota_running("a")) == 1


async def test_a_bursting_tenant_cannot_take_another_tenants_share(
    aredis: redis.asyncio.Redis,
) -> None:
    store = QuotaStore(aredis)
    limits = TenantLimits()
    # tenant a alone may fill the whole queue (bound 10)...
    for i in range(10):
        assert (await store.admit(limits, _ask("a", f"a{i}", bound=10), NOW)).allowed
        await aredis.xadd(STREAM, {"r": "x"})
    alone = await store.admit(limits, _ask("a", "a10", bound=10), NOW)
    assert (alone.allowed, alone.refused) == (False, "queue_full")
    # ...but when b arrives, b still gets its share (10 / 2 tenants) over the full queue
    for i in range(5):
        got = await store.admit(limits, _ask("b", f"b{i}", bound=10), NOW)
        assert got.allowed, got
    assert (await store.admit(limits, _ask("b", "b5", bound=10), NOW)).refused == "queued"
    # a stays refused until its requests leave the queue; then it is admitted again
    assert (await store.admit(limits, _ask("a", "a10", bound=10), NOW)).refused == "queued"
    left = [QueuedRequest(id=f"a{i}", model="m", request={}, tenant="a") for i in range(6)]
    await store.release_queued(left)
    await store.release_queued(left)  # twice: releasing is idempotent
    assert int(await aredis.hget(keys.quota_queue_counts(STREAM), "a") or 0) == 4
    assert (await store.admit(limits, _ask("a", "a10", bound=10), NOW)).allowed


async def test_queue_leases_of_a_dead_api_lapse(aredis: redis.asyncio.Redis) -> None:
    store = QuotaStore(aredis)
    limits = TenantLimits(queued_requests=1)
    assert (await store.admit(limits, _ask("a", "r1"), NOW)).allowed
    assert (await store.admit(limits, _ask("a", "r2"), NOW)).refused == "queued"
    after = NOW + 601
    assert (await store.admit(limits, _ask("a", "r2", now=after), after)).allowed
    assert int(await aredis.hget(keys.quota_queue_counts(STREAM), "a") or 0) == 1


async def test_file_storage_counts_files_and_bytes(aredis: redis.asyncio.Redis) -> None:
    store = QuotaStore(aredis)
    limits = TenantLimits(files=2, file_bytes=100)
    assert (await store.reserve_file(limits, "a", "f1", 60, NOW + 100, NOW)).allowed
    over_bytes = await store.reserve_file(limits, "a", "f2", 50, NOW + 100, NOW)
    assert (over_bytes.allowed, over_bytes.bytes, over_bytes.earliest_expiry) == (
        False,
        60,
        int(NOW + 100),
    )
    assert (await store.reserve_file(limits, "a", "f2", 40, NOW + 200, NOW)).allowed
    over_count = await store.reserve_file(limits, "a", "f3", 0, NOW + 100, NOW)
    assert (over_count.allowed, over_count.files) == (False, 2)
    await store.release_file("a", "f1")
    assert (await store.reserve_file(limits, "a", "f3", 0, NOW + 100, NOW)).allowed
    # expired files stop counting
    later = NOW + 150
    usage = await store.reserve_file(limits, "a", "f4", 10, later + 100, later)
    assert (usage.allowed, usage.files, usage.bytes) == (True, 2, 50)
