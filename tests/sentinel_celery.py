"""A Celery app configured by berth's celeryconf against $REDIS_URL, with one task that
records its argument in Redis: the sentinel tests run it as a real worker process."""

from __future__ import annotations

import os

from celery import Celery

from berth.plumbing.celeryconf import celery_settings
from berth.plumbing.redisconn import sync_redis_client
from tests.sentinel import DONE_KEY, PROBE_TASK

app = Celery("berth-sentinel-test")
app.conf.update(celery_settings(os.environ["REDIS_URL"]))


@app.task(name=PROBE_TASK)
def probe(token: str) -> None:
    client = sync_redis_client(os.environ["REDIS_URL"])
    try:
        client.rpush(DONE_KEY, token)
    finally:
        client.close()
