"""The Files and Batch APIs through real processes, driven by the official `openai` client:
upload, validation naming the bad line, a batch run to completion and read back, cancel,
and tenants kept apart. Most tests use the fake engine; one runs a batch on real vLLM."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest
import redis
from openai.types import Batch, FileObject

from berth.protocol import keys
from tests.stack import FAKE_ENGINE, RunningStack, StackFactory

pytestmark = pytest.mark.e2e

FAKE_MODEL = "fake-model"


def _line(i: int, model: str = FAKE_MODEL, **body: Any) -> dict[str, Any]:
    return {
        "custom_id": f"task-{i}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": model,
            "messages": [{"role": "user", "content": f"question {i}"}],
            "max_tokens": 4,
            **body,
        },
    }


def _jsonl(lines: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def _upload(client: openai.OpenAI, lines: list[dict[str, Any]]) -> FileObject:
    return client.files.create(file=("input.jsonl", _jsonl(lines)), purpose="batch")


def _start(client: openai.OpenAI, lines: list[dict[str, Any]]) -> Batch:
    upload = _upload(client, lines)
    return client.batches.create(
        input_file_id=upload.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"suite": "e2e"},
    )


def _wait(client: openai.OpenAI, batch_id: str, until: set[str], timeout_s: float) -> Batch:
    deadline = time.monotonic() + timeout_s
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in until or time.monotonic() > deadline:
            return batch
        time.sleep(0.2)


def _read_jsonl(client: openai.OpenAI, file_id: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def _run_to_completion(client: openai.OpenAI, n: int, model: str, timeout_s: float) -> Batch:
    """A batch of ``n`` requests runs, completes, and every line of its output answers one
    input line, in input order."""
    batch = _start(client, [_line(i, model) for i in range(n)])
    assert batch.status == "in_progress" and batch.request_counts is not None
    assert batch.request_counts.total == n
    done = _wait(client, batch.id, {"completed", "failed", "expired", "cancelled"}, timeout_s)
    assert done.status == "completed", done
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (n, 0)
    assert done.completed_at and done.in_progress_at and done.error_file_id is None
    assert done.output_file_id is not None
    output = _read_jsonl(client, done.output_file_id)
    assert [line["custom_id"] for line in output] == [f"task-{i}" for i in range(n)]
    for line in output:
        assert line["error"] is None and line["response"]["status_code"] == 200
        assert line["response"]["body"]["object"] == "chat.completion"
        assert line["response"]["body"]["choices"][0]["finish_reason"] in ("length", "stop")
    return done


# -- on the fake engine ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(make_stack: StackFactory) -> RunningStack:
    return make_stack(
        ("worker", {**FAKE_ENGINE, "BERTH_FAKE_TOKENS_PER_S": "200"}),
        "scheduler",
        "api",
        env={"BERTH_API_KEYS": "a:key-a,b:key-b"},
    )


@pytest.fixture
def tenant(stack: RunningStack) -> Callable[[str], openai.OpenAI]:
    def client(key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{stack.url}/v1", api_key=key, max_retries=0, timeout=30)

    return client


@pytest.fixture
def client(tenant: Callable[[str], openai.OpenAI]) -> openai.OpenAI:
    return tenant("key-a")


def test_batch_runs_to_completion_and_reads_back(
    stack: RunningStack, client: openai.OpenAI
) -> None:
    done = _run_to_completion(client, 60, FAKE_MODEL, timeout_s=45)
    assert done.metadata == {"suite": "e2e"} and done.model == FAKE_MODEL
    # the raw objects parse strictly as the client's types, not only leniently
    raw = httpx.get(f"{stack.url}/v1/batches/{done.id}", headers={"Authorization": "Bearer key-a"})
    assert Batch.model_validate(raw.json()).status == "completed"
    assert done.output_file_id is not None
    output = client.files.retrieve(done.output_file_id)
    assert FileObject.model_validate(output.model_dump()).purpose == "batch_output"
    assert output.filename.endswith("_output.jsonl") and output.bytes > 0
    assert done.id in {b.id for b in client.batches.list(limit=100)}
    listed = {f.id: f.purpose for f in client.files.list()}
    assert listed[done.input_file_id] == "batch" and listed[done.output_file_id] == "batch_output"
    assert [f.id for f in client.files.list(purpose="batch_output")] == [done.output_file_id]
    # batch work never took the interactive lane
    r = redis.Redis.from_url(stack.redis_url)
    assert r.sismember(keys.MODELS_SET, FAKE_MODEL)


def test_list_pages_with_after_and_has_more(client: openai.OpenAI) -> None:
    made = [_start(client, [_line(0)]).id for _ in range(3)]
    first = client.batches.list(limit=2)
    assert [b.id for b in first.data] == made[::-1][:2] and first.has_more
    rest = client.batches.list(limit=2, after=first.data[-1].id)
    assert rest.data[0].id == made[0]


def test_cancel_ends_the_batch_with_what_finished(client: openai.OpenAI) -> None:
    # 2000 tokens at 200/s: ten seconds each, so they are queued or running when cancelled
    batch = _start(client, [_line(i, max_tokens=2000) for i in range(50)])
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled") and cancelling.cancelling_at
    done = _wait(client, batch.id, {"cancelled"}, timeout_s=15)
    assert done.status == "cancelled" and done.cancelled_at
    assert done.error_file_id is not None and done.output_file_id is None
    errors = _read_jsonl(client, done.error_file_id)
    assert [line["custom_id"] for line in errors] == [f"task-{i}" for i in range(50)]
    assert {line["error"]["code"] for line in errors} == {"batch_cancelled"}
    assert client.batches.cancel(batch.id).status == "cancelled"  # again: unchanged


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (_line(2, temperature=3), "line 3: temperature must be between 0 and 2, got 3"),
        (_line(0), "line 3: custom_id 'task-0' is used by an earlier line"),
        ({**_line(2), "url": "/v1/embeddings"}, "line 3: url must be '/v1/chat/completions'"),
        (_line(2, stream=True), "line 3: stream must be false"),
        ({**_line(2), "extra": 1}, "line 3: unknown field 'extra'"),
    ],
)
def test_a_bad_line_is_400_naming_it(
    client: openai.OpenAI, line: dict[str, Any], message: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        _upload(client, [_line(0), _line(1), line, _line(3)])
    body: Any = caught.value.body
    assert body["message"].startswith(message) and body["param"] == "line 3"


def test_not_json_and_wrong_purpose_are_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.files.create(file=("in.jsonl", _jsonl([_line(0)]) + b"{oops\n"), purpose="batch")
    body: Any = caught.value.body
    assert body["param"] == "line 2" and "not valid JSON" in body["message"]
    with pytest.raises(openai.BadRequestError) as caught:
        client.files.create(file=("in.jsonl", _jsonl([_line(0)])), purpose="assistants")
    body = caught.value.body
    assert body["param"] == "purpose"


def test_an_unknown_model_fails_the_batch_naming_the_line(client: openai.OpenAI) -> None:
    upload = _upload(client, [_line(0), _line(1, model="no-such-model")])
    with pytest.raises(openai.BadRequestError) as caught:
        client.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    body: Any = caught.value.body
    assert body["param"] == "line 2" and "no-such-model" in body["message"]
    with pytest.raises(openai.BadRequestError) as caught:
        client.batches.create(
            input_file_id=upload.id,
            endpoint="/v1/embeddings",
            completion_window="24h",
        )
    assert caught.value.body["param"] == "endpoint"  # type: ignore[index]


def test_tenants_cannot_see_each_others_files_or_batches(
    stack: RunningStack, tenant: Callable[[str], openai.OpenAI]
) -> None:
    a, b = tenant("key-a"), tenant("key-b")
    batch = _start(a, [_line(i) for i in range(3)])
    file_id = batch.input_file_id
    for attempt in (
        lambda: b.files.retrieve(file_id),
        lambda: b.files.content(file_id),
        lambda: b.files.delete(file_id),
        lambda: b.batches.retrieve(batch.id),
        lambda: b.batches.cancel(batch.id),
        lambda: b.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        ),
    ):
        with pytest.raises(openai.NotFoundError):
            attempt()
    assert batch.id not in {x.id for x in b.batches.list()}
    assert file_id not in {f.id for f in b.files.list()}
    assert httpx.get(f"{stack.url}/v1/files").status_code == 401  # no key at all
    # and the owner still has both
    assert a.batches.retrieve(batch.id).id == batch.id
    a.files.delete(file_id)
    with pytest.raises(openai.NotFoundError):
        a.files.retrieve(file_id)


# -- on the real engine ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine_stack(make_stack: StackFactory) -> RunningStack:
    make_stack.stop_all()  # the fake-engine stack would take CPU from the engine's start
    return make_stack("worker", "scheduler", "api", timeout_s=400)


@pytest.mark.engine
def test_batch_on_the_real_engine(engine_stack: RunningStack) -> None:
    client = openai.OpenAI(
        base_url=f"{engine_stack.url}/v1", api_key="unused", max_retries=0, timeout=60
    )
    _run_to_completion(client, 50, "berth-tiny", timeout_s=120)
