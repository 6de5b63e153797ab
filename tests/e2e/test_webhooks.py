"""Job and batch webhooks through real processes (API, scheduler, Celery worker on the fake
engine) to a real HTTP receiver that verifies each delivery with openai-python's own
``client.webhooks.unwrap``: every end event arrives signed, at least once, with one
``webhook-id`` however often it is sent; a tenant's default applies; a receiver down and back
loses none. Refusals, a killed scheduler and a Redis restart: test_webhooks_faults.py."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
import redis

from berth.protocol import keys
from tests.e2e.webhook_receiver import SECRET, Receiver
from tests.stack import FAKE_ENGINE, RunningStack, StackFactory, free_port

pytestmark = pytest.mark.e2e

MODEL = "fake-model"
# short backoff, so a receiver back after a few seconds is retried within a second or so
ENV = {
    **FAKE_ENGINE,
    "BERTH_FAKE_TOKENS_PER_S": "200",
    "BERTH_WEBHOOK_SECRET": SECRET,
    "BERTH_WEBHOOK_ALLOW_PRIVATE": "true",
    "BERTH_WEBHOOK_BACKOFF_S": "0.2",
    "BERTH_WEBHOOK_BACKOFF_MAX_S": "1",
    "BERTH_WEBHOOK_TIMEOUT_S": "3",
}
# the anonymous tenant's default webhook, on the module's stack
DEFAULT_PORT = free_port()
# a bound that catches "never" on a loaded machine; not a figure
WITHIN_S = 60.0
TERMINAL = ("succeeded", "failed", "cancelled", "expired")


def _body(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **extra}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def stack(make_stack: StackFactory) -> RunningStack:
    default = json.dumps({"local": f"http://127.0.0.1:{DEFAULT_PORT}/default"})
    return make_stack("worker", "scheduler", "api", env=ENV | {"BERTH_TENANT_WEBHOOKS": default})


def _wait_job(client: httpx.Client, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + WITHIN_S
    while True:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in TERMINAL or time.monotonic() > deadline:
            return job
        time.sleep(0.05)


def _submit(client: httpx.Client, webhook: str, **extra: Any) -> str:
    answer = client.post("/v1/jobs", json=_body(webhook=webhook, **extra))
    assert answer.status_code == 202, answer.text
    return str(answer.json()["id"])


def test_a_completed_job_calls_back_signed(stack: RunningStack, receiver: Receiver) -> None:
    with httpx.Client(base_url=stack.url, timeout=30) as client:
        job_id = _submit(client, receiver.url, max_tokens=3)
        assert _wait_job(client, job_id)["status"] == "succeeded"
    (event, *_) = receiver.wait_for([job_id], WITHIN_S)[job_id]
    assert (event.type, event.object) == ("job.completed", "event")
    assert event.id.startswith("evt_") and event.created_at > 0
    assert receiver.unverified() == 0
    assert all(r.webhook_id == r.event.id for r in receiver.received)


def test_a_job_naming_no_webhook_calls_its_tenants_default(stack: RunningStack) -> None:
    receiver = Receiver(port=DEFAULT_PORT)
    receiver.start()
    try:
        with httpx.Client(base_url=stack.url, timeout=30) as client:
            answer = client.post("/v1/jobs", json=_body(max_tokens=2))
            assert answer.status_code == 202, answer.text
            job_id = answer.json()["id"]
        seen = receiver.wait_for([job_id], WITHIN_S)
    finally:
        receiver.stop()
    assert [e.type for e in seen[job_id]] == ["job.completed"]


def test_a_failed_and_a_cancelled_job_call_back(stack: RunningStack, receiver: Receiver) -> None:
    with httpx.Client(base_url=stack.url, timeout=30) as client:
        # a token id past the model's vocabulary: the worker refuses it, the job fails
        failed = _submit(client, receiver.url, stop_token_ids=[999_999])
        running = _submit(client, receiver.url, max_tokens=1500)
        deadline = time.monotonic() + WITHIN_S
        while client.get(f"/v1/jobs/{running}").json()["status"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert client.delete(f"/v1/jobs/{running}").json()["status"] == "cancelled"
        assert _wait_job(client, failed)["status"] == "failed"
    seen = receiver.wait_for([failed, running], WITHIN_S)
    assert [e.type for e in seen[failed]] == ["job.failed"]
    assert [e.type for e in seen[running]] == ["job.cancelled"]


def test_a_completed_batch_calls_back(stack: RunningStack, receiver: Receiver) -> None:
    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key="unused")
    line = {"method": "POST", "url": "/v1/chat/completions", "body": _body(max_tokens=2)}
    lines = [json.dumps({"custom_id": f"t{i}", **line}) + "\n" for i in range(3)]
    upload = client.files.create(file=("in.jsonl", "".join(lines).encode()), purpose="batch")
    batch = client.batches.create(
        input_file_id=upload.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        extra_body={"webhook": receiver.url},
    )
    seen = receiver.wait_for([batch.id], WITHIN_S)
    assert [e.type for e in seen[batch.id]] == ["batch.completed"]
    assert client.batches.retrieve(batch.id).status == "completed"
    # the batch's own jobs send nothing: one event for the batch
    assert set(receiver.by_object()) == {batch.id}


def test_a_receiver_down_and_back_gets_every_event(stack: RunningStack) -> None:
    receiver = Receiver()  # not started: connections to its port are refused
    try:
        with httpx.Client(base_url=stack.url, timeout=30) as client:
            ids = [_submit(client, receiver.url, max_tokens=2) for _ in range(6)]
            assert all(_wait_job(client, i)["status"] == "succeeded" for i in ids)
            # every event was tried and failed at least once while the receiver was down
            _wait_attempts_failed(stack, len(ids))
        receiver.start()
        seen = receiver.wait_for(ids, WITHIN_S)
    finally:
        receiver.stop()
    assert sorted(seen) == sorted(ids)
    # at least once; deduplicated by webhook-id, once per job
    assert receiver.once_each() == sorted(ids)
    assert receiver.unverified() == 0


def _wait_attempts_failed(stack: RunningStack, count: int) -> None:
    """Until ``count`` events wait in the outbox for their next attempt at once: each was
    attempted, and failed (one being attempted is leased far longer than a retry waits)."""
    with redis.Redis.from_url(stack.redis_url) as r:
        deadline = time.monotonic() + WITHIN_S
        while time.monotonic() < deadline:
            seconds, micros = r.time()
            now = seconds + micros / 1e6
            waiting = r.zrangebyscore(keys.WEBHOOKS_DUE, now + 0.01, now + 5)
            if len(waiting) >= count:
                return
            time.sleep(0.02)
    raise AssertionError("the events were never attempted")
