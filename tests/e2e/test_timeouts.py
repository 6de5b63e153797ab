"""A request the API gives up on (its timeout passed) is cancelled: dropped from the queue
if still queued, aborted in the engine if running. Real processes, fake engine."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest
import redis

from berth.protocol import keys
from berth.store import queue
from tests.stack import FAKE_ENGINE, StackFactory

pytestmark = pytest.mark.e2e

MODEL = "fake-model"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}


def test_a_timed_out_request_is_cancelled(make_stack: StackFactory) -> None:
    env = {"BERTH_REQUEST_TIMEOUT_S": "2", "BERTH_LIVENESS_CHECK_S": "0.5"}
    with make_stack(
        ("worker", {**FAKE_ENGINE, "BERTH_FAKE_TOKENS_PER_S": "5"}), "scheduler", "api", env=env
    ) as slow:
        answer = httpx.post(
            f"{slow.url}/v1/chat/completions", json={**BODY, "max_tokens": 1000}, timeout=30
        )
        assert answer.status_code == 504
        r = redis.Redis.from_url(slow.redis_url)
        (stream,) = list(r.scan_iter(keys.request_events("*")))
        # the worker's engine aborted it: its run ends with "cancelled", long before 1000 tokens
        deadline = time.monotonic() + 15
        last: dict[str, Any] = {}
        while last.get("type") not in ("cancelled", "finished", "error"):
            assert time.monotonic() < deadline, last
            time.sleep(0.2)
            entries: Any = r.xrevrange(stream, count=1)
            ((_, fields),) = entries
            last = json.loads(fields[b"e"])[-1]  # the events written together
        assert last["type"] == "cancelled"


def test_a_request_timed_out_in_the_queue_is_dropped(make_stack: StackFactory) -> None:
    env = {"BERTH_REQUEST_TIMEOUT_S": "1"}
    # no scheduler: the request waits in the queue until the API gives up on it
    with make_stack(("worker", FAKE_ENGINE), "api", env=env, ready=False) as idle:
        idle.wait_served(60)
        answer = httpx.post(
            f"{idle.url}/v1/chat/completions", json={**BODY, "max_tokens": 10}, timeout=30
        )
        assert answer.status_code == 504
        r = redis.Redis.from_url(idle.redis_url)
        queued: Any = r.xrange(keys.ingress_stream(MODEL))
        ((_, fields),) = queued
        request = queue.decode_entry(fields)
        assert request is not None
        request_id = request.id
        deadline = time.monotonic() + 10
        while not r.exists(keys.cancelled_key(request_id)):
            assert time.monotonic() < deadline
            time.sleep(0.1)
