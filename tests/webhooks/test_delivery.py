"""The delivery loop in-process against a real Valkey and real HTTP receivers: a slow
receiver holds its own share of attempts and never another receiver's turn; a receiver
answering errors gets the event again, with the same id, until it takes it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
import redis.asyncio

from berth.protocol.envelopes import QueuedRequest
from berth.scheduler.settings import SchedulerSettings
from berth.store.jobs import JobStore
from berth.store.webhooks import Outbox
from berth.webhooks.delivery import WebhookDeliverer
from tests.e2e.webhook_receiver import SECRET, Receiver


@pytest.fixture
def fast() -> Iterator[Receiver]:
    receiver = Receiver()
    receiver.start()
    yield receiver
    receiver.stop()


@pytest.fixture
def slow() -> Iterator[tuple[Receiver, threading.Event]]:
    """A receiver that holds every request until the test lets it answer."""
    release = threading.Event()
    receiver = Receiver(hold=release)
    receiver.start()
    yield receiver, release
    release.set()
    receiver.stop()


def _settings(**extra: object) -> SchedulerSettings:
    return SchedulerSettings(
        webhook_secret=SECRET,
        webhook_allow_private=True,
        webhook_per_host=2,
        webhook_timeout_s=30,
        webhook_backoff_s=0.05,
        webhook_backoff_max_s=0.2,
        **extra,  # type: ignore[arg-type]
    )


async def _end_job(store: JobStore, job_id: str, url: str) -> None:
    queued = QueuedRequest(id=job_id, model="m", request={"model": "m"}, job=True, lane="job")
    await store.create(queued, tenant="t", webhook=url)
    await store.finish(job_id, None, "succeeded")


async def _until(condition: object, timeout_s: float = 30) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.01)


async def test_a_slow_receiver_never_holds_up_another(
    aredis: redis.asyncio.Redis,
    fast: Receiver,
    slow: tuple[Receiver, threading.Event],
) -> None:
    held, release = slow
    store = JobStore(aredis, 600)
    stop = asyncio.Event()
    deliverer = WebhookDeliverer(_settings(webhook_concurrency=8), aredis)
    running = asyncio.create_task(deliverer.run(stop))
    try:
        # both receivers listen on 127.0.0.1: the slow one is named by another host name
        slow_url = held.url.replace("127.0.0.1", "localhost")
        for i in range(20):
            await _end_job(store, f"job_slow_{i}", slow_url)
        await _until(lambda: held.waiting() == 2)  # its share: two attempts in flight
        await _end_job(store, "job_fast", fast.url)
        await _until(lambda: "job_fast" in fast.by_object())
        # the fast receiver was served while the slow one still held its two
        assert held.waiting() == 2 and held.events() == []
        release.set()
        await _until(lambda: len(held.by_object()) == 20)
    finally:
        stop.set()
        await running
    assert await Outbox(aredis).pending() == 0


async def test_an_error_answer_is_retried_with_the_same_id(
    aredis: redis.asyncio.Redis, fast: Receiver
) -> None:
    fast.refuse_next(3)  # three answers of 503 first
    store = JobStore(aredis, 600)
    stop = asyncio.Event()
    running = asyncio.create_task(WebhookDeliverer(_settings(), aredis).run(stop))
    try:
        await _end_job(store, "job_1", fast.url)
        await _until(lambda: "job_1" in fast.by_object())
    finally:
        stop.set()
        await running
    ids = {r.webhook_id for r in fast.received}
    assert len(fast.received) == 4 and len(ids) == 1
    assert await Outbox(aredis).pending() == 0
