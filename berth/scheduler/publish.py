"""The scheduler's Celery publish, off its event loop.

kombu's publish is a blocking call: a quick write to Redis while Redis answers, but
while it is away kombu retries it for as long as ``task_publish_retry_policy`` allows
(about 15 s, ``plumbing/celeryconf.py``). Made on the event loop, that retry would hold
every other task of the replica (its liveness proof, its batch finaliser, the async
Redis retries of its other loops) for the whole outage.

Here every publish runs on one thread of its own, one at a time and in the order the
loop asked for them, and the loop awaits its end before it acknowledges the group's
entries: the queue's at-least-once delivery is kept (an entry whose publish failed
stays pending and is read again; a worker skips a second delivery of a request it ran,
``store/queue.py: start_runs``). The wait is bounded by kombu's retry policy: past it
the publish raises, and the scheduler's supervised loop starts over.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from celery import Celery

from berth.plumbing.celeryconf import RUN_GROUP_TASK
from berth.scheduler import metrics


class TaskPublisher:
    """Sends ``run_group`` tasks through ``celery`` from one thread, in order."""

    def __init__(self, celery: Celery) -> None:
        self._celery = celery
        # one thread: publishes leave in the order they were asked for, and kombu's
        # producer and connection are only ever used from that thread
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="celery-publish")

    async def send(self, group: dict[str, Any], queue: str) -> None:
        """Publish ``group`` on ``queue``; returns once the broker has it, raises when
        kombu gave up."""
        metrics.PUBLISHES_WAITING.inc()
        try:
            await asyncio.wrap_future(self._thread.submit(self._publish, group, queue))
        finally:
            metrics.PUBLISHES_WAITING.dec()

    def _publish(self, group: dict[str, Any], queue: str) -> None:
        self._celery.send_task(RUN_GROUP_TASK, args=[group], queue=queue)

    def close(self) -> None:
        """Wait for a publish still under way (its retry policy bounds it), then stop."""
        self._thread.shutdown(wait=True)
