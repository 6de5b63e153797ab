"""A tenant holding all its concurrent requests in an API process is refused by that
process before the request costs a subscription or the admission script; once one of its
requests ends, the next is admitted. A real API process on a real server, with no
scheduler: what is queued stays queued, holding its lease until its client leaves."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from tests.stack import FAKE_ENGINE, RunningStack, StackFactory

pytestmark = pytest.mark.e2e

KEYS = {"busy": "key-busy", "b": "key-b"}
AT_ONCE = 2
WAIT_S = 30.0
CHAT = {
    "model": "fake-model",
    "messages": [{"role": "user", "content": "hi"}],
    "stream": True,
}


@pytest.fixture(scope="module")
def stack(make_stack: StackFactory) -> RunningStack:
    running = make_stack(
        ready=False,
        env={
            "BERTH_API_KEYS": ",".join(f"{t}:{k}" for t, k in KEYS.items()),
            "BERTH_TENANT_LIMITS": json.dumps({"busy": {"concurrent_requests": AT_ONCE}}),
            # a stream answers once admitted, not at its first token (no scheduler here)
            "BERTH_STREAM_HEADERS": "immediate",
        },
    )
    running.start_roles(("worker", FAKE_ENGINE), "api")
    running.wait_served(60, api_key=KEYS["b"])
    return running


def _client(stack: RunningStack, tenant: str) -> httpx.Client:
    return httpx.Client(
        base_url=stack.url, headers={"Authorization": f"Bearer {KEYS[tenant]}"}, timeout=10
    )


def _calls(r: redis.Redis, command: str) -> int:
    stats: Any = r.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


@contextlib.contextmanager
def _held_stream(stack: RunningStack) -> Iterator[httpx.Response]:
    """A streamed chat completion admitted and waiting in the queue, until the block ends
    (its client leaves)."""
    with (
        _client(stack, "busy") as client,
        client.stream("POST", "/v1/chat/completions", json=CHAT) as answer,
    ):
        assert answer.status_code == 200
        yield answer


def test_all_leases_held_here_is_refused_without_asking_redis(stack: RunningStack) -> None:
    r = redis.Redis.from_url(stack.redis_url)
    with contextlib.ExitStack() as streams:
        for _ in range(AT_ONCE):
            streams.enter_context(_held_stream(stack))
        subscribes, scripts = _calls(r, "subscribe"), _calls(r, "evalsha")
        with _client(stack, "busy") as client:
            refused = client.post("/v1/chat/completions", json=CHAT)
        assert refused.status_code == 429
        error = refused.json()["error"]
        assert error["message"] == f"too many requests at once: at most {AT_ONCE} per tenant"
        assert error["code"] == "rate_limit_exceeded"
        assert int(refused.headers["Retry-After"]) >= 1
        assert "x-ratelimit-remaining-requests" in refused.headers
        # counted against the request rate (one script), then refused here: no subscription
        # to its events, no admission script
        assert _calls(r, "subscribe") == subscribes
        assert _calls(r, "evalsha") == scripts + 1
        # another tenant is admitted meanwhile
        with (
            _client(stack, "b") as other,
            other.stream("POST", "/v1/chat/completions", json=CHAT) as answer,
        ):
            assert answer.status_code == 200
    # their clients left: the leases are free again, here and in Redis
    deadline = time.monotonic() + WAIT_S
    while not _admitted(stack):
        assert time.monotonic() < deadline, "a lease was not freed after its client left"
        time.sleep(0.2)


def _admitted(stack: RunningStack) -> bool:
    """Whether a new streamed request of the tenant is admitted now (its stream then ends
    at once: the client leaves)."""
    with (
        _client(stack, "busy") as client,
        client.stream("POST", "/v1/chat/completions", json=CHAT) as answer,
    ):
        return answer.status_code == 200
