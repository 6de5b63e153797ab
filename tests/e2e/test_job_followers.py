"""Many followers, one read: a thousand clients following one job's events through a real
API process all get every event, while the API waits on Redis with one blocking read
(counted by the server itself, with CLIENT LIST), stays within a small connection pool,
and still answers other requests."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
import redis

from berth.protocol import keys
from tests.stack import FAKE_ENGINE, RunningStack, StackFactory

pytestmark = pytest.mark.e2e

MODEL = "fake-model"
KEY = "key-a"
FOLLOWERS = 1000
# the API's Redis pool, far smaller than the followers: one blocking read each would starve it
API_POOL = 32
# connections the other roles (scheduler, worker, Celery) may open while the job runs
OTHERS = 8


@pytest.fixture(scope="module")
def stack(make_stack: StackFactory) -> RunningStack:
    return make_stack(
        ("worker", {**FAKE_ENGINE, "BERTH_FAKE_TOKENS_PER_S": "25"}),
        "scheduler",
        ("api", {"BERTH_REDIS_MAX_CONNECTIONS": str(API_POOL)}),
        env={"BERTH_API_KEYS": f"a:{KEY}"},
    )


async def _follow(client: httpx.AsyncClient, job_id: str) -> list[tuple[str, str]]:
    """(event id, type) of every event, to the stream's end."""
    out = []
    async with client.stream("GET", f"/v1/jobs/{job_id}/events") as answer:
        assert answer.status_code == 200
        event_id = ""
        async for line in answer.aiter_lines():
            if line.startswith("id: "):
                event_id = line[4:]
            elif line.startswith("data: "):
                out.append((event_id, json.loads(line[6:])["type"]))
    return out


def _connections(url: str) -> tuple[int, int]:
    """(clients connected, clients blocked in XREAD): the API's followers are the only
    XREAD callers (schedulers use XREADGROUP, Celery BRPOP)."""
    client = redis.Redis.from_url(url)
    try:
        clients = client.client_list()
    finally:
        client.close()
    blocked = [c for c in clients if c["cmd"] == "xread" and "b" in c["flags"]]
    return len(clients), len(blocked)


async def test_a_thousand_followers_share_one_read(stack: RunningStack) -> None:
    limits = httpx.Limits(max_connections=FOLLOWERS + 50, max_keepalive_connections=0)
    async with httpx.AsyncClient(
        base_url=stack.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120, limits=limits
    ) as client:
        before, _ = await asyncio.to_thread(_connections, stack.redis_url)
        body: dict[str, Any] = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 150,
        }
        job = (await client.post("/v1/jobs", json=body)).json()
        followers = [asyncio.create_task(_follow(client, job["id"])) for _ in range(FOLLOWERS)]
        peak = before
        most_blocked = others = 0
        while not all(f.done() for f in followers):
            connected, blocked = await asyncio.to_thread(_connections, stack.redis_url)
            peak, most_blocked = max(peak, connected), max(most_blocked, blocked)
            # other requests are still served while the followers wait
            answer = await client.get(f"/v1/jobs/{job['id']}")
            assert answer.status_code == 200
            others += 1
            await asyncio.sleep(0.2)
        results = [f.result() for f in followers]

    stored: Any = redis.Redis.from_url(stack.redis_url).xrange(keys.job_events(job["id"]))
    expected = [(i.decode(), json.loads(f[b"e"])["type"]) for i, f in stored]
    assert expected[-1][1] == "finished" and len(expected) > 10
    assert all(r == expected for r in results), "a follower missed or repeated an event"
    assert others > 0
    assert most_blocked <= 1, most_blocked
    assert peak - before <= API_POOL + OTHERS, (before, peak)
