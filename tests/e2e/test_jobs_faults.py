"""Durability against real processes: kill -9 the scheduler and the worker while jobs are
queued and running. Every accepted job ends exactly once: succeeded, or failed with a
reason after its retries. Deadlines end queued work as expired."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from berth.protocol import keys
from tests.stack import RunningStack, StackFactory

pytestmark = pytest.mark.e2e

MODEL = "fake-model"
TERMINAL = ("succeeded", "failed", "cancelled", "expired")
# the workers' heartbeat TTL: a killed worker counts gone about a TTL after its last beat;
# one just started, its beats held up by a loaded machine, must not (four beats fit in it)
TTL_S = 4.0
# a bound on what waits for a killed worker to count gone (a TTL) and its job to move on:
# it catches "never", it is not a figure
GONE_WITHIN_S = 10 * TTL_S
# a bound on a process's start or a job's: it catches "never", a loaded machine's slow start
# must not trip it
START_WITHIN_S = 120.0


def _body(tokens: int) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": tokens}


@pytest.fixture
def stack(make_stack: StackFactory) -> Iterator[RunningStack]:
    env = {
        "BERTH_HEARTBEAT_TTL": str(TTL_S),
        "BERTH_MAINTENANCE_INTERVAL_S": "0.5",
        "BERTH_FAKE_ENGINE": "true",
        "BERTH_FAKE_TOKENS_PER_S": "20",
    }
    with make_stack(env=env, ready=False) as running:  # each test starts its own roles
        yield running


def _proc(stack: RunningStack, role: str, nth: int = 0) -> Any:
    return [p for r, p in stack.stack.processes if r == role][nth]


def _all_done(client: httpx.Client, ids: list[str], timeout_s: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while True:
        jobs = [client.get(f"/v1/jobs/{i}").json() for i in ids]
        if all(j["status"] in TERMINAL for j in jobs) or time.monotonic() > deadline:
            return jobs
        time.sleep(0.2)


def _running_attempt(client: httpx.Client, job_id: str) -> int:
    """The attempt a worker is running (1 for the first), 0 while none is."""
    job = client.get(f"/v1/jobs/{job_id}").json()
    return int(job["attempts"]) if job["status"] == "running" else 0


def test_jobs_survive_killed_scheduler_and_worker(stack: RunningStack) -> None:
    # a small worker, so some jobs run while the rest wait in the queue
    stack.start("worker", BERTH_CAPACITY="4", BERTH_WORKER_ID="w-old")
    stack.start("scheduler", BERTH_SCHEDULER_ID="s-old")
    stack.start("api")
    stack.wait_ready(START_WITHIN_S)
    client = httpx.Client(base_url=stack.url, timeout=30)
    ids = [client.post("/v1/jobs", json=_body(30)).json()["id"] for _ in range(12)]
    r = redis.Redis.from_url(stack.redis_url)
    deadline = time.monotonic() + START_WITHIN_S
    while r.zcard(keys.JOBS_INFLIGHT) < 4:
        assert time.monotonic() < deadline, "no job started"
        time.sleep(0.05)
    # no warning: no deregistration, no acks, no final events
    for role in ("scheduler", "worker"):
        os.killpg(_proc(stack, role).pid, signal.SIGKILL)
    time.sleep(0.5)
    stack.start("worker", BERTH_CAPACITY="8", BERTH_WORKER_ID="w-new")
    stack.start("scheduler", BERTH_SCHEDULER_ID="s-new")
    jobs = _all_done(client, ids, timeout_s=START_WITHIN_S)
    assert [j["status"] for j in jobs] == ["succeeded"] * len(ids), [
        (j["id"], j["status"], j["error"]) for j in jobs
    ]
    for job in jobs:
        assert job["result"]["usage"]["completion_tokens"] == 30
        # one result, and one terminal event, whatever ran twice
        entries: Any = r.xrange(keys.job_events(job["id"]))
        events = [json.loads(f[b"e"]) for _, f in entries]
        assert sum(e["type"] in ("finished", "error", "cancelled") for e in events) == 1
    # the jobs that were running on the killed worker ran again
    assert any(j["attempts"] == 2 for j in jobs)
    assert not r.zcard(keys.JOBS_INFLIGHT)


def test_job_fails_with_reason_after_its_retries(stack: RunningStack) -> None:
    stack.env["BERTH_MAX_ATTEMPTS"] = "2"
    stack.start("scheduler", "api")
    client = httpx.Client(base_url=stack.url, timeout=30)
    r = redis.Redis.from_url(stack.redis_url)
    for n in range(2):
        stack.start("worker", BERTH_WORKER_ID=f"w-{n}")
        if n == 0:
            stack.wait_ready(START_WITHIN_S)
        deadline = time.monotonic() + START_WITHIN_S
        while (
            not r.exists(keys.worker_key(f"w-{n}")) or not client.get("/v1/models").json()["data"]
        ):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        if n == 0:
            job_id = client.post("/v1/jobs", json=_body(1000)).json()["id"]
        # attempt n + 1 running, so on the one live worker: the job shows attempt 1 running
        # until the killed first worker counts gone, on a fast machine after the second is
        # up; killed at that moment, the second worker would never have held the job
        deadline = time.monotonic() + GONE_WITHIN_S
        while _running_attempt(client, job_id) != n + 1:
            assert time.monotonic() < deadline, client.get(f"/v1/jobs/{job_id}").json()
            time.sleep(0.05)
        os.killpg(_proc(stack, "worker", n).pid, signal.SIGKILL)
    [job] = _all_done(client, [job_id], timeout_s=GONE_WITHIN_S)
    assert job["status"] == "failed"
    assert job["error"]["error"]["code"] == "worker_lost"
    assert "2 attempts" in job["error"]["error"]["message"]


def test_queued_job_past_its_deadline_expires(stack: RunningStack) -> None:
    stack.start("worker", "api")
    stack.wait_served(START_WITHIN_S)
    client = httpx.Client(base_url=stack.url, timeout=30)
    job = client.post("/v1/jobs", json=_body(3), headers={"X-Deadline-Seconds": "0.3"}).json()
    time.sleep(0.5)
    stack.start("scheduler")  # only now can anything run it
    [done] = _all_done(client, [job["id"]], timeout_s=START_WITHIN_S)
    assert done["status"] == "expired"
    assert done["error"]["error"]["code"] == "timeout"
