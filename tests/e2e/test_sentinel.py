"""Redis HA with Sentinel, for real: a primary, a replica and three sentinels (valkey-server
processes). Clients built from a redis+sentinel:// URL work, and after the primary is killed
the same client objects reach the promoted replica; a Celery worker configured by berth sends
and runs tasks before and after the failover. Each test runs twice: without TLS, and with
TLS everywhere (rediss+sentinel://, client certificates required); every role serves on
the TLS set."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from berth.plumbing.celeryconf import celery_settings
from berth.plumbing.redisconn import redis_client, sync_redis_client
from tests.e2e.faults import Load
from tests.sentinel import DONE_KEY, PROBE_QUEUE, PROBE_TASK, SentinelSet, sentinel_set
from tests.stack import RunningStack

pytestmark = pytest.mark.e2e


@pytest.fixture(params=["plain", "tls"])
def ha(request: pytest.FixtureRequest) -> Iterator[SentinelSet]:
    """The set without TLS (redis+sentinel://), and with it (rediss+sentinel://)."""
    with sentinel_set(tls=request.param == "tls") as running:
        yield running


async def test_clients_follow_a_failover(ha: SentinelSet) -> None:
    aclient = redis_client(ha.url, max_connections=8)
    sclient = sync_redis_client(ha.url)
    pubsub = aclient.pubsub()
    try:
        await aclient.set("k", "before")
        assert await aclient.get("k") == b"before"
        assert sclient.get("k") == b"before"
        # the write went to the primary the sentinels name
        assert ha.client(ha.primary_port()).get("k") == b"before"
        await pubsub.subscribe("ch")

        old, new = ha.failover()
        assert old != new

        # the same objects, no reconnect by hand: the retry rides out the switch
        await aclient.set("k", "after")
        assert await aclient.get("k") == b"after"
        assert sclient.get("k") == b"after"
        assert ha.client(new).get("k") == b"after"
        assert (await aclient.info("replication"))["role"] == "master"
    finally:
        await pubsub.aclose()
        await aclient.aclose()
        sclient.close()


async def test_a_command_in_flight_follows_a_failover(ha: SentinelSet) -> None:
    # a blocking read is in flight when the primary dies: its retry must reconnect through
    # the sentinels, not dial the dead primary until the retries run out
    aclient = redis_client(ha.url, max_connections=8)
    sclient = sync_redis_client(ha.url)
    try:
        await aclient.ping()
        sclient.ping()
        block_ms = 3000
        reading = asyncio.ensure_future(aclient.xread({"in-flight": "$"}, block=block_ms))
        sync_reading = asyncio.create_task(
            asyncio.to_thread(sclient.xread, {"in-flight": "$"}, block=block_ms)
        )
        await asyncio.sleep(0.5)
        old, new = await asyncio.to_thread(ha.failover)
        assert old != new
        # both end as a read that found nothing on the new primary, neither raises
        assert await reading in ([], None)
        assert await sync_reading in ([], None)
        assert (await aclient.info("replication"))["role"] == "master"
    finally:
        await aclient.aclose()
        sclient.close()


def _wait_done(client: redis.Redis, tokens: set[str], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        members: Any = client.lrange(DONE_KEY, 0, -1)
        done = {t.decode() for t in members}
        if tokens <= done:
            return
        time.sleep(0.2)
    raise AssertionError(f"tasks not run: {sorted(tokens - done)}")


def test_celery_sends_and_runs_across_a_failover(ha: SentinelSet) -> None:
    from celery import Celery

    sender = Celery("berth-sentinel-sender")
    sender.conf.update(celery_settings(ha.url))
    assert sender.conf.broker_url.startswith("sentinel://")
    env = dict(os.environ, REDIS_URL=ha.url)
    worker = subprocess.Popen(
        [
            sys.executable, "-m", "celery", "-A", "tests.sentinel_celery", "worker",
            "--pool=threads", "--concurrency=2", f"--queues={PROBE_QUEUE}",
            "--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel=WARNING",
        ],
        env=env,
    )  # fmt: skip
    store = sync_redis_client(ha.url)
    try:
        for i in range(3):
            sender.send_task(PROBE_TASK, args=[f"before-{i}"], queue=PROBE_QUEUE)
        _wait_done(store, {f"before-{i}" for i in range(3)})

        ha.failover()

        # the same app and worker process: both find the new primary through the sentinels
        for i in range(3):
            sender.send_task(PROBE_TASK, args=[f"after-{i}"], queue=PROBE_QUEUE)
        _wait_done(store, {f"after-{i}" for i in range(3)})
        assert worker.poll() is None
    finally:
        worker.terminate()
        worker.wait(30)
        store.close()
        sender.close()


def test_every_role_serves_on_a_tls_sentinel_set() -> None:
    """The API, a scheduler and a worker (fake engine) on rediss+sentinel:// serve streams
    and jobs, and `berth check` reads the worker's record over TLS."""
    env = {"BERTH_FAKE_ENGINE": "true", "BERTH_FAKE_TOKENS_PER_S": "200"}
    with sentinel_set(tls=True) as ha, RunningStack(ha.url, env=env) as stack:
        stack.start("worker", BERTH_WORKER_ID="w1")
        stack.start("scheduler", "api")
        stack.wait_ready(300)
        load = Load(stack.url, streams=8, concurrency=4, tokens=20)
        load.start(jobs=4)
        assert load.finish() == {"finished": 8}
        assert load.job_outcomes() == {"succeeded": 4}
        for worker, status in (("w1", 0), ("nobody", 1)):
            check = subprocess.run(
                [sys.executable, "-m", "berth.cli", "check", "worker"],
                env=stack.role_env(BERTH_WORKER_ID=worker),
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert check.returncode == status, (worker, check.stderr)
