"""Asynchronous jobs through real processes (API, scheduler, Celery worker on the fake engine):
submit, poll, events with resume, cancel, idempotency, deadlines, tenants."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from tests.stack import FAKE_ENGINE, RunningStack, StackFactory

pytestmark = pytest.mark.e2e

MODEL = "fake-model"
KEYS = {"a": "key-a", "b": "key-b"}


def _body(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **extra}


@pytest.fixture(scope="module")
def stack(make_stack: StackFactory) -> RunningStack:
    return make_stack(
        ("worker", {**FAKE_ENGINE, "BERTH_FAKE_TOKENS_PER_S": "100"}),
        "scheduler",
        "api",
        env={"BERTH_API_KEYS": ",".join(f"{t}:{k}" for t, k in KEYS.items())},
    )


def _client(stack: RunningStack, tenant: str = "a") -> httpx.Client:
    return httpx.Client(
        base_url=stack.url, headers={"Authorization": f"Bearer {KEYS[tenant]}"}, timeout=30
    )


def _wait(client: httpx.Client, job_id: str, timeout_s: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] not in ("queued", "running"):
            return job  # type: ignore[no-any-return]
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {job['status']}")


def _events(
    client: httpx.Client, job_id: str, last_id: str | None = None
) -> list[tuple[str, dict[str, Any]]]:
    headers = {"Last-Event-ID": last_id} if last_id else {}
    out = []
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers) as answer:
        assert answer.status_code == 200
        event_id = None
        for line in answer.iter_lines():
            if line.startswith("id: "):
                event_id = line[4:]
            elif line.startswith("data: "):
                out.append((event_id or "", json.loads(line[6:])))
    return out


def test_submit_poll_and_result(stack: RunningStack) -> None:
    with _client(stack) as client:
        answer = client.post("/v1/jobs", json=_body(max_tokens=5, metadata={"k": "v"}))
        assert answer.status_code == 202
        job = answer.json()
        assert job["status"] == "queued" and job["id"].startswith("job_")
        assert answer.headers["Location"] == f"/v1/jobs/{job['id']}"
        done = _wait(client, job["id"])
        assert done["status"] == "succeeded"
        assert done["metadata"] == {"k": "v"}
        assert done["result"]["object"] == "chat.completion"
        assert done["result"]["usage"]["completion_tokens"] == 5
        assert done["created_at"] <= done["started_at"] <= done["finished_at"]


def test_events_after_the_fact_and_resumed_exactly_once(stack: RunningStack) -> None:
    with _client(stack) as client:
        job = client.post("/v1/jobs", json=_body(max_tokens=6)).json()
        live = _events(client, job["id"])  # connects while it runs, follows to the end
        assert live[-1][1]["type"] == "finished"
        assert sum(e["type"] in ("finished", "error", "cancelled") for _, e in live) == 1
        late = _events(client, job["id"])  # connects after it finished
        assert late == live
        resumed = _events(client, job["id"], last_id=live[2][0])
        assert resumed == live[3:]
        ids = [i for i, _ in live]
        assert len(set(ids)) == len(ids)


def test_idempotency_key_returns_the_same_job(stack: RunningStack) -> None:
    with _client(stack) as client:
        headers = {"Idempotency-Key": "order-42"}
        first = client.post("/v1/jobs", json=_body(max_tokens=2), headers=headers)
        again = client.post("/v1/jobs", json=_body(max_tokens=2), headers=headers)
        assert first.status_code == 202 and again.status_code == 200
        assert first.json()["id"] == again.json()["id"]
        # keys are per tenant: another tenant's same key is another job
        with _client(stack, "b") as other:
            theirs = other.post("/v1/jobs", json=_body(max_tokens=2), headers=headers)
        assert theirs.status_code == 202 and theirs.json()["id"] != first.json()["id"]
        # the key is bounded (and only its hash becomes part of a Redis key)
        long_key = {"Idempotency-Key": "k" * 257}
        refused = client.post("/v1/jobs", json=_body(max_tokens=2), headers=long_key)
        assert refused.status_code == 400
        assert refused.json()["error"]["param"] == "Idempotency-Key"


def test_cancel_a_running_job(stack: RunningStack) -> None:
    with _client(stack) as client:
        job = client.post("/v1/jobs", json=_body(max_tokens=1500)).json()
        deadline = time.monotonic() + 10
        while client.get(f"/v1/jobs/{job['id']}").json()["status"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        cancelled = client.delete(f"/v1/jobs/{job['id']}").json()
        assert cancelled["status"] == "cancelled"
        events = _events(client, job["id"])
        assert events[-1][1]["type"] == "cancelled"
        assert _wait(client, job["id"])["status"] == "cancelled"


def test_list_pages_and_tenants_are_isolated(stack: RunningStack) -> None:
    with _client(stack, "b") as b, _client(stack) as a:
        mine = [b.post("/v1/jobs", json=_body(max_tokens=1)).json()["id"] for _ in range(3)]
        page = b.get("/v1/jobs", params={"limit": 2}).json()
        assert page["has_more"] and len(page["data"]) == 2
        rest = b.get("/v1/jobs", params={"after": page["last_id"], "limit": 100}).json()
        listed = [j["id"] for j in page["data"] + rest["data"]]
        assert set(mine) <= set(listed)
        assert len(listed) == len(set(listed))
        # tenant a sees none of them, and cannot read, follow or cancel them
        assert not set(mine) & {
            j["id"] for j in a.get("/v1/jobs", params={"limit": 100}).json()["data"]
        }
        assert a.get(f"/v1/jobs/{mine[0]}").status_code == 404
        assert a.get(f"/v1/jobs/{mine[0]}/events").status_code == 404
        assert a.delete(f"/v1/jobs/{mine[0]}").status_code == 404


def test_missing_or_wrong_key_is_401(stack: RunningStack) -> None:
    assert httpx.post(f"{stack.url}/v1/jobs", json=_body()).status_code == 401
    wrong = httpx.get(f"{stack.url}/v1/jobs", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert wrong.json()["error"]["code"] == "invalid_api_key"


def test_bad_job_requests(stack: RunningStack) -> None:
    with _client(stack) as client:
        streamed = client.post("/v1/jobs", json=_body(stream=True))
        assert streamed.status_code == 400 and streamed.json()["error"]["param"] == "stream"
        bad_deadline = client.post("/v1/jobs", json=_body(), headers={"X-Deadline-Seconds": "-1"})
        assert bad_deadline.json()["error"]["param"] == "X-Deadline-Seconds"
        assert client.post("/v1/jobs", json={**_body(), "model": "nope"}).status_code == 404


def test_admin_api_is_off_with_keys_but_no_admin_keys(stack: RunningStack) -> None:
    with _client(stack) as client:
        answer = client.get("/v1/admin/adapters")
    assert answer.status_code == 403
    assert answer.json()["error"]["code"] == "admin_only"
