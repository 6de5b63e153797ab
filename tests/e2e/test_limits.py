"""Per-tenant limits, fair admission and fail-closed startup through a real API process
(fake-engine worker, no scheduler: what is queued stays queued)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import redis

from tests.stack import FAKE_ENGINE, RunningStack, StackFactory

pytestmark = pytest.mark.e2e

MODEL = "fake-model"
KEYS = {
    "a": "key-a",
    "b": "key-b",
    "slow": "key-slow",
    "flood": "key-flood",
    "memo": "key-memo",
    "uploads": "key-uploads",
}


def _body(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **extra}


# The rate windows of this module's API stand still, halfway into the minute the module
# started in (BERTH_RATE_WINDOW_FROZEN_AT, a setting for tests): a sliding window forgets
# part of what it counted at each minute's turn (the previous minute weighs 1 - elapsed,
# rounded down), so on the real clock a test straddling a turn would see its tenant admitted
# again, and how likely that is would depend on how slow the machine is.
_FROZEN_AT = time.time() // 60 * 60 + 30


@pytest.fixture(scope="module")
def stack(make_stack: StackFactory) -> RunningStack:
    running = make_stack(
        ready=False,
        env={
            "BERTH_RATE_WINDOW_FROZEN_AT": str(_FROZEN_AT),
            "BERTH_API_KEYS": ",".join(f"{t}:{k}" for t, k in KEYS.items()),
            "BERTH_MAX_QUEUE_PER_MODEL": "8",
            "BERTH_FAIR_SHARE_FLOOR": "2",
            "BERTH_TENANT_LIMITS": json.dumps(
                {
                    "slow": {"requests_per_minute": 2},
                    "flood": {"requests_per_minute": 4},
                    "memo": {"requests_per_minute": 3},
                    "uploads": {"requests_per_minute": 2},
                }
            ),
        },
    )
    running.start_roles(("worker", FAKE_ENGINE), "api")
    running.wait_served(60, api_key=KEYS["a"])
    return running


def _client(stack: RunningStack, tenant: str) -> httpx.Client:
    return httpx.Client(
        base_url=stack.url, headers={"Authorization": f"Bearer {KEYS[tenant]}"}, timeout=10
    )


def test_over_requests_per_minute_is_429_with_openai_headers(stack: RunningStack) -> None:
    with _client(stack, "slow") as client:
        # the flex tier's lane: this tenant's jobs stay out of the queue the next test shares
        answers = [client.post("/v1/jobs", json=_body(service_tier="flex")) for _ in range(3)]
    assert [a.status_code for a in answers] == [202, 202, 429]
    refused = answers[-1]
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.headers["x-ratelimit-limit-requests"] == "2"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.headers["x-ratelimit-reset-requests"].endswith("s")
    assert "x-ratelimit-limit-tokens" in refused.headers
    assert "x-ratelimit-remaining-tokens" in refused.headers


def test_refused_requests_count_against_their_tenants_rate(stack: RunningStack) -> None:
    # a flood of requests each refused for what it holds (an unknown adapter, a body that
    # is not JSON) counts like any other: past the tenant's rate they are 429s, answered
    # before the body is read
    with _client(stack, "flood") as client:
        answers = [
            client.post("/v1/chat/completions", json=_body(lora_path=f"nope-{i}")).status_code
            for i in range(3)
        ]
        answers.append(client.post("/v1/chat/completions", content=b"{not json").status_code)
        answers += [
            client.post("/v1/chat/completions", content=b"{not json").status_code,
            client.post("/v1/jobs", json=_body()).status_code,
        ]
        refused = client.post("/v1/chat/completions", json=_body(lora_path="nope"))
    assert answers == [400, 400, 400, 400, 429, 429]
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert refused.headers["x-ratelimit-limit-requests"] == "4"
    assert int(refused.headers["Retry-After"]) >= 1
    # other tenants are not affected
    with _client(stack, "b") as other:
        unknown = other.post("/v1/chat/completions", json=_body(lora_path="nope"))
        assert unknown.status_code == 400


def _until_refused(client: httpx.Client, limit: int) -> httpx.Response:
    """``limit`` requests, all admitted, then the one the tenant's rate refuses."""
    for _ in range(limit):
        answer = client.get("/v1/models")
        assert answer.status_code == 200, answer.text
    refused = client.get("/v1/models")
    assert refused.status_code == 429, refused.text
    return refused


def _rate_counts(r: redis.Redis, tenant: str) -> list[Any]:
    return [k for k in r.keys(f"berth:quota:{tenant}:requests:*") if r.get(k) != b"0"]


def test_over_its_rate_a_tenant_is_refused_without_asking_redis(stack: RunningStack) -> None:
    r = redis.Redis.from_url(stack.redis_url)
    with _client(stack, "memo") as memo, _client(stack, "b") as b:
        first = _until_refused(memo, 3)
        # Redis forgets the tenant's counts: asked, it would admit the next request
        r.delete(*r.keys("berth:quota:memo:requests:*"))
        # both sent at once: each refusal is held up to the memo's end (rate_refusal_hold_s)
        with _client(stack, "memo") as second, ThreadPoolExecutor(2) as pool:
            held = [
                pool.submit(memo.get, "/v1/models"),
                pool.submit(second.post, "/v1/jobs", json=_body()),
            ]
            # another tenant is never refused by memo's refusal, nor held with it
            assert b.get("/v1/models").status_code == 200
            again = [answer.result() for answer in held]
        # the API refused on its own: nothing was counted, and the answer is the same
        assert [a.status_code for a in again] == [429, 429]
        assert not _rate_counts(r, "memo")
        for answer in again:
            assert answer.json()["error"] == first.json()["error"]
            assert 1 <= int(answer.headers["Retry-After"]) <= int(first.headers["Retry-After"])
            assert answer.headers["x-ratelimit-limit-requests"] == "3"
            assert answer.headers["x-ratelimit-remaining-requests"] == "0"
            assert answer.headers["x-ratelimit-reset-requests"].endswith("s")
        # past its bound (BERTH_RATE_MEMO_S, 1 s) the API asks Redis again, which admits
        time.sleep(1.5)
        assert memo.get("/v1/models").status_code == 200
        assert _rate_counts(r, "memo")


def test_uploads_and_reads_count_against_requests_per_minute(stack: RunningStack) -> None:
    content = (
        json.dumps(
            {"custom_id": "c0", "method": "POST", "url": "/v1/chat/completions", "body": _body()}
        )
        + "\n"
    ).encode()
    with _client(stack, "uploads") as client:

        def upload() -> httpx.Response:
            return client.post(
                "/v1/files", files={"file": ("in.jsonl", content)}, data={"purpose": "batch"}
            )

        answers = [client.get("/v1/files"), upload()]
        answers += [upload() for _ in range(3)]
    statuses = [a.status_code for a in answers]
    assert statuses[:3] == [200, 200, 429], statuses
    refused = answers[2]
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert refused.headers["x-ratelimit-limit-requests"] == "2"


def test_one_tenants_burst_gets_another_no_429(stack: RunningStack) -> None:
    with _client(stack, "a") as a, _client(stack, "b") as b:
        burst = [a.post("/v1/jobs", json=_body()).status_code for _ in range(12)]
        # a alone fills the whole queue (8), then is refused
        assert burst[:8] == [202] * 8
        assert set(burst[8:]) == {429}
        # b arrives at a full queue and still gets its share (8 / 2 tenants)
        others = [b.post("/v1/jobs", json=_body()).status_code for _ in range(4)]
        assert others == [202] * 4
        fifth = b.post("/v1/jobs", json=_body())
        assert fifth.status_code == 429
        assert fifth.json()["error"]["code"] == "rate_limit_exceeded"
        # a stays refused: its share is now half the queue and it holds all 8
        assert a.post("/v1/jobs", json=_body()).status_code == 429


def test_unknown_adapter_and_model_are_refused_before_the_queue(stack: RunningStack) -> None:
    r = redis.Redis.from_url(stack.redis_url)
    before = set(r.keys("*"))
    with _client(stack, "a") as client:
        answer = client.post("/v1/chat/completions", json=_body(lora_path="no-such-adapter"))
        assert answer.status_code == 400
        assert answer.json()["error"]["param"] == "lora_path"
        assert answer.json()["error"]["code"] == "adapter_not_found"
        unknown = client.post("/v1/chat/completions", json=_body(model="no-such-model"))
        assert unknown.status_code == 404
    # nothing was queued and no key was made: the interactive stream does not even exist
    assert r.xlen(f"berth:ingress:{MODEL}") == 0
    assert not [k for k in set(r.keys("*")) - before if b"no-such" in k]
    assert not [k for k in r.keys("*") if b"no-such" in k]


def test_admin_api_refuses_without_admin_keys(stack: RunningStack) -> None:
    with _client(stack, "a") as client:
        answer = client.get("/v1/admin/adapters")
    assert answer.status_code == 403
    assert answer.json()["error"]["code"] == "admin_only"


def test_anonymous_stack_still_refuses_the_admin_api(make_stack: StackFactory) -> None:
    with make_stack(ready=False) as running:
        running.start("api")
        running._wait(30, "/health", lambda body: body.get("status") == "ok")
        answer = httpx.get(f"{running.url}/v1/admin/adapters", timeout=10)
    assert answer.status_code == 403
    assert answer.json()["error"]["code"] == "admin_only"


def test_api_without_keys_refuses_to_start(stack: RunningStack) -> None:
    env = stack.role_env()
    for name in ("BERTH_API_KEYS", "BERTH_API_KEYS_FILE", "BERTH_ALLOW_ANONYMOUS"):
        env.pop(name, None)
    env["BERTH_PORT"] = "0"
    done = subprocess.run(
        [sys.executable, "-m", "berth.cli", "api"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=os.getcwd(),
    )
    assert done.returncode != 0
    assert "--allow-anonymous" in done.stderr
    assert "BERTH_API_KEYS" in done.stderr
