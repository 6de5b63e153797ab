"""Every role rides out faults, with real processes under load (streams and jobs, fake
engine): Redis killed with SIGKILL and restarted (AOF), a Sentinel failover, a worker
killed and restarted under the same id, a scheduler killed and restarted. The tests count
outcomes: no role exits, every stream ends with exactly one terminal event (or is refused
cleanly with a 503), every accepted job ends, and a new request is served afterwards."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from berth.plumbing.redisconn import sync_redis_client
from tests.e2e.faults import Load, defects, served_again
from tests.sentinel import SentinelSet, sentinel_set
from tests.stack import RunningStack
from tests.valkey import Valkey

pytestmark = pytest.mark.e2e

ENV = {
    "BERTH_FAKE_ENGINE": "true",
    "BERTH_FAKE_TOKENS_PER_S": "40",
    "BERTH_HEARTBEAT_TTL": "3",
    "BERTH_LIVENESS_CHECK_S": "0.5",
    "BERTH_MAINTENANCE_INTERVAL_S": "0.5",
    "BERTH_MODEL_GRACE_S": "0",
}


# a bound on a stack's start: it catches "never"; a loaded machine's slow start must not
# trip it
START_WITHIN_S = 300.0


def _proc(stack: RunningStack, role: str, nth: int = 0) -> Any:
    return [p for r, p in stack.stack.processes if r == role][nth]


def _stack(redis_url: str, **env: str) -> RunningStack:
    stack = RunningStack(redis_url, env=ENV | env)
    stack.start("worker", BERTH_WORKER_ID="w1")
    stack.start("scheduler", "api")
    stack.wait_ready(START_WITHIN_S)
    return stack


def test_redis_killed_and_restarted_under_load(valkey: Valkey) -> None:
    # a request whose events were lost with the pub/sub connection ends by its timeout
    # (with an error event) instead of waiting the default 600 s
    with _stack(valkey.url, BERTH_REQUEST_TIMEOUT_S="30") as stack:
        load = Load(stack.url)
        load.start(jobs=8)
        time.sleep(1.5)
        valkey.kill()
        time.sleep(2)
        valkey.start()
        streams = load.finish()
        jobs = load.job_outcomes()
        assert stack.stack.dead() is None, "a role exited"
        assert defects(streams) == {}, streams
        assert sum(streams.values()) == load.streams
        assert set(jobs) <= {"succeeded", "failed"} and sum(jobs.values()) == 8, jobs
        assert served_again(stack.url)
        stack.wait_ready(START_WITHIN_S)


def test_ready_is_503_while_redis_is_away_then_recovers(valkey: Valkey) -> None:
    with _stack(valkey.url) as stack:
        valkey.kill()
        try:
            ready = httpx.get(f"{stack.url}/ready", timeout=30)
            assert ready.status_code == 503 and ready.json()["reason"].startswith("redis")
            # a request arriving meanwhile: a clean 503 with Retry-After and an OpenAI body
            body = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}
            for _ in range(2):  # the first may meet the directory before it noticed
                answer = httpx.post(f"{stack.url}/v1/chat/completions", json=body, timeout=60)
            assert answer.status_code == 503, answer.text
            assert answer.headers["Retry-After"]
            assert answer.json()["error"]["code"] == "store_unavailable"
            # the model list is what the API already holds: answered now, not after the
            # Redis client's retries for a request count nobody can take
            models = httpx.get(f"{stack.url}/v1/models", timeout=5)
            assert models.status_code == 200 and models.json()["data"], models.text
            time.sleep(3)  # every role meets the outage: none may exit
            assert stack.stack.dead() is None, "a role exited while Redis was away"
        finally:
            valkey.start()
        stack.wait_ready(START_WITHIN_S)
        assert served_again(stack.url)
        assert stack.stack.dead() is None


def test_worker_restarted_under_the_same_id(valkey: Valkey) -> None:
    # the heartbeat outlives the restart, however slow the new process is to start: only
    # the incarnation tells the processes apart. (A TTL shorter than a restart on a loaded
    # machine counted the worker gone meanwhile, and a request refused with a 503.) No
    # timeout can end a stream before the bound of the test either
    with _stack(valkey.url, BERTH_HEARTBEAT_TTL="600") as stack:
        load = Load(stack.url, streams=16, concurrency=8, tokens=80)
        load.start(jobs=6)
        time.sleep(2)
        os.killpg(_proc(stack, "worker").pid, signal.SIGKILL)
        stack.start("worker", BERTH_WORKER_ID="w1")
        streams = load.finish()
        jobs = load.job_outcomes()
        assert defects(streams) == {}, streams
        # the killed process's streams ended (worker_lost) or failed over, none hung
        assert set(streams) <= {"finished", "error:worker_lost"}, streams
        assert jobs == {"succeeded": 6}, jobs
        assert served_again(stack.url)


def test_scheduler_killed_and_restarted(valkey: Valkey) -> None:
    with _stack(valkey.url) as stack:
        load = Load(stack.url)
        load.start(jobs=8)
        time.sleep(1.5)
        os.killpg(_proc(stack, "scheduler").pid, signal.SIGKILL)
        time.sleep(1)
        stack.start("scheduler")
        streams = load.finish()
        jobs = load.job_outcomes()
        assert streams == {"finished": load.streams}, streams
        assert jobs == {"succeeded": 8}, jobs


@pytest.fixture
def ha() -> Iterator[SentinelSet]:
    with sentinel_set() as running:
        yield running


@pytest.mark.timeout(900)  # its bounds catch "never": a loaded machine only makes it longer
def test_sentinel_failover_under_load(ha: SentinelSet) -> None:
    with _stack(ha.url, BERTH_REQUEST_TIMEOUT_S="30") as stack:
        load = Load(stack.url)
        load.start(jobs=8)
        time.sleep(1.5)
        ha.failover()
        streams = load.finish()
        with sync_redis_client(ha.url) as store:
            jobs = load.job_kinds(store)
        assert stack.stack.dead() is None, "a role exited"
        # none hung, none cut short as if finished, every one ended with one terminal chunk
        assert defects(streams) == {}, streams
        assert sum(streams.values()) == load.streams
        # a failover may lose the last writes before it (replication is asynchronous), so a
        # job can fail with a reason, but none stays unfinished and none runs twice
        assert set(jobs) <= {"once", "failed"} and sum(jobs.values()) == 8, jobs
        # the roles found the new primary: a new request is answered (the bound only
        # catches "never"; the seconds it takes are a figure of benchmarks/faults.py)
        assert served_again(stack.url)
