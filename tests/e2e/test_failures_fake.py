"""Failure paths through real processes on the fake engine: a dying worker, a full queue."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import redis

from tests.stack import RunningStack, StackFactory

pytestmark = pytest.mark.e2e

MODEL = "fake-model"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1500}


@pytest.fixture
def stack(make_stack: StackFactory) -> Iterator[RunningStack]:
    env = {"BERTH_HEARTBEAT_TTL": "2", "BERTH_LIVENESS_CHECK_S": "0.5", "BERTH_MODEL_GRACE_S": "0"}
    with make_stack(env=env, ready=False) as running:  # each test starts its own roles
        yield running


def _sse_data(lines: Iterator[str]) -> Iterator[str]:
    for line in lines:
        if line.startswith("data: "):
            yield line[len("data: ") :]


def test_killed_worker_ends_a_stream_it_cannot_continue_with_one_error_event(
    stack: RunningStack,
) -> None:
    # logprobs asked: the earlier tokens' logprobs are not kept, so a continuation would not
    # be the same answer (protocol/continuation.py); the stream ends as it always did
    stack.start("worker", BERTH_FAKE_ENGINE="true", BERTH_FAKE_TOKENS_PER_S="50")
    stack.start("scheduler", "api")
    stack.wait_ready(60)
    worker = stack.stack.processes[0][1]
    events: list[str] = []
    body = {**BODY, "stream": True, "logprobs": True}
    with httpx.stream("POST", f"{stack.url}/v1/chat/completions", json=body, timeout=30) as answer:
        data = _sse_data(answer.iter_lines())
        for payload in data:
            events.append(payload)
            if len(events) == 3:  # the stream is flowing: kill the worker without warning
                os.killpg(worker.pid, signal.SIGKILL)
                break
        started = time.monotonic()
        events.extend(data)
    # noticed by the worker's heartbeat (a TTL of 2 s), not by the request's timeout (600 s):
    # the error's code says which; the bound only catches the wait for the timeout
    assert time.monotonic() - started < 60
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["code"] == "worker_lost"
    assert sum('"error"' in e for e in events) == 1
    assert not any('"finish_reason":"stop"' in e for e in events)


def test_full_queue_answers_429_with_retry_after(stack: RunningStack) -> None:
    # no scheduler runs, so queued requests stay queued
    stack.env["BERTH_MAX_QUEUE_PER_MODEL"] = "2"
    stack.start("worker", BERTH_FAKE_ENGINE="true")
    stack.start("api")
    stack.wait_served(60)
    stop = threading.Event()

    def hold() -> None:
        with contextlib.suppress(httpx.TimeoutException):
            httpx.post(f"{stack.url}/v1/chat/completions", json=BODY, timeout=5)

    holders = [threading.Thread(target=hold) for _ in range(2)]
    for t in holders:
        t.start()
    r = redis.Redis.from_url(stack.redis_url)
    deadline = time.monotonic() + 5
    while r.xlen(f"berth:ingress:{MODEL}") < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    answer = httpx.post(f"{stack.url}/v1/chat/completions", json=BODY, timeout=5)
    stop.set()
    assert answer.status_code == 429
    assert answer.headers["Retry-After"] == "1"
    assert answer.json()["error"]["code"] == "queue_full"
    for t in holders:
        t.join()


def test_known_model_without_live_workers_is_503_unknown_is_404(stack: RunningStack) -> None:
    stack.start("worker", BERTH_FAKE_ENGINE="true", BERTH_ADAPTERS='{"fake-lora": "/nowhere"}')
    stack.start("scheduler", "api")
    stack.wait_ready(60)
    worker = stack.stack.processes[0][1]
    os.killpg(worker.pid, signal.SIGKILL)
    # counted gone a TTL (2 s) of registry reads after its last beat; a read slowed by a
    # loaded machine starts that over, so the bound only catches "never"
    deadline = time.monotonic() + 60
    while stack.live_workers() != 0:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    for model in (MODEL, "fake-lora"):
        answer = httpx.post(f"{stack.url}/v1/chat/completions", json={**BODY, "model": model})
        assert answer.status_code == 503, answer.text
        assert answer.headers["Retry-After"]
        assert answer.json()["error"]["code"] == "no_workers"
    unknown = httpx.post(f"{stack.url}/v1/chat/completions", json={**BODY, "model": "nope"})
    assert unknown.status_code == 404
