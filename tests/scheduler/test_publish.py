"""The scheduler's Celery publish runs off its event loop: with Redis killed, a publish
waits out kombu's retry on its own thread while the loop goes on turning, and it lands
(once, in order) when Redis is back."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import redis
from celery import Celery

from berth.plumbing.celeryconf import celery_settings
from berth.scheduler import metrics
from berth.scheduler.publish import TaskPublisher
from tests.valkey import Valkey

QUEUE = "berth.worker.test"


def _publisher(url: str) -> TaskPublisher:
    celery = Celery("test")
    celery.conf.update(celery_settings(url))
    return TaskPublisher(celery)


def _published(url: str) -> list[dict[str, Any]]:
    """The groups on the queue, oldest first (kombu pushes on the left)."""
    groups = []
    for message in reversed(redis.Redis.from_url(url).lrange(QUEUE, 0, -1)):
        args, _kwargs, _embed = json.loads(base64.b64decode(json.loads(message)["body"]))
        groups.append(args[0])
    return groups


async def test_publishes_keep_their_order(valkey: Valkey) -> None:
    publisher = _publisher(valkey.url)
    try:
        await asyncio.gather(*(publisher.send({"n": n}, QUEUE) for n in range(50)))
    finally:
        publisher.close()
    assert [group["n"] for group in _published(valkey.url)] == list(range(50))


async def test_the_loop_turns_while_a_publish_waits_for_redis(valkey: Valkey) -> None:
    publisher = _publisher(valkey.url)
    turns = 0

    async def turn() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0.01)

    try:
        await publisher.send({"n": 0}, QUEUE)  # kombu's connection is open
        valkey.kill()
        sending = asyncio.create_task(publisher.send({"n": 1}, QUEUE))
        turning = asyncio.create_task(turn())
        # the publish cannot land while Redis is gone; kombu retries it for ~15 s
        while turns < 50:
            await asyncio.sleep(0.01)
        assert not sending.done()
        assert metrics.PUBLISHES_WAITING._value.get() == 1
        valkey.start()
        await sending
        turning.cancel()
    finally:
        publisher.close()
    assert [group["n"] for group in _published(valkey.url)] == [0, 1]
    assert metrics.PUBLISHES_WAITING._value.get() == 0
