"""SSE keepalives through real processes (fake engine, slow on purpose): a request waiting
for its first token sends `: ping` comments, on a streamed chat completion, a job's events
and a resumed stream; the official openai client skips them."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from tests.stack import FAKE_ENGINE, RunningStack, StackFactory

pytestmark = pytest.mark.e2e

MODEL = "fake-model"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


@pytest.fixture(scope="module")
def stack(make_stack: StackFactory) -> RunningStack:
    # a token every 0.6 s: each request waits 0.6 s for its first, pings come every 0.1 s
    return make_stack(
        ("worker", {**FAKE_ENGINE, "BERTH_FAKE_TOKENS_PER_S": "1.6"}),
        "scheduler",
        "api",
        env={"BERTH_KEEPALIVE_S": "0.1"},
    )


def _lines(answer: httpx.Response) -> list[str]:
    return [line for line in answer.iter_lines() if line]


def test_a_streamed_chat_pings_until_its_first_token(stack: RunningStack) -> None:
    with (
        httpx.Client(base_url=stack.url, timeout=30) as client,
        client.stream("POST", "/v1/chat/completions", json={**BODY, "stream": True}) as answer,
    ):
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        lines = _lines(answer)
    first_data = next(i for i, line in enumerate(lines) if line.startswith("data:"))
    before = [line for line in lines[:first_data] if not line.startswith("id:")]
    assert len(before) >= 2 and set(before) == {": ping"}, lines
    assert lines[-1] == "data: [DONE]"


def test_the_openai_client_skips_the_pings(stack: RunningStack) -> None:
    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key="unused", max_retries=0)
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=3,
            stream=True,
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    assert chunks[-1].choices[0].finish_reason == "length"


def test_job_events_ping_while_the_job_waits(stack: RunningStack) -> None:
    with httpx.Client(base_url=stack.url, timeout=30) as client:
        job = client.post("/v1/jobs", json=BODY).json()
        with client.stream("GET", f"/v1/jobs/{job['id']}/events") as answer:
            assert answer.status_code == 200
            lines = _lines(answer)
    assert ": ping" in lines
    first_delta = next(i for i, line in enumerate(lines) if line == "event: delta")
    assert ": ping" in lines[:first_delta]
    assert "event: finished" in lines


def test_a_resumed_stream_pings_until_its_next_event(stack: RunningStack) -> None:
    headers = {"X-Berth-Resumable": "true"}
    with httpx.Client(base_url=stack.url, timeout=30) as client:
        with client.stream(
            "POST", "/v1/chat/completions", json={**BODY, "stream": True}, headers=headers
        ) as answer:
            request_id = answer.headers["x-request-id"]
            # leave at once: the request keeps running, resumable
        time.sleep(0.2)
        with client.stream("GET", f"/v1/chat/completions/{request_id}/stream") as resumed:
            assert resumed.status_code == 200
            lines = _lines(resumed)
    first_data = next(i for i, line in enumerate(lines) if line.startswith("data:"))
    assert ": ping" in lines[:first_data], lines
    assert lines[-1] == "data: [DONE]"
