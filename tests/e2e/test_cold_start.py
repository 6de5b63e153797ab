"""A declared model with no worker, through real processes (fake engine): its requests wait in
the queue (a job, a batch, a streamed and a plain chat) and a worker started later serves every
one; a chat that waits past BERTH_COLD_START_WAIT_S gets 503 with Retry-After; a waiting
request cancelled or left by its client leaves the queue."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
import redis

from berth.protocol import keys
from tests.stack import FAKE_ENGINE, RunningStack, StackFactory

pytestmark = pytest.mark.e2e

MODEL = "cold-model"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
# how long the stack runs without a worker before one is started
WORKER_LATE_S = 10.0


@pytest.fixture(scope="module")
def models_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("catalog") / "models.yaml"
    path.write_text(f"models:\n  - name: {MODEL}\n    adapters: []\n")
    return path


def _stack(make_stack: StackFactory, models_file: Path, **env: str) -> RunningStack:
    """The API and a scheduler with the catalog, no worker; ready once both are up."""
    stack = make_stack(
        "scheduler",
        "api",
        env={"BERTH_MODELS_FILE": str(models_file), **env},
        ready=False,
    )
    stack.wait_ready(60, workers=0)
    return stack


def _until(condition: Callable[[], bool], timeout_s: float = 60) -> None:
    """Wait for a state (never a span of time: a slow machine takes longer, never fails)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def _depth(stack: RunningStack) -> float:
    """The API's berth_queue_depth of the declared model."""
    for line in httpx.get(f"{stack.url}/metrics", timeout=10).text.splitlines():
        if line.startswith(f'berth_queue_depth{{model="{MODEL}"}}'):
            return float(line.split()[-1])
    return -1.0


def _queued(stack: RunningStack) -> int:
    """Requests in the model's three lanes (acknowledged entries are deleted)."""
    with redis.Redis.from_url(stack.redis_url) as r:
        return sum(int(r.xlen(keys.ingress_stream(MODEL, lane))) for lane in keys.LANES)


def _stream_lines(url: str) -> list[str]:
    with (
        httpx.Client(base_url=url, timeout=120) as client,
        client.stream("POST", "/v1/chat/completions", json={**BODY, "stream": True}) as answer,
    ):
        assert answer.status_code == 200
        return [line for line in answer.iter_lines() if line]


def _batch(client: openai.OpenAI, n: int) -> str:
    lines = [
        {
            "custom_id": f"line-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {**BODY, "messages": [{"role": "user", "content": f"q{i}"}]},
        }
        for i in range(n)
    ]
    content = "".join(json.dumps(line) + "\n" for line in lines).encode()
    upload = client.files.create(file=("in.jsonl", content), purpose="batch")
    return client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    ).id


def test_a_worker_started_later_serves_every_waiting_request(
    make_stack: StackFactory, models_file: Path
) -> None:
    with _stack(make_stack, models_file, BERTH_KEEPALIVE_S="1") as stack:
        client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key="unused", max_retries=0)
        # listed, though no worker runs it
        assert MODEL in {m.id for m in client.models.list()}
        job = httpx.post(f"{stack.url}/v1/jobs", json=BODY, timeout=30)
        assert job.status_code == 202, job.text
        assert job.json()["status"] == "queued" and job.json()["waiting_for_worker"] is True
        batch_id = _batch(client, 3)
        with ThreadPoolExecutor(2) as pool:
            streamed = pool.submit(_stream_lines, stack.url)
            plain = pool.submit(
                lambda: client.with_options(timeout=120).chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4
                )
            )
            # 1 job + 3 batch lines + 2 chats wait, counted for the autoscaler
            _until(lambda: _depth(stack) == 6 and _queued(stack) == 6)
            time.sleep(WORKER_LATE_S)
            assert not streamed.done() and not plain.done()
            waiting = httpx.get(f"{stack.url}/v1/jobs/{job.json()['id']}", timeout=10).json()
            assert waiting["status"] == "queued" and waiting["waiting_for_worker"] is True
            stack.start("worker", **FAKE_ENGINE, BERTH_SERVED_MODEL_NAME=MODEL)
            lines = streamed.result(timeout=120)
            answer = plain.result(timeout=120)
        # the stream pinged while it waited, then carried the answer to its end
        first_data = next(i for i, line in enumerate(lines) if line.startswith("data:"))
        assert ": ping" in lines[:first_data]
        assert lines[-1] == "data: [DONE]"
        assert answer.choices[0].message.content
        assert answer.choices[0].finish_reason == "length"

        def job_status() -> str:
            got = httpx.get(f"{stack.url}/v1/jobs/{job.json()['id']}", timeout=10).json()
            return str(got["status"])

        _until(lambda: job_status() == "succeeded")
        _until(lambda: client.batches.retrieve(batch_id).status == "completed")
        assert client.batches.retrieve(batch_id).request_counts.completed == 3  # type: ignore[union-attr]
        _until(lambda: _depth(stack) == 0)
        assert _queued(stack) == 0


def test_a_chat_waiting_past_the_cold_start_wait_gets_503_with_retry_after(
    make_stack: StackFactory, models_file: Path
) -> None:
    with _stack(make_stack, models_file, BERTH_COLD_START_WAIT_S="2") as stack:
        plain = httpx.post(f"{stack.url}/v1/chat/completions", json=BODY, timeout=60)
        assert plain.status_code == 503, plain.text
        assert int(plain.headers["Retry-After"]) >= 1
        assert plain.json()["error"]["code"] == "no_workers"
        assert "within the cold-start wait" in plain.json()["error"]["message"]
        streamed = httpx.post(
            f"{stack.url}/v1/chat/completions", json={**BODY, "stream": True}, timeout=60
        )
        assert streamed.status_code == 503 and "Retry-After" in streamed.headers
        # a job is no chat: it waits on
        job = httpx.post(f"{stack.url}/v1/jobs", json=BODY, timeout=30).json()
        assert job["waiting_for_worker"] is True
        _until(lambda: _queued(stack) == 1)


def test_without_a_cold_start_wait_a_chat_gets_503_at_once(
    make_stack: StackFactory, models_file: Path
) -> None:
    with _stack(make_stack, models_file, BERTH_COLD_START_WAIT_S="0") as stack:
        plain = httpx.post(f"{stack.url}/v1/chat/completions", json=BODY, timeout=60)
        assert plain.status_code == 503 and "Retry-After" in plain.headers
        assert "no worker serving model 'cold-model'" in plain.json()["error"]["message"]
        assert _queued(stack) == 0
        # an undeclared model is still unknown
        other = httpx.post(
            f"{stack.url}/v1/chat/completions", json={**BODY, "model": "nobody"}, timeout=60
        )
        assert other.status_code == 404


def test_a_waiting_job_cancelled_or_stream_left_by_its_client_leaves_the_queue(
    make_stack: StackFactory, models_file: Path
) -> None:
    with _stack(make_stack, models_file, BERTH_KEEPALIVE_S="0.5") as stack:
        job = httpx.post(f"{stack.url}/v1/jobs", json=BODY, timeout=30).json()
        _until(lambda: _queued(stack) == 1)
        cancelled = httpx.delete(f"{stack.url}/v1/jobs/{job['id']}", timeout=30).json()
        assert cancelled["status"] == "cancelled"
        _until(lambda: _queued(stack) == 0)

        # a streamed chat whose client leaves after the first ping
        with (
            httpx.Client(base_url=stack.url, timeout=60) as client,
            client.stream("POST", "/v1/chat/completions", json={**BODY, "stream": True}) as answer,
        ):
            assert answer.status_code == 200
            assert next(line for line in answer.iter_lines() if line) == ": ping"
            assert _queued(stack) == 1
        _until(lambda: _queued(stack) == 0)
        _until(lambda: _depth(stack) == 0)
        # a plain (not streamed) chat whose client gives up while it waits for a worker is
        # not always cancelled: its cancel mark is missing in about half the runs, so it
        # waits out BERTH_COLD_START_WAIT_S (docs/reliability.md, known gaps); not checked
        # here until that is mended


def test_the_admin_api_declares_and_removes_models_and_the_queue_bound_holds(
    make_stack: StackFactory, models_file: Path
) -> None:
    with _stack(
        make_stack, models_file, BERTH_ADMIN_KEYS="admin-key", BERTH_MAX_QUEUE_PER_MODEL="2"
    ) as stack:
        admin = httpx.Client(
            base_url=f"{stack.url}/v1/admin",
            headers={"Authorization": "Bearer admin-key"},
            timeout=10,
        )
        # the file's model is there; a Hugging Face id (with its '/') is declared at run time
        assert [m["name"] for m in admin.get("/models").json()["data"]] == [MODEL]
        added = admin.put("/models/Org/new-model", json={"adapters": ["sql", {"name": "x"}]})
        assert added.status_code == 200, added.text
        assert added.json() == {
            "name": "Org/new-model",
            "adapters": [{"name": "sql"}, {"name": "x"}],
        }
        bad = admin.put("/models/has space", json={})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "name"
        bad = admin.put("/models/m", json={"adapters": [{"name": "a", "path": "rel"}]})
        assert bad.status_code == 400 and "absolute" in bad.json()["error"]["message"]

        def listed() -> set[str]:
            return {m["id"] for m in httpx.get(f"{stack.url}/v1/models", timeout=10).json()["data"]}

        _until(lambda: {"Org/new-model", "sql", "x", MODEL} <= listed())
        # its requests wait for a worker, under the queue's bound: the third job is refused
        body = {**BODY, "model": "Org/new-model"}
        for _ in range(2):
            job = httpx.post(f"{stack.url}/v1/jobs", json=body, timeout=30)
            assert job.status_code == 202 and job.json()["waiting_for_worker"] is True
        full = httpx.post(f"{stack.url}/v1/jobs", json=body, timeout=30)
        assert full.status_code == 429, full.text
        # removed: no longer listed; a second removal is a 404
        assert admin.delete("/models/Org/new-model").json() == {
            "name": "Org/new-model",
            "deleted": True,
        }
        assert admin.delete("/models/Org/new-model").status_code == 404
        _until(lambda: "Org/new-model" not in listed())
