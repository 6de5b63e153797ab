"""Webhooks against faults and refusals, each test on a stack of its own (no other
scheduler on its Redis that could deliver for it): a private destination refused on
submission and, after DNS, on delivery; a scheduler killed and started again, and Redis
restarted, while events wait for a receiver that is down: none is lost."""

from __future__ import annotations

import signal
import time

import httpx
import pytest
import redis

from berth.protocol import keys
from tests.e2e.test_webhooks import (
    ENV,
    WITHIN_S,
    _body,
    _submit,
    _wait_attempts_failed,
    _wait_job,
)
from tests.e2e.webhook_receiver import Receiver
from tests.stack import RunningStack, StackFactory
from tests.valkey import Valkey

pytestmark = pytest.mark.e2e


def test_a_private_destination_is_refused_on_submission(make_stack: StackFactory) -> None:
    env = ENV | {"BERTH_WEBHOOK_ALLOW_PRIVATE": "false"}
    with (
        make_stack("worker", "scheduler", "api", env=env) as stack,
        httpx.Client(base_url=stack.url, timeout=30) as client,
    ):
        for url in ("http://127.0.0.1:9/hook", "http://localhost:9/", "http://169.254.169.254/"):
            refused = client.post("/v1/jobs", json=_body(webhook=url))
            assert refused.status_code == 400, refused.text
            error = refused.json()["error"]
            assert error["param"] == "webhook" and error["type"] == "invalid_request_error"
        bad = client.post("/v1/jobs", json=_body(webhook="ftp://example.com/"))
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "webhook"


def test_a_private_destination_is_refused_on_delivery(make_stack: StackFactory) -> None:
    # the API takes the private URL (as if its name resolved to a public address then); the
    # scheduler, resolving it again before the attempt, refuses it and sends nothing
    receiver = Receiver()
    receiver.start()
    api_env = {"BERTH_WEBHOOK_ALLOW_PRIVATE": "true"}
    scheduler_env = {"BERTH_WEBHOOK_ALLOW_PRIVATE": "false"}
    try:
        with (
            make_stack("worker", ("scheduler", scheduler_env), ("api", api_env), env=ENV) as stack,
            httpx.Client(base_url=stack.url, timeout=30) as client,
            redis.Redis.from_url(stack.redis_url) as r,
        ):
            url = f"http://localhost:{receiver.port}/hook"
            job_id = _submit(client, url, max_tokens=2)
            assert _wait_job(client, job_id)["status"] == "succeeded"
            deadline = time.monotonic() + WITHIN_S
            while not r.xlen(keys.WEBHOOKS_FAILED):
                assert time.monotonic() < deadline, "the event was never judged"
                time.sleep(0.05)
            ((_, fields),) = r.xrange(keys.WEBHOOKS_FAILED)
            assert fields[b"object"].decode() == job_id
            assert fields[b"reason"].decode().startswith("refused:")
            assert "resolves to" in fields[b"reason"].decode()
            assert r.zcard(keys.WEBHOOKS_DUE) == 0
        assert receiver.received == []
    finally:
        receiver.stop()


def test_a_scheduler_killed_and_started_again_loses_no_event(make_stack: StackFactory) -> None:
    receiver = Receiver()  # down at first: the events wait in the outbox
    try:
        with (
            make_stack("worker", "scheduler", "api", env=ENV) as stack,
            httpx.Client(base_url=stack.url, timeout=30) as client,
        ):
            ids = [_submit(client, receiver.url, max_tokens=2) for _ in range(4)]
            assert all(_wait_job(client, i)["status"] == "succeeded" for i in ids)
            _wait_attempts_failed(stack, len(ids))
            (scheduler,) = [p for role, p in stack.stack.processes if role == "scheduler"]
            scheduler.send_signal(signal.SIGKILL)
            scheduler.wait()
            receiver.start()
            stack.start("scheduler")
            seen = receiver.wait_for(ids, WITHIN_S)
    finally:
        receiver.stop()
    assert sorted(seen) == sorted(ids)
    assert receiver.once_each() == sorted(ids)


def test_delivery_rides_out_a_redis_restart(valkey: Valkey) -> None:
    receiver = Receiver()  # down at first: the events wait in the outbox
    stack = RunningStack(valkey.url, env=ENV)
    try:
        with stack, httpx.Client(base_url=stack.url, timeout=30) as client:
            stack.start("worker", "scheduler", "api")
            stack.wait_ready(WITHIN_S)
            before = [_submit(client, receiver.url, max_tokens=2) for _ in range(4)]
            assert all(_wait_job(client, i)["status"] == "succeeded" for i in before)
            _wait_attempts_failed(stack, len(before))
            valkey.kill()
            time.sleep(1)  # the roles notice Redis is gone
            valkey.start()
            receiver.start()
            stack.wait_ready(WITHIN_S)
            after = [_submit(client, receiver.url, max_tokens=2) for _ in range(2)]
            seen = receiver.wait_for(before + after, WITHIN_S)
            assert sorted(seen) == sorted(before + after)
            assert stack.stack.dead() is None  # no role exited
    finally:
        receiver.stop()
    assert receiver.once_each() == sorted(before + after)
