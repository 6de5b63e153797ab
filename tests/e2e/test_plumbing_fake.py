"""The whole stack as real processes (Valkey, API, scheduler, Celery worker) on the fake engine.

Fast checks of the plumbing: queueing, grouping, pub/sub relay, SSE framing,
cancellation and failure handling. The same paths run on real vLLM in
test_serving.py.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from typing import cast

import httpx
import openai
import pytest
import redis

from berth.protocol import keys
from tests.stack import FAKE_ENGINE, RunningStack, StackFactory

pytestmark = pytest.mark.e2e

MODEL = "fake-model"
API_CONNECTIONS = 6


ADMIN_KEY = "admin-key"


@pytest.fixture(scope="module")
def stack(make_stack: StackFactory) -> RunningStack:
    return make_stack(
        (
            "worker",
            {
                **FAKE_ENGINE,
                "BERTH_FAKE_TOKENS_PER_S": "200",
                "BERTH_WORKER_ID": "w-1",
                # two names, as vLLM's --served-model-name takes them: the first is the model's
                "BERTH_SERVED_MODEL_NAME": f"{MODEL} fake-alias",
            },
        ),
        ("scheduler", {"BERTH_SCHEDULER_ID": "s-1"}),
        # a small pool: a burst of requests must wait for connections, not fail
        ("api", {"BERTH_REDIS_MAX_CONNECTIONS": str(API_CONNECTIONS)}),
        # the admin API is never open, not even on a key-less stack
        env={"BERTH_ADMIN_KEYS": ADMIN_KEY},
    )


@pytest.fixture
def client(stack: RunningStack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key="unused", max_retries=0)


def test_non_streaming(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_completion_tokens=5
    )
    assert reply.object == "chat.completion"
    assert reply.choices[0].finish_reason == "length"
    assert reply.choices[0].message.content
    assert reply.usage is not None and reply.usage.completion_tokens == 5
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 5


def test_streaming_with_usage_and_n(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=4,
            n=2,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = {
        c.choices[0].index: c.choices[0].finish_reason
        for c in chunks
        if c.choices and c.choices[0].finish_reason
    }
    assert finishes == {0: "length", 1: "length"}
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 8


def test_bad_field_is_400_naming_it(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], temperature=3.5
        )
    assert caught.value.body["param"] == "temperature"  # type: ignore[index]


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.body["param"] == "model"  # type: ignore[index]


def test_models_and_health(stack: RunningStack, client: openai.OpenAI) -> None:
    # the model, then its further served name (a card of its own, as vLLM lists them)
    assert [m.id for m in client.models.list()] == [MODEL, "fake-alias"]
    assert httpx.get(f"{stack.url}/health").json() == {"status": "ok"}
    assert httpx.get(f"{stack.url}/ready").status_code == 200


def test_disconnect_cancels_the_request(stack: RunningStack, client: openai.OpenAI) -> None:
    r = redis.Redis.from_url(stack.redis_url)
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2000, stream=True
    )
    first = next(iter(stream))
    request_id = first.id
    stream.close()
    deadline = time.monotonic() + 10
    while not r.exists(keys.cancelled_key(request_id)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert r.exists(keys.cancelled_key(request_id))
    # the worker aborted it (2000 tokens at 200/s would take 10 s): its heartbeat
    # shows no running request any more
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        workers = [w for w in map(r.get, r.keys(f"{keys.WORKER_KEY_PREFIX}*")) if w]
        if workers and all(b'"running":0' in w for w in workers):
            break
        time.sleep(0.1)
    assert workers and all(b'"running":0' in w for w in workers)


def _berth(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "berth.cli", *args], env=env, capture_output=True, text=True
    )


def test_check_command_for_probes(stack: RunningStack) -> None:
    env = stack.role_env()
    assert _berth("check", "api", "--url", stack.url, env=env).returncode == 0
    assert _berth("check", "worker", "--id", "w-1", env=env).returncode == 0
    assert _berth("check", "scheduler", "--id", "s-1", env=env).returncode == 0
    assert _berth("check", "worker", "--id", "nobody", env=env).returncode == 1
    assert _berth("check", "api", "--url", "http://127.0.0.1:9", env=env).returncode == 1


def test_metrics_are_exported(stack: RunningStack, client: openai.OpenAI) -> None:
    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    text = httpx.get(f"{stack.url}/metrics").text
    chat = 'method="POST",route="/v1/chat/completions",status="2xx"'
    assert f"berth_api_http_requests_total{{{chat}}}" in text
    assert 'berth_api_http_response_end_seconds_count{method="POST"' in text
    # berth's latency histograms by model, as vLLM's are by model_name
    assert 'berth_api_time_to_first_token_seconds_count{model="fake-model"}' in text
    assert 'berth_api_request_duration_seconds_count{model="fake-model"}' in text
    assert 'berth_queue_length{model="fake-model"}' in text


def test_adapter_registry_admin_api(stack: RunningStack, client: openai.OpenAI) -> None:
    admin = httpx.Client(
        base_url=f"{stack.url}/v1/admin",
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        timeout=10,
    )
    bad = admin.put("/adapters/x", json={"model": MODEL, "path": "../up"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "path"
    assert admin.put("/adapters/x", json={"model": "nope", "path": "/a"}).status_code == 404
    added = admin.put("/adapters/support-v2", json={"model": MODEL, "path": "/adapters/s2"})
    assert added.status_code == 200
    assert {"name": "support-v2", "model": MODEL, "path": "/adapters/s2"} in admin.get(
        "/adapters"
    ).json()["data"]
    deadline = time.monotonic() + 10
    while "support-v2" not in {m.id for m in client.models.list()}:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    card = next(m for m in client.models.list() if m.id == "support-v2")
    assert card.model_dump().get("parent") == MODEL
    reply = client.chat.completions.create(
        model="support-v2", messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    assert reply.choices[0].finish_reason == "length"
    # the worker's heartbeat now reports the adapter as loaded, for placement
    r = redis.Redis.from_url(stack.redis_url)

    def record() -> bytes:
        return cast(bytes, r.get(keys.worker_key("w-1")) or b"")  # the client does not decode

    while b"support-v2" not in record().split(b"loaded_adapters")[-1]:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert admin.delete("/adapters/support-v2").status_code == 200
    assert admin.delete("/adapters/support-v2").status_code == 404
    while "support-v2" in {m.id for m in client.models.list()}:
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_worker_side_refusal_of_a_stream_is_a_real_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],
            logit_bias={"99999999": 1},
            stream=True,
        )
    assert bad.value.body["param"] == "logit_bias"  # type: ignore[index]


def test_a_burst_beyond_the_connection_pool_waits_instead_of_failing(stack: RunningStack) -> None:
    """Far more concurrent requests than the API has Redis connections: each one is
    answered, none with a 500 from an exhausted pool."""

    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=stack.url, timeout=60) as http:
            body = {
                "model": MODEL,
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 4,
            }
            answers = await asyncio.gather(
                *(http.post("/v1/chat/completions", json=body) for _ in range(12 * API_CONNECTIONS))
            )
        return [a.status_code for a in answers]

    assert asyncio.run(burst()) == [200] * (12 * API_CONNECTIONS)


def test_a_further_served_name_reaches_the_same_model(
    stack: RunningStack, client: openai.OpenAI
) -> None:
    reply = client.chat.completions.create(
        model="fake-alias", messages=[{"role": "user", "content": "hi"}], max_tokens=3
    )
    assert reply.choices[0].finish_reason == "length"
    listed = {m.id: m.model_dump() for m in client.models.list()}
    assert listed["fake-alias"]["root"] == MODEL
    # the model's queue is its first name's: one queue, whichever name a client uses
    assert 'berth_queue_length{model="fake-alias"}' not in httpx.get(f"{stack.url}/metrics").text
